"""Running a cohort: one task per case, in a pool of local processes, results written by one writer.

A case is the unit of work, of failure and of resumption. A case that fails (a bad file, a missing ROI, a
missing prescription) is recorded with its error and the run goes on; running the same command again skips
the cases already finished and retries the failed ones. Tasks are submitted as work is consumed (at most two
per worker in flight), so a very large cohort never builds a large queue.
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import IsodoseError, collect_warnings
from ..recurrence import Criteria
from ..voxelize import SamplingOptions
from .cases import Case, case_inputs, load_cases
from .store import ResultStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings:
    """What a cohort's results depend on; a store is only resumed with the same settings."""

    metrics: tuple[str, ...] = ()
    target_metrics: tuple[str, ...] = ()
    targets: tuple[str, ...] | None = None
    criteria: Criteria = field(default_factory=Criteria)
    options: SamplingOptions = field(default_factory=SamplingOptions)
    dvh_step_gy: float = 0.1

    def as_dict(self) -> dict:
        return {
            "metrics": list(self.metrics),
            "target_metrics": list(self.target_metrics),
            "targets": None if self.targets is None else list(self.targets),
            "criteria": asdict(self.criteria),
            "sampling": asdict(self.options),
            "dvh_step_gy": self.dvh_step_gy,
        }


@dataclass(frozen=True)
class RunSummary:
    cases: int
    skipped: int
    processed: int
    failed: int
    seconds: float
    store: Path
    table: Path


def _curve(dvh, step_gy: float) -> list[float]:
    doses = step_gy * np.arange(int(math.floor(dvh.dmax_gy / step_gy)) + 2)
    return np.round(np.asarray(dvh.cumulative(doses), dtype=np.float64), 5).tolist()


@dataclass(frozen=True, eq=False)
class CaseInputs:
    """One case read from disk, ready to compute (what a reading worker hands to the computing process)."""

    case: Case
    dose: object
    structures: object
    prescription_gy: float
    follow_up: object
    registration: object
    read_s: float
    warnings: tuple[str, ...] = ()
    second: object = None  # the courses of a re-irradiated case: (Course 1, Course 2, Registration or None)
    inputs: dict | None = None  # case_inputs(case), taken before the files were read
    #: The case's classification prepared where it was read (a PreparedRecurrence or the IsodoseError that
    #: stopped it), and the seconds that took; None when the computing process prepares it. A prepared case
    #: that is not re-irradiated no longer holds its structure sets and registration (they stay in the worker).
    prepared: object = None
    prepare_s: float = 0.0


def _error_entry(case_id: str, error: str, timings: dict | None = None, warnings: list[str] | None = None) -> dict:
    return {"case_id": case_id, "status": "error", "error": error, "record": {}, "timings": dict(timings or {}),
            "dvhs": {}, "warnings": list(warnings or [])}


def _guarded(case_id: str, work: Callable[[], dict | CaseInputs], timings: dict) -> dict | CaseInputs:
    """Run ``work``; a failure becomes an error entry (a case must never stop the cohort)."""
    with collect_warnings() as messages:
        try:
            result = work()
        except IsodoseError as exc:
            result = _error_entry(case_id, str(exc), timings)
        except MemoryError:
            result = _error_entry(case_id, "out of memory", timings)
        except Exception as exc:
            result = _error_entry(case_id, f"internal error: {type(exc).__name__}: {exc}", timings)
            log.debug("case %s failed", case_id, exc_info=True)
    if isinstance(result, CaseInputs):
        return CaseInputs(**{**result.__dict__, "warnings": tuple(messages)})
    result["warnings"] = result.get("warnings", []) + messages
    return result


