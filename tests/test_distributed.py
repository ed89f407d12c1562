"""Cohorts on a Dask cluster of local worker processes: the same store and numbers as a local run, a worker
killed mid-run, a client stopped and started again, unreadable files, bounded submission, the CLI."""

from __future__ import annotations

import csv
import os
import signal
import sys
from collections import Counter
from functools import partial

import pytest

from isodose.cli import main
from isodose.cohort.cases import read_manifest
from isodose.cohort.runner import run_cohort
from isodose.cohort.settings import RunSettings
from isodose.cohort.store import ResultStore

distributed = pytest.importorskip("distributed")

from isodose.cohort import distributed as on_dask  # noqa: E402
from isodose.cohort.execution import entries_as_they_are  # noqa: E402

SETTINGS = RunSettings(target_metrics=("GTV:volume", "CTV60:D98", "CTV54:D95"))
N_CASES = 12
IGNORED = {"device"}  # the thread count of whoever computed it

#: Every test here runs on a Dask cluster: seconds each.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(generated_cohort):
    return generated_cohort(N_CASES, 5)


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory):
    """The records of a single-process run."""
    out = tmp_path_factory.mktemp("dask-reference") / "r.h5"
    run_cohort(cohort, out, settings=SETTINGS, workers=1)
    return _records(out)


@pytest.fixture(scope="module")
def cluster():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, env={"NUMBA_NUM_THREADS": "1"}
    )
    yield cluster
    cluster.close()


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster.scheduler_address) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


def _records(out) -> dict[str, dict]:
    return {
        e["case_id"]: {k: v for k, v in e["record"].items() if k not in IGNORED}
        for e in ResultStore.open(out, create=False).cases()
    }


def test_a_dask_run_gives_the_store_of_a_local_run(cohort, reference, client, tmp_path):
    out = tmp_path / "dask.h5"
    summary = run_cohort(cohort, out, settings=SETTINGS, client=client)
    assert (summary.processed, summary.failed) == (N_CASES, 0)
    assert _records(out) == reference
    assert {r["backend"] for r in _records(out).values()} == {"numba"}  # CPU workers pick Numba
    assert out.with_suffix(".csv").exists()
    again = run_cohort(cohort, out, settings=SETTINGS, client=client)
    assert (again.processed, again.skipped) == (0, N_CASES)


def test_a_worker_killed_mid_run_loses_nothing(cohort, reference, client, tmp_path):
    out = tmp_path / "killed.h5"
    stored: Counter[str] = Counter()
    killed: dict[str, object] = {}

    def kill_a_busy_worker(entry):
        stored[entry["case_id"]] += 1
        if len(stored) >= 2 and not killed:
            busy = [address for address, keys in client.processing().items() if keys]
            if not busy:  # every task in flight finished already (a loaded machine): try at a later case
                return
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.update(address=busy[0], at=len(stored))

    summary = run_cohort(cohort, out, settings=SETTINGS, client=client, on_result=kill_a_busy_worker)
    assert killed and killed["at"] < N_CASES
    assert (summary.processed, summary.failed) == (N_CASES, 0)
    assert sorted(stored.values()) == [1] * N_CASES  # every case stored exactly once
    assert _records(out) == reference


def test_batches_of_cases_a_task_give_the_same_store_and_a_killed_worker_loses_nothing(
    cohort, reference, client, tmp_path
):
    """Tasks of four cases each, as GPU workers get them (here on CPU workers, which classify a batch case by
    case): the same records, and a worker killed mid-batch has its batch run again elsewhere, every case stored
    exactly once."""
    out = tmp_path / "batches.h5"
    stored: Counter[str] = Counter()
    killed: dict[str, object] = {}

    def kill_a_busy_worker(entry):
        stored[entry["case_id"]] += 1
        if len(stored) == 4 and not killed:
            busy = [address for address, keys in client.processing().items() if keys]
            assert busy, "no batch in flight to interrupt"
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.update(address=busy[0], at=len(stored))

    summary = run_cohort(cohort, out, settings=SETTINGS, client=client, dask_batch_size=4, on_result=kill_a_busy_worker)
    assert killed and killed["at"] < N_CASES
    assert (summary.processed, summary.failed) == (N_CASES, 0)
    assert sorted(stored.values()) == [1] * N_CASES
    assert _records(out) == reference
    # CPU workers alone: one case a task unless asked.
    assert on_dask.batch_size_for(client, None, 32) == 1


def test_a_stopped_client_resumes_without_redoing_finished_cases(cohort, reference, cluster, tmp_path):
    out = tmp_path / "stopped.h5"
    first: list[str] = []

    def stop_after_four(entry):
        first.append(entry["case_id"])
        if len(first) == 4:
            raise KeyboardInterrupt

    with distributed.Client(cluster.scheduler_address) as client, pytest.raises(KeyboardInterrupt):
        run_cohort(cohort, out, settings=SETTINGS, client=client, on_result=stop_after_four)
    assert ResultStore.open(out, create=False).finished() == set(first)
    second: list[str] = []
    with distributed.Client(cluster.scheduler_address) as client:
        summary = run_cohort(
            cohort, out, settings=SETTINGS, client=client, on_result=lambda e: second.append(e["case_id"])
        )
    assert (summary.skipped, summary.processed, summary.failed) == (4, N_CASES - 4, 0)
    assert not set(first) & set(second) and len(second) == N_CASES - 4
    assert _records(out) == reference


