"""Every backend keeps the kernel protocol: the same names, the same signatures, the same meaning."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from isodose.kernels import cupy_gpu, numba_cpu, numpy_ref
from isodose.kernels.protocol import CAPABILITIES, KERNELS, Kernels

MEMBERS = CAPABILITIES + KERNELS
CONSTANTS = ("NAME", "BYTES_PER_CELL", "PREFERS_MERGED_REQUESTS")


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
