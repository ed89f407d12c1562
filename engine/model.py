"""Plain data: dose grids, structures and plans, with units in the field names.

Arrays are indexed ``(z, y, x)``; coordinates are DICOM patient coordinates in mm. A :class:`DoseGrid` is
always stored with index increasing along each patient axis, whatever the orientation of the file it came
from, so that every kernel can assume positive spacing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import RoiNotFoundError


def xyz(values) -> tuple[float, float, float]:
    """Three numbers (x, y, z) as a tuple of floats.

    >>> xyz([1, 2.5, "3"])
    (1.0, 2.5, 3.0)
    """
    x, y, z = (float(v) for v in values)
    return x, y, z


def first_grid_index_at_or_above(value: float, origin: float, step: float, n: int) -> int:
    """The first of the ``n`` grid coordinates ``origin + i * step`` at or above ``value`` (``n`` where none),
    exactly as that expression computes them: grid points in ``[lo, hi)`` are those of indices from this for ``lo``
    up to this for ``hi``. Plain Python, compiled as it is by the compiled host code.

    >>> first_grid_index_at_or_above(1.0, 0.0, 0.5, 10), first_grid_index_at_or_above(1.1, 0.0, 0.5, 10)
    (2, 3)
    """
    i = math.ceil((value - origin) / step) if math.isfinite(value) else (0 if value < 0 else n)
    i = min(max(i, 0), n)
    while i > 0 and origin + (i - 1) * step >= value:
        i -= 1
    while i < n and origin + i * step < value:
        i += 1
    return i


@dataclass(frozen=True, eq=False)
class DoseGrid:
    """A dose distribution on a regular, axis-aligned grid.

    ``dose_gy[k, j, i]`` is the dose at the voxel centre
    ``(origin_mm[0] + i * spacing_mm[0], origin_mm[1] + j * spacing_mm[1], origin_mm[2] + k * spacing_mm[2])``.

    Parameters
    ----------
    dose_gy : numpy.ndarray
        Dose (Gy) at the voxel centres, indexed ``(z, y, x)``, finite and not negative.
    origin_mm : tuple of float
        ``(x, y, z)`` of the first voxel centre, mm (DICOM patient coordinates).
    spacing_mm : tuple of float
        Distance between voxel centres along x, y and z, mm, positive: indices increase along each axis.
    frame_of_reference_uid : str
        The DICOM frame of reference of the coordinates ("" when unknown).
    source : str
        The file the grid was read from, for messages ("" when built in Python).
    patient_id, sop_instance_uid : str
        The file's PatientID and SOPInstanceUID ("" when unknown).
    referenced_plan_uid : str
        The SOPInstanceUID of the RTPLAN the dose belongs to (ReferencedRTPlanSequence; "" when unknown).
    summation_type : str
        DoseSummationType: ``PLAN`` for a whole plan's dose, ``BEAM`` or ``FRACTION`` for a part of it, ...
        ("" when unknown, as for grids built in Python).
    dose_type : str
        DoseType: ``PHYSICAL``, ``EFFECTIVE`` (biologically weighted, e.g. RBE) or ``ERROR`` ("" when unknown).
    referenced_beam_numbers : tuple of int
        The beams of the referenced plan this dose is of (ReferencedBeamSequence of the ReferencedRTPlanSequence,
        as a per-beam dose names its beam; a sum of beam doses holds all of theirs); empty when it names none.

    Examples
    --------
    >>> import numpy as np
    >>> grid = DoseGrid(np.full((2, 3, 4), 60.0, np.float32), (0.0, 0.0, 0.0), (2.5, 2.5, 3.0))
    >>> grid.shape, grid.max_gy, grid.extent_mm[0]
    ((2, 3, 4), 60.0, (0.0, 7.5))
    """

    dose_gy: np.ndarray
    origin_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    frame_of_reference_uid: str = ""
    source: str = ""
    patient_id: str = ""
    sop_instance_uid: str = ""
    referenced_plan_uid: str = ""
    summation_type: str = ""
    dose_type: str = ""
    referenced_beam_numbers: tuple[int, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        nz, ny, nx = self.dose_gy.shape
        return int(nz), int(ny), int(nx)

    @property
    def max_gy(self) -> float:
        return float(self.dose_gy.max()) if self.dose_gy.size else 0.0

    def axis_mm(self, axis: int) -> np.ndarray:
        """Voxel-centre coordinates along patient axis 0 (x), 1 (y) or 2 (z)."""
        n = self.dose_gy.shape[2 - axis]
        return self.origin_mm[axis] + self.spacing_mm[axis] * np.arange(n, dtype=np.float64)

    def voxel_centres_mm(self) -> np.ndarray:
        """The ``(x, y, z)`` of every voxel centre, shape ``(n, 3)``, in the grid's ``(z, y, x)`` order."""
        z, y, x = np.meshgrid(self.axis_mm(2), self.axis_mm(1), self.axis_mm(0), indexing="ij")
        return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)

    @property
    def extent_mm(self) -> tuple[tuple[float, float], ...]:
        """(low, high) of the voxel centres along x, y and z: the region where dose is defined."""
        return tuple(
            (self.origin_mm[a], self.origin_mm[a] + self.spacing_mm[a] * (self.dose_gy.shape[2 - a] - 1))
            for a in range(3)
        )


