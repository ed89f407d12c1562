"""Reports of a cohort run: the failure-pattern table, metric summaries and a self-contained HTML report.

The HTML report embeds its figures (matplotlib, PNG in base64) and needs no other file: cohort DVH bands per
structure, the distribution of the share of Vr inside the reference isodose with the class thresholds, and a
per-case table like the published ones.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..dvh import parse_metric
from ..errors import IsodoseError, MetricError
from ..formatting import shown, terminal_safe, text_columns, text_table
from ..recurrence import CLASSES, RECURRENCE_METRICS
from ..uncertainty import CohortUncertainty, cohort_uncertainty
from .statistics import (
    ClassStatistics,
    CrossTable,
    class_statistics,
    compare_across_classes,
    cross_tabulate,
    is_continuous,
    numeric,
    unit_of,
)
from .store import ResultStore

#: Cases whose warnings the text report lists (the HTML report lists them all).
WARNED_CASES_SHOWN = 10
METHODS = (("class_volume", "volume method"), ("class_centroid", "point of origin"))
#: Record keys summarised for the recurrence, besides its metrics.
RECURRENCE_KEYS = ("recurrence_volume_cc", "inside_isodose_pct", "centroid_dose_gy")


@dataclass(frozen=True)
class MetricSummary:
    structure: str
    metric: str
    n: int
    mean: float
    sd: float
    minimum: float
    maximum: float
    unit: str = ""


@dataclass(frozen=True)
class CohortReport:
    store: Path
    settings: dict
    cases: list[dict]
    failed: list[tuple[str, str]]
    patterns: dict[str, dict[str, int]]
    summaries: list[MetricSummary]
    recurrence_roi: str
    table_columns: list[str]
    #: The cases whose results hold warnings (failed ones too), with those warnings.
    warnings: list[tuple[str, list[str]]] = field(default_factory=list)
    #: Under registration uncertainty (where the run asked for it): the cohort's summary by each method.
    uncertainty: dict[str, CohortUncertainty] = field(default_factory=dict)
    #: Every Vr and target metric in each class, by each method (the record key of its class).
    class_stats: dict[str, list[ClassStatistics]] = field(default_factory=dict)
    #: The covariates asked for (``by``), by each method: cross-tables (categorical) or class statistics.
    covariates: dict[str, list[CrossTable | ClassStatistics]] = field(default_factory=dict)
    #: Notes on what the tables show (rows shown once, tests used).
    notes: list[str] = field(default_factory=list)
    #: The recurrence ROIs of the classified cases, each case's own (Vr is labelled by them all).
    recurrence_rois: tuple[str, ...] = ()

    @property
    def n_ok(self) -> int:
        return len(self.cases)


def _cases(n: int, kind: str = "") -> str:
    """``1 case``, ``2 cases``; ``2 more cases`` with ``kind="more"``."""
    return f"{n} {kind + ' ' if kind else ''}case{'' if n == 1 else 's'}"


def _summary(structure: str, metric: str, values: list[float], unit: str = "") -> MetricSummary:
    """The summary of a quantity's finite values; one without any (a target metric whose ROI no case holds, say)
    keeps its row, with n = 0, so that it does not drop out of the report unseen."""
    data = np.array([v for v in values if math.isfinite(v)])
    if not len(data):
        return MetricSummary(structure, metric, 0, math.nan, math.nan, math.nan, math.nan, unit)
    sd = float(np.std(data, ddof=1)) if len(data) > 1 else math.nan
    return MetricSummary(
        structure, metric, len(data), float(data.mean()), sd, float(data.min()), float(data.max()), unit
    )


#: Labels of Vr's record keys in the reports.
VR_LABELS = {
    "recurrence_volume_cc": "volume",
    "inside_isodose_pct": "inside the isodose",
    "centroid_dose_gy": "centroid dose",
}


def vr_label(recurrence_rois: Sequence[str]) -> str:
    """Vr's label in summaries: its ROI name where every case's is the same, else the names of all of them."""
    if len(recurrence_rois) == 1:
        return f"{recurrence_rois[0]} (Vr)"
    shown_names = ", ".join(recurrence_rois[:4]) + (", ..." if len(recurrence_rois) > 4 else "")
    return f"Vr ({shown_names})" if recurrence_rois else "Vr"


def build_report(
    store: ResultStore,
    by: Sequence[str] = (),
    categorical: Sequence[str] = (),
    continuous: Sequence[str] = (),
) -> CohortReport:
    """The report of a store's cases; ``by`` names covariates (manifest columns kept in the records) to compare
    with the classes, detected as categorical or continuous unless named in ``categorical`` or ``continuous``."""
    entries = store.cases()
    ok = [e for e in entries if e["status"] == "ok"]
    failed = [(e["case_id"], e.get("error", "")) for e in entries if e["status"] != "ok"]
    patterns = {key: {c: sum(e["record"].get(key) == c for e in ok) for c in CLASSES} for key, _ in METHODS}
    settings = store.settings
    roi_metrics = list(settings.get("target_metrics", []))
    vr_metrics = list(RECURRENCE_METRICS) + [m for m in settings.get("metrics", []) if m not in RECURRENCE_METRICS]
    recurrence_rois = tuple(sorted({str(e["record"].get("recurrence_roi", "Recurrence")) for e in ok}))
    recurrence_roi = recurrence_rois[0] if len(recurrence_rois) == 1 else "Vr"
    label = vr_label(recurrence_rois)
    notes = []
    criteria = settings.get("criteria", {})
    # V95% (of the prescription) and the share inside the 95% isodose are one number under these criteria, unless
    # part of a Vr lies outside the dose grid: V95% is a share of the part inside it, the share inside the isodose
    # a share of all of Vr.
    partly_outside = sum(1 for e in ok if numeric(e["record"].get("recurrence_outside_dose_cc")) > 0)
    if float(criteria.get("isodose_pct", 95.0)) == 95.0 and "V95%" in vr_metrics:
        if not partly_outside:
            vr_metrics.remove("V95%")
            notes.append(
                "V95% of Vr is the share of Vr inside the 95% isodose under these criteria: shown once, as 'inside "
                "the isodose'."
            )
        else:
            notes.append(
                f"V95% of Vr is a share of the part of Vr inside the dose grid, 'inside the isodose' a share of all of "
                f"Vr: they differ for the {partly_outside} case(s) with part of Vr outside the grid, and both are "
                "shown."
            )
    summaries = []
    quantities: list[tuple[str, str]] = []
    for key in (*RECURRENCE_KEYS, *vr_metrics):
        unit = unit_of(key)
        name = VR_LABELS.get(key, key)
        summaries.append(_summary(label, name, [numeric(e["record"].get(key)) for e in ok], unit))
        quantities.append((f"Vr {name} ({unit})" if unit else f"Vr {name}", key))
    for key in roi_metrics:
        roi, _, metric = key.rpartition(":")
        unit = unit_of(key)
        summaries.append(_summary(roi, metric, [numeric(e["record"].get(key)) for e in ok], unit))
        if ok and not summaries[-1].n:
            notes.append(
                f"{key} has no value in any classified case: the ROI {roi!r} is missing, empty or outside the dose "
                "grid in every case's planning structures (each case's warnings say which)."
            )
        quantities.append((f"{key} ({unit})" if unit else key, key))
    class_stats = {method: class_statistics(ok, quantities, method) for method, _ in METHODS}
    covariate_results: dict[str, list[CrossTable | ClassStatistics]] = {method: [] for method, _ in METHODS}
    known = {k for e in ok for k in e["record"]}
    from .cases import is_result_key

    for column in by:
        if is_result_key(column):
            raise IsodoseError(
                f"--by {column!r} names one of isodose's results; --by takes a column of the manifest (a clinical "
                f"covariate: {', '.join(sorted(_covariate_names(ok))) or 'none in this store'})",
                path=store.path,
            )
        if column not in known:
            raise IsodoseError(
                f"no column {column!r} in the cases' records (a manifest's own columns are kept: "
                f"{', '.join(sorted(_covariate_names(ok))) or 'none in this store'})",
                path=store.path,
            )
        values = [str(e["record"].get(column, "")) for e in ok]
        continuous_column = column in continuous or (column not in categorical and is_continuous(values))
        for method, _ in METHODS:
            covariate_results[method].append(
                compare_across_classes(ok, column, method) if continuous_column else cross_tabulate(ok, column, method)
            )
    if by:
        notes.append(
            "Categorical columns against the classes: Pearson's chi-square where every expected count is at least 5, "
            "else Fisher's exact test; continuous columns and every metric across the classes: Kruskal-Wallis "
            "(scipy.stats)."
        )
    columns = [
        "case_id",
        *roi_metrics,
        "recurrence_volume_cc",
        "V95%",
        "D100",
        "inside_isodose_pct",
        "class_volume",
        "class_centroid",
    ]
    if "V95%" not in vr_metrics:  # one number with the share inside under these criteria: shown once
        columns.remove("V95%")
    warnings = [(e["case_id"], list(e.get("warnings") or [])) for e in entries if e.get("warnings")]
    uncertainty = _uncertainty(ok, settings)
    if uncertainty:
        columns += ["p_volume_in_field_pct", "class_volume_stable"]
    return CohortReport(
        store.path,
        settings,
        ok,
        failed,
        patterns,
        summaries,
        recurrence_roi,
        columns,
        warnings,
        uncertainty,
        class_stats,
        {m: v for m, v in covariate_results.items() if v},
        notes,
        recurrence_rois,
    )


def _covariate_names(ok: list[dict]) -> set[str]:
    from .cases import is_result_key

    return {k for e in ok for k in e["record"] if not is_result_key(k)}


def _uncertainty(ok: list[dict], settings: dict) -> dict[str, CohortUncertainty]:
    """The cohort's classes under uncertainty, by each method, from the cases' probabilities."""
    drawn = [e for e in ok if "p_volume_in_field_pct" in e["record"]]
    if not drawn:
        return {}
    seed = int(settings.get("uncertainty", {}).get("seed", 0))
    out = {}
    for method in ("volume", "centroid"):
        probabilities = np.array(
            [[numeric(e["record"].get(f"p_{method}_{c.replace('-', '_')}_pct")) for c in CLASSES] for e in drawn]
        )
        stable = [bool(e["record"].get(f"class_{method}_stable")) for e in drawn]
        out[method] = cohort_uncertainty(
            [e["case_id"] for e in drawn], np.nan_to_num(probabilities), stable, method=method, seed=seed
        )
    return out


def uncertainty_rows(report: CohortReport) -> list[list[str]]:
    """Per class: the expected count and the 95% interval of its share, by each method."""
    rows = []
    for c in CLASSES:
        row = [c]
        for method in ("volume", "centroid"):
            summary = report.uncertainty[method]
            low, high = summary.share_interval_pct[c]
            share = 100.0 * summary.expected_counts[c] / summary.cases if summary.cases else math.nan
            row.append(f"{summary.expected_counts[c]:.1f} cases, {share:.1f}% (95% interval {low:.1f}-{high:.1f}%)")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------------
def pattern_rows(report: CohortReport) -> list[list[str]]:
    n = report.n_ok
    rows = []
    for c in CLASSES:
        row = [c]
        for key, _ in METHODS:
            count = report.patterns[key][c]
            row.append(f"{count} ({100 * count / n:.1f}%)" if n else "0")
        rows.append(row)
    return rows


SUMMARY_HEADER = ["structure", "metric", "unit", "n", "mean", "SD", "min", "max"]


def summary_rows(report: CohortReport) -> list[list[str]]:
    return [
        [s.structure, s.metric, s.unit, str(s.n), shown(s.mean), shown(s.sd), shown(s.minimum), shown(s.maximum)]
        for s in report.summaries
    ]


CLASS_HEADER = ["quantity", "class", "n", "mean ± SD", "median [IQR]", "range", "p (Kruskal-Wallis)"]


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def class_rows(statistics: Sequence[ClassStatistics]) -> list[list[str]]:
    """Each quantity's rows, one per class with cases, its p-value on its first row."""
    rows = []
    for s in statistics:
        first = True
        for c in CLASSES:
            d = s.by_class[c]
            if not d.n:
                continue
            rows.append([s.label if first else "", c, *d.cells(), _p(s.p_value) if first else ""])
            first = False
    return rows


