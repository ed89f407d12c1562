"""Kernel benchmarks per backend, and scaling runs that show how the cost grows.

- Kernels (numpy, numba; cupy where a GPU is usable): polygon coverage, sampling with DVH accumulation
  (``cell_histograms``), trilinear interpolation, resampling a grid onto another and summing courses (plan
  sums), histogram accumulation, on a 30 mm sphere in a linear field; polygon coverage of one large plane
  (numba; cupy where a GPU is usable).
- Scaling (numba, DVHs end to end from structures in memory): dose grid size, number of structures,
  structure size. The cohort benchmark (test_bench_cohort.py) scales over the number of cases.

Run with ``make bench``; ``benchmarks/report.py`` turns the JSON into a table and a plot. Each benchmark's
``extra_info`` carries the size it was run at (``scale`` and ``size``) and the work done (cells, samples).
"""

from __future__ import annotations

import numpy as np
import pytest

from isodose.dispatch import select_backend
from isodose.dvh import compute_dvhs
from isodose.geometry import rigid_matrix
from isodose.phantoms import LinearField, Sphere, contour_shape
from isodose.sampling import histogram_bin_width
from isodose.voxelize import SamplingOptions, plan_sampling

BACKENDS = ["numpy", "numba", pytest.param("cupy", marks=pytest.mark.gpu)]
FIELD = LinearField(150.0, (0.3, -0.4, 0.5), (0.0, 0.0, 0.0))
OPTIONS = SamplingOptions()


def _grid(n: int = 64, spacing: float = 2.5):
    origin = (-spacing * (n - 1) / 2,) * 3
    return FIELD.grid(origin, (spacing,) * 3, (n, n, n), "1.2.3")


@pytest.fixture(scope="module")
def problem():
    grid = _grid()
    structure = contour_shape(Sphere((1.0, -2.0, 0.5), 30.0), "sphere", 1, 2.5)
    plan = plan_sampling([structure], grid, OPTIONS)
    return grid, plan


def _resident(backend, grid):
    """The grid's doses where the backend computes (on a GPU, copied there once, as an engine computation does
    before its launches): the kernel rows time the kernels, not the copy."""
    return backend.kernels.asarray(grid.dose_gy, np.float32)


def _coverage_args(plan):
    return (
        plan.vertices,
        plan.ring_start,
        plan.plane_ring_start,
        plan.plane_cell_start,
        plan.plane_x0_mm,
        plan.plane_y0_mm,
        plan.plane_nx,
        plan.plane_ny,
        plan.plane_hx_mm,
        plan.plane_hy_mm,
        plan.plane_scanlines,
    )


def _time_kernel(benchmark, backend, group: str, kernel, args, numpy_rounds: int = 5, **info) -> None:
    """Time ``kernel(*args)``, after one call that compiles and warms it, each call returning once the device
    has finished it (timings of GPU launches); 20 rounds, ``numpy_rounds`` for the slow reference."""

    def run():
        result = kernel(*args)
        if backend.name == "cupy":
            import cupy

            cupy.cuda.Device().synchronize()
        return result

    run()
    benchmark.group = group
    benchmark.extra_info.update(device=backend.device, **info)
    benchmark.pedantic(run, rounds=numpy_rounds if backend.name == "numpy" else 20, iterations=1)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_kernel_coverage(benchmark, problem, backend_name):
    _, plan = problem
    backend = select_backend(backend_name)
    _time_kernel(
        benchmark,
        backend,
        "kernel: polygon coverage",
        backend.kernels.polygon_coverage,
        _coverage_args(plan),
        cells=plan.n_cells,
    )