@dataclass(frozen=True, eq=False)
class Contour:
    """One closed planar polygon.

    Parameters
    ----------
    points_mm : numpy.ndarray
        ``(n, 2)`` vertices ``(x, y)``, mm, in order (the last joins the first).
    z_mm : float
        The plane the polygon lies in, mm.

    Examples
    --------
    >>> import numpy as np
    >>> Contour(np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]]), 2.5).z_mm
    2.5
    """

    points_mm: np.ndarray
    z_mm: float


@dataclass(frozen=True, eq=False)
class LabelMask:
    """One structure of a label image: each voxel a box of the image's own geometry, weighted by its value (1 or 0
    for a binary mask or a label of a multi-label map, the fraction for a probability or partial-volume map).

    Parameters
    ----------
    weights : ndarray
        ``(nz, ny, nx)`` weights in [0, 1], as float32.
    origin_mm, spacing_mm : tuple of float
        The centre of voxel ``(0, 0, 0)`` and the voxel size along the image's axes (positive), in mm.
    direction : ndarray
        ``3 x 3``, orthonormal: column ``a`` is the patient direction of index axis ``a`` (x, y, z), as ITK gives it
        (LPS). A voxel ``(i, j, k)`` is centred at ``origin + direction @ (i sx, j sy, k sz)``.

    Examples
    --------
    >>> mask = LabelMask(np.ones((2, 3, 4), np.float32), (0.0, 0.0, 0.0), (1.0, 1.0, 2.0), np.eye(3))
    >>> mask.volume_cc, mask.is_axial
    (0.048, True)
    """

    weights: np.ndarray
    origin_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    direction: np.ndarray

    @property
    def volume_cc(self) -> float:
        """The weighted volume of its voxels."""
        return float(np.sum(self.weights, dtype=np.float64)) * float(np.prod(self.spacing_mm)) / 1000.0

    @property
    def is_axial(self) -> bool:
        """Whether its axes are the patient's x, y and z, in that order and sense."""
        return bool(np.array_equal(np.asarray(self.direction, dtype=np.float64), np.eye(3)))

    def cropped(self) -> LabelMask:
        """The same mask cropped to the box of its voxels of weight above 0 (a label of a large map is a small part
        of it), its origin moved along its own axes; itself when nothing is to be cut (or nothing is inside)."""
        inside = np.asarray(self.weights) > 0
        if not inside.any():
            return self
        box = []
        for axis in range(3):
            held = np.flatnonzero(np.any(inside, axis=tuple(a for a in range(3) if a != axis)))
            box.append(slice(int(held[0]), int(held[-1]) + 1))
        if all(b.start == 0 and b.stop == n for b, n in zip(box, inside.shape)):
            return self
        corner = np.array([box[2].start, box[1].start, box[0].start], dtype=np.float64) * np.asarray(self.spacing_mm)
        shifted = np.asarray(self.origin_mm, dtype=np.float64) + np.asarray(self.direction, dtype=np.float64) @ corner
        return LabelMask(np.ascontiguousarray(self.weights[tuple(box)]), xyz(shifted), self.spacing_mm, self.direction)

    def with_increasing_axes(self) -> LabelMask:
        """The same voxels with every axis that runs against a patient axis turned around (slices stored from head to
        feet, say), so that a mask whose axes are the patient's up to their sense becomes axial; itself otherwise."""
        direction = np.asarray(self.direction, dtype=np.float64)
        if not np.array_equal(np.abs(direction), np.eye(3)) or np.all(np.diag(direction) > 0):
            return self
        flips = np.diag(direction) < 0  # along x, y, z
        extent = (np.array(self.weights.shape[::-1]) - 1) * np.asarray(self.spacing_mm)
        origin = np.asarray(self.origin_mm, dtype=np.float64) - np.where(flips, extent, 0.0)
        weights = np.flip(self.weights, axis=tuple(2 - a for a in range(3) if flips[a]))
        return LabelMask(np.ascontiguousarray(weights), xyz(origin), self.spacing_mm, np.eye(3))

    def contain(self, points_mm: np.ndarray) -> np.ndarray:
        """Which ``(x, y, z)`` points lie in a voxel of weight at least one half (a fractional map's points more
        likely in than out), for the point-of-origin test.

        >>> mask = LabelMask(np.ones((1, 1, 2), np.float32) * [1.0, 0.2], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
        >>> mask.contain(np.array([[0.2, 0.1, 0.0], [1.2, 0.0, 0.0], [0.0, 0.0, 0.7]])).tolist()
        [True, False, False]
        """
        points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
        local = (points - np.asarray(self.origin_mm)) @ np.asarray(self.direction, dtype=np.float64)
        index = np.floor(local / np.asarray(self.spacing_mm) + 0.5).astype(np.int64)  # (i, j, k)
        shape = np.array(self.weights.shape[::-1])
        inside = np.all((index >= 0) & (index < shape), axis=1) & np.all(np.isfinite(points), axis=1)
        held = np.zeros(len(points), dtype=bool)
        i, j, k = index[inside].T
        held[inside] = self.weights[k, j, i] >= 0.5
        return held

    def index_to_patient(self) -> np.ndarray:
        """The 4 x 4 taking ``index * spacing`` (mm along the image's axes) to patient coordinates."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(self.direction, dtype=np.float64)
        matrix[:3, 3] = self.origin_mm
        return matrix


@dataclass(frozen=True, eq=False)
class Structure:
    """An ROI: its closed planar contours (holes and islands by the even-odd rule within a plane), or a label
    image's voxels (``mask``).

    Parameters
    ----------
    name : str
        The ROI's name.
    number : int
        Its ROINumber in the structure set.
    contours : tuple of Contour
        Its contours; none for an empty ROI.
    frame_of_reference_uid, source : str
        Its frame of reference, and the file it was read from ("" when unknown).
    interpreted_type : str
        RTROIInterpretedType, upper case (GTV, CTV, PTV, ORGAN, ...); "" when the file gives none.

    Examples
    --------
    >>> import numpy as np
    >>> square = Contour(np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]]), 0.0)
    >>> ptv = Structure("PTV70", 1, (square,))
    >>> ptv.is_target, ptv.is_empty
    (True, False)
    """

    name: str
    number: int
    contours: tuple[Contour, ...] = ()
    frame_of_reference_uid: str = ""
    source: str = ""
    #: RTROIInterpretedType (GTV, CTV, PTV, ORGAN, ...), upper case; empty when the file gives none.
    interpreted_type: str = ""
    #: A structure of a label image: its voxels, in place of contours.
    mask: LabelMask | None = None

    @property
    def is_empty(self) -> bool:
        if self.mask is not None:
            return not bool(np.any(self.mask.weights > 0))
        return len(self.contours) == 0

    @property
    def is_target(self) -> bool:
        """A GTV, CTV or PTV: by its interpreted type, else by the prefix of its name."""
        if self.interpreted_type:
            return self.interpreted_type in ("GTV", "CTV", "PTV", "ITV")
        return self.name.strip().upper().startswith(("GTV", "CTV", "PTV", "ITV"))


@dataclass(frozen=True, eq=False)
class StructureSet:
    """The ROIs of one RTSTRUCT.

    Parameters
    ----------
    structures : tuple of Structure
        The ROIs, in the file's order.
    frame_of_reference_uid, source, patient_id, study_uid : str
        The frame of reference of the contours, the file, the patient and the study ("" when unknown).
    sop_instance_uid : str
        The file's SOPInstanceUID ("" when unknown): what an RTDOSE's DVHs name as their structure set.

    Examples
    --------
    >>> from isodose.phantoms import example_case
    >>> _, structures = example_case()
    >>> structures.names, structures.get("ptv").number, structures.get(2).name
    (['PTV', 'Cord', 'Recurrence'], 1, 'Cord')
    """

    structures: tuple[Structure, ...]
    frame_of_reference_uid: str = ""
    source: str = ""
    patient_id: str = ""
    study_uid: str = ""
    sop_instance_uid: str = ""

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.structures]

    def get(self, key: str | int) -> Structure:
        """The ROI named ``key`` (exact, then case-insensitive) or numbered ``key`` (an int, or digits that name
        no ROI: ``"5"`` from a command line).

        Raises
        ------
        RoiNotFoundError
            When no ROI has that name or number (the message lists the ROIs the set has).
        """
        if isinstance(key, int):
            for s in self.structures:
                if s.number == key:
                    return s
        else:
            for s in self.structures:
                if s.name == key:
                    return s
            folded = [s for s in self.structures if s.name.casefold() == key.casefold()]
            if len(folded) == 1:
                return folded[0]
            if key.strip().isdigit():
                return self.get(int(key))
        raise RoiNotFoundError(
            f"no ROI {key!r}; the structure set has: {', '.join(self.names) or 'none'}",
            path=self.source or None,
        )


@dataclass(frozen=True)
class DoseReference:
    """One item of an RT plan's DoseReferenceSequence: its description, type and prescription (Gy or None)."""

    description: str
    reference_type: str
    prescription_gy: float | None


