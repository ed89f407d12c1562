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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..formatting import shown, text_table
from ..recurrence import CLASSES, RECURRENCE_METRICS
from ..uncertainty import CohortUncertainty, cohort_uncertainty
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

    @property
    def n_ok(self) -> int:
        return len(self.cases)


def _numeric(value) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _summary(structure: str, metric: str, values: list[float]) -> MetricSummary | None:
    data = np.array([v for v in values if math.isfinite(v)])
    if not len(data):
        return None
    sd = float(np.std(data, ddof=1)) if len(data) > 1 else math.nan
    return MetricSummary(structure, metric, len(data), float(data.mean()), sd, float(data.min()), float(data.max()))


def build_report(store: ResultStore) -> CohortReport:
    entries = store.cases()
    ok = [e for e in entries if e["status"] == "ok"]
    failed = [(e["case_id"], e.get("error", "")) for e in entries if e["status"] != "ok"]
    patterns = {key: {c: sum(e["record"].get(key) == c for e in ok) for c in CLASSES} for key, _ in METHODS}
    settings = store.settings
    roi_metrics = list(settings.get("target_metrics", []))
    vr_metrics = list(RECURRENCE_METRICS) + [m for m in settings.get("metrics", []) if m not in RECURRENCE_METRICS]
    recurrence_roi = ok[0]["record"].get("recurrence_roi", "Recurrence") if ok else "Recurrence"
    summaries = []
    for key in (*RECURRENCE_KEYS, *vr_metrics):
        s = _summary(f"{recurrence_roi} (Vr)", key, [_numeric(e["record"].get(key)) for e in ok])
        if s:
            summaries.append(s)
    for key in roi_metrics:
        roi, _, metric = key.rpartition(":")
        s = _summary(roi, metric, [_numeric(e["record"].get(key)) for e in ok])
        if s:
            summaries.append(s)
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
    warnings = [(e["case_id"], list(e.get("warnings") or [])) for e in entries if e.get("warnings")]
    uncertainty = _uncertainty(ok, settings)
    if uncertainty:
        columns += ["p_volume_in_field_pct", "class_volume_stable"]
    return CohortReport(
        store.path, settings, ok, failed, patterns, summaries, recurrence_roi, columns, warnings, uncertainty
    )


