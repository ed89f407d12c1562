"""Cohort results as the papers report them. References: a generated cohort whose true classes and shares are
known, with a covariate built to go with the class and one built not to; scipy.stats run directly on the
results' CSV; and the report as a browser shows it."""

from __future__ import annotations

import copy
import csv
import json
import math
import random
import subprocess

import numpy as np
import pytest

from isodose.cli import main
from isodose.cohort.report import build_report, curves_by_figure, format_text, write_html
from isodose.cohort.runner import run_cohort
from isodose.cohort.settings import RunSettings
from isodose.cohort.statistics import paper_columns, paper_table, unit_of
from isodose.cohort.store import ResultStore
from isodose.recurrence import CLASSES

from .browser import chromium, screenshot
from .conftest import copy_cohort

stats = pytest.importorskip("scipy.stats")

N_CASES = 60
SETTINGS = RunSettings(target_metrics=("GTV:volume", "CTV60:D98", "CTV54:D95"))


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def cohort(generated_cohort, tmp_path_factory):
    """The generated cohort, its manifest with three clinical columns: T_stage follows the true class (T4 for
    80% of the failures outside the field, T2 for 80% of the in-field ones), centre is a coin toss, age uniform."""
    manifest = copy_cohort(generated_cohort(N_CASES, 11), tmp_path_factory.mktemp("covariates") / "data")
    truth = {r["case_id"]: r for r in csv.DictReader((manifest.parent / "truth.csv").open())}
    rows = list(csv.DictReader(manifest.open()))
    rng = random.Random(7)
    for row in rows:
        in_field = truth[row["case_id"]]["true_class_volume"] == "in-field"
        likely, other = ("T2", "T4") if in_field else ("T4", "T2")
        row["T_stage"] = likely if rng.random() < 0.8 else other
        row["centre"] = rng.choice(["North", "South"])
        row["age"] = str(rng.randint(25, 85))
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = manifest.parent / "results.h5"
    run_cohort(manifest, out, settings=SETTINGS, workers=1)
    return manifest, out, truth


def csv_rows(out) -> list[dict]:
    return list(csv.DictReader(out.with_suffix(".csv").open()))


def test_covariates_reach_the_store_and_the_csv(cohort):
    manifest, out, _ = cohort
    rows = csv_rows(out)
    given = {r["case_id"]: r for r in csv.DictReader(manifest.open())}
    assert all(r["T_stage"] == given[r["case_id"]]["T_stage"] and r["age"] == given[r["case_id"]]["age"] for r in rows)
    store = ResultStore.open(out, create=False)
    assert {e["record"]["centre"] for e in store.cases()} == {"North", "South"}


def test_per_class_statistics_are_scipys_on_the_csv_and_the_generators_truth(cohort):
    _, out, truth = cohort
    report = build_report(ResultStore.open(out, create=False))
    rows = csv_rows(out)
    statistics = {s.key: s for s in report.class_stats["class_volume"]}
    for key in ("inside_isodose_pct", "D100", "recurrence_volume_cc", "CTV60:D98"):
        groups = []
        for c in CLASSES:
            values = np.array([float(r[key]) for r in rows if r["class_volume"] == c])
            d = statistics[key].by_class[c]
            assert d.n == len(values)
            if len(values):
                groups.append(values)
                assert d.mean == pytest.approx(values.mean(), rel=1e-12, abs=1e-12)
                q1, median, q3 = np.percentile(values, [25, 50, 75])
                assert (d.q1, d.median, d.q3) == pytest.approx((q1, median, q3), rel=1e-12, abs=1e-12)
                assert (d.minimum, d.maximum) == (values.min(), values.max())
            if len(values) > 1:
                assert d.sd == pytest.approx(stats.tstd(values), rel=1e-12, abs=1e-12)
        if len({v for g in groups for v in g}) > 1:
            assert statistics[key].p_value == pytest.approx(stats.kruskal(*groups).pvalue, rel=1e-12)
    # The generator's truth: the share of Vr inside the isodose of each true class (the generator's share is a
    # Monte Carlo estimate on the smooth shape, each case within 8 points of the engine's: a class's mean within 3).
    for c in CLASSES:
        true = [float(t["true_inside_pct"]) for t in truth.values() if t["true_class_volume"] == c]
        if true:
            assert statistics["inside_isodose_pct"].by_class[c].mean == pytest.approx(np.mean(true), abs=3.0)
            assert statistics["inside_isodose_pct"].by_class[c].n == len(true)


