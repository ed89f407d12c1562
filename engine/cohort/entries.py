"""What a cohort run records of each case: its entry, as the journal and the store keep it.

An entry is a plain dictionary (it travels between processes and is written as one JSON line), declared here as
a :class:`~typing.TypedDict` so that every room of the cohort package agrees on its keys.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import numpy as np

#: A case's outcome: classified, or stopped by an error (recorded with its reason, retried on the next run).
Status = Literal["ok", "error"]


class Timings(TypedDict, total=False):
    """Seconds a case took: reading its files, computing it (its share of its batch's), and in all."""

    read_s: float
    compute_s: float
    total_s: float


class _Curve(TypedDict):
    """The keys every :class:`StoredCurve` has."""

    role: Literal["recurrence", "roi"]
    step_gy: float
    #: The volumes, one a step from 0 Gy: a float64 array as a case's work makes it (a list only in an entry built
    #: from JSON, as the oldest journals wrote it).
    cumulative_cc: np.ndarray | list[float]


class StoredCurve(_Curve, total=False):
    """A cumulative DVH as a case's entry holds it: volumes (cc) receiving at least ``k * step_gy``."""

    #: The ROI's name, where it is not the curve's key in the entry's ``dvhs``: a planning ROI that bears the name of
    #: a recurrence mapped from another frame (both curves are kept, the recurrence's under the name).
    roi: str


class _Entry(TypedDict):
    case_id: str
    status: Status
    error: str
    record: dict[str, Any]
    timings: Timings
    dvhs: dict[str, StoredCurve]
    warnings: list[str]


class CaseEntry(_Entry, total=False):
    """One case's result in a cohort run (see the store's schema in the docs).

    ``record`` is the flat result record (units in its keys: :meth:`isodose.recurrence.RecurrenceResult.record`,
    plus the re-irradiation metrics of a second course); ``inputs`` is what the result depends on besides the
    run's settings (:func:`isodose.cohort.cases.input_fingerprint`), so that a resumed run redoes a case whose
    files changed; ``warnings`` are those logged while the case was read and computed; ``rows`` are the flat rows of
    a job that gives several results per case (an audit's structures), written to its table one per row.
    """

    inputs: dict[str, Any] | None
    #: For jobs of several results per case (an audit: one per structure and convention), flat rows.
    rows: list[dict[str, Any]]


def error_entry(
    case_id: str, error: str, timings: Timings | None = None, warnings: list[str] | None = None
) -> CaseEntry:
    """The entry of a case stopped by ``error`` (one line naming the file and the problem)."""
    return {
        "case_id": case_id,
        "status": "error",
        "error": error,
        "record": {},
        "timings": Timings(**(timings or {})),
        "dvhs": {},
        "warnings": list(warnings or []),
    }
