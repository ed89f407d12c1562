"""Every backend keeps the kernel protocol: the same names, the same signatures, the same meaning."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from isodose.kernels import cupy_gpu, numba_cpu, numpy_ref
from isodose.kernels.protocol import CAPABILITIES, KERNELS, Kernels

MEMBERS = CAPABILITIES + KERNELS
CONSTANTS = ("NAME", "BYTES_PER_CELL", "PREFERS_MERGED_REQUESTS", "COPIES_GRIDS")


def _protocol_signature(name: str) -> inspect.Signature:
    """The member's signature as a backend's function shows it (without ``self``)."""
    signature = inspect.signature(getattr(Kernels, name))
    parameters = list(signature.parameters.values())[1:]
    return signature.replace(parameters=parameters)


def _shape(signature: inspect.Signature) -> list[tuple[str, object, object]]:
    """Names, kinds and defaults of the parameters: what a caller relies on."""
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


@pytest.fixture(params=["numpy_ref", "numba_cpu", "cupy_gpu", "emulated GpuKernels"])
def backend_kernels(request):
    if request.param == "emulated GpuKernels":
        return request.getfixturevalue("emulated_gpu")
    return {"numpy_ref": numpy_ref, "numba_cpu": numba_cpu, "cupy_gpu": cupy_gpu}[request.param]


def test_the_protocol_lists_every_member_it_declares():
    declared = {name for name in vars(Kernels) if not name.startswith("_")} | set(Kernels.__annotations__)
    assert declared == set(MEMBERS)


def test_every_backend_has_every_member_with_the_protocol_signature(backend_kernels):
    for name in MEMBERS:
        assert hasattr(backend_kernels, name), f"{backend_kernels!r} lacks {name}"
        if name in CONSTANTS:
            continue
        member = getattr(backend_kernels, name)
        assert callable(member), name
        assert _shape(inspect.signature(member)) == _shape(_protocol_signature(name)), name
    assert isinstance(backend_kernels, Kernels)


def test_the_constants_have_their_types(backend_kernels):
    assert isinstance(backend_kernels.NAME, str) and backend_kernels.NAME
    assert isinstance(backend_kernels.BYTES_PER_CELL, int) and backend_kernels.BYTES_PER_CELL > 0
    assert isinstance(backend_kernels.PREFERS_MERGED_REQUESTS, bool)
    assert isinstance(backend_kernels.COPIES_GRIDS, bool)


def test_a_point_with_a_nan_coordinate_is_outside_the_grid_on_every_backend(backend_kernels):
    """NaN compares false with everything: a kernel that tests ``f < low or f > high`` takes it as inside (and
    then indexes the grid with it). A recurrence of no volume has a NaN centroid."""
    if backend_kernels is cupy_gpu:
        pytest.skip("the module's functions need a GPU; its emulated instance is checked")
    dose = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    points = np.array([[np.nan, 1.0, 1.0], [1.0, np.nan, 1.0], [1.0, 1.0, np.nan], [1.0, 1.0, 1.0]])
    values = np.asarray(backend_kernels.trilinear(dose, np.zeros(3), np.ones(3), points))
    assert np.isnan(values[:3]).all() and values[3] == pytest.approx(float(dose[1, 1, 1]))
    table = backend_kernels.grid_table([(dose, np.zeros(3), np.ones(3))])
    many = np.asarray(backend_kernels.trilinear_many(table, points, np.zeros(4, np.int64)))
    assert np.array_equal(many, values, equal_nan=True)


def test_batched_calls_on_the_cpu_give_each_grid_its_own_numbers():
    """The CPU backends' batched calls loop over grids: each grid's points and structures get the numbers of a
    call on that grid alone, whatever the order they come in."""
    rng = np.random.default_rng(3)
    grids = [
        (rng.uniform(0, 60, (5, 6, 7)).astype(np.float32), np.array([0.0, 1.0, -2.0]), np.array([2.0, 2.5, 3.0])),
        (rng.uniform(0, 60, (6, 5, 4)), np.array([-3.0, 0.0, 1.0]), np.array([1.5, 2.0, 2.5])),
    ]
    points = rng.uniform(-2, 9, (40, 3))
    point_grid = rng.integers(0, 2, 40)
    for kernels in (numpy_ref, numba_cpu):
        got = kernels.trilinear_many(kernels.grid_table(grids), points, point_grid)
        for g, grid in enumerate(grids):
            mine = point_grid == g
            np.testing.assert_array_equal(got[mine], kernels.trilinear(*grid, points[mine]))


def _single_plane_grid():
    """A dose grid one voxel thick along z (2 mm), linear in x and y: the plane z = 10 mm stands for 9 to 11 mm."""
    y, x = np.meshgrid(np.arange(6.0), np.arange(7.0), indexing="ij")
    dose = (30.0 + 2.0 * x + 0.5 * y)[None].astype(np.float32)
    return dose, np.array([0.0, 0.0, 10.0]), np.array([1.0, 1.0, 2.0])


@pytest.mark.parametrize("which", ["numpy_ref", "numba_cpu", "emulated GpuKernels"])
def test_a_grid_one_voxel_thick_is_its_voxels_slab_on_every_backend(which, request):
    """Along an axis of one voxel the index of the upper neighbour would be 1 (past the grid) and the cell's index
    n - 2 = -1 (before it): the CUDA kernel would read another allocation's memory. Here the grid sits after a grid
    of NaN in one table, so that a read before it shows. The dose is constant across the voxel's slab and the grid
    ends there."""
    kernels = (
        request.getfixturevalue("emulated_gpu")
        if which.startswith("emulated")
        else {"numpy_ref": numpy_ref, "numba_cpu": numba_cpu}[which]
    )
    dose, origin, spacing = _single_plane_grid()
    guard = np.full((2, 3, 4), np.nan, np.float32)
    table = kernels.grid_table([(guard, np.zeros(3), np.ones(3)), (dose, origin, spacing)])
    points = np.array(
        [[2.5, 3.0, 10.0], [2.5, 3.0, 9.1], [2.5, 3.0, 10.9], [2.5, 3.0, 11.2], [2.5, 3.0, 8.8], [6.0, 5.0, 10.5]]
    )
    values = np.asarray(kernels.trilinear_many(table, points, np.ones(len(points), np.int64)))
    expected = [30.0 + 5.0 + 1.5] * 3 + [np.nan, np.nan, 30.0 + 12.0 + 2.5]
    np.testing.assert_allclose(values, expected, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(
        np.asarray(kernels.trilinear(dose, origin, spacing, points)), expected, rtol=1e-12, equal_nan=True
    )


def test_the_dvh_of_a_structure_in_a_grid_one_voxel_thick_is_that_of_its_slab(emulated_gpu):
    """A box 2 x 2 mm in-plane, from z = 8 to 12 mm, in the grid of one plane at z = 10 mm (2 mm thick): half of it
    lies in the grid's slab, where the dose is 30 + 2x + 0.5y; the same on every backend."""
    from isodose.dispatch import Backend, select_backend
    from isodose.dvh import compute_dvhs
    from isodose.model import Contour, DoseGrid, Structure

    dose, origin, spacing = _single_plane_grid()
    grid = DoseGrid(dose, tuple(origin), tuple(spacing))
    square = np.array([[1.0, 1.0], [3.0, 1.0], [3.0, 3.0], [1.0, 3.0]])
    box = Structure("box", 1, tuple(Contour(square, z) for z in (8.5, 9.5, 10.5, 11.5)))
    backends = [select_backend("numpy"), select_backend("numba"), Backend("cupy", "emulated", emulated_gpu)]
    for backend in backends:
        [dvh] = compute_dvhs(grid, [box], backend=backend)
        assert dvh.volume_cc == pytest.approx(0.016, rel=1e-6), backend.name
        assert dvh.volume_outside_dose_cc == pytest.approx(0.008, rel=1e-6), backend.name
        # The GPU's fixed-point sums of dose x volume round each cell's to 2^-24 mm^3 Gy.
        assert dvh.dmean_gy == pytest.approx(30.0 + 4.0 + 1.0, abs=1e-6 if backend.name != "cupy" else 1e-4)
        assert (dvh.dmin_gy, dvh.dmax_gy) == pytest.approx((32.5, 37.5), abs=1e-6), backend.name


