"""The Dask executor: a cohort's tasks on a Dask cluster, one task per case, submitted as results come back,
written here by one writer (a peer of :class:`isodose.cohort.local.ProcessPool`, with the same shape).

The process that runs the cohort is a Dask client. It submits one task per case (at most
``IN_FLIGHT_PER_THREAD`` per worker thread at a time, so a cohort of any size never builds a large graph), and
appends each result to the store as it arrives, exactly as a local run does: the store, its journal and
resumption behave the same. When a worker dies, Dask reruns its tasks on the others (a case whose task keeps
killing workers is recorded as failed, and retried on the next run); a case's result is written once.

Workers open the case files themselves, by the paths in the manifest: every worker must see them at those paths
(a shared file system). A case a worker cannot read fails with an error naming the worker and the file.

Each worker picks its own backend (``auto``, or ``ISODOSE_BACKEND`` in its environment): CuPy on a worker pinned
to a GPU, as ``dask cuda worker`` or dask-cuda's ``LocalCUDACluster`` start them (one worker per GPU, each seeing
its own GPU as device 0), Numba elsewhere. Needs the optional extra ``isodose[distributed]``.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import DistributedError, off_the_terminal
from .cases import Case
from .entries import CaseEntry, error_entry
from .execution import Finish, OnEntries, Task
from .local import threads_per_worker

#: Tasks in flight per worker thread: enough to keep workers busy between results, few enough to stay small.
IN_FLIGHT_PER_THREAD = 2
#: Seconds between two looks at the number of worker threads (which sets how many tasks are in flight).
LIMIT_REFRESH_S = 2.0
#: Seconds to wait for a scheduler to answer.
CONNECT_TIMEOUT_S = 20.0


def _distributed():
    try:
        import distributed
    except ImportError as exc:
        raise DistributedError(
            "running on Dask needs the optional dependencies: pip install 'isodose[distributed]'"
        ) from exc
    return distributed


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    scheduler_file: str | Path | None = None,
    local_workers: int | None = None,
    *,
    timeout_s: float | None = None,
) -> Iterator[object]:
    """A ``distributed.Client``: of the scheduler at ``scheduler`` (``tcp://host:8786``), of the one described by
    ``scheduler_file``, or of a local cluster of ``local_workers`` worker processes started here (each with its
    share of this machine's cores for Numba) and stopped on leaving. Exactly one of the three must be given."""
    given = [x is not None for x in (scheduler, scheduler_file, local_workers)]
    if sum(given) != 1:
        raise DistributedError("give one of a scheduler address, a scheduler file or a number of local workers")
    distributed = _distributed()
    timeout_s = timeout_s or CONNECT_TIMEOUT_S
    cluster = None
    if local_workers is not None:
        n = max(1, int(local_workers))
        threads = str(threads_per_worker(n))
        try:
            cluster = distributed.LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env={"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads},
            )
            client = distributed.Client(cluster)
        except Exception as exc:  # workers that cannot start: their own errors vary
            if cluster is not None:
                cluster.close()
            raise DistributedError(
                f"cannot start a local Dask cluster of {n} workers ({type(exc).__name__}: {exc})"
            ) from exc
    else:
        if scheduler_file is not None:
            _check_scheduler_file(Path(scheduler_file))
        where = scheduler or scheduler_file
        try:
            if scheduler_file is not None:
                client = distributed.Client(scheduler_file=str(scheduler_file), timeout=timeout_s)
            else:
                client = distributed.Client(scheduler, timeout=timeout_s)
        except (OSError, TimeoutError, ValueError) as exc:
            raise DistributedError(f"cannot reach the Dask scheduler at {where} ({type(exc).__name__}: {exc})") from exc
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _check_scheduler_file(path: Path) -> None:
    """A scheduler file (``dask scheduler --scheduler-file``) is a JSON object with the scheduler's address."""
    import json

    if not path.is_file():
        raise DistributedError("no such scheduler file", path=path)
    try:
        described = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        what = "is empty" if path.stat().st_size == 0 else f"is not a scheduler file (not JSON: {exc})"
        raise DistributedError(what, path=path) from exc
    if not isinstance(described, dict) or not isinstance(described.get("address"), str) or not described["address"]:
        raise DistributedError("is not a scheduler file: it gives no scheduler address", path=path)


def worker_address() -> str:
    """The address of the Dask worker running the calling task, or ``"local"`` outside one."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


def on_worker(case: Case, task: Task) -> CaseEntry:
    """A Dask task: ``task(case)`` (read and compute one case) on this worker. A failure is an error entry that names
    the worker (its message already names the file), never an exception."""
    entry = task(case)
    if entry["status"] != "ok":
        entry["error"] = f"{entry['error']} (on worker {worker_address()})"
    return entry


def process_case_on_worker(case: Case, settings, backend=None) -> CaseEntry:
    """A Dask task: read and classify one case of a recurrence cohort on this worker (see :func:`on_worker`)."""
    from functools import partial

    from .work import process_case

    return on_worker(case, partial(process_case, settings=settings, backend=backend))


def process_batch_on_worker(cases: list[Case], settings, backend=None) -> list[CaseEntry]:
    """A Dask task of a GPU worker: read a batch of cases and classify them together (one merged sampling plan, one
    launch per step, as a local GPU run does); each failed case's error names the worker."""
    from .work import process_batch

    entries = process_batch(cases, settings, backend)
    for entry in entries:
        if entry["status"] != "ok":
            entry["error"] = f"{entry['error']} (on worker {worker_address()})"
    return entries


def worker_prefers_batches(backend=None) -> bool:
    """On a worker: whether its backend samples many cases in one launch (a GPU: CuPy on a dask-cuda worker)."""
    from ..dispatch import samples_cases_together

    return samples_cases_together(backend)


def batch_size_for(client, backend, batch_size: int) -> int:
    """``batch_size`` where a worker of the cluster computes on a GPU (its backend prefers merged requests), else
    1: CPU workers take one case a task, which balances their load best. A worker that cannot say counts as a CPU."""
    try:
        answers = client.run(worker_prefers_batches, backend)
    except Exception:  # a worker that cannot load isodose fails its cases with their own errors later
        return 1
    return max(1, int(batch_size)) if any(answers.values()) else 1


def _task_failure(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "KilledWorker":
        return "the case's task ended the worker processes that ran it (killed, or out of memory)"
    return f"the task failed on the cluster ({name}: {exc})"


class DaskCluster:
    """The workers of the cluster that ``client`` (a ``distributed.Client``) is connected to: one task per case,
    at most ``max_in_flight`` at a time (by default ``IN_FLIGHT_PER_THREAD`` per worker thread, as the cluster
    grows or shrinks), each case finished and handed on as it arrives. On any exception here (Ctrl-C included)
    the tasks in flight are cancelled; the entries already handed on are kept.

    With ``batch_size`` above 1 and a ``batch_task`` (``batch_task(cases) -> entries``, one per case in order),
    each task is a batch of that many cases (for GPU workers: one launch per batch); its entries are still handed
    on one case at a time. A batch whose worker dies is run again whole elsewhere, and its cases stored once, when
    it finishes."""

    def __init__(self, client, max_in_flight: int | None = None, batch_size: int = 1, batch_task=None):
        self.client = client
        self.max_in_flight = max_in_flight
        self.batch_size = max(1, int(batch_size)) if batch_task is not None else 1
        self.batch_task = batch_task

    def run(self, todo: Sequence[Case], task: Task, finish: Finish, on_entries: OnEntries) -> None:
        distributed = _distributed()
        client = self.client
        run_id = uuid.uuid4().hex[:12]
        size = self.batch_size
        batches = [list(todo[k : k + size]) for k in range(0, len(todo), size)]
        queue = list(reversed(batches))
        in_flight: dict[object, list[Case]] = {}
        completed = distributed.as_completed()
        threads: dict[str, float] = {"count": 0, "asked": -math.inf}

        def limit() -> int:
            if self.max_in_flight is not None:
                return max(1, self.max_in_flight)
            if time.monotonic() - threads["asked"] > LIMIT_REFRESH_S:  # workers come and go: ask now and then
                threads.update(count=sum(client.nthreads().values()), asked=time.monotonic())
            return max(2, IN_FLIGHT_PER_THREAD * int(threads["count"]))

        def top_up() -> None:
            room = limit() - len(in_flight)
            while queue and room > 0:
                batch = queue.pop()
                if size == 1:
                    [case] = batch
                    future = client.submit(task, case, key=f"isodose-case-{case.case_id}-{run_id}", pure=False)
                else:
                    key = f"isodose-batch-{batch[0].case_id}-{run_id}"
                    future = client.submit(self.batch_task, batch, key=key, pure=False)
                in_flight[future] = batch
                completed.add(future)
                room -= 1

        top_up()
        try:
            for future in completed:
                batch = in_flight.pop(future)
                try:
                    values = [future.result()] if size == 1 else list(future.result())
                except Exception as exc:  # the task itself failed (task code turns case errors into entries)
                    values = [error_entry(case.case_id, _task_failure(exc)) for case in batch]
                future.release()
                for case, value in zip(batch, values, strict=True):
                    with off_the_terminal():  # its warnings go with its result
                        entries = finish([(case, value)])
                    on_entries(entries)
                top_up()
        except BaseException:
            client.cancel(list(in_flight))
            raise