@dataclass(frozen=True)
class Plan:
    """What isodose reads from an RT plan: the prescription and the number of fractions.

    Parameters
    ----------
    prescription_gy : float or None
        The prescription dose, Gy: the highest TargetPrescriptionDose of the plan's dose references.
    number_of_fractions : int or None
        NumberOfFractionsPlanned of the first fraction group.
    dose_references : tuple of DoseReference
        Every dose reference of the plan.
    frame_of_reference_uid, source : str
        The plan's frame of reference and file ("" when unknown).
    patient_id, sop_instance_uid : str
        The file's PatientID and SOPInstanceUID ("" when unknown).
    number_of_beams : int or None
        NumberOfBeams of the first fraction group.
    beam_numbers : tuple of int
        The beams of the first fraction group (its ReferencedBeamSequence); empty when it names none.

    Examples
    --------
    >>> Plan(70.0, 35).prescription_gy
    70.0
    """

    prescription_gy: float | None
    number_of_fractions: int | None
    dose_references: tuple[DoseReference, ...] = field(default_factory=tuple)
    frame_of_reference_uid: str = ""
    source: str = ""
    patient_id: str = ""
    sop_instance_uid: str = ""
    number_of_beams: int | None = None
    beam_numbers: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class Registration:
    """A spatial registration: rigid 4x4 matrices mapping points of each source frame of reference into the
    registered frame ``frame_of_reference_uid`` (``p_registered = matrix @ [x, y, z, 1]``).

    Parameters
    ----------
    frame_of_reference_uid : str
        The registration's own (registered) frame.
    matrices : dict of str to numpy.ndarray
        For each source frame's UID, the rigid 4x4 matrix taking its points (mm) into the registered frame.
    source : str
        The file it was read from ("" when built in Python).
    patient_id : str
        The file's PatientID ("" when unknown).

    Examples
    --------
    >>> from isodose.geometry import rigid_matrix
    >>> registration = Registration("1.2.3", {"4.5.6": rigid_matrix(translation_mm=(0.0, 0.0, 5.0))})
    >>> float(registration.matrices["4.5.6"][2, 3])
    5.0
    """

    frame_of_reference_uid: str
    matrices: dict[str, np.ndarray]
    source: str = ""
    patient_id: str = ""


