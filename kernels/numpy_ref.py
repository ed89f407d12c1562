"""Readable float64 reference of every kernel. Slow on purpose: clarity first, loops where they explain.

See the package docstring for the meaning of each kernel and its arguments.
"""

from __future__ import annotations

import numpy as np

from . import (
    GRID_EPSILON,
    INVERSION_HALVINGS,
    INVERSION_ITERATIONS,
    INVERSION_TOLERANCE_MM,
    SINGLE_VOXEL_HALF_WIDTH,
    host,
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

NAME = "numpy"


def device_name() -> str:
    return "cpu, 1 thread"


# --------------------------------------------------------------------------------------------------------
# Trilinear interpolation
# --------------------------------------------------------------------------------------------------------
def trilinear_with_gradient(dose, origin, spacing, points):
    """Dose, its gradient (Gy/mm, as x, y, z) and an inside mask at each ``(x, y, z)`` point.

    Along an axis of a single voxel the grid is its voxel's slab, half a spacing each way of the centre, and the
    dose is constant along that axis (see :data:`isodose.kernels.SINGLE_VOXEL_HALF_WIDTH`)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    dose = np.asarray(dose)
    shape_xyz = np.array(dose.shape[::-1])
    index = (points - np.asarray(origin, dtype=np.float64)) / np.asarray(spacing, dtype=np.float64)
    single = shape_xyz == 1
    low = np.where(single, -SINGLE_VOXEL_HALF_WIDTH, 0.0) - GRID_EPSILON
    high = np.where(single, SINGLE_VOXEL_HALF_WIDTH, shape_xyz - 1.0) + GRID_EPSILON
    inside = np.all((index >= low) & (index <= high), axis=1)
    index = np.clip(np.where(inside[:, None], index, 0.0), 0.0, shape_xyz - 1)  # outside (NaN too): any voxel
    lower = np.maximum(np.minimum(np.floor(index).astype(np.int64), shape_xyz - 2), 0)
    t = np.where(single, 0.0, index - lower)
    upper = np.minimum(lower + 1, shape_xyz - 1)  # a single voxel is its own neighbour: no step along that axis
    i, j, k = lower[:, 0], lower[:, 1], lower[:, 2]
    i1, j1, k1 = upper[:, 0], upper[:, 1], upper[:, 2]
    tx, ty, tz = t[:, 0], t[:, 1], t[:, 2]

    def corner(dk, dj, di):
        return dose[k1 if dk else k, j1 if dj else j, i1 if di else i].astype(np.float64)

    c000, c001, c010, c011 = corner(0, 0, 0), corner(0, 0, 1), corner(0, 1, 0), corner(0, 1, 1)
    c100, c101, c110, c111 = corner(1, 0, 0), corner(1, 0, 1), corner(1, 1, 0), corner(1, 1, 1)
    # Interpolate along x, then y, then z, keeping the partial derivatives.
    c00 = c000 + tx * (c001 - c000)
    c01 = c010 + tx * (c011 - c010)
    c10 = c100 + tx * (c101 - c100)
    c11 = c110 + tx * (c111 - c110)
    c0 = c00 + ty * (c01 - c00)
    c1 = c10 + ty * (c11 - c10)
    value = c0 + tz * (c1 - c0)

    dx0 = (1 - ty) * (c001 - c000) + ty * (c011 - c010)
    dx1 = (1 - ty) * (c101 - c100) + ty * (c111 - c110)
    gradient = np.empty_like(points)
    gradient[:, 0] = ((1 - tz) * dx0 + tz * dx1) / spacing[0]
    gradient[:, 1] = ((1 - tz) * (c01 - c00) + tz * (c11 - c10)) / spacing[1]
    gradient[:, 2] = (c1 - c0) / spacing[2]
    return value, gradient, inside


def trilinear(dose, origin, spacing, points):
    value, _, inside = trilinear_with_gradient(dose, origin, spacing, points)
    return np.where(inside, value, np.nan)


def lattice_points(origin, spacing, shape, transform):
    """The ``(x, y, z)`` of every voxel centre of the lattice ``shape`` (z, y, x) from ``origin`` by ``spacing``,
    in the lattice's (z, y, x) order, mapped by the rigid 4x4 ``transform``."""
    nz, ny, nx = (int(n) for n in shape)
    axes = [float(origin[a]) + float(spacing[a]) * np.arange(n, dtype=np.float64) for a, n in enumerate((nx, ny, nz))]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    points = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    matrix = np.asarray(transform, dtype=np.float64).reshape(4, 4)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def resample(dose, origin, spacing, onto_origin, onto_spacing, onto_shape, transform):
    """:func:`trilinear` at every voxel centre of another lattice (see :func:`lattice_points`), shaped as it."""
    points = lattice_points(onto_origin, onto_spacing, onto_shape, transform)
    return trilinear(dose, origin, spacing, points).reshape(tuple(int(n) for n in onto_shape))


def course_sum(doses, weights, fractions, alpha_beta=None):
    """``sum_c weights[c] * D_c`` of same-shaped course doses (physical, ``alpha_beta`` None), or of each
    course's EQD2 ``D_c (D_c / fractions[c] + a/b) / (2 + a/b)``, as float32: each term in float64, added in
    course order, rounded once."""
    return course_sum_in(np, doses, weights, fractions, alpha_beta)


def course_sum_in(xp, doses, weights, fractions, alpha_beta=None):
    """:func:`course_sum` in the array module ``xp`` of the doses (NumPy here, CuPy for the GPU backend)."""
    check_courses(doses, weights, fractions)
    total = 0.0
    for dose, weight, n in zip(doses, weights, fractions):
        dose = xp.asarray(dose, dtype=np.float64)
        term = dose if alpha_beta is None else dose * (dose / float(n) + alpha_beta) / (2.0 + alpha_beta)
        total = total + float(weight) * term
    return xp.asarray(total, dtype=np.float64).astype(np.float32)


# --------------------------------------------------------------------------------------------------------
# Polygon coverage
# --------------------------------------------------------------------------------------------------------
def _plane_edges(vertices, ring_start, first_ring, end_ring):
    """Edges (xa, ya, xb, yb) of all closed rings of one plane."""
    edges = []
    for r in range(first_ring, end_ring):
        ring = vertices[ring_start[r] : ring_start[r + 1]]
        edges.append(np.hstack([ring, np.roll(ring, -1, axis=0)]))
    return np.vstack(edges) if edges else np.empty((0, 4))


def _crossings(edges, y):
    """Sorted x where the horizontal line at ``y`` crosses the edges. Each edge is half-open in y, so a
    line through a vertex counts it once and every closed ring is crossed an even number of times."""
    xa, ya, xb, yb = edges.T
    crosses = ((ya <= y) & (y < yb)) | ((yb <= y) & (y < ya))
    xa, ya, xb, yb = xa[crosses], ya[crosses], xb[crosses], yb[crosses]
    return np.sort(xa + (y - ya) * (xb - xa) / (yb - ya))


def finish_moments(moments, centre_x, centre_y, band):
    """Turn per-cell sums over scanline pieces into (area, centroid, covariance).

    ``moments`` columns: sum of piece lengths L, of L*x, of L*y, of second moments in xx, xy, yy, all with
    x and y measured from the cell centre; each scanline stands for a band of height ``band``.
    """
    cells = np.zeros((len(moments), 6))
    length = moments[:, 0]
    covered = length > 0
    safe = np.where(covered, length, 1.0)
    mx, my = moments[:, 1] / safe, moments[:, 2] / safe
    cells[:, 0] = length * band
    cells[:, 1] = centre_x + np.where(covered, mx, 0.0)
    cells[:, 2] = centre_y + np.where(covered, my, 0.0)
    cells[:, 3] = np.where(covered, np.maximum(moments[:, 3] / safe - mx * mx, 0.0), 0.0)
    cells[:, 4] = np.where(covered, moments[:, 4] / safe - mx * my, 0.0)
    cells[:, 5] = np.where(covered, np.maximum(moments[:, 5] / safe - my * my, 0.0), 0.0)
    return cells


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
    vertices = np.asarray(vertices, dtype=np.float64)
    cells = np.zeros((int(plane_cell_start[-1]), 6))
    counts = host.plane_scanlines(scanlines, len(plane_nx))
    for p in range(len(plane_nx)):
        scanlines_p = int(counts[p])
        nx, ny = int(plane_nx[p]), int(plane_ny[p])
        hx, hy = float(plane_hx[p]), float(plane_hy[p])
        x0, y0 = float(plane_x0[p]), float(plane_y0[p])
        edges = _plane_edges(vertices, ring_start, plane_ring_start[p], plane_ring_start[p + 1])
        band = hy / scanlines_p
        cell_left = x0 + hx * np.arange(nx)
        cell_centre_x = cell_left + 0.5 * hx
        moments = np.zeros((ny, nx, 6))
        for j in range(ny):
            row_centre = y0 + (j + 0.5) * hy
            for t in range(scanlines_p):
                y = y0 + j * hy + (t + 0.5) * band
                xs = _crossings(edges, y)
                spans = xs[: len(xs) // 2 * 2].reshape(-1, 2)
                if len(spans) == 0:
                    continue
                # Exact overlap of every inside span with every cell of the row.
                lo = np.maximum(spans[:, :1], cell_left[None, :])
                hi = np.minimum(spans[:, 1:], cell_left[None, :] + hx)
                length = np.clip(hi - lo, 0.0, None)
                xm = 0.5 * (lo + hi) - cell_centre_x[None, :]
                dy = y - row_centre
                total = length.sum(axis=0)
                first = (length * xm).sum(axis=0)
                moments[j, :, 0] += total
                moments[j, :, 1] += first
                moments[j, :, 2] += total * dy
                moments[j, :, 3] += (length * (xm * xm + length * length / 12.0)).sum(axis=0)
                moments[j, :, 4] += first * dy
                moments[j, :, 5] += total * (dy * dy + band * band / 12.0)
        centre_y = y0 + (np.arange(ny) + 0.5) * hy
        centre_x_grid, centre_y_grid = np.meshgrid(cell_centre_x, centre_y)
        cells[plane_cell_start[p] : plane_cell_start[p + 1]] = finish_moments(
            moments.reshape(-1, 6), centre_x_grid.ravel(), centre_y_grid.ravel(), band
        )
    return cells


# --------------------------------------------------------------------------------------------------------
# Histogram accumulation
# --------------------------------------------------------------------------------------------------------
def _deposit_intervals(values, widths, bin_width, n_bins):
    """Each value's interval [value - width/2, value + width/2] in bin units, moved (never shrunk) to lie
    inside the histogram range [0, n_bins]."""
    half = 0.5 * np.asarray(widths, dtype=np.float64) / bin_width
    centre = np.asarray(values, dtype=np.float64) / bin_width
    lo, hi = centre - half, centre + half
    shift_up = np.maximum(-lo, 0.0)
    lo, hi = lo + shift_up, hi + shift_up
    shift_down = np.maximum(hi - n_bins, 0.0)
    lo, hi = np.maximum(lo - shift_down, 0.0), hi - shift_down
    return lo, hi


def deposit_differences(delta, values, weights, widths, bin_width, n_bins):
    """Add uniform deposits to ``delta`` (length n_bins + 1), whose running sum is the histogram.

    A uniform density on [a, b] (bin units) changes the per-bin mass only in the bins holding a and b, so
    each deposit is four additions whatever its width: exact bin masses, O(1) per sample.
    """
    weights = np.asarray(weights, dtype=np.float64)
    lo, hi = _deposit_intervals(values, widths, bin_width, n_bins)
    ka = np.minimum(np.floor(lo).astype(np.int64), n_bins - 1)
    kb = np.minimum(np.floor(hi).astype(np.int64), n_bins - 1)
    point = ka == kb
    # Deposits within one bin: all their weight in that bin.
    np.add.at(delta, ka[point], weights[point])
    np.add.at(delta, ka[point] + 1, -weights[point])
    # Spread masses: slope s (mass per bin) from a to b.
    spread = ~point
    ka, kb, lo, hi, w = ka[spread], kb[spread], lo[spread], hi[spread], weights[spread]
    s = w / (hi - lo)
    np.add.at(delta, ka, s * (ka + 1 - lo))
    np.add.at(delta, ka + 1, s * (lo - ka))
    np.add.at(delta, kb, -s * (kb + 1 - hi))
    np.add.at(delta, kb + 1, -s * (hi - kb))


def accumulate_histogram(values, weights, widths, bin_width, n_bins, n_chunks=64):
    del n_chunks  # one ordered pass
    delta = np.zeros(n_bins + 1)
    deposit_differences(delta, values, weights, widths, bin_width, n_bins)
    return np.cumsum(delta)[:n_bins]


# --------------------------------------------------------------------------------------------------------
# Sampling slabs and accumulating DVHs
# --------------------------------------------------------------------------------------------------------
def spread_width(gradient, var_xx, var_xy, var_yy, dz):
    """Width of the uniform distribution with the same variance as the linear dose over a sample's region:
    the covered part of its cell (covariance from the coverage kernel) times a slice of thickness dz."""
    gx, gy, gz = gradient[:, 0], gradient[:, 1], gradient[:, 2]
    variance = gx * gx * var_xx + 2.0 * gx * gy * var_xy + gy * gy * var_yy + gz * gz * dz * dz / 12.0
    return np.sqrt(12.0 * np.maximum(variance, 0.0))


def slab_pieces(z_lo, z_hi, grid_z0, grid_dz):
    """Split the slab [z_lo, z_hi] at the dose grid's planes. Within each piece the trilinear dose is
    exactly linear in z, so one sample per piece, spread over its thickness, integrates the z profile."""
    pieces = []
    z = z_lo
    while z < z_hi:
        next_plane = grid_z0 + (np.floor((z - grid_z0) / grid_dz + 1e-9) + 1.0) * grid_dz
        end = min(next_plane, z_hi)
        pieces.append((z, end))
        z = end
    return pieces


def is_axial(transform):
    """Does the transform keep z axes parallel (a rotation about z at most, any translation)?"""
    return transform[2, 0] == 0.0 and transform[2, 1] == 0.0 and transform[2, 2] == 1.0


def structure_pieces(z_lo, z_hi, transform, origin, spacing):
    """The pieces of a slab, in the structure's own z. When the transform keeps z axial, the slab is split at
    the dose planes (shifted by the translation); otherwise into pieces no thicker than half the smallest
    voxel side."""
    if is_axial(transform):
        shift = transform[2, 3]
        return [(a - shift, b - shift) for a, b in slab_pieces(z_lo + shift, z_hi + shift, origin[2], spacing[2])]
    n = max(1, int(np.ceil((z_hi - z_lo) / (0.5 * min(spacing)) - 1e-9)))
    edges = z_lo + (z_hi - z_lo) * np.arange(n + 1) / n
    return list(zip(edges[:-1], edges[1:]))


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
    # n_chunks fixes the summation order of the compiled backends; one ordered pass needs none here.
    del n_chunks
    n_structures = len(structure_plane_start) - 1
    hist = np.zeros((n_structures, n_bins))
    stats = np.zeros((n_structures, 8))
    for s in range(n_structures):
        transform = np.asarray(structure_transform[s], dtype=np.float64)
        rotation, translation = transform[:3, :3], transform[:3, 3]
        delta = np.zeros(n_bins + 1)
        dmin, dmax = np.inf, -np.inf
        for p in range(structure_plane_start[s], structure_plane_start[s + 1]):
            plane_cells = cells[plane_cell_start[p] : plane_cell_start[p + 1]]
            plane_cells = plane_cells[plane_cells[:, 0] > 0]
            if len(plane_cells) == 0:
                continue
            for z_a, z_b in structure_pieces(plane_z_lo[p], plane_z_hi[p], transform, origin, spacing):
                dz = z_b - z_a
                depth = np.full(len(plane_cells), 0.5 * (z_a + z_b))
                local = np.column_stack([plane_cells[:, 1], plane_cells[:, 2], depth])
                points = local @ rotation.T + translation
                value, gradient, inside = trilinear_with_gradient(dose, origin, spacing, points)
                weight = plane_cells[:, 0] * dz
                stats[s, 5:8] += (weight[:, None] * points).sum(axis=0)
                stats[s, 1] += weight[~inside].sum()
                if not inside.any():
                    continue
                value, weight = value[inside], weight[inside]
                local_gradient = gradient[inside] @ rotation  # = (R^T g) for each row
                covered = plane_cells[inside]
                width = spread_width(local_gradient, covered[:, 3], covered[:, 4], covered[:, 5], dz)
                deposit_differences(delta, value, weight, width, bin_width, n_bins)
                stats[s, 0] += weight.sum()
                stats[s, 2] += (weight * value).sum()
                dmin, dmax = min(dmin, value.min()), max(dmax, value.max())
        hist[s] = np.cumsum(delta)[:n_bins]
        stats[s, 3] = dmin if np.isfinite(dmin) else np.nan
        stats[s, 4] = dmax if np.isfinite(dmax) else np.nan
    return hist, stats


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
def displace(vectors, world_to_index, points):
    """The displacement (mm) at each ``(x, y, z)`` point of one field, by trilinear interpolation of its vectors at
    its grid points, and its Jacobian (the derivatives of each component along x, y and z); NaN outside the box of
    grid points. ``world_to_index`` maps a point to its fractional grid index ``(i, j, k)``, ``vectors[k, j, i]``
    being the displacement at grid point ``(i, j, k)``: each component is interpolated in index space (origin 0,
    spacing 1) as a dose is, and its gradient carried back to mm by the matrix."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    matrix = np.asarray(world_to_index, dtype=np.float64).reshape(4, 4)
    index = points @ matrix[:3, :3].T + matrix[:3, 3]
    vectors = np.asarray(vectors)
    displacement = np.empty((len(points), 3))
    jacobian = np.empty((len(points), 3, 3))
    inside = np.ones(len(points), dtype=bool)
    for c in range(3):
        value, gradient, within = trilinear_with_gradient(vectors[..., c], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), index)
        displacement[:, c] = value
        jacobian[:, c, :] = gradient @ matrix[:3, :3]  # d(component)/d(index) . d(index)/d(x)
        inside &= within
    displacement[~inside] = np.nan
    jacobian[~inside] = np.nan
    return displacement, jacobian


def displace_many(table, points, point_field):
    return host.displace_many(displace, table, points, point_field)


def invert_displacement(vectors, world_to_index, targets, pre, pre_inverse):
    """Newton's method for ``pre p + d(p) = t`` at each target (see the package docstring): each step
    ``p <- p - J^-1 G`` with ``G = pre p + d(p) - t`` and ``J = pre + grad d``, halved while it would leave the
    field's grid."""
    targets = np.asarray(targets, dtype=np.float64).reshape(-1, 3)
    pre = np.asarray(pre, dtype=np.float64).reshape(4, 4)
    pre_inverse = np.asarray(pre_inverse, dtype=np.float64).reshape(4, 4)
    n = len(targets)
    points = targets @ pre_inverse[:3, :3].T + pre_inverse[:3, 3]
    displacement, gradient = displace(vectors, world_to_index, points)
    lost = ~np.all(np.isfinite(displacement), axis=1)
    residual = np.full(n, np.inf)
    for _ in range(INVERSION_ITERATIONS):
        mismatch = points @ pre[:3, :3].T + pre[:3, 3] + displacement - targets
        residual = np.where(lost, np.nan, np.linalg.norm(mismatch, axis=1))
        active = ~lost & (residual > INVERSION_TOLERANCE_MM)
        if not active.any():
            break
        where = np.flatnonzero(active)
        jacobian = pre[:3, :3][None] + gradient[where]
        try:
            step = np.linalg.solve(jacobian, mismatch[where][:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = np.stack([np.linalg.lstsq(j, m, rcond=None)[0] for j, m in zip(jacobian, mismatch[where])])
        scale = np.ones(len(where))
        for _ in range(INVERSION_HALVINGS + 1):
            trial = points[where] - scale[:, None] * step
            trial_displacement, trial_gradient = displace(vectors, world_to_index, trial)
            outside = ~np.all(np.isfinite(trial_displacement), axis=1)
            if not outside.any():
                break
            scale = np.where(outside, 0.5 * scale, scale)
        points[where] = np.where(outside[:, None], points[where], trial)
        displacement[where] = np.where(outside[:, None], displacement[where], trial_displacement)
        gradient[where] = np.where(outside[:, None, None], gradient[where], trial_gradient)
        lost[where] |= outside
    mismatch = points @ pre[:3, :3].T + pre[:3, 3] + displacement - targets
    residual = np.linalg.norm(mismatch, axis=1)
    points[lost] = np.nan
    gradient[lost] = np.nan
    return points, gradient, np.where(lost, np.nan, residual)


def invert_displacement_many(table, targets, point_field, pre, pre_inverse):
    return host.invert_displacement_many(invert_displacement, table, targets, point_field, pre, pre_inverse)


# --------------------------------------------------------------------------------------------------------
# Perturbations
# --------------------------------------------------------------------------------------------------------
def moved_doses(dose, origin, spacing, points, transforms, out=None):
    """The trilinear dose at ``points`` moved by each rigid 4x4 of ``transforms``: ``(transforms, points)``, into
    ``out`` where given."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    transforms = np.asarray(transforms, dtype=np.float64).reshape(-1, 4, 4)
    if out is None:
        out = np.empty((len(transforms), len(points)))
    for d, matrix in enumerate(transforms):
        out[d] = trilinear(dose, origin, spacing, points @ matrix[:3, :3].T + matrix[:3, 3])
    return out


def moved_doses_many(table, points, point_grid, case_point_start, transforms, case_transform_start):
    return host.moved_doses_many(
        moved_doses, table, points, point_grid, case_point_start, transforms, case_transform_start
    )
