"""An archive's audit against a cohort run of the same cases: 300 generated RTDOSE files with DVH Sequences, from
DICOM on disk to the store, cases per second for each (run side by side in one session). Run with ``make bench``."""

from __future__ import annotations

import itertools
import os

import pytest

from isodose.cohort.audit import run_audit
from isodose.cohort.runner import run_cohort
from isodose.cohort.settings import RunSettings
from isodose.cohort.store import ResultStore
from isodose.cohort.synthetic import generate_audit_archive

N_CASES = 300
WORKERS = os.cpu_count() or 1


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return generate_audit_archive(
        tmp_path_factory.mktemp("bench-archive") / "archive", N_CASES, seed=5, workers=WORKERS
    )


@pytest.mark.parametrize("job", ["audit", "cohort run"])
def test_archive_audit_beside_a_cohort_run(benchmark, archive, tmp_path, job):
    counter = itertools.count()

    def fresh():
        return (tmp_path / f"run{next(counter)}",), {}

    def audit(out):
        return run_audit(archive, out.with_suffix(".csv"), workers=WORKERS)

    def cohort(out):
        return run_cohort(archive / "manifest.csv", out.with_suffix(".h5"), settings=RunSettings(), workers=WORKERS)

    benchmark.group = f"archive of {N_CASES} RTDOSE files with DVH Sequences"
    summary = benchmark.pedantic(audit if job == "audit" else cohort, setup=fresh, rounds=2, iterations=1)
    assert summary.failed == 0 and summary.processed == N_CASES
    entries = ResultStore.open(summary.store, create=False).cases()
    # The DVHs each case computes: an audit, every ROI the planning system reported; a cohort run, Vr and targets.
    if job == "audit":
        dvhs = sum(len(e["rows"]) for e in entries)
    else:
        dvhs = sum(len(curves) for curves in _stored_curves(summary.store).values())
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(
        cases=N_CASES,
        workers=WORKERS,
        cases_per_second=round(N_CASES / seconds, 2),
        dvhs_per_case=round(dvhs / N_CASES, 2),
        dvhs_per_second=round(dvhs / seconds, 1),
    )


def _stored_curves(store) -> dict[str, list]:
    by_case: dict[str, list] = {}
    for curve in ResultStore.open(store, create=False).dvh_curves():
        by_case.setdefault(curve["case_id"], []).append(curve["roi"])
    return by_case
