"""Cohorts end to end on a generated cohort: classes against the generator's truth, the HDF5 store and its
table, resumption, failed cases, folder input, the reports and the CLI."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import h5py
import numpy as np
import pytest

from isodose.cli import main
from isodose.cohort import handover
from isodose.cohort.cases import ManifestError, discover_cases, read_manifest
from isodose.cohort.report import build_report, format_text, write_html
from isodose.cohort.runner import run_cohort
from isodose.cohort.settings import RunSettings
from isodose.cohort.store import ResultStore, StoreError
from isodose.cohort.synthetic import generate_cohort, read_truth

SETTINGS = RunSettings(target_metrics=("GTV:volume", "CTV60:D98", "CTV54:D95"))
N_CASES = 30


@pytest.fixture(scope="module")
def cohort(generated_cohort):
    return generated_cohort(N_CASES, 7)


@pytest.fixture(scope="module")
def results(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "results.h5"
    summary = run_cohort(cohort, out, settings=SETTINGS, workers=2)
    return out, summary


def test_generated_cohort_has_every_class_and_registered_cases(cohort):
    truth = read_truth(cohort.parent / "truth.csv")
    assert len(truth) == N_CASES
    assert {t["true_class_volume"] for t in truth.values()} == {"in-field", "marginal", "out-field"}
    assert any(t["registered"] == "True" for t in truth.values())
    rows = list(csv.DictReader(cohort.open()))
    assert any(r["registration"] for r in rows) and any(not r["plan"] for r in rows)


def test_every_case_gets_its_true_class(cohort, results):
    out, summary = results
    assert (summary.cases, summary.processed, summary.failed, summary.skipped) == (N_CASES, N_CASES, 0, 0)
    truth = read_truth(cohort.parent / "truth.csv")
    store = ResultStore.open(out, create=False)
    for entry in store.cases():
        expected = truth[entry["case_id"]]
        record = entry["record"]
        assert record["class_volume"] == expected["true_class_volume"], entry["case_id"]
        assert record["class_centroid"] == expected["true_class_centroid"], entry["case_id"]
        assert record["recurrence_registered"] == (expected["registered"] == "True")
        assert abs(record["inside_isodose_pct"] - float(expected["true_inside_pct"])) < 8.0
        assert record["centroid_dose_gy"] == pytest.approx(float(expected["true_centroid_dose_gy"]), abs=1.5)


def test_store_layout_and_flat_table(results):
    out, _ = results
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "isodose-cohort-1"
        assert json.loads(f.attrs["settings"])["target_metrics"] == list(SETTINGS.target_metrics)
        assert len(f["cases/case_id"]) == N_CASES
        assert set(f["cases"]) >= {"case_id", "status", "error", "record", "read_s", "compute_s", "total_s", "columns"}
        assert f["cases/columns/inside_isodose_pct"].dtype == np.float64
        roles = {v.decode() for v in f["dvh/role"][()]}
        assert roles == {"recurrence", "roi"}
        assert len(f["dvh/case"]) == N_CASES * 3  # Vr, CTV60, CTV54 (GTV, asked only for its volume, keeps none)
        assert np.all(f["cases/compute_s"][()] > 0)
    table = out.with_suffix(".csv")
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == N_CASES
    assert list(rows[0])[:2] == ["case_id", "error"]
    for key in (
        "recurrence_volume_cc",
        "inside_isodose_pct",
        "class_volume",
        "class_centroid",
        "centroid_dose_gy",
        "V95%",
        "D95",
        "D98",
        "D100",
        "Dmean",
        "Dmax",
        "GTV:volume",
        "CTV60:D98",
        "CTV54:D95",
        "backend",
    ):
        assert key in rows[0], key
    assert not out.with_name(out.name + ".tmp").exists()


def test_running_again_resumes_without_redoing_or_duplicating(cohort, results):
    out, _ = results
    before = out.read_bytes()
    summary = run_cohort(cohort, out, settings=SETTINGS, workers=2)
    assert (summary.processed, summary.skipped) == (0, N_CASES)
    assert out.read_bytes() == before  # nothing to do, nothing rewritten
    assert len(ResultStore.open(out, create=False)) == N_CASES


def test_other_settings_do_not_resume_a_store(cohort, results):
    out, _ = results
    with pytest.raises(StoreError, match="other settings"):
        run_cohort(cohort, out, settings=RunSettings(target_metrics=("GTV:volume",)))


def test_failed_cases_are_recorded_and_the_run_goes_on(cohort, tmp_path):
    rows = list(csv.DictReader(cohort.open()))[:3]
    manifest = tmp_path / "manifest.csv"
    data = cohort.parent
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: (str(data / v) if v and k not in ("case_id", "prescription_gy", "recurrence_roi") else v)
                    for k, v in row.items()
                }
            )
        bad = dict(rows[0], case_id="missing-file", dose=str(tmp_path / "nope.dcm"))
        writer.writerow(
            {
                k: (str(data / v) if v and k in ("structures", "plan", "recurrence_structures", "registration") else v)
                for k, v in bad.items()
            }
        )
        wrong_roi = dict(rows[1], case_id="missing-roi", recurrence_roi="NoSuchROI")
        writer.writerow(
            {
                k: (str(data / v) if v and k not in ("case_id", "prescription_gy", "recurrence_roi") else v)
                for k, v in wrong_roi.items()
            }
        )
    out = tmp_path / "r.h5"
    summary = run_cohort(manifest, out, settings=SETTINGS, workers=1)
    assert (summary.cases, summary.failed) == (5, 2)
    entries = {e["case_id"]: e for e in ResultStore.open(out, create=False).cases()}
    assert "nope.dcm: no such file" in entries["missing-file"]["error"]
    assert "no ROI 'NoSuchROI'" in entries["missing-roi"]["error"]
    table = {r["case_id"]: r for r in csv.DictReader(out.with_suffix(".csv").open())}
    assert table["missing-roi"]["error"] and not table[rows[0]["case_id"]]["error"]
    # A second run retries the failed cases only, and records each case once.
    again = run_cohort(manifest, out, settings=SETTINGS, workers=1)
    assert (again.processed, again.skipped, again.failed) == (2, 3, 2)
    assert len(ResultStore.open(out, create=False)) == 5


def test_a_crash_mid_write_loses_only_the_case_in_flight(cohort, tmp_path):
    """Simulate a kill during a journal write: the cut line is ignored, the store opens, a rerun completes."""
    out = tmp_path / "r.h5"
    cases = read_manifest(cohort)[:4]
    store = ResultStore.open(out, SETTINGS.as_dict())
    from isodose.cohort.work import process_case

    for case in cases[:2]:
        store.append(process_case(case, SETTINGS))
    with store.journal.open("a") as handle:
        handle.write('{"case_id": "' + cases[2].case_id + '", "status": "ok", "rec')  # cut short
    store.close()  # the crashed writer's lock goes with its process
    with ResultStore.open(out, SETTINGS.as_dict()) as reopened:
        assert reopened.finished() == {cases[0].case_id, cases[1].case_id}
    summary = run_cohort(cohort, out, settings=SETTINGS, workers=1, cases=cases)
    assert (summary.processed, summary.skipped) == (2, 2)
    assert len(ResultStore.open(out, create=False)) == 4


def test_cases_stored_together_are_synced_once_and_read_back_as_cases_stored_one_by_one(cohort, tmp_path, monkeypatch):
    """A batch of finished cases (the GPU arrangement finishes 32 at a time) costs one sync of the journal, and
    reads back as the same cases appended one at a time: NaN and infinities as null, NumPy values as numbers,
    curves included."""
    from isodose.cohort.work import process_case

    entries = [process_case(case, SETTINGS) for case in read_manifest(cohort)[:3]]
    entries[0]["record"]["centroid_dose_gy"] = float("nan")
    entries[1]["record"]["recurrence_volume_cc"] = np.float32(2.5)
    first_roi = next(iter(entries[1]["dvhs"]))
    entries[1]["dvhs"][first_roi]["cumulative_cc"][-1] = float("inf")
    syncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd)))
    with ResultStore.open(tmp_path / "one.h5", SETTINGS.as_dict()) as one_by_one:
        for entry in entries:
            one_by_one.append(entry)
        synced_alone = len(syncs)
        by_one = (one_by_one.cases(), one_by_one.dvh_curves())
    syncs.clear()
    with ResultStore.open(tmp_path / "all.h5", SETTINGS.as_dict()) as together:
        together.append_many(entries)
        assert len(syncs) == synced_alone - len(entries) + 1  # the journal's start, then one for the batch
        by_batch = (together.cases(), together.dvh_curves())
    assert by_batch[0] == by_one[0]
    assert by_batch[0][0]["record"]["centroid_dose_gy"] is None
    assert by_batch[0][1]["record"]["recurrence_volume_cc"] == 2.5
    assert len(by_batch[1]) == len(by_one[1]) > 0
    for a, b in zip(by_batch[1], by_one[1], strict=True):
        assert (a["case_id"], a["roi"], a["role"], a["step_gy"]) == (b["case_id"], b["roi"], b["role"], b["step_gy"])
        np.testing.assert_array_equal(a["cumulative_cc"], b["cumulative_cc"])
    curve = next(c for c in by_batch[1] if c["case_id"] == entries[1]["case_id"] and c["roi"] == first_roi)
    assert np.isnan(curve["cumulative_cc"][-1])


def test_journal_curves_are_written_as_float32_and_read_back_as_the_hdf5_file_keeps_them(cohort, tmp_path):
    """Curves go into the journal as the float32 values the HDF5 file keeps (base64), and read back exactly,
    before and after consolidation; journals written with the floats themselves, or with the integers of an
    earlier version (1e-5 cc), read the same."""
    from isodose.cohort.journal import CURVE_SCALE
    from isodose.cohort.work import process_case

    entries = [process_case(case, SETTINGS) for case in read_manifest(cohort)[:2]]
    expected = {
        (e["case_id"], roi): np.asarray(c["cumulative_cc"], np.float32) for e in entries for roi, c in e["dvhs"].items()
    }
    with ResultStore.open(tmp_path / "f32.h5", SETTINGS.as_dict()) as store:
        store.append_many(entries)
        line = store.journal.read_text().splitlines()[-1]
        assert '"cumulative_cc_f32": "' in line and '"cumulative_cc"' not in line
        written = {(c["case_id"], c["roi"]): c["cumulative_cc"] for c in store.dvh_curves()}
        store.consolidate()
        consolidated = {(c["case_id"], c["roi"]): c["cumulative_cc"] for c in store.dvh_curves()}
    as_integers = [
        {
            **e,
            "dvhs": {
                roi: {
                    "role": c["role"],
                    "step_gy": c["step_gy"],
                    "cumulative_cc_x1e5": [round(v * CURVE_SCALE) for v in c["cumulative_cc"]],
                }
                for roi, c in e["dvhs"].items()
            },
        }
        for e in entries
    ]
    read_older = {}
    for name, lines in (("floats", entries), ("integers", as_integers)):
        with ResultStore.open(tmp_path / f"{name}.h5", SETTINGS.as_dict()) as store:
            with store.journal.open("a") as handle:
                handle.writelines(json.dumps(e, default=np.ndarray.tolist) + "\n" for e in lines)  # lists, as once
        with ResultStore.open(tmp_path / f"{name}.h5", SETTINGS.as_dict()) as store:
            read_older[name] = {(c["case_id"], c["roi"]): c["cumulative_cc"] for c in store.dvh_curves()}
    assert written.keys() == consolidated.keys() == expected.keys()
    assert read_older["floats"].keys() == read_older["integers"].keys() == expected.keys()
    for key, values in expected.items():
        for got in (written[key], consolidated[key], read_older["floats"][key], read_older["integers"][key]):
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, values)


def test_a_second_run_on_the_same_results_is_refused_while_the_first_writes(cohort, tmp_path):
    """Two writers would each consolidate without the other's cases: the second run is refused, naming the
    first one's process, and goes ahead once that process has ended (however it ended)."""
    import textwrap

    out = tmp_path / "r.h5"
    cases = read_manifest(cohort)[:2]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from isodose.cohort.store import ResultStore
        store = ResultStore.open({str(out)!r}, {SETTINGS.as_dict()!r})
        print("open", flush=True)
        time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match=f"another isodose run is writing these results \\(pid {holder.pid} on "):
            run_cohort(cohort, out, settings=SETTINGS, workers=1, cases=cases)
    finally:
        holder.kill()
        holder.wait()
    summary = run_cohort(cohort, out, settings=SETTINGS, workers=1, cases=cases)
    assert (summary.processed, summary.failed) == (2, 0)
    # Within one process too, and readers are never refused.
    with ResultStore.open(out, SETTINGS.as_dict()):
        with pytest.raises(StoreError, match="this process has these results open for writing already"):
            run_cohort(cohort, out, settings=SETTINGS, workers=1, cases=cases)
        assert len(ResultStore.open(out, create=False)) == 2
    ResultStore.open(out, SETTINGS.as_dict()).close()


