"""A small problem a backend must solve as the NumPy reference does: the dispatcher runs it on the CuPy backend
before it trusts it (a GPU whose driver, compiler or memory fails is then skipped); the test suite runs it on
every backend."""

from __future__ import annotations

import numpy as np

from . import numpy_ref


def _problem():
    z, y, x = np.meshgrid(np.arange(6.0), np.arange(7.0), np.arange(8.0), indexing="ij")
    dose = (20.0 + 1.5 * x - 0.7 * y + 0.9 * z + 0.2 * x * y).astype(np.float32)
    origin, spacing = np.array([-3.0, -2.0, -1.0]), np.array([2.0, 1.5, 2.5])
    square = [[-1.0, -0.5], [8.0, -0.5], [8.0, 5.0], [-1.0, 5.0]]
    hole = [[2.0, 1.0], [2.0, 3.0], [4.0, 3.0], [4.0, 1.0]]
    vertices = np.array(square + hole + square)
    geometry = dict(
        vertices=vertices,
        ring_start=np.array([0, 4, 8, 12]),
        plane_ring_start=np.array([0, 2, 3]),
        plane_cell_start=np.array([0, 60, 120]),
        plane_x0=np.array([-1.0, -1.0]),
        plane_y0=np.array([-0.5, -0.5]),
        plane_nx=np.array([10, 10]),
        plane_ny=np.array([6, 6]),
        plane_hx=np.array([0.95, 0.95]),
        plane_hy=np.array([0.95, 0.95]),
        scanlines=np.array([2, 3]),
    )
    slabs = dict(
        plane_z_lo=np.array([1.0, 4.0]), plane_z_hi=np.array([4.0, 6.5]), structure_plane_start=np.array([0, 1, 2])
    )
    transforms = np.stack([np.eye(4), np.eye(4)])
    transforms[1, :3, 3] = [0.5, -0.25, 1.0]
    return dose, origin, spacing, geometry, slabs, transforms


def check(kernels) -> None:
    """Raise ``AssertionError`` naming the first kernel that disagrees with the reference."""
    dose, origin, spacing, geometry, slabs, transforms = _problem()
    points = np.array([[0.3, 0.4, 1.1], [11.0, 7.5, 10.0], [-3.0, -2.0, -1.0], [40.0, 0.0, 0.0]])
    expected = numpy_ref.trilinear(dose, origin, spacing, points)
    got = np.asarray(kernels.trilinear(dose, origin, spacing, points))
    assert np.allclose(got, expected, rtol=1e-9, equal_nan=True), "trilinear"
    lattice = ((-4.0, -1.0, 0.5), (1.5, 2.0, 2.0), (3, 4, 5), transforms[1])
    expected = numpy_ref.resample(dose, origin, spacing, *lattice)
    got = kernels.to_host(kernels.resample(dose, origin, spacing, *lattice))
    assert np.allclose(got, expected, rtol=1e-9, equal_nan=True), "resample"
    courses = ([dose, 0.5 * dose], [0.8, 1.0], [30, 5], 3.0)
    expected = numpy_ref.course_sum(*courses)
    got = kernels.to_host(kernels.course_sum([kernels.asarray(d) for d in courses[0]], *courses[1:]))
    assert np.allclose(got, expected, rtol=1e-6), "course_sum"
    reference_cells = numpy_ref.polygon_coverage(**geometry)
    cells = kernels.polygon_coverage(**geometry)
    host_cells = cells.get() if hasattr(cells, "get") else np.asarray(cells)
    assert np.allclose(host_cells, reference_cells, rtol=1e-9, atol=1e-12), "polygon_coverage"
    args = (dose, origin, spacing)
    kwargs = dict(**slabs, structure_transform=transforms, bin_width=0.05, n_bins=1024, n_chunks=4)
    hist_ref, stats_ref = numpy_ref.cell_histograms(*args, reference_cells, geometry["plane_cell_start"], **kwargs)
    hist, stats = kernels.cell_histograms(*args, cells, geometry["plane_cell_start"], **kwargs)
    assert np.allclose(hist, hist_ref, rtol=1e-6, atol=1e-9), "cell_histograms (histogram)"
    assert np.allclose(np.asarray(stats)[:, :5], stats_ref[:, :5], rtol=1e-6, atol=1e-9), "cell_histograms (stats)"
