"""NumPy references of the engine's compiled host helpers (isodose.polygons), for the tests: slow and plain."""

from __future__ import annotations

import numpy as np


def ring_crosses_itself(points) -> bool:
    """Whether two non-neighbouring edges of a closed ring cross (a proper crossing; touching is not): every
    pair of edges tested."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    n = len(points)
    if n < 4:
        return False
    a, b = points, np.roll(points, -1, axis=0)

    def side(p, q, r):
        """Sign of the turn p -> q -> r."""
        return np.sign((q[:, 0] - p[:, 0]) * (r[:, 1] - p[:, 1]) - (q[:, 1] - p[:, 1]) * (r[:, 0] - p[:, 0]))

    i, j = np.triu_indices(n, k=1)
    keep = (j != (i + 1) % n) & (i != (j + 1) % n) & np.any(a[i] != b[i], axis=1) & np.any(a[j] != b[j], axis=1)
    i, j = i[keep], j[keep]
    crossing = (side(a[i], b[i], a[j]) * side(a[i], b[i], b[j]) < 0) & (
        side(a[j], b[j], a[i]) * side(a[j], b[j], b[i]) < 0
    )
    return bool(np.any(crossing))