def _uncertainty(ok: list[dict], settings: dict) -> dict[str, CohortUncertainty]:
    """The cohort's classes under uncertainty, by each method, from the cases' probabilities."""
    drawn = [e for e in ok if "p_volume_in_field_pct" in e["record"]]
    if not drawn:
        return {}
    seed = int(settings.get("uncertainty", {}).get("seed", 0))
    out = {}
    for method in ("volume", "centroid"):
        probabilities = np.array(
            [[_numeric(e["record"].get(f"p_{method}_{c.replace('-', '_')}_pct")) for c in CLASSES] for e in drawn]
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
            row.append(f"{summary.expected_counts[c]:.1f} ({low:.1f}-{high:.1f}%)")
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


def format_text(report: CohortReport) -> str:
    parts = [
        f"{report.store}: {report.n_ok + len(report.failed)} cases, {report.n_ok} classified, "
        f"{len(report.failed)} failed",
        "",
    ]
    parts.append("Failure patterns")
    parts.append(text_table(["class", *(label for _, label in METHODS)], pattern_rows(report)))
    parts += ["", "Metric summaries (mean, SD, range over the classified cases)"]
    parts.append(
        text_table(
            ["structure", "metric", "n", "mean", "SD", "min", "max"],
            [
                [s.structure, s.metric, str(s.n), shown(s.mean), shown(s.sd), shown(s.minimum), shown(s.maximum)]
                for s in report.summaries
            ],
        )
    )
    if report.uncertainty:
        volume = report.uncertainty["volume"]
        parts += [
            "",
            f"Under registration uncertainty ({volume.cases} cases): expected count of each class (95% interval of "
            "its share, from the cases' uncertainty and the cohort's sampling)",
        ]
        parts.append(text_table(["class", "volume method", "point of origin"], uncertainty_rows(report)))
        parts.append(
            f"unstable cases (volume method): {len(volume.unstable)}"
            + (f": {', '.join(volume.unstable[:20])}" if volume.unstable else "")
            + (" ..." if len(volume.unstable) > 20 else "")
        )
    if report.failed:
        parts += ["", "Failed cases"]
        parts += [f"  {case_id}: {error}" for case_id, error in report.failed]
    if report.warnings:
        parts += ["", f"Warnings ({len(report.warnings)} cases; all of them in the HTML report and the table)"]
        for case_id, messages in report.warnings[:WARNED_CASES_SHOWN]:
            parts += [f"  {case_id}: {message}" for message in messages]
        if len(report.warnings) > WARNED_CASES_SHOWN:
            parts.append(f"  ... and {len(report.warnings) - WARNED_CASES_SHOWN} more cases")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------
def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _dvh_band_figure(curves: list[dict], roi: str):
    import matplotlib.pyplot as plt

    step = min(c["step_gy"] for c in curves)
    top = max(c["step_gy"] * (len(c["cumulative_cc"]) - 1) for c in curves)
    doses = np.arange(0.0, top + step, step)
    relative = []
    for c in curves:
        values = np.asarray(c["cumulative_cc"], dtype=np.float64)
        if not len(values) or values[0] <= 0:
            continue
        own = c["step_gy"] * np.arange(len(values))
        relative.append(100.0 * np.interp(doses, own, values, right=0.0) / values[0])
    curves_pct = np.array(relative)
    figure, axis = plt.subplots(figsize=(6.2, 3.4))
    p5, p25, p50, p75, p95 = np.percentile(curves_pct, [5, 25, 50, 75, 95], axis=0)
    axis.fill_between(doses, p5, p95, color="#9ecae1", alpha=0.6, label="5th-95th percentile")
    axis.fill_between(doses, p25, p75, color="#4292c6", alpha=0.7, label="25th-75th percentile")
    axis.plot(doses, p50, color="#08306b", lw=1.5, label="median")
    axis.set(xlabel="dose (Gy)", ylabel="volume (%)", title=f"{roi}: {len(curves_pct)} cases", ylim=(0, 102))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower left")
    return figure


def _inside_figure(values: list[float], criteria: dict):
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.2, 3.2))
    axis.hist(
        [v for v in values if math.isfinite(v)], bins=list(np.linspace(0, 100, 41)), color="#6a51a3", edgecolor="white"
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
    return figure


def _probability_figure(cases: list[dict]):
    """Each case's class probabilities by the volume method, as stacked bars, the cases sorted by their share of
    Vr inside the isodose."""
    import matplotlib.pyplot as plt

    drawn = sorted(
        (e for e in cases if "p_volume_in_field_pct" in e["record"]),
        key=lambda e: _numeric(e["record"].get("inside_isodose_pct")),
    )
    figure, axis = plt.subplots(figsize=(10.0, 3.4))
    x = np.arange(len(drawn))
    bottom = np.zeros(len(drawn))
    for c, colour in zip(CLASSES, ("#238b45", "#fe9929", "#cb181d")):
        values = np.array([_numeric(e["record"].get(f"p_volume_{c.replace('-', '_')}_pct")) for e in drawn])
        axis.bar(x, values, bottom=bottom, width=1.0, color=colour, label=c, linewidth=0)
        bottom += np.nan_to_num(values)
    unstable = [k for k, e in enumerate(drawn) if not e["record"].get("class_volume_stable")]
    if unstable:
        axis.plot(unstable, [103] * len(unstable), "v", color="#222222", ms=4, label="unstable")
    axis.set(
        xlabel="cases, by their share of Vr inside the isodose",
        ylabel="probability (%)",
        ylim=(0, 108),
        xlim=(-0.5, len(drawn) - 0.5),
        title="Class by the volume method under registration uncertainty",
    )
    axis.legend(fontsize=8, loc="lower right", ncol=4)
    return figure


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
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


def write_html(report: CohortReport, store: ResultStore, path: str | Path) -> Path:
    """Write the self-contained HTML report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    criteria = report.settings.get("criteria", {"isodose_pct": 95.0, "in_field_pct": 95.0, "marginal_pct": 20.0})
    sections = []
    figure = _inside_figure([_numeric(e["record"].get("inside_isodose_pct")) for e in report.cases], criteria)
    sections.append(f'<img alt="distribution of Vr inside the isodose" src="data:image/png;base64,{_png(figure)}">')
    plt.close(figure)
    by_roi: dict[tuple[str, str], list[dict]] = defaultdict(list)
    ok_ids = {e["case_id"] for e in report.cases}
    for curve in store.dvh_curves():
        if curve["case_id"] in ok_ids:
            by_roi[(curve["role"], curve["roi"])].append(curve)
    dvh_images = []
    for (role, roi), curves in sorted(by_roi.items(), key=lambda item: (item[0][0] != "recurrence", item[0][1])):
        figure = _dvh_band_figure(curves, f"{roi} (Vr)" if role == "recurrence" else roi)
        dvh_images.append(f'<img alt="DVH band of {html.escape(roi)}" src="data:image/png;base64,{_png(figure)}">')
        plt.close(figure)
    pattern_table = _html_table(["class", *(label for _, label in METHODS)], pattern_rows(report))
    summary_table = _html_table(
        ["structure", "metric", "n", "mean", "SD", "min", "max"],
        [
            [s.structure, s.metric, str(s.n), shown(s.mean), shown(s.sd), shown(s.minimum), shown(s.maximum)]
            for s in report.summaries
        ],
    )
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
        }.get(c, c)
        for c in report.table_columns
    ]
    uncertainty_section = ""
    if report.uncertainty:
        figure = _probability_figure(report.cases)
        image = f'<img alt="class probabilities of each case" src="data:image/png;base64,{_png(figure)}">'
        plt.close(figure)
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
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f0f0f0; }}
img {{ max-width: 100%; margin: 0.3em; }}
.grid {{ display: flex; flex-wrap: wrap; }}
.grid img {{ width: 48%; }}
.small {{ color: #666; font-size: 0.85em; }}
</style></head><body>
<h1>Recurrence failure patterns</h1>
<p class="small">{html.escape(str(report.store))}: {report.n_ok + len(report.failed)} cases, {report.n_ok} classified,
{len(report.failed)} failed. isodose {__version__}, {time.strftime("%Y-%m-%d %H:%M")}. Settings: {settings}.</p>
<h2>Failure patterns</h2>
{pattern_table}
{sections[0]}
{uncertainty_section}
<h2>Cohort DVHs</h2>
<p class="small">Cumulative DVHs (% of each structure's volume inside the dose grid): median, 25th-75th and
5th-95th percentiles over the classified cases.</p>
<div class="grid">{"".join(dvh_images)}</div>
<h2>Metric summaries</h2>
{summary_table}
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
th:first-child, td:first-child {{ text-align: left; }}
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