def cross_rows(table: CrossTable) -> tuple[list[str], list[list[str]]]:
    header = [table.column, *CLASSES, "cases"]
    rows = [
        [category, *(str(int(n)) for n in table.counts[k]), str(int(table.counts[k].sum()))]
        for k, category in enumerate(table.categories)
    ]
    if table.missing:
        rows.append(["(no value)", *([""] * len(CLASSES)), str(table.missing)])
    return header, rows


def _p_text(value: float) -> str:
    """``p = 0.123``, or ``p < 0.001``."""
    text = _p(value)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def covariate_parts(report: CohortReport) -> list[tuple[str, list[str], list[list[str]], str]]:
    """``(title, header, rows, test line)`` of each covariate by each method."""
    parts = []
    for method, label in METHODS:
        for result in report.covariates.get(method, []):
            if isinstance(result, CrossTable):
                header, rows = cross_rows(result)
                test = f"{result.test}: {_p_text(result.p_value)}" if result.test else "no test (one row or column)"
                if result.missing:
                    test += f"; {result.missing} case(s) without a value left out"
                parts.append((f"{result.column} by class ({label})", header, rows, test))
            else:
                counted = sum(d.n for d in result.by_class.values())
                classified = sum(report.patterns[method].values())
                test = f"Kruskal-Wallis: {_p_text(result.p_value)}"
                if classified > counted:
                    test += f"; {classified - counted} case(s) without a value left out"
                parts.append((f"{result.label} by class ({label})", CLASS_HEADER, class_rows([result]), test))
    return parts


