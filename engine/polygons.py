"""Polygon tests that the engine runs on the host, whatever the backend: not backend kernels.

- :func:`ring_crosses_itself` checks every ring of a structure once, when its planes are first grouped;
- :func:`points_in_packed_planes` tests points (a recurrence's centroid, or those of its draws) against each
  target, once per case and target;
- :func:`grid_extremes_in_planes` finds the lowest and highest dose at the dose grid's own points inside a
  structure (for its Dmin and Dmax), row by row of the grid as a scanline fill would.

Large inputs are tested by functions compiled with Numba (cached on disk), because a ring holds thousands of
vertices and a cohort asks these questions thousands of times; they load only what they need, not the backend
kernels of ``isodose.kernels.numba_cpu``. Small inputs (a ring of a few hundred vertices, a few points) are tested
with NumPy where Numba is not loaded yet, which gives the same answers (the same arithmetic) without loading it: a
command that computes little with the NumPy backend then never pays Numba's start-up (about half a second). Once
Numba is loaded (a compiled backend), or where a process has said it will ask these questions many times
(:func:`isodose.compiled.prefer_compiled`: the process that drives a GPU in a cohort run), every input takes the
compiled tests, which are far quicker.
"""

from __future__ import annotations

import functools

import numpy as np

from .compiled import take_compiled
from .model import first_grid_index_at_or_above as _first_at_or_above

#: Where Numba is not loaded yet, rings with at most this many vertices are tested with NumPy (all pairs of edges at
#: once: 0.1 ms for 50 vertices, 0.5 ms for 200, where the compiled test takes 2 to 7 us), longer ones compiled.
SMALL_RING = 256
#: ... and at most this many points are tested with NumPy, more compiled.
SMALL_POINTS = 32
#: ... and a structure's grid points are searched with NumPy where its planes hold at most this many vertices
#: (0.1 to 0.3 ms for the small ROIs of dicompyler-core's example patient; its BODY, 2.5 s with NumPy, takes 12 ms
#: compiled).
SMALL_STRUCTURE_VERTICES = 4096


def _float64(a):
    return np.ascontiguousarray(a, dtype=np.float64)


def _int64(a):
    return np.ascontiguousarray(a, dtype=np.int64)


@functools.cache
def _compiled():
    """The compiled tests (:mod:`isodose.compiled_polygons`), imported on first use: ``(ring_crosses, points_in,
    grid_extremes, point_in_sets)``."""
    from . import compiled_polygons

    return (
        compiled_polygons.ring_crosses_itself,
        compiled_polygons.points_in_packed_planes,
        compiled_polygons.grid_extremes_in_planes,
        compiled_polygons.point_in_plane_sets,
    )


def _sides(ax, ay, bx, by, cx, cy):
    """The compiled `_side` of arrays (the same arithmetic)."""
    cross = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    return np.sign(cross)


def _ring_crosses_itself_numpy(points: np.ndarray) -> bool:
    """The compiled test's answer for a small ring: every pair of edges whose y ranges meet, at once."""
    n = points.shape[0]
    if n < 4:
        return False
    following = np.roll(points, -1, axis=0)
    x0, y0, x1, y1 = points[:, 0], points[:, 1], following[:, 0], following[:, 1]
    y_low, y_high = np.minimum(y0, y1), np.maximum(y0, y1)
    degenerate = (x0 == x1) & (y0 == y1)  # a repeated vertex: no edge
    i, j = np.triu_indices(n, 1)
    index = np.arange(n)
    keep = ~degenerate[i] & ~degenerate[j] & (y_low[j] <= y_high[i]) & (y_low[i] <= y_high[j])
    keep &= (j != (i + 1) % n) & (i != (index[j] + 1) % n)  # neighbours share a vertex
    i, j = i[keep], j[keep]
    d1 = _sides(x0[i], y0[i], x1[i], y1[i], x0[j], y0[j])
    d2 = _sides(x0[i], y0[i], x1[i], y1[i], x1[j], y1[j])
    d3 = _sides(x0[j], y0[j], x1[j], y1[j], x0[i], y0[i])
    d4 = _sides(x0[j], y0[j], x1[j], y1[j], x1[i], y1[i])
    return bool(np.any((d1 * d2 < 0) & (d3 * d4 < 0)))