def read_case(case: Case) -> CaseInputs | dict:
    """Read one case's files (an error entry when they cannot be read)."""
    from ..dicom.read import read_dose, read_plan, read_registration, read_structures

    started = time.perf_counter()
    inputs = case_inputs(case)  # before reading: a file changed meanwhile shows as changed on the next run

    def read() -> CaseInputs:
        if case.problem:
            raise IsodoseError(case.problem)
        dose = read_dose(case.dose)
        structures = read_structures(case.structures)
        prescription = case.prescription_gy
        if prescription is None:
            prescription = read_plan(case.plan).prescription_gy
            if prescription is None:
                raise IsodoseError("the plan holds no prescription; give prescription_gy", path=case.plan)
        follow_up = read_structures(case.recurrence_structures) if case.recurrence_structures else None
        registration = read_registration(case.registration) if case.registration else None
        second = _read_second_course(case, dose) if case.second_dose else None
        return CaseInputs(case, dose, structures, prescription, follow_up, registration,
                          time.perf_counter() - started, second=second, inputs=inputs)

    result = _guarded(case.case_id, read, {})
    if isinstance(result, dict):
        result["timings"]["read_s"] = result["timings"]["total_s"] = time.perf_counter() - started
        result["inputs"] = inputs
    return result


def _read_second_course(case: Case, dose) -> tuple:
    """The two courses of a re-irradiated case, and the registration of the second's frame (or None)."""
    from ..accumulate import Course
    from ..dicom.read import read_dose, read_plan, read_registration

    def planned_fractions(plan, what: str) -> int:
        if plan is None:
            column = "fractions" if what == "first" else "second_fractions"
            raise IsodoseError(f"the {what} course's number of fractions is needed and it has no RTPLAN to read it "
                               f"from: add the plan, or give the case in a manifest with a {column} column")
        fractions = read_plan(plan).number_of_fractions
        if fractions is None:
            raise IsodoseError(f"the plan holds no NumberOfFractionsPlanned for the {what} course; give the fractions "
                               "in the manifest", path=plan)
        return fractions

    first = Course(dose, case.fractions or planned_fractions(case.plan, "first"))
    second = Course(read_dose(case.second_dose), case.second_fractions or planned_fractions(case.second_plan, "second"))
    registration = read_registration(case.second_registration) if case.second_registration else None
    return first, second, registration


def _with_reirradiation(inputs: CaseInputs, entry: dict, settings: RunSettings, backend) -> dict:
    """The entry of a re-irradiated case with its accumulated metrics and risk flags (or its error)."""
    from ..accumulate import reirradiation_record
    from ..recurrence import recurrence_transform

    first, second, registration = inputs.second
    source = inputs.follow_up if inputs.follow_up is not None else inputs.structures
    transform = (recurrence_transform(inputs.dose, source, inputs.registration)
                 if inputs.follow_up is not None else None)
    with collect_warnings() as messages:
        try:
            extra = reirradiation_record(first, second, source.get(inputs.case.recurrence_roi),
                                         registration=registration, recurrence_transform=transform,
                                         options=settings.options, backend=backend)
        except IsodoseError as exc:
            return _error_entry(inputs.case.case_id, f"re-irradiation: {exc}", entry["timings"],
                                entry["warnings"] + messages)
    entry["record"].update(extra)
    entry["warnings"] = entry["warnings"] + messages
    return entry


def _entry(case_id: str, result, settings: RunSettings, timings: dict) -> dict:
    """The store's entry of one classified case."""
    dvhs = {result.recurrence_dvh.name: ("recurrence", result.recurrence_dvh)}
    dvhs.update({name: ("roi", d) for name, d in result.roi_dvhs.items() if name not in dvhs})
    curves = {name: {"role": role, "step_gy": settings.dvh_step_gy, "cumulative_cc": _curve(d, settings.dvh_step_gy)}
              for name, (role, d) in dvhs.items() if d.has_dose}
    return {"case_id": case_id, "status": "ok", "error": "", "record": result.record(), "timings": timings,
            "dvhs": curves, "warnings": list(result.warnings)}


def _recurrence_case(inputs: CaseInputs, settings: RunSettings):
    from ..recurrence import RecurrenceCase

    return RecurrenceCase(inputs.dose, inputs.structures, inputs.case.recurrence_roi, inputs.prescription_gy,
                          inputs.follow_up, inputs.registration, settings.targets, settings.metrics,
                          settings.target_metrics, settings.criteria)


