"""The report of a 10,000-case cohort (text, HTML with its figures), from its store. The store is made from a
generated cohort's 40 results, each copied 250 times under new case ids (their records and DVH curves as they
are), so that the report reads and summarises as many cases as a cohort of that size has. Run with
``make bench``."""

from __future__ import annotations

import copy

import pytest

from isodose.cohort.report import build_report, format_text, write_html
from isodose.cohort.runner import run_cohort
from isodose.cohort.settings import RunSettings
from isodose.cohort.store import ResultStore

SETTINGS = RunSettings(target_metrics=("GTV:volume", "CTV60:D98", "CTV54:D95"))
CASES = 10_000


@pytest.fixture(scope="module")
def large_store(tmp_path_factory):
    from isodose.cohort.synthetic import generate_cohort

    folder = tmp_path_factory.mktemp("report-bench")
    manifest = generate_cohort(folder / "data", 40, seed=3, workers=1)
    small = folder / "small.h5"
    run_cohort(manifest, small, settings=SETTINGS, workers=1)
    source = ResultStore.open(small, create=False)
    entries = source.cases()
    stages = ("T1", "T2", "T3", "T4")
    copies = []
    for k in range(CASES):
        entry = copy.deepcopy(entries[k % len(entries)])
        entry["case_id"] = f"case{k:05d}"
        entry["record"]["T_stage"] = stages[k % 4]
        copies.append(entry)
    out = folder / "large.h5"
    with ResultStore.open(out, source.settings) as store:
        for first in range(0, CASES, 500):
            store.append_many(copies[first : first + 500])
        store.consolidate()
    return out


def test_report_of_a_10000_case_cohort(benchmark, large_store, tmp_path):
    def report():
        store = ResultStore.open(large_store, create=False)
        cohort = build_report(store, by=["T_stage"])
        text = format_text(cohort)
        write_html(cohort, store, tmp_path / "report.html")
        return cohort, text

    benchmark.group = "cohort report"
    cohort, text = benchmark.pedantic(report, rounds=2, iterations=1)
    assert cohort.n_ok == CASES and "T_stage by class" in text
    benchmark.extra_info.update(cases=CASES)