def format_text(report: CohortReport) -> str:
    parts = [
        f"{report.store}: {_cases(report.n_ok + len(report.failed))}, {report.n_ok} classified, "
        f"{len(report.failed)} failed",
        "",
    ]
    parts.append("Failure patterns")
    parts.append(text_table(["class", *(label for _, label in METHODS)], pattern_rows(report)))
    parts += ["", "Metric summaries (mean, SD, range over the classified cases)"]
    parts.append(text_table(SUMMARY_HEADER, summary_rows(report)))
    for method, label in METHODS:
        if report.class_stats.get(method) and report.n_ok:
            parts += ["", f"By class ({label}): n, mean ± SD, median [interquartile range], range"]
            parts.append(text_table(CLASS_HEADER, class_rows(report.class_stats[method])))
    for title, header, rows, test in covariate_parts(report):
        parts += ["", title, text_table(header, rows), test]
    if report.notes:
        parts += [""] + [f"Note: {note}" for note in report.notes]
    if report.uncertainty:
        volume = report.uncertainty["volume"]
        parts += [
            "",
            f"Under registration uncertainty ({_cases(volume.cases)}): expected count of each class (95% interval of "
            "its share, from the cases' uncertainty and the cohort's sampling)",
        ]
        parts.append(text_table(["class", "volume method", "point of origin"], uncertainty_rows(report)))
        parts.append(
            f"unstable cases (volume method): {len(volume.unstable)}"
            + (f": {terminal_safe(', '.join(volume.unstable[:20]))}" if volume.unstable else "")
            + (" ..." if len(volume.unstable) > 20 else "")
        )
    if report.failed:
        parts += ["", "Failed cases"]
        parts += [f"  {terminal_safe(case_id)}: {terminal_safe(error)}" for case_id, error in report.failed]
    if report.warnings:
        parts += ["", f"Warnings ({_cases(len(report.warnings))}; all of them in the HTML report and the table)"]
        for case_id, messages in report.warnings[:WARNED_CASES_SHOWN]:
            parts += [f"  {terminal_safe(case_id)}: {terminal_safe(message)}" for message in messages]
        if len(report.warnings) > WARNED_CASES_SHOWN:
            parts.append(f"  ... and {_cases(len(report.warnings) - WARNED_CASES_SHOWN, 'more')}")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------
