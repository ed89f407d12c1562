"""Auditing a planning system's DVHs: isodose against the DVH Sequence an RTDOSE carries.

Many RTDOSE exports hold the planning system's own DVH of each ROI. :func:`read_dose_dvhs` reads them as
:class:`~isodose.dvh.PlanningSystemDVH` objects (metrics read off their curves with isodose's grammar);
:func:`audit_dvhs` computes isodose's DVH of every ROI the planning system reported, under one sampling convention or
several (end caps ``half`` and ``none``), and compares each with :meth:`isodose.dvh.DVH.compare`; an
:class:`AuditResult` holds the comparisons, says which structures agree within tolerance and which convention fits
the planning system better. :func:`audit_files` does the same from the files, checking first that they belong
together. An archive of exports is audited by :func:`isodose.cohort.audit.run_audit`.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from os import PathLike
from typing import TYPE_CHECKING, Any

from .dispatch import Backend, resolve_backend
from .dvh import DVH, DVHComparison, PlanningSystemDVH, Tolerance, compute_dvhs, parse_metrics
from .errors import IsodoseError, MetricError, collect_warnings
from .formatting import WARNING_SEPARATOR, json_number
from .model import RELATIVE_FRACTION_MAX, DoseGrid, StructureSet
from .voxelize import SamplingOptions

if TYPE_CHECKING:
    from .model import Plan

log = logging.getLogger(__name__)

#: The metrics every audit compares, beside the volume and Dmin, Dmean and Dmax.
AUDIT_METRICS = ("D98", "D95", "D50", "D2")
#: The size classes of an audit's summary: (label, lower bound cc, upper bound cc), by the planning system's volume.
SIZE_CLASSES = (
    ("under 1 cc", 0.0, 1.0),
    ("1-10 cc", 1.0, 10.0),
    ("10-100 cc", 10.0, 100.0),
    ("over 100 cc", 100.0, math.inf),
)
#: The sampling conventions an audit can compare: end caps of half a plane spacing, or none.
END_CAP_CHOICES = ("half", "none", "both")


def size_class(volume_cc: float) -> str:
    """The size class of a structure of ``volume_cc`` (see :data:`SIZE_CLASSES`); "unknown" for NaN.

    >>> size_class(0.74), size_class(12.8), size_class(13944.0)
    ('under 1 cc', '10-100 cc', 'over 100 cc')
    """
    for label, low, high in SIZE_CLASSES:
        if low <= volume_cc < high:
            return label
    return "unknown"


def end_caps_of(choice: str) -> tuple[str, ...]:
    """The end caps an audit computes for ``--end-cap`` ``half``, ``none`` or ``both``."""
    if choice not in END_CAP_CHOICES:
        raise IsodoseError(f"end cap must be one of {', '.join(END_CAP_CHOICES)}, not {choice!r}")
    return ("half", "none") if choice == "both" else (choice,)


def read_dose_dvhs(
    path: str | PathLike[str],
    structures: StructureSet | None = None,
    *,
    prescription_gy: float | None = None,
    relative_reference_gy: float | None = None,
    rois: Sequence[str | int] | None = None,
) -> list[PlanningSystemDVH]:
    """The planning system's DVHs held in an RTDOSE file's DVH Sequence, one per ROI it reported.

    Parameters
    ----------
    path : str or path
        The RTDOSE file.
    structures : StructureSet, optional
        The RTSTRUCT its DVHs refer to: each DVH takes the name of the ROI of its number (else ``ROI <number>``).
    prescription_gy : float, optional
        The plan's prescription: reported Dmin, Dmean and Dmax that fit the curve only as % of it are read so (see
        :class:`~isodose.dvh.PlanningSystemDVH`).
    relative_reference_gy : float, optional
        The 100% of relative DVH doses, where the file gives no DVHNormalizationDoseValue. Whether relative doses
        are fractions or percentages is told once for the file, from all its relative items.
    rois : sequence of str or int, optional
        Only the DVHs of these ROIs of ``structures`` (names or numbers); the others are not read into curves, nor
        warned about.

    Returns
    -------
    list of PlanningSystemDVH
        In the file's order. Items that cannot be used are skipped with a warning naming the item and its ROI.

    Raises
    ------
    DicomReadError
        For a file that is not an RTDOSE, or holds no DVH Sequence.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from isodose.dicom.write import write_example_case
    >>> rd, rs, rp = write_example_case(pathlib.Path(tempfile.mkdtemp()), with_dvhs=True)
    >>> [(d.name, round(d.volume_cc, 2)) for d in read_dose_dvhs(rd)]
    [('ROI 1', 14.21), ('ROI 2', 1.51), ('ROI 3', 0.53)]
    """
    from .dicom.read import read_reported_dvhs

    items = read_reported_dvhs(path)
    if rois and structures is not None:
        wanted = {structures.get(r).number for r in rois}
        items = [item for item in items if item.roi_number in wanted]
    relative = [item for item in items if item.dose_units == "RELATIVE"]
    fractions = (
        max(float((item.bin_widths * item.dose_scaling).sum()) for item in relative) <= RELATIVE_FRACTION_MAX
        if relative
        else None
    )
    out = []
    for reported in items:
        name = None
        if structures is not None:
            named = [s for s in structures.structures if s.number == reported.roi_number]
            if named:
                name = named[0].name
            else:
                log.warning(
                    "%s: %s refers to ROI number %d, which %s does not hold",
                    reported.source,
                    reported.label,
                    reported.roi_number,
                    structures.source or "the structure set",
                )
        try:
            out.append(
                PlanningSystemDVH.from_reported(
                    reported,
                    name,
                    prescription_gy=prescription_gy,
                    relative_reference_gy=relative_reference_gy,
                    relative_fractions=fractions,
                )
            )
        except IsodoseError as exc:
            log.warning("%s; skipped", exc)
    return out


@dataclass(frozen=True)
class StructureAudit:
    """One ROI of an audit: the planning system's DVH, and isodose's against it under each convention.

    Attributes
    ----------
    name : str
        The ROI's name.
    number : int
        Its ROI number.
    tps : PlanningSystemDVH
        The planning system's DVH.
    comparisons : dict of str to DVHComparison
        isodose's DVH against it, by end cap (``half``, ``none``).
    isodose : dict of str to DVH
        isodose's DVH, by end cap.
    warnings : tuple of str
        What was warned about this ROI: its contours, its part outside the dose grid, its planning-system DVH.
    """

    name: str
    number: int | None
    tps: PlanningSystemDVH
    comparisons: dict[str, DVHComparison]
    isodose: dict[str, DVH]
    warnings: tuple[str, ...] = ()

    @property
    def volume_cc(self) -> float:
        """The ROI's volume by the planning system (by isodose where the planning system gives only %)."""
        if math.isfinite(self.tps.volume_cc):
            return self.tps.volume_cc
        return next(iter(self.comparisons.values())).values["volume_cc"] if self.comparisons else math.nan

    @property
    def size_class(self) -> str:
        return size_class(self.volume_cc)

    def agrees(self, end_cap: str | None = None) -> bool:
        """Whether isodose agrees with the planning system under ``end_cap`` (the first computed by default)."""
        return self.comparisons[end_cap or next(iter(self.comparisons))].agrees

    @property
    def better_end_cap(self) -> str | None:
        """The convention that agrees better (fewer values outside tolerance, then the smaller mean difference in
        tolerances); None with one convention, or where they tie."""
        if len(self.comparisons) < 2:
            return None
        ranked = sorted((misfit(c), cap) for cap, c in self.comparisons.items())
        return None if ranked[0][0] == ranked[1][0] else ranked[0][1]

    def to_dict(self) -> dict[str, Any]:
        """The structure as the JSON of ``isodose audit`` holds it (see the audit page of the docs)."""
        out: dict[str, Any] = {"name": self.name, "number": self.number, "size_class": self.size_class}
        if len(self.comparisons) == 1:
            [(cap, comparison)] = self.comparisons.items()
            out["end_cap"] = cap
            out.update(comparison.to_dict())
            out["isodose"]["volume_outside_dose_cc"] = json_number(self.isodose[cap].volume_outside_dose_cc)
        else:
            blocks = {cap: comparison.to_dict() for cap, comparison in self.comparisons.items()}
            out["tps"] = next(iter(blocks.values()))["tps"]
            for cap, block in blocks.items():
                del block["tps"]
                block["isodose"]["volume_outside_dose_cc"] = json_number(self.isodose[cap].volume_outside_dose_cc)
            out["end_caps"] = blocks
            out["better_end_cap"] = self.better_end_cap
        out["warnings"] = list(self.warnings)
        return out

    def rows(self) -> list[dict[str, Any]]:
        """Flat rows, one per convention: what the CSV of an audit holds (keys with units)."""
        rows = []
        for cap, c in self.comparisons.items():
            row: dict[str, Any] = {
                "name": self.name,
                "number": self.number,
                "end_cap": cap,
                "size_class": self.size_class,
            }
            for key in ("volume_cc", "dmin_gy", "dmean_gy", "dmax_gy", *c.metrics):
                stem, unit = _stem_and_unit(key)
                row[f"tps_{stem}{unit}"] = json_number(c.reference[key])
                row[f"isodose_{stem}{unit}"] = json_number(c.values[key])
                row[f"difference_{stem}_pct"] = json_number(c.difference_pct[key])
            row["volume_outside_dose_cc"] = json_number(self.isodose[cap].volume_outside_dose_cc)
            row["dvh_max_difference_pct"] = json_number(c.dvh_max_difference_pct)
            row["dvh_max_difference_at_gy"] = json_number(c.dvh_max_difference_at_gy)
            row["outside_tolerance"] = " ".join(c.outside_tolerance)
            row["agrees"] = c.agrees
            row["better_end_cap"] = self.better_end_cap or ""
            row["warnings"] = WARNING_SEPARATOR.join(self.warnings)
            rows.append(row)
        return rows