@dataclass(frozen=True, eq=False)
class DeformableRegistration:
    """A deformable registration: the map that carries a point of its registered frame into its source frame,

    ``p_source = post_matrix @ (pre_matrix @ p_registered + d(p_registered))``

    the order PS3.3 C.20.3.1.1 gives (the pre-deformation matrix, then the deformation's offsets, then the
    post-deformation matrix; the result addresses the sample point in the source frame). ``d`` is the displacement
    at the grid points of ``vectors_mm``, interpolated trilinearly between them; the grid lies in the registered
    frame. A displacement field image of ITK (T(x) = x + d(x) from fixed to moving) is the same map, its fixed
    image's frame registered, its moving image's the source, both matrices the identity.

    Parameters
    ----------
    registered_frame_uid, source_frame_uid : str
        The frame the map starts from (where the grid lies) and the frame it carries points into.
    vectors_mm : numpy.ndarray
        ``(nz, ny, nx, 3)`` float32: the displacement (x, y, z, mm) at grid point ``(i, j, k)`` is
        ``vectors_mm[k, j, i]``.
    grid_origin_mm : tuple of float
        The position of grid point ``(0, 0, 0)`` (ImagePositionPatient), mm.
    grid_directions : numpy.ndarray
        3x3 whose columns are the directions in which ``i``, ``j`` and ``k`` grow (the row and column directions of
        ImageOrientationPatient and their cross product), unit vectors.
    grid_spacing_mm : tuple of float
        The distance between grid points along ``i``, ``j`` and ``k`` (GridResolution), mm.
    pre_matrix, post_matrix : numpy.ndarray
        The 4x4 matrices applied before and after the deformation (identity where the file gives none).
    source : str
        The file it was read from.
    patient_id : str
        The file's PatientID ("" when unknown).
    kind : str
        ``dicom`` (a Deformable Spatial Registration) or ``field`` (a displacement field image).

    Examples
    --------
    >>> import numpy as np
    >>> shift = np.zeros((2, 2, 2, 3), np.float32)
    >>> shift[..., 2] = 5.0  # 5 mm along z everywhere
    >>> reg = DeformableRegistration("1.2.3", "4.5.6", shift, (0.0, 0.0, 0.0), np.eye(3), (10.0, 10.0, 10.0))
    >>> reg.grid_shape, reg.world_to_index() @ np.array([10.0, 0.0, 20.0, 1.0])
    ((2, 2, 2), array([1., 0., 2., 1.]))
    """

    registered_frame_uid: str
    source_frame_uid: str
    vectors_mm: np.ndarray
    grid_origin_mm: tuple[float, float, float]
    grid_directions: np.ndarray
    grid_spacing_mm: tuple[float, float, float]
    pre_matrix: np.ndarray = field(default_factory=lambda: np.eye(4))
    post_matrix: np.ndarray = field(default_factory=lambda: np.eye(4))
    source: str = ""
    patient_id: str = ""
    kind: str = "dicom"

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """``(nz, ny, nx)`` of the grid points."""
        nz, ny, nx, _ = self.vectors_mm.shape
        return int(nz), int(ny), int(nx)

    def world_to_index(self) -> np.ndarray:
        """The 4x4 taking a point of the registered frame (mm) to its fractional grid index ``(i, j, k)``."""
        matrix = np.eye(4)
        axes = np.asarray(self.grid_directions, dtype=np.float64) * np.asarray(self.grid_spacing_mm)[None, :]
        rotation = np.linalg.inv(axes)  # index = axes^-1 (p - origin), axes' columns the steps along i, j, k
        matrix[:3, :3] = rotation
        matrix[:3, 3] = -rotation @ np.asarray(self.grid_origin_mm, dtype=np.float64)
        return matrix