def test_an_associated_covariate_has_a_small_p_value_and_the_others_large_ones(cohort):
    _, out, _ = cohort
    report = build_report(ResultStore.open(out, create=False), by=["T_stage", "centre", "age"])
    by = {(r.column if hasattr(r, "column") else r.key): r for r in report.covariates["class_volume"]}
    assert by["T_stage"].p_value < 0.001 and by["centre"].p_value > 0.2
    assert by["age"].p_value > 0.05 and by["age"].label == "age"  # continuous: Kruskal-Wallis
    # The same test on the CSV, by scipy directly.
    rows = csv_rows(out)
    for column in ("T_stage", "centre"):
        table = by[column]
        counts = np.array(
            [[sum(r[column] == k and r["class_volume"] == c for r in rows) for c in CLASSES] for k in table.categories]
        )
        np.testing.assert_array_equal(table.counts, counts)
        counts = counts[:, counts.sum(axis=0) > 0]
        expected = stats.contingency.expected_freq(counts)
        if np.all(expected >= 5):
            assert table.test == "chi-square"
            assert table.p_value == pytest.approx(stats.chi2_contingency(counts, correction=False).pvalue)
        elif counts.shape == (2, 2):
            assert table.test == "Fisher's exact"
            assert table.p_value == pytest.approx(stats.fisher_exact(counts).pvalue)
        else:
            assert table.test.startswith("Fisher's exact (Monte Carlo")
            method = stats.MonteCarloMethod(n_resamples=100_000, rng=np.random.default_rng(0))
            assert table.p_value == stats.fisher_exact(counts, method=method).pvalue
    groups = [[float(r["age"]) for r in rows if r["class_volume"] == c] for c in CLASSES]
    assert by["age"].p_value == pytest.approx(stats.kruskal(*[g for g in groups if g]).pvalue)
    text = format_text(report)
    assert "T_stage by class (volume method)" in text and "Kruskal-Wallis" in text and "Fisher's exact" in text


def synthetic_store(source_out, path, change):
    """A copy of a store's entries, each changed by ``change(entry, k)``, with its settings."""
    source = ResultStore.open(source_out, create=False)
    entries = []
    for k, e in enumerate(source.cases()):
        entry = copy.deepcopy(e)
        entry.setdefault("dvhs", {})
        change(entry, k)
        entries.append(entry)
    with ResultStore.open(path, source.settings) as store:
        store.append_many(entries)
        store.consolidate()
    return ResultStore.open(path, create=False)


def test_vr_is_labelled_by_every_cases_roi_not_the_first(cohort, tmp_path):
    _, out, _ = cohort
    names = ["Larynx", "OralCavity", "GTV"]

    def rename(entry, k):
        entry["record"]["recurrence_roi"] = names[k % 3]

    report = build_report(synthetic_store(out, tmp_path / "r.h5", rename))
    labels = {s.structure for s in report.summaries if s.metric == "D100"}
    assert labels == {"Vr (GTV, Larynx, OralCavity)"}
    assert report.recurrence_rois == ("GTV", "Larynx", "OralCavity")
    assert "Larynx (Vr)" not in format_text(report)


def test_v95_and_the_share_inside_are_shown_once_with_a_note(cohort, tmp_path):
    _, out, _ = cohort
    report = build_report(ResultStore.open(out, create=False))
    metrics = [s.metric for s in report.summaries if s.structure.endswith("(Vr)")]
    assert "V95%" not in metrics and "inside the isodose" in metrics
    assert any("shown once" in note for note in report.notes)
    assert all(s.unit for s in report.summaries)  # units on every row
    assert unit_of("CTV60:D98") == "Gy" and unit_of("GTV:volume") == "cc" and unit_of("V95%") == "%"


@pytest.mark.parametrize(
    ("key", "unit"),
    [
        ("CTV60:V20Gy", "%"),  # a share of the volume, as the metric grammar says (not cc)
        ("V20Gy", "%"),
        ("CTV60:V20Gy_cc", "cc"),
        ("V95%_cc", "cc"),
        ("PTV:D2cc", "Gy"),
        ("Dmean", "Gy"),
        ("PTV:HI", ""),
        ("recurrence_volume_cc", "cc"),
        ("inside_isodose_pct", "%"),
        ("centroid_dose_gy", "Gy"),
        ("Dose_level", ""),  # a covariate, not a metric
    ],
)
def test_units_are_the_metric_grammar_s(key, unit):
    from isodose.dvh import parse_metric

    assert unit_of(key) == unit
    metric = key.rpartition(":")[2]
    if unit and not metric.lower().endswith(("_pct", "_gy")) and not metric.startswith(("recurrence", "inside")):
        assert parse_metric(metric).result_unit == unit