def read_and_prepare(case: Case, settings: RunSettings) -> CaseInputs | dict:
    """:func:`read_case`, then the planning of the case's classification (what a reading worker does for the
    process that drives a GPU, which then only samples and finishes)."""
    inputs = read_case(case)
    return inputs if isinstance(inputs, dict) else prepare_inputs(inputs, settings)


def prepare_inputs(inputs: CaseInputs, settings: RunSettings) -> CaseInputs:
    """A case already read, with its classification planned (see :func:`read_and_prepare`)."""
    from ..recurrence import prepare_recurrence

    started = time.perf_counter()
    prepared = prepare_recurrence(_recurrence_case(inputs, settings), settings.options)
    inputs = replace(inputs, prepared=prepared, prepare_s=time.perf_counter() - started)
    if inputs.second is None:  # what remains to do needs none of the contours: they are not passed on
        inputs = replace(inputs, structures=None, follow_up=None, registration=None)
    return inputs


def read_and_send(case: Case, settings: RunSettings, receiver_pid: int):
    """:func:`read_and_prepare`, as a reading worker sends it to the process ``receiver_pid`` that drives the
    GPU: its dose grids through shared memory (see :mod:`isodose.cohort.handover`)."""
    from .handover import send

    return send(read_and_prepare(case, settings), receiver_pid)


def classify_batch(batch: list[CaseInputs], settings: RunSettings, backend: str | None = None) -> list[dict]:
    """Classify cases already read, sampled together (one merged plan on a GPU); never raises for a bad case.

    Cases prepared where they were read (:func:`read_and_prepare`) are not prepared again. Each case's compute
    time is its share of the batch's, plus its preparing elsewhere."""
    from ..recurrence import classify_prepared, prepare_recurrence

    started = time.perf_counter()
    timings = [{"read_s": i.read_s} for i in batch]

    def compute() -> dict:
        prepared = [i.prepared if i.prepared is not None else
                    prepare_recurrence(_recurrence_case(i, settings), settings.options) for i in batch]
        results = classify_prepared(prepared, backend=backend)
        share = (time.perf_counter() - started) / max(len(batch), 1)
        entries = []
        for inputs, result, timing in zip(batch, results, timings):
            timing = {**timing, "compute_s": share + inputs.prepare_s}
            if isinstance(result, Exception):
                entries.append(_error_entry(inputs.case.case_id, str(result), timing,
                                            list(getattr(result, "warnings", ()))))
            elif inputs.second is not None:
                entries.append(_with_reirradiation(inputs, _entry(inputs.case.case_id, result, settings, timing),
                                                   settings, backend))
            else:
                entries.append(_entry(inputs.case.case_id, result, settings, timing))
        return {"entries": entries}

    outcome = _guarded(",".join(i.case.case_id for i in batch), compute, {})
    if outcome.get("status") == "error":  # the batch itself failed: each case gets the error and its warnings
        entries = [_error_entry(i.case.case_id, outcome["error"], t, outcome["warnings"])
                   for i, t in zip(batch, timings)]
    else:  # each result holds the warnings of its own case
        entries = outcome["entries"]
    for inputs, entry in zip(batch, entries):
        entry["inputs"] = inputs.inputs
        entry["warnings"] = list(inputs.warnings) + entry["warnings"]
        entry["timings"]["total_s"] = inputs.read_s + inputs.prepare_s + time.perf_counter() - started
    return entries


def classify_inputs(inputs: CaseInputs, settings: RunSettings, backend: str | None = None) -> dict:
    """Classify one case already read; never raises for a bad case."""
    [entry] = classify_batch([inputs], settings, backend)
    return entry


def process_case(case: Case, settings: RunSettings, backend: str | None = None) -> dict:
    """Read and classify one case; never raises for a bad case (the error goes into the returned entry)."""
    inputs = read_case(case)
    return inputs if isinstance(inputs, dict) else classify_inputs(inputs, settings, backend)


def _init_worker(threads: int, log_level: int) -> None:
    logging.getLogger("isodose").setLevel(log_level)
    try:
        import numba

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    except ImportError:  # pragma: no cover - numba is a dependency
        pass