def _stem_and_unit(key: str) -> tuple[str, str]:
    """``volume_cc`` -> (``volume``, ``_cc``); a metric's text -> (its text, its unit as a suffix)."""
    for unit in ("_cc", "_gy"):
        if key.endswith(unit):
            return key[: -len(unit)], unit
    from .dvh import parse_metric

    result = parse_metric(key).result_unit
    return key, {"Gy": "_gy", "cc": "_cc", "%": "_pct"}.get(result, "")


def misfit(comparison: DVHComparison) -> tuple[int, float]:
    """How badly a comparison fits: the number of values outside tolerance, then the mean difference in multiples
    of the tolerance (0 when every value is equal)."""
    multiples = []
    tolerance = comparison.tolerance
    for key, within in comparison.within_tolerance.items():
        if within is None:
            continue
        stem, unit = _stem_and_unit(key)
        unit_name = {"_gy": "Gy", "_cc": "cc", "_pct": "%"}.get(unit, "")
        reference = comparison.reference[key]
        allowed = tolerance.percent / 100.0 * max(abs(reference), tolerance.floor(unit_name))
        difference = abs(comparison.values[key] - reference)
        multiples.append(difference / allowed if allowed > 0 else (0.0 if difference == 0 else math.inf))
    return len(comparison.outside_tolerance), (statistics.fmean(multiples) if multiples else 0.0)


