"""A cohort run on N generated cases (N = 100, 1000), from DICOM on disk to the HDF5 store: cases per
second, and the share of each case's time spent reading DICOM against computing; the same on a local Dask
cluster; and the host side of the GPU arrangement. Run with ``make bench``."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from isodose.cohort.runner import RunSettings, run_cohort
from isodose.cohort.store import ResultStore
from isodose.cohort.synthetic import generate_cohort

SETTINGS = RunSettings(target_metrics=("GTV:volume", "CTV60:D98", "CTV54:D95"))
WORKERS = os.cpu_count() or 1


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-cohorts")
    return {n: generate_cohort(root / f"n{n}", n, seed=11, workers=WORKERS) for n in (100, 1000)}


@pytest.mark.parametrize("n_cases", [100, 1000])
def test_cohort_run(benchmark, cohorts, tmp_path, n_cases):
    counter = itertools.count()

    def fresh_store():
        return (cohorts[n_cases], tmp_path / f"run{next(counter)}.h5"), {}

    def run(manifest, out):
        return run_cohort(manifest, out, settings=SETTINGS, workers=WORKERS, progress=False), out

    benchmark.group = "cohort run from DICOM"
    summary, out = benchmark.pedantic(run, setup=fresh_store, rounds=3 if n_cases == 100 else 1, iterations=1)
    assert summary.failed == 0 and summary.processed == n_cases
    entries = ResultStore.open(out, create=False).cases()
    read = np.sum([e["timings"]["read_s"] for e in entries])
    compute = np.sum([e["timings"]["compute_s"] for e in entries])
    total = np.sum([e["timings"]["total_s"] for e in entries])
    benchmark.extra_info.update(
        scale="number of cases",
        size=float(n_cases),
        unit="cases",
        workers=WORKERS,
        cases_per_second=round(n_cases / benchmark.stats.stats.median, 2),
        read_share=round(float(read / total), 3),
        compute_share=round(float(compute / total), 3),
        median_case_read_ms=round(1000 * float(np.median([e["timings"]["read_s"] for e in entries])), 1),
        median_case_compute_ms=round(1000 * float(np.median([e["timings"]["compute_s"] for e in entries])), 1),
    )


@pytest.mark.parametrize("dask_workers", [1, 2])
def test_cohort_run_on_local_dask(benchmark, cohorts, tmp_path, dask_workers):
    """The 100-case cohort on a local Dask cluster of 1 and 2 worker processes (the cluster is started before
    timing and its workers have loaded the kernels: a warm-up run comes first)."""
    pytest.importorskip("distributed")
    from isodose.cohort.distributed import dask_client

    counter = itertools.count()

    def fresh_store():
        return (cohorts[100], tmp_path / f"dask{next(counter)}.h5"), {}

    with dask_client(local_workers=dask_workers) as client:
        def run(manifest, out):
            return run_cohort(manifest, out, settings=SETTINGS, client=client, progress=False)

        run(*fresh_store()[0])  # warm-up: workers import isodose and load the compiled kernels
        benchmark.group = "cohort run on a local Dask cluster"
        summary = benchmark.pedantic(run, setup=fresh_store, rounds=3, iterations=1)
    assert summary.failed == 0 and summary.processed == 100
    benchmark.extra_info.update(
        scale="Dask workers", size=float(dask_workers), unit="workers", cases=100,
        cases_per_second=round(100 / benchmark.stats.stats.median, 2),
    )


@pytest.mark.parametrize(("batch", "planned_by_readers"), [(1, False), (32, False), (32, True)])
def test_host_work_of_the_gpu_arrangement(benchmark, cohorts, tmp_path_factory, batch, planned_by_readers):
    """What the process that drives a GPU does per case besides the kernels: planning the sampling (unless the
    reading workers did, ``planned_by_readers``, as in a cohort run), merging plans, moving arrays, building
    DVHs and classifying, in batches of ``batch`` cases. The kernels run emulated on the CPU (tests/cuda) and
    their time is left out, and so is the time of the emulation's stand-ins for copies to the device and
    concatenations there (``copies_ms_per_case``: CPU copies here, DMA and device work on a GPU).
    ``host_ms_per_case`` bounds the rate at which that process can classify cases on a GPU, whatever the GPU.
    (The median of the row itself is mostly the emulated kernels: not a GPU figure.)"""
    import time

    from isodose.cohort.cases import read_manifest
    from isodose.cohort.runner import classify_batch, read_and_prepare, read_case
    from isodose.dispatch import Backend
    from isodose.kernels.cupy_gpu import GpuKernels
    from tests.cuda.device import DeviceArray, DeviceModule
    from tests.cuda.emulated import build, emulated_kernels

    library = build(tmp_path_factory.mktemp("cuda"))
    if library is None:
        pytest.skip("no C++ compiler to build the emulated kernels")
    emulated = emulated_kernels(library)
    kernel_s, copy_s = [0.0], [0.0]

    def timed(seconds, work, *args, **kwargs):
        started = time.perf_counter()
        result = work(*args, **kwargs)
        seconds[0] += time.perf_counter() - started
        return result

    class Copies(DeviceModule):
        @staticmethod
        def asarray(array, dtype=None):
            if isinstance(array, DeviceArray):
                return DeviceModule.asarray(array, dtype)
            return timed(copy_s, DeviceModule.asarray, array, dtype)

        @staticmethod
        def concatenate(arrays, axis=0):
            return timed(copy_s, DeviceModule.concatenate, arrays, axis)

    def launch(name, n_threads, args):
        timed(kernel_s, emulated.launch, name, n_threads, args)

    gpu = GpuKernels(Copies(), launch, emulated.device)
    backend = Backend("cupy (emulated)", gpu.device, gpu)
    cases = read_manifest(cohorts[100])[:40]
    host_ms: list[float] = []
    copies_ms: list[float] = []

    def fresh_inputs():  # read anew each round: no structure's planes are cached from an earlier one
        kernel_s[0] = copy_s[0] = 0.0
        if planned_by_readers:
            return ([read_and_prepare(case, SETTINGS) for case in cases],), {}
        return ([read_case(case) for case in cases],), {}

    def run(inputs):
        started = time.perf_counter()
        entries = [e for first in range(0, len(inputs), batch)
                   for e in classify_batch(inputs[first : first + batch], SETTINGS, backend)]
        host_ms.append(1000.0 * (time.perf_counter() - started - kernel_s[0] - copy_s[0]) / len(inputs))
        copies_ms.append(1000.0 * copy_s[0] / len(inputs))
        return entries

    run(*fresh_inputs()[0])  # compile and warm up
    host_ms.clear()
    copies_ms.clear()
    benchmark.group = "GPU arrangement on emulated kernels: host work per case"
    entries = benchmark.pedantic(run, setup=fresh_inputs, rounds=3, iterations=1)
    assert all(e["status"] == "ok" for e in entries)
    benchmark.extra_info.update(batch=batch, planned_by_readers=planned_by_readers, cases=len(cases),
                                host_ms_per_case=round(float(np.median(host_ms)), 2),
                                copies_ms_per_case=round(float(np.median(copies_ms)), 2),
                                host_bound_cases_per_second=round(1000.0 / float(np.median(host_ms)), 1))