def test_a_finished_case_whose_inputs_changed_is_computed_again(cohort, tmp_path, caplog):
    """Resuming skips finished cases only while their inputs are those they ran with: a structure set edited
    since, or a changed prescription, makes the case run again (its new record replaces the old); a copy of
    the cohort that keeps the files' times (a moved cohort) changes nothing."""
    data = tmp_path / "data"
    shutil.copytree(cohort.parent, data)  # copy2: sizes and times kept
    manifest = data / cohort.name
    out = tmp_path / "r.h5"
    cases = read_manifest(manifest)[:3]
    first = run_cohort(manifest, out, settings=SETTINGS, workers=1, cases=cases)
    assert (first.processed, first.failed) == (3, 0)
    stored = {e["case_id"]: e for e in ResultStore.open(out, create=False).cases()}
    assert stored[cases[0].case_id]["inputs"]["files"]["structures"][0] == cases[0].structures.stat().st_size

    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    again = run_cohort(
        moved / cohort.name, out, settings=SETTINGS, workers=1, cases=read_manifest(moved / cohort.name)[:3]
    )
    assert (again.processed, again.skipped) == (0, 3)

    # Edit one case's structure set (same content, a new time: as a re-export would), and change another's
    # prescription.
    edited = cases[1].structures
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
    changed = [cases[0], replace(cases[1]), replace(cases[2], prescription_gy=66.0)]
    with caplog.at_level("WARNING"):
        third = run_cohort(manifest, out, settings=SETTINGS, workers=1, cases=changed)
    assert (third.processed, third.skipped) == (2, 1)
    assert (
        f"2 finished case(s) have inputs that changed since they ran ({cases[1].case_id}, {cases[2].case_id})"
        in caplog.text
    )
    records = {e["case_id"]: e["record"] for e in ResultStore.open(out, create=False).cases()}
    assert records[cases[2].case_id]["prescription_gy"] == 66.0
    warned = {e["case_id"]: e["warnings"] for e in ResultStore.open(out, create=False).cases()}
    assert any("the manifest's prescription_gy, 66 Gy, is used, not the plan's" in w for w in warned[cases[2].case_id])
    assert records[cases[1].case_id] == stored[cases[1].case_id]["record"]  # same content, same numbers
    fourth = run_cohort(manifest, out, settings=SETTINGS, workers=1, cases=changed)
    assert (fourth.processed, fourth.skipped) == (0, 3)
    # A store written before inputs were kept: its finished cases are taken as they are.
    with h5py.File(out, "a") as f:
        del f["cases/inputs"]
    fifth = run_cohort(manifest, out, settings=SETTINGS, workers=1, cases=cases)
    assert (fifth.processed, fifth.skipped) == (0, 3)