def ring_crosses_itself(points) -> bool:
    """Whether two non-neighbouring edges of a closed ring cross (a proper crossing; touching is not)."""
    ring = _float64(points).reshape(-1, 2)
    if ring.shape[0] <= SMALL_RING and not take_compiled():
        return _ring_crosses_itself_numpy(ring)
    return bool(_compiled()[0](ring))


def _points_in_packed_planes_numpy(slab_lo, slab_hi, plane_ring_start, ring_vertex_start, vertices, points, out):
    """The compiled test's answer for a few points: each point's plane, its edges at once."""
    for n in range(points.shape[0]):
        px, py, pz = points[n]
        out[n] = False
        if not (pz >= slab_lo[0]) or not (pz < slab_hi[-1]):  # NaN too
            continue
        p = int(np.searchsorted(slab_lo, pz, side="right")) - 1
        if not pz < slab_hi[p]:
            continue
        crossings = 0
        for r in range(plane_ring_start[p], plane_ring_start[p + 1]):
            a0, a1 = ring_vertex_start[r], ring_vertex_start[r + 1]
            ring = vertices[a0:a1]
            following = np.roll(ring, -1, axis=0)
            x1, y1, x2, y2 = ring[:, 0], ring[:, 1], following[:, 0], following[:, 1]
            spans = ((y1 <= py) & (py < y2)) | ((y2 <= py) & (py < y1))
            with np.errstate(divide="ignore", invalid="ignore"):
                left = px < x1 + (py - y1) * ((x2 - x1) / (y2 - y1))
            crossings += int(np.count_nonzero(spans & left & (y1 != y2)))
        out[n] = crossings % 2 == 1


def points_in_packed_planes(slab_lo, slab_hi, plane_ring_start, ring_vertex_start, vertices, points) -> np.ndarray:
    """Which ``(x, y, z)`` points lie inside a structure given by its planes packed in flat arrays (see
    ``isodose.geometry.PackedPlanes``): the even-odd test, with half-open edges, of the rings of the plane whose
    slab ``[slab_lo, slab_hi)`` holds the point's z."""
    points = _float64(points).reshape(-1, 3)
    out = np.zeros(len(points), dtype=np.bool_)
    if len(slab_lo) and len(points):
        small = len(points) <= SMALL_POINTS and not take_compiled()
        test = _points_in_packed_planes_numpy if small else _compiled()[1]
        test(
            _float64(slab_lo),
            _float64(slab_hi),
            _int64(plane_ring_start),
            _int64(ring_vertex_start),
            _float64(vertices).reshape(-1, 2),
            points,
            out,
        )
    return out


def point_in_plane_sets(
    slab_lo, slab_hi, plane_ring_start, ring_vertex_start, vertices, set_plane_start, point
) -> np.ndarray:
    """Which of several structures' planes packed together (see ``isodose.geometry.PlaneSets``) hold the ``(x, y,
    z)`` point, one bool a structure: for each, the test of :func:`points_in_packed_planes` against its planes
    ``set_plane_start[k]:...`` (compiled, in one call, where compiled code is taken)."""
    point = _float64(point).reshape(3)
    n_sets = len(set_plane_start) - 1
    out = np.zeros(max(n_sets, 0), dtype=np.bool_)
    if n_sets <= 0:
        return out
    arrays = (
        _float64(slab_lo),
        _float64(slab_hi),
        _int64(plane_ring_start),
        _int64(ring_vertex_start),
        _float64(vertices).reshape(-1, 2),
        _int64(set_plane_start),
    )
    if take_compiled():
        _compiled()[3](*arrays, point, out)
        return out
    lo, hi, ring_start, vertex_start, xy, starts = arrays
    held = np.zeros(1, dtype=np.bool_)
    for k in range(n_sets):
        p0, p1 = int(starts[k]), int(starts[k + 1])
        if p0 < p1:
            _points_in_packed_planes_numpy(
                lo[p0:p1], hi[p0:p1], ring_start[p0 : p1 + 1], vertex_start, xy, point.reshape(1, 3), held
            )
            out[k] = held[0]
    return out


