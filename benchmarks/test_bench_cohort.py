"""A cohort run on N generated cases (N = 100, 1000), from DICOM on disk to the HDF5 store: cases per
second, and the share of each case's time spent reading DICOM against computing; the same on a local Dask
cluster; and the host side of the GPU arrangement, in one process and in a pipelined run. Run with ``make bench``."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from isodose.cohort.runner import run_cohort
from isodose.cohort.settings import RunSettings
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
        return run_cohort(manifest, out, settings=SETTINGS, workers=WORKERS), out

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
            return run_cohort(manifest, out, settings=SETTINGS, client=client)

        run(*fresh_store()[0])  # warm-up: workers import isodose and load the compiled kernels
        benchmark.group = "cohort run on a local Dask cluster"
        summary = benchmark.pedantic(run, setup=fresh_store, rounds=3, iterations=1)
    assert summary.failed == 0 and summary.processed == 100
    benchmark.extra_info.update(
        scale="Dask workers",
        size=float(dask_workers),
        unit="workers",
        cases=100,
        cases_per_second=round(100 / benchmark.stats.stats.median, 2),
    )


@pytest.mark.parametrize("through", ["pipe", "shared memory"])
def test_receiving_head_and_neck_sized_cases_from_reading_workers(benchmark, through):
    """The time the process that drives a GPU spends receiving cases from 2 reading workers (a process pool, as
    in a cohort run), each case with a head-and-neck-sized dose grid (200 x 200 x 120 float32, 19 MB), and
    reading each grid once (as its copy to the device would): through the pool's pipe (pickled whole), or with
    the grid through shared memory (:mod:`isodose.cohort.handover`). ``receiver_cpu_ms_per_case`` is that
    process's CPU time (all its threads), which bounds its rate whatever the GPU."""
    import functools
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor

    from isodose.cohort import handover
    from tests.test_handover import head_and_neck_sized_case

    if through == "shared memory" and not handover.available():
        pytest.skip("no POSIX shared memory here")
    n_cases = 12
    task = functools.partial(
        head_and_neck_sized_case, through_shared_memory=through == "shared memory", receiver_pid=os.getpid()
    )
    cpu_ms: list[float] = []
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:

        def run():
            started = time.process_time()
            peaks = [
                float(handover.receive(f.result())["dose"].dose_gy.max())
                for f in [pool.submit(task, seed) for seed in range(n_cases)]
            ]
            cpu_ms.append(1000.0 * (time.process_time() - started) / n_cases)
            return peaks

        run()  # the workers start and import
        cpu_ms.clear()
        benchmark.group = "receiving head-and-neck-sized cases from reading workers"
        peaks = benchmark.pedantic(run, rounds=3, iterations=1)
    assert len(peaks) == n_cases and all(p > 60 for p in peaks)
    benchmark.extra_info.update(
        through=through, cases=n_cases, dose_mb=19.2, receiver_cpu_ms_per_case=round(float(np.median(cpu_ms)), 2)
    )


def _emulated_gpu(tmp_path_factory):
    """The GPU backend over the CPU emulation of its kernels (tests/cuda), the emulated device's work timed by
    ``tests.cuda.device.CLOCK`` so that the host-work benchmarks can leave it out; skips without a C++ compiler."""
    from isodose.dispatch import Backend
    from isodose.kernels.cupy_gpu import GpuKernels
    from tests.cuda.device import CLOCK, DeviceModule
    from tests.cuda.emulated import build, emulated_kernels

    library = build(tmp_path_factory.mktemp("cuda"))
    if library is None:
        pytest.skip("no C++ compiler to build the emulated kernels")
    emulated = emulated_kernels(library)
    gpu = GpuKernels(DeviceModule(), CLOCK(emulated.launch), emulated.device)
    return Backend("cupy (emulated)", gpu.device, gpu)


