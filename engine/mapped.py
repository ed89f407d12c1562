"""The recurrence as mapped onto the planning frame, for viewing: traced into contours on the planes of the planning
dose grid (with planes between them, at most 1 mm apart) and written as an RTSTRUCT of the planning frame, which
a planning system or 3D Slicer shows on the planning CT (contours traced with scikit-image's ``find_contours``:
the optional extra ``isodose[export]``).

The mapped volume is found point by point: each point of a fine lattice on a plane (a quarter of the dose grid's
in-plane spacing, at most 1 mm) is carried into the recurrence's frame (by the inverse of the rigid registration,
or through the deformation) and tested against the recurrence there (its contours' planes and slabs, or its label
image's voxels of weight at least one half). The lattice covers the recurrence's samples carried the other way,
with a margin. Each plane's inside is traced at the level of one half, holes included (the even-odd rule reads
them back); read back, each plane is a slab, as any RTSTRUCT's.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

from .deformation import Deformation, map_points, plan_points
from .dispatch import Backend, resolve_backend
from .errors import IsodoseError
from .geometry import PackedPlanes, common_plane_spacing_mm, registration_matrix, structure_planes, transform_points
from .model import Contour, DeformableRegistration, DoseGrid, Registration, Structure, StructureSet
from .voxelize import SamplingOptions, plan_sampling

#: The lattice's step: this share of the dose grid's finer in-plane spacing, and at most MAX_STEP_MM.
STEP_SHARE = 0.25
MAX_STEP_MM = 1.0
#: Margin (mm) around the mapped samples' box.
MARGIN_MM = 2.0
#: The contours' planes: the dose grid's, with planes between them so that none is further than this from the next
#: (reading the contours back takes each plane as a slab: on 2.5 mm planes a 2 cc sphere would gain 4%).
MAX_PLANE_GAP_MM = 1.0


def _contours_module():
    try:
        from skimage import measure
    except ImportError as exc:
        raise IsodoseError("exporting the mapped recurrence needs scikit-image: pip install 'isodose[export]'") from exc
    return measure


def mapped_recurrence(
    dose: DoseGrid,
    structures: StructureSet,
    recurrence_roi: str,
    *,
    recurrence_structures: StructureSet | None = None,
    registration: Registration | DeformableRegistration | None = None,
    name: str | None = None,
    backend: str | Backend | None = None,
) -> Structure:
    """The recurrence mapped onto the dose grid's frame, as contours on the dose grid's planes (see the module
    docstring); its number is that of the recurrence, its name ``name`` (by default the recurrence's)."""
    measure = _contours_module()
    chosen = resolve_backend(backend)
    source = recurrence_structures if recurrence_structures is not None else structures
    vr = source.get(recurrence_roi)
    if vr.is_empty:
        raise IsodoseError(f"the recurrence ROI {vr.name!r} is empty: there is nothing to export")
    vr_frame, dose_frame = source.frame_of_reference_uid, dose.frame_of_reference_uid
    same_frame = recurrence_structures is None or not vr_frame or not dose_frame or vr_frame == dose_frame
    to_plan: Deformation | np.ndarray | None
    from_plan: Deformation | np.ndarray | None
    if same_frame:
        to_plan = from_plan = None
    elif isinstance(registration, DeformableRegistration):
        to_plan = Deformation.between(registration, vr_frame, dose_frame)
        from_plan = Deformation.between(registration, dose_frame, vr_frame)
    elif isinstance(registration, Registration):
        matrix = registration_matrix(registration, vr_frame, dose_frame)
        to_plan, from_plan = matrix, np.linalg.inv(matrix)
    else:
        raise IsodoseError(
            f"the recurrence is in frame of reference {vr_frame} and the dose in {dose_frame}: a registration is needed"
        )

    def carried(points: np.ndarray, mapping) -> np.ndarray:
        if mapping is None:
            return points
        if isinstance(mapping, Deformation):
            return map_points(mapping, points, chosen).points_mm
        return transform_points(mapping, points)

    # The box of the recurrence's samples in the planning frame, and the lattice over it.
    spacing = common_plane_spacing_mm(source.structures) or dose.spacing_mm[2]
    plan = plan_sampling([vr], dose, SamplingOptions(target_cells=20_000), spacing)
    samples, _, _, _ = plan_points(plan, chosen, 0.5 * min(dose.spacing_mm))
    mapped = carried(samples, to_plan)
    mapped = mapped[np.all(np.isfinite(mapped), axis=1)]
    if not len(mapped):
        raise IsodoseError("the mapped recurrence lies wholly outside the registration's field")
    low, high = mapped.min(axis=0) - MARGIN_MM, mapped.max(axis=0) + MARGIN_MM
    step = min(MAX_STEP_MM, STEP_SHARE * min(dose.spacing_mm[0], dose.spacing_mm[1]))
    xs = np.arange(low[0], high[0] + step, step)
    ys = np.arange(low[1], high[1] + step, step)
    # The dose grid's planes, each gap cut into equal parts at most MAX_PLANE_GAP_MM apart (the dose planes among them).
    z0 = dose.origin_mm[2]
    dz = dose.spacing_mm[2] / max(1, int(np.ceil(dose.spacing_mm[2] / MAX_PLANE_GAP_MM - 1e-9)))
    planes = z0 + dz * np.arange(np.ceil((low[2] - z0) / dz), np.floor((high[2] - z0) / dz) + 1)
    inside_of = (
        vr.mask.contain
        if vr.mask is not None
        else PackedPlanes.of(structure_planes(vr), SamplingOptions().end_cap, spacing).contain
    )
    gx, gy = np.meshgrid(xs, ys)  # (rows y, columns x)
    contours = []
    for z in planes:
        lattice = np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)])
        inside = inside_of(carried(lattice, from_plan)).reshape(gx.shape)
        if not inside.any():
            continue
        padded = np.pad(inside.astype(np.float64), 1)
        for line in measure.find_contours(padded, 0.5):
            ring = line[:-1] if np.allclose(line[0], line[-1]) else line  # closed: the first point repeats
            if len(ring) < 3:
                continue
            points = np.column_stack([xs[0] + (ring[:, 1] - 1) * step, ys[0] + (ring[:, 0] - 1) * step])
            contours.append(Contour(points, float(z)))
    if not contours:
        raise IsodoseError("the mapped recurrence holds no point of the dose grid's planes")
    return Structure(name or vr.name, vr.number, tuple(contours), dose_frame, interpreted_type="GTV")


def export_recurrence(
    path: str | PathLike[str],
    dose: DoseGrid,
    structures: StructureSet,
    recurrence_roi: str,
    *,
    recurrence_structures: StructureSet | None = None,
    registration: Registration | DeformableRegistration | None = None,
    name: str | None = None,
    backend: str | Backend | None = None,
) -> Path:
    """Write :func:`mapped_recurrence` as an RTSTRUCT of the dose grid's frame, patient and study (those of the
    planning structure set where it names them), for viewing on the planning CT."""
    from .dicom.write import write_structures

    structure = mapped_recurrence(
        dose,
        structures,
        recurrence_roi,
        recurrence_structures=recurrence_structures,
        registration=registration,
        name=name,
        backend=backend,
    )
    frame = dose.frame_of_reference_uid or structures.frame_of_reference_uid
    return write_structures(
        StructureSet((structure,), frame),
        path,
        patient_id=structures.patient_id or dose.patient_id or "UNKNOWN",
        study_uid=structures.study_uid or None,
        frame_of_reference_uid=frame or None,
    )
