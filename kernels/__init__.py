"""Array kernels, one module per backend, each keeping the contract of ``protocol.Kernels``: the same names,
signatures and meaning.

- ``protocol``: the contract, as a ``typing.Protocol``; the engine calls backends through it alone.
- ``numpy_ref``: the readable float64 reference every other backend is tested against.
- ``numba_cpu``: parallel, compiled once and cached on disk; ``numba_target`` sets Numba's CPU target up for it
  (and for the engine's compiled host code) once per process.
- ``cupy_gpu``: the CUDA kernels of ``cuda/isodose.cu`` through CuPy.
- ``host``: what the two CPU backends share (host arrays, and the batched calls as loops over grids).
- ``selftest``: the small problem the dispatcher has the CuPy backend solve on its device before it trusts it.

The kernels know nothing of DICOM, files or the engine's classes: arrays and scalars in, arrays out.
Coordinates are in mm, doses in Gy, arrays indexed ``(z, y, x)``, points given as ``(x, y, z)``.

Kernels
-------
``trilinear(dose, origin, spacing, points) -> values``
    Dose at each point by trilinear interpolation; NaN outside the box spanned by the voxel centres.
``resample(dose, origin, spacing, onto_origin, onto_spacing, onto_shape, transform) -> values``
    ``trilinear`` at every voxel centre of another lattice (``onto_shape`` as (z, y, x) from ``onto_origin``
    by ``onto_spacing``), each centre mapped into the dose grid's frame by the rigid 4x4 ``transform``; shaped
    as the lattice, float64, and an array of the backend (on the GPU, a device array: it stays there).
``course_sum(doses, weights, fractions, alpha_beta=None) -> dose``
    ``sum_c weights[c] * D_c`` of same-shaped course doses, or with ``alpha_beta`` (Gy) the weighted sum of
    each course's EQD2 ``D_c (D_c / fractions[c] + a/b) / (2 + a/b)``: float64 terms added in course order,
    rounded once to float32 (the grid a plan sum is sampled in); an array of the backend.
``asarray(array, dtype) -> array`` and ``to_host(array) -> numpy array``
    Arrays into and out of the backend: NumPy arrays on the CPU backends, device arrays on the GPU.
``polygon_coverage(vertices, ring_start, plane_ring_start, plane_cell_start, plane_x0, plane_y0,
plane_nx, plane_ny, plane_hx, plane_hy, scanlines) -> cells``
    For each plane, the area of the even-odd interior of its rings inside each cell of its lattice window
    (``plane_nx`` by ``plane_ny`` cells of ``plane_hx`` by ``plane_hy`` mm from ``(plane_x0, plane_y0)``,
    row by row), exact along x and sampled by ``scanlines`` lines per row along y (one count for every
    plane, or one per plane), with the centroid and covariance of the covered part (see ``CELL_COLUMNS``).
``accumulate_histogram(values, weights, widths, bin_width, n_bins, n_chunks) -> hist``
    Histogram in which each value spreads its weight uniformly over ``[value - width/2, value + width/2]``.
``cell_histograms(dose, origin, spacing, cells, plane_cell_start, plane_z_lo, plane_z_hi,
structure_plane_start, structure_transform, bin_width, n_bins, n_chunks) -> (hist, stats)``
    Samples every covered cell through its plane's slab ``[plane_z_lo, plane_z_hi]``, split at the dose
    grid's planes, maps each sample into the dose grid's frame by its structure's rigid 4x4
    ``structure_transform``, interpolates the dose and its gradient there, spreads each sample over a
    uniform distribution with the variance of the (locally linear) dose over its region, and accumulates
    per structure a dose histogram (mm^3 per bin) and the statistics in ``STAT_COLUMNS``. When a transform
    tilts the z axis, slabs are cut into pieces no thicker than half the smallest voxel side instead.
``grid_table(grids) -> table``, ``trilinear_many(table, points, point_grid) -> values`` and
``cell_histograms_many(table, ..., structure_grid, structure_transform, structure_bin_width, n_bins, n_chunks)``
    The batched forms: dose grids put where the kernels read them once (on a GPU, copied to the device), then
    points and structures each interpolated in their own grid of the table. The CPU backends loop over grids.
``field_table(fields) -> table`` and ``displace_many(table, points, point_field) -> (displacement, jacobian)``
    Displacement fields (vectors ``(nz, ny, nx, 3)`` in mm at grid points, and the 4x4 taking a point to its
    fractional grid index) put where the kernels read them once; then each point's displacement by trilinear
    interpolation of its field's vectors, and the Jacobian of the displacement (each component's derivatives
    along x, y, z), NaN outside the box of the field's grid points.
``invert_displacement_many(table, targets, point_field, pre, pre_inverse) -> (points, jacobian, residual)``
    The inverse: for each target ``t``, the point ``p`` with ``pre p + d(p) = t`` by Newton's method from
    ``pre^-1 t`` (steps halved where one would leave the grid), the Jacobian of ``d`` there and the residual
    ``|pre p + d(p) - t|``; NaN where no point inside the grid is found.
``moved_doses_many(table, points, point_grid, case_point_start, transforms, case_transform_start) -> doses``
    For perturbations of many cases in one call: the trilinear dose at each of a case's points moved by each of
    its rigid 4x4 transforms (points and transforms given case after case); flat, each case's block
    ``(transforms, points)``.
"""

#: Newton iterations of ``invert_displacement_many`` at most, the residual (mm) they stop at, and the halvings of a
#: step that would leave the field's grid.
INVERSION_ITERATIONS = 50
INVERSION_TOLERANCE_MM = 1e-7
INVERSION_HALVINGS = 8

#: Columns of the ``cells`` array made by ``polygon_coverage``.
CELL_COLUMNS = ("area_mm2", "centroid_x_mm", "centroid_y_mm", "var_xx_mm2", "var_xy_mm2", "var_yy_mm2")
#: Columns of the ``stats`` array made by ``cell_histograms``.
STAT_COLUMNS = (
    "inside_mm3",
    "outside_mm3",
    "dose_volume_sum",
    "dmin_gy",
    "dmax_gy",
    "x_volume_sum",
    "y_volume_sum",
    "z_volume_sum",
)
#: Points within this fraction of a voxel outside the grid still count as inside (rounding of coordinates).
GRID_EPSILON = 1e-6
#: Along an axis of a single voxel the grid is that voxel's slab: this many voxels each way of its centre, the
#: dose constant across it (a grid of one plane along z, say, stands for that plane's thickness).
SINGLE_VOXEL_HALF_WIDTH = 0.5
#: Each chunk of a structure's cells holds at least this many cells; the chunking (and so the summation
#: order) depends only on the input, never on the number of threads.
MIN_CELLS_PER_CHUNK = 8192