@pytest.mark.parametrize(("batch", "planned_by_readers"), [(1, False), (32, False), (32, True)])
def test_host_work_of_the_gpu_arrangement(benchmark, cohorts, tmp_path_factory, batch, planned_by_readers):
    """What the process that drives a GPU does per case besides the device's work, in batches of ``batch``
    cases: planning the sampling (unless the reading workers did, ``planned_by_readers``, as in a cohort run,
    and then receiving what they send, :func:`~isodose.cohort.handover.receive`, each dose grid cut to the part
    its case samples, and letting go of it once the batch is stored: the workers hold the blocks they sent, so
    that they, not this process, free their pages; the rows of cases read here free nothing while timed: their
    inputs outlive the rounds), merging plans, launching, building DVHs, classifying, and storing the results (one
    journal sync per batch), with the collector sparing the start-up heap as a cohort-sized run does
    (:class:`~isodose.cohort.execution.SparedHeap`). The device's work is emulated on the CPU (tests/cuda:
    kernels, copies, array operations, freeing arrays) and its time is left out (``device_ms_per_case``, not a GPU
    figure). ``host_ms_per_case`` bounds the rate at which that process can
    classify cases on a GPU, whatever the GPU; ``classify_ms_per_case`` is the part of it that classifying
    cases already in memory takes. (The median of the row itself is mostly the emulated device: not a GPU
    figure.)"""
    import time

    from isodose.cohort import handover
    from isodose.cohort.cases import read_manifest
    from isodose.cohort.execution import SparedHeap
    from isodose.cohort.work import classify_batch, read_and_send, read_case
    from isodose.compiled import prefer_compiled
    from tests.cuda.device import CLOCK

    backend = _emulated_gpu(tmp_path_factory)
    prefer_compiled()  # as the GPU arrangement's process does (ReceivedBatches.stage)
    cases = read_manifest(cohorts[100])[:40]
    stores = tmp_path_factory.mktemp("host-work-stores")
    counter = itertools.count()
    parts: dict[str, list[float]] = {"host": [], "handover": [], "classify": [], "store": [], "device": []}

    def fresh_inputs():  # read anew each round: no structure's planes are cached from an earlier one
        if planned_by_readers:  # what the reading workers send, as run_cohort has them for a GPU: grids cropped,
            # and the blocks held open by the senders (here this process, between rounds, for the run's 2 workers)
            hold = WORKERS * handover.blocks_to_hold(batch, WORKERS)
            return ([read_and_send(case, SETTINGS, os.getpid(), crop=True, hold=hold) for case in cases],), {}
        return ([read_case(case) for case in cases],), {}

    def run(inputs):
        seconds = dict.fromkeys(("handover", "classify", "store"), 0.0)

        def timed(part, work, *args):
            started = time.perf_counter()
            result = work(*args)
            seconds[part] += time.perf_counter() - started
            return result

        CLOCK.seconds = 0.0
        entries = []
        with ResultStore.open(stores / f"run{next(counter)}.h5", SETTINGS.as_dict()) as store:
            for first in range(0, len(inputs), batch):
                part = inputs[first : first + batch]
                if planned_by_readers:
                    part = timed("handover", lambda sent: [handover.receive(s) for s in sent], part)
                done = timed("classify", classify_batch, part, SETTINGS, backend)
                timed("store", store.append_many, done)
                entries += done
                if planned_by_readers:  # the batch's arrays let go of: their shared memory unmapped
                    timed("handover", part.clear)
        device = CLOCK.seconds  # all of it inside classifying
        seconds["classify"] -= device
        for name, value in [*seconds.items(), ("device", device), ("host", sum(seconds.values()))]:
            parts[name].append(1000.0 * value / len(inputs))
        return entries

    run(*fresh_inputs()[0])  # compile and warm up
    for values in parts.values():
        values.clear()
    # As a run of a cohort's size does once its first batch is stored: the collector spared the start-up heap.
    spared = SparedHeap(len(cases), from_cases=0)
    spared.after_batch()
    benchmark.group = "GPU arrangement on emulated kernels: host work per case"
    try:
        entries = benchmark.pedantic(run, setup=fresh_inputs, rounds=3, iterations=1)
    finally:
        spared.release()
        handover.sweep(os.getpid())
        handover.release_held()
    assert all(e["status"] == "ok" for e in entries)
    medians = {name: round(float(np.median(values)), 2) for name, values in parts.items()}
    benchmark.extra_info.update(
        batch=batch,
        planned_by_readers=planned_by_readers,
        cases=len(cases),
        **{f"{name}_ms_per_case": value for name, value in medians.items()},
        host_bound_cases_per_second=round(1000.0 / medians["host"], 1),
    )