@dataclass(frozen=True)
class AuditResult:
    """isodose against a planning system's DVHs, for the ROIs of one RTDOSE (see :func:`audit_dvhs`).

    Attributes
    ----------
    structures : tuple of StructureAudit
        One per ROI the planning system reported and the structure set holds, in the DVH Sequence's order.
    end_caps : tuple of str
        The sampling conventions computed (``half``, ``none``).
    metrics : tuple of str
        The metrics compared beside the volume and Dmin, Dmean and Dmax.
    tolerance : Tolerance
        What agreeing means.
    prescription_gy : float or None
        The prescription given (for V..% metrics, and reported statistics in % of it).
    backend : str
        The backend that computed isodose's DVHs.
    warnings : tuple of str
        What was warned about the case as a whole (the files, the DVH items skipped).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from isodose.dicom.write import write_example_case
    >>> rd, rs, rp = write_example_case(pathlib.Path(tempfile.mkdtemp()), with_dvhs=True)
    >>> result = audit_files(rd, rs, rp, end_caps=("half", "none"))
    >>> result.agrees, result.better_end_cap, result.summary()["end_caps"]["none"]["agree"]
    (True, 'half', 1)
    """

    structures: tuple[StructureAudit, ...]
    end_caps: tuple[str, ...]
    metrics: tuple[str, ...]
    tolerance: Tolerance
    prescription_gy: float | None = None
    backend: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def agrees(self) -> bool:
        """Every structure agrees under the first convention computed."""
        return all(s.agrees() for s in self.structures)

    @property
    def better_end_cap(self) -> str | None:
        """The convention under which more structures agree (then: that more structures fit better); None with one
        convention, or where they tie."""
        if len(self.end_caps) < 2:
            return None
        scores = []
        for cap in self.end_caps:
            agreeing = sum(s.agrees(cap) for s in self.structures)
            better = sum(s.better_end_cap == cap for s in self.structures)
            scores.append(((agreeing, better), cap))
        scores.sort(reverse=True)
        return None if scores[0][0] == scores[1][0] else scores[0][1]

    def summary(self) -> dict[str, Any]:
        """How far isodose is from the planning system overall: per convention, the structures that agree and the
        median difference of each value; and which convention fits better, overall and per structure."""
        by_cap = {}
        for cap in self.end_caps:
            comparisons = [s.comparisons[cap] for s in self.structures]
            agreeing = sum(c.agrees for c in comparisons)
            by_cap[cap] = {
                "structures": len(comparisons),
                "agree": agreeing,
                "agree_pct": json_number(100.0 * agreeing / len(comparisons)) if comparisons else None,
                "median_abs_difference_pct": _median_differences(comparisons),
                "median_dvh_max_difference_pct": json_number(_median([c.dvh_max_difference_pct for c in comparisons])),
            }
        summary: dict[str, Any] = {
            "structures": len(self.structures),
            "tolerance_pct": self.tolerance.percent,
            "end_caps": by_cap,
        }
        if len(self.end_caps) > 1:
            summary["better_end_cap"] = self.better_end_cap
            summary["better_end_cap_by_structure"] = {s.name: s.better_end_cap for s in self.structures}
        return summary

    def to_dict(self) -> dict[str, Any]:
        """``{"structures": [...], "summary": {...}}``, as ``isodose audit --format json`` prints it."""
        return {
            "structures": [s.to_dict() for s in self.structures],
            "summary": self.summary(),
            "metrics": list(self.metrics),
            "prescription_gy": self.prescription_gy,
            "backend": self.backend,
            "warnings": list(self.warnings),
        }

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per structure and convention (the CSV of ``isodose audit``)."""
        return [row for s in self.structures for row in s.rows()]


def _median(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def _median_differences(comparisons: Sequence[DVHComparison]) -> dict[str, float | None]:
    if not comparisons:
        return {}
    keys = list(comparisons[0].difference_pct)
    return {key: json_number(_median(abs(c.difference_pct[key]) for c in comparisons)) for key in keys}


def audit_dvhs(
    dose: DoseGrid,
    structures: StructureSet,
    tps_dvhs: Sequence[PlanningSystemDVH],
    *,
    rois: Sequence[str | int] | None = None,
    metrics: Iterable[str] = (),
    end_caps: Sequence[str] = ("half",),
    tolerance: Tolerance | None = None,
    options: SamplingOptions | None = None,
    backend: str | Backend | None = None,
    prescription_gy: float | None = None,
) -> AuditResult:
    """isodose's DVH of every ROI the planning system reported, against the planning system's.

    Parameters
    ----------
    dose : DoseGrid
        The dose the planning system's DVHs were computed on.
    structures : StructureSet
        The structure set they refer to.
    tps_dvhs : sequence of PlanningSystemDVH
        The planning system's DVHs (:func:`read_dose_dvhs`).
    rois : sequence of str or int, optional
        Only these ROIs (names or numbers; default: every ROI reported).
    metrics : iterable of str
        Metrics compared beside :data:`AUDIT_METRICS`, the volume and Dmin, Dmean and Dmax.
    end_caps : sequence of str
        The conventions to compute isodose's DVHs with (``half``, ``none``, or both).
    tolerance : Tolerance, optional
        What agreeing means (3% by default).
    options : SamplingOptions, optional
        isodose's sampling (its ``end_cap`` is replaced by each of ``end_caps``).
    backend : str or Backend, optional
        The backend.
    prescription_gy : float, optional
        For V..% metrics.

    Returns
    -------
    AuditResult

    Raises
    ------
    RoiNotFoundError
        For a ROI of ``rois`` the planning system did not report.
    MetricError
        For a metric outside the grammar, or one that needs a prescription when none is given.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from isodose.dicom.read import read_dose, read_structures
    >>> from isodose.dicom.write import write_example_case
    >>> rd, rs, rp = write_example_case(pathlib.Path(tempfile.mkdtemp()), with_dvhs=True)
    >>> structures = read_structures(rs)
    >>> result = audit_dvhs(read_dose(rd), structures, read_dose_dvhs(rd, structures))
    >>> [(s.name, s.agrees()) for s in result.structures]
    [('PTV', True), ('Cord', True), ('Recurrence', True)]
    """
    tolerance = tolerance or Tolerance()
    options = options or SamplingOptions()
    chosen = resolve_backend(backend)
    texts = list(dict.fromkeys([*AUDIT_METRICS, *metrics]))
    parsed = parse_metrics(texts)
    for m in parsed:
        if m.needs_prescription and not prescription_gy:
            raise MetricError(
                f"{m.text} needs a prescription: a plan holding one, or the prescription given (--plan or "
                "--prescription for one file; the plan or prescription_gy column of an archive's manifest)",
                obj="metric",
            )
    for cap in end_caps:
        end_caps_of(cap)
    with collect_warnings() as messages:
        reported = list(tps_dvhs)
        if rois:
            wanted = [_reported_roi(reported, structures, r) for r in rois]
            reported = [d for d in reported if d in wanted]
        pairs = []
        for tps in reported:
            matching = [s for s in structures.structures if s.number == tps.number]
            if not matching:
                log.warning(
                    "the planning system's DVH of ROI number %s has no ROI of that number in %s: not compared",
                    tps.number,
                    structures.source or "the structure set",
                )
                continue
            pairs.append((tps, matching[0]))
        computed = {}
        for cap in end_caps:
            cap_options = replace(options, end_cap=cap)
            computed[cap] = compute_dvhs(
                dose, structures, [s.number for _, s in pairs], options=cap_options, backend=chosen
            )
    audited = []
    for k, (tps, structure) in enumerate(pairs):
        notes = list(dict.fromkeys([*tps.warnings, *(w for cap in end_caps for w in computed[cap][k].warnings)]))
        kind = tps.reported.dose_type if tps.reported is not None else ""
        if kind and dose.dose_type and kind != dose.dose_type:
            notes.append(
                f"ROI {structure.name}: the planning system's DVH is of {kind} dose, the dose grid of {dose.dose_type}"
            )
        if tps.relative_volume:
            notes.append(
                f"ROI {structure.name}: the planning system gives its DVH in % of volume; its volume is not compared"
            )
        mine = {cap: computed[cap][k] for cap in end_caps}
        comparisons = {cap: mine[cap].compare(tps, parsed, prescription_gy, tolerance) for cap in end_caps}
        audited.append(
            StructureAudit(
                structure.name, structure.number, replace(tps, name=structure.name), comparisons, mine, tuple(notes)
            )
        )
    shown = {w for s in audited for w in s.warnings}
    return AuditResult(
        tuple(audited),
        tuple(end_caps),
        tuple(texts),
        tolerance,
        prescription_gy,
        chosen.name,
        tuple(m for m in messages if m not in shown),
    )


def _reported_roi(reported: Sequence[PlanningSystemDVH], structures: StructureSet, key: str | int) -> PlanningSystemDVH:
    structure = structures.get(key)
    for d in reported:
        if d.number == structure.number:
            return d
    from .errors import RoiNotFoundError

    raise RoiNotFoundError(
        f"the planning system reported no DVH of ROI {structure.name!r}; it reported: "
        + ", ".join(
            next((s.name for s in structures.structures if s.number == d.number), f"ROI {d.number}") for d in reported
        ),
        path=reported[0].reported.source if reported and reported[0].reported else None,
    )


def audit_files(
    dose: str | PathLike[str],
    structures: str | PathLike[str],
    plan: str | PathLike[str] | None = None,
    *,
    rois: Sequence[str | int] | None = None,
    metrics: Iterable[str] = (),
    end_caps: Sequence[str] = ("half",),
    tolerance: Tolerance | None = None,
    options: SamplingOptions | None = None,
    backend: str | Backend | None = None,
    prescription_gy: float | None = None,
    relative_reference_gy: float | None = None,
    allow_mismatch: bool = False,
) -> AuditResult:
    """:func:`audit_dvhs` from the files: the RTDOSE (its dose and its DVH Sequence), the RTSTRUCT its DVHs refer
    to, and optionally the RTPLAN (for the prescription), checked first to belong together (one patient, the plan
    the dose references, the structure set its DVHs refer to; ``allow_mismatch`` goes on with a warning).

    The warnings logged on the way (pydicom's about the files, the DVH items skipped) are kept in the result.

    Parameters
    ----------
    dose, structures, plan : str or path
        The RTDOSE, the RTSTRUCT, and the RTPLAN (optional: for the prescription).
    rois, metrics, end_caps, tolerance, options, backend, prescription_gy
        As for :func:`audit_dvhs` (the prescription is the plan's unless given).
    relative_reference_gy : float, optional
        The dose of 100% of relative doses (the grid's, and DVHs without DVHNormalizationDoseValue).
    allow_mismatch : bool
        Go on, with a warning, where the files say they do not belong together.

    Returns
    -------
    AuditResult

    Raises
    ------
    IsodoseError
        For files that cannot be read, do not belong together, or an RTDOSE without a DVH Sequence.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from isodose.dicom.write import write_example_case
    >>> rd, rs, rp = write_example_case(pathlib.Path(tempfile.mkdtemp()), with_dvhs=True)
    >>> [(s.name, s.agrees()) for s in audit_files(rd, rs, rp).structures]
    [('PTV', True), ('Cord', True), ('Recurrence', True)]
    """
    from .dicom.read import read_dose, read_plan, read_structures
    from .provenance import check_dvh_structures, check_inputs, check_whole_course

    with collect_warnings() as messages:
        grid = read_dose(dose, relative_reference_gy)
        structure_set = read_structures(structures)
        the_plan: Plan | None = read_plan(plan) if plan else None
        check_inputs(grid, [structure_set], the_plan, allow_mismatch=allow_mismatch)
        check_whole_course(grid, strict=False)
        if prescription_gy is None and the_plan is not None:
            prescription_gy = the_plan.prescription_gy
        tps = read_dose_dvhs(
            dose,
            structure_set,
            prescription_gy=prescription_gy,
            relative_reference_gy=relative_reference_gy,
            rois=rois,
        )
        if tps and tps[0].reported is not None:
            check_dvh_structures(
                tps[0].reported.referenced_structure_set_uid, str(dose), structure_set, allow_mismatch=allow_mismatch
            )
        if not tps and not rois:  # with ROIs asked for, audit_dvhs names the one the planning system did not report
            raise IsodoseError("holds no DVH the audit can use (every item was skipped: see the warnings)", path=dose)
    result = audit_dvhs(
        grid,
        structure_set,
        tps,
        rois=rois,
        metrics=metrics,
        end_caps=end_caps,
        tolerance=tolerance,
        options=options,
        backend=backend,
        prescription_gy=prescription_gy,
    )
    shown = {w for s in result.structures for w in s.warnings}
    kept = [m for m in messages if m not in shown]
    return replace(result, warnings=tuple(dict.fromkeys([*kept, *result.warnings])))