def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


#: The colours of the classes in the figures.
CLASS_COLOURS = {"in-field": "#238b45", "marginal": "#fe9929", "out-field": "#cb181d"}


def _relative_curves(curves: list[dict], doses: np.ndarray) -> np.ndarray:
    relative = []
    for c in curves:
        values = np.asarray(c["cumulative_cc"], dtype=np.float64)
        if not len(values) or values[0] <= 0:
            continue
        own = c["step_gy"] * np.arange(len(values))
        relative.append(100.0 * np.interp(doses, own, values, right=0.0) / values[0])
    return np.array(relative).reshape(-1, len(doses))


def _mark_levels(axis, levels: Sequence[tuple[float, str]]) -> None:
    """The prescription and the reference isodose as dashed vertical lines, labelled."""
    for (dose, text), style in zip(levels, ("--", ":")):
        if math.isfinite(dose):
            axis.axvline(dose, color="#333333", ls=style, lw=1.1, label=text.strip())


def _vr_bands_figure(curves_by_class: dict[str, list[dict]], label: str, levels):
    """Vr's DVH bands, one per class (median and interquartile band), with the prescription and isodose marked."""
    import matplotlib.pyplot as plt

    every = [c for curves in curves_by_class.values() for c in curves]
    step = min(c["step_gy"] for c in every)
    top = max(c["step_gy"] * (len(c["cumulative_cc"]) - 1) for c in every)
    doses = np.arange(0.0, top + step, step)
    figure, axis = plt.subplots(figsize=(6.2, 3.6))
    for c in CLASSES:
        pct = _relative_curves(curves_by_class.get(c, []), doses)
        if not len(pct):
            continue
        p25, p50, p75 = np.percentile(pct, [25, 50, 75], axis=0)
        colour = CLASS_COLOURS[c]
        axis.fill_between(doses, p25, p75, color=colour, alpha=0.25, linewidth=0)
        axis.plot(doses, p50, color=colour, lw=1.8, label=f"{c} ({len(pct)}): median, IQR")
    _mark_levels(axis, levels)
    axis.set(xlabel="dose (Gy)", ylabel="volume (%)", title=f"{label}, by class (volume method)", ylim=(0, 108))
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left")
    return figure


def _dvh_band_figure(curves: list[dict], roi: str, levels=()):
    import matplotlib.pyplot as plt

    step = min(c["step_gy"] for c in curves)
    top = max(c["step_gy"] * (len(c["cumulative_cc"]) - 1) for c in curves)
    doses = np.arange(0.0, top + step, step)
    curves_pct = _relative_curves(curves, doses)
    figure, axis = plt.subplots(figsize=(6.2, 3.4))
    p5, p25, p50, p75, p95 = np.percentile(curves_pct, [5, 25, 50, 75, 95], axis=0)
    axis.fill_between(doses, p5, p95, color="#9ecae1", alpha=0.6, label="5th-95th percentile")
    axis.fill_between(doses, p25, p75, color="#4292c6", alpha=0.7, label="25th-75th percentile")
    axis.plot(doses, p50, color="#08306b", lw=1.5, label="median")
    _mark_levels(axis, levels)
    axis.set(xlabel="dose (Gy)", ylabel="volume (%)", title=f"{roi}: {_cases(len(curves_pct))}", ylim=(0, 108))
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left")
    return figure