@pytest.mark.parametrize("backend_name", ["numba", pytest.param("cupy", marks=pytest.mark.gpu)])
def test_kernel_coverage_of_a_large_plane(benchmark, backend_name):
    """One plane of 4 million cells (a disc of 99 mm radius in a window of 2000 x 2000 cells of 0.1 mm, as a
    body contour gets at a fine supersampling): where the cost is memory, not polygons."""
    n = 2000
    t = np.linspace(0.0, 2.0 * np.pi, 400, endpoint=False)
    vertices = np.stack([100.0 + 99.0 * np.cos(t), 100.0 + 99.0 * np.sin(t)], axis=1)
    args = (vertices, np.array([0, 400]), np.array([0, 1]), np.array([0, n * n]), np.array([0.0]), np.array([0.0]))
    args += (np.array([n]), np.array([n]), np.array([0.1]), np.array([0.1]), np.array([2]))
    backend = select_backend(backend_name)
    _time_kernel(
        benchmark,
        backend,
        "kernel: polygon coverage, one large plane",
        backend.kernels.polygon_coverage,
        args,
        cells=n * n,
    )


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_kernel_sampling_and_accumulation(benchmark, problem, backend_name):
    grid, plan = problem
    backend = select_backend(backend_name)
    cells = backend.kernels.polygon_coverage(*_coverage_args(plan))
    args = (
        _resident(backend, grid),
        np.array(grid.origin_mm),
        np.array(grid.spacing_mm),
        cells,
        plan.plane_cell_start,
        plan.plane_z_lo_mm,
        plan.plane_z_hi_mm,
        plan.structure_plane_start,
        np.eye(4)[None],
        histogram_bin_width(grid, OPTIONS.dose_bins),
        OPTIONS.dose_bins,
        OPTIONS.chunks,
    )
    _time_kernel(
        benchmark,
        backend,
        "kernel: sampling + DVH accumulation",
        backend.kernels.cell_histograms,
        args,
        cells=plan.n_cells,
    )


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_kernel_trilinear(benchmark, backend_name):
    grid = _grid()
    backend = select_backend(backend_name)
    points = np.random.default_rng(1).uniform(-80, 80, (1_000_000, 3))
    args = (_resident(backend, grid), np.array(grid.origin_mm), np.array(grid.spacing_mm), points)
    _time_kernel(
        benchmark,
        backend,
        "kernel: trilinear interpolation (1M points)",
        backend.kernels.trilinear,
        args,
        points=len(points),
    )


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_kernel_resample(benchmark, backend_name):
    grid = _grid(128, 1.25)
    backend = select_backend(backend_name)
    matrix = rigid_matrix(15.0, translation_mm=(3.0, -2.0, 1.0))
    args = (
        _resident(backend, grid),
        np.array(grid.origin_mm),
        np.array(grid.spacing_mm),
        grid.origin_mm,
        grid.spacing_mm,
        grid.dose_gy.shape,
        matrix,
    )
    _time_kernel(
        benchmark,
        backend,
        "kernel: resample a 128^3 grid through a rotation",
        backend.kernels.resample,
        args,
        numpy_rounds=3,
        voxels=int(grid.dose_gy.size),
    )


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_kernel_course_sum(benchmark, backend_name):
    """The EQD2 sum (alpha/beta 3 Gy) of two courses on a 128^3 grid: the NumPy reference is the array
    arithmetic a plan sum used before the kernel existed."""
    grid = _grid(128, 1.25)
    backend = select_backend(backend_name)
    doses = [backend.kernels.asarray(grid.dose_gy), backend.kernels.asarray(0.4 * grid.dose_gy)]
    _time_kernel(
        benchmark,
        backend,
        "kernel: EQD2 sum of two courses on a 128^3 grid",
        backend.kernels.course_sum,
        (doses, [0.9, 1.0], [35, 10], 3.0),
        voxels=int(grid.dose_gy.size),
    )


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_kernel_histogram(benchmark, backend_name):
    backend = select_backend(backend_name)
    rng = np.random.default_rng(2)
    n = 1_000_000
    args = (rng.uniform(0, 60, n), rng.uniform(0.1, 2.0, n), rng.uniform(0, 0.5, n), 60.0 / 16384, 16384)
    _time_kernel(
        benchmark,
        backend,
        "kernel: histogram accumulation (1M samples)",
        backend.kernels.accumulate_histogram,
        args,
        samples=n,
    )


# --- scaling ------------------------------------------------------------------------------------------------
def _dvhs(benchmark, grid, structures, scale: str, size: float, unit: str):
    backend = select_backend("numba")
    compute_dvhs(grid, structures, backend=backend)
    plan = plan_sampling(structures, grid, OPTIONS)
    benchmark.group = f"scaling: {scale}"
    benchmark.extra_info.update(scale=scale, size=size, unit=unit, cells=plan.n_cells, device=backend.device)
    benchmark.pedantic(compute_dvhs, args=(grid, structures), kwargs={"backend": backend}, rounds=7, iterations=1)


@pytest.mark.parametrize("n", [32, 64, 128, 256])
def test_scaling_dose_grid(benchmark, n):
    """One 30 mm sphere on dose grids of n^3 voxels spanning 160 mm: the cost follows the structure, not the grid."""
    grid = _grid(n, 160.0 / (n - 1))
    structures = [contour_shape(Sphere((1.0, -2.0, 0.5), 30.0), "sphere", 1, 2.5)]
    _dvhs(benchmark, grid, structures, "dose grid size", float(n**3), "voxels")


@pytest.mark.parametrize("count", [1, 4, 16, 64])
def test_scaling_structures(benchmark, count):
    grid = _grid()
    rng = np.random.default_rng(3)
    structures = [
        contour_shape(Sphere(tuple(rng.uniform(-30, 30, 3)), 12.0), f"s{i}", i + 1, 2.5) for i in range(count)
    ]
    _dvhs(benchmark, grid, structures, "number of structures", float(count), "structures")


@pytest.mark.parametrize("radius", [3.0, 10.0, 30.0, 70.0])
def test_scaling_structure_size(benchmark, radius):
    grid = _grid(72)
    structures = [contour_shape(Sphere((1.0, -2.0, 0.5), radius), "sphere", 1, 2.5)]
    _dvhs(benchmark, grid, structures, "structure size", 4 / 3 * np.pi * radius**3 / 1000, "cc")
