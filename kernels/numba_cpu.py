"""Numba CPU backend: the reference kernels compiled, parallel over planes, points and chunks of cells.

Two kernels take a shorter road to the reference's function, equal to it within rounding (``tests/test_kernels.py``):
coverage adds the cells that a scanline's span crosses from side to side once per row, as differences along it,
and cuts only the span's end cells; sampling reuses a voxel cell's corners for consecutive samples in it and makes
its deposits in runs, in their order.

Compiled functions are cached on disk (``cache=True``), so only the first run on a machine pays for
compilation. Results do not depend on the number of threads: every parallel loop writes disjoint outputs
or its own partial sums, and partial sums are combined in a fixed order.
"""

from __future__ import annotations

import functools
import math
import threading

import numba
import numpy as np
from numba import njit, prange

from . import (
    GRID_EPSILON,
    INVERSION_HALVINGS,
    INVERSION_ITERATIONS,
    INVERSION_TOLERANCE_MM,
    MIN_CELLS_PER_CHUNK,
    SINGLE_VOXEL_HALF_WIDTH,
    host,
    numba_target,
)
from .host import (  # noqa: F401  (capabilities and host arrays shared by the CPU backends)
    BYTES_PER_CELL,
    COPIES_GRIDS,
    PREFERS_MERGED_REQUESTS,
    asarray,
    check_courses,
    field_table,
    free_memory_bytes,
    grid_table,
    out_of_memory_errors,
    to_host,
)

NAME = "numba"

#: Samples whose deposits wait to be made together (see :func:`_sample_item`).
DEPOSIT_RUN = 256

numba_target.set_up()


def device_name() -> str:
    threads = numba.get_num_threads()
    return f"cpu, {threads} thread{'s' if threads > 1 else ''}"


#: Held while a parallel region runs. Numba's workqueue threading layer (the one left where neither TBB nor
#: OpenMP's runtime is installed, as in some minimal containers) aborts the process when two Python threads enter
#: parallel regions at once, as cases computed together in a multi-threaded Dask worker or a tool's thread pool
#: would; with the other layers a region already takes every core, so one at a time costs little.
_PARALLEL_REGION = threading.RLock()


def _one_thread_at_a_time(kernel):
    @functools.wraps(kernel)
    def serialized(*args, **kwargs):
        with _PARALLEL_REGION:
            return kernel(*args, **kwargs)

    return serialized


def _float_array(a):
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return np.ascontiguousarray(a)


def _f64(a):
    return np.ascontiguousarray(a, dtype=np.float64)


def _i64(a):
    return np.ascontiguousarray(a, dtype=np.int64)


def _lanes(costs) -> tuple[np.ndarray, np.ndarray]:
    """Work items dealt to one lane per thread, the costliest first, each to the least loaded lane: numba
    splits a ``prange`` into equal runs of iterations whatever they cost, so the kernels loop over lanes.
    Returns ``(lane_start, lane_items)``: lane ``t`` runs ``lane_items[lane_start[t]:lane_start[t + 1]]``.
    Each item writes its own outputs, so results do not depend on the dealing."""
    costs = np.asarray(costs, dtype=np.float64)
    n_lanes = max(1, min(numba.get_num_threads(), len(costs)))
    load = [0.0] * n_lanes
    owner = np.empty(len(costs), dtype=np.int64)
    for item in np.argsort(-costs, kind="stable"):
        lane = min(range(n_lanes), key=load.__getitem__)
        owner[item] = lane
        load[lane] += costs[item] + 1.0
    lane_items = np.argsort(owner, kind="stable").astype(np.int64)
    lane_start = np.searchsorted(owner[lane_items], np.arange(n_lanes + 1)).astype(np.int64)
    return lane_start, lane_items


# --------------------------------------------------------------------------------------------------------
# Trilinear interpolation
# --------------------------------------------------------------------------------------------------------
@njit(cache=True, inline="always", error_model="numpy")
def _grid_coordinate(p, origin, step, n):
    """(lower voxel index, fraction, inside) of coordinate p along one grid axis of n voxel centres (for n = 1,
    the voxel's slab: see numpy_ref.trilinear_with_gradient)."""
    f = (p - origin) / step
    if n == 1:
        return 0, 0.0, abs(f) <= SINGLE_VOXEL_HALF_WIDTH + GRID_EPSILON  # NaN: False
    if not (f >= -GRID_EPSILON and f <= n - 1 + GRID_EPSILON):  # NaN too
        return 0, 0.0, False
    f = min(max(f, 0.0), n - 1.0)
    i = min(int(f), n - 2)
    return i, f - i, True


@njit(cache=True, inline="always", error_model="numpy")
def _interpolate(dose, i, j, k, tx, ty, tz, sx, sy, sz):
    """(value, gx, gy, gz) of the trilinear interpolant in voxel cell (i, j, k) at fractions (tx, ty, tz); along an
    axis of a single voxel, that voxel is its own neighbour."""
    nz, ny, nx = dose.shape
    i1 = i + 1 if nx > 1 else i
    j1 = j + 1 if ny > 1 else j
    k1 = k + 1 if nz > 1 else k
    value, dx, dy, dz = _interpolate_corners(
        np.float64(dose[k, j, i]),
        np.float64(dose[k, j, i1]),
        np.float64(dose[k, j1, i]),
        np.float64(dose[k, j1, i1]),
        np.float64(dose[k1, j, i]),
        np.float64(dose[k1, j, i1]),
        np.float64(dose[k1, j1, i]),
        np.float64(dose[k1, j1, i1]),
        tx,
        ty,
        tz,
    )
    return value, dx / sx, dy / sy, dz / sz


