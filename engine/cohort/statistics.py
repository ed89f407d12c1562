"""A cohort's results as the papers report them: per-class statistics, covariates against the classes, and the
per-case table.

- **Per class** (by each method): n, mean and SD, median and interquartile range, and range of every Vr metric
  and every target metric, each with its unit (:func:`class_statistics`).
- **Covariates**: a manifest's own columns (T stage, age, chemotherapy, centre...) kept in each case's record.
  A categorical one is cross-tabulated against the classes (:func:`cross_tabulate`), with the test the papers use:
  Pearson's chi-square where every expected count is at least 5, else Fisher's exact test (exact for a 2 x 2
  table; for a larger one, its p-value by Monte Carlo over 100,000 tables of the same margins, from a fixed seed).
  A continuous one, and every metric, is compared across the classes with the Kruskal-Wallis test
  (:func:`compare_across_classes`): the metrics are bounded percentages and skewed doses, for which a rank test
  holds where a normal one does not. The tests are SciPy's (``scipy.stats``, the ``stats`` extra); without SciPy
  the tables are given and the p-values are not.
- **The paper's table** (:func:`paper_table`): one row per case, the columns the user's metrics name, with their
  names as given (``GTV-P:volume``, ``CTV1:D98``), as CSV, Markdown or LaTeX (booktabs).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..dvh import parse_metric
from ..errors import IsodoseError, MetricError
from ..formatting import text_columns
from ..recurrence import CLASSES

#: Tables an r x c Fisher's exact test draws (from a fixed seed: the same report gives the same p-value).
FISHER_RESAMPLES = 100_000


def fisher_method():
    """SciPy's Monte Carlo method of an r x c Fisher's exact test, seeded."""
    import scipy.stats

    return scipy.stats.MonteCarloMethod(n_resamples=FISHER_RESAMPLES, rng=np.random.default_rng(0))


#: The share of distinct values above which a numeric column counts as continuous (and at least this many).
CONTINUOUS_MIN_DISTINCT = 6


def unit_of(key: str) -> str:
    """The unit of a record key (``recurrence_volume_cc``, ``inside_isodose_pct``, ``centroid_dose_gy``) or of a
    metric (``D98``, ``CTV60:V20Gy``: its :attr:`~isodose.dvh.Metric.result_unit`): ``cc``, ``%``, ``Gy``, or empty
    for anything else (HI, a covariate).

    >>> [unit_of(k) for k in ("recurrence_volume_cc", "CTV60:D98", "V20Gy", "V20Gy_cc", "GTV:volume", "HI", "age")]
    ['cc', 'Gy', '%', 'cc', 'cc', '', '']
    """
    name = key.rpartition(":")[2]
    for suffix, unit in (("_cc", "cc"), ("_pct", "%"), ("_gy", "Gy")):
        if name.lower().endswith(suffix):
            return unit
    try:
        return parse_metric(name).result_unit
    except MetricError:
        return ""


@dataclass(frozen=True)
class Description:
    """n, mean, SD (n - 1), median, quartiles and range of the finite values."""

    n: int
    mean: float
    sd: float
    median: float
    q1: float
    q3: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Description:
        data = np.array([v for v in values if isinstance(v, int | float) and math.isfinite(v)], dtype=np.float64)
        if not len(data):
            return cls(0, *(math.nan,) * 7)
        sd = float(np.std(data, ddof=1)) if len(data) > 1 else math.nan
        q1, median, q3 = np.percentile(data, [25, 50, 75])
        return cls(
            len(data), float(data.mean()), sd, float(median), float(q1), float(q3), float(data.min()), float(data.max())
        )

    def cells(self, digits: int = 2) -> list[str]:
        """``n``, ``mean ± SD``, ``median [Q1-Q3]``, ``min-max`` as a table shows them."""
        if not self.n:
            return ["0", "-", "-", "-"]

        def f(v: float) -> str:
            return "-" if not math.isfinite(v) else f"{v:.{digits}f}"

        return [
            str(self.n),
            f"{f(self.mean)} ± {f(self.sd)}" if math.isfinite(self.sd) else f(self.mean),  # one value: no SD
            f"{f(self.median)} [{f(self.q1)}-{f(self.q3)}]",
            f"{f(self.minimum)}-{f(self.maximum)}",
        ]


def numeric(value) -> float:
    """A record's value as a float: NaN for None, booleans and text that is not a number."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclass(frozen=True)