class Progress:
    """A one-line progress report on stderr: rewritten in place on a terminal, every 10% otherwise."""

    def __init__(self, total: int, done: int, enabled: bool = True, stream=None):
        self.total, self.done, self.failed = total, done, 0
        self.started = time.perf_counter()
        self.start_done = done
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._last_decile = -1

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        if not self.enabled:
            return
        now = time.perf_counter()
        decile = int(10 * self.done / self.total)
        if (self.tty and now - self._last > 0.2) or (not self.tty and decile != self._last_decile) \
                or self.done == self.total:
            self._last, self._last_decile = now, decile
            self._write()

    def _write(self) -> None:
        elapsed = time.perf_counter() - self.started
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        remaining = (self.total - self.done) / rate if rate > 0 else math.nan
        width = 24
        filled = int(width * self.done / self.total)
        eta = f"{int(remaining // 60)}:{int(remaining % 60):02d}" if math.isfinite(remaining) else "-"
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} cases, {self.failed} failed, "
                f"{rate:.1f} cases/s, ETA {eta}")
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _selected_backend_name(backend: str | None) -> str:
    from ..dispatch import select_backend

    return select_backend(backend).name


def _run_in_processes(todo: list[Case], task: Callable[[Case], object], workers: int, threads: int,
                      finish: Callable[[list[tuple[Case, object]]], list[dict]],
                      on_results: Callable[[list[dict]], None], batch_size: int = 1) -> None:
    """Run ``task(case)`` in worker processes, at most two cases in flight per worker, and hand the entries of
    ``finish([(case, value), ...])`` to ``on_results`` here, in the one writing process, a list at a time.
    Values are finished in batches of up to ``batch_size`` (a smaller one when nothing else is in flight), and
    each wait's results are handed on together. A worker that dies (killed, out of memory) fails the cases in
    flight, and the rest go on in a fresh pool."""
    level = logging.getLogger("isodose").getEffectiveLevel()
    context = multiprocessing.get_context("spawn")  # no fork after threads (OpenMP) have started
    queue = list(reversed(todo))
    ready: list[tuple[Case, object]] = []

    def flush() -> None:
        batch = ready[:]
        ready.clear()
        if batch:
            on_results(finish(batch))

    while queue:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                 initargs=(threads, level)) as pool:
            in_flight: dict[Future, Case] = {}
            try:
                while queue or in_flight:
                    while queue and len(in_flight) < 2 * workers:
                        case = queue.pop()
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
                            value = _error_entry(case.case_id, f"{type(exc).__name__}: {exc}")
                        ready.append((case, value))
                    if len(ready) >= batch_size or not in_flight:
                        flush()
            except BrokenProcessPool:
                for future, case in in_flight.items():
                    if future.done() and not future.exception():
                        ready.append((case, future.result()))
                    else:
                        ready.append((case, _error_entry(case.case_id,
                                                         "the worker process died while this case was in flight")))
                flush()
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    flush()