@pytest.mark.slow
def test_folder_input_gives_the_same_cases(cohort, results, tmp_path):
    manifest_cases = {c.case_id: c for c in read_manifest(cohort)}
    found = discover_cases(cohort.parent / "cases", "Recurrence", prescription_gy=70.0)
    assert {c.case_id for c in found} == set(manifest_cases)
    for case in found:
        expected = manifest_cases[case.case_id]
        assert not case.problem
        assert (case.dose, case.structures, case.registration) == (
            expected.dose,
            expected.structures,
            expected.registration,
        )
    without_rx = discover_cases(cohort.parent / "cases", "Recurrence")
    assert all(("no RTPLAN" in c.problem) == (manifest_cases[c.case_id].plan is None) for c in without_rx)
    out = tmp_path / "folder.h5"
    summary = run_cohort(cohort.parent / "cases", out, settings=SETTINGS, workers=1, prescription_gy=70.0)
    assert summary.failed == 0
    by_folder = {e["case_id"]: e["record"]["class_volume"] for e in ResultStore.open(out, create=False).cases()}
    by_manifest = {
        e["case_id"]: e["record"]["class_volume"] for e in ResultStore.open(results[0], create=False).cases()
    }
    assert by_folder == by_manifest


def test_reports(results, tmp_path):
    out, _ = results
    store = ResultStore.open(out, create=False)
    report = build_report(store)
    text = format_text(report)
    assert "Failure patterns" in text and "volume method" in text and "point of origin" in text
    assert sum(report.patterns["class_volume"].values()) == N_CASES
    metrics = {(s.structure, s.metric) for s in report.summaries}
    assert ("CTV60", "D98") in metrics and ("Recurrence (Vr)", "D100") in metrics
    page = write_html(report, store, tmp_path / "report.html").read_text()
    # V95% distribution, DVH bands of Vr and of CTV60 and CTV54 (none of GTV, asked only for its volume)
    assert page.count("data:image/png;base64,") == 1 + 3
    assert "marginal" in page and "CTV60:D98" in page and "<table>" in page
    # the cases' table names each target metric with its unit, as the other tables do
    assert "<th>GTV:volume (cc)</th>" in page and "<th>CTV60:D98 (Gy)</th>" in page


def test_a_target_metric_without_any_value_keeps_its_row_and_the_json_stays_json(cohort, tmp_path, capsys):
    """A target metric whose ROI no case's planning structures hold: its summary row stays, with n = 0 and no
    numbers, a note says why, and the report's JSON has null where a number is missing (no bare NaN)."""
    import io

    first = cohort.parent / "first-case.csv"  # beside the manifest, whose paths are relative to its folder
    first.write_text("".join(list(io.StringIO(cohort.read_text()))[:2]))  # the header and one case: SD is NaN
    out = tmp_path / "r.h5"
    settings = RunSettings(target_metrics=("CTV60:D98", "PTV99:D95"))
    assert run_cohort(first, out, settings=settings, workers=1).failed == 0
    report = build_report(ResultStore.open(out, create=False))
    rows = {(s.structure, s.metric): s for s in report.summaries}
    assert rows[("PTV99", "D95")].n == 0 and math.isnan(rows[("PTV99", "D95")].mean)
    assert rows[("CTV60", "D98")].n == 1
    assert any(note.startswith("PTV99:D95 has no value in any classified case") for note in report.notes)
    assert "PTV99" in format_text(report)
    code = main(["cohort", "report", str(out), "--format", "json", "--html", str(tmp_path / "r.html")])
    assert code == 0

    def no_nan(constant):
        raise AssertionError(f"{constant} in the JSON")

    document = json.loads(capsys.readouterr().out, parse_constant=no_nan)
    summaries = {(s["structure"], s["metric"]): s for s in document["summaries"]}
    assert summaries[("PTV99", "D95")]["n"] == 0 and summaries[("PTV99", "D95")]["mean"] is None
    assert summaries[("CTV60", "D98")]["SD" if "SD" in summaries[("CTV60", "D98")] else "sd"] is None