def test_dmax_is_not_taken_from_a_negative_zero_dose(emulated_gpu):
    """The GPU keeps Dmax with an integer atomicMax on the bits of doubles; the bits of -0.0 beat those of every
    positive dose. A grid of -0.0 beside positive doses gives the Dmax of the CPU."""
    from isodose.dispatch import Backend
    from isodose.dvh import compute_dvhs
    from isodose.model import DoseGrid
    from isodose.phantoms import Sphere, contour_shape

    dose = np.full((12, 12, 12), -0.0, np.float32)
    dose[:, :, 6:] = np.linspace(1.0, 20.0, 6, dtype=np.float32)
    grid = DoseGrid(dose, (-11.0, -11.0, -11.0), (2.0, 2.0, 2.0))
    sphere = contour_shape(Sphere((0.0, 0.0, 0.0), 7.0), "S", 1, 2.0)
    [cpu] = compute_dvhs(grid, [sphere], backend="numba")
    [gpu] = compute_dvhs(grid, [sphere], backend=Backend("cupy", "emulated", emulated_gpu))
    assert gpu.dmax_gy == pytest.approx(cpu.dmax_gy, abs=1e-9) and gpu.dmax_gy > 1.0
    assert gpu.dmin_gy == 0.0 and str(gpu.dmin_gy) == "0.0"
