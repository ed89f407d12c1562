"""The compiled halves of :mod:`isodose.polygons` (Numba, cached on disk), imported only when an input is large
enough to need them, so that a command that computes little never loads Numba."""

from __future__ import annotations

import numpy as np
from numba import njit

from .kernels import numba_target

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