def check_workers(workers: int | None) -> None:
    """``workers`` is None (one per CPU core) or a whole number of at least 1."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise IsodoseError(f"the number of worker processes must be a whole number of at least 1, not {workers!r}")


def run_cohort(
    source: str | Path,
    out: str | Path,
    *,
    settings: RunSettings | None = None,
    workers: int | None = None,
    backend: str | None = None,
    recurrence_roi: str = "Recurrence",
    prescription_gy: float | None = None,
    second_courses: bool = False,
    progress: bool = True,
    cases: Iterable[Case] | None = None,
    pipelined: bool | None = None,
    batch_size: int = 32,
    client=None,
    on_result: Callable[[dict], None] | None = None,
) -> RunSummary:
    """Run (or resume) a cohort from a manifest or a folder into the store ``out`` (and its CSV beside).

    With the cupy backend (``pipelined``, by default), ``workers`` processes read DICOM and plan each case's
    sampling while this process samples on the GPU, up to ``batch_size`` cases at once (one merged sampling
    plan), and finishes the cases; otherwise each worker
    process reads and computes its own cases. With a Dask ``client`` (see :mod:`isodose.cohort.distributed`),
    the cluster's workers read and compute the cases, one task per case, and ``workers`` is not used. In every
    arrangement this process alone writes the store. Results do not depend on the arrangement or the batch size.
    ``on_result`` is called with each entry once it is stored. ``recurrence_roi``, ``prescription_gy`` and
    ``second_courses`` apply to folder input (see :func:`isodose.cohort.cases.discover_cases`).
    """
    settings = settings or RunSettings()
    started = time.perf_counter()
    check_workers(workers)
    if cases is None:
        cases = load_cases(source, recurrence_roi, prescription_gy, second_courses)
    all_cases = list(cases)
    with ResultStore.open(out, settings.as_dict()) as store:  # this run alone writes it until it returns
        return _run(store, all_cases, settings, workers, backend, progress, pipelined, batch_size, client, on_result,
                    started)


def _run(store: ResultStore, all_cases: list[Case], settings: RunSettings, workers: int | None, backend: str | None,
         progress: bool, pipelined: bool | None, batch_size: int, client, on_result, started: float) -> RunSummary:
    finished = store.finished()
    changed = {c.case_id for c in all_cases
               if c.case_id in finished and store.inputs_changed(c.case_id, case_inputs(c))}
    if changed:
        log.warning("%d finished case(s) have inputs that changed since they ran (%s); they are computed again",
                    len(changed), ", ".join(sorted(changed)[:5]) + (", ..." if len(changed) > 5 else ""))
    todo = [c for c in all_cases if c.case_id not in finished or c.case_id in changed]
    store.check_free_space(len(todo))
    workers = max(1, int(workers or os.cpu_count() or 1))
    if pipelined is None and client is None:
        pipelined = _selected_backend_name(backend) == "cupy" and workers > 1
    bar = Progress(len(all_cases), len(all_cases) - len(todo), progress)
    failed = 0

    def record(entries: list[dict]) -> None:
        nonlocal failed
        store.append_many(entries)  # durably, before anything is reported
        for entry in entries:
            failed += entry["status"] != "ok"
            bar.update(entry["status"] == "ok")
            if on_result is not None:
                on_result(entry)

    try:
        if client is not None:
            from .distributed import process_case_on_worker, run_on_dask

            run_on_dask(client, todo, functools.partial(process_case_on_worker, settings=settings, backend=backend),
                        lambda entry: record([entry]))
        elif workers == 1 or len(todo) <= 1:
            for case in todo:
                record([process_case(case, settings, backend)])
        elif pipelined:
            # Reading workers read and plan; this process samples (for a GPU, which one process drives) and
            # finishes. The cases' dose grids come through shared memory.
            from . import handover

            def classify(items: list[tuple[Case, object]]) -> list[dict]:
                received = []
                for case, sent in items:
                    try:
                        received.append(handover.receive(sent))
                    except OSError as exc:
                        received.append(_error_entry(case.case_id, f"the case's data from its reading worker was "
                                                                   f"lost on the way ({exc})"))
                read = [inputs for inputs in received if isinstance(inputs, CaseInputs)]
                entries = iter(classify_batch(read, settings, backend) if read else [])
                return [next(entries) if isinstance(inputs, CaseInputs) else inputs for inputs in received]

            handover.sweep()  # what killed runs left
            try:
                _run_in_processes(todo, functools.partial(read_and_send, settings=settings, receiver_pid=os.getpid()),
                                  min(workers, len(todo)), 1, classify, record, max(1, batch_size))
            finally:
                handover.sweep(os.getpid())  # cases sent but never received (a run stopped midway)
        else:
            n = min(workers, len(todo))
            _run_in_processes(todo, functools.partial(process_case, settings=settings, backend=backend), n,
                              max(1, (os.cpu_count() or 1) // n), lambda items: [entry for _, entry in items], record)
    except BaseException:
        bar.finish()
        if store.pending:  # keep what finished; a failure here must not hide the one that stopped the run
            try:
                store.consolidate()
            except IsodoseError as exc:
                log.warning("%s", exc)
        raise
    bar.finish()
    if store.pending:
        store.consolidate()
    table = store.write_table()
    return RunSummary(len(all_cases), len(all_cases) - len(todo), len(todo), failed,
                      time.perf_counter() - started, store.path, table)