def _grid_extremes_numpy(
    p_first, p_end, slab_lo, slab_hi, plane_ring_start, ring_vertex_start, vertices, dose, origin, spacing, out
):
    """The compiled search's answer, each row's crossings at once."""
    nz, ny, nx = dose.shape
    (ox, oy, oz), (sx, sy, sz) = origin, spacing
    lo, hi = np.inf, -np.inf
    for p in range(p_first, p_end):
        r0, r1 = plane_ring_start[p], plane_ring_start[p + 1]
        k_a, k_b = _first_at_or_above(slab_lo[p], oz, sz, nz), _first_at_or_above(slab_hi[p], oz, sz, nz)
        if r0 == r1 or k_a >= k_b:
            continue
        edges = []
        for r in range(r0, r1):
            ring = vertices[ring_vertex_start[r] : ring_vertex_start[r + 1]]
            edges.append(np.hstack([ring, np.roll(ring, -1, axis=0)]))
        x1, y1, x2, y2 = np.vstack(edges).T
        y_all = vertices[ring_vertex_start[r0] : ring_vertex_start[r1], 1]
        for j in range(_first_at_or_above(y_all.min(), oy, sy, ny), _first_at_or_above(y_all.max(), oy, sy, ny)):
            py = oy + j * sy
            spans = (y1 != y2) & (((y1 <= py) & (py < y2)) | ((y2 <= py) & (py < y1)))
            if not spans.any():
                continue
            a1, b1, a2, b2 = x1[spans], y1[spans], x2[spans], y2[spans]
            row = np.sort(a1 + (py - b1) * ((a2 - a1) / (b2 - b1)))
            n = len(row)
            for t in range(n - 1, -1, -2):
                left = row[t - 1] if t >= 1 else -np.inf
                i_a, i_b = _first_at_or_above(left, ox, sx, nx), _first_at_or_above(row[t], ox, sx, nx)
                if i_a < i_b:
                    block = dose[k_a:k_b, j, i_a:i_b]
                    lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    out[0], out[1] = lo, hi


def grid_extremes_in_planes(
    p_first: int,
    p_end: int,
    slab_lo,
    slab_hi,
    plane_ring_start,
    ring_vertex_start,
    vertices,
    dose: np.ndarray,
    origin,
    spacing,
) -> tuple[float, float]:
    """The lowest and highest of ``dose`` (z, y, x) at its grid's points (``origin + index * spacing``) inside
    planes ``p_first:p_end`` of a structure packed in flat arrays (as :func:`points_in_packed_planes` takes them,
    with the slabs as ``[slab_lo, slab_hi)`` and the same even-odd test with half-open edges): ``(inf, -inf)`` where
    no grid point lies inside. Compiled where Numba is loaded (or preferred), else with NumPy: the same points,
    the same answer."""
    out = np.empty(2)
    vertex_count = int(ring_vertex_start[plane_ring_start[p_end]] - ring_vertex_start[plane_ring_start[p_first]])
    small = vertex_count <= SMALL_STRUCTURE_VERTICES and not take_compiled()
    test = _grid_extremes_numpy if small else _compiled()[2]
    test(
        int(p_first),
        int(p_end),
        _float64(slab_lo),
        _float64(slab_hi),
        _int64(plane_ring_start),
        _int64(ring_vertex_start),
        _float64(vertices).reshape(-1, 2),
        dose,
        _float64(origin),
        _float64(spacing),
        out,
    )
    return float(out[0]), float(out[1])
