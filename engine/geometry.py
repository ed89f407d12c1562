"""Geometry of contoured structures: planes, slabs and polygon measures.

A structure is modelled as a stack of slabs. Each contour plane owns the slab that reaches halfway to its
neighbouring planes; the first and last plane of each contiguous piece get an end-cap of half the nominal
plane spacing (``end_cap="half"``, the default and the convention of the Nelms 2015 analytical values) or
none (``end_cap="none"``). Planes further apart than ``GAP_FACTOR`` times the nominal spacing start a new
piece, so that two separate lesions contoured in one ROI are not bridged.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import DoseGridError, RegistrationError, StructureError
from .model import Contour, DoseGrid, Registration, Structure
from .packing import reduce_packed

log = logging.getLogger(__name__)

#: Contours whose z differ by less than this (mm) lie in the same plane.
PLANE_TOLERANCE_MM = 0.01
#: A gap between planes larger than this many nominal spacings separates two pieces of a structure.
GAP_FACTOR = 1.5
END_CAPS = ("half", "none")


@dataclass(frozen=True, eq=False)
class ContourPlane:
    """All rings of one structure that lie in one axial plane."""

    z_mm: float
    rings: tuple[np.ndarray, ...]


def polygon_area_mm2(points_mm: np.ndarray) -> float:
    """Signed area (shoelace formula) of a closed polygon given as ``(n, 2)`` points; positive when the
    vertices run counter-clockwise in (x, y)."""
    centred = points_mm - points_mm.mean(axis=0)
    x, y = centred[:, 0], centred[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(y[:-1], x[1:]) + x[-1] * y[0] - y[-1] * x[0])


def check_dose_grid(grid: DoseGrid) -> None:
    """A :class:`DoseGridError` (naming the grid's source) unless its lattice is usable: a 3-D array (z, y, x)
    with voxels, a finite origin and three finite, positive spacings (coordinates increase along each axis).
    The readers make sure of this for files; grids built in Python are checked here, before any sampling."""
    path = grid.source or None
    shape = getattr(grid.dose_gy, "shape", None)
    if shape is None or len(shape) != 3:
        kind = f"an array of shape {tuple(shape)}" if shape is not None else type(grid.dose_gy).__name__
        raise DoseGridError(f"dose_gy must be a 3-D array indexed (z, y, x), not {kind}", path=path)
    if min(shape) < 1:
        raise DoseGridError(f"the dose grid holds no voxels (shape {tuple(shape)})", path=path)
    origin, spacing = np.asarray(grid.origin_mm, dtype=np.float64), np.asarray(grid.spacing_mm, dtype=np.float64)
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise DoseGridError(f"origin_mm must be three finite coordinates (x, y, z), not {grid.origin_mm!r}", path=path)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or not np.all(spacing > 0):
        raise DoseGridError(
            f"spacing_mm must be three finite, positive distances (x, y, z), not {grid.spacing_mm!r}; "
            "coordinates increase along each axis",
            path=path,
        )


def _check_contours(structure: Structure) -> None:
    """Contours built in Python must be (n, 2) finite points in a finite plane (the readers make sure of it).
    Checked for the whole structure at once (a structure set holds thousands of contours); the contour at fault
    is looked for only when there is one."""
    contours = structure.contours
    if not contours:
        return

    def fail(problem: str) -> None:
        raise StructureError(f"a contour {problem}", path=structure.source or None, obj=f"ROI {structure.name!r}")

    shapes = [np.shape(c.points_mm) for c in contours]
    for shape in shapes:
        if len(shape) != 2 or shape[1] != 2:
            fail(f"has points of shape {shape}, not (n, 2) of x, y in mm")
    if (
        np.isfinite(np.concatenate([np.asarray(c.points_mm, dtype=np.float64) for c in contours])).all()
        and np.isfinite(np.array([c.z_mm for c in contours], dtype=np.float64)).all()
    ):
        return
    for contour in contours:
        if not (np.isfinite(contour.points_mm).all() and np.isfinite(contour.z_mm)):
            fail(f"holds NaN or infinite coordinates (z = {contour.z_mm} mm)")


def _plane_groups(contours: Sequence[Contour], tolerance_mm: float) -> tuple[list[Contour], list[int], list[float]]:
    """The contours sorted by z, where each plane's run of them starts (and the end), and each plane's z (the
    mean of its contours'): a plane takes the contours within ``tolerance_mm`` of its first."""
    ordered = sorted(contours, key=lambda c: c.z_mm)
    z = [c.z_mm for c in ordered]
    starts = [0]
    for k in range(1, len(z)):
        if z[k] - z[starts[-1]] > tolerance_mm:
            starts.append(k)
    starts.append(len(z))
    return ordered, starts, [float(sum(z[a:b]) / (b - a)) for a, b in zip(starts[:-1], starts[1:])]


def group_planes(contours: Sequence[Contour], tolerance_mm: float = PLANE_TOLERANCE_MM) -> list[ContourPlane]:
    """Group contours into planes by z, numerically (never by rounded strings), sorted by increasing z."""
    if not contours:
        return []
    ordered, starts, z = _plane_groups(contours, tolerance_mm)
    return [
        ContourPlane(z_mm=plane_z, rings=tuple(c.points_mm for c in ordered[a:b]))
        for plane_z, a, b in zip(z, starts[:-1], starts[1:])
    ]


def plane_positions_mm(contours: Sequence[Contour], tolerance_mm: float = PLANE_TOLERANCE_MM) -> np.ndarray:
    """The z of each plane of :func:`group_planes`, without grouping the contours themselves."""
    return np.array(_plane_groups(contours, tolerance_mm)[2] if contours else [], dtype=np.float64)


_PLANES: weakref.WeakKeyDictionary[Structure, list[ContourPlane]] = weakref.WeakKeyDictionary()
#: The warnings given when each structure's planes were grouped, to keep with its DVH.
_PLANE_WARNINGS: weakref.WeakKeyDictionary[Structure, tuple[str, ...]] = weakref.WeakKeyDictionary()
#: Each structure's plane positions, for the structure set's plane spacing (asked for several times a case).
_PLANE_Z: weakref.WeakKeyDictionary[Structure, np.ndarray] = weakref.WeakKeyDictionary()


#: Contours of one plane whose z differ by more than this (mm) were distinct planes, merged by the plane tolerance.
MERGED_PLANES_MM = 0.001
#: Two rings of one plane whose sorted vertices agree within this (mm) are the same contour twice.
DUPLICATE_TOLERANCE_MM = 1e-6


def _same_ring(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    order_a, order_b = np.lexsort(a.T[::-1]), np.lexsort(b.T[::-1])
    return bool(np.allclose(a[order_a], b[order_b], rtol=0.0, atol=DUPLICATE_TOLERANCE_MM))


def _checked_planes(structure: Structure) -> list[ContourPlane]:
    """:func:`group_planes`, without repeated contours, warning about them and about self-crossing rings.

    A contour exported twice in a plane would cancel itself under the even-odd rule (a ring inside a ring is a
    hole); the repeat is dropped. A ring that crosses itself is kept, its inside taken by the even-odd rule, as
    for every ring."""
    from .polygons import ring_crosses_itself

    _check_contours(structure)
    planes = []
    repeats, crossing = [], []
    ordered, starts, plane_z = (
        _plane_groups(structure.contours, PLANE_TOLERANCE_MM) if structure.contours else ([], [0], [])
    )
    merged = [
        (plane_z[k], b - a)
        for k, (a, b) in enumerate(zip(starts[:-1], starts[1:]))
        if b - a > 1 and ordered[b - 1].z_mm - ordered[a].z_mm > MERGED_PLANES_MM
    ]
    for z_mm, a, b in zip(plane_z, starts[:-1], starts[1:]):  # the planes of group_planes, grouped once
        rings: list[np.ndarray] = []
        for contour in ordered[a:b]:
            ring = contour.points_mm
            if any(_same_ring(ring, kept) for kept in rings):
                repeats.append(z_mm)
                continue
            if ring_crosses_itself(ring):
                crossing.append(z_mm)
            rings.append(ring)
        planes.append(ContourPlane(z_mm, tuple(rings)))
    where = f"{structure.source}: " if structure.source else ""
    messages = []
    if repeats:
        messages.append(
            f"{where}ROI {structure.name!r}: {len(repeats)} contour(s) repeat another of their plane (first at "
            f"z = {repeats[0]:g} mm); the repeats are ignored, since by the even-odd rule a contour drawn twice "
            "would cancel itself"
        )
    if merged:
        messages.append(
            f"{where}ROI {structure.name!r}: contours less than {PLANE_TOLERANCE_MM:g} mm apart in z were merged "
            f"into one plane at {len(merged)} place(s) (first at z = {merged[0][0]:g} mm, {merged[0][1]} contours): "
            "within a plane the even-odd rule makes overlapping contours holes in each other, so the volume may be "
            "far too small; give each plane's contours one z"
        )
    if crossing:
        messages.append(
            f"{where}ROI {structure.name!r}: {len(crossing)} contour(s) cross themselves (first at "
            f"z = {crossing[0]:g} mm); their inside is taken by the even-odd rule"
        )
    for message in messages:
        log.warning("%s", message)
    _PLANE_WARNINGS[structure] = tuple(messages)
    return planes


def structure_warnings(structure: Structure) -> tuple[str, ...]:
    """The warnings given when the structure's planes were grouped (:func:`structure_planes`): repeated or
    self-crossing contours. Empty for a structure whose planes have not been grouped."""
    return _PLANE_WARNINGS.get(structure, ())


def structure_planes(structure: Structure) -> list[ContourPlane]:
    """The planes of a structure (:func:`group_planes` of its contours, checked by :func:`_checked_planes`),
    computed once per structure object."""
    planes = _PLANES.get(structure)
    if planes is None:
        planes = _PLANES[structure] = _checked_planes(structure)
    return planes


def median(values: np.ndarray) -> float:
    """``np.median`` of a non-empty 1-D array, the same value bit for bit (the middle value, or the mean of the
    middle two; NaN where any value is NaN), without the import of ``numpy.ma`` that ``np.median`` makes on its
    first call (about 17 ms of a one-off command)."""
    ordered = np.sort(values)  # NaNs last
    n = len(ordered)
    if np.isnan(ordered[-1]):
        return float("nan")
    middle = n // 2
    # As np.median's mean of the middle values, whose sum starts from 0.0: a zero's sign is that of 0.0 + x.
    if n % 2:
        return float(0.0 + ordered[middle])
    return float((0.0 + ordered[middle - 1] + ordered[middle]) / 2)


def nominal_spacing_mm(plane_z_mm: np.ndarray) -> float | None:
    """The typical distance between consecutive planes (their median), or None for a single plane."""
    if len(plane_z_mm) < 2:
        return None
    return median(np.diff(plane_z_mm))


def slab_bounds(
    plane_z_mm: np.ndarray, end_cap: str = "half", fallback_spacing_mm: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper z (mm) of the slab each plane stands for.

    ``plane_z_mm`` must be strictly increasing. ``fallback_spacing_mm`` gives the end-cap spacing of a
    structure with a single plane (typically the plane spacing of the whole structure set).
    """
    if end_cap not in END_CAPS:
        raise StructureError(f"end-cap must be one of {', '.join(END_CAPS)}, not {end_cap!r}")
    z = np.asarray(plane_z_mm, dtype=np.float64)
    n = len(z)
    if n == 0:
        return np.empty(0), np.empty(0)
    spacing = nominal_spacing_mm(z)
    if spacing is None:
        spacing = fallback_spacing_mm
    if spacing is None or not spacing > 0:
        raise StructureError("a structure with a single contour plane needs a plane spacing for its end-caps")
    cap = 0.5 * spacing if end_cap == "half" else 0.0
    lo = np.empty(n)
    hi = np.empty(n)
    lo[0] = z[0] - cap
    hi[-1] = z[-1] + cap
    # Neighbours meet halfway; across a gap (a structure in pieces) each side gets its end-cap.
    gap = np.diff(z) > GAP_FACTOR * spacing
    halfway = 0.5 * (z[:-1] + z[1:])
    hi[:-1] = np.where(gap, z[:-1] + cap, halfway)
    lo[1:] = np.where(gap, z[1:] - cap, halfway)
    return lo, hi


def common_plane_spacing_mm(structures: Sequence[Structure]) -> float | None:
    """Median plane spacing over all structures with two planes or more: the structure set's slice spacing.

    Only the planes' positions are needed, so structures whose planes have not been checked yet (the ROIs a
    case does not sample) are grouped without the checks of :func:`structure_planes`."""
    spacings = []
    for s in structures:
        z = _PLANE_Z.get(s)
        if z is None:  # the checks of structure_planes drop repeated rings, never planes: the same positions
            z = _PLANE_Z[s] = plane_positions_mm(s.contours)
        if len(z) >= 2:
            spacings.append(np.diff(z))
    if not spacings:
        return None
    spacing = np.concatenate(spacings)
    spacing = spacing[np.isfinite(spacing)]  # planes of contours built in Python with a NaN z: not a spacing
    return median(spacing) if len(spacing) else None


# --------------------------------------------------------------------------------------------------------
# Points in structures
# --------------------------------------------------------------------------------------------------------
def structure_contains(
    structure: Structure, points_mm: np.ndarray, end_cap: str = "half", fallback_spacing_mm: float | None = None
) -> np.ndarray:
    """Which ``(x, y, z)`` points lie inside the structure as isodose models it (slabs, even-odd rings)."""
    return PackedPlanes.of(structure_planes(structure), end_cap, fallback_spacing_mm).contain(points_mm)


@dataclass(frozen=True, eq=False)
class PackedPlanes:
    """A structure's planes and their slabs in flat arrays, to test points against (:meth:`contain`): a few
    buffers to pickle however many contours the structure has (a case planned in one process and finished in
    another), and a test that looks only at the plane whose slab holds the point."""

    def __reduce__(self):
        # Its small arrays in one buffer: much quicker to unpickle than one by one (see isodose.packing).
        return reduce_packed(self)

    #: Each plane's slab (:func:`slab_bounds`: increasing, never overlapping), where its rings start in
    #: ``ring_vertex_start``, where each ring's vertices start in ``vertices_mm`` (both with a final end), and
    #: the rings' (x, y) vertices.
    slab_lo_mm: np.ndarray
    slab_hi_mm: np.ndarray
    plane_ring_start: np.ndarray
    ring_vertex_start: np.ndarray
    vertices_mm: np.ndarray

    @classmethod
    def of(
        cls, planes: Sequence[ContourPlane], end_cap: str = "half", fallback_spacing_mm: float | None = None
    ) -> PackedPlanes:
        rings = [ring for plane in planes for ring in plane.rings]
        lo, hi = slab_bounds(np.array([p.z_mm for p in planes], dtype=np.float64), end_cap, fallback_spacing_mm)
        return cls(
            slab_lo_mm=lo,
            slab_hi_mm=hi,
            plane_ring_start=np.cumsum([0] + [len(p.rings) for p in planes], dtype=np.int64),
            ring_vertex_start=np.cumsum([0] + [len(r) for r in rings], dtype=np.int64),
            vertices_mm=(np.concatenate(rings).astype(np.float64, copy=False) if rings else np.empty((0, 2))),
        )

    def contain(self, points_mm: np.ndarray) -> np.ndarray:
        """Which ``(x, y, z)`` points lie inside (see :func:`structure_contains`): the even-odd test, with
        half-open edges as the coverage kernel's, against the rings of the one plane whose slab holds each point
        (compiled)."""
        from .polygons import points_in_packed_planes

        return points_in_packed_planes(
            self.slab_lo_mm, self.slab_hi_mm, self.plane_ring_start, self.ring_vertex_start, self.vertices_mm, points_mm
        )


@dataclass(frozen=True, eq=False)
class PlaneSets:
    """The planes of several structures (each a :class:`PackedPlanes`) joined in one set of flat arrays: a point
    tested against them all in one call (:meth:`holding`), and one buffer to pickle rather than one a structure.
    Structure ``k`` owns planes ``set_plane_start[k]:...``; its rings and vertices follow on from those before."""

    def __reduce__(self):
        return reduce_packed(self)

    slab_lo_mm: np.ndarray
    slab_hi_mm: np.ndarray
    plane_ring_start: np.ndarray
    ring_vertex_start: np.ndarray
    vertices_mm: np.ndarray
    set_plane_start: np.ndarray

    @classmethod
    def join(cls, planes: Sequence[PackedPlanes]) -> PlaneSets:
        rings = np.cumsum([0] + [int(p.plane_ring_start[-1]) for p in planes])
        vertices = np.cumsum([0] + [int(p.ring_vertex_start[-1]) for p in planes])
        return cls(
            slab_lo_mm=np.concatenate([[], *(p.slab_lo_mm for p in planes)]).astype(np.float64),
            slab_hi_mm=np.concatenate([[], *(p.slab_hi_mm for p in planes)]).astype(np.float64),
            plane_ring_start=np.concatenate(
                [[0], *(p.plane_ring_start[1:] + shift for p, shift in zip(planes, rings))]
            ).astype(np.int64),
            ring_vertex_start=np.concatenate(
                [[0], *(p.ring_vertex_start[1:] + shift for p, shift in zip(planes, vertices))]
            ).astype(np.int64),
            vertices_mm=np.concatenate([np.empty((0, 2)), *(p.vertices_mm.reshape(-1, 2) for p in planes)]),
            set_plane_start=np.cumsum([0] + [len(p.slab_lo_mm) for p in planes], dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.set_plane_start) - 1

    def holding(self, point_mm: np.ndarray) -> np.ndarray:
        """Which of the structures hold the ``(x, y, z)`` point (see :meth:`PackedPlanes.contain`), one bool each."""
        from .polygons import point_in_plane_sets

        return point_in_plane_sets(
            self.slab_lo_mm,
            self.slab_hi_mm,
            self.plane_ring_start,
            self.ring_vertex_start,
            self.vertices_mm,
            self.set_plane_start,
            point_mm,
        )

    def __getitem__(self, k: int) -> PackedPlanes:
        """Structure ``k``'s planes on their own (copies of its part)."""
        if not -len(self) <= k < len(self):
            raise IndexError(f"structure {k} of {len(self)}")
        k %= len(self)
        p0, p1 = int(self.set_plane_start[k]), int(self.set_plane_start[k + 1])
        r0, r1 = int(self.plane_ring_start[p0]), int(self.plane_ring_start[p1])
        v0, v1 = int(self.ring_vertex_start[r0]), int(self.ring_vertex_start[r1])
        return PackedPlanes(
            slab_lo_mm=self.slab_lo_mm[p0:p1].copy(),
            slab_hi_mm=self.slab_hi_mm[p0:p1].copy(),
            plane_ring_start=self.plane_ring_start[p0 : p1 + 1] - r0,
            ring_vertex_start=self.ring_vertex_start[r0 : r1 + 1] - v0,
            vertices_mm=self.vertices_mm[v0:v1].copy(),
        )


# --------------------------------------------------------------------------------------------------------
# Rigid transforms
# --------------------------------------------------------------------------------------------------------
#: Tolerance on the orthonormality of a rigid rotation (matrices are stored as rounded decimal strings).
RIGID_TOLERANCE = 1e-4


def check_rigid(matrix: np.ndarray, what: str = "matrix") -> np.ndarray:
    """Return ``matrix`` as a 4x4 float array if it is a rigid transform (rotation and translation)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise RegistrationError(f"{what} is not a finite 4x4 matrix")
    if np.max(np.abs(m[3] - [0, 0, 0, 1])) > RIGID_TOLERANCE:
        raise RegistrationError(f"{what} has last row {np.round(m[3], 6).tolist()}, not (0, 0, 0, 1)")
    rotation = m[:3, :3]
    error = np.max(np.abs(rotation.T @ rotation - np.eye(3)))
    if error > RIGID_TOLERANCE or np.linalg.det(rotation) < 0:
        raise RegistrationError(
            f"{what} is not rigid (its 3x3 part departs from a rotation by {error:.2g}"
            f"{', and mirrors' if np.linalg.det(rotation) < 0 else ''}); only rigid registrations are supported"
        )
    return m


def rigid_matrix(angle_deg: float = 0.0, axis=(0.0, 0.0, 1.0), translation_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The 4x4 rigid transform ``p -> R p + t``: a rotation about an axis through the origin, then a translation.

    For registrations built by hand and for tests.

    Parameters
    ----------
    angle_deg : float
        The rotation, degrees, right-handed about ``axis``.
    axis : sequence of float
        The rotation's axis ``(x, y, z)``, any non-zero length.
    translation_mm : sequence of float
        The translation ``(x, y, z)``, mm, applied after the rotation.

    Returns
    -------
    numpy.ndarray
        The 4x4 matrix (float64) acting on ``[x, y, z, 1]``.

    Raises
    ------
    ValueError
        For an axis that is not a non-zero 3-vector.

    Examples
    --------
    >>> import numpy as np
    >>> m = rigid_matrix(90.0, (0, 0, 1), (0.0, 0.0, 5.0))
    >>> np.round(m @ [1.0, 0.0, 0.0, 1.0], 6).tolist()
    [0.0, 1.0, 5.0, 1.0]
    """
    u = np.asarray(axis, dtype=np.float64)
    if u.shape != (3,) or not np.linalg.norm(u) > 0:
        raise ValueError(f"the rotation axis must be a non-zero 3-vector, not {axis!r}")
    u = u / np.linalg.norm(u)
    angle = np.radians(angle_deg)
    k = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)
    matrix[:3, 3] = translation_mm
    return matrix


def invert_rigid(matrix: np.ndarray) -> np.ndarray:
    inverse = np.eye(4)
    inverse[:3, :3] = matrix[:3, :3].T
    inverse[:3, 3] = -matrix[:3, :3].T @ matrix[:3, 3]
    return inverse


def transform_points(matrix: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def registration_matrix(registration: Registration, from_uid: str, to_uid: str) -> np.ndarray:
    """The rigid matrix taking points of frame ``from_uid`` to frame ``to_uid`` through ``registration``."""
    if from_uid == to_uid:
        return np.eye(4)
    registered = registration.frame_of_reference_uid
    matrices = registration.matrices
    path = registration.source or None
    if to_uid == registered and from_uid in matrices:
        return matrices[from_uid]
    if from_uid == registered and to_uid in matrices:
        return invert_rigid(matrices[to_uid])
    if from_uid in matrices and to_uid in matrices:  # both registered to a third frame
        return invert_rigid(matrices[to_uid]) @ matrices[from_uid]
    raise RegistrationError(
        f"the registration (frame {registered}, sources {', '.join(matrices) or 'none'}) does not map frame "
        f"{from_uid} to frame {to_uid}",
        path=path,
    )
