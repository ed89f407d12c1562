"""Running a cohort: the orchestration of a run, from its cases to its store.

A case is the unit of work, of failure and of resumption. :func:`run_cohort` opens the store (one writer at a
time), works out which cases are still to do (those not finished, or whose inputs changed since), picks an
executor (this process, a local pool, a Dask cluster) and the work each case needs (read and classify; or, for a
GPU, read and plan in workers and classify here in batches), stores each entry the moment it is finished, and
reports progress through a callback. A case that fails is recorded with its error and the run goes on; running
the same command again skips the cases already finished and retries the failed ones.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..dispatch import BACKENDS, Backend, copies_grids, samples_cases_together
from ..errors import BackendError, IsodoseError
from .cases import Case, input_fingerprint, load_cases
from .entries import CaseEntry
from .execution import Executor, Finish, InProcess, SparedHeap, Task, entries_as_they_are
from .local import ProcessPool, check_workers, default_workers, threads_per_worker
from .settings import RunSettings
from .store import ResultStore
from .work import ReceivedBatches, process_case, read_and_send

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    """What a run did: cases in all, skipped (finished before), processed now, failed, its seconds, its files."""

    cases: int
    skipped: int
    processed: int
    failed: int
    seconds: float
    store: Path
    table: Path
    #: The cases this run saw fail, grouped by reason (their file paths shortened to the file names, so that one
    #: problem of many cases is one group; a reason of one case is its error whole), the largest group first.
    failures: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: The cases this run processed whose entries hold warnings (failed or not).
    with_warnings: int = 0
    #: The first case's error whole, by reason, where the reason shortened it (the paths it names, in full).
    first_errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunProgress:
    """Where a run stands, as the progress callback gets it: once at the start, then after each stored batch of
    cases (one case at a time on the CPU; a GPU batch at once)."""

    total: int
    done: int
    failed: int
    #: Cases done when the run started (finished before, skipped).
    skipped: int
    elapsed_s: float

    @property
    def rate_per_s(self) -> float:
        """Cases stored per second by this run."""
        return (self.done - self.skipped) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def remaining_s(self) -> float | None:
        """Seconds left at the current rate, None before the first case."""
        rate = self.rate_per_s
        return (self.total - self.done) / rate if rate > 0 else None


def run_cohort(
    source: str | Path,
    out: str | Path,
    *,
    settings: RunSettings | None = None,
    workers: int | None = None,
    backend: str | Backend | None = None,
    recurrence_roi: str = "Recurrence",
    prescription_gy: float | None = None,
    second_courses: bool = False,
    cases: Iterable[Case] | None = None,
    pipelined: bool | None = None,
    batch_size: int = 32,
    client=None,
    dask_batch_size: int | None = None,
    on_result: Callable[[CaseEntry], None] | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
) -> RunSummary:
    """Run (or resume) a cohort from a manifest or a folder into the store ``out`` (and its CSV beside).

    With the cupy backend (``pipelined``, by default), ``workers`` processes read DICOM and plan each case's
    sampling while this process samples on the GPU, up to ``batch_size`` cases at once (one merged sampling
    plan), and finishes the cases; otherwise each worker process reads and computes its own cases. With a Dask
    ``client`` (see :mod:`isodose.cohort.distributed`), the cluster's workers read and compute the cases, one
    task per case, and ``workers`` is not used. In every arrangement this process alone writes the store.
    Results do not depend on the arrangement or the batch size.

    Parameters
    ----------
    source : str or path
        A manifest CSV, or a folder of DICOM exports.
    out : str or path
        The store (HDF5); its journal, lock and CSV go beside it. An existing store is resumed.
    settings : RunSettings, optional
        What the results depend on (metrics, targets, thresholds, sampling); a store resumes only with its own.
    workers : int, optional
        Local worker processes (default: one per CPU core).
    backend : str or Backend, optional
        The backend (see :func:`isodose.resolve_backend`).
    recurrence_roi, prescription_gy, second_courses
        For folder input (see :func:`isodose.cohort.cases.discover_cases`): Vr's ROI name, the prescription of
        cases without an RTPLAN, and whether a patient's two planning frames are one re-irradiated case.
    cases : iterable of Case, optional
        The cases, instead of reading ``source``.
    pipelined : bool, optional
        Whether workers read and this process computes (default: with the cupy backend).
    batch_size : int
        Cases sampled together in the pipelined arrangement, and in one task of a Dask GPU worker.
    client : distributed.Client, optional
        Run on this Dask cluster.
    dask_batch_size : int, optional
        Cases in one Dask task (default: ``batch_size`` where a worker computes on a GPU, else 1).
    on_result : callable, optional
        Called with each case's entry once it is stored (its curves' volumes are NumPy arrays: give
        ``json.dumps`` a ``default`` that turns them into lists).
    on_progress : callable, optional
        Called with a :class:`RunProgress` at the start and after each stored batch.

    Returns
    -------
    RunSummary
        Cases in all, skipped (finished before), processed, failed, seconds, and the store's and table's paths.

    Raises
    ------
    IsodoseError
        For a manifest or folder that cannot describe a cohort, a store that cannot be opened or written (another
        run writing it, other settings, no room), or a worker count that is not a whole number of at least 1.
        A case that fails is recorded with its error and never raises.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from isodose.dicom.write import write_example_case
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_example_case(folder)
    >>> header = "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,registration"
    >>> row = "case-1,RD.example.dcm,RS.example.dcm,RP.example.dcm,,Recurrence,,"
    >>> _ = (folder / "manifest.csv").write_text(header + "\\n" + row + "\\n")
    >>> summary = run_cohort(folder / "manifest.csv", folder / "results.h5", workers=1)
    >>> summary.cases, summary.processed, summary.failed, summary.table.name
    (1, 1, 0, 'results.csv')
    >>> run_cohort(folder / "manifest.csv", folder / "results.h5", workers=1).skipped  # resumed: nothing to do
    1
    """
    settings = settings or RunSettings()
    check_workers(workers)
    not_over_the_manifest(source, out)
    if cases is None:
        cases = load_cases(source, recurrence_roi, prescription_gy, second_courses)
    return run_cases(
        cases,
        out,
        store_settings=settings.as_dict(),
        arrange=lambda todo: _arrangement(
            todo, settings, workers, backend, pipelined, batch_size, client, dask_batch_size
        ),
        on_result=on_result,
        on_progress=on_progress,
    )


def not_over_the_manifest(source: str | Path, out: str | Path) -> None:
    """Refuse a store ``out`` that is, or keeps beside it, the manifest ``source`` itself: ``cohort.csv`` with
    ``--out cohort.h5`` would write the results table (``cohort.csv``) over the manifest."""
    source = Path(source)
    what = ResultStore.owned(source, out) if source.is_file() else None
    if what is not None:
        raise IsodoseError(
            f"the results {what} ({source.name}, beside the store {Path(out).name}) would be written over the "
            "manifest itself: give the store another name",
            path=source,
        )


def run_cases(
    cases: Iterable[Case],
    out: str | Path,
    *,
    store_settings: dict,
    arrange: Callable[[list[Case]], Arrangement],
    on_result: Callable[[CaseEntry], None] | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
    write_table: Callable[[ResultStore], Path] | None = None,
) -> RunSummary:
    """The orchestration every cohort-sized job shares (a recurrence cohort, an audit of an archive): open the
    store ``out`` with ``store_settings``, work out the cases still to do, run them as ``arrange(todo)`` says,
    store each entry the moment it is finished, report progress, and write the table (``write_table(store)``;
    by default the store's one row per case).

    Returns
    -------
    RunSummary
        See :func:`run_cohort`.
    """
    run_started = time.perf_counter()
    all_cases = list(cases)
    with ResultStore.open(out, store_settings) as store:  # this run alone writes it until it returns
        todo = _to_do(store, all_cases)
        store.check_free_space(len(todo))
        arrangement = arrange(todo)
        started = time.perf_counter()  # the rate and the time left count the cases' work, not the set-up
        skipped = len(all_cases) - len(todo)
        failed = 0

        def report() -> None:
            if on_progress is not None:
                on_progress(RunProgress(len(all_cases), skipped + done, failed, skipped, time.perf_counter() - started))

        done = 0
        report()

        by_id = {c.case_id: c for c in todo}
        reasons: dict[str, list[str]] = {}
        first_error: dict[str, str] = {}  # each reason's first case's error, whole
        with_warnings = 0
        spared = SparedHeap(len(todo))

        def record(entries: list[CaseEntry]) -> None:
            nonlocal failed, done, with_warnings
            for entry in entries:  # the manifest's clinical covariates go with each case's results
                case = by_id.get(entry["case_id"])
                if case is not None and case.covariates and isinstance(entry.get("record"), dict):
                    record = entry["record"]
                    for name, value in case.covariates:
                        record.setdefault(name, value)  # never in place of a result
            store.append_many(entries)  # durably, before anything is reported
            for entry in entries:
                done += 1
                with_warnings += bool(entry.get("warnings"))
                if entry["status"] != "ok":
                    failed += 1
                    reason = failure_reason(entry["error"], by_id.get(entry["case_id"]))
                    reasons.setdefault(reason, []).append(entry["case_id"])
                    first_error.setdefault(reason, entry["error"])
                if on_result is not None:
                    on_result(entry)
            report()
            spared.after_batch()

        try:
            if arrangement.hands_over:
                from . import handover

                handover.sweep()  # what killed runs left
            try:
                arrangement.executor.run(todo, arrangement.task, arrangement.finish, record)
            finally:
                spared.release()
                if arrangement.hands_over:
                    handover.sweep(os.getpid())  # cases sent but never received (a run stopped midway)
        except BaseException:
            # Keep what finished (the file whole); a failure here must not hide the one that stopped the run.
            if store.pending or store.appended:
                try:
                    store.consolidate()
                except IsodoseError as exc:
                    log.warning("%s", exc)
            raise
        if store.pending or store.appended:  # the end of a run: the file written whole, in the order of the ids
            store.consolidate()
        table = write_table(store) if write_table is not None else store.write_table()
    # A reason of one case is its error whole (its file's full path): a shortened path names it for many cases only.
    failures = {
        (first_error[r] if len(ids) == 1 else r): tuple(ids)
        for r, ids in sorted(reasons.items(), key=lambda item: -len(item[1]))
    }
    return RunSummary(
        len(all_cases),
        skipped,
        len(todo),
        failed,
        time.perf_counter() - run_started,
        store.path,
        table,
        failures,
        with_warnings,
        {r: first_error[r] for r, ids in reasons.items() if len(ids) > 1 and first_error[r] != r},
    )


def failure_reason(error: str, case: Case | None) -> str:
    """A failed case's error with its own files' paths shortened to their names: the same problem of many cases
    (``RD.dcm: DoseUnits is RELATIVE...``) reads the same."""
    if case is None:
        return error
    paths = [
        case.dose,
        case.structures,
        case.plan,
        case.recurrence_structures,
        case.registration,
        case.second_dose,
        case.second_plan,
        case.second_registration,
        *case.extra_doses,
    ]
    for path in sorted((p for p in paths if p is not None), key=lambda p: -len(str(p))):
        error = error.replace(str(path), path.name)
    return error


def _to_do(store: ResultStore, all_cases: list[Case]) -> list[Case]:
    """The cases not finished in ``store``, and those finished whose inputs changed since (with a warning)."""
    finished = store.finished()
    changed = {
        c.case_id for c in all_cases if c.case_id in finished and store.inputs_changed(c.case_id, input_fingerprint(c))
    }
    if changed:
        log.warning(
            "%d finished case(s) have inputs that changed since they ran (%s); they are computed again",
            len(changed),
            ", ".join(sorted(changed)[:5]) + (", ..." if len(changed) > 5 else ""),
        )
    return [c for c in all_cases if c.case_id not in finished or c.case_id in changed]


@dataclass(frozen=True)
class Arrangement:
    """Where a run's tasks run, what each case's task is, how its values become entries, and whether workers
    hand cases over through shared memory (the GPU arrangement)."""

    executor: Executor
    task: Task
    finish: Finish
    hands_over: bool = False


def per_case_arrangement(
    todo: list[Case],
    task: Callable[..., CaseEntry],
    workers: int | None,
    backend: str | Backend | None,
    client=None,
) -> Arrangement:
    """Each case read and computed where its task runs (``task(case, backend=...)`` returns its entry): on the Dask
    cluster of ``client``, in this process (one worker, or one case), or in a pool of local processes."""
    workers = default_workers(workers)
    if client is not None:
        from .distributed import DaskCluster, on_worker

        return Arrangement(
            DaskCluster(client),
            functools.partial(on_worker, task=functools.partial(task, backend=_for_workers(backend))),
            entries_as_they_are,
        )
    if workers == 1 or len(todo) <= 1:
        return Arrangement(InProcess(), functools.partial(task, backend=backend), entries_as_they_are)
    n = min(workers, len(todo))
    return Arrangement(
        ProcessPool(n, threads_per_worker(n)),
        functools.partial(task, backend=_for_workers(backend)),
        entries_as_they_are,
    )


def _arrangement(
    todo: list[Case],
    settings: RunSettings,
    workers: int | None,
    backend: str | Backend | None,
    pipelined: bool | None,
    batch_size: int,
    client,
    dask_batch_size: int | None = None,
) -> Arrangement:
    """The arrangement of a recurrence cohort's run (see :func:`run_cohort`)."""
    classify = functools.partial(process_case, settings=settings)
    if client is not None:
        from .distributed import DaskCluster, batch_size_for, process_batch_on_worker

        arrangement = per_case_arrangement(todo, classify, workers, backend, client)
        name = _for_workers(backend)
        size = dask_batch_size if dask_batch_size is not None else batch_size_for(client, name, batch_size)
        if size > 1:  # GPU workers: a batch of cases a task
            batch_task = functools.partial(process_batch_on_worker, settings=settings, backend=name)
            executor = DaskCluster(client, batch_size=size, batch_task=batch_task)
            return Arrangement(executor, arrangement.task, arrangement.finish)
        return arrangement
    n_workers = default_workers(workers)
    if pipelined is None:  # a backend that samples many cases in one launch (a GPU) is fed by reading workers
        pipelined = samples_cases_together(backend) and n_workers > 1
    if not pipelined or n_workers == 1 or len(todo) <= 1:
        return per_case_arrangement(todo, classify, workers, backend)
    # Reading workers read and plan; this process samples (for a GPU, which one process drives) and finishes.
    # The cases' dose grids come through shared memory: for a GPU, only the part that each case's sampling reads.
    try:
        crop = copies_grids(backend)
    except BackendError:  # a backend that cannot load: each case reports it, as it would without the crop
        crop = False
    from . import handover

    readers = min(n_workers, len(todo))
    # Each reader holds its last blocks open, so that it, not this process, frees their pages (handover's text).
    hold = handover.blocks_to_hold(batch_size, readers)
    task = functools.partial(read_and_send, settings=settings, receiver_pid=os.getpid(), crop=crop, hold=hold)
    finish: Finish = ReceivedBatches(settings, backend)
    return Arrangement(ProcessPool(readers, 1, max(1, batch_size)), task, finish, hands_over=True)


def _for_workers(backend: str | Backend | None) -> str | None:
    """The backend as worker processes get it: its name, with which each loads it (and tests it) itself. A backend
    made by hand cannot travel: it computes in this process only."""
    if not isinstance(backend, Backend):
        return backend
    if backend.name not in BACKENDS:
        raise IsodoseError(
            f"the backend {backend.name!r} was made by hand, and cannot be sent to worker processes: give one of "
            f"{', '.join(BACKENDS)} by name, or run it in this process (workers=1, or pipelined=True)"
        )
    return backend.name
