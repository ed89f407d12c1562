"""Dose at the weighted samples of a sampling plan, accumulated per structure by the chosen backend.

Many requests (the structures of many cases, each in its own dose grid) can be sampled together: a backend
that reads many grids in one launch (the GPU) then gets them all as one merged plan.

The plan is processed in batches of planes bounded by ``max_cells_per_batch`` cells (and, on a device, by
half of its free memory), so that memory stays bounded for any structure; a batch that still runs out of
memory is split in two and retried, never left partial. Batches and chunks depend only on the input (and
the memory at hand), so results do not depend on the machine's thread count. Dmin and Dmax also take the dose
at every contour vertex on both faces of its slab, so that extremes on the surface are not missed between
interior samples, and at every point of the dose grid inside the structure, so that a hot or cold voxel inside
it is not missed either.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .dispatch import Backend
from .errors import DoseGridError, IsodoseError
from .geometry import transform_points
from .model import DoseGrid, first_grid_index_at_or_above
from .voxelize import SamplingOptions, SamplingPlan, mask_cells


@dataclass(frozen=True, eq=False)
class StructureSamples:
    """Raw per-structure results: a dose histogram (mm^3 per bin from 0 Gy) and exact sums."""

    hist_mm3: np.ndarray
    bin_width_gy: float
    inside_mm3: np.ndarray
    outside_mm3: np.ndarray
    dose_volume_sum: np.ndarray
    dmin_gy: np.ndarray
    dmax_gy: np.ndarray
    #: Volume centroid of each structure (all of it, inside and outside the grid) in the dose grid's frame.
    centroid_mm: np.ndarray
    backend: str
    device: str
    #: What sampling found to warn about, one message per structure or fewer (a deformation that does not cover
    #: a structure, say); they reach the DVHs made from these samples (:func:`isodose.dvh.dvhs_from_samples`).
    warnings: tuple[str, ...] = ()
    #: Where the samples were carried through the inverse of a deformation, the largest residual of the inversion
    #: (mm); NaN otherwise.
    inversion_residual_mm: float = math.nan
    #: Each structure's in-plane cells (its planes' lattice windows, summed) and its supersampling (cells per dose
    #: voxel side), as its plan chose them; None where not known.
    cells: np.ndarray | None = None
    supersampling: np.ndarray | None = None
    #: Each structure's first and last bin of ``hist_mm3`` that hold mass, ``(n_structures, 2)``, where the backend
    #: found them (the bins outside hold exactly nothing); None where not known (every bin is then read).
    hist_span: np.ndarray | None = None


def dose_range_gy(grid: DoseGrid) -> tuple[float, float]:
    """The lowest and highest dose of the grid. The doses must be finite and not negative (else a
    :class:`DoseGridError` naming the grid's source): a DVH's bins start at 0 Gy."""
    if not grid.dose_gy.size:
        return 0.0, 0.0
    low, high = float(grid.dose_gy.min()), float(grid.dose_gy.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise DoseGridError("dose holds NaN or infinite values", path=grid.source or None)
    if low < 0:
        raise DoseGridError(
            f"dose holds negative values (down to {low:.4g} Gy); DVHs need doses of 0 Gy or more",
            path=grid.source or None,
        )
    return low, high


def histogram_bin_width(grid: DoseGrid, n_bins: int, dose_range: tuple[float, float] | None = None) -> float:
    """Bin width (Gy) of histograms spanning 0 to just above the grid's maximum dose (``dose_range``, the
    grid's :func:`dose_range_gy` when already known)."""
    _, high = dose_range if dose_range is not None else dose_range_gy(grid)
    top = high * (1.0 + 1e-6)
    return (top if top > 0 else 1.0) / n_bins


@dataclass(frozen=True, eq=False)
class SamplingRequest:
    """The structures of one sampling plan, to be sampled in one dose grid; ``transforms`` (one rigid 4x4 per
    structure, identity by default) map each structure's coordinates into the grid's frame."""

    plan: SamplingPlan
    grid: DoseGrid
    transforms: np.ndarray | None = None
    #: ``(grid, low, high)``: a grid's :func:`dose_range_gy` taken where the request was made (by a process
    #: that reads and plans, so that the one that samples need not scan the grid again). Used only while that
    #: grid is the request's own: a copy of the request onto another grid scans the other grid.
    known_dose_range: tuple[DoseGrid, float, float] | None = None
    #: ``(grid, extremes, (plan, transforms))``: :meth:`grid_extremes` taken where the request was made (by a process
    #: that reads and plans: the one driving a GPU then need not search the grid), used only while that grid, plan
    #: and transforms are the request's own (see :meth:`known`).
    known_grid_extremes: tuple[DoseGrid, np.ndarray, tuple] | None = None
    #: ``(grid, extremes, (plan, transforms))``: :meth:`vertex_extremes` taken where the request was made, used only
    #: while they are the request's own (the one driving a GPU then neither interpolates the vertices nor receives
    #: them).
    known_vertex_extremes: tuple[DoseGrid, np.ndarray, tuple] | None = None
    #: Whether its plan's vertices were let go of (:meth:`without_vertices`): their extremes are then only known.
    vertices_dropped: bool = False

    def known(self, taken: tuple | None) -> np.ndarray | None:
        """The value of ``taken`` (``known_grid_extremes`` or ``known_vertex_extremes``) where it was taken of this
        request's own grid, plan and transforms (a copy of the request with another of them takes it anew); else
        None."""
        if taken is None or taken[0] is not self.grid:
            return None
        plan, transforms = taken[2]
        return taken[1] if plan is self.plan and transforms is self.transforms else None

    def _taken(self, value: np.ndarray, grid: DoseGrid | None = None, plan: SamplingPlan | None = None) -> tuple:
        return (
            self.grid if grid is None else grid,
            value,
            (self.plan if plan is None else plan, self.transforms),
        )

    def with_grid_extremes(self) -> SamplingRequest:
        """This request with :meth:`grid_extremes` taken now."""
        return self._keeping(replace(self, known_grid_extremes=self._taken(self.grid_extremes())))

    def with_vertex_extremes(self) -> SamplingRequest:
        """This request with :meth:`vertex_extremes` taken now."""
        return self._keeping(replace(self, known_vertex_extremes=self._taken(self.vertex_extremes())))

    def _keeping(self, moved: SamplingRequest) -> SamplingRequest:
        """``moved`` (a copy of this request) with what was taken of this one's plan and transforms."""
        for taken in ("_structure_transforms", "_extent_mm"):
            if taken in self.__dict__:
                moved.__dict__[taken] = self.__dict__[taken]
        return moved

    def vertex_extremes(self) -> np.ndarray:
        """Each structure's lowest and highest dose at its contours' vertices, ``(n_structures, 2)`` (see
        :func:`vertex_point_extremes`): as taken where the request was made, else now, on the host."""
        known = self.known(self.known_vertex_extremes)
        if known is not None:
            return known
        if self.vertices_dropped:
            raise ValueError("the extremes at a request's vertices, let go of, are known only on its own grid")
        return vertex_point_extremes(self.plan, self.structure_transforms(), self.grid)

    def without_vertices(self) -> SamplingRequest:
        """This request without its contours' vertices (its plan's ``vertex_points``), once their doses' extremes are
        known (:meth:`with_vertex_extremes`): what is sent to the process that samples it needs them for nothing
        else. What was taken of the request (its transforms, its extent) comes along."""
        known = self.known(self.known_vertex_extremes)
        if known is None:
            raise ValueError("a request lets go of its vertices only once their extremes are known on its grid")
        n = self.plan.n_structures
        plan = replace(self.plan, vertex_points=np.empty((0, 3)), vertex_structure_start=np.zeros(n + 1, np.int64))
        grid_extremes = self.known(self.known_grid_extremes)
        return self._keeping(
            replace(
                self,
                plan=plan,
                vertices_dropped=True,
                known_vertex_extremes=self._taken(known, plan=plan),
                known_grid_extremes=self._taken(grid_extremes, plan=plan) if grid_extremes is not None else None,
            )
        )

    def grid_extremes(self, to_host=np.asarray) -> np.ndarray:
        """Each structure's lowest and highest dose at the grid's own points inside it, ``(n_structures, 2)``, for
        its Dmin and Dmax (see :func:`grid_point_extremes`); ``to_host`` brings a grid on a device to the host."""
        known = self.known(self.known_grid_extremes)
        if known is not None:
            return known
        return grid_point_extremes(self.plan, self.structure_transforms(), self.grid, to_host)

    def with_dose_range(self, dose_range: tuple[float, float] | None = None) -> SamplingRequest:
        """This request with its grid's dose range known: ``dose_range`` (the grid's :func:`dose_range_gy`,
        taken once for the requests of one grid), else taken now (and the grid's doses checked)."""
        low, high = dose_range if dose_range is not None else dose_range_gy(self.grid)
        return replace(self, known_dose_range=(self.grid, low, high))

    def dose_range(self) -> tuple[float, float]:
        known = self.known_dose_range
        if known is not None and known[0] is self.grid:
            return known[1], known[2]
        return dose_range_gy(self.grid)

    def on_crop(self, grid: DoseGrid) -> SamplingRequest:
        """This request reading ``grid``, a crop of its own grid that holds its :meth:`extent_mm` (see
        :func:`cropped_grid`): it samples the same doses. What was taken of its own grid (dose range, extremes) and
        of its plan comes along: the dose range stays the whole grid's, and so do its histograms' bins."""
        low, high = self.dose_range()
        extremes = self.known_grid_extremes
        at_vertices = self.known_vertex_extremes
        moved = replace(
            self,
            grid=grid,
            known_dose_range=(grid, low, high),
            known_grid_extremes=self._taken(self.grid_extremes(), grid) if extremes is not None else None,
            known_vertex_extremes=self._taken(self.vertex_extremes(), grid) if at_vertices is not None else None,
        )
        return self._keeping(moved)

    def structure_transforms(self) -> np.ndarray:
        """Each structure's rigid 4x4 from its plan coordinates into the grid's frame: its transform after its
        frame (the identity for contours; a label image's axes for its structures). Taken once a request, and
        shared: never changed in place. A request made by a reading worker brings it along."""
        return self._structure_transforms

    @functools.cached_property
    def _structure_transforms(self) -> np.ndarray:
        n = self.plan.n_structures
        frame = self.plan.structure_frame
        if self.transforms is None:
            return frame if np.any(frame != np.eye(4)) else np.broadcast_to(np.eye(4), (n, 4, 4))
        transforms = np.ascontiguousarray(self.transforms, dtype=np.float64).reshape(n, 4, 4)
        moved = transforms @ frame
        moved.flags.writeable = False
        return moved

    def extent_mm(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The box (lowest and highest x, y, z, in the grid's frame) holding every point at which sampling this
        request reads the grid: its planes' cells and its contours' vertices, moved by their transforms. None
        when it has no planes. Taken once a request and shared, as :meth:`structure_transforms` is."""
        return self._extent_mm

    @functools.cached_property
    def _extent_mm(self) -> tuple[np.ndarray, np.ndarray] | None:
        return plan_extent_mm(self.plan, self.structure_transforms())


def plan_extent_mm(plan: SamplingPlan, transforms: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The box (lowest and highest x, y, z) holding every cell and vertex of ``plan``, each structure's moved by
    its rigid 4x4 of ``transforms`` into the grid's frame; None for a plan without planes."""
    with_planes = np.nonzero(np.isfinite(plan.structure_box_mm[:, 0, 0]))[0]
    if not len(with_planes):
        return None
    low, high = plan.structure_box_mm[with_planes, 0], plan.structure_box_mm[with_planes, 1]
    moved = np.asarray(transforms)[with_planes]
    if np.all(moved == np.eye(4)):  # most structures are in the grid's frame
        return low.min(axis=0), high.max(axis=0)
    # A rigid map of a box lies in the box of its eight corners.
    pick = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])  # (8, xyz): low 0 or high 1
    corners = np.where(pick[None] == 0, low[:, None, :], high[:, None, :])  # (structures, 8, xyz)
    mapped = np.einsum("sij,skj->ski", moved[:, :3, :3], corners) + moved[:, None, :3, 3]
    return mapped.min(axis=(0, 1)), mapped.max(axis=(0, 1))


def _grid_key(grid: DoseGrid) -> tuple:
    """What makes two grids the same for the kernels: one dose array at one place."""
    return (id(grid.dose_gy), tuple(map(float, grid.origin_mm)), tuple(map(float, grid.spacing_mm)))


def crop_window(grid: DoseGrid, low_mm: np.ndarray, high_mm: np.ndarray) -> tuple[slice, slice, slice]:
    """The ``(z, y, x)`` slices of ``grid`` that hold every voxel the trilinear interpolant reads at points of the
    box ``[low_mm, high_mm]``, with one voxel more on each side: interpolating in the cropped grid gives the
    whole grid's doses there, and a point outside the whole grid is outside the crop too. An axis keeps at least
    two voxels (one where the grid has one), so that no axis becomes a single-voxel slab."""
    shape = grid.dose_gy.shape  # (z, y, x)
    windows = []
    for axis, n in zip((2, 1, 0), shape):
        if n == 1:
            windows.append(slice(0, 1))
            continue
        origin, step = float(grid.origin_mm[axis]), float(grid.spacing_mm[axis])
        f_low, f_high = (float(low_mm[axis]) - origin) / step, (float(high_mm[axis]) - origin) / step
        first = min(max(math.floor(f_low) - 1, 0), n - 2)
        last = min(max(math.floor(f_high) + 2, first + 1), n - 1)
        windows.append(slice(first, last + 1))
    z, y, x = windows  # in the array's order
    return z, y, x


def union_box(
    boxes: Sequence[tuple[np.ndarray, np.ndarray] | None],
) -> tuple[np.ndarray, np.ndarray] | None:
    """The box ``(low, high)`` holding every box of ``boxes``; None where there is none, or where one is None (a use
    not known in advance) or not finite."""
    if not boxes or any(
        box is None or not (np.all(np.isfinite(box[0])) and np.all(np.isfinite(box[1]))) for box in boxes
    ):
        return None
    low = np.min(np.array([box[0] for box in boxes], dtype=np.float64), axis=0)  # type: ignore[index]
    high = np.max(np.array([box[1] for box in boxes], dtype=np.float64), axis=0)  # type: ignore[index]
    return low, high


def window_origin(grid: DoseGrid, window: tuple[slice, slice, slice]) -> np.ndarray:
    """The ``(x, y, z)`` centre (mm) of the first voxel of ``window`` (``(z, y, x)`` slices) of ``grid``."""
    z, y, x = window
    spacing = np.asarray(grid.spacing_mm, dtype=np.float64)
    shift = np.array([x.start, y.start, z.start], dtype=np.float64) * spacing
    return np.asarray(grid.origin_mm, dtype=np.float64) + shift


def cropped_grid(grid: DoseGrid, window: tuple[slice, slice, slice]) -> DoseGrid:
    """``grid`` cut to ``window`` (its doses copied, contiguous), with the origin :class:`GridBatch` gives such a
    crop; ``grid`` itself where the window is all of it."""
    if all(part.start == 0 and part.stop == n for part, n in zip(window, grid.dose_gy.shape)):
        return grid
    origin = window_origin(grid, window)
    return replace(
        grid,
        dose_gy=np.ascontiguousarray(grid.dose_gy[window]),
        origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
    )


@dataclass(frozen=True, eq=False)
class GridBatch:
    """The distinct dose grids of a batch of requests, put where the backend computes once for the whole batch
    (on a GPU: each copied to the device once), to sample them and to interpolate points in them.

    Grids are distinct by their dose array and geometry: several ``DoseGrid`` objects over one array (the cases
    of one plan) are one grid of the batch. On a backend whose ``grid_table`` copies the grids (``COPIES_GRIDS``:
    the GPU), a grid whose every use is known (:meth:`of` with extents) is copied cropped to the box of its
    uses: the doses at any point of that box are the whole grid's."""

    grids: tuple[DoseGrid, ...]
    #: The backend's table of the grids (see :meth:`isodose.kernels.protocol.Kernels.grid_table`).
    table: object
    backend: Backend
    #: Each grid's window in its dose array, ``(z, y, x)`` slices (the whole grid where it is not cropped).
    windows: tuple[tuple[slice, slice, slice], ...] = ()
    #: Each grid's key (its dose array and geometry), in the order of ``grids``.
    keys: tuple[tuple, ...] = ()

    @classmethod
    def of(
        cls,
        grids: Sequence[DoseGrid],
        backend: Backend,
        extents: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
    ) -> GridBatch:
        """The batch of ``grids``, each distinct grid once, in the order first met.

        ``extents`` (one per grid, in the grid's frame) bound every point at which the batch will read each
        grid: a box ``(low, high)``, or None where a use is not known in advance (then that grid is whole).
        Without them, every grid is whole."""
        distinct: dict[tuple, DoseGrid] = {}
        uses: dict[tuple, list[tuple[np.ndarray, np.ndarray] | None]] = {}
        known = extents is not None and backend.kernels.COPIES_GRIDS
        for k, grid in enumerate(grids):
            key = _grid_key(grid)
            distinct.setdefault(key, grid)
            uses.setdefault(key, []).append(extents[k] if known and extents is not None else None)
        boxes = {key: union_box(boxes) for key, boxes in uses.items()}
        entries = []
        windows = []
        for key, g in distinct.items():
            nz, ny, nx = g.dose_gy.shape
            whole = (slice(0, nz), slice(0, ny), slice(0, nx))
            box = boxes.get(key)
            window = crop_window(g, *box) if box is not None else whole
            spacing = np.asarray(g.spacing_mm, dtype=np.float64)
            if window == whole:
                entries.append((g.dose_gy, np.asarray(g.origin_mm, dtype=np.float64), spacing))
            else:
                entries.append((g.dose_gy[window], window_origin(g, window), spacing))
            windows.append(window)
        table = backend.kernels.grid_table(entries)
        return cls(tuple(distinct.values()), table, backend, tuple(windows), tuple(distinct))

    def index(self, grid: DoseGrid) -> int:
        """The position of ``grid`` in the batch (a ValueError for a grid not in it)."""
        for k, candidate in enumerate(self.grids):
            if candidate is grid:
                return k
        try:
            return self.keys.index(_grid_key(grid))
        except ValueError:
            raise ValueError("this dose grid is not part of the batch") from None

    def dose_at(self, points_mm: np.ndarray, point_grid: np.ndarray) -> np.ndarray:
        """The trilinear dose (Gy) at each ``(x, y, z)`` point in its grid of the batch (``point_grid[n]``), NaN
        outside the grid: one call of the backend for all the points."""
        points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
        if not len(points):
            return np.empty(0)
        grid = np.asarray(point_grid, dtype=np.int64).reshape(-1)
        return np.asarray(self.backend.kernels.trilinear_many(self.table, points, grid), dtype=np.float64)


def sample_structures(
    plan: SamplingPlan,
    grid: DoseGrid,
    backend: Backend,
    options: SamplingOptions,
    transforms: np.ndarray | None = None,
) -> StructureSamples:
    """Sample every structure of ``plan``; ``transforms`` (one rigid 4x4 per structure, identity by default)
    maps each structure's coordinates into the dose grid's frame."""
    [samples] = sample_many([SamplingRequest(plan, grid, transforms)], backend, options)
    return samples


def sample_many(
    requests: Sequence[SamplingRequest],
    backend: Backend,
    options: SamplingOptions,
    grids: GridBatch | None = None,
) -> list[StructureSamples]:
    """Sample the structures of many requests (of many cases, in many dose grids).

    Backends that prefer merged requests (``PREFERS_MERGED_REQUESTS``: the GPU) get all the requests as one
    merged plan, in as few launches as memory allows; the others take the requests one at a time. Either way
    each request's result is the one :func:`sample_structures` gives it alone. ``grids`` holds the requests'
    grids when the caller has put them on the backend already (to interpolate points in them afterwards).
    """
    requests = list(requests)
    batch = (
        grids
        if grids is not None
        else GridBatch.of([r.grid for r in requests], backend, [r.extent_mm() for r in requests])
    )
    if len(requests) > 1 and backend.kernels.PREFERS_MERGED_REQUESTS:
        return _sample(requests, backend, options, batch)
    return [_sample([request], backend, options, batch)[0] for request in requests]


def plan_cells(kernels, plan: SamplingPlan, first: int, end: int):
    """The cells of planes ``first:end`` of ``plan`` where the backend computes: contours' covered by the coverage
    kernel, label images' weighted voxels (:func:`~isodose.voxelize.mask_cells`) written in their place; planes that
    are all label images' need no coverage kernel."""
    masks = plan.plane_mask_m[first:end] > 0
    if masks.all():
        return kernels.asarray(mask_cells(plan, first, end))
    cell_start = plan.plane_cell_start[first : end + 1]
    ring_start = plan.plane_ring_start[first : end + 1]
    vertex_start = plan.ring_start[ring_start[0] : ring_start[-1] + 1]
    cells = kernels.polygon_coverage(
        plan.vertices[vertex_start[0] : vertex_start[-1]],
        vertex_start - vertex_start[0],
        ring_start - ring_start[0],
        cell_start - cell_start[0],
        plan.plane_x0_mm[first:end],
        plan.plane_y0_mm[first:end],
        plan.plane_nx[first:end],
        plan.plane_ny[first:end],
        plan.plane_hx_mm[first:end],
        plan.plane_hy_mm[first:end],
        plan.plane_scanlines[first:end],
    )
    for p in first + np.flatnonzero(masks):  # label images' planes among contours'
        rows = slice(int(plan.plane_cell_start[p] - cell_start[0]), int(plan.plane_cell_start[p + 1] - cell_start[0]))
        cells[rows] = kernels.asarray(mask_cells(plan, int(p), int(p) + 1))
    return cells


def grid_point_extremes(plan: SamplingPlan, transforms: np.ndarray, grid: DoseGrid, to_host=np.asarray) -> np.ndarray:
    """Each structure's lowest and highest dose at the dose grid's own points inside it, ``(n_structures, 2)``
    (``inf, -inf`` where none lies inside, or where it is not searched): for Dmin and Dmax, so that an extreme inside
    a structure, a hot spot at a voxel, is not missed between its samples (which lie at the centres of cells,
    between the grid's points) nor left to its contours' vertices (which see its surface alone). Structures in the
    grid's frame (an identity transform): the grid's points inside their contours, and inside the weighted voxels of
    an axial label image's planes; not structures mapped by a registration, nor an oblique label image's. ``to_host``
    brings a grid on a device to the host (once)."""
    from .polygons import grid_extremes_in_planes

    extremes = np.tile([np.inf, -np.inf], (plan.n_structures, 1))
    identity = np.nonzero(np.all(np.asarray(transforms) == np.eye(4), axis=(1, 2)))[0]
    if not len(identity):
        return extremes
    dose = np.asarray(to_host(grid.dose_gy))
    for s in identity:
        for p in range(int(plan.structure_plane_start[s]), int(plan.structure_plane_start[s + 1])):
            if plan.plane_mask_m[p] > 0:
                low, high = _mask_plane_extremes(plan, p, dose, grid.origin_mm, grid.spacing_mm)
                extremes[s] = min(extremes[s, 0], low), max(extremes[s, 1], high)
        low, high = grid_extremes_in_planes(
            plan.structure_plane_start[s],
            plan.structure_plane_start[s + 1],
            plan.plane_z_lo_mm,
            plan.plane_z_hi_mm,
            plan.plane_ring_start,
            plan.ring_start,
            plan.vertices,
            dose,
            grid.origin_mm,
            grid.spacing_mm,
        )
        extremes[s] = min(extremes[s, 0], low), max(extremes[s, 1], high)
    return extremes + 0.0  # a grid's -0.0 is a dose of 0.0


def vertex_point_extremes(plan: SamplingPlan, transforms: np.ndarray, grid: DoseGrid) -> np.ndarray:
    """Each structure's lowest and highest dose at its contours' vertices on both faces of their slabs (moved by
    ``transforms`` into the grid's frame) that lie inside the grid, ``(n_structures, 2)`` (``inf, -inf`` where none
    does): for Dmin and Dmax, so that an extreme on a structure's surface is not missed between its samples. The
    trilinear dose of the host's kernels (:func:`isodose.dispatch.host_kernels`), whichever backend then samples
    the structures: where cases are read, in a cohort run."""
    from .dispatch import host_kernels

    extremes = np.tile([np.inf, -np.inf], (plan.n_structures, 1))
    if not len(plan.vertex_points):
        return extremes
    vertex_start = np.asarray(plan.vertex_structure_start)
    vertices = _vertices_in_grid_frame(plan, np.asarray(transforms, dtype=np.float64).reshape(-1, 4, 4))
    dose = np.asarray(
        host_kernels().trilinear(
            grid.dose_gy,
            np.asarray(grid.origin_mm, dtype=np.float64),
            np.asarray(grid.spacing_mm, dtype=np.float64),
            np.ascontiguousarray(vertices, dtype=np.float64),
        ),
        dtype=np.float64,
    )
    _segment_extremes(dose, vertex_start, np.diff(vertex_start), extremes)
    return extremes


def _vertices_in_grid_frame(plan: SamplingPlan, transforms: np.ndarray) -> np.ndarray:
    """``plan``'s contour vertices, each structure's moved by its 4x4 of ``transforms`` into the grid's frame (the
    plan's own array where none moves: most structures are in the grid's frame)."""
    vertex_start = plan.vertex_structure_start
    moved = ~np.all(transforms == np.eye(4), axis=(1, 2))
    if not moved.any():
        return plan.vertex_points
    vertices = plan.vertex_points.copy()
    for s in np.nonzero(moved & (np.diff(vertex_start) > 0))[0]:
        segment = slice(vertex_start[s], vertex_start[s + 1])
        vertices[segment] = transform_points(transforms[s], vertices[segment])
    return vertices


def _segment_extremes(dose: np.ndarray, vertex_start: np.ndarray, vertex_counts: np.ndarray, out: np.ndarray) -> None:
    """Into ``out`` (``(n_structures, 2)``, ``inf, -inf`` to begin with): each structure's lowest and highest of
    ``dose`` over its vertices ``vertex_start[s]:...``, leaving out NaN (a vertex outside the grid)."""
    finite = np.isfinite(dose)
    with_vertices = np.nonzero(vertex_counts > 0)[0]
    starts = vertex_start[with_vertices]
    out[with_vertices, 0] = np.minimum.reduceat(np.where(finite, dose, np.inf), starts)
    out[with_vertices, 1] = np.maximum.reduceat(np.where(finite, dose, -np.inf), starts)


def _mask_plane_extremes(plan: SamplingPlan, p: int, dose: np.ndarray, origin, spacing) -> tuple[float, float]:
    """The lowest and highest of ``dose`` at the grid's points inside the weighted voxels of plane ``p``, a label
    image's plane in the grid's frame (its window's voxels, ``[edge, edge + voxel)`` along x and y, and its slab
    ``[z_lo, z_hi)``): ``(inf, -inf)`` where none lies inside."""
    nz, ny, nx = dose.shape
    m = int(plan.plane_mask_m[p])
    voxel_x, voxel_y = m * float(plan.plane_hx_mm[p]), m * float(plan.plane_hy_mm[p])
    columns, rows = int(plan.plane_nx[p]) // m, int(plan.plane_ny[p]) // m
    weights = plan.mask_weights[plan.plane_weight_start[p] : plan.plane_weight_start[p + 1]].reshape(rows, columns)
    x0, y0 = float(plan.plane_x0_mm[p]), float(plan.plane_y0_mm[p])

    def lattice(o: float, step: float, n: int, lo: float, hi: float) -> np.ndarray:
        """The indices of the grid coordinates ``o + index * step`` in ``[lo, hi)``."""
        return np.arange(first_grid_index_at_or_above(lo, o, step, n), first_grid_index_at_or_above(hi, o, step, n))

    ks = lattice(origin[2], spacing[2], nz, float(plan.plane_z_lo_mm[p]), float(plan.plane_z_hi_mm[p]))
    js = lattice(origin[1], spacing[1], ny, y0, y0 + rows * voxel_y)
    i_s = lattice(origin[0], spacing[0], nx, x0, x0 + columns * voxel_x)
    if not (len(ks) and len(js) and len(i_s)):
        return math.inf, -math.inf
    row = np.minimum(((origin[1] + js * spacing[1] - y0) // voxel_y).astype(np.int64), rows - 1)
    column = np.minimum(((origin[0] + i_s * spacing[0] - x0) // voxel_x).astype(np.int64), columns - 1)
    held = weights[row[:, None], column[None, :]] > 0  # (grid rows, grid columns) inside a weighted voxel
    if not held.any():
        return math.inf, -math.inf
    values = dose[np.ix_(ks, js, i_s)][:, held]
    return float(values.min()), float(values.max())


def merge_plans(plans: Sequence[SamplingPlan]) -> SamplingPlan:
    """One plan holding the structures of all ``plans``, in order (their offsets shifted)."""
    if len(plans) == 1:
        return plans[0]

    def starts(name: str) -> np.ndarray:
        arrays = [getattr(p, name) for p in plans]
        shifts = np.cumsum([0] + [int(a[-1]) for a in arrays[:-1]])
        return np.concatenate([arrays[0]] + [a[1:] + shift for a, shift in zip(arrays[1:], shifts[1:])])

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in plans])

    return SamplingPlan(
        names=tuple(name for p in plans for name in p.names),
        vertices=np.concatenate([p.vertices for p in plans]),
        ring_start=starts("ring_start"),
        plane_ring_start=starts("plane_ring_start"),
        plane_cell_start=starts("plane_cell_start"),
        **{
            name: joined(name)
            for name in (
                "plane_x0_mm",
                "plane_y0_mm",
                "plane_nx",
                "plane_ny",
                "plane_hx_mm",
                "plane_hy_mm",
                "plane_z_lo_mm",
                "plane_z_hi_mm",
                "supersampling",
                "structure_box_mm",
                "structure_frame",
                "mask_weights",
                "plane_mask_m",
                "plane_scanlines",
            )
        },
        plane_weight_start=starts("plane_weight_start"),
        structure_plane_start=starts("structure_plane_start"),
        vertex_points=np.concatenate([p.vertex_points for p in plans]),
        vertex_structure_start=starts("vertex_structure_start"),
    )


def _sample(
    requests: list[SamplingRequest], backend: Backend, options: SamplingOptions, batch: GridBatch
) -> list[StructureSamples]:
    kernels = backend.kernels
    plan = merge_plans([r.plan for r in requests])
    n_structures = plan.n_structures
    n_bins = options.dose_bins
    counts = [r.plan.n_structures for r in requests]
    request_bin_width = np.array([histogram_bin_width(r.grid, n_bins, r.dose_range()) for r in requests])
    structure_request = np.repeat(np.arange(len(requests), dtype=np.int64), counts)
    structure_grid = np.array([batch.index(r.grid) for r in requests], dtype=np.int64)[structure_request]
    bin_width = request_bin_width[structure_request]
    transforms = np.concatenate([r.structure_transforms() for r in requests]) if n_structures else np.zeros((0, 4, 4))

    def histograms(cells, cell_start, z_lo, z_hi, structure_start, present):
        return kernels.cell_histograms_many(
            batch.table,
            cells,
            cell_start,
            z_lo,
            z_hi,
            structure_start,
            structure_grid[present],
            transforms[present],
            bin_width[present],
            n_bins,
            options.chunks,
        )

    hist: np.ndarray | None = None  # (n_structures, n_bins), made by the first batch
    # The first and last bins with mass, where every batch's kernels said (else None).
    span: np.ndarray | None = np.tile(np.array([n_bins, -1], dtype=np.int64), (n_structures, 1))
    sums = np.zeros((n_structures, 6))  # inside, outside, dose x volume, x, y, z x volume
    dmin = np.full(n_structures, np.inf)
    dmax = np.full(n_structures, -np.inf)
    plane_structure = plan.plane_structure()

    out_of_memory = kernels.out_of_memory_errors()
    max_cells = options.max_cells_per_batch
    free = kernels.free_memory_bytes()
    if free:  # a device's memory: use at most half of what is free now
        max_cells = max(1, min(max_cells, int(0.5 * free / kernels.BYTES_PER_CELL)))

    def run_batch(first: int, end: int) -> None:
        nonlocal hist, span
        cell_start = plan.plane_cell_start[first : end + 1]
        # The structures present in this batch, and where each one's planes start within it.
        owners = plane_structure[first:end]
        present, first_plane = np.unique(owners, return_index=True)
        structure_start = np.append(first_plane, end - first)
        try:
            cells = plan_cells(kernels, plan, first, end)
            batch_hist, batch_stats = histograms(
                cells,
                cell_start - cell_start[0],
                plan.plane_z_lo_mm[first:end],
                plan.plane_z_hi_mm[first:end],
                structure_start,
                present,
            )
            del cells
        except out_of_memory as exc:
            # Not enough memory for this batch: split it and try again; a single plane cannot be split.
            if end - first == 1:
                name = plan.names[int(owners[0])]
                raise IsodoseError(
                    f"not enough memory for one contour plane ({int(cell_start[-1] - cell_start[0]):,} cells on "
                    f"{backend.name}); lower the supersampling",
                    obj=f"ROI {name!r}",
                ) from exc
            middle = (first + end) // 2
            run_batch(first, middle)
            run_batch(middle, end)
            return
        batch_hist = np.asarray(batch_hist)
        batch_stats = np.asarray(batch_stats)
        # The structures present are consecutive unless an empty one lies between: then a view, added in place.
        rows = slice(present[0], present[-1] + 1) if present[-1] - present[0] + 1 == len(present) else present
        if hist is None and len(present) == n_structures and batch_hist.dtype == np.float64:
            # The first batch holds every structure (the common case: it holds all of them): its histograms as
            # they came, rather than added to zeros (a batch of 32 cases has 20 MB of them).
            hist = batch_hist if batch_hist.flags.writeable else batch_hist.copy()
        else:
            if hist is None:
                hist = np.zeros((n_structures, n_bins))
            hist[rows] += batch_hist
        sums[rows] += batch_stats[:, [0, 1, 2, 5, 6, 7]]
        dmin[rows] = np.fmin(dmin[rows], batch_stats[:, 3])
        dmax[rows] = np.fmax(dmax[rows], batch_stats[:, 4])
        if span is not None and batch_stats.shape[1] >= 10:
            span[rows, 0] = np.minimum(span[rows, 0], batch_stats[:, 8].astype(np.int64))
            span[rows, 1] = np.maximum(span[rows, 1], batch_stats[:, 9].astype(np.int64))
        else:
            span = None

    for first, end in plan.batches(max_cells):
        run_batch(first, end)
    if hist is None:  # no planes
        hist = np.zeros((n_structures, n_bins))

    # Each structure's extremes over its contours' vertices inside the grid, where it has volume inside: as taken
    # where the requests were made (a reading worker's, on the host), else here, in the batch's grids.
    known_vertices = [r.known(r.known_vertex_extremes) for r in requests]
    if any(k is None and r.vertices_dropped for k, r in zip(known_vertices, requests)):
        raise ValueError("a request whose vertices were let go of is sampled only on its own grid")
    at_vertices = np.tile([np.inf, -np.inf], (n_structures, 1))
    if any(k is None for k in known_vertices) and len(plan.vertex_points):
        vertex_start = plan.vertex_structure_start
        vertex_counts = np.diff(vertex_start)
        vertices = _vertices_in_grid_frame(plan, transforms)
        vertex_dose = batch.dose_at(vertices, np.repeat(structure_grid, vertex_counts))
        _segment_extremes(vertex_dose, vertex_start, vertex_counts, at_vertices)
    request_start = np.cumsum([0, *counts])
    for r, known in enumerate(known_vertices):
        if known is not None:
            at_vertices[request_start[r] : request_start[r + 1]] = known
    rows = np.nonzero(sums[:, 0] > 0)[0]
    dmin[rows] = np.minimum(dmin[rows], at_vertices[rows, 0])
    dmax[rows] = np.maximum(dmax[rows], at_vertices[rows, 1])

    if options.extremes == "vertices":  # the grid's own points inside each structure (with volume inside) too
        at_points = np.concatenate([r.grid_extremes(kernels.to_host) for r in requests]) if requests else None
        if at_points is not None:
            rows = np.nonzero(sums[:, 0] > 0)[0]
            dmin[rows] = np.minimum(dmin[rows], at_points[rows, 0])
            dmax[rows] = np.maximum(dmax[rows], at_points[rows, 1])

    dmin[~np.isfinite(dmin)] = np.nan
    dmax[~np.isfinite(dmax)] = np.nan
    volume = sums[:, 0] + sums[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = np.where(volume[:, None] > 0, sums[:, 3:6] / volume[:, None], np.nan)
    cells = plan.structure_cells()
    results = []
    bounds = np.cumsum([0, *counts])
    for r, (first, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = slice(first, end)  # views of the merged arrays, not copies
        results.append(
            StructureSamples(
                hist_mm3=hist[part],
                bin_width_gy=float(request_bin_width[r]),
                inside_mm3=sums[part, 0],
                outside_mm3=sums[part, 1],
                dose_volume_sum=sums[part, 2],
                dmin_gy=dmin[part],
                dmax_gy=dmax[part],
                centroid_mm=centroid[part],
                backend=backend.name,
                device=backend.device,
                cells=cells[part],
                supersampling=plan.supersampling[part],
                hist_span=span[part] if span is not None else None,
            )
        )
    return results
