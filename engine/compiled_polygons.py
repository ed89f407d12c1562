"""The compiled halves of :mod:`isodose.polygons` (Numba, cached on disk), imported only when an input is large
enough to need them, so that a command that computes little never loads Numba."""

from __future__ import annotations

import numpy as np
from numba import njit

from .kernels import numba_target
from .model import first_grid_index_at_or_above

numba_target.set_up()


@njit(cache=True, inline="always", error_model="numpy")
def _side(ax, ay, bx, by, cx, cy):
    """Sign of the turn a -> b -> c: 1 left, -1 right, 0 collinear."""
    cross = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    return 1 if cross > 0 else (-1 if cross < 0 else 0)


@njit(cache=True, error_model="numpy")
def ring_crosses_itself(points):
    n = points.shape[0]
    if n < 4:
        return False
    y_low = np.empty(n)
    y_high = np.empty(n)
    for i in range(n):
        j = (i + 1) % n
        y_low[i] = min(points[i, 1], points[j, 1])
        y_high[i] = max(points[i, 1], points[j, 1])
    order = np.argsort(y_low)
    for a in range(n):
        i = order[a]
        i1 = (i + 1) % n
        if points[i, 0] == points[i1, 0] and points[i, 1] == points[i1, 1]:
            continue  # a repeated vertex: no edge
        for b in range(a + 1, n):
            j = order[b]
            if y_low[j] > y_high[i]:
                break  # edges sorted by their lowest y: none further up can meet edge i
            j1 = (j + 1) % n
            if j == i1 or i == j1 or (points[j, 0] == points[j1, 0] and points[j, 1] == points[j1, 1]):
                continue  # neighbours share a vertex
            d1 = _side(points[i, 0], points[i, 1], points[i1, 0], points[i1, 1], points[j, 0], points[j, 1])
            d2 = _side(points[i, 0], points[i, 1], points[i1, 0], points[i1, 1], points[j1, 0], points[j1, 1])
            d3 = _side(points[j, 0], points[j, 1], points[j1, 0], points[j1, 1], points[i, 0], points[i, 1])
            d4 = _side(points[j, 0], points[j, 1], points[j1, 0], points[j1, 1], points[i1, 0], points[i1, 1])
            if d1 * d2 < 0 and d3 * d4 < 0:
                return True
    return False


@njit(cache=True, inline="always")
def _inside_plane(plane_ring_start, ring_vertex_start, vertices, p, px, py):
    """Whether ``(px, py)`` lies inside plane ``p``'s rings: the even-odd count of their edges crossed by the ray
    towards +x, each edge half-open in y."""
    crossings = 0
    for r in range(plane_ring_start[p], plane_ring_start[p + 1]):
        a0, a1 = ring_vertex_start[r], ring_vertex_start[r + 1]
        for e in range(a0, a1):
            f = e + 1 if e + 1 < a1 else a0
            x1, y1, x2, y2 = vertices[e, 0], vertices[e, 1], vertices[f, 0], vertices[f, 1]
            if y1 == y2:
                continue
            if ((y1 <= py and py < y2) or (y2 <= py and py < y1)) and px < x1 + (py - y1) * ((x2 - x1) / (y2 - y1)):
                crossings += 1
    return crossings % 2 == 1


@njit(cache=True)
def points_in_packed_planes(slab_lo, slab_hi, plane_ring_start, ring_vertex_start, vertices, points, out):
    for n in range(points.shape[0]):
        px, py, pz = points[n, 0], points[n, 1], points[n, 2]
        out[n] = False
        if not (pz >= slab_lo[0]) or not (pz < slab_hi[-1]):  # NaN too
            continue
        p = np.searchsorted(slab_lo, pz, side="right") - 1  # the last slab starting at or below z
        if not pz < slab_hi[p]:
            continue
        out[n] = _inside_plane(plane_ring_start, ring_vertex_start, vertices, p, px, py)


@njit(cache=True)
def point_in_plane_sets(slab_lo, slab_hi, plane_ring_start, ring_vertex_start, vertices, set_plane_start, point, out):
    px, py, pz = point[0], point[1], point[2]
    for k in range(set_plane_start.shape[0] - 1):
        p0, p1 = set_plane_start[k], set_plane_start[k + 1]
        out[k] = False
        if p0 == p1 or not (pz >= slab_lo[p0]) or not (pz < slab_hi[p1 - 1]):  # NaN too
            continue
        p = p0 + np.searchsorted(slab_lo[p0:p1], pz, side="right") - 1  # the last slab of k starting at or below z
        if not pz < slab_hi[p]:
            continue
        out[k] = _inside_plane(plane_ring_start, ring_vertex_start, vertices, p, px, py)