@njit(cache=True, inline="always", error_model="numpy")
def _interpolate_corners(c000, c001, c010, c011, c100, c101, c110, c111, tx, ty, tz):
    """(value, dx, dy, dz) of the trilinear interpolant of a voxel cell's corners (``c`` z, y, x: ``c001`` the next
    voxel along x) at fractions (tx, ty, tz), its gradient per voxel (to be divided by the spacing)."""
    c00 = c000 + tx * (c001 - c000)
    c01 = c010 + tx * (c011 - c010)
    c10 = c100 + tx * (c101 - c100)
    c11 = c110 + tx * (c111 - c110)
    c0 = c00 + ty * (c01 - c00)
    c1 = c10 + ty * (c11 - c10)
    value = c0 + tz * (c1 - c0)
    dx0 = (1 - ty) * (c001 - c000) + ty * (c011 - c010)
    dx1 = (1 - ty) * (c101 - c100) + ty * (c111 - c110)
    dx = (1 - tz) * dx0 + tz * dx1
    dy = (1 - tz) * (c01 - c00) + tz * (c11 - c10)
    return value, dx, dy, c1 - c0


@njit(cache=True, inline="always", error_model="numpy")
def _trilinear_point(dose, ox, oy, oz, sx, sy, sz, px, py, pz):
    """(value, gx, gy, gz, inside) at one point; see numpy_ref.trilinear_with_gradient."""
    nz, ny, nx = dose.shape
    i, tx, inside_x = _grid_coordinate(px, ox, sx, nx)
    j, ty, inside_y = _grid_coordinate(py, oy, sy, ny)
    k, tz, inside_z = _grid_coordinate(pz, oz, sz, nz)
    if not (inside_x and inside_y and inside_z):
        return np.nan, 0.0, 0.0, 0.0, False
    value, gx, gy, gz = _interpolate(dose, i, j, k, tx, ty, tz, sx, sy, sz)
    return value, gx, gy, gz, True


@njit(parallel=True, cache=True, error_model="numpy")
def _trilinear(dose, origin, spacing, points, out):
    for n in prange(points.shape[0]):
        value, _, _, _, _ = _trilinear_point(
            dose,
            origin[0],
            origin[1],
            origin[2],
            spacing[0],
            spacing[1],
            spacing[2],
            points[n, 0],
            points[n, 1],
            points[n, 2],
        )
        out[n] = value


@_one_thread_at_a_time
def trilinear(dose, origin, spacing, points):
    points = _f64(points).reshape(-1, 3)
    out = np.empty(points.shape[0])
    _trilinear(_float_array(dose), _f64(origin), _f64(spacing), points, out)
    return out


@njit(parallel=True, cache=True, error_model="numpy")
def _resample(dose, origin, spacing, onto_origin, onto_spacing, matrix, out):
    nz, ny, nx = out.shape
    for k in prange(nz):
        z = onto_origin[2] + onto_spacing[2] * k
        for j in range(ny):
            y = onto_origin[1] + onto_spacing[1] * j
            for i in range(nx):
                x = onto_origin[0] + onto_spacing[0] * i
                px = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2] * z + matrix[0, 3]
                py = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2] * z + matrix[1, 3]
                pz = matrix[2, 0] * x + matrix[2, 1] * y + matrix[2, 2] * z + matrix[2, 3]
                value, _, _, _, _ = _trilinear_point(
                    dose, origin[0], origin[1], origin[2], spacing[0], spacing[1], spacing[2], px, py, pz
                )
                out[k, j, i] = value


@_one_thread_at_a_time
def resample(dose, origin, spacing, onto_origin, onto_spacing, onto_shape, transform):
    out = np.empty(tuple(int(n) for n in onto_shape))
    _resample(
        _float_array(dose),
        _f64(origin),
        _f64(spacing),
        _f64(onto_origin),
        _f64(onto_spacing),
        _f64(transform).reshape(4, 4),
        out,
    )
    return out


@njit(parallel=True, cache=True, error_model="numpy")
def _course_sum(doses, weights, fractions, alpha_beta, physical, out):
    for n in prange(out.shape[0]):
        total = 0.0
        for c in range(len(doses)):
            dose = doses[c][n]
            term = dose if physical else dose * (dose / fractions[c] + alpha_beta) / (2.0 + alpha_beta)
            total = total + weights[c] * term
        out[n] = np.float32(total)


@_one_thread_at_a_time
def course_sum(doses, weights, fractions, alpha_beta=None):
    doses = tuple(_f64(dose) for dose in doses)
    check_courses(doses, weights, fractions)
    out = np.empty(doses[0].shape, dtype=np.float32)
    _course_sum(
        tuple(dose.reshape(-1) for dose in doses),
        _f64(weights),
        _f64(fractions),
        float(alpha_beta if alpha_beta is not None else 0.0),
        alpha_beta is None,
        out.reshape(-1),
    )
    return out


