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