class ClassStatistics:
    """One quantity's statistics in each class of one method."""

    label: str  # with its unit, e.g. "Vr D95 (Gy)"
    key: str
    method: str  # the record key of the class: class_volume or class_centroid
    by_class: dict[str, Description]
    #: Kruskal-Wallis across the classes with cases (NaN where SciPy is missing or fewer than two classes vary).
    p_value: float = math.nan


def class_statistics(
    cases: Sequence[dict], quantities: Sequence[tuple[str, str]], method: str
) -> list[ClassStatistics]:
    """For each ``(label, record key)`` of ``quantities``: its description in each class of ``method`` (the record
    key of the class), over ``cases`` (entries), and the Kruskal-Wallis p-value across the classes."""
    out = []
    for label, key in quantities:
        groups = {c: [numeric(e["record"].get(key)) for e in cases if e["record"].get(method) == c] for c in CLASSES}
        by_class = {c: Description.of(v) for c, v in groups.items()}
        out.append(ClassStatistics(label, key, method, by_class, kruskal_p(list(groups.values()))))
    return out


def kruskal_p(groups: Sequence[Sequence[float]]) -> float:
    """The Kruskal-Wallis p-value of the groups with finite values (NaN for fewer than two such groups, values all
    equal, or no SciPy)."""
    finite = [[v for v in g if math.isfinite(v)] for g in groups]
    finite = [g for g in finite if g]
    if len(finite) < 2 or len({v for g in finite for v in g}) < 2:
        return math.nan
    stats = _scipy_stats()
    if stats is None:
        return math.nan
    return float(stats.kruskal(*finite).pvalue)


def _scipy_stats():
    try:
        import scipy.stats
    except ImportError:
        return None
    return scipy.stats


#: Values of a covariate that mean "not known" (compared without case): left out of its tests, and counted.
MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "none", "null", "missing", "unknown", "?", "-", "."})


def is_missing(value) -> bool:
    return value is None or str(value).strip().lower() in MISSING_VALUES


def is_continuous(values: Sequence[str]) -> bool:
    """Whether a column's values are continuous: every one that is given (not missing: empty, ``NA``...) a
    number, and at least ``CONTINUOUS_MIN_DISTINCT`` distinct ones (fewer distinct numbers, such as 0/1 or stages
    1 to 4, are categories)."""
    given = [v for v in values if not is_missing(v)]
    numbers = [numeric(v) for v in given]
    return bool(given) and all(math.isfinite(v) for v in numbers) and len(set(numbers)) >= CONTINUOUS_MIN_DISTINCT


@dataclass(frozen=True)
class CrossTable:
    """A categorical column against the classes of one method, with its test of independence."""

    column: str
    method: str
    categories: tuple[str, ...]
    counts: np.ndarray  # (categories, classes)
    test: str  # "chi-square", "Fisher's exact" or "" (no test: one row or column, or no SciPy)
    p_value: float
    #: Classified cases without a value in the column (left out of the table's test).
    missing: int = 0


def cross_tabulate(cases: Sequence[dict], column: str, method: str) -> CrossTable:
    """``column`` (a covariate) against the classes of ``method``: counts and the test the papers use (chi-square
    where every expected count is at least 5, else Fisher's exact), over the classes and categories that occur.
    Cases without a value in the column are left out."""
    values = [str(e["record"].get(column, "")).strip() for e in cases]
    categories = tuple(sorted({v for v in values if not is_missing(v)}, key=_natural))
    counts = np.zeros((len(categories), len(CLASSES)), dtype=np.int64)
    missing = 0
    for value, e in zip(values, cases):
        if e["record"].get(method) not in CLASSES:
            continue
        if is_missing(value):
            missing += 1
        else:
            counts[categories.index(value), CLASSES.index(e["record"][method])] += 1
    table = counts[counts.sum(axis=1) > 0][:, counts.sum(axis=0) > 0]
    test, p = "", math.nan
    stats = _scipy_stats()
    if stats is not None and table.shape[0] >= 2 and table.shape[1] >= 2:
        expected = np.asarray(stats.contingency.expected_freq(table), dtype=np.float64)
        if np.all(expected >= 5):
            test, p = "chi-square", float(stats.chi2_contingency(table, correction=False).pvalue)
        elif table.shape == (2, 2):
            test, p = "Fisher's exact", float(stats.fisher_exact(table).pvalue)
        else:  # r x c: the probability of the tables at least as extreme, by Monte Carlo from a fixed seed
            test = f"Fisher's exact (Monte Carlo, {FISHER_RESAMPLES:,} tables)"
            p = float(np.ravel(stats.fisher_exact(table, method=fisher_method()).pvalue)[0])
    return CrossTable(column, method, categories, counts, test, p, missing)