# --------------------------------------------------------------------------------------------------------
# Polygon coverage
# --------------------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _plane_cells(vertices, ring_start, first_ring, end_ring, x0, y0, nx, ny, hx, hy, scanlines, cells):
    """The cells of one plane's window, row by row: each row's moments summed over its scanlines in a buffer of
    the row's own (kept in cache), then finished into ``cells``."""
    n_edges = ring_start[end_ring] - ring_start[first_ring]
    xs = np.empty(max(n_edges, 1))
    band = hy / scanlines
    # Each row's edges (those whose y-range meets the row, widened by a row each way against rounding), so that
    # a scanline tests only the edges near it: the same crossings as testing every edge of the plane.
    edge_first = np.empty(n_edges, dtype=np.int64)
    edge_rows = np.empty((n_edges, 2), dtype=np.int64)
    row_count = np.zeros(ny + 1, dtype=np.int64)
    m = 0
    for r in range(first_ring, end_ring):
        a0 = ring_start[r]
        a1 = ring_start[r + 1]
        for e in range(a0, a1):
            f = e + 1 if e + 1 < a1 else a0
            ya = vertices[e, 1]
            yb = vertices[f, 1]
            if ya == yb:
                continue  # a horizontal edge never crosses a scanline
            ja = max(int(math.floor((min(ya, yb) - y0) / hy)) - 1, 0)
            jb = min(int(math.floor((max(ya, yb) - y0) / hy)) + 1, ny - 1)
            if ja > jb:
                continue
            edge_first[m] = e
            edge_rows[m, 0] = ja
            edge_rows[m, 1] = jb
            m += 1
            for j in range(ja, jb + 1):
                row_count[j + 1] += 1
    for j in range(ny):
        row_count[j + 1] += row_count[j]
    row_edges = np.empty(row_count[ny], dtype=np.int64)
    fill = row_count[:ny].copy()
    for k in range(m):
        for j in range(edge_rows[k, 0], edge_rows[k, 1] + 1):
            row_edges[fill[j]] = edge_first[k]
            fill[j] += 1
    # The ring of each edge, to close it: the next vertex, or the ring's first after its last.
    base = ring_start[first_ring]
    edge_next = np.empty(n_edges, dtype=np.int64)
    for r in range(first_ring, end_ring):
        for e in range(ring_start[r], ring_start[r + 1]):
            edge_next[e - base] = e + 1 if e + 1 < ring_start[r + 1] else ring_start[r]
    moments = np.empty((nx, 6))
    # The cells strictly inside a scanline's span are covered from side to side: for them the row keeps, as
    # differences along it, the number of such scanlines and the sums of their offsets and squared offsets,
    # and adds their moments once, when the row is finished. Only the span's end cells are cut.
    inner = np.empty((nx + 1, 3))
    for j in range(ny):
        moments[:] = 0.0
        inner[:] = 0.0
        any_inner = False
        row_centre = y0 + (j + 0.5) * hy
        for t in range(scanlines):
            y = y0 + j * hy + (t + 0.5) * band
            n = 0
            for k in range(row_count[j], row_count[j + 1]):
                e = row_edges[k]
                f = edge_next[e - base]
                ya = vertices[e, 1]
                yb = vertices[f, 1]
                if (ya <= y and y < yb) or (yb <= y and y < ya):
                    xa = vertices[e, 0]
                    xs[n] = xa + (y - ya) * (vertices[f, 0] - xa) / (yb - ya)
                    n += 1
            for a in range(1, n):  # insertion sort: a scanline crosses few edges
                v = xs[a]
                b = a - 1
                while b >= 0 and xs[b] > v:
                    xs[b + 1] = xs[b]
                    b -= 1
                xs[b + 1] = v
            dy = y - row_centre
            for q in range(0, n - 1, 2):
                span_lo = xs[q]
                span_hi = xs[q + 1]
                ia = max(int(math.floor((span_lo - x0) / hx)), 0)
                ib = min(int(math.floor((span_hi - x0) / hx)), nx - 1)
                if ia > ib:
                    continue
                _add_span_piece(moments, ia, span_lo, span_hi, x0, hx, dy, band)
                if ib > ia:
                    _add_span_piece(moments, ib, span_lo, span_hi, x0, hx, dy, band)
                if ib - ia >= 2:
                    inner[ia + 1, 0] += 1.0
                    inner[ia + 1, 1] += dy
                    inner[ia + 1, 2] += dy * dy
                    inner[ib, 0] -= 1.0
                    inner[ib, 1] -= dy
                    inner[ib, 2] -= dy * dy
                    any_inner = True
        if any_inner:
            _add_inner_cells(moments, inner, hx, band)
        _finish_row(moments, x0, row_centre, hx, band, cells[j * nx : (j + 1) * nx])


@njit(cache=True, inline="always", error_model="numpy")
def _add_span_piece(moments, i, span_lo, span_hi, x0, hx, dy, band):
    """The moments of the piece of the span [span_lo, span_hi] on a scanline at offset ``dy`` that lies in
    cell ``i`` of the row."""
    left = x0 + hx * i
    lo = max(span_lo, left)
    hi = min(span_hi, left + hx)
    if hi <= lo:
        return
    length = hi - lo
    xm = 0.5 * (lo + hi) - (left + 0.5 * hx)
    moments[i, 0] += length
    moments[i, 1] += length * xm
    moments[i, 2] += length * dy
    moments[i, 3] += length * (xm * xm + length * length / 12.0)
    moments[i, 4] += length * xm * dy
    moments[i, 5] += length * (dy * dy + band * band / 12.0)


@njit(cache=True, inline="always", error_model="numpy")
def _add_inner_cells(moments, inner, hx, band):
    """The moments of the cells that scanlines cross from side to side (a piece of length ``hx`` centred on the
    cell), from the row's differences ``inner`` (see :func:`_plane_cells`)."""
    count = 0.0
    offset_sum = 0.0
    square_sum = 0.0
    for i in range(moments.shape[0]):
        count += inner[i, 0]
        offset_sum += inner[i, 1]
        square_sum += inner[i, 2]
        if count > 0.5:
            moments[i, 0] += hx * count
            moments[i, 2] += hx * offset_sum
            moments[i, 3] += count * hx * (hx * hx / 12.0)
            moments[i, 5] += hx * (square_sum + count * (band * band / 12.0))


@njit(cache=True, inline="always", error_model="numpy")
def _finish_row(moments, x0, centre_y, hx, band, cells):
    """One row's cells from its moments: area, centroid, second moments about the centroid."""
    for i in range(moments.shape[0]):
        centre_x = x0 + (i + 0.5) * hx
        length = moments[i, 0]
        if length > 0:
            mx = moments[i, 1] / length
            my = moments[i, 2] / length
            cells[i, 0] = length * band
            cells[i, 1] = centre_x + mx
            cells[i, 2] = centre_y + my
            cells[i, 3] = max(moments[i, 3] / length - mx * mx, 0.0)
            cells[i, 4] = moments[i, 4] / length - mx * my
            cells[i, 5] = max(moments[i, 5] / length - my * my, 0.0)
        else:
            cells[i, 0] = 0.0
            cells[i, 1] = centre_x
            cells[i, 2] = centre_y
            cells[i, 3] = 0.0
            cells[i, 4] = 0.0
            cells[i, 5] = 0.0


