"""Plain data: dose grids, structures and plans, with units in the field names.

Arrays are indexed ``(z, y, x)``; coordinates are DICOM patient coordinates in mm. A :class:`DoseGrid` is
always stored with index increasing along each patient axis, whatever the orientation of the file it came
from, so that every kernel can assume positive spacing.
"""

from __future__ import annotations

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


@dataclass(frozen=True, eq=False)
class DoseGrid:
    """A dose distribution on a regular, axis-aligned grid.

    ``dose_gy[k, j, i]`` is the dose at the voxel centre
    ``(origin_mm[0] + i * spacing_mm[0], origin_mm[1] + j * spacing_mm[1], origin_mm[2] + k * spacing_mm[2])``.
    """

    dose_gy: np.ndarray
    origin_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    frame_of_reference_uid: str = ""
    source: str = ""

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
    """One closed planar polygon: ``points_mm`` is ``(n, 2)`` of (x, y), lying in the plane ``z_mm``."""

    points_mm: np.ndarray
    z_mm: float


@dataclass(frozen=True, eq=False)
class Structure:
    """An ROI: its closed planar contours (holes and islands by the even-odd rule within a plane)."""

    name: str
    number: int
    contours: tuple[Contour, ...] = ()
    frame_of_reference_uid: str = ""
    source: str = ""
    #: RTROIInterpretedType (GTV, CTV, PTV, ORGAN, ...), upper case; empty when the file gives none.
    interpreted_type: str = ""

    @property
    def is_empty(self) -> bool:
        return len(self.contours) == 0

    @property
    def is_target(self) -> bool:
        """A GTV, CTV or PTV: by its interpreted type, else by the prefix of its name."""
        if self.interpreted_type:
            return self.interpreted_type in ("GTV", "CTV", "PTV", "ITV")
        return self.name.strip().upper().startswith(("GTV", "CTV", "PTV", "ITV"))


@dataclass(frozen=True, eq=False)
class StructureSet:
    structures: tuple[Structure, ...]
    frame_of_reference_uid: str = ""
    source: str = ""
    patient_id: str = ""
    study_uid: str = ""

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.structures]

    def get(self, key: str | int) -> Structure:
        """The ROI named ``key`` (exact, then case-insensitive) or numbered ``key``."""
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
        raise RoiNotFoundError(
            f"no ROI {key!r}; the structure set has: {', '.join(self.names) or 'none'}",
            path=self.source or None,
        )


@dataclass(frozen=True)
class DoseReference:
    description: str
    reference_type: str
    prescription_gy: float | None


@dataclass(frozen=True)
class Plan:
    """What isodose reads from an RT plan: the prescription and the number of fractions."""

    prescription_gy: float | None
    number_of_fractions: int | None
    dose_references: tuple[DoseReference, ...] = field(default_factory=tuple)
    frame_of_reference_uid: str = ""
    source: str = ""


@dataclass(frozen=True, eq=False)
class Registration:
    """A spatial registration: rigid 4x4 matrices mapping points of each source frame of reference into the
    registered frame ``frame_of_reference_uid`` (``p_registered = matrix @ [x, y, z, 1]``)."""

    frame_of_reference_uid: str
    matrices: dict[str, np.ndarray]
    source: str = ""