def test_v95_and_the_share_inside_are_both_shown_where_part_of_a_vr_lies_outside_the_grid(cohort, tmp_path):
    """V95% is a share of the part of Vr inside the dose grid, the share inside the isodose a share of all of Vr:
    where one case's Vr lies partly outside the grid they differ, and the report shows both and says why."""
    _, out, _ = cohort

    def outside(entry, k):
        if k == 0:
            entry["record"]["recurrence_outside_dose_cc"] = 0.5

    report = build_report(synthetic_store(out, tmp_path / "r.h5", outside))
    metrics = [s.metric for s in report.summaries if s.structure.endswith("(Vr)")]
    assert "V95%" in metrics and "inside the isodose" in metrics
    assert not any("shown once" in note for note in report.notes)
    assert any("differ for the 1 case(s) with part of Vr outside the grid" in note for note in report.notes)


def test_a_vr_that_is_itself_a_target_metrics_roi_counts_in_that_rois_figure(cohort, tmp_path):
    """A case whose recurrence is the planning ROI of a target metric stores that curve once, as Vr's: the ROI's
    figure counts it as it counts the other cases' curves of that ROI (the figure said a case fewer than the tables).
    A Vr mapped from another frame is another structure, and does not count there."""
    _, out, _ = cohort
    stored: dict[str, dict] = {}
    for c in ResultStore.open(out, create=False).dvh_curves():
        curve = {"role": c["role"], "step_gy": c["step_gy"], "cumulative_cc": c["cumulative_cc"]}
        stored.setdefault(c["case_id"], {})[c["roi"]] = curve

    def vr_is_ctv60(entry, k):
        entry["dvhs"] = dict(stored[entry["case_id"]])
        if k < 2:
            vr = entry["dvhs"].pop(entry["record"]["recurrence_roi"])
            entry["dvhs"]["CTV60"] = vr  # in place of CTV60's own curve, which is the same one
            entry["record"]["recurrence_roi"] = "CTV60"
            entry["record"]["recurrence_registered"] = k == 1

    store = synthetic_store(out, tmp_path / "r.h5", vr_is_ctv60)
    report = build_report(store)
    vr_by_class, by_roi = curves_by_figure(report, store.dvh_curves())
    assert sum(len(c) for c in vr_by_class.values()) == report.n_ok
    assert len(by_roi[("roi", "CTV60")]) == report.n_ok - 1  # all but the registered case's
    assert len(by_roi[("roi", "CTV54")]) == report.n_ok


def test_the_papers_table_in_csv_markdown_and_latex(cohort):
    _, out, _ = cohort
    report = build_report(ResultStore.open(out, create=False))
    columns = paper_columns(report.settings)
    assert [h for h, _ in columns][:4] == ["case", "GTV:volume (cc)", "CTV60:D98 (Gy)", "CTV54:D95 (Gy)"]
    as_csv = list(csv.reader(paper_table(report.cases, columns, "csv").splitlines()))
    assert len(as_csv) == N_CASES + 1 and as_csv[0][1] == "GTV:volume (cc)"
    first = report.cases[0]
    assert float(as_csv[1][2]) == pytest.approx(first["record"]["CTV60:D98"], abs=0.005)
    markdown = paper_table(report.cases, columns, "markdown").splitlines()
    assert markdown[0].startswith("| case | GTV:volume (cc) |") and markdown[1].startswith("|:---|---:|")
    assert markdown[1].endswith("|:---|:---|")  # the classes, words, read from the left
    latex = paper_table(report.cases, columns, "latex")
    assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex
    assert "Vr inside isodose (\\%)" in latex and "V95" not in latex  # one number under these criteria: once
    assert latex.count("\\\\\n") == N_CASES + 1
    assert "\\begin{tabular}{l" + "r" * (len(columns) - 3) + "ll}" in latex


def test_cli_report_by_a_column_with_a_table_and_figures(cohort, tmp_path, capsys):
    _, out, _ = cohort
    figures = tmp_path / "figures"
    code, text, err = run(
        capsys,
        "cohort",
        "report",
        out,
        "--by",
        "T_stage",
        "--table",
        tmp_path / "t.tex",
        "--figures",
        figures,
        "--html",
        tmp_path / "r.html",
    )
    assert code == 0, err
    assert "T_stage by class" in text and (tmp_path / "t.tex").read_text().startswith("\\begin{tabular}")
    svgs, pngs = sorted(figures.glob("*.svg")), sorted(figures.glob("*.png"))
    assert len(svgs) == len(pngs) == 4  # the share inside, Vr's bands by class, CTV60's and CTV54's bands
    import matplotlib.image

    height, width = matplotlib.image.imread(pngs[0]).shape[:2]
    assert width > 1500  # a 6-inch figure at 300 dpi
    code, js, _ = run(capsys, "cohort", "report", out, "--by", "age", "--format", "json", "--html", tmp_path / "j.html")
    document = json.loads(js)
    assert document["covariates"]["class_volume"][0]["kind"] == "continuous"
    assert {row["quantity"] for row in document["by_class"]["class_volume"]} >= {"Vr D100 (Gy)", "CTV60:D98 (Gy)"}
    for argv, message in (
        (["--by", "stage"], "no column 'stage'"),
        (["--table", tmp_path / "t.docx"], "--table needs a .csv, .md or .tex file"),
        (["--by", "age", "--categorical", "age", "--continuous", "age"], "both name 'age'"),
    ):
        code, _, err = run(capsys, "cohort", "report", out, *argv, "--html", tmp_path / "x.html")
        assert code == 2 and err.count("\n") == 1 and message in err, (argv, err)


