"""Structures turned into a sampling plan: flat arrays of rings, planes, slabs and lattice windows.

Every contour plane gets a lattice window of cells covering its rings. Cells are aligned with the dose
grid (their edges fall on the lines through the voxel centres) and are ``dx/m`` by ``dy/m`` mm, where ``m``
is the in-plane supersampling; the coverage kernel measures how much of each cell the even-odd interior
of the rings covers. Each plane's slab (see :mod:`isodose.geometry`) gives its extent along z.

The supersampling adapts to the structure, by what its metrics need:

- the dose: a cell's dose is spread over the variance of the linear dose across its covered part, so the
  sampling error of a DVH falls with cells per dose voxel; ``voxel_supersampling`` cells per voxel side suffice;
- its shape: a structure of a few voxels still gets at least ``min_cells`` cells (summed over its planes);
- and never more than about ``target_cells`` cells: large structures get coarse cells (one to a few per voxel
  side), so that the cost stays bounded.

So ``m = min(m(target_cells), max(voxel_supersampling, m(min_cells)))`` within ``[min_supersampling,
max_supersampling]``, where ``m(n)`` gives the structure about ``n`` cells. The volume comes from the scanlines
(coverage is exact along x and sampled along y): a structure whose cells are coarser than ``m(scanline_cells)``
gets that many times more scanlines per row, so that its lines lie as close as ``m(scanline_cells)`` cells' would
and its volume is as exact (``scanline_cells`` None: ``target_cells``). A structure whose volume alone is wanted
(``plan_sampling(..., volume_only=True)``: an ROI of a classification asked only for its volume) gets no cells per
voxel side for the dose, only what its shape needs, and as many more scanlines a row, which lie on the very lines
it would have had: its volume is the same. A fixed ``supersampling`` overrides all this (with ``scanlines`` as
given).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import numpy as np

from .errors import IsodoseError, StructureError
from .geometry import END_CAPS, common_plane_spacing_mm, slab_bounds, structure_planes
from .model import DoseGrid, Structure
from .packing import reduce_packed

#: Where Dmin and Dmax are taken (see :class:`SamplingOptions`).
EXTREMES = ("vertices", "samples")


@dataclass(frozen=True)
class SamplingOptions:
    """How finely structures are sampled. The defaults meet the Nelms 2015 bar (see the validation page).

    Parameters
    ----------
    supersampling : int, optional
        Cells per dose-voxel side in-plane; None (the default) adapts it to each structure's size.
    target_cells : int
        With adaptive supersampling, the most in-plane cells (over all planes) a structure gets, about.
    scanline_cells : int or None
        With adaptive supersampling, a structure's scanlines lie as close as they would with this many cells (two
        scanlines a row): its volume is as exact as theirs. None: ``target_cells``.
    voxel_supersampling : int
        With adaptive supersampling, the cells per dose-voxel side that suffice for the dose: a structure is
        sampled no finer than this unless its shape needs ``min_cells``.
    min_cells : int
        With adaptive supersampling, the fewest in-plane cells (over all planes) a structure gets, about.
    min_supersampling, max_supersampling : int
        The bounds of the adaptive supersampling.
    scanlines : int
        Scanlines per row of cells: coverage is exact along x and sampled at this many lines along y (more for a
        structure whose cells are coarser than ``target_cells`` would make them; see the module's text).
    end_cap : str
        End-caps of each contiguous piece of a structure: ``half`` a plane spacing (the default), or ``none``.
    extremes : str
        Where Dmin and Dmax are taken: ``vertices`` (the default) over the sampled volume, the dose at every
        contour vertex on both faces of its slab and at every point of the dose grid inside the structure (one in
        the grid's frame: not one mapped by a registration, nor an oblique label image's), so that an
        extreme on its surface, or at a voxel within it, is not missed between samples; or ``samples``, over the
        sampled volume alone.
    dose_bins : int
        Bins of the dose histogram, spanning 0 to the grid's maximum dose.
    max_cells_per_batch : int
        Cells processed per kernel launch at most (bounds memory: 48 bytes per cell); a larger plane stands alone.
    max_cells_per_plane : int
        Cells one contour plane may need at most; beyond it the structure is refused (a stray point, usually).
    chunks : int
        Fixed number of partial sums per structure, independent of the number of threads.

    Raises
    ------
    IsodoseError
        For an unknown end-cap or a value that is not a positive integer.

    Examples
    --------
    >>> from isodose import compute_dvhs
    >>> from isodose.phantoms import example_case
    >>> dose, structures = example_case()
    >>> [half] = compute_dvhs(dose, structures, ["PTV"])
    >>> [none] = compute_dvhs(dose, structures, ["PTV"], options=SamplingOptions(end_cap="none"))
    >>> round(half.volume_cc - none.volume_cc, 2)  # two end-caps: 1.5 mm of the 13.5 mm planes, each side
    0.4
    """

    supersampling: int | None = None
    target_cells: int = 50_000
    scanline_cells: int | None = 100_000
    voxel_supersampling: int = 8
    min_cells: int = 2_000
    min_supersampling: int = 1
    max_supersampling: int = 200
    scanlines: int = 2
    end_cap: str = "half"
    extremes: str = "vertices"
    dose_bins: int = 16384
    max_cells_per_batch: int = 4_000_000
    max_cells_per_plane: int = 16_000_000
    chunks: int = 16

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "end_cap":
                if value not in END_CAPS:
                    raise IsodoseError(f"end_cap must be one of {', '.join(END_CAPS)}, not {value!r}")
            elif f.name == "extremes":
                if value not in EXTREMES:
                    raise IsodoseError(f"extremes must be one of {', '.join(EXTREMES)}, not {value!r}")
            elif f.name in ("supersampling", "scanline_cells") and value is None:
                continue
            elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise IsodoseError(f"sampling option {f.name} must be a positive integer, not {value!r}")
        if self.min_supersampling > self.max_supersampling:
            raise IsodoseError("min_supersampling must not exceed max_supersampling")


def _structure_boxes(plan: SamplingPlan) -> np.ndarray:
    """:attr:`SamplingPlan.structure_box_mm` of ``plan``."""
    boxes = np.full((plan.n_structures, 2, 3), np.nan)
    plane_start = np.asarray(plan.structure_plane_start)
    with_planes = np.nonzero(np.diff(plane_start) > 0)[0]
    if not len(with_planes):
        return boxes
    plane_low = np.stack([plan.plane_x0_mm, plan.plane_y0_mm, plan.plane_z_lo_mm], axis=1)
    plane_high = np.stack(
        [
            plan.plane_x0_mm + plan.plane_nx * plan.plane_hx_mm,
            plan.plane_y0_mm + plan.plane_ny * plan.plane_hy_mm,
            plan.plane_z_hi_mm,
        ],
        axis=1,
    )
    # Structures own consecutive planes, and their vertices in the same order.
    low = np.minimum.reduceat(plane_low, plane_start[with_planes], axis=0)
    high = np.maximum.reduceat(plane_high, plane_start[with_planes], axis=0)
    vertex_start = np.asarray(plan.vertex_structure_start)
    has_vertices = np.diff(vertex_start)[with_planes] > 0
    if has_vertices.any():
        starts = vertex_start[with_planes[has_vertices]]
        low[has_vertices] = np.minimum(low[has_vertices], np.minimum.reduceat(plan.vertex_points, starts, axis=0))
        high[has_vertices] = np.maximum(high[has_vertices], np.maximum.reduceat(plan.vertex_points, starts, axis=0))
    boxes[with_planes, 0] = low
    boxes[with_planes, 1] = high
    return boxes


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """Flat arrays describing the rings, planes and lattice windows of a list of structures.

    Plane ``p``'s window is ``plane_nx[p]`` by ``plane_ny[p]`` cells of ``plane_hx_mm[p]`` by ``plane_hy_mm[p]``
    from its corner ``(plane_x0_mm[p], plane_y0_mm[p])``, and its slab spans ``[plane_z_lo_mm[p], plane_z_hi_mm[p]]``.

    Structure ``s`` owns planes ``structure_plane_start[s]:structure_plane_start[s+1]``; plane ``p`` owns
    rings ``plane_ring_start[p]:...`` and cells ``plane_cell_start[p]:...``; ring ``r`` owns vertices
    ``ring_start[r]:...``. ``vertex_points`` are every vertex at both faces of its slab (for Dmin and Dmax
    on the surface), structure ``s`` owning ``vertex_structure_start[s]:...``.
    """

    def __reduce__(self):
        # Its small arrays in one buffer: much quicker to unpickle than one by one (see isodose.packing).
        return reduce_packed(self)

    names: tuple[str, ...]
    vertices: np.ndarray
    ring_start: np.ndarray
    plane_ring_start: np.ndarray
    plane_cell_start: np.ndarray
    plane_x0_mm: np.ndarray
    plane_y0_mm: np.ndarray
    plane_nx: np.ndarray
    plane_ny: np.ndarray
    plane_hx_mm: np.ndarray
    plane_hy_mm: np.ndarray
    plane_z_lo_mm: np.ndarray
    plane_z_hi_mm: np.ndarray
    structure_plane_start: np.ndarray
    vertex_points: np.ndarray
    vertex_structure_start: np.ndarray
    supersampling: np.ndarray
    #: Scanlines per row of cells of each plane (a label image's planes need none; they hold its count).
    plane_scanlines: np.ndarray
    #: Each structure's box, ``[[low x, y, z], [high x, y, z]]``, holding its planes' cells and its vertices; NaN
    #: for a structure without planes. Computed from the rest when not given.
    structure_box_mm: np.ndarray = None  # type: ignore[assignment]
    #: Each structure's frame: the 4 x 4 taking its plan coordinates to patient coordinates (the identity for
    #: contours; a label image's index axes, scaled, for one of its structures that is not axial).
    structure_frame: np.ndarray = None  # type: ignore[assignment]
    #: Planes of label images (see :class:`~isodose.model.LabelMask`): plane ``p``'s voxel weights are
    #: ``mask_weights[plane_weight_start[p]:plane_weight_start[p + 1]]``, row by row, each voxel split into
    #: ``plane_mask_m[p]`` by ``plane_mask_m[p]`` cells of its window; ``plane_mask_m[p]`` is 0 for contours' planes.
    mask_weights: np.ndarray = None  # type: ignore[assignment]
    plane_weight_start: np.ndarray = None  # type: ignore[assignment]
    plane_mask_m: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n_planes = len(self.plane_nx)
        defaults = {
            "structure_frame": lambda: np.broadcast_to(np.eye(4), (self.n_structures, 4, 4)).copy(),
            "mask_weights": lambda: np.empty(0),
            "plane_weight_start": lambda: np.zeros(n_planes + 1, dtype=np.int64),
            "plane_mask_m": lambda: np.zeros(n_planes, dtype=np.int64),
        }
        for name, default in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default())
        if self.structure_box_mm is None:
            object.__setattr__(self, "structure_box_mm", _structure_boxes(self))

    @property
    def n_structures(self) -> int:
        return len(self.names)

    @property
    def n_cells(self) -> int:
        return int(self.plane_cell_start[-1])

    def batches(self, max_cells: int) -> Iterator[tuple[int, int]]:
        """Contiguous plane ranges of at most ``max_cells`` cells (a single larger plane stands alone)."""
        n_planes = len(self.plane_nx)
        starts = self.plane_cell_start
        start = 0
        while start < n_planes:
            # The last plane end within the limit (plane starts never decrease), and at least one plane.
            within = int(np.searchsorted(starts, starts[start] + max_cells, side="right")) - 1
            end = max(start + 1, min(within, n_planes))
            yield start, end
            start = end

    def structure_cells(self) -> np.ndarray:
        """Each structure's in-plane cells: the cells of its planes' lattice windows, summed (int64)."""
        counts = np.zeros(self.n_structures, dtype=np.int64)
        np.add.at(counts, self.plane_structure(), self.plane_nx * self.plane_ny)
        return counts

    def plane_structure(self) -> np.ndarray:
        """The structure index of each plane."""
        counts = np.diff(self.structure_plane_start)
        return np.repeat(np.arange(self.n_structures), counts)


def _area_estimates_mm2(points: np.ndarray, ring_start: np.ndarray) -> np.ndarray:
    """Each ring's area for choosing the cell size: the shoelace area, but at least a quarter of its bounding
    box, since the signed lobes of a self-intersecting ring can cancel (a bow-tie has a shoelace area of zero).
    The rings are ``points[ring_start[r]:ring_start[r + 1]]``, all in one array."""
    first = ring_start[:-1]
    counts = np.diff(ring_start)
    centred = points - np.repeat(np.add.reduceat(points, first) / counts[:, None], counts, axis=0)
    following = np.arange(1, len(points) + 1)
    following[ring_start[1:] - 1] = first  # each ring's last vertex closes onto its first
    x, y = centred[:, 0], centred[:, 1]
    shoelace = 0.5 * np.abs(np.add.reduceat(x * y[following] - y * x[following], first))
    extent = np.maximum.reduceat(points, first) - np.minimum.reduceat(points, first)
    return np.maximum(shoelace, 0.25 * extent[:, 0] * extent[:, 1])


def _supersampling(
    total_area_mm2: float, grid: DoseGrid, options: SamplingOptions, volume_only: bool = False
) -> tuple[int, int]:
    """The in-plane supersampling of a structure of ``total_area_mm2`` (over its planes) and its scanlines per row
    of cells (see the module's text). With ``volume_only``, the fewest cells per voxel side that its shape needs
    (``min_cells``, within ``target_cells``) and that divide the lines per voxel row it would have otherwise, with as
    many more scanlines: the very same lines, so the same volume (to rounding), its dose sampled coarsely."""
    if options.supersampling is not None:
        return options.supersampling, options.scanlines
    if total_area_mm2 <= 0:
        return options.max_supersampling, options.scanlines
    voxel_side = min(grid.spacing_mm[0], grid.spacing_mm[1])

    def for_cells(cells: int) -> int:
        m = math.ceil(voxel_side / math.sqrt(total_area_mm2 / cells))
        return int(min(max(m, options.min_supersampling), options.max_supersampling))

    lines = for_cells(options.scanline_cells or options.target_cells)
    m = min(for_cells(options.target_cells), max(for_cells(options.min_cells), options.voxel_supersampling))
    m = int(min(max(m, options.min_supersampling), options.max_supersampling))
    scanlines = options.scanlines * max(1, math.ceil(lines / m))
    if not volume_only:
        return m, scanlines
    # A scanline lies at (i + 1/2) / (m * scanlines) of a voxel row wherever the window starts (see _plane_cells):
    # any m' dividing m * scanlines, with m * scanlines / m' scanlines, draws the same lines. m itself is one.
    per_voxel_row = m * scanlines
    fewest = min(for_cells(options.target_cells), for_cells(options.min_cells))
    coarse = next(d for d in range(fewest, m + 1) if per_voxel_row % d == 0)
    return coarse, per_voxel_row // coarse


@dataclass(frozen=True)
class _MaskPlanes:
    frame: np.ndarray
    m: int
    z_lo: np.ndarray
    z_hi: np.ndarray
    windows: list[tuple[float, float, int, int, float, float]]
    weights: list[np.ndarray]
    #: Corners of the first and last weighted voxel of every row (for Dmin and Dmax: in a linear field a box's
    #: extremes are at its corners), in plan coordinates.
    corners: np.ndarray


def _mask_planes(structure: Structure, grid: DoseGrid, options: SamplingOptions) -> _MaskPlanes:
    """The planes of a label image's structure: one per slice holding weight, its window the box of the slice's
    weighted voxels, each voxel split into ``m`` by ``m`` cells. Plan coordinates are the image's index times its
    spacing (the frame maps them to patient coordinates), shifted to patient coordinates for an axial image (then
    the frame is the identity, as for contours)."""
    mask = structure.mask
    assert mask is not None
    weights = np.asarray(mask.weights)
    sx, sy, sz = (float(v) for v in mask.spacing_mm)
    frame = mask.index_to_patient()
    shift = np.zeros(3)
    if mask.is_axial:
        shift, frame = np.asarray(mask.origin_mm, dtype=np.float64), np.eye(4)
    slices = np.flatnonzero(np.any(weights > 0, axis=(1, 2)))
    if not len(slices):
        return _MaskPlanes(frame, 0, np.empty(0), np.empty(0), [], [], np.empty((0, 3)))
    # The cells' size as contours' would get for this area, never larger than a voxel (a voxel's weight is even).
    area_mm2 = float(np.sum(weights[slices] > 0)) * sx * sy
    m_contours, _ = _supersampling(area_mm2, grid, options)
    step = min(grid.spacing_mm[0], grid.spacing_mm[1]) / m_contours
    m = max(1, math.ceil(max(sx, sy) / step - 1e-9)) if options.supersampling is None else options.supersampling
    held = np.asarray(weights[slices] > 0)  # (slices, rows, columns)
    rows_held, columns_held = np.asarray(held.any(axis=2)), np.asarray(held.any(axis=1))
    j0 = rows_held.argmax(axis=1)
    j1 = held.shape[1] - rows_held[:, ::-1].argmax(axis=1)
    i0 = columns_held.argmax(axis=1)
    i1 = held.shape[2] - columns_held[:, ::-1].argmax(axis=1)
    nx, ny = (i1 - i0) * m, (j1 - j0) * m
    too_big = np.flatnonzero(nx * ny > options.max_cells_per_plane)
    if len(too_big):
        k = int(too_big[0])
        raise StructureError(
            f"slice {int(slices[k])} of the label image needs {int(nx[k] * ny[k]):,} cells at supersampling {m} (at "
            f"most {options.max_cells_per_plane:,}); lower the supersampling",
            path=structure.source or None,
            obj=f"ROI {structure.name!r}",
        )
    windows = list(
        zip(
            shift[0] + (i0 - 0.5) * sx,
            shift[1] + (j0 - 0.5) * sy,
            nx,
            ny,
            [sx / m] * len(slices),
            [sy / m] * len(slices),
        )
    )
    plane_weights = [
        np.ascontiguousarray(weights[k, j0[n] : j1[n], i0[n] : i1[n]], dtype=np.float64).reshape(-1)
        for n, k in enumerate(slices)
    ]
    # The first and last weighted voxel of every row of every slice, and their corners at both faces.
    plane, row = np.nonzero(rows_held)
    first = held[plane, row].argmax(axis=1)
    last = held.shape[2] - 1 - held[plane, row, ::-1].argmax(axis=1)
    ends = np.concatenate([first, last]).astype(np.float64)
    js = np.concatenate([row, row]).astype(np.float64)
    ks = np.concatenate([slices[plane], slices[plane]]).astype(np.float64)
    corners = [
        np.stack([(ends + di) * sx, (js + dj) * sy, (ks + dk) * sz], axis=1)
        for di in (-0.5, 0.5)
        for dj in (-0.5, 0.5)
        for dk in (-0.5, 0.5)
    ]
    z = shift[2] + slices * sz
    return _MaskPlanes(frame, m, z - 0.5 * sz, z + 0.5 * sz, windows, plane_weights, np.concatenate(corners) + shift)


def mask_cells(plan: SamplingPlan, first: int, end: int, out: np.ndarray | None = None) -> np.ndarray:
    """The cells of the label image planes among planes ``first:end`` of ``plan``, as the coverage kernel gives
    contours' (area, centroid, second moments about it): each voxel's ``m`` by ``m`` cells weighted by its value, each
    cell's centroid at its centre and its moments those of a uniform square. They are written into ``out`` (the
    cells of planes ``first:end``, ``(n, 6)``: other planes' rows are left as they are), a new array by default."""
    cell_start = plan.plane_cell_start
    if out is None:
        out = np.zeros((int(cell_start[end] - cell_start[first]), 6))
    for p in first + np.flatnonzero(plan.plane_mask_m[first:end] > 0):
        m, nx, ny = int(plan.plane_mask_m[p]), int(plan.plane_nx[p]), int(plan.plane_ny[p])
        hx, hy = float(plan.plane_hx_mm[p]), float(plan.plane_hy_mm[p])
        voxels = plan.mask_weights[plan.plane_weight_start[p] : plan.plane_weight_start[p + 1]].reshape(
            ny // m, nx // m
        )
        cells = out[int(cell_start[p] - cell_start[first]) : int(cell_start[p + 1] - cell_start[first])]
        by_row = cells.reshape(ny // m, m, nx // m, m, 6)  # voxel row, cell row in it, voxel column, cell column
        by_row[..., 0] = (voxels * (hx * hy))[:, None, :, None]
        grid = cells.reshape(ny, nx, 6)
        grid[..., 1] = plan.plane_x0_mm[p] + (np.arange(nx) + 0.5) * hx
        grid[..., 2] = (plan.plane_y0_mm[p] + (np.arange(ny) + 0.5) * hy)[:, None]
        cells[:, 3] = hx * hx / 12.0
        cells[:, 4] = 0.0
        cells[:, 5] = hy * hy / 12.0
    return out


def plan_sampling(
    structures: Sequence[Structure],
    grid: DoseGrid,
    options: SamplingOptions | None = None,
    fallback_spacing_mm: float | None = None,
    *,
    volume_only: bool = False,
) -> SamplingPlan:
    """Build the sampling plan of ``structures`` on the lattice of ``grid``.

    ``fallback_spacing_mm`` is the plane spacing used for the end-caps of single-plane structures; by
    default the median plane spacing of ``structures``, else the dose grid's z spacing. With ``volume_only`` (the
    structures' volume alone is wanted: an ROI of a classification asked only for its volume), contours get as few
    cells as their shape needs, on the same scanlines as otherwise: the same volume, the dose sampled coarsely (a
    label image's structures are planned as ever).
    """
    options = options or SamplingOptions()
    if fallback_spacing_mm is None:
        fallback_spacing_mm = common_plane_spacing_mm(structures) or grid.spacing_mm[2]
    gx0, gy0 = grid.origin_mm[0], grid.origin_mm[1]
    dx, dy = grid.spacing_mm[0], grid.spacing_mm[1]

    rings: list[np.ndarray] = []
    plane_ring_counts: list[int] = []
    windows: list[tuple[float, float, int, int, float, float]] = []
    z_lo_all: list[np.ndarray] = []
    z_hi_all: list[np.ndarray] = []
    planes_per_structure: list[int] = []
    vertex_points: list[np.ndarray] = []
    vertex_counts: list[int] = []
    supersampling: list[int] = []
    frames: list[np.ndarray] = []
    mask_weights: list[np.ndarray] = []
    plane_weight_counts: list[int] = []
    plane_mask_m: list[int] = []
    plane_scanlines: list[int] = []

    for structure in structures:
        if structure.mask is not None:
            mask_plan = _mask_planes(structure, grid, options)
            frames.append(mask_plan.frame)
            planes_per_structure.append(len(mask_plan.z_lo))
            if options.extremes == "vertices":
                vertex_points.append(mask_plan.corners)
                vertex_counts.append(len(mask_plan.corners))
            else:
                vertex_counts.append(0)
            supersampling.append(mask_plan.m)
            if len(mask_plan.z_lo):
                z_lo_all.append(mask_plan.z_lo)
                z_hi_all.append(mask_plan.z_hi)
                windows.extend(mask_plan.windows)
                plane_ring_counts.extend([0] * len(mask_plan.z_lo))
                mask_weights.extend(mask_plan.weights)
                plane_weight_counts.extend(w.size for w in mask_plan.weights)
                plane_mask_m.extend([mask_plan.m] * len(mask_plan.z_lo))
                plane_scanlines.extend([options.scanlines] * len(mask_plan.z_lo))
            continue
        frames.append(np.eye(4))
        planes = structure_planes(structure)
        planes_per_structure.append(len(planes))
        if not planes:
            vertex_counts.append(0)
            supersampling.append(0)
            continue
        z_lo, z_hi = slab_bounds(np.array([p.z_mm for p in planes]), options.end_cap, fallback_spacing_mm)
        z_lo_all.append(z_lo)
        z_hi_all.append(z_hi)
        structure_rings = [ring for plane in planes for ring in plane.rings]
        points = np.concatenate(structure_rings)
        ring_start = np.zeros(len(structure_rings) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in structure_rings], out=ring_start[1:])
        m, scanlines = _supersampling(float(_area_estimates_mm2(points, ring_start).sum()), grid, options, volume_only)
        supersampling.append(m)
        plane_scanlines.extend([scanlines] * len(planes))
        hx, hy = dx / m, dy / m
        # Each plane's bounding box, hence its window of cells on the grid's lattice refined m times.
        plane_first = ring_start[np.cumsum([0] + [len(plane.rings) for plane in planes[:-1]])]
        low = np.minimum.reduceat(points, plane_first)
        high = np.maximum.reduceat(points, plane_first)
        ix0 = np.floor((low[:, 0] - gx0) / hx).astype(np.int64)
        iy0 = np.floor((low[:, 1] - gy0) / hy).astype(np.int64)
        nx = np.maximum(np.ceil((high[:, 0] - gx0) / hx).astype(np.int64) - ix0, 1)
        ny = np.maximum(np.ceil((high[:, 1] - gy0) / hy).astype(np.int64) - iy0, 1)
        too_big = np.flatnonzero(nx * ny > options.max_cells_per_plane)
        if len(too_big):
            k = int(too_big[0])
            raise StructureError(
                f"a contour at z = {planes[k].z_mm:g} mm spans {nx[k] * hx:.0f} x {ny[k] * hy:.0f} mm, which needs "
                f"{int(nx[k] * ny[k]):,} cells at supersampling {m} (at most {options.max_cells_per_plane:,}); "
                "check the contour for stray points, or lower the supersampling",
                path=structure.source or None,
                obj=f"ROI {structure.name!r}",
            )
        windows.extend(zip(gx0 + ix0 * hx, gy0 + iy0 * hy, nx, ny, [hx] * len(planes), [hy] * len(planes)))
        plane_weight_counts.extend([0] * len(planes))
        plane_mask_m.extend([0] * len(planes))
        rings.extend(structure_rings)
        plane_ring_counts.extend(len(plane.rings) for plane in planes)
        # The vertices of each plane at the bottom and at the top of its slab (for Dmin and Dmax).
        plane_counts = np.diff(np.append(plane_first, len(points)))
        faces = np.empty((2 * len(points), 3))
        bottom = (
            np.repeat(2 * plane_first, plane_counts) + np.arange(len(points)) - np.repeat(plane_first, plane_counts)
        )
        top = bottom + np.repeat(plane_counts, plane_counts)
        faces[bottom, :2] = points
        faces[top, :2] = points
        faces[bottom, 2] = np.repeat(z_lo, plane_counts)
        faces[top, 2] = np.repeat(z_hi, plane_counts)
        if options.extremes == "vertices":
            vertex_points.append(faces)
            vertex_counts.append(2 * len(points))
        else:
            vertex_counts.append(0)

    def starts(counts: Sequence[int]) -> np.ndarray:
        out = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=out[1:])
        return out

    window_array = np.array(windows, dtype=np.float64).reshape(-1, 6)
    plane_nx = window_array[:, 2].astype(np.int64)
    plane_ny = window_array[:, 3].astype(np.int64)
    return SamplingPlan(
        names=tuple(s.name for s in structures),
        vertices=np.vstack(rings) if rings else np.empty((0, 2)),
        ring_start=starts([len(r) for r in rings]),
        plane_ring_start=starts(plane_ring_counts),
        plane_cell_start=starts((plane_nx * plane_ny).tolist()),
        plane_x0_mm=window_array[:, 0].copy(),
        plane_y0_mm=window_array[:, 1].copy(),
        plane_nx=plane_nx,
        plane_ny=plane_ny,
        plane_hx_mm=window_array[:, 4].copy(),
        plane_hy_mm=window_array[:, 5].copy(),
        plane_z_lo_mm=np.concatenate(z_lo_all) if z_lo_all else np.empty(0),
        plane_z_hi_mm=np.concatenate(z_hi_all) if z_hi_all else np.empty(0),
        structure_plane_start=starts(planes_per_structure),
        vertex_points=np.vstack(vertex_points) if vertex_points else np.empty((0, 3)),
        vertex_structure_start=starts(vertex_counts),
        supersampling=np.array(supersampling, dtype=np.int64),
        plane_scanlines=np.array(plane_scanlines, dtype=np.int64),
        structure_frame=np.array(frames, dtype=np.float64).reshape(-1, 4, 4),
        mask_weights=np.concatenate(mask_weights) if mask_weights else np.empty(0),
        plane_weight_start=starts(plane_weight_counts),
        plane_mask_m=np.array(plane_mask_m, dtype=np.int64),
    )