def _natural(text: str):
    """Sort key: numbers as numbers (T2 before T10)."""
    import re

    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def compare_across_classes(cases: Sequence[dict], column: str, method: str) -> ClassStatistics:
    """A continuous column (a covariate such as age) described in each class of ``method``, with Kruskal-Wallis;
    missing values (empty, ``NA``...) are left out."""
    cleaned = []
    for e in cases:
        value = e["record"].get(column)
        cleaned.append({**e, "record": {**e["record"], column: math.nan if is_missing(value) else value}})
    [statistics] = class_statistics(cleaned, [(column, column)], method)
    return statistics


# --------------------------------------------------------------------------------------------------------
# The paper's table
# --------------------------------------------------------------------------------------------------------
TABLE_FORMATS = {".csv": "csv", ".md": "markdown", ".tex": "latex"}


def paper_columns(settings: dict) -> list[tuple[str, str]]:
    """``(header, record key)`` of the per-case table: the case, each target metric by its name as given (and its
    unit), Vr's
    volume, V95% (where it is not the share inside the isodose) and D100, the share inside the isodose, and both
    classes."""
    columns = [("case", "case_id")]
    columns += [(f"{m} ({unit_of(m)})" if unit_of(m) else m, m) for m in settings.get("target_metrics", [])]
    columns += [
        ("Vr volume (cc)", "recurrence_volume_cc"),
        ("Vr V95% (%)", "V95%"),
        ("Vr D100 (Gy)", "D100"),
        ("Vr inside isodose (%)", "inside_isodose_pct"),
        ("class (volume)", "class_volume"),
        ("class (point of origin)", "class_centroid"),
    ]
    if float(settings.get("criteria", {}).get("isodose_pct", 95.0)) == 95.0:
        # V95% of Vr is the share inside the 95% isodose under these criteria: one column, not two.
        columns = [(h, k) for h, k in columns if k != "V95%"]
    return columns


def paper_table(cases: Sequence[dict], columns: Sequence[tuple[str, str]], fmt: str, digits: int = 2) -> str:
    """The per-case table as ``csv``, ``markdown`` or ``latex`` (booktabs: ``\\toprule``, ``\\midrule``,
    ``\\bottomrule``)."""
    headers = [h for h, _ in columns]
    rows = []
    for e in cases:
        row = []
        for _, key in columns:
            value = e["case_id"] if key == "case_id" else e["record"].get(key)
            if isinstance(value, float):
                row.append("" if not math.isfinite(value) else f"{value:.{digits}f}")
            else:
                row.append("" if value is None else str(value))
        rows.append(row)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(rows)
        return buffer.getvalue()
    if fmt == "markdown":

        def md(cell: str) -> str:
            return cell.replace("|", "\\|")

        lines = ["| " + " | ".join(md(h) for h in headers) + " |"]
        lines.append("|" + "|".join(":---" if text else "---:" for text in text_columns(rows, len(headers))) + "|")
        lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        lines = [
            "\\begin{tabular}{" + "".join("l" if text else "r" for text in text_columns(rows, len(headers))) + "}",
            "\\toprule",
            " & ".join(_latex(h) for h in headers) + " \\\\",
            "\\midrule",
        ]
        lines += [" & ".join(_latex(c) for c in row) + " \\\\" for row in rows]
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise IsodoseError(f"a table is CSV, Markdown or LaTeX, not {fmt!r}")


def _latex(text: str) -> str:
    special = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_", "{": "\\{"}
    special.update({"}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}"})
    return "".join(special.get(ch, ch) for ch in text)