def test_a_file_a_worker_cannot_read_names_the_worker_and_the_path(cohort, client, tmp_path):
    rows = list(csv.DictReader(cohort.open()))[:2]
    data = cohort.parent
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            row = {
                k: (str(data / v) if v and k not in ("case_id", "prescription_gy", "recurrence_roi") else v)
                for k, v in row.items()
            }
            writer.writerow(row)
        writer.writerow(dict(row, case_id="unseen", dose=str(tmp_path / "only-on-my-laptop" / "RD.dcm")))
    out = tmp_path / "r.h5"
    summary = run_cohort(manifest, out, settings=SETTINGS, client=client)
    assert (summary.cases, summary.failed) == (3, 1)
    error = {e["case_id"]: e["error"] for e in ResultStore.open(out, create=False).cases()}["unseen"]
    assert "only-on-my-laptop/RD.dcm: no such file" in error
    assert "(on worker tcp://" in error and error.split("(on worker ")[1].rstrip(")") in client.nthreads()


def test_tasks_are_submitted_as_results_come_back(cohort, client):
    cases = read_manifest(cohort)
    outstanding, most = 0, 0

    class Counting:
        def submit(self, *args, **kwargs):
            nonlocal outstanding, most
            outstanding += 1
            most = max(most, outstanding)
            return client.submit(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(client, name)

    def back(entry):
        nonlocal outstanding
        outstanding -= 1
        assert entry["status"] == "ok"

    def stored(entries):
        for entry in entries:
            back(entry)

    task = partial(on_dask.process_case_on_worker, settings=SETTINGS)
    on_dask.DaskCluster(Counting(), max_in_flight=3).run(cases, task, entries_as_they_are, stored)
    assert outstanding == 0 and most == 3
    most = 0
    on_dask.DaskCluster(Counting()).run(cases, task, entries_as_they_are, stored)  # default: two per worker thread
    assert most == on_dask.IN_FLIGHT_PER_THREAD * 2


def test_cli_runs_on_a_local_dask_cluster(cohort, reference, tmp_path, capsys):
    out = tmp_path / "cli.h5"
    code = main(
        [
            "cohort",
            "run",
            str(cohort),
            "--out",
            str(out),
            "--local-cluster",
            "--workers",
            "2",
            "--no-progress",
            "--metric",
            "GTV:volume",
            "--metric",
            "CTV60:D98",
            "--metric",
            "CTV54:D95",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{N_CASES} processed (0 failed)" in captured.out
    assert _records(out) == reference


def test_cli_dask_errors_are_one_line(cohort, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(on_dask, "CONNECT_TIMEOUT_S", 1.0)
    code = main(["cohort", "run", str(cohort), "--out", str(tmp_path / "a.h5"), "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("isodose: error:") and err.count("\n") == 1
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err
    code = main(
        [
            "cohort",
            "run",
            str(cohort),
            "--out",
            str(tmp_path / "b.h5"),
            "--scheduler-file",
            str(tmp_path / "scheduler.json"),
        ]
    )
    assert code == 2 and "scheduler.json: no such scheduler file" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "distributed", None)
    code = main(["cohort", "run", str(cohort), "--out", str(tmp_path / "c.h5"), "--local-cluster"])
    assert code == 2 and "pip install 'isodose[distributed]'" in capsys.readouterr().err


def test_each_worker_picks_its_backend_from_its_own_environment(cohort, reference, tmp_path):
    """What pins a GPU worker (dask-cuda sets CUDA_VISIBLE_DEVICES per worker) is the worker's environment:
    here workers told ISODOSE_BACKEND=numpy compute with the NumPy reference, and every record says so."""
    from .test_gpu_kernels import assert_records_match

    cases = read_manifest(cohort)[:2]
    out = tmp_path / "numpy.h5"
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, env={"ISODOSE_BACKEND": "numpy"}
        ) as numpy_cluster,
        distributed.Client(numpy_cluster) as client,
    ):
        summary = run_cohort(cohort, out, settings=SETTINGS, client=client, cases=cases)
    assert (summary.processed, summary.failed) == (2, 0)
    records = _records(out)
    assert {r["backend"] for r in records.values()} == {"numpy"}
    assert_records_match({c.case_id: reference[c.case_id] for c in cases}, records)


@pytest.mark.gpu
def test_dask_cuda_workers_compute_on_their_own_gpus(cohort, reference, tmp_path):
    """The GPU-node pattern: dask-cuda starts one worker per GPU, each seeing its own GPU as device 0, and each
    worker's ``auto`` backend is CuPy there."""
    dask_cuda = pytest.importorskip("dask_cuda")
    from .test_gpu_kernels import assert_records_match

    out = tmp_path / "gpu.h5"
    with dask_cuda.LocalCUDACluster(threads_per_worker=1) as gpu_cluster, distributed.Client(gpu_cluster) as client:
        summary = run_cohort(cohort, out, settings=SETTINGS, client=client)
    assert (summary.processed, summary.failed) == (N_CASES, 0)
    records = _records(out)
    assert {r["backend"] for r in records.values()} == {"cupy"}
    assert_records_match(reference, records)