@njit(cache=True, error_model="numpy")
def _plane_coverage(
    vertices,
    ring_start,
    plane_ring_start,
    plane_cell_start,
    plane_x0,
    plane_y0,
    plane_nx,
    plane_ny,
    plane_hx,
    plane_hy,
    plane_scanlines,
    p,
    cells,
):
    """The cells of plane ``p``."""
    scanlines = plane_scanlines[p]
    nx = plane_nx[p]
    ny = plane_ny[p]
    hx = plane_hx[p]
    hy = plane_hy[p]
    c0 = plane_cell_start[p]
    _plane_cells(
        vertices,
        ring_start,
        plane_ring_start[p],
        plane_ring_start[p + 1],
        plane_x0[p],
        plane_y0[p],
        nx,
        ny,
        hx,
        hy,
        scanlines,
        cells[c0 : c0 + nx * ny],
    )


@njit(parallel=True, cache=True, error_model="numpy")
def _polygon_coverage(
    vertices,
    ring_start,
    plane_ring_start,
    plane_cell_start,
    plane_x0,
    plane_y0,
    plane_nx,
    plane_ny,
    plane_hx,
    plane_hy,
    plane_scanlines,
    lane_start,
    lane_planes,
    cells,
):
    for lane in prange(lane_start.shape[0] - 1):
        for q in range(lane_start[lane], lane_start[lane + 1]):
            _plane_coverage(
                vertices,
                ring_start,
                plane_ring_start,
                plane_cell_start,
                plane_x0,
                plane_y0,
                plane_nx,
                plane_ny,
                plane_hx,
                plane_hy,
                plane_scanlines,
                lane_planes[q],
                cells,
            )


@_one_thread_at_a_time
def polygon_coverage(
    vertices,
    ring_start,
    plane_ring_start,
    plane_cell_start,
    plane_x0,
    plane_y0,
    plane_nx,
    plane_ny,
    plane_hx,
    plane_hy,
    scanlines,
):
    plane_cell_start = _i64(plane_cell_start)
    ring_start = _i64(ring_start)
    plane_ring_start = _i64(plane_ring_start)
    cells = np.empty((int(plane_cell_start[-1]), 6))  # every cell of every window is written
    if len(plane_cell_start) > 1:
        # A plane's cost: its cells and its vertices.
        lane_start, lane_planes = _lanes(np.diff(plane_cell_start) + np.diff(ring_start[plane_ring_start]))
        _polygon_coverage(
            _f64(vertices).reshape(-1, 2),
            ring_start,
            plane_ring_start,
            plane_cell_start,
            _f64(plane_x0),
            _f64(plane_y0),
            _i64(plane_nx),
            _i64(plane_ny),
            _f64(plane_hx),
            _f64(plane_hy),
            host.plane_scanlines(scanlines, len(plane_nx)),
            lane_start,
            lane_planes,
            cells,
        )
    return cells


# --------------------------------------------------------------------------------------------------------
# Histogram accumulation
# --------------------------------------------------------------------------------------------------------
@njit(cache=True, inline="always", error_model="numpy")
def _deposit_row(delta, value, width, weight, inverse_bin_width, n_bins):
    """Uniform deposit of ``weight`` over [value - width/2, value + width/2] into the differences ``delta``; see
    numpy_ref.deposit_differences (which divides by the bin width where this multiplies by its inverse)."""
    half = 0.5 * width * inverse_bin_width
    centre = value * inverse_bin_width
    lo = centre - half
    hi = centre + half
    if lo < 0.0:
        hi -= lo
        lo = 0.0
    if hi > n_bins:
        lo = max(lo - (hi - n_bins), 0.0)
        hi = float(n_bins)
    ka = min(int(lo), n_bins - 1)
    kb = min(int(hi), n_bins - 1)
    if ka == kb:  # within one bin: all of it there, whatever the spread
        delta[ka] += weight
        delta[ka + 1] -= weight
        return
    s = weight / (hi - lo)
    delta[ka] += s * (ka + 1 - lo)
    delta[ka + 1] += s * (lo - ka)
    delta[kb] -= s * (kb + 1 - hi)
    delta[kb + 1] -= s * (hi - kb)


@njit(cache=True, inline="always", error_model="numpy")
def _deposit_run(delta, values, widths, weights, n, inverse_bin_width, n_bins):
    """The first ``n`` deposits of a run (see :func:`_sample_item`), in their order."""
    for q in range(n):
        _deposit_row(delta, values[q], widths[q], weights[q], inverse_bin_width, n_bins)