def test_a_report_with_nothing_classified_says_so_in_place_of_its_plots(cohort, tmp_path):
    _, out, _ = cohort

    def fail(entry, k):
        entry.update(status="error", error="a reason", record={}, dvhs={})

    store = synthetic_store(out, tmp_path / "failed.h5", fail)
    report = build_report(store)
    page = write_html(report, store, tmp_path / "failed.html").read_text()
    assert "<img" not in page and "No case was classified" in page and "No DVH curves" in page
    assert "0 classified" in format_text(report)


def test_the_report_in_a_browser_loads_without_errors_and_every_figure_has_a_size(cohort, tmp_path):
    _, out, _ = cohort
    store = ResultStore.open(out, create=False)
    page = write_html(build_report(store, by=["T_stage"]), store, tmp_path / "report.html")
    pixels = screenshot(page, tmp_path / "report.png", size=(1200, 3000))
    assert pixels.std() > 0.05  # something drawn
    # Each image's size as the browser laid it out, read back from the page's DOM.
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.addEventListener('load', () => { document.body.setAttribute('data-sizes', "
        "[...document.images].map(i => i.naturalWidth + 'x' + i.naturalHeight + 'x' + "
        "Math.round(i.getBoundingClientRect().width)).join(' ')); });</script></body>"
    )
    probe.write_text(page.read_text().replace("</body>", script))
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    sizes = done.stdout.split('data-sizes="')[1].split('"')[0].split()
    assert len(sizes) == page.read_text().count("<img") >= 4
    assert all(min(int(v) for v in size.split("x")) > 0 for size in sizes), sizes
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    assert math.isfinite(len(sizes))


def test_missing_values_are_left_out_and_counted_and_result_columns_are_not_covariates(cohort, tmp_path, capsys):
    _, out, _ = cohort

    def blanks(entry, k):
        if k % 7 == 0:
            entry["record"]["T_stage"] = ""
            entry["record"]["age"] = "NA"

    store = synthetic_store(out, tmp_path / "blanks.h5", blanks)
    report = build_report(store, by=["T_stage", "age"])
    by = {(r.column if hasattr(r, "column") else r.key): r for r in report.covariates["class_volume"]}
    blank = sum(1 for k in range(N_CASES) if k % 7 == 0)
    assert by["T_stage"].missing == blank and int(by["T_stage"].counts.sum()) == N_CASES - blank
    assert sum(d.n for d in by["age"].by_class.values()) == N_CASES - blank  # NA is missing: age stays continuous
    text = format_text(report)
    assert f"{blank} case(s) without a value left out" in text and "(no value)" in text and "p = < " not in text
    for column in ("D95", "class_volume", "backend", "CTV60:D98"):
        with pytest.raises(Exception, match="names one of isodose's results"):
            build_report(store, by=[column])
    assert all(float(r["inside_isodose_pct"]) <= 100.0 for r in csv_rows(out))  # a share, never above 100%


def test_a_manifest_column_named_like_a_metric_is_refused(cohort, tmp_path, capsys):
    manifest, _, _ = cohort
    lines = manifest.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text(lines[0] + ",V20Gy\n" + lines[1] + ",x\n")
    code, _, err = run(capsys, "cohort", "run", bad, "--out", tmp_path / "r.h5", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "column 'V20Gy' would be read as one of isodose's results" in err


def test_columns_of_words_read_from_the_left_and_columns_of_numbers_from_the_right():
    from isodose.cohort.report import _html_table
    from isodose.formatting import text_table

    rows = [["Vr volume (cc)", "in-field", "17", "3.60 ± 1.18", "< 0.001"], ["", "out-field", "2", "4.63 ± -", "0.353"]]
    header = ["quantity", "class", "n", "mean ± SD", "p"]
    table = _html_table(header, rows)
    assert '<th class="text">class</th>' in table and '<td class="text">out-field</td>' in table
    assert "<th>p</th>" in table and "<td>&lt; 0.001</td>" in table and "<td>3.60 ± 1.18</td>" in table
    lines = text_table(header, rows).splitlines()
    assert lines[2].index("in-field") == lines[3].index("out-field")  # words: from the left
    assert lines[2].index("< 0.001") + len("< 0.001") == lines[3].index("0.353") + len("0.353")  # numbers: right
