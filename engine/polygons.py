"""Compiled polygon tests that the engine runs on the host, whatever the backend: not backend kernels.

- :func:`ring_crosses_itself` checks every ring of a structure once, when its planes are first grouped;
- :func:`points_in_packed_planes` tests a few points (a recurrence's centroid) against each target, once per
  case and target.

Both are compiled with Numba (cached on disk) because a ring holds thousands of vertices and a cohort asks
these questions thousands of times; they load only what they need, not the backend kernels of
``isodose.kernels.numba_cpu``.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def _float64(a):
    return np.ascontiguousarray(a, dtype=np.float64)


def _int64(a):
    return np.ascontiguousarray(a, dtype=np.int64)


@njit(cache=True, inline="always", error_model="numpy")
def _side(ax, ay, bx, by, cx, cy):
    """Sign of the turn a -> b -> c: 1 left, -1 right, 0 collinear."""
    cross = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    return 1 if cross > 0 else (-1 if cross < 0 else 0)


@njit(cache=True, error_model="numpy")
def _ring_crosses_itself(points):
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


def ring_crosses_itself(points) -> bool:
    """Whether two non-neighbouring edges of a closed ring cross (a proper crossing; touching is not)."""
    return bool(_ring_crosses_itself(_float64(points).reshape(-1, 2)))


@njit(cache=True)
def _points_in_packed_planes(slab_lo, slab_hi, plane_ring_start, ring_vertex_start, vertices, points, out):
    for n in range(points.shape[0]):
        px, py, pz = points[n, 0], points[n, 1], points[n, 2]
        out[n] = False
        if not (pz >= slab_lo[0]) or not (pz < slab_hi[-1]):  # NaN too
            continue
        p = np.searchsorted(slab_lo, pz, side="right") - 1  # the last slab starting at or below z
        if not pz < slab_hi[p]:
            continue
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
        out[n] = crossings % 2 == 1


def points_in_packed_planes(slab_lo, slab_hi, plane_ring_start, ring_vertex_start, vertices, points) -> np.ndarray:
    """Which ``(x, y, z)`` points lie inside a structure given by its planes packed in flat arrays (see
    ``isodose.geometry.PackedPlanes``): the even-odd test, with half-open edges, of the rings of the plane whose
    slab ``[slab_lo, slab_hi)`` holds the point's z."""
    points = _float64(points).reshape(-1, 3)
    out = np.zeros(len(points), dtype=np.bool_)
    if len(slab_lo) and len(points):
        _points_in_packed_planes(
            _float64(slab_lo),
            _float64(slab_hi),
            _int64(plane_ring_start),
            _int64(ring_vertex_start),
            _float64(vertices).reshape(-1, 2),
            points,
            out,
        )
    return out