#: The grid index search of :mod:`isodose.model`, compiled as it is.
_first_at_or_above = njit(cache=True, inline="always", error_model="numpy")(first_grid_index_at_or_above)


@njit(cache=True, error_model="numpy")
def grid_extremes_in_planes(
    p_first, p_end, slab_lo, slab_hi, plane_ring_start, ring_vertex_start, vertices, dose, origin, spacing, out
):
    nz, ny, nx = dose.shape
    ox, oy, oz = origin[0], origin[1], origin[2]
    sx, sy, sz = spacing[0], spacing[1], spacing[2]
    lo = np.inf
    hi = -np.inf
    for p in range(p_first, p_end):
        r0, r1 = plane_ring_start[p], plane_ring_start[p + 1]
        if r0 == r1:
            continue
        k_a = _first_at_or_above(slab_lo[p], oz, sz, nz)
        k_b = _first_at_or_above(slab_hi[p], oz, sz, nz)
        if k_a >= k_b:
            continue
        v0, v1 = ring_vertex_start[r0], ring_vertex_start[r1]
        y_min = np.inf
        y_max = -np.inf
        for v in range(v0, v1):
            y_min = min(y_min, vertices[v, 1])
            y_max = max(y_max, vertices[v, 1])
        j_first = _first_at_or_above(y_min, oy, sy, ny)
        n_rows = _first_at_or_above(y_max, oy, sy, ny) - j_first
        if n_rows <= 0:
            continue
        # Each edge crosses the rows whose y lies in [its lower y, its upper y): its rows found once, the crossings
        # counted per row, then placed row by row.
        edge_from = np.empty(v1 - v0, dtype=np.int64)
        edge_to = np.empty(v1 - v0, dtype=np.int64)
        edge_rows = np.empty((v1 - v0, 2), dtype=np.int64)
        n_edges = 0
        row_start = np.zeros(n_rows + 1, dtype=np.int64)
        for r in range(r0, r1):
            a0, a1 = ring_vertex_start[r], ring_vertex_start[r + 1]
            for e in range(a0, a1):
                f = e + 1 if e + 1 < a1 else a0
                y1, y2 = vertices[e, 1], vertices[f, 1]
                if y1 == y2:
                    continue
                ja = max(_first_at_or_above(min(y1, y2), oy, sy, ny) - j_first, 0)
                jb = min(_first_at_or_above(max(y1, y2), oy, sy, ny) - j_first, n_rows)
                if ja >= jb:
                    continue
                edge_from[n_edges], edge_to[n_edges] = e, f
                edge_rows[n_edges, 0], edge_rows[n_edges, 1] = ja, jb
                n_edges += 1
                for row in range(ja, jb):
                    row_start[row + 1] += 1
        for row in range(n_rows):
            row_start[row + 1] += row_start[row]
        crossings = np.empty(row_start[n_rows])
        filled = row_start[:n_rows].copy()
        for q in range(n_edges):
            e, f = edge_from[q], edge_to[q]
            x1, y1, x2, y2 = vertices[e, 0], vertices[e, 1], vertices[f, 0], vertices[f, 1]
            for row in range(edge_rows[q, 0], edge_rows[q, 1]):
                py = oy + (j_first + row) * sy
                crossings[filled[row]] = x1 + (py - y1) * ((x2 - x1) / (y2 - y1))
                filled[row] += 1
        for row in range(n_rows):
            n = row_start[row + 1] - row_start[row]
            if n == 0:
                continue
            j = j_first + row
            xs = np.sort(crossings[row_start[row] : row_start[row + 1]])
            # A point is inside where an odd number of crossings lie to its right: [xs[t-1], xs[t]) for n-t odd.
            for t in range(n - 1, -1, -2):
                left = xs[t - 1] if t >= 1 else -np.inf
                i_a = _first_at_or_above(left, ox, sx, nx)
                i_b = _first_at_or_above(xs[t], ox, sx, nx)
                for k in range(k_a, k_b):
                    for i in range(i_a, i_b):
                        value = dose[k, j, i]
                        lo = min(lo, value)
                        hi = max(hi, value)
    out[0] = lo
    out[1] = hi
