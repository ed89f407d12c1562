"""The local executor: a cohort's tasks in a pool of worker processes on this machine.

Workers are spawned, never forked (a fork after Numba's or OpenMP's threads have started can deadlock). Tasks
are submitted as results come back, at most two per worker in flight, so a cohort of any size never builds a
large queue. A worker that dies (killed, out of memory) fails the cases it had in flight, and the rest go on in
a fresh pool.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures import ProcessPoolExecutor as _Pool
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..errors import IsodoseError, off_the_terminal
from .cases import Case
from .entries import error_entry
from .execution import Finish, OnEntries, StagedFinish, Task

#: Tasks in flight per worker process: one running, one waiting.
IN_FLIGHT_PER_WORKER = 2


def check_workers(workers: int | None) -> None:
    """``workers`` is None (one per CPU core) or a whole number of at least 1."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise IsodoseError(f"the number of worker processes must be a whole number of at least 1, not {workers!r}")


def default_workers(workers: int | None) -> int:
    """``workers``, or one per CPU core when None."""
    return max(1, int(workers or os.cpu_count() or 1))


def threads_per_worker(workers: int) -> int:
    """The Numba threads each of ``workers`` processes gets: the machine's cores shared among them."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _init_worker(threads: int, log_level: int) -> None:
    from ..dispatch import for_one_command

    for_one_command()  # a worker runs isodose's work alone, as the command does: Numba set up without SciPy's BLAS
    logging.getLogger("isodose").setLevel(log_level)
    try:
        import numba

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - numba is a dependency
        pass


#: Signals a terminal or a job scheduler sends a whole job (its process group): workers leave them to this process.
_STOPPING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def _interrupts_left_to_this_process():
    """Ctrl-C, SIGTERM and SIGHUP blocked while helper processes may be started (workers, multiprocessing's
    resource tracker): they inherit the blocked signals, so a signal sent to the whole job reaches this process
    alone, which stops them itself, rather than each worker printing its own traceback or dying under a batch still
    being written. Here a signal that comes meanwhile waits, and is delivered when the block ends: none is lost."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _stop_workers(pool: _Pool) -> None:
    """Kill the pool's worker processes (the stopping signals are blocked in them) and wait for them to go."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(timeout=5)


class ProcessPool:
    """``workers`` spawned processes, each computing with ``threads`` Numba threads.

    Values are finished in batches of up to ``batch_size`` (a smaller one when nothing else is in flight), and
    each wait's entries are handed on together.
    """

    def __init__(self, workers: int, threads: int = 1, batch_size: int = 1):
        check_workers(workers)
        self.workers = workers
        self.threads = max(1, int(threads))
        self.batch_size = max(1, int(batch_size))

    def run(self, todo: Sequence[Case], task: Task, finish: Finish, on_entries: OnEntries) -> None:
        level = logging.getLogger("isodose").getEffectiveLevel()
        context = multiprocessing.get_context("spawn")
        with _interrupts_left_to_this_process():  # the resource tracker, started once, leaves signals to us too
            from multiprocessing import resource_tracker

            resource_tracker.ensure_running()
        queue = list(reversed(todo))
        ready: list[tuple[Case, Any]] = []
        # A finish in two steps (see isodose.cohort.execution.StagedFinish): each batch is staged before the one
        # before it is completed, so that its copies to the device overlap that batch's kernels.
        staged_finish = finish if isinstance(finish, StagedFinish) else None
        pending: list[Any] = []

        def flush(last: bool = False) -> None:
            batch = ready[:]
            ready.clear()
            if staged_finish is None:
                if batch:
                    with off_the_terminal():  # cases' warnings go with their results (the GPU's in this process)
                        entries = finish(batch)
                    on_entries(entries)
                return
            if batch:
                with off_the_terminal():
                    pending.append(staged_finish.stage(batch))
            while len(pending) > (0 if last else 1):
                with off_the_terminal():
                    entries = staged_finish.complete(pending.pop(0))
                on_entries(entries)

        while queue:
            with _Pool(
                max_workers=self.workers, mp_context=context, initializer=_init_worker, initargs=(self.threads, level)
            ) as pool:
                in_flight: dict[Future, Case] = {}
                try:
                    while queue or in_flight:
                        while queue and len(in_flight) < IN_FLIGHT_PER_WORKER * self.workers:
                            case = queue.pop()
                            with _interrupts_left_to_this_process():  # a worker started now ignores Ctrl-C
                                in_flight[pool.submit(task, case)] = case
                        finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                        for future in finished:
                            case = in_flight.pop(future)
                            try:
                                value = future.result()
                            except BrokenProcessPool:
                                in_flight[future] = case
                                raise
                            except Exception as exc:  # the result could not come back (too large to pass, say)
                                value = error_entry(case.case_id, f"{type(exc).__name__}: {exc}")
                            ready.append((case, value))
                        if len(ready) >= self.batch_size or not in_flight:
                            flush()
                except BrokenProcessPool:
                    for future, case in in_flight.items():
                        if future.done() and not future.exception():
                            ready.append((case, future.result()))
                        else:
                            ready.append(
                                (
                                    case,
                                    error_entry(case.case_id, "the worker process died while this case was in flight"),
                                )
                            )
                    flush()
                except BaseException:
                    # Ctrl-C, SIGTERM: the workers are stopped too, so that none is left running (holding the
                    # command's output open) after the command has ended.
                    _stop_workers(pool)
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        flush(last=True)