@pytest.mark.slow
def test_cli_cohort_run_and_report(cohort, tmp_path, capsys):
    out = tmp_path / "cli.h5"
    code = main(
        [
            "cohort",
            "run",
            str(cohort),
            "--out",
            str(out),
            "--workers",
            "1",
            "--metric",
            "CTV60:D98",
            "--metric",
            "D2cc",
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{N_CASES} cases: {N_CASES} processed (0 failed)" in captured.out
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert "D2cc" in rows[0] and "CTV60:D98" in rows[0]
    code = main(["cohort", "report", str(out), "--format", "json", "--html", str(tmp_path / "r.html")])
    captured = capsys.readouterr()
    assert code == 0
    assert sum(json.loads(captured.out)["patterns"]["class_volume"].values()) == N_CASES
    assert (tmp_path / "r.html").is_file()
    assert main(["cohort", "report", str(tmp_path / "none.h5")]) == 2


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--workers", "0"], "the number of worker processes must be a whole number of at least 1, not 0"),
        (["--workers", "-2"], "the number of worker processes must be a whole number of at least 1, not -2"),
        (["--out-is-a-folder"], "is a folder: the results go into a file, such as RESULTS.h5 inside it"),
    ],
)
def test_cli_cohort_run_refuses_bad_options_in_one_line(cohort, tmp_path, capsys, arguments, message):
    out = tmp_path if arguments == ["--out-is-a-folder"] else tmp_path / "r.h5"
    extra = [] if arguments == ["--out-is-a-folder"] else arguments
    code = main(["cohort", "run", str(cohort), "--out", str(out), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not list(tmp_path.iterdir()) and not tmp_path.with_name(tmp_path.name + ".lock").exists()


def test_cli_classify_json(cohort, capsys):
    row = next(r for r in csv.DictReader(cohort.open()) if r["registration"])
    base = cohort.parent
    argv = [
        "classify",
        "--dose",
        str(base / row["dose"]),
        "--structures",
        str(base / row["structures"]),
        "--recurrence",
        row["recurrence_roi"],
        "--recurrence-structures",
        str(base / row["recurrence_structures"]),
        "--registration",
        str(base / row["registration"]),
        "--prescription",
        "70",
        "--format",
        "json",
        "--metric",
        "CTV54:D95",
    ]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    for key in (
        "recurrence_volume_cc",
        "inside_isodose_pct",
        "class_volume",
        "class_centroid",
        "centroid_dose_gy",
        "V95%",
        "D95",
        "D98",
        "D100",
        "Dmean",
        "Dmax",
        "CTV54:D95",
    ):
        assert key in record
    assert record["recurrence_registered"] is True
    without_structures = argv[:7] + argv[9:11] + ["--prescription", "70"]
    assert main(without_structures) == 2  # a registration without the structures it maps
    assert "--registration maps --recurrence-structures" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        ("case_id,dose,structures\nA,rd.dcm,rs.dcm\n", r"missing column\(s\) recurrence_roi; a manifest has"),
        (
            "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,registration\n"
            "A,rd.dcm,rs.dcm,,70,Vr,,\nA,rd.dcm,rs.dcm,,70,Vr,,\n",
            "line 3: case_id 'A' repeats line 2",
        ),
        (
            "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,registration\n"
            "A,rd.dcm,rs.dcm,,seventy,Vr,,\n",
            "not a positive dose",
        ),
        (
            "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,registration\n"
            "A,rd.dcm,rs.dcm,,70,Vr,,reg.dcm\n",
            "a registration needs recurrence_structures",
        ),
    ],
)
def test_manifest_errors(tmp_path, content, message):
    path = tmp_path / "manifest.csv"
    path.write_text(content)
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_a_manifest_may_leave_out_the_columns_it_leaves_empty(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("case_id,dose,structures,recurrence_roi,prescription_gy,T_stage\nA,rd.dcm,rs.dcm,GTVr,70,T3\n")
    [case] = read_manifest(path)
    assert (case.case_id, case.recurrence_roi, case.prescription_gy) == ("A", "GTVr", 70.0)
    assert case.plan is None and case.recurrence_structures is None and case.registration is None
    assert case.problem == ""
    path.write_text("case_id,dose,structures,recurrence_roi\nA,rd.dcm,rs.dcm,GTVr\n")
    [case] = read_manifest(path)
    assert case.problem == "the manifest gives no plan and no prescription_gy"


def test_manifests_in_other_encodings(tmp_path):
    """A spreadsheet's UTF-8 export (with its byte-order mark) is read; a Latin-1 one is refused in one line."""
    header = "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,registration\n"
    row = "Mélanie,rd.dcm,rs.dcm,,70,Récidive,,\n"
    path = tmp_path / "manifest.csv"
    path.write_bytes((header + row).encode("utf-8-sig"))
    [case] = read_manifest(path)
    assert (case.case_id, case.recurrence_roi) == ("Mélanie", "Récidive")
    path.write_bytes((header + row).encode("latin-1"))
    with pytest.raises(
        ManifestError, match="manifest.csv: is not UTF-8 text \\(byte 0xe9 at offset [0-9]+\\); save it as a UTF-8 CSV"
    ):
        read_manifest(path)


@pytest.mark.slow
def test_demo_command(tmp_path, capsys):
    assert main(["demo", "--cases", "6", "--out", str(tmp_path / "demo"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "volume method 6/6, point of origin 6/6" in out
    assert (tmp_path / "demo" / "report.html").is_file()
    # Running it again starts afresh rather than resuming a stale cohort.
    shutil.rmtree(tmp_path / "demo" / "cohort" / "cases" / "NPC0001")
    assert main(["demo", "--cases", "6", "--out", str(tmp_path / "demo"), "--workers", "1"]) == 0
    assert "6/6" in capsys.readouterr().out


@pytest.mark.slow
def test_worker_processes_are_spawned_not_forked(tmp_path, monkeypatch):
    """Generating a cohort and running it start their worker processes afresh: a fork of a process that
    already runs threads (Numba's, after any computing) can deadlock in the child."""

    def forbidden():
        raise AssertionError("a worker process was forked")

    monkeypatch.setattr(os, "fork", forbidden)
    manifest = generate_cohort(tmp_path / "data", 4, seed=8, workers=2)
    summary = run_cohort(manifest, tmp_path / "r.h5", settings=SETTINGS, workers=2)
    assert summary.processed == 4 and summary.failed == 0


@pytest.mark.slow
def test_pipelined_run_reads_in_workers_and_computes_here(cohort, results, tmp_path):
    """The GPU arrangement (reading workers feeding one computing process), here with Numba computing:
    the same numbers as workers that read and compute, whatever the thread counts."""
    out = tmp_path / "pipelined.h5"
    summary = run_cohort(cohort, out, settings=SETTINGS, workers=2, pipelined=True)
    assert (summary.processed, summary.failed) == (N_CASES, 0)
    ignore = {"device"}
    pipelined = {
        e["case_id"]: {k: v for k, v in e["record"].items() if k not in ignore}
        for e in ResultStore.open(out, create=False).cases()
    }
    default = {
        e["case_id"]: {k: v for k, v in e["record"].items() if k not in ignore}
        for e in ResultStore.open(results[0], create=False).cases()
    }
    assert pipelined == default
    assert all(
        e["timings"]["read_s"] > 0 and e["timings"]["compute_s"] > 0
        for e in ResultStore.open(out, create=False).cases()
    )
    assert not list(handover.SHM.glob(f"{handover.PREFIX}{os.getpid()}-*"))  # every case's block went


def test_a_long_run_spares_its_start_up_heap_from_the_collector(cohort, results, tmp_path, monkeypatch):
    """A run of many cases freezes the heap of the process that writes its results once its first batch is stored
    (Python's collector then looks only at what is made afterwards), and unfreezes it when it ends, even when it
    stops on an error; a short run, or a program that froze its own heap, is left alone. The numbers are the same."""
    import gc

    from isodose.cohort import execution

    seen: list[int] = []
    monkeypatch.setattr(execution, "SPARE_HEAP_FROM_CASES", N_CASES)
    out = tmp_path / "spared.h5"
    summary = run_cohort(
        cohort,
        out,
        settings=SETTINGS,
        workers=2,
        pipelined=True,
        batch_size=4,
        on_result=lambda entry: seen.append(gc.get_freeze_count()),
    )
    assert (summary.processed, summary.failed) == (N_CASES, 0)
    first = seen.index(next(c for c in seen if c > 0))  # the first case stored after the first batch
    assert 0 < first <= 4 and all(count > 0 for count in seen[first:]), seen
    assert gc.get_freeze_count() == 0

    def records(path):
        return {
            e["case_id"]: {k: v for k, v in e["record"].items() if k != "device"}
            for e in ResultStore.open(path, create=False).cases()
        }

    assert records(out) == records(results[0])

    def stop(entry):
        if gc.get_freeze_count():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cohort(cohort, tmp_path / "stopped.h5", settings=SETTINGS, workers=1, on_result=stop)
    assert gc.get_freeze_count() == 0
    seen.clear()  # fewer cases than a run spares its heap from
    run_cohort(
        cohort,
        tmp_path / "short.h5",
        settings=SETTINGS,
        workers=1,
        cases=read_manifest(cohort)[:3],
        on_result=lambda entry: seen.append(gc.get_freeze_count()),
    )
    assert seen == [0, 0, 0]
    spared = execution.SparedHeap(10, from_cases=1)
    spared.after_batch()
    spared.release()
    spared.after_batch()  # a batch after the run's end (none comes today) freezes nothing again
    assert gc.get_freeze_count() == 0
    calls = []
    monkeypatch.setattr(execution.gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(execution.gc, "get_freeze_count", lambda: 1)  # a program that froze its own heap
    run_cohort(cohort, tmp_path / "own.h5", settings=SETTINGS, workers=1)
    assert calls == []


def _curves(entry) -> dict:
    """An entry's stored curves, comparable with ``==`` (their volumes are arrays)."""
    return {roi: (c["role"], c["step_gy"], np.asarray(c["cumulative_cc"]).tolist()) for roi, c in entry["dvhs"].items()}


@pytest.mark.skipif(not handover.available(), reason="needs POSIX shared memory in /dev/shm")
def test_a_case_sent_through_shared_memory_classifies_as_one_read_here(cohort):
    from isodose.cohort.work import classify_batch, read_and_prepare, read_and_send

    cases = read_manifest(cohort)[:2]
    expected = classify_batch([read_and_prepare(case, SETTINGS) for case in cases], SETTINGS, "numba")
    sent = [read_and_send(case, SETTINGS, os.getpid()) for case in cases]
    assert all(s.block is not None for s in sent)  # the dose grids went through shared memory
    got = classify_batch([handover.receive(s) for s in sent], SETTINGS, "numba")
    for a, b in zip(got, expected, strict=True):
        assert (a["status"], a["record"], _curves(a)) == (b["status"], b["record"], _curves(b))
    assert not list(handover.SHM.glob(f"{handover.PREFIX}{os.getpid()}-*"))


def test_cases_prepared_where_they_are_read_are_not_prepared_again(cohort, monkeypatch):
    """The reading workers of the GPU arrangement plan each case's sampling (read_and_prepare); what they send
    gives the computing process the entry of a case read and classified in one place, without planning again.
    It holds no contours (the structure sets stay in the worker): pickling thousands of small arrays would
    cost the computing process more than the case's whole classification."""
    import pickle

    from isodose import recurrence
    from isodose.cohort.work import classify_batch, classify_inputs, read_and_prepare, read_case

    cases = read_manifest(cohort)[:3]
    expected = [classify_inputs(read_case(case), SETTINGS, "numba") for case in cases]
    sent = [pickle.dumps(read_and_prepare(case, SETTINGS)) for case in cases]  # as from a worker
    assert not any(b"Contour" in data or b"StructureSet" in data for data in sent)
    shipped = [pickle.loads(data) for data in sent]
    assert all(s.prepared is not None and s.prepare_s > 0 and s.structures is None for s in shipped)

    def prepare_again(case, options):
        raise AssertionError("prepared again")

    monkeypatch.setattr(recurrence, "_prepare", prepare_again)
    for got, want in zip(classify_batch(shipped, SETTINGS, "numba"), expected, strict=True):
        assert (got["status"], got["record"], _curves(got), got["warnings"]) == (
            want["status"],
            want["record"],
            _curves(want),
            want["warnings"],
        )


def test_a_case_failing_inside_a_batch_keeps_its_warnings(cohort, monkeypatch):
    from isodose import recurrence
    from isodose.cohort.work import classify_batch, read_case
    from isodose.errors import IsodoseError

    inputs = [read_case(c) for c in read_manifest(cohort)[:3]]
    original = recurrence._prepare

    def prepare(case, options):
        if case.dose is inputs[1].dose:
            logging.getLogger("isodose.recurrence").warning("a warning before the failure")
            raise IsodoseError("this case cannot be classified")
        return original(case, options)

    monkeypatch.setattr(recurrence, "_prepare", prepare)
    entries = classify_batch(inputs, SETTINGS, "numba")
    assert [e["status"] for e in entries] == ["ok", "error", "ok"]
    assert entries[1]["error"] == "this case cannot be classified"
    assert any("a warning before the failure" in w for w in entries[1]["warnings"])
    assert not any("a warning before the failure" in w for w in entries[0]["warnings"] + entries[2]["warnings"])


@pytest.mark.slow
def test_kill_9_at_any_moment_loses_at_most_the_case_in_flight(cohort, results, tmp_path):
    """Kill the cohort command (SIGKILL) three times at different points of a run: after each kill the store
    opens, and the last run completes it with every case once and the numbers of an uninterrupted run."""
    out = tmp_path / "killed.h5"
    journal = out.with_name(out.name + ".journal")
    command = [
        sys.executable,
        "-m",
        "isodose.cli",
        "cohort",
        "run",
        str(cohort),
        "--out",
        str(out),
        "--workers",
        "1",
        "--no-progress",
        "--metric",
        "GTV:volume",
        "--metric",
        "CTV60:D98",
        "--metric",
        "CTV54:D95",
    ]
    finished_before = 0
    for kill_after in (2, 9, 17):  # cases in the journal when the kill comes
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            lines = journal.read_bytes().count(b"\n") if journal.exists() else 0
            if lines - 1 >= kill_after:  # the first line holds the settings
                break
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
        finished = ResultStore.open(out, create=False).finished()
        assert len(finished) >= max(kill_after, finished_before)  # nothing finished was lost
        finished_before = len(finished)
    summary = run_cohort(cohort, out, settings=SETTINGS, workers=1)
    assert (summary.skipped, summary.processed, summary.failed) == (finished_before, N_CASES - finished_before, 0)
    ignore = {"device"}
    recovered = {
        e["case_id"]: {k: v for k, v in e["record"].items() if k not in ignore}
        for e in ResultStore.open(out, create=False).cases()
    }
    expected = {
        e["case_id"]: {k: v for k, v in e["record"].items() if k not in ignore}
        for e in ResultStore.open(results[0], create=False).cases()
    }
    assert recovered == expected


def test_no_room_for_the_results_is_refused_before_any_work(cohort, tmp_path, monkeypatch):
    import shutil as shutil_module

    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage._replace(free=1_000_000))
    out = tmp_path / "r.h5"
    with pytest.raises(StoreError, match=r"only 1 MB free for the results; 30 cases need about 4 MB"):
        run_cohort(cohort, out, settings=SETTINGS, workers=1)
    assert ResultStore.open(out, create=False).finished() == set()


def test_a_full_disk_mid_run_stops_with_a_clear_error_and_keeps_what_was_written(cohort, tmp_path, monkeypatch):
    import errno

    import isodose.cohort.store as store_module

    cases = read_manifest(cohort)[:6]
    real_fsync, synced = os.fsync, []

    def fsync_until_full(fd):
        synced.append(fd)
        if len(synced) > 4:  # the settings line and three cases, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(store_module.os, "fsync", fsync_until_full)
    out = tmp_path / "r.h5"
    with pytest.raises(StoreError, match="r.h5.journal: cannot append to the journal \\(No space left on device\\)"):
        run_cohort(cohort, out, settings=SETTINGS, workers=1, cases=cases)
    monkeypatch.setattr(store_module.os, "fsync", real_fsync)
    kept = ResultStore.open(out, create=False).finished()
    # The three cases synced are kept; the fourth's line was written but not synced, so it may be there too.
    assert kept in ({c.case_id for c in cases[:3]}, {c.case_id for c in cases[:4]})
    summary = run_cohort(cohort, out, settings=SETTINGS, workers=1, cases=cases)
    assert (summary.skipped, summary.processed, summary.failed) == (len(kept), 6 - len(kept), 0)


@pytest.mark.slow
def test_rerunning_gives_identical_numbers_whatever_the_thread_count(cohort, results, tmp_path):
    import numba

    cases = read_manifest(cohort)[:8]
    threads = numba.get_num_threads()
    records = []
    try:
        for n in sorted({1, max(2, threads)}):
            numba.set_num_threads(n)
            out = tmp_path / f"threads{n}.h5"
            run_cohort(cohort, out, settings=SETTINGS, workers=1, cases=cases)
            records.append(
                {
                    e["case_id"]: {k: v for k, v in e["record"].items() if k != "device"}
                    for e in ResultStore.open(out, create=False).cases()
                }
            )
    finally:
        numba.set_num_threads(threads)
    assert records[0] == records[-1]  # exactly: every float, bit for bit
    assert len(records[0]) == 8


def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(cohort, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["cohort", "run", str(cohort), "--out", str(blocker / "results.h5"), "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"--out: {blocker} is a file, not a folder" in err
    assert blocker.read_text() == "not a folder"


def test_a_folder_that_refuses_writes_is_refused_before_any_work(cohort, tmp_path, monkeypatch):
    import isodose.cohort.store as store_module

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store_module.tempfile, "NamedTemporaryFile", refuse)  # what chmod does, even for root
    with pytest.raises(StoreError, match=r"the output folder is not writable \(Permission denied\)"):
        run_cohort(cohort, tmp_path / "ro" / "r.h5", settings=SETTINGS, workers=1)


def test_a_second_course_adds_accumulated_metrics_and_risk_flags(cohort, results, tmp_path):
    """Each case re-irradiated with a uniform 30 Gy in 10 fractions on its planning grid: the recurrence's
    accumulated physical D95 is its planning D95 plus 30 Gy, its second-course EQD2 is 30 x 13 / 12 Gy."""
    from isodose.dicom.read import read_dose
    from isodose.dicom.write import write_dose
    from isodose.model import DoseGrid

    rows = list(csv.DictReader(cohort.open()))[:5]
    data = cohort.parent
    manifest = tmp_path / "manifest.csv"
    columns = list(rows[0]) + ["fractions", "second_dose", "second_fractions"]
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for index, row in enumerate(rows):
            row = {
                k: (str(data / v) if v and k not in ("case_id", "prescription_gy", "recurrence_roi") else v)
                for k, v in row.items()
            }
            planned = read_dose(row["dose"])
            uniform = DoseGrid(
                np.full(planned.dose_gy.shape, 30.0, np.float32),
                planned.origin_mm,
                planned.spacing_mm,
                planned.frame_of_reference_uid,
            )
            second = write_dose(
                uniform,
                tmp_path / f"{row['case_id']}-RD2.dcm",
                frame_of_reference_uid=planned.frame_of_reference_uid,
                patient_id=planned.patient_id,
            )
            fractions = "35"
            if index == len(rows) - 1:  # no first-course fractions and no plan to read them from: this case fails
                fractions, row["plan"], row["prescription_gy"] = "", "", "70"
            writer.writerow({**row, "fractions": fractions, "second_dose": str(second), "second_fractions": "10"})
    out = tmp_path / "reirradiated.h5"
    summary = run_cohort(manifest, out, settings=SETTINGS, workers=1)
    assert (summary.processed, summary.failed) == (5, 1)
    expected = {e["case_id"]: e["record"] for e in ResultStore.open(results[0], create=False).cases()}
    entries = ResultStore.open(out, create=False).cases()
    failed = [e for e in entries if e["case_id"] == rows[-1]["case_id"]]
    assert len(failed) == 1 and not failed[0].get("record")
    assert (
        "the first course's number of fractions is needed and it has no RTPLAN to read it from: add the plan, "
        "or give the case in a manifest with a fractions column"
    ) in failed[0]["error"]
    for entry in [e for e in entries if e is not failed[0]]:
        record, planned = entry["record"], expected[entry["case_id"]]
        assert record["class_volume"] == planned["class_volume"]
        assert (record["course1_fractions"], record["course2_fractions"]) == (35, 10)
        assert record["vr_accumulated_physical_d95_gy"] == pytest.approx(planned["D95"] + 30.0, abs=2e-3)
        assert record["vr_course2_eqd2_d95_gy"] == pytest.approx(30.0 * 13.0 / 12.0, abs=1e-3)
        assert record["risk_reirradiation_eqd2_ge_68gy"] is False
        assert record["risk_accumulated_gtv_eqd2_ge_145_5gy"] is (record["vr_accumulated_eqd2_d95_gy"] >= 145.5)
        assert record["risk_recurrent_gtv_ge_25cc"] is (planned["recurrence_volume_cc"] >= 25.0)
    table = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert {"vr_accumulated_eqd2_d95_gy", "risk_accumulated_gtv_eqd2_ge_145_5gy"} <= set(table[0])


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"second_dose": "RD2.dcm"}, "a second_dose needs second_fractions or a second_plan"),
        ({"second_fractions": "10"}, "need a second_dose"),
        ({"second_dose": "RD2.dcm", "second_fractions": "ten"}, "second_fractions 'ten' is not a whole number"),
    ],
)
def test_second_course_columns_are_checked(tmp_path, extra, message):
    manifest = tmp_path / "m.csv"
    header = "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,registration"
    header += ",second_dose,second_fractions"
    values = {"second_dose": "", "second_fractions": "", **extra}
    manifest.write_text(f"{header}\nA,RD.dcm,RS.dcm,,70,Vr,,,{values['second_dose']},{values['second_fractions']}\n")
    with pytest.raises(ManifestError, match=message):
        read_manifest(manifest)


def _dated(path, day: str) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    ds.RTPlanDate, ds.RTPlanTime = day, "120000"
    ds.save_as(path)


def test_folder_input_with_second_courses(cohort, results, tmp_path, caplog):
    """Two patients re-irradiated with a uniform 30 Gy in 10 fractions planned on a second frame (one on the
    follow-up frame that holds the recurrence, one on a new frame related by its own REG): one case each, the
    earlier plan first, with the accumulated metrics the manifest route gives."""
    from isodose.dicom.read import read_structures
    from isodose.dicom.write import write_dose, write_plan, write_registration
    from isodose.model import DoseGrid

    manifest = {c.case_id: c for c in read_manifest(cohort)}
    followed = next(c for c in manifest.values() if c.registration and c.plan)
    planned_only = next(c for c in manifest.values() if not c.registration and c.plan)
    folder = tmp_path / "exports"
    uniform = DoseGrid(np.full((61, 61, 61), 30.0, np.float32), (-300.0,) * 3, (10.0,) * 3)
    for case in (followed, planned_only):
        target = folder / case.case_id
        shutil.copytree(case.dose.parent, target)
        _dated(target / case.plan.name, "20190301")
        if case.registration:
            frame = read_structures(case.recurrence_structures).frame_of_reference_uid
        else:
            frame = f"1.2.826.0.1.3680043.8.498.{len(case.case_id)}99"
            write_registration(
                target / "REG2.dcm",
                registered_frame_uid=read_structures(case.structures).frame_of_reference_uid,
                source_frame_uid=frame,
                matrix=np.eye(4),
                patient_id=case.case_id,
            )
        write_dose(uniform, target / "RD2.dcm", patient_id=case.case_id, frame_of_reference_uid=frame)
        write_plan(
            target / "RP2.dcm",
            prescription_gy=30.0,
            number_of_fractions=10,
            patient_id=case.case_id,
            frame_of_reference_uid=frame,
        )
        _dated(target / "RP2.dcm", "20230615")

    with caplog.at_level("WARNING"):
        separate = discover_cases(folder, "Recurrence")
    assert len(separate) == 4 and "several planning frames" in caplog.text
    found = {c.case_id: c for c in discover_cases(folder, "Recurrence", second_courses=True)}
    assert set(found) == {followed.case_id, planned_only.case_id}
    for case in found.values():
        assert not case.problem, case.problem
        assert (case.dose.name, case.plan.name, case.second_dose.name, case.second_plan.name) == (
            "RD.dcm",
            "RP.dcm",
            "RD2.dcm",
            "RP2.dcm",
        )
    assert found[followed.case_id].second_registration == found[followed.case_id].registration
    assert found[planned_only.case_id].second_registration.name == "REG2.dcm"

    out = tmp_path / "exports.h5"
    assert (
        main(["cohort", "run", str(folder), "--out", str(out), "--second-courses", "--workers", "1", "--no-progress"])
        == 0
    )
    assert [e["status"] for e in ResultStore.open(out, create=False).cases()] == ["ok", "ok"]
    planned = {e["case_id"]: e["record"] for e in ResultStore.open(results[0], create=False).cases()}
    for entry in ResultStore.open(out, create=False).cases():
        record, first = entry["record"], planned[entry["case_id"]]
        assert record["class_volume"] == first["class_volume"]
        assert record["course2_fractions"] == 10
        assert record["vr_accumulated_physical_d95_gy"] == pytest.approx(first["D95"] + 30.0, abs=2e-3)
        assert record["vr_course2_eqd2_d95_gy"] == pytest.approx(30.0 * 13.0 / 12.0, abs=1e-3)

    with pytest.raises(ManifestError, match="second courses are found in folders"):
        run_cohort(cohort, tmp_path / "manifest.h5", second_courses=True)

    # Courses whose order the files do not tell are refused, with the reason.
    for plan in folder.rglob("RP*.dcm"):
        _dated(plan, "20230615")
    undated = discover_cases(folder, "Recurrence", second_courses=True)
    assert all("cannot tell which of frames" in c.problem for c in undated)


@pytest.mark.parametrize(
    "drop, message",
    [
        ("REG", "no REG relating it to F1 in frame of reference F2"),
        ("RP2", "0 RTPLAN files in frame of reference F2 for the second course's fractions"),
        ("dates", "cannot tell which of frames F1 and F2 was treated first"),
    ],
)
def test_second_courses_missing_files_are_named(tmp_path, drop, message):
    """Re-irradiated patients assembled from headers alone: what is missing is the case's recorded problem."""
    from isodose.cohort.cases import _assemble_two_courses, _Header

    headers = {
        "RD1": _Header(tmp_path / "RD1.dcm", "RTDOSE", "P", "F1", "1", date="20190301"),
        "RP1": _Header(tmp_path / "RP1.dcm", "RTPLAN", "P", "F1", "2", date="20190301"),
        "RS1": _Header(tmp_path / "RS1.dcm", "RTSTRUCT", "P", "F1", "3", rois=("GTV", "Recurrence")),
        "RD2": _Header(tmp_path / "RD2.dcm", "RTDOSE", "P", "F2", "4", date="20230615"),
        "RP2": _Header(tmp_path / "RP2.dcm", "RTPLAN", "P", "F2", "5", date="20230615"),
        "REG": _Header(tmp_path / "REG.dcm", "REG", "P", "F1", "6", registered_frames=("F1", "F2")),
    }
    complete = _assemble_two_courses("P", ["F1", "F2"], list(headers.values()), "Recurrence", None)
    assert not complete.problem and complete.second_registration.name == "REG.dcm"
    assert (complete.dose.name, complete.second_dose.name, complete.second_plan.name) == (
        "RD1.dcm",
        "RD2.dcm",
        "RP2.dcm",
    )
    three = _assemble_two_courses("P", ["F1", "F2", "F3"], list(headers.values()), "Recurrence", None)
    assert "3 planning frames of reference" in three.problem
    if drop == "dates":
        for header in headers.values():
            header.date = ""
    items = [h for name, h in headers.items() if name != drop]
    assert message in _assemble_two_courses("P", ["F1", "F2"], items, "Recurrence", None).problem


def test_a_backend_object_reaches_worker_processes_by_its_name(cohort, tmp_path):
    """A backend from resolve_backend works with worker processes (each loads it by name); one made by hand, which
    cannot travel, is refused before any case runs instead of failing every case."""
    from isodose.dispatch import Backend, resolve_backend
    from isodose.errors import IsodoseError
    from isodose.kernels import numba_cpu

    cases = read_manifest(cohort)[:2]
    summary = run_cohort(
        cohort, tmp_path / "r.h5", settings=SETTINGS, workers=2, cases=cases, backend=resolve_backend("numba")
    )
    assert (summary.processed, summary.failed) == (2, 0)
    hand_made = Backend("mine", "a tool's own", numba_cpu)
    with pytest.raises(IsodoseError, match="'mine' was made by hand, and cannot be sent to worker processes"):
        run_cohort(cohort, tmp_path / "s.h5", settings=SETTINGS, workers=2, cases=cases, backend=hand_made)


def test_a_staged_finish_stages_each_batch_before_completing_the_one_before():
    """The local pool with a finish in two steps (the GPU arrangement's): batch k + 1 is staged (its copies to the
    device started) before batch k is completed (its kernels run), every case is completed exactly once, and the
    last batch is completed when the queue runs dry."""
    from isodose.cohort.cases import Case
    from isodose.cohort.execution import StagedFinish
    from isodose.cohort.local import ProcessPool

    calls: list[tuple[str, tuple[str, ...]]] = []

    class Recording:
        def __call__(self, items):
            raise AssertionError("a staged finish is staged and completed, not called")

        def stage(self, items):
            ids = tuple(case.case_id for case, _ in items)
            calls.append(("stage", ids))
            return items

        def complete(self, staged):
            calls.append(("complete", tuple(case.case_id for case, _ in staged)))
            return [{"case_id": case.case_id, "value": value} for case, value in staged]

    assert isinstance(Recording(), StagedFinish)
    todo = [Case(f"c{i}", None, None, "Vr") for i in range(9)]
    stored: list[dict] = []
    ProcessPool(2, batch_size=2).run(todo, repr, Recording(), stored.extend)
    assert sorted(e["case_id"] for e in stored) == sorted(c.case_id for c in todo)
    assert all(e["value"] == repr(case) for e, case in zip(sorted(stored, key=lambda e: e["case_id"]), todo))
    staged = [ids for kind, ids in calls if kind == "stage"]
    assert [ids for kind, ids in calls if kind == "complete"] == staged  # each batch once, in order
    # At least two batches whatever the timing (a batch is finished once two cases are ready, and at most four are
    # ever in flight); how many more depends on how the results arrive (fewer on a loaded machine).
    assert len(staged) >= 2
    for k in range(1, len(staged)):  # batch k staged before batch k - 1 completed
        assert calls.index(("stage", staged[k])) < calls.index(("complete", staged[k - 1]))


def test_a_case_reads_only_the_rois_its_classification_uses_and_classifies_as_with_all(cohort, monkeypatch):
    """A cohort's case parses the contours of its recurrence, its targets and its target metrics' ROIs only (the
    other ROIs listed without contours): the records are those of reading every ROI."""
    from isodose.cohort import work
    from isodose.cohort.settings import RunSettings

    settings = RunSettings(target_metrics=("GTV:volume", "CTV60:D98", "brainstem:Dmax"))
    cases = read_manifest(cohort)[:6]
    selective = [work.classify_inputs(work.read_case(c, settings), settings, "numba") for c in cases]
    inputs = work.read_case(cases[0], settings)
    read = {s.name for s in inputs.structures.structures if s.contours}
    assert {"GTV", "CTV60", "BrainStem"} <= read
    assert read < set(inputs.structures.names)  # some organs left unread
    monkeypatch.setattr(work, "_rois_needed", lambda case, settings: None)
    everything = [work.classify_inputs(work.read_case(c, settings), settings, "numba") for c in cases]
    for a, b in zip(selective, everything):
        assert a["status"] == b["status"] == "ok" and a["record"] == b["record"]


@pytest.mark.parametrize("registered", [True, False], ids=["registered", "in-the-planning-frame"])
def test_a_recurrence_named_like_a_planning_roi_keeps_both_curves(cohort, tmp_path, registered):
    """A follow-up structure set's recurrence may bear the name of a planning ROI (a "CTV54" contoured again at
    recurrence), whether it is mapped by a registration or drawn in the planning frame already: the store keeps the
    recurrence's curve and the planning ROI's, each with its role, rather than one in place of the other; the
    report's figure of CTV54 holds the planning ROI's alone."""
    import pydicom

    from isodose.cohort.work import process_case
    from isodose.dicom.read import read_dose

    case = next(c for c in read_manifest(cohort) if c.recurrence_structures)
    follow_up = pydicom.dcmread(case.recurrence_structures)
    for item in follow_up.StructureSetROISequence:
        if item.ROIName == case.recurrence_roi:
            item.ROIName = "CTV54"
    if not registered:  # drawn in the planning frame: no registration
        frame = read_dose(case.dose).frame_of_reference_uid
        follow_up.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = frame
        for item in follow_up.StructureSetROISequence:
            item.ReferencedFrameOfReferenceUID = frame
        case = replace(case, registration=None)
    renamed = tmp_path / "follow_up.dcm"
    follow_up.save_as(renamed)
    settings = replace(SETTINGS, target_metrics=("CTV54:D95",))
    entry = process_case(replace(case, recurrence_structures=renamed, recurrence_roi="CTV54"), settings)
    assert entry["status"] == "ok", entry["error"]
    with ResultStore.open(tmp_path / "r.h5", settings.as_dict()) as store:
        store.append(entry)
        curves = {(c["roi"], c["role"]): c["cumulative_cc"] for c in store.dvh_curves()}
    assert set(curves) == {("CTV54", "recurrence"), ("CTV54", "roi")}
    record = entry["record"]
    # Each curve is its own structure's: the recurrence's starts at its volume, the planning CTV54's at its own.
    assert curves[("CTV54", "recurrence")][0] == pytest.approx(record["recurrence_volume_cc"], rel=1e-5)
    assert curves[("CTV54", "roi")][0] > 5 * curves[("CTV54", "recurrence")][0]
    assert entry["record"]["recurrence_registered"] is registered
    store = ResultStore.open(tmp_path / "r.h5", create=False)
    store.consolidate()
    assert {(c["roi"], c["role"]) for c in store.dvh_curves()} == {("CTV54", "recurrence"), ("CTV54", "roi")}
    from isodose.cohort.report import curves_by_figure

    _, by_roi = curves_by_figure(build_report(store), store.dvh_curves())
    [planning] = by_roi[("roi", "CTV54")]
    assert planning["cumulative_cc"][0] == pytest.approx(curves[("CTV54", "roi")][0])


def test_an_roi_asked_only_for_its_volume_keeps_no_curve_and_has_no_figure(cohort, tmp_path):
    """GTV asked only for its volume is sampled for it alone: its volume the same as with a metric of its dose too
    (to rounding), the other metrics the same, no curve of it kept, and no figure of it in the report, even from a
    store of an earlier version, which kept one. An ROI named by its number (CTV54 is ROI 7) keeps its curve and its
    figure."""
    from isodose.cohort.report import curves_by_figure
    from isodose.cohort.work import process_case

    first, second = [c for c in read_manifest(cohort) if not c.recurrence_structures][:2]
    settings = replace(SETTINGS, target_metrics=("GTV:volume", "CTV60:D98", "7:D95"))
    entries = [process_case(first, settings), process_case(second, settings)]
    with_dose = process_case(first, replace(settings, target_metrics=("GTV:volume", "GTV:D95", "CTV60:D98", "7:D95")))
    assert all(e["status"] == "ok" for e in [*entries, with_dose])
    assert set(entries[0]["dvhs"]) == {first.recurrence_roi, "CTV60", "CTV54"}
    assert "GTV" in with_dose["dvhs"]
    record, reference = entries[0]["record"], with_dose["record"]
    assert record["GTV:volume"] == pytest.approx(reference["GTV:volume"], rel=1e-12)
    assert record["CTV60:D98"] == reference["CTV60:D98"] and record["7:D95"] == reference["7:D95"]
    entries[1]["dvhs"]["GTV"] = dict(entries[1]["dvhs"]["CTV60"])  # as an earlier version kept it
    with ResultStore.open(tmp_path / "r.h5", settings.as_dict()) as store:
        store.append_many(entries)
    store = ResultStore.open(tmp_path / "r.h5", create=False)
    assert ("GTV", "roi") in {(c["roi"], c["role"]) for c in store.dvh_curves()}
    _, by_roi = curves_by_figure(build_report(store), store.dvh_curves())
    assert set(by_roi) == {("roi", "CTV60"), ("roi", "CTV54")} and len(by_roi[("roi", "CTV60")]) == 2


def test_cli_classify_csv_keeps_each_warning_whole(cohort, capsys):
    """Warnings hold ``;`` themselves ("no ROI 'X'; the structure set has: ..."): the CSV's warnings cell joins them
    with `` | ``, as the cohort table and ``dvh --format csv`` do, so that splitting it gives each one back whole."""
    row = next(r for r in csv.DictReader(cohort.open()) if not r["registration"])
    base = cohort.parent
    argv = ["classify", "--dose", str(base / row["dose"]), "--structures", str(base / row["structures"])]
    argv += ["--recurrence", row["recurrence_roi"], "--prescription", "70"]
    argv += ["--metric", "CTV99:D95", "--metric", "PTV99:D95", "--allow-missing-targets"]
    assert main([*argv, "--format", "json"]) == 0
    messages = json.loads(capsys.readouterr().out)["warnings"]
    assert len(messages) >= 2 and all(";" in m for m in messages[:2]), messages
    assert main([*argv, "--format", "csv"]) == 0
    [record] = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert record["warnings"].split(" | ") == messages


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cohort_run_keeps_cases_warnings_off_the_terminal_and_counts_them(cohort, tmp_path, capsys, workers):
    """A case's warnings go with its result, and the terminal shows them alike whatever the number of workers: not
    one by one (from worker processes they never reached it, and in this process they came without their case's
    id), but as a count in the summary."""
    out = tmp_path / "r.h5"
    argv = ["cohort", "run", str(cohort), "--out", str(out), "--workers", workers, "--no-progress"]
    assert main([*argv, "--metric", "Nope:D95"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" not in captured.err, captured.err
    assert f"{N_CASES} of the cases processed have warnings" in captured.out
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == N_CASES and all("no ROI 'Nope'" in row["warnings"] for row in rows)


def test_only_warnings_kept_with_a_case_are_kept_off_the_terminal():
    """Inside a cohort's case work, a warning that a case keeps (logged where its warnings are collected) is not
    shown on the terminal; debugging output (a failed case's traceback with -vv) and a warning no case keeps (the
    run's own, from the process that receives cases) are."""
    from isodose.errors import collect_warnings, off_the_terminal, shown_on_terminal

    def record(level):
        return logging.LogRecord("isodose.test", level, __file__, 1, "message", None, None)

    assert shown_on_terminal(record(logging.WARNING))
    with off_the_terminal():
        assert shown_on_terminal(record(logging.WARNING))  # no case keeps it
        with collect_warnings():
            assert not shown_on_terminal(record(logging.WARNING))
            assert not shown_on_terminal(record(logging.ERROR))
            assert shown_on_terminal(record(logging.DEBUG)) and shown_on_terminal(record(logging.INFO))
        assert shown_on_terminal(record(logging.WARNING))
    with collect_warnings():  # a single case's command: its warnings are shown and kept
        assert shown_on_terminal(record(logging.WARNING))