#: Relative doses (DoseUnits RELATIVE) whose largest value is at most this are fractions of the reference dose
#: (1.0 = 100%), above it percentages: of a dose grid's pixels, or of a DVH's largest bin edge.
RELATIVE_FRACTION_MAX = 2.0

#: DVHType values of an RTDOSE's DVH Sequence (PS3.3 C.8.8.4).
DVH_TYPES = ("CUMULATIVE", "DIFFERENTIAL", "NATURAL")
#: DVHVolumeUnits values: cc, % of the ROI's volume, and volume per unit of u = dose^-3/2 (natural DVHs).
DVH_VOLUME_UNITS = ("CM3", "PERCENT", "PER_U")


@dataclass(frozen=True, eq=False)
class ReportedDVH:
    """One item of an RTDOSE's DVH Sequence, as the planning system wrote it (the values of the file, not yet
    turned into a curve: :class:`isodose.dvh.PlanningSystemDVH` does that).

    Parameters
    ----------
    roi_number : int
        The ROI it belongs to (DVHReferencedROISequence's ReferencedROINumber, an ROI number of the RTSTRUCT).
    item : int
        Its place in the DVH Sequence, from 1 (for messages).
    dvh_type : str
        ``CUMULATIVE``, ``DIFFERENTIAL`` or ``NATURAL``.
    dose_units : str
        ``GY`` or ``RELATIVE`` (of ``normalization_dose``).
    dose_type : str
        ``PHYSICAL``, ``EFFECTIVE`` or ``ERROR``.
    volume_units : str
        ``CM3``, ``PERCENT`` or ``PER_U``.
    dose_scaling : float
        DVHDoseScaling: bin widths times it are in ``dose_units``.
    bin_widths : numpy.ndarray
        The DVH Data's dose bin widths, as written (before ``dose_scaling``).
    values : numpy.ndarray
        The DVH Data's volumes, one per bin, in ``volume_units``: for a cumulative DVH the volume receiving at least
        the dose where the bin starts, for a differential one the volume whose dose lies in the bin, for a natural
        one (in ``PER_U``) the volume per unit of u = dose^-3/2 over the bin.
    minimum_dose, mean_dose, maximum_dose : float
        DVHMinimumDose, DVHMeanDose and DVHMaximumDose as written, in ``dose_units`` (NaN where absent).
    normalization_dose : float
        DVHNormalizationDoseValue of the file (Gy, the 100% of relative doses); NaN where absent.
    source : str
        The file it was read from.
    referenced_structure_set_uid : str
        The RTSTRUCT whose ROI numbers the file's DVHs refer to (ReferencedStructureSetSequence; "" when unnamed).
    """

    roi_number: int
    item: int
    dvh_type: str
    dose_units: str
    dose_type: str
    volume_units: str
    dose_scaling: float
    bin_widths: np.ndarray
    values: np.ndarray
    minimum_dose: float = float("nan")
    mean_dose: float = float("nan")
    maximum_dose: float = float("nan")
    normalization_dose: float = float("nan")
    source: str = ""
    #: The SOPInstanceUID of the RTSTRUCT whose ROI numbers the file's DVHs refer to ("" when it names none).
    referenced_structure_set_uid: str = ""

    @property
    def label(self) -> str:
        """``DVH item 3 (ROI 7)``: how messages name it."""
        return f"DVH item {self.item} (ROI {self.roi_number})"