@njit(cache=True, error_model="numpy")
def _chunk_count(n_items, n_chunks):
    return max(1, min(n_chunks, n_items // MIN_CELLS_PER_CHUNK))


@njit(parallel=True, cache=True, error_model="numpy")
def _accumulate_histogram(values, weights, widths, bin_width, n_bins, n_chunks):
    n = values.shape[0]
    k_total = _chunk_count(n, n_chunks)
    partial = np.zeros((k_total, n_bins + 1))
    for k in prange(k_total):
        for m in range(n * k // k_total, n * (k + 1) // k_total):
            _deposit_row(partial[k], values[m], widths[m], weights[m], 1.0 / bin_width, n_bins)
    delta = np.zeros(n_bins + 1)
    for k in range(k_total):
        delta += partial[k]
    return np.cumsum(delta)[:n_bins]


@_one_thread_at_a_time
def accumulate_histogram(values, weights, widths, bin_width, n_bins, n_chunks=64):
    return _accumulate_histogram(
        _f64(values), _f64(weights), _f64(widths), float(bin_width), int(n_bins), int(n_chunks)
    )


# --------------------------------------------------------------------------------------------------------
# Sampling slabs and accumulating DVHs
# --------------------------------------------------------------------------------------------------------
@njit(cache=True, inline="always", error_model="numpy")
def _next_grid_plane(z, grid_z0, grid_dz):
    """The first dose plane above z (see numpy_ref.slab_pieces)."""
    return grid_z0 + (math.floor((z - grid_z0) / grid_dz + 1e-9) + 1.0) * grid_dz


@njit(cache=True, error_model="numpy")
def _work_items(cells_per_structure, n_chunks):
    """Each structure's cells split into a fixed number of chunks (a function of the input alone): the
    first work item of each structure and each structure's number of chunks."""
    n_structures = cells_per_structure.shape[0]
    chunk_counts = np.zeros(n_structures, dtype=np.int64)
    for s in range(n_structures):
        if cells_per_structure[s] > 0:
            chunk_counts[s] = _chunk_count(cells_per_structure[s], n_chunks)
    item_start = np.zeros(n_structures + 1, dtype=np.int64)
    for s in range(n_structures):
        item_start[s + 1] = item_start[s] + chunk_counts[s]
    return item_start, chunk_counts


@njit(cache=True, error_model="numpy")
def _sample_item(
    dose,
    origin,
    spacing,
    cells,
    plane_cell_start,
    plane_z_lo,
    plane_z_hi,
    structure_plane_start,
    structure_transform,
    bin_width,
    n_bins,
    item_start,
    chunk_counts,
    item,
    partial,
    part_stats,
):
    """Sample one work item (a chunk of one structure's cells) into its own row of ``partial`` and
    ``part_stats``: each cell's slab piece by piece, interpolated at its centroid with the trilinear gradient,
    spread by the variance of the linear dose over the piece (taken in the structure's own frame) and
    deposited."""
    inverse_bin_width = 1.0 / bin_width
    nz, ny, nx = dose.shape
    # The grid as one flat array: a voxel cell's eight corners at fixed offsets from its first (along an axis
    # of a single voxel, that voxel is its own neighbour), so that consecutive samples in one voxel cell
    # (neighbouring cells of a row, m to a voxel side at supersampling m) reuse its corners.
    flat = dose.reshape(-1)
    di = 1 if nx > 1 else 0
    dj = nx if ny > 1 else 0
    dk = nx * ny if nz > 1 else 0
    delta = partial[item]
    ox, oy, oz = origin[0], origin[1], origin[2]
    sx, sy, sz = spacing[0], spacing[1], spacing[2]
    inverse_sx, inverse_sy, inverse_sz = 1.0 / sx, 1.0 / sy, 1.0 / sz
    uniform_piece = 0.5 * min(sx, min(sy, sz))
    s = np.searchsorted(item_start, item, side="right") - 1
    k = item - item_start[s]
    k_total = chunk_counts[s]
    p_first = structure_plane_start[s]
    p_end = structure_plane_start[s + 1]
    c_first = plane_cell_start[p_first]
    n_cells = plane_cell_start[p_end] - c_first
    a = c_first + n_cells * k // k_total
    b = c_first + n_cells * (k + 1) // k_total
    # The rotation as scalars: loads from an array could not be kept in registers across the histogram's
    # stores (the compiler cannot rule out aliasing).
    m = structure_transform[s]
    r0, r1, r2 = m[0, 0], m[0, 1], m[0, 2]
    r3, r4, r5 = m[1, 0], m[1, 1], m[1, 2]
    r6, r7, r8 = m[2, 0], m[2, 1], m[2, 2]
    t0 = m[0, 3]
    t1 = m[1, 3]
    t2 = m[2, 3]
    axial = r6 == 0.0 and r7 == 0.0 and r8 == 1.0
    p = p_first
    while plane_cell_start[p + 1] <= a:
        p += 1
    inside_sum = 0.0
    outside_sum = 0.0
    dose_sum = 0.0
    x_sum = 0.0
    y_sum = 0.0
    z_sum = 0.0
    dmin = np.inf
    dmax = -np.inf
    # Deposits wait in a run of DEPOSIT_RUN samples and are made in their order: the loop that interpolates then
    # holds no stores to the histogram, and its samples overlap in the processor (bit for bit the same sums).
    run_value = np.empty(DEPOSIT_RUN)
    run_width = np.empty(DEPOSIT_RUN)
    run_weight = np.empty(DEPOSIT_RUN)
    n_run = 0
    corner = -1  # the flat index of the voxel cell whose corners c000 ... c111 hold
    c000 = c001 = c010 = c011 = c100 = c101 = c110 = c111 = 0.0
    # Plane by plane, piece by piece through the slab, cell by cell: for axial transforms the z part of
    # the interpolation is shared by every cell of a piece.
    while p < p_end and plane_cell_start[p] < b:
        c_lo = max(a, plane_cell_start[p])
        c_hi = min(b, plane_cell_start[p + 1])
        z_end = plane_z_hi[p]
        z_a = plane_z_lo[p]
        n_uniform = max(1, int(math.ceil((z_end - z_a) / uniform_piece - 1e-9)))
        uniform_dz = (z_end - z_a) / n_uniform
        while z_a < z_end:
            if axial:
                z_b = min(_next_grid_plane(z_a + t2, oz, sz) - t2, z_end)
            else:
                z_b = min(z_a + uniform_dz, z_end)
                if z_end - z_b < 1e-9 * uniform_dz:
                    z_b = z_end
            dz = z_b - z_a
            z_variance = dz * dz / 12.0
            z_local = 0.5 * (z_a + z_b)
            z_a = z_b
            kz, tz, inside_z = _grid_coordinate(z_local + t2, oz, sz, nz)
            for c in range(c_lo, c_hi):
                area = cells[c, 0]
                if area <= 0.0:
                    continue
                weight = area * dz
                cx = cells[c, 1]
                cy = cells[c, 2]
                px = r0 * cx + r1 * cy + r2 * z_local + t0
                py = r3 * cx + r4 * cy + r5 * z_local + t1
                if axial:
                    pz = z_local + t2
                else:
                    pz = r6 * cx + r7 * cy + r8 * z_local + t2
                    kz, tz, inside_z = _grid_coordinate(pz, oz, sz, nz)
                x_sum += weight * px
                y_sum += weight * py
                z_sum += weight * pz
                i, tx, inside_x = _grid_coordinate(px, ox, sx, nx)
                j, ty, inside_y = _grid_coordinate(py, oy, sy, ny)
                if not (inside_x and inside_y and inside_z):
                    outside_sum += weight
                    continue
                first = (kz * ny + j) * nx + i
                if first != corner:
                    corner = first
                    c000 = np.float64(flat[first])
                    c001 = np.float64(flat[first + di])
                    c010 = np.float64(flat[first + dj])
                    c011 = np.float64(flat[first + dj + di])
                    c100 = np.float64(flat[first + dk])
                    c101 = np.float64(flat[first + dk + di])
                    c110 = np.float64(flat[first + dk + dj])
                    c111 = np.float64(flat[first + dk + dj + di])
                value, per_x, per_y, per_z = _interpolate_corners(
                    c000, c001, c010, c011, c100, c101, c110, c111, tx, ty, tz
                )
                gx = per_x * inverse_sx  # the gradient per mm
                gy = per_y * inverse_sy
                gz = per_z * inverse_sz
                # The gradient in the structure's frame (R^T g) against the cell's second moments.
                lx = r0 * gx + r3 * gy + r6 * gz
                ly = r1 * gx + r4 * gy + r7 * gz
                lz = r2 * gx + r5 * gy + r8 * gz
                variance = lx * lx * cells[c, 3] + 2.0 * lx * ly * cells[c, 4] + ly * ly * cells[c, 5]
                variance += lz * lz * z_variance
                width = math.sqrt(12.0 * max(variance, 0.0))
                run_value[n_run] = value
                run_width[n_run] = width
                run_weight[n_run] = weight
                n_run += 1
                if n_run == DEPOSIT_RUN:
                    _deposit_run(delta, run_value, run_width, run_weight, n_run, inverse_bin_width, n_bins)
                    n_run = 0
                inside_sum += weight
                dose_sum += weight * value
                dmin = min(dmin, value)
                dmax = max(dmax, value)
        p += 1
    _deposit_run(delta, run_value, run_width, run_weight, n_run, inverse_bin_width, n_bins)
    part_stats[item, 0] = inside_sum
    part_stats[item, 1] = outside_sum
    part_stats[item, 2] = dose_sum
    part_stats[item, 3] = dmin
    part_stats[item, 4] = dmax
    part_stats[item, 5] = x_sum
    part_stats[item, 6] = y_sum
    part_stats[item, 7] = z_sum


@njit(parallel=True, cache=True, error_model="numpy")
def _sample_items(
    dose,
    origin,
    spacing,
    cells,
    plane_cell_start,
    plane_z_lo,
    plane_z_hi,
    structure_plane_start,
    structure_transform,
    bin_width,
    n_bins,
    item_start,
    chunk_counts,
    lane_start,
    lane_items,
    partial,
    part_stats,
):
    """Every work item, lane by lane in parallel (see :func:`_lanes`)."""
    for lane in prange(lane_start.shape[0] - 1):
        for q in range(lane_start[lane], lane_start[lane + 1]):
            _sample_item(
                dose,
                origin,
                spacing,
                cells,
                plane_cell_start,
                plane_z_lo,
                plane_z_hi,
                structure_plane_start,
                structure_transform,
                bin_width,
                n_bins,
                item_start,
                chunk_counts,
                lane_items[q],
                partial,
                part_stats,
            )


@njit(parallel=True, cache=True, error_model="numpy")
def _combine_items(partial, part_stats, item_start, n_bins):
    """Each structure's histogram and statistics: its items' partial sums added in their fixed order."""
    n_structures = item_start.shape[0] - 1
    hist = np.zeros((n_structures, n_bins))
    stats = np.zeros((n_structures, 8))
    for s in prange(n_structures):
        delta = np.zeros(n_bins + 1)
        dmin = np.inf
        dmax = -np.inf
        for item in range(item_start[s], item_start[s + 1]):
            delta += partial[item]
            for column in (0, 1, 2, 5, 6, 7):
                stats[s, column] += part_stats[item, column]
            dmin = min(dmin, part_stats[item, 3])
            dmax = max(dmax, part_stats[item, 4])
        running = 0.0
        for j in range(n_bins):
            running += delta[j]
            hist[s, j] = running
        stats[s, 3] = dmin if dmin < np.inf else np.nan
        stats[s, 4] = dmax if dmax > -np.inf else np.nan
    return hist, stats


@_one_thread_at_a_time
def cell_histograms(
    dose,
    origin,
    spacing,
    cells,
    plane_cell_start,
    plane_z_lo,
    plane_z_hi,
    structure_plane_start,
    structure_transform,
    bin_width,
    n_bins,
    n_chunks,
):
    dose = _float_array(dose)
    spacing = _f64(spacing)
    plane_cell_start = _i64(plane_cell_start)
    plane_z_lo = _f64(plane_z_lo)
    plane_z_hi = _f64(plane_z_hi)
    structure_plane_start = _i64(structure_plane_start)
    n_bins = int(n_bins)
    item_start, chunk_counts = _work_items(np.diff(plane_cell_start[structure_plane_start]), int(n_chunks))
    n_items = int(item_start[-1])
    partial = np.zeros((n_items, n_bins + 1))
    part_stats = np.zeros((n_items, 8))
    if n_items:
        # An item's cost: its share of its structure's cells times the pieces of their slabs (about one per
        # dose plane crossed).
        plane_cost = np.diff(plane_cell_start) * (np.ceil((plane_z_hi - plane_z_lo) / spacing[2]) + 1.0)
        running = np.concatenate(([0.0], np.cumsum(plane_cost)))
        structure_cost = running[structure_plane_start[1:]] - running[structure_plane_start[:-1]]
        costs = np.repeat(structure_cost / np.maximum(chunk_counts, 1), chunk_counts)
        lane_start, lane_items = _lanes(costs)
        _sample_items(
            dose,
            _f64(origin),
            spacing,
            _f64(cells).reshape(-1, 6),
            plane_cell_start,
            plane_z_lo,
            plane_z_hi,
            structure_plane_start,
            _f64(structure_transform).reshape(-1, 4, 4),
            float(bin_width),
            n_bins,
            item_start,
            chunk_counts,
            lane_start,
            lane_items,
            partial,
            part_stats,
        )
    return _combine_items(partial, part_stats, item_start, n_bins)


# --------------------------------------------------------------------------------------------------------
# Batched: many dose grids in one call (on the CPU, one call per grid; see host.py)
# --------------------------------------------------------------------------------------------------------
def trilinear_many(table, points, point_grid):
    return host.trilinear_many(trilinear, table, points, point_grid)


def cell_histograms_many(
    table,
    cells,
    plane_cell_start,
    plane_z_lo,
    plane_z_hi,
    structure_plane_start,
    structure_grid,
    structure_transform,
    structure_bin_width,
    n_bins,
    n_chunks,
):
    return host.cell_histograms_many(
        cell_histograms,
        table,
        cells,
        plane_cell_start,
        plane_z_lo,
        plane_z_hi,
        structure_plane_start,
        structure_grid,
        structure_transform,
        structure_bin_width,
        n_bins,
        n_chunks,
    )


# --------------------------------------------------------------------------------------------------------
# Displacement fields
# --------------------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, error_model="numpy")
def _displace(vectors, matrix, points, displacement, jacobian):
    nz, ny, nx = vectors.shape[0], vectors.shape[1], vectors.shape[2]
    for n in prange(points.shape[0]):
        px, py, pz = points[n, 0], points[n, 1], points[n, 2]
        fi = matrix[0, 0] * px + matrix[0, 1] * py + matrix[0, 2] * pz + matrix[0, 3]
        fj = matrix[1, 0] * px + matrix[1, 1] * py + matrix[1, 2] * pz + matrix[1, 3]
        fk = matrix[2, 0] * px + matrix[2, 1] * py + matrix[2, 2] * pz + matrix[2, 3]
        i, tx, inside_x = _grid_coordinate(fi, 0.0, 1.0, nx)
        j, ty, inside_y = _grid_coordinate(fj, 0.0, 1.0, ny)
        k, tz, inside_z = _grid_coordinate(fk, 0.0, 1.0, nz)
        if not (inside_x and inside_y and inside_z):
            for a in range(3):
                displacement[n, a] = np.nan
                for b in range(3):
                    jacobian[n, a, b] = np.nan
            continue
        for c in range(3):
            value, gi, gj, gk = _interpolate(vectors[:, :, :, c], i, j, k, tx, ty, tz, 1.0, 1.0, 1.0)
            displacement[n, c] = value
            for b in range(3):
                jacobian[n, c, b] = gi * matrix[0, b] + gj * matrix[1, b] + gk * matrix[2, b]


@_one_thread_at_a_time
def displace(vectors, world_to_index, points):
    points = _f64(points).reshape(-1, 3)
    displacement = np.empty((points.shape[0], 3))
    jacobian = np.empty((points.shape[0], 3, 3))
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    _displace(vectors, _f64(world_to_index).reshape(4, 4), points, displacement, jacobian)
    return displacement, jacobian


def displace_many(table, points, point_field):
    return host.displace_many(displace, table, points, point_field)


@njit(cache=True, inline="always", error_model="numpy")
def _field_at(vectors, matrix, px, py, pz, out_d, out_j):
    """The displacement and its Jacobian at one point into ``out_d`` (3) and ``out_j`` (3x3); False outside."""
    nz, ny, nx = vectors.shape[0], vectors.shape[1], vectors.shape[2]
    fi = matrix[0, 0] * px + matrix[0, 1] * py + matrix[0, 2] * pz + matrix[0, 3]
    fj = matrix[1, 0] * px + matrix[1, 1] * py + matrix[1, 2] * pz + matrix[1, 3]
    fk = matrix[2, 0] * px + matrix[2, 1] * py + matrix[2, 2] * pz + matrix[2, 3]
    i, tx, inside_x = _grid_coordinate(fi, 0.0, 1.0, nx)
    j, ty, inside_y = _grid_coordinate(fj, 0.0, 1.0, ny)
    k, tz, inside_z = _grid_coordinate(fk, 0.0, 1.0, nz)
    if not (inside_x and inside_y and inside_z):
        return False
    for c in range(3):
        value, gi, gj, gk = _interpolate(vectors[:, :, :, c], i, j, k, tx, ty, tz, 1.0, 1.0, 1.0)
        out_d[c] = value
        for b in range(3):
            out_j[c, b] = gi * matrix[0, b] + gj * matrix[1, b] + gk * matrix[2, b]
    return True


@njit(cache=True, inline="always", error_model="numpy")
def _solve3(a, b, out):
    """``out = a^-1 b`` for a 3x3 ``a`` (Cramer's rule); False when ``a`` is singular."""
    det = (
        a[0, 0] * (a[1, 1] * a[2, 2] - a[1, 2] * a[2, 1])
        - a[0, 1] * (a[1, 0] * a[2, 2] - a[1, 2] * a[2, 0])
        + a[0, 2] * (a[1, 0] * a[2, 1] - a[1, 1] * a[2, 0])
    )
    if det == 0.0 or not np.isfinite(det):
        return False
    out[0] = (
        b[0] * (a[1, 1] * a[2, 2] - a[1, 2] * a[2, 1])
        - a[0, 1] * (b[1] * a[2, 2] - a[1, 2] * b[2])
        + a[0, 2] * (b[1] * a[2, 1] - a[1, 1] * b[2])
    ) / det
    out[1] = (
        a[0, 0] * (b[1] * a[2, 2] - a[1, 2] * b[2])
        - b[0] * (a[1, 0] * a[2, 2] - a[1, 2] * a[2, 0])
        + a[0, 2] * (a[1, 0] * b[2] - b[1] * a[2, 0])
    ) / det
    out[2] = (
        a[0, 0] * (a[1, 1] * b[2] - b[1] * a[2, 1])
        - a[0, 1] * (a[1, 0] * b[2] - b[1] * a[2, 0])
        + b[0] * (a[1, 0] * a[2, 1] - a[1, 1] * a[2, 0])
    ) / det
    return True


@njit(parallel=True, cache=True, error_model="numpy")
def _invert(vectors, matrix, targets, pre, pre_inverse, points, jacobian, residual):
    for n in prange(targets.shape[0]):
        d = np.empty(3)
        g = np.empty((3, 3))
        trial_d = np.empty(3)
        trial_g = np.empty((3, 3))
        mismatch = np.empty(3)
        step = np.empty(3)
        a = np.empty((3, 3))
        p = np.empty(3)
        trial = np.empty(3)
        for r in range(3):
            p[r] = (
                pre_inverse[r, 0] * targets[n, 0]
                + pre_inverse[r, 1] * targets[n, 1]
                + pre_inverse[r, 2] * targets[n, 2]
                + pre_inverse[r, 3]
            )
        ok = _field_at(vectors, matrix, p[0], p[1], p[2], d, g)
        size = np.inf
        for _ in range(INVERSION_ITERATIONS + 1):
            if not ok:
                break
            for r in range(3):
                mismatch[r] = pre[r, 0] * p[0] + pre[r, 1] * p[1] + pre[r, 2] * p[2] + pre[r, 3] + d[r] - targets[n, r]
            size = math.sqrt(mismatch[0] ** 2 + mismatch[1] ** 2 + mismatch[2] ** 2)
            if size <= INVERSION_TOLERANCE_MM:
                break
            for r in range(3):
                for c in range(3):
                    a[r, c] = pre[r, c] + g[r, c]
            if not _solve3(a, mismatch, step):
                ok = False
                break
            scale = 1.0
            moved = False
            for _h in range(INVERSION_HALVINGS + 1):
                for r in range(3):
                    trial[r] = p[r] - scale * step[r]
                if _field_at(vectors, matrix, trial[0], trial[1], trial[2], trial_d, trial_g):
                    moved = True
                    break
                scale *= 0.5
            if not moved:
                ok = False
                break
            for r in range(3):
                p[r] = trial[r]
                d[r] = trial_d[r]
                for c in range(3):
                    g[r, c] = trial_g[r, c]
        if ok:
            for r in range(3):
                points[n, r] = p[r]
                for c in range(3):
                    jacobian[n, r, c] = g[r, c]
            residual[n] = size
        else:
            for r in range(3):
                points[n, r] = np.nan
                for c in range(3):
                    jacobian[n, r, c] = np.nan
            residual[n] = np.nan


@_one_thread_at_a_time
def invert_displacement(vectors, world_to_index, targets, pre, pre_inverse):
    targets = _f64(targets).reshape(-1, 3)
    n = targets.shape[0]
    points, jacobian, residual = np.empty((n, 3)), np.empty((n, 3, 3)), np.empty(n)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    _invert(
        vectors,
        _f64(world_to_index).reshape(4, 4),
        targets,
        _f64(pre).reshape(4, 4),
        _f64(pre_inverse).reshape(4, 4),
        points,
        jacobian,
        residual,
    )
    return points, jacobian, residual


def invert_displacement_many(table, targets, point_field, pre, pre_inverse):
    return host.invert_displacement_many(invert_displacement, table, targets, point_field, pre, pre_inverse)


# --------------------------------------------------------------------------------------------------------
# Perturbations
# --------------------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True, error_model="numpy")
def _moved_doses(dose, origin, spacing, points, transforms, out):
    n_points = points.shape[0]
    for item in prange(transforms.shape[0] * n_points):
        d = item // n_points
        i = item - d * n_points
        m = transforms[d]
        px, py, pz = points[i, 0], points[i, 1], points[i, 2]
        value, _, _, _, _ = _trilinear_point(
            dose,
            origin[0],
            origin[1],
            origin[2],
            spacing[0],
            spacing[1],
            spacing[2],
            m[0, 0] * px + m[0, 1] * py + m[0, 2] * pz + m[0, 3],
            m[1, 0] * px + m[1, 1] * py + m[1, 2] * pz + m[1, 3],
            m[2, 0] * px + m[2, 1] * py + m[2, 2] * pz + m[2, 3],
        )
        out[d, i] = value


@_one_thread_at_a_time
def moved_doses(dose, origin, spacing, points, transforms, out=None):
    points = _f64(points).reshape(-1, 3)
    transforms = _f64(transforms).reshape(-1, 4, 4)
    if out is None:
        out = np.empty((transforms.shape[0], points.shape[0]))
    _moved_doses(_float_array(dose), _f64(origin), _f64(spacing), points, transforms, out)
    return out


def moved_doses_many(table, points, point_grid, case_point_start, transforms, case_transform_start):
    return host.moved_doses_many(
        moved_doses, table, points, point_grid, case_point_start, transforms, case_transform_start
    )
