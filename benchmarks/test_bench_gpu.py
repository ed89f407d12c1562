"""GPU benchmarks (marked gpu: they run only where a CUDA device is usable).

- Kernel: sampling plus DVH accumulation over a large batch of cells, as GB/s of cell data read, beside the
  device-to-device copy rate measured in the same run; each variant of cell_histograms_kernel side by side.
- Cohort: recurrence classifications per second from data already in memory, on cupy and on numba (all CPU
  cores) in the same run; and end to end from DICOM with reading workers feeding the GPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from isodose.cohort.cases import read_manifest
from isodose.cohort.runner import run_cohort
from isodose.cohort.settings import RunSettings
from isodose.cohort.synthetic import generate_cohort
from isodose.cohort.work import classify_batch, prepare_inputs, read_case
from isodose.dispatch import select_backend
from isodose.phantoms import head_neck_case
from isodose.sampling import histogram_bin_width
from isodose.voxelize import SamplingOptions, plan_sampling

pytestmark = pytest.mark.gpu
SETTINGS = RunSettings(target_metrics=("GTV:volume", "CTV60:D98", "CTV54:D95"))


@pytest.mark.parametrize("variant", ["default", "warp", "bounds", "block128", "shared", "warp,block128", "warp,shared"])
def test_kernel_bandwidth(benchmark, variant):
    """Each variant of cell_histograms_kernel (kernels/cupy_gpu.py VARIANTS) side by side, with its results
    checked against the default's, bit for bit."""
    import cupy

    from isodose.kernels import cupy_gpu

    gpu = select_backend("cupy").kernels if variant == "default" else cupy_gpu.build(cupy_gpu.variant_names(variant))
    grid, structures = head_neck_case()
    options = SamplingOptions(supersampling=8)  # a large batch: millions of cells
    plan = plan_sampling(structures.structures, grid, options)
    cells = gpu.polygon_coverage(
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
    transforms = np.broadcast_to(np.eye(4), (plan.n_structures, 4, 4))
    bin_width = histogram_bin_width(grid, options.dose_bins)
    dose = gpu.asarray(grid.dose_gy, np.float32)  # on the device, as the engine puts it before its launches
    args = (
        dose,
        np.array(grid.origin_mm),
        np.array(grid.spacing_mm),
        cells,
        plan.plane_cell_start,
        plan.plane_z_lo_mm,
        plan.plane_z_hi_mm,
        plan.structure_plane_start,
        transforms,
        bin_width,
        options.dose_bins,
        16,
    )

    def run():
        result = gpu.cell_histograms(*args)
        cupy.cuda.Device().synchronize()
        return result

    result = run()
    if variant != "default":
        expected = select_backend("cupy").kernels.cell_histograms(*args)
        for got, want in zip(result, expected):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    benchmark.group = "GPU kernel"
    benchmark.pedantic(run, rounds=10, iterations=1)
    source = cupy.ones(2**28, dtype=np.float32)  # 1 GiB
    target = cupy.empty_like(source)
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(10):
        cupy.copyto(target, source)
    stop.record()
    stop.synchronize()
    copy_gbs = 10 * 2 * source.nbytes / (cupy.cuda.get_elapsed_time(start, stop) / 1000) / 1e9
    cell_gbs = cells.nbytes / benchmark.stats.stats.median / 1e9
    resources = gpu.kernel_resources("cell_histograms_kernel")  # its registers bound the threads an SM holds
    benchmark.extra_info.update(
        device=select_backend("cupy").device,
        variant=variant,
        cells=int(cells.shape[0]),
        cell_data_gbs=round(cell_gbs, 1),
        device_copy_gbs=round(copy_gbs, 1),
        fraction_of_copy_rate=round(cell_gbs / copy_gbs, 3),
        **{f"kernel_{key}": value for key, value in resources.items()},
    )


@pytest.fixture(scope="module")
def in_memory_cases(tmp_path_factory):
    manifest = generate_cohort(tmp_path_factory.mktemp("gpu-cohort") / "data", 400, seed=5, workers=os.cpu_count() or 1)
    return manifest, [read_case(case) for case in read_manifest(manifest)]


@pytest.fixture(scope="module")
def prepared_cases(in_memory_cases):
    return [prepare_inputs(inputs, SETTINGS) for inputs in in_memory_cases[1]]


@pytest.mark.parametrize(
    ("backend", "batch", "prepared"),
    [("cupy", 1, False), ("cupy", 32, False), ("cupy", 128, False), ("cupy", 32, True), ("numba", 1, False)],
)
def test_classifications_from_memory(benchmark, request, backend, batch, prepared):
    """Cases already read, classified in batches of ``batch`` (on the GPU, one merged plan per batch); with
    ``prepared``, their sampling already planned, as the reading workers of a cohort run do (the rate of the
    process that drives the GPU, once planning is off it)."""
    inputs = request.getfixturevalue("prepared_cases" if prepared else "in_memory_cases")
    inputs = inputs if prepared else inputs[1]
    chosen = select_backend(backend)
    classify_batch(inputs[:batch], SETTINGS, chosen)

    def run():
        return [
            e
            for first in range(0, len(inputs), batch)
            for e in classify_batch(inputs[first : first + batch], SETTINGS, chosen)
        ]

    benchmark.group = "classifications from memory"
    entries = benchmark.pedantic(run, rounds=3, iterations=1)
    assert all(e["status"] == "ok" for e in entries)
    benchmark.extra_info.update(
        device=chosen.device,
        batch=batch,
        prepared=prepared,
        per_second=round(len(inputs) / benchmark.stats.stats.median, 1),
    )


@pytest.mark.parametrize("backend", ["cupy", "numba"])
def test_end_to_end_from_dicom(benchmark, in_memory_cases, tmp_path, backend):
    manifest, inputs = in_memory_cases
    counter = iter(range(100))

    def run():
        return run_cohort(
            manifest,
            tmp_path / f"{backend}{next(counter)}.h5",
            settings=SETTINGS,
            workers=os.cpu_count(),
            backend=backend,
        )

    benchmark.group = "cohort end to end"
    summary = benchmark.pedantic(run, rounds=2, iterations=1)
    assert summary.failed == 0
    benchmark.extra_info.update(per_second=round(len(inputs) / benchmark.stats.stats.median, 1))


@pytest.mark.parametrize("memory", ["pageable", "pinned"])
def test_copy_of_a_head_and_neck_grid_to_the_device(benchmark, memory):
    """The 19.2 MB float32 grid of the head-and-neck case copied to the device from ordinary (pageable) host memory
    and from pinned memory: what staging copies through pinned memory would gain."""
    import cupy

    grid, _ = head_neck_case()
    host = np.ascontiguousarray(grid.dose_gy, dtype=np.float32)
    if memory == "pinned":
        buffer = cupy.cuda.alloc_pinned_memory(host.nbytes)
        staged = np.frombuffer(buffer, dtype=host.dtype, count=host.size).reshape(host.shape)
        staged[...] = host
        host = staged
    device = cupy.empty(host.shape, dtype=host.dtype)

    def run():
        device.set(host)
        cupy.cuda.Device().synchronize()

    run()
    benchmark.group = "a head-and-neck grid to the device"
    benchmark.pedantic(run, rounds=20, iterations=1)
    benchmark.extra_info.update(
        memory=memory,
        megabytes=round(host.nbytes / 1e6, 1),
        gbs=round(host.nbytes / benchmark.stats.stats.median / 1e9, 1),
    )