def test_storing_results_at_cohort_scale(benchmark, cohorts, tmp_path_factory):
    """What recording results costs the process that writes the store, per case, over a cohort of 3,200 cases
    stored in batches of 32 (``ResultStore.append_many``: journal lines, and the consolidations of the journal into
    the HDF5 file on the run's way), then the run's last consolidation (written whole): the entries are those of 32
    cases of the 100-case cohort, repeated under other ids. The host-work rows above store 40 cases, too few for a
    consolidation, which a cohort run meets every time the journal holds a quarter of the store."""
    import time

    from isodose.cohort.work import classify_batch, read_case

    inputs = [read_case(case, SETTINGS) for case in read_manifest_rows(cohorts[100], 32)]
    entries = classify_batch(inputs, SETTINGS, "numpy")
    assert all(e["status"] == "ok" for e in entries)
    stores = tmp_path_factory.mktemp("stores-at-scale")
    counter = itertools.count()
    batches = 100
    parts: dict[str, list[float]] = {"journal_and_consolidations": [], "last_consolidation": []}

    def run():
        with ResultStore.open(stores / f"run{next(counter)}.h5", SETTINGS.as_dict()) as store:
            started = time.perf_counter()
            for b in range(batches):
                store.append_many([{**e, "case_id": f"{b:04d}-{e['case_id']}"} for e in entries])
            middle = time.perf_counter()
            store.consolidate()
            ended = time.perf_counter()
        n = batches * len(entries)
        parts["journal_and_consolidations"].append(1000.0 * (middle - started) / n)
        parts["last_consolidation"].append(1000.0 * (ended - middle) / n)

    benchmark.group = "storing results: a cohort of 3,200 cases, per case"
    benchmark.pedantic(run, rounds=3, iterations=1)
    medians = {name: round(float(np.median(values)), 3) for name, values in parts.items()}
    benchmark.extra_info.update(
        cases=batches * len(entries),
        batch=len(entries),
        **{f"{name}_ms_per_case": value for name, value in medians.items()},
        store_ms_per_case=round(sum(medians.values()), 3),
    )


def read_manifest_rows(manifest, n: int):
    from isodose.cohort.cases import read_manifest

    return read_manifest(manifest)[:n]


def test_host_work_of_a_pipelined_run(benchmark, cohorts, tmp_path_factory):
    """The GPU arrangement end to end, as ``cohort run`` does it: reading workers (one per core) read, plan and
    hand over the 100-case cohort's cases, and this process samples them on the emulated device in batches of 32,
    finishes and stores them (``run_cohort(..., pipelined=True)``). ``host_ms_per_case`` is this process's CPU time
    (all its threads: the pool's and its pipes' included) less the emulated device's time, per case: what
    the benchmark above leaves out (the pool, the pipes, the run's own start and end) is in it. The reading workers
    share the machine's cores with this process, which a machine with fewer cores than readers plus one feels."""
    import resource

    from tests.cuda.device import CLOCK

    backend = _emulated_gpu(tmp_path_factory)
    stores = tmp_path_factory.mktemp("pipelined-stores")
    counter = itertools.count()
    host_ms: list[float] = []

    def run():
        CLOCK.seconds = 0.0
        before = resource.getrusage(resource.RUSAGE_SELF)
        summary = run_cohort(
            cohorts[100],
            stores / f"run{next(counter)}.h5",
            settings=SETTINGS,
            workers=WORKERS,
            backend=backend,
            pipelined=True,
        )
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        host_ms.append(1000.0 * (cpu - CLOCK.seconds) / summary.processed)
        return summary

    run()  # the emulation built, Numba's host tests loaded
    host_ms.clear()
    benchmark.group = "GPU arrangement on emulated kernels: a pipelined run, host work per case"
    summary = benchmark.pedantic(run, rounds=2, iterations=1)
    assert summary.failed == 0 and summary.processed == 100
    benchmark.extra_info.update(
        cases=100, workers=WORKERS, batch=32, host_ms_per_case=round(float(np.median(host_ms)), 2)
    )