def _inside_figure(values: list[float], criteria: dict):
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.2, 3.2))
    axis.hist(
        np.clip([v for v in values if math.isfinite(v)], 0.0, 100.0),  # every case in a bin, 100% in the last
        bins=list(np.linspace(0, 100, 41)),
        color="#6a51a3",
        edgecolor="white",
    )
    top = axis.get_ylim()[1] * 0.95
    for threshold, text, align in (
        (criteria["marginal_pct"], " marginal from {:g}%", "left"),
        (criteria["in_field_pct"], "in-field from {:g}% ", "right"),
    ):
        axis.axvline(threshold, color="#cb181d", ls="--", lw=1.2)
        axis.text(threshold, top, text.format(threshold), color="#cb181d", fontsize=8, va="top", ha=align)
    axis.set(
        xlabel=f"share of Vr inside the {criteria['isodose_pct']:g}% isodose (%)",
        ylabel="cases",
        title="Where recurrences lay in the planned dose",
    )
    axis.grid(alpha=0.3, axis="y")
    from matplotlib.ticker import MaxNLocator

    axis.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of cases
    return figure


def _probability_figure(cases: list[dict]):
    """Each case's class probabilities by the volume method, as stacked bars, the cases sorted by their share of
    Vr inside the isodose."""
    import matplotlib.pyplot as plt

    drawn = sorted(
        (e for e in cases if "p_volume_in_field_pct" in e["record"]),
        key=lambda e: numeric(e["record"].get("inside_isodose_pct")),
    )
    figure, axis = plt.subplots(figsize=(10.0, 3.4))
    x = np.arange(len(drawn))
    bottom = np.zeros(len(drawn))
    for c, colour in zip(CLASSES, ("#238b45", "#fe9929", "#cb181d")):
        values = np.array([numeric(e["record"].get(f"p_volume_{c.replace('-', '_')}_pct")) for e in drawn])
        axis.bar(x, values, bottom=bottom, width=1.0, color=colour, label=c, linewidth=0)
        bottom += np.nan_to_num(values)
    unstable = [k for k, e in enumerate(drawn) if not e["record"].get("class_volume_stable")]
    if unstable:
        axis.plot(unstable, [103] * len(unstable), "v", color="#222222", ms=4, label="unstable")
    axis.set(
        xlabel="case number, the cases sorted by their share of Vr inside the isodose",
        ylabel="probability (%)",
        ylim=(0, 108),
        xlim=(-0.5, len(drawn) - 0.5),
        title="Class by the volume method under registration uncertainty",
    )
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4, frameon=False)
    return figure


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    """A table whose columns of words (classes, errors, warnings, names) read from the left, header and cells alike,
    and whose columns of numbers read from the right (see :func:`isodose.formatting.text_columns`)."""
    left = text_columns(rows, len(header))

    def cell(tag: str, text: str, words: bool) -> str:
        return f'<{tag} class="text">{html.escape(text)}</{tag}>' if words else f"<{tag}>{html.escape(text)}</{tag}>"

    head = "".join(cell("th", h, words) for h, words in zip(header, left))
    body = "".join("<tr>" + "".join(cell("td", c, w) for c, w in zip(row, left)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def describe_settings(settings: dict) -> str:
    criteria = settings.get("criteria", {})
    parts = [
        f"reference isodose {criteria.get('isodose_pct', 95):g}% of the prescription",
        f"in-field from {criteria.get('in_field_pct', 95):g}% of Vr inside it, marginal from "
        f"{criteria.get('marginal_pct', 20):g}%",
        "targets: " + (", ".join(settings["targets"]) if settings.get("targets") else "every GTV, CTV and PTV"),
    ]
    if settings.get("target_metrics"):
        parts.append("target metrics: " + ", ".join(settings["target_metrics"]))
    if settings.get("metrics"):
        parts.append("extra Vr metrics: " + ", ".join(settings["metrics"]))
    return "; ".join(parts)


def _file_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text).strip("_") or "figure"


def _levels(report: CohortReport) -> list[tuple[float, str]]:
    """The prescription and reference isodose to mark on the DVH plots: the cases' own where they share them,
    else their medians."""
    marks = []
    for key, name in (("prescription_gy", "prescription"), ("isodose_gy", "isodose")):
        values = sorted({v for e in report.cases if math.isfinite(v := numeric(e["record"].get(key)))})
        if values:
            median = float(np.median(values))
            marks.append((median, f"{name} {median:g} Gy " if len(values) == 1 else f"median {name} {median:g} Gy "))
    return marks


#: Font sizes of the report's figures: readable when a 6-inch figure is printed at a column's width (3.5 in).
#: Names (ROIs, case ids) are plotted as plain text: ``$...$`` in a name is not TeX (mathtext would fail on an
#: invalid pair, and render a valid one as math).
FIGURE_FONTS: dict = {
    "font.size": 12,
    "axes.titlesize": 12,
    "axes.labelsize": 12,
    "legend.fontsize": 10,
    "text.parse_math": False,
}


def curves_by_figure(
    report: CohortReport, curves: Sequence[dict]
) -> tuple[dict[str, list[dict]], dict[tuple[str, str], list[dict]]]:
    """The classified cases' stored curves as the report's DVH figures take them: every case's Vr by its class, and
    each other ROI's curves by ROI, but those of an ROI asked only for its volume (which keeps none, though a store of
    an earlier version may hold some). A case whose Vr is itself the planning ROI of a target metric (not mapped from
    another frame) stores that curve once, as Vr's: it counts in that ROI's figure too."""
    ok = {e["case_id"]: e for e in report.cases}
    target_rois, with_dose = set(), set()
    for text in report.settings.get("target_metrics", []):
        roi, _, metric = str(text).strip().rpartition(":")
        target_rois.add(roi.strip().casefold())
        try:
            needs_dose = parse_metric(metric).needs_dose
        except MetricError:  # a metric this version does not know: its ROI's curves are drawn, as they were
            needs_dose = True
        if needs_dose:
            with_dose.add(roi.strip().casefold())
    volume_only = target_rois - with_dose
    # A case whose planning ROI has a curve of its own (its recurrence, named alike, came from elsewhere).
    own_roi_curve = {(c["case_id"], str(c["roi"]).casefold()) for c in curves if c["role"] != "recurrence"}
    vr_by_class: dict[str, list[dict]] = defaultdict(list)
    by_roi: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for curve in curves:
        entry = ok.get(curve["case_id"])
        if entry is None:
            continue
        if curve["role"] == "recurrence":  # every case's Vr, whatever its ROI's name, in the band of its class
            vr_by_class[str(entry["record"].get("class_volume"))].append(curve)
            roi = str(curve["roi"]).casefold()
            if (
                not entry["record"].get("recurrence_registered")
                and roi in target_rois
                and roi not in volume_only
                and (curve["case_id"], roi) not in own_roi_curve
            ):
                by_roi[("roi", curve["roi"])].append(curve)
        elif str(curve["roi"]).casefold() not in volume_only:
            by_roi[(curve["role"], curve["roi"])].append(curve)
    return vr_by_class, by_roi


def write_html(report: CohortReport, store: ResultStore, path: str | Path, figures: str | Path | None = None) -> Path:
    """Write the self-contained HTML report; with ``figures``, each figure also as SVG and as a 300-dpi PNG there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(FIGURE_FONTS):
        return _write_html(report, store, Path(path), figures)


def _write_html(report: CohortReport, store: ResultStore, path: Path, figures: str | Path | None) -> Path:
    import matplotlib.pyplot as plt

    figure_dir = Path(figures) if figures is not None else None
    if figure_dir is not None:
        figure_dir.mkdir(parents=True, exist_ok=True)

    def emit(figure, name: str, alt: str) -> str:
        if figure_dir is not None:
            figure.savefig(figure_dir / f"{_file_name(name)}.svg", bbox_inches="tight")
            figure.savefig(figure_dir / f"{_file_name(name)}.png", dpi=300, bbox_inches="tight")
        image = f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(figure)}">'
        plt.close(figure)
        return image

    criteria = report.settings.get("criteria", {"isodose_pct": 95.0, "in_field_pct": 95.0, "marginal_pct": 20.0})
    sections = []
    inside = [numeric(e["record"].get("inside_isodose_pct")) for e in report.cases]
    if any(math.isfinite(v) for v in inside):
        figure = _inside_figure(inside, criteria)
        sections.append(emit(figure, "inside_isodose", "distribution of Vr inside the isodose"))
    else:
        sections.append('<p class="empty">No case was classified: there is no distribution to show.</p>')
    vr_by_class, by_roi = curves_by_figure(report, store.dvh_curves())
    levels = _levels(report)
    dvh_images = []
    label = vr_label(report.recurrence_rois)
    if vr_by_class:
        dvh_images.append(
            emit(_vr_bands_figure(vr_by_class, label, levels), "dvh_vr_by_class", f"DVH bands of {label}")
        )
    for (_, roi), curves in sorted(by_roi.items(), key=lambda item: item[0][1]):
        dvh_images.append(emit(_dvh_band_figure(curves, roi, levels), f"dvh_{roi}", f"DVH band of {roi}"))
    if not dvh_images:
        dvh_images.append('<p class="empty">No DVH curves were stored for the classified cases.</p>')
    pattern_table = _html_table(["class", *(label for _, label in METHODS)], pattern_rows(report))
    summary_table = _html_table(SUMMARY_HEADER, summary_rows(report))
    class_tables = "".join(
        f"<h3>By class ({method_label})</h3>" + _html_table(CLASS_HEADER, class_rows(report.class_stats[method]))
        for method, method_label in METHODS
        if report.class_stats.get(method) and report.n_ok
    )
    covariate_tables = "".join(
        f'<h3>{html.escape(title)}</h3>{_html_table(header, rows)}<p class="small">{html.escape(test)}</p>'
        for title, header, rows, test in covariate_parts(report)
    )
    notes = "".join(f'<p class="small">Note: {html.escape(note)}</p>' for note in report.notes)
    case_rows = [
        [shown(e["record"].get(c, e["case_id"] if c == "case_id" else None)) for c in report.table_columns]
        for e in report.cases
    ]
    headers = [
        {
            "recurrence_volume_cc": "Vr volume (cc)",
            "V95%": "V95% of Vr (%)",
            "D100": "D100 of Vr (Gy)",
            "inside_isodose_pct": "Vr inside isodose (%)",
            "class_volume": "class (volume)",
            "class_centroid": "class (point of origin)",
            "case_id": "case",
            "p_volume_in_field_pct": "P in-field (%)",
            "class_volume_stable": "stable",
        }.get(c, f"{c} ({unit_of(c)})" if ":" in c and unit_of(c) else c)  # a target metric with its unit
        for c in report.table_columns
    ]
    uncertainty_section = ""
    if report.uncertainty:
        image = emit(_probability_figure(report.cases), "class_probabilities", "class probabilities of each case")
        volume = report.uncertainty["volume"]
        unstable = (
            _html_table(
                ["case", "P in-field %", "P marginal %", "P out-field %", "Vr inside isodose %"],
                [
                    [
                        e["case_id"],
                        *(shown(e["record"].get(f"p_volume_{c.replace('-', '_')}_pct"), 1) for c in CLASSES),
                        shown(e["record"].get("inside_isodose_pct"), 1),
                    ]
                    for e in report.cases
                    if e["case_id"] in set(volume.unstable)
                ],
            )
            if volume.unstable
            else "<p>None.</p>"
        )
        u = report.settings.get("uncertainty", {})
        uncertainty_section = f"""<h2>Under registration uncertainty</h2>
<p class="small">{u.get("draws")} draws per case of rigid errors (translation SD {u.get("translation_sd_mm")} mm,
rotation SD {u.get("rotation_sd_deg")} degrees, seed {u.get("seed")}). Expected count of each class, and the 95%
interval of its share from a two-level bootstrap (cases resampled, each case's class drawn from its
probabilities). A class is stable when it holds at least {u.get("stable_pct")}% of a case's draws.</p>
{_html_table(["class", "volume method", "point of origin"], uncertainty_rows(report))}
{image}
<h3>Unstable cases (volume method): {len(volume.unstable)}</h3>
{unstable}
"""
    failed = _html_table(["case", "error"], [[c, e] for c, e in report.failed]) if report.failed else "<p>None.</p>"
    warned = (
        _html_table(["case", "warning"], [[c, m] for c, messages in report.warnings for m in messages])
        if report.warnings
        else "<p>None.</p>"
    )
    settings = html.escape(describe_settings(report.settings))
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>isodose cohort report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th.text, td.text {{ text-align: left; }}
th {{ background: #f0f0f0; }}
img {{ max-width: 100%; margin: 0.3em; }}
.grid {{ display: flex; flex-wrap: wrap; }}
.grid img {{ width: 48%; }}
.small {{ color: #666; font-size: 0.85em; }}
.empty {{ color: #444; font-style: italic; padding: 1em; border: 1px dashed #bbb; }}
</style></head><body>
<h1>Recurrence failure patterns</h1>
<p class="small">{html.escape(str(report.store))}: {_cases(report.n_ok + len(report.failed))}, {report.n_ok} classified,
{len(report.failed)} failed. isodose {__version__}, {time.strftime("%Y-%m-%d %H:%M")}. Settings: {settings}.</p>
<h2>Failure patterns</h2>
{pattern_table}
{sections[0]}
{uncertainty_section}
<h2>Cohort DVHs</h2>
<p class="small">Cumulative DVHs (% of each structure's volume inside the dose grid). Vr: the median and
interquartile band of each class. Each other structure: median, 25th-75th and 5th-95th percentiles over the
classified cases (an ROI asked only for its volume has no DVH). Dashed: the prescription; dotted: the reference
isodose.</p>
<div class="grid">{"".join(dvh_images)}</div>
<h2>Metric summaries</h2>
{summary_table}
{class_tables}
{covariate_tables}
{notes}
<h2>Cases</h2>
{_html_table(headers, case_rows)}
<h2>Failed cases</h2>
{failed}
<h2>Warnings</h2>
{warned}
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------
# An audit of a planning system's DVHs, as HTML
# --------------------------------------------------------------------------------------------------------
#: ROIs whose curves an audit's HTML draws at most (the table lists them all).
AUDIT_FIGURES = 60
_CAP_COLOURS = {"half": "#2171b5", "none": "#cb181d"}
_CAP_STYLES = {"half": "--", "none": ":"}


def _audit_figure(structure):
    """The planning system's cumulative DVH of one ROI and isodose's under each convention, in cc (in % where the
    planning system gives %)."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.2, 3.0))
    tps = structure.tps
    relative = tps.relative_volume  # the planning system gives %: so is every curve; else cc, where volumes differ
    curves = [("planning system", tps, "#222222", "-", 2.2)]
    curves += [
        (f"isodose, end caps {cap}", d, _CAP_COLOURS.get(cap, "#6a51a3"), _CAP_STYLES.get(cap, "-."), 1.6)
        for cap, d in structure.isodose.items()
    ]
    top = max((d.dmax_gy for _, d, _, _, _ in curves if d.has_dose), default=1.0)
    doses = np.linspace(0.0, top * 1.03 if top > 0 else 1.0, 600)
    for label, dvh, colour, style, width in curves:
        if dvh.has_dose:
            axis.plot(doses, dvh.cumulative(doses, relative=relative), color=colour, ls=style, lw=width, label=label)
    verdict = ", ".join(f"{cap}: {'agrees' if c.agrees else 'differs'}" for cap, c in structure.comparisons.items())
    unit = "volume (%)" if relative else "volume (cc)"
    axis.set(xlabel="dose (Gy)", ylabel=unit, title=f"{structure.name} ({verdict})")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower left")
    return figure


def write_audit_html(result, path: str | Path, title: str = "isodose against the planning system") -> Path:
    """Write an audit (:class:`isodose.audit.AuditResult`) as a self-contained HTML page: the curves of each ROI
    (the planning system's and isodose's) and the table of values and differences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    images = []
    for structure in result.structures[:AUDIT_FIGURES]:
        with plt.rc_context({"text.parse_math": False}):  # ROI names as plain text, never TeX
            figure = _audit_figure(structure)
        images.append(f'<img alt="DVHs of {html.escape(structure.name)}" src="data:image/png;base64,{_png(figure)}">')
        plt.close(figure)
    header = ["ROI", "end cap", "size", "value", "planning system", "isodose", "difference %", "within"]
    rows = []
    for s in result.structures:
        for cap, c in s.comparisons.items():
            for key in c.within_tolerance:
                within = c.within_tolerance[key]
                rows.append(
                    [
                        s.name,
                        cap,
                        s.size_class,
                        key,
                        shown(c.reference[key], 3),
                        shown(c.values[key], 3),
                        shown(c.difference_pct[key], 2),
                        "-" if within is None else ("yes" if within else "NO"),
                    ]
                )
            rows.append(
                [s.name, cap, s.size_class, "max DVH gap (% of volume)", "", "", shown(c.dvh_max_difference_pct, 2), ""]
            )
    summary = result.summary()
    lines = [
        f"{block['agree']} of {block['structures']} structures agree within {result.tolerance.percent:g}% "
        f"with end caps {cap}"
        for cap, block in summary["end_caps"].items()
    ]
    if "better_end_cap" in summary:
        lines.append(f"better convention: {summary['better_end_cap'] or 'neither'}")
    warned = (
        _html_table(["warning"], [[w] for w in [*result.warnings, *(w for s in result.structures for w in s.warnings)]])
        if result.warnings or any(s.warnings for s in result.structures)
        else "<p>None.</p>"
    )
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th.text, td.text {{ text-align: left; }}
th {{ background: #f0f0f0; }}
img {{ max-width: 100%; margin: 0.3em; }}
.grid {{ display: flex; flex-wrap: wrap; }}
.grid img {{ width: 48%; }}
.small {{ color: #666; font-size: 0.85em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="small">isodose {__version__} on {html.escape(result.backend)}, {time.strftime("%Y-%m-%d %H:%M")}. A value
agrees when it is within {result.tolerance.percent:g}% of the planning system's (doses judged against at least
{result.tolerance.dose_floor_gy:g} Gy, volumes against at least {result.tolerance.volume_floor_cc:g} cc).</p>
<h2>Summary</h2>
<p>{"<br>".join(html.escape(line) for line in lines)}</p>
<h2>Cumulative DVHs</h2>
<div class="grid">{"".join(images)}</div>
<h2>Values</h2>
{_html_table(header, rows)}
<h2>Warnings</h2>
{warned}
</body></html>
"""
    path.write_text(document, encoding="utf-8")
    return path
