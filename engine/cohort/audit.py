"""Auditing an archive: isodose against the planning system's DVHs of every RTDOSE that carries them.

A case of an audit is one RTDOSE with a DVH Sequence, its RTSTRUCT and (when there is one) its RTPLAN, from a
folder (:func:`~isodose.cohort.cases.discover_audit_cases`) or a manifest. :func:`run_audit` runs them through the
cohort's machinery (:func:`~isodose.cohort.runner.run_cases`): in parallel, each result stored the moment it is
finished, resumable, into ``AUDIT.h5`` beside the ``AUDIT.csv`` it writes, one row per structure and convention.
:func:`archive_summary` sums the rows up by ROI name and by size class, with the share of structures that agree,
and says which convention fits the archive.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..dispatch import Backend
from ..dvh import Tolerance
from ..errors import IsodoseError, collect_warnings
from ..formatting import WARNING_SEPARATOR
from ..voxelize import SamplingOptions
from .cases import Case, input_fingerprint, load_audit_cases
from .entries import CaseEntry, Timings, error_entry
from .local import check_workers
from .runner import RunProgress, RunSummary, per_case_arrangement, run_cases
from .settings import sampling_settings
from .store import ResultStore

#: The values an archive's summary gives the median difference of (keys of the audit's rows).
SUMMARY_VALUES = ("volume", "dmean", "D95", "dvh_max")


@dataclass(frozen=True)
class AuditSettings:
    """What an audit's results depend on: a store is resumed only with the same.

    Parameters
    ----------
    metrics : tuple of str
        Metrics compared beside the audit's own (D98, D95, D50, D2, the volume, Dmin, Dmean, Dmax).
    end_caps : tuple of str
        The conventions isodose computes with (``half``, ``none``, or both).
    tolerance : Tolerance
        What agreeing means.
    options : SamplingOptions
        isodose's sampling (its end cap is each of ``end_caps``).
    relative_dose_reference_gy : float, optional
        The dose of 100% for relative doses without their own reference.
    allow_mismatch : bool
        Go on, with a warning, with files that say they do not belong together (not a setting the store keeps).

    Examples
    --------
    >>> AuditSettings(end_caps=("half", "none")).as_dict()["end_caps"]
    ['half', 'none']
    """

    metrics: tuple[str, ...] = ()
    end_caps: tuple[str, ...] = ("half",)
    tolerance: Tolerance = field(default_factory=Tolerance)
    options: SamplingOptions = field(default_factory=SamplingOptions)
    relative_dose_reference_gy: float | None = None
    allow_mismatch: bool = False

    def as_dict(self) -> dict:
        """The settings as the store keeps them (JSON values); ``job`` tells an audit's store from a cohort's."""
        values: dict[str, Any] = {
            "job": "audit",
            "metrics": list(self.metrics),
            "end_caps": list(self.end_caps),
            "tolerance": asdict(self.tolerance),
            "sampling": sampling_settings(self.options),
        }
        if self.relative_dose_reference_gy is not None:
            values["relative_dose_reference_gy"] = self.relative_dose_reference_gy
        return values


def audit_case(case: Case, settings: AuditSettings, backend: str | Backend | None = None) -> CaseEntry:
    """Audit one case (read its files, compute isodose's DVHs, compare); never raises for a bad case: a failure is
    its error entry, with the warnings logged on the way."""
    from ..audit import audit_files
    from .work import case_failure

    started = time.perf_counter()
    fingerprint = input_fingerprint(case)
    with collect_warnings() as messages:
        try:
            if case.problem:
                raise IsodoseError(case.problem)
            assert case.dose is not None and case.structures is not None  # a case without them has its problem
            result = audit_files(
                case.dose,
                case.structures,
                case.plan,
                metrics=settings.metrics,
                end_caps=settings.end_caps,
                tolerance=settings.tolerance,
                options=settings.options,
                backend=backend,
                prescription_gy=case.prescription_gy,
                relative_reference_gy=settings.relative_dose_reference_gy,
                allow_mismatch=settings.allow_mismatch,
            )
        except Exception as exc:
            seconds = time.perf_counter() - started
            entry = error_entry(
                case.case_id, case_failure(exc, case.case_id), Timings(read_s=0.0, total_s=seconds), messages
            )
            entry["inputs"] = fingerprint
            return entry
    seconds = time.perf_counter() - started
    record: dict[str, Any] = {
        "dose_file": str(case.dose),
        "structures": len(result.structures),
        "prescription_gy": result.prescription_gy,
    }
    for cap in result.end_caps:
        record[f"agree_{cap}"] = sum(s.agrees(cap) for s in result.structures)
    if len(result.end_caps) > 1:
        record["better_end_cap"] = result.better_end_cap or ""
    return {
        "case_id": case.case_id,
        "status": "ok",
        "error": "",
        "record": record,
        "timings": Timings(read_s=0.0, compute_s=seconds, total_s=seconds),
        "dvhs": {},
        "warnings": list(dict.fromkeys([*messages, *result.warnings])),
        "inputs": fingerprint,
        "rows": [
            {"dose_file": str(case.dose), **row, "case_warnings": WARNING_SEPARATOR.join(result.warnings)}
            for row in result.rows()
        ],
    }


def run_audit(
    source: str | Path,
    out: str | Path,
    *,
    settings: AuditSettings | None = None,
    workers: int | None = None,
    backend: str | Backend | None = None,
    cases: Iterable[Case] | None = None,
    client=None,
    on_result: Callable[[CaseEntry], None] | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
) -> RunSummary:
    """Audit every RTDOSE with a DVH Sequence of a folder (or every case of a manifest) into ``out`` (the CSV, one
    row per structure and convention; the store ``out`` with suffix ``.h5`` beside it, resumed when it exists).

    Parameters
    ----------
    source : str or path
        A folder of DICOM exports, or an audit's manifest (``case_id,dose,structures[,plan][,prescription_gy]``).
    out : str or path
        The CSV to write (``AUDIT.csv``); its store is ``AUDIT.h5``.
    settings : AuditSettings, optional
        Metrics, conventions, tolerance and sampling.
    workers : int, optional
        Local worker processes (default: one per CPU core).
    backend : str or Backend, optional
        The backend.
    cases : iterable of Case, optional
        The cases, instead of reading ``source``.
    client : distributed.Client, optional
        Run on this Dask cluster.
    on_result, on_progress : callable, optional
        As for :func:`isodose.run_cohort`.

    Returns
    -------
    RunSummary
        Cases, skipped, processed, failed, seconds, the store and the CSV.

    Raises
    ------
    IsodoseError
        For a folder or manifest that holds nothing to audit, or a store that cannot be opened (another run
        writing it, other settings). A case that fails is recorded with its error and never raises.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from isodose.dicom.write import write_example_case
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_example_case(folder / "P1", with_dvhs=True)
    >>> summary = run_audit(folder, folder / "AUDIT.csv", workers=1)
    >>> summary.cases, summary.failed, summary.store.name, summary.table.name
    (1, 0, 'AUDIT.h5', 'AUDIT.csv')
    """
    settings = settings or AuditSettings()
    check_workers(workers)
    out = Path(out)
    if out.suffix.lower() == ".h5":
        raise IsodoseError("give the audit's CSV (AUDIT.csv); its store AUDIT.h5 is written beside it", path=out)
    all_cases = list(cases) if cases is not None else load_audit_cases(source)
    task = functools.partial(audit_case, settings=settings)
    return run_cases(
        all_cases,
        out.with_suffix(".h5"),
        store_settings=settings.as_dict(),
        arrange=lambda todo: per_case_arrangement(todo, task, workers, backend, client),
        on_result=on_result,
        on_progress=on_progress,
        write_table=lambda store: store.write_rows_table(out),
    )


def _median(values: Iterable[float | None]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.median(finite) if finite else None


def _group_summary(rows: Sequence[dict], metrics: Sequence[str]) -> dict[str, Any]:
    """Structures, the share that agree, and the median absolute difference of the summary's values."""
    agreeing = sum(bool(r.get("agrees")) for r in rows)
    out: dict[str, Any] = {
        "structures": len(rows),
        "agree": agreeing,
        "agree_pct": 100.0 * agreeing / len(rows) if rows else None,
    }
    for value in ("volume", "dmean", *metrics):
        key = f"difference_{value}_pct"
        out[f"median_abs_{key}"] = _median(abs(r[key]) if r.get(key) is not None else None for r in rows)
    out["median_dvh_max_difference_pct"] = _median(r.get("dvh_max_difference_pct") for r in rows)
    return out


def archive_summary(store: ResultStore, metrics: Sequence[str] = ("D95",)) -> dict[str, Any]:
    """An audited archive summed up: per convention, all structures, by size class and by ROI name (the share
    that agree, the median differences), and which convention fits the archive.

    Returns
    -------
    dict
        ``cases``, ``failed``, ``skipped_items`` (DVH items that could not be used) and
        ``cases_with_skipped_items``, ``end_caps`` (each: ``all``, ``by_size_class``, ``by_roi``), ``better_end_cap``
        (where several were computed: the one under which more structures agree) and
        ``better_end_cap_structures`` (how many structures each fits better).
    """
    entries = store.cases()
    rows = [r for e in entries for r in e.get("rows", [])]
    caps = list(dict.fromkeys(r["end_cap"] for r in rows))
    from ..audit import SIZE_CLASSES

    skipped = [sum("; skipped" in w for w in e.get("warnings", [])) for e in entries]
    summary: dict[str, Any] = {
        "cases": len(entries),
        "failed": sum(e["status"] != "ok" for e in entries),
        "skipped_items": sum(skipped),
        "cases_with_skipped_items": sum(n > 0 for n in skipped),
        "end_caps": {},
    }
    for cap in caps:
        of_cap = [r for r in rows if r["end_cap"] == cap]
        by_size = {
            label: _group_summary([r for r in of_cap if r["size_class"] == label], metrics)
            for label, _, _ in SIZE_CLASSES
            if any(r["size_class"] == label for r in of_cap)
        }
        names = sorted({r["name"] for r in of_cap}, key=lambda n: (-sum(r["name"] == n for r in of_cap), n))
        by_roi = {name: _group_summary([r for r in of_cap if r["name"] == name], metrics) for name in names}
        summary["end_caps"][cap] = {"all": _group_summary(of_cap, metrics), "by_size_class": by_size, "by_roi": by_roi}
    if len(caps) > 1:
        agree = {cap: summary["end_caps"][cap]["all"]["agree"] for cap in caps}
        counts = {cap: 0 for cap in caps}
        for r in rows:
            if r["end_cap"] == caps[0] and r.get("better_end_cap") in counts:
                counts[r["better_end_cap"]] += 1
        ranked = sorted(caps, key=lambda c: (-agree[c], -counts[c]))
        tie = (agree[ranked[0]], counts[ranked[0]]) == (agree[ranked[1]], counts[ranked[1]])
        summary["better_end_cap"] = None if tie else ranked[0]
        summary["better_end_cap_structures"] = counts
    return summary
