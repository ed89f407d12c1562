"""How a cohort's cases are run: the executor protocol, and the simplest executor, this process.

An executor runs ``task(case)`` for every case to do (read it, and on the CPU classify it too), turns what the
tasks return into entries with ``finish`` (a list of ``(case, value)`` at a time: the GPU arrangement finishes a
batch of cases in one launch), and hands the entries to ``on_entries`` in the process that called it, which alone
writes the store. Executors differ only in where the tasks run:

- :class:`InProcess`: here, one case after another;
- :class:`isodose.cohort.local.ProcessPool`: in worker processes of this machine;
- :class:`isodose.cohort.distributed.DaskCluster`: on the workers of a Dask cluster.

None of them loses a case: a task that fails, or a worker that dies, gives the case an error entry.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ..errors import off_the_terminal
from .cases import Case
from .entries import CaseEntry

#: A task: what is done with one case where it runs (its value is an entry, or what ``finish`` completes).
Task = Callable[[Case], Any]
#: Turns the values of finished tasks into their cases' entries, a batch at a time, where the store is written.
Finish = Callable[[list[tuple[Case, Any]]], list[CaseEntry]]
#: Receives entries as they are finished (the orchestration stores them at once).
OnEntries = Callable[[list[CaseEntry]], None]


@runtime_checkable
class StagedFinish(Protocol):
    """A :data:`Finish` in two steps, which an executor may overlap: ``stage`` a batch (receive it, start its
    copies to the device), then ``complete`` it (compute its entries). An executor that knows it stages each batch
    before it completes the batch before; one that does not calls it as a Finish."""

    def __call__(self, items: list[tuple[Case, Any]]) -> list[CaseEntry]: ...

    def stage(self, items: list[tuple[Case, Any]]) -> Any: ...

    def complete(self, staged: Any) -> list[CaseEntry]: ...


def entries_as_they_are(items: list[tuple[Case, Any]]) -> list[CaseEntry]:
    """The :data:`Finish` of tasks that return their case's entry."""
    return [value for _, value in items]


class Executor(Protocol):
    """Runs a cohort's tasks (see the module docstring)."""

    def run(self, todo: Sequence[Case], task: Task, finish: Finish, on_entries: OnEntries) -> None:
        """Run ``task`` for every case of ``todo`` and hand ``finish``'s entries to ``on_entries``."""
        ...


class InProcess:
    """Every task in this process, one after another, each case finished and handed on alone."""

    def run(self, todo: Sequence[Case], task: Task, finish: Finish, on_entries: OnEntries) -> None:
        for case in todo:
            with off_the_terminal():  # each case's warnings go with its result, as from a worker process
                entries = finish([(case, task(case))])
            on_entries(entries)


#: Runs of at least this many cases spare their start-up heap from Python's collector (:class:`SparedHeap`).
SPARE_HEAP_FROM_CASES = 200


class SparedHeap:
    """Python's cyclic collector kept off what the process writing a run's results holds once its work is under way.

    A long run allocates many small objects a case (entries, DVHs, their dicts), so the collector runs often, and
    its full passes look at every object the process holds: after the first batch, the imported modules and
    Numba's compiled functions too, some 0.1 ms a case in the process driving a GPU. After the first batch is
    stored (:meth:`after_batch`) the heap is collected once and frozen (:func:`gc.freeze`): the collector then looks
    only at what is made afterwards, and a case's garbage is still freed as before. :meth:`release` unfreezes it,
    at the run's end. Nothing is done where the embedding program froze its heap itself, nor for short runs."""

    def __init__(self, cases: int, from_cases: int | None = None):
        self.wanted = cases >= (SPARE_HEAP_FROM_CASES if from_cases is None else from_cases)
        self.frozen = False

    def after_batch(self) -> None:
        if self.wanted and not self.frozen and gc.get_freeze_count() == 0:
            gc.collect()
            gc.freeze()
            self.frozen = True

    def release(self) -> None:
        if self.frozen:
            gc.unfreeze()
            self.frozen = False
        self.wanted = False  # once the run is over, never again
