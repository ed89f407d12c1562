"""Trust on real clinical exports: inputs that belong together, doses of whole courses, warnings kept with results,
and the small things a new user met. Run on public files (pydicom's RT test files; dicompyler-core's example
patient, fetched from the package registry and skipped offline) and on files the project writes."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from isodose.cli import main
from isodose.dicom.read import read_dose, read_plan, read_structures
from isodose.dicom.write import new_uid, write_dose, write_plan, write_structures
from isodose.phantoms import LinearField, Sphere, contour_shape, example_case

FRAME = "1.2.826.0.1.3680043.8.498.1"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------------------------------------
# Public files
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pydicom_rt():
    """pydicom's own RT test files (shipped with it): a RELATIVE, per-beam RTDOSE of patient id11111 that
    references a plan not among them, an RTPLAN of patient id00001, an RTSTRUCT of patient tPhantom30sep."""
    from pydicom.data import get_testdata_file

    files = {name: get_testdata_file(f"{name}.dcm") for name in ("rtdose", "rtplan", "rtstruct")}
    if not all(files.values()):
        pytest.skip("pydicom's RT test files are not installed")
    return {name: Path(path) for name, path in files.items()}


# --------------------------------------------------------------------------------------------------------
# Files that belong together
# --------------------------------------------------------------------------------------------------------
def write_case(folder: Path, *, patient="P1", plan_patient=None, referenced_plan="same", summation="PLAN"):
    """The example case as DICOM: RTDOSE, RTSTRUCT and an RTPLAN (of ``plan_patient``, and the plan the dose
    references unless ``referenced_plan`` is another UID or None)."""
    grid, structures = example_case()
    plan_uid = new_uid()
    dose_reference = plan_uid if referenced_plan == "same" else referenced_plan
    rd = write_dose(
        grid,
        folder / "RD.dcm",
        patient_id=patient,
        frame_of_reference_uid=FRAME,
        referenced_plan_uid=dose_reference,
        summation_type=summation,
    )
    rs = write_structures(
        structures,
        folder / "RS.dcm",
        patient_id=patient,
        frame_of_reference_uid=FRAME,
        interpreted_types={s.name: s.interpreted_type for s in structures.structures},
    )
    rp = write_plan(
        folder / "RP.dcm",
        prescription_gy=70.0,
        number_of_fractions=35,
        frame_of_reference_uid=FRAME,
        patient_id=plan_patient or patient,
        sop_instance_uid=plan_uid,
    )
    return rd, rs, rp


def test_a_plan_of_another_patient_is_refused_naming_both_files(tmp_path, capsys):
    rd, rs, rp = write_case(tmp_path, plan_patient="P2")
    code, out, err = run(capsys, "dvh", "--dose", rd, "--structures", rs, "--plan", rp, "--metric", "V95%")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "RP.dcm is of patient 'P2'" in err and "RD.dcm of patient 'P1'" in err and "--allow-mismatch" in err
    code, out, err = run(
        capsys,
        "dvh",
        "--dose",
        rd,
        "--structures",
        rs,
        "--plan",
        rp,
        "--metric",
        "V95%",
        "--allow-mismatch",
        "--format",
        "json",
    )
    assert code == 0
    document = json.loads(out)
    assert any("of patient 'P2'" in w and "going on" in w for w in document["warnings"])
    assert "going on, as asked (--allow-mismatch)" in err


def test_a_plan_the_dose_does_not_reference_is_refused(tmp_path, capsys):
    other = new_uid()
    rd, rs, rp = write_case(tmp_path, referenced_plan=other)
    code, _, err = run(capsys, "classify", "--dose", rd, "--structures", rs, "--plan", rp, "--recurrence", "Recurrence")
    assert code == 2 and err.count("\n") == 1
    assert f"references RTPLAN {other}" in err and "RP.dcm is RTPLAN" in err and "not the dose's" in err
    # The files of a case written together belong together, and classify.
    (tmp_path / "ok").mkdir()
    rd, rs, rp = write_case(tmp_path / "ok")
    assert run(capsys, "classify", "--dose", rd, "--structures", rs, "--plan", rp, "--recurrence", "Recurrence")[0] == 0


def test_pydicoms_files_of_three_patients_do_not_make_a_case(pydicom_rt, capsys):
    """Real files: pydicom's RTDOSE (patient id11111) and RTSTRUCT (tPhantom30sep) are refused together, and its
    RTPLAN (id00001) is not the plan the RTDOSE references."""
    dose = read_dose(pydicom_rt["rtdose"], relative_reference_gy=30.0)
    plan = read_plan(pydicom_rt["rtplan"])
    from isodose.provenance import mismatches

    problems = mismatches(dose, [read_structures(pydicom_rt["rtstruct"])], plan)
    assert any("of patient 'tPhantom30sep'" in p and "of patient 'id11111'" in p for p in problems)
    assert any(f"references RTPLAN {dose.referenced_plan_uid}" in p for p in problems)
    code, _, err = run(
        capsys,
        "dvh",
        "--dose",
        pydicom_rt["rtdose"],
        "--structures",
        pydicom_rt["rtstruct"],
        "--relative-dose-reference-gy",
        "30",
    )
    assert code == 2 and "do not belong to one case" in err.splitlines()[-1]


def test_dicompylers_example_patient_belongs_together(dicompyler_example, capsys):
    """Real files of one patient, the dose referencing its plan: no mismatch, and the BODY's part outside the dose
    grid is a warning kept with its DVH."""
    code, out, err = run(
        capsys,
        "dvh",
        "--dose",
        dicompyler_example["rtdose"],
        "--structures",
        dicompyler_example["rtss"],
        "--plan",
        dicompyler_example["rtplan"],
        "--roi",
        "BODY",
        "--metric",
        "V95%",
        "--format",
        "json",
    )
    assert code == 0, err
    [body] = json.loads(out)["structures"]
    assert body["volume_outside_dose_cc"] > 100 and any("outside the dose grid" in w for w in body["warnings"])


# --------------------------------------------------------------------------------------------------------
# Doses of a whole course, and sums of a plan's beams
# --------------------------------------------------------------------------------------------------------
def test_a_per_beam_dose_is_a_warning_in_dvh_and_refused_in_classify_naming_the_tag(tmp_path, capsys):
    rd, rs, rp = write_case(tmp_path, summation="BEAM")
    code, out, err = run(
        capsys, "dvh", "--dose", rd, "--structures", rs, "--plan", rp, "--metric", "V95%", "--format", "json"
    )
    assert code == 0 and "DoseSummationType is BEAM" in err
    assert any("DoseSummationType is BEAM" in w for w in json.loads(out)["warnings"])
    code, _, err = run(capsys, "classify", "--dose", rd, "--structures", rs, "--plan", rp, "--recurrence", "Recurrence")
    assert code == 2 and "DoseSummationType is BEAM" in err and "give every beam's" in err


def test_a_dose_difference_is_refused_in_classify(tmp_path, capsys):
    grid, structures = example_case()
    rd = write_dose(grid, tmp_path / "RD.dcm", frame_of_reference_uid=FRAME, dose_type="ERROR")
    rs = write_structures(structures, tmp_path / "RS.dcm", frame_of_reference_uid=FRAME)
    code, _, err = run(
        capsys, "classify", "--dose", rd, "--structures", rs, "--prescription", "70", "--recurrence", "Recurrence"
    )
    assert code == 2 and "DoseType is ERROR" in err


def test_classify_s_table_names_each_metric_with_its_unit(tmp_path, capsys):
    """The table (not the JSON or CSV, which keep the keys) shows each metric's unit, as the other keys carry theirs."""
    rd, rs, _ = write_case(tmp_path)
    common = ["classify", "--dose", rd, "--structures", rs, "--prescription", "70", "--recurrence", "Recurrence"]
    code, out, err = run(capsys, *common, "--metric", "D2cc", "--metric", "PTV:volume", "--metric", "PTV:V95%")
    assert code == 0, err
    labels = [re.split(r"\s{2,}", line)[0] for line in out.splitlines()]
    assert {"V95% (%)", "D95 (Gy)", "D2cc (Gy)", "PTV:volume (cc)", "PTV:V95% (%)", "recurrence_volume_cc"} <= set(
        labels
    )
    code, out, _ = run(capsys, *common, "--metric", "PTV:volume", "--format", "json")
    assert "PTV:volume" in json.loads(out)


def write_beams(folder: Path, weights=(0.25, 0.35, 0.4), other_grid_for_last=True):
    """The example case's dose split into per-beam RTDOSE files of one plan (the last on a coarser, shifted grid:
    resampled when summed; the field is linear, so resampling reproduces it), and the plan dose itself."""
    grid, structures = example_case()
    plan_uid = new_uid()
    field = LinearField(70.0, (0.0, -1.0, 0.0), (0.0, 0.0, 0.0))
    beams = []
    for k, weight in enumerate(weights):
        part = (
            field.grid((-33.0, -33.0, -33.0), (6.0, 6.0, 6.0), (12, 12, 12), FRAME)
            if other_grid_for_last and k == len(weights) - 1
            else grid
        )
        part = replace(part, dose_gy=part.dose_gy * np.float32(weight))
        beams.append(
            write_dose(
                part,
                folder / f"RD.beam{k + 1}.dcm",
                patient_id="P1",
                frame_of_reference_uid=FRAME,
                referenced_plan_uid=plan_uid,
                summation_type="BEAM",
                referenced_beam_number=k + 1,
            )
        )
    (folder / "plan").mkdir()
    plan_dose = write_dose(
        grid,
        folder / "plan" / "RD.plan.dcm",
        patient_id="P1",
        frame_of_reference_uid=FRAME,
        referenced_plan_uid=plan_uid,
    )
    rs = write_structures(
        structures,
        folder / "RS.dcm",
        patient_id="P1",
        frame_of_reference_uid=FRAME,
        interpreted_types={s.name: s.interpreted_type for s in structures.structures},
    )
    rp = write_plan(
        folder / "RP.dcm",
        prescription_gy=70.0,
        number_of_fractions=35,
        frame_of_reference_uid=FRAME,
        patient_id="P1",
        sop_instance_uid=plan_uid,
        number_of_beams=len(weights),
    )
    return beams, plan_dose, rs, rp


def test_the_beams_of_a_plan_sum_to_the_plan_dose(tmp_path, capsys):
    beams, plan_dose, rs, rp = write_beams(tmp_path)
    from isodose.reirradiation import sum_doses

    total = sum_doses([read_dose(b) for b in beams])
    expected = read_dose(plan_dose)
    assert total.summation_type == "PLAN" and total.dose_gy.shape == expected.dose_gy.shape
    np.testing.assert_allclose(total.dose_gy, expected.dose_gy, atol=2e-3)  # 16-bit storage of each beam
    arguments = ["--structures", rs, "--plan", rp, "--metric", "D95", "--metric", "V95%", "--format", "json"]
    code, out, err = run(capsys, "dvh", "--dose", *beams, *arguments)
    assert code == 0, err
    summed = {s["name"]: s for s in json.loads(out)["structures"]}
    code, out, _ = run(capsys, "dvh", "--dose", plan_dose, *arguments)
    whole = {s["name"]: s for s in json.loads(out)["structures"]}
    for name in whole:
        assert summed[name]["metrics"]["D95"] == pytest.approx(whole[name]["metrics"]["D95"], abs=5e-3), name
        assert summed[name]["metrics"]["V95%"] == pytest.approx(whole[name]["metrics"]["V95%"], abs=0.05), name
    # A beam left out is refused: the plan says it has three.
    code, _, err = run(
        capsys, "classify", "--dose", *beams[:2], "--structures", rs, "--plan", rp, "--recurrence", "Recurrence"
    )
    assert code == 2 and "beam 3 missing" in err and "their sum is not the plan's dose" in err


def test_a_beam_given_twice_is_refused_not_counted_twice(tmp_path, capsys):
    """As many files as the plan has beams is not enough: a copy of one beam's file, or two files of one beam,
    would count that beam twice and leave another out."""
    beams, _, rs, rp = write_beams(tmp_path, other_grid_for_last=False)
    copy = tmp_path / "RD.beam1.copy.dcm"
    shutil.copy(beams[0], copy)
    arguments = ["--structures", rs, "--plan", rp, "--recurrence", "Recurrence"]
    code, _, err = run(capsys, "classify", "--dose", beams[0], copy, beams[2], *arguments)
    assert code == 2 and "is the same RTDOSE (SOPInstanceUID" in err and "count it twice" in err
    # Another file (its own SOPInstanceUID) that is the dose of beam 1 again.
    grid, _ = example_case()
    again = write_dose(
        grid,
        tmp_path / "RD.beam1.again.dcm",
        patient_id="P1",
        frame_of_reference_uid=FRAME,
        referenced_plan_uid=read_dose(beams[0]).referenced_plan_uid,
        summation_type="BEAM",
        referenced_beam_number=1,
    )
    code, _, err = run(capsys, "dvh", "--dose", beams[0], again, beams[2], "--structures", rs, "--plan", rp)
    assert code == 2 and "are both the dose of beam 1" in err
    # Beams of numbers the plan does not have (3 files of 3, one of them beam 7): refused naming the missing beam.
    seventh = write_dose(
        grid,
        tmp_path / "RD.beam7.dcm",
        patient_id="P1",
        frame_of_reference_uid=FRAME,
        referenced_plan_uid=read_dose(beams[0]).referenced_plan_uid,
        summation_type="BEAM",
        referenced_beam_number=7,
    )
    code, _, err = run(capsys, "classify", "--dose", beams[0], beams[1], seventh, *arguments)
    assert code == 2 and "beam 3 missing" in err and "beam 7 not of the plan" in err


def test_folder_discovery_sums_the_per_beam_doses_of_one_plan(tmp_path):
    from isodose.cohort.cases import discover_cases
    from isodose.cohort.runner import run_cohort
    from isodose.cohort.settings import RunSettings
    from isodose.cohort.store import ResultStore

    folder = tmp_path / "export"
    folder.mkdir()
    beams, plan_dose, rs, rp = write_beams(folder, other_grid_for_last=False)
    plan_dose.unlink()  # the folder holds the beams alone
    [case] = discover_cases(folder, "Recurrence")
    assert not case.problem and {case.dose, *case.extra_doses} == set(beams) and case.plan == rp
    summary = run_cohort(folder, tmp_path / "r.h5", settings=RunSettings(), workers=1)
    assert (summary.processed, summary.failed) == (1, 0)
    [entry] = ResultStore.open(tmp_path / "r.h5", create=False).cases()
    assert entry["record"]["class_volume"] == "marginal"


# --------------------------------------------------------------------------------------------------------
# Reading what planning systems write
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", ["FFS", "FFP", "HFP"])
def test_absolute_frame_offsets_outside_head_first_supine_are_read_with_a_warning(tmp_path, orientation, caplog):
    grid, _ = example_case()
    rd = write_dose(grid, tmp_path / "RD.dcm", orientation=orientation, offsets="absolute")
    with caplog.at_level("WARNING"):
        read = read_dose(rd)
    np.testing.assert_allclose(read.dose_gy, grid.dose_gy, atol=2e-6)
    assert read.origin_mm == pytest.approx(grid.origin_mm) and read.spacing_mm == pytest.approx(grid.spacing_mm)
    # Only the identity orientation (HFS) may give absolute z by the standard: each of these departs from it.
    assert "holds absolute z positions" in caplog.text
    assert "where the standard allows only offsets relative to the first frame" in caplog.text
    assert ("the slice normal pointing -z" in caplog.text) == (orientation in ("FFS", "FFP"))


def test_absolute_frame_offsets_with_a_normal_off_z_are_refused(tmp_path):
    from isodose.errors import DoseGridError

    grid, _ = example_case()
    rd = write_dose(grid, tmp_path / "RD.dcm", orientation=(0, 1, 0, 0, 0, -1))  # sagittal: normal along x
    import pydicom

    ds = pydicom.dcmread(rd)
    ds.GridFrameOffsetVector = [float(ds.ImagePositionPatient[2]) + 3.0 * k for k in range(int(ds.NumberOfFrames))]
    ds.save_as(rd)
    with pytest.raises(DoseGridError, match="needs a slice normal along z"):
        read_dose(rd)


@pytest.mark.parametrize("scale_gy", [70.0, 0.7])  # fractions (1.0 = 100%), then percentages (100 = 100%)
def test_relative_dose_is_refused_without_its_reference_and_read_with_it(tmp_path, scale_gy, capsys):
    from isodose.errors import DoseUnitsError

    grid, structures = example_case()
    rd = write_dose(
        grid, tmp_path / "RD.dcm", dose_units="RELATIVE", relative_scale_gy=scale_gy, frame_of_reference_uid=FRAME
    )
    with pytest.raises(DoseUnitsError, match="give the dose of 100%"):
        read_dose(rd)
    read = read_dose(rd, relative_reference_gy=70.0)
    np.testing.assert_allclose(read.dose_gy, grid.dose_gy, rtol=1e-6, atol=1e-4)
    rs = write_structures(structures, tmp_path / "RS.dcm", frame_of_reference_uid=FRAME)
    code, _, err = run(capsys, "dvh", "--dose", rd, "--structures", rs)
    assert code == 2 and "--relative-dose-reference-gy" in err
    code, _, err = run(capsys, "dvh", "--dose", rd, "--structures", rs, "--relative-dose-reference-gy", "70")
    assert code == 0 and ("a fraction" if scale_gy == 70.0 else "a percentage") in err


def test_pydicoms_relative_dose_reads_with_a_reference(pydicom_rt):
    dose = read_dose(pydicom_rt["rtdose"], relative_reference_gy=30.0)
    assert dose.max_gy == pytest.approx(1.254 * 30.0, rel=1e-6) and dose.summation_type == "BEAM"


# --------------------------------------------------------------------------------------------------------
# Warnings are data
# --------------------------------------------------------------------------------------------------------
def structures_for(dose_path: Path, folder: Path) -> Path:
    """An RTSTRUCT of the dose's patient and frame holding a sphere inside its grid."""
    dose = read_dose(dose_path, relative_reference_gy=1.0)
    centre = tuple(float(np.mean(e)) for e in dose.extent_mm)
    sphere = contour_shape(Sphere(centre, 12.0), "Sphere", 1, 2.5)
    return write_structures(
        [sphere], folder / "RS.dcm", patient_id=dose.patient_id, frame_of_reference_uid=dose.frame_of_reference_uid
    )


def test_pydicoms_warnings_reach_isodoses_log_naming_the_file_never_stderr_raw(pydicom_rt, tmp_path):
    rs = structures_for(pydicom_rt["rtdose"], tmp_path)
    command = [
        sys.executable,
        "-m",
        "isodose.cli",
        "dvh",
        "--dose",
        str(pydicom_rt["rtdose"]),
        "--structures",
        str(rs),
        "--relative-dose-reference-gy",
        "30",
        "--format",
        "json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "UserWarning" not in result.stderr and "warn_and_log" not in result.stderr
    assert f"isodose: WARNING: {pydicom_rt['rtdose']}: Invalid value for VR UI" in result.stderr
    assert any("Invalid value for VR UI" in w for w in json.loads(result.stdout)["warnings"])


def test_folder_discovery_reports_pydicoms_warnings_as_its_own(pydicom_rt, tmp_path, caplog):
    import shutil
    import warnings

    from isodose.cohort.cases import discover_cases

    shutil.copy(pydicom_rt["rtdose"], tmp_path / "RD.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping isodose fails the test
        with caplog.at_level("WARNING"):
            discover_cases(tmp_path, "Recurrence")
    assert "RD.dcm: Invalid value for VR UI" in caplog.text


def test_a_library_that_configures_no_logging_prints_nothing(tmp_path):
    script = (
        "import isodose\n"
        "from isodose.phantoms import example_case\n"
        "from isodose.model import Structure\n"
        "dose, structures = example_case()\n"
        "[dvh] = isodose.compute_dvhs(dose, [Structure('empty', 9)])\n"
        "print(len(dvh.warnings))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "" and result.stdout.strip() == "1"


def test_warnings_are_kept_with_the_dvh_the_store_the_table_and_the_report(tmp_path, capsys):
    from isodose.cohort.report import build_report, format_text, write_html
    from isodose.cohort.runner import run_cohort
    from isodose.cohort.settings import RunSettings
    from isodose.cohort.store import ResultStore
    from isodose.dvh import compute_dvhs

    grid, structures = example_case()
    # Part of the recurrence beyond the dose grid: a warning of its DVH, of its case.
    far = contour_shape(Sphere((0.0, 0.0, 28.0), 5.0), "Recurrence", 3, 3.0, offset_mm=1.5)
    planning = type(structures)((structures.structures[0], structures.structures[1], far), FRAME)
    [dvh] = compute_dvhs(grid, planning, "Recurrence")
    assert any("outside the dose grid" in w for w in dvh.warnings)
    write_dose(grid, tmp_path / "RD.dcm", frame_of_reference_uid=FRAME)
    write_structures(planning, tmp_path / "RS.dcm", frame_of_reference_uid=FRAME)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,"
        "registration\nc1,RD.dcm,RS.dcm,,70,Recurrence,,\n"
    )
    out = tmp_path / "results.h5"
    run_cohort(manifest, out, settings=RunSettings(), workers=1)
    [entry] = ResultStore.open(out, create=False).cases()  # consolidated: read from the HDF5 file
    assert not (tmp_path / "results.h5.journal").exists()
    assert any("outside the dose grid" in w for w in entry["warnings"])
    [row] = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert "outside the dose grid" in row["warnings"]
    report = build_report(ResultStore.open(out, create=False))
    assert "outside the dose grid" in format_text(report)
    html = write_html(report, ResultStore.open(out, create=False), tmp_path / "r.html").read_text()
    assert "<h2>Warnings</h2>" in html and "outside the dose grid" in html


def test_a_run_ends_with_the_failed_cases_by_reason_and_exits_4_when_every_case_failed(tmp_path, capsys):
    rows = "".join(f"c{k},missing{k}/RD.dcm,missing{k}/RS.dcm,,70,Recurrence,,\n" for k in range(3))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,registration\n" + rows
    )
    code, out, _ = run(capsys, "cohort", "run", manifest, "--out", tmp_path / "r.h5", "--workers", "1", "--no-progress")
    assert code == 4
    assert "failed cases, by reason (3 in all" in out and "3 x RD.dcm: no such file (cases c0, c1, c2)" in out
    # the paths the reason shortened, in full for its first case, so that a wrong folder shows
    assert f"    the first, c0: {tmp_path / 'missing0' / 'RD.dcm'}: no such file" in out, out


# --------------------------------------------------------------------------------------------------------
# Small things a user met
# --------------------------------------------------------------------------------------------------------
def test_output_paths_are_checked_before_any_work(tmp_path, capsys):
    rd, rs, _ = write_case(tmp_path)
    code, _, err = run(capsys, "dvh", "--dose", rd, "--structures", rs, "--dvh-out", tmp_path)
    assert code == 2 and err.count("\n") == 1 and "is a folder" in err
    code, _, err = run(capsys, "dvh", "--dose", rd, "--structures", rs, "--dvh-out", tmp_path / "no" / "x.csv")
    assert code == 2 and "does not exist; create it first" in err and not (tmp_path / "no").exists()
    (tmp_path / "a-file").write_text("")
    code, _, err = run(capsys, "phantom", "--out", tmp_path / "a-file")
    assert code == 2 and err.count("\n") == 1 and "is a file, not a folder" in err


def test_quiet_and_verbose_work_after_the_command_too(tmp_path, capsys):
    grid, structures = example_case()
    planning = type(structures)(
        (*structures.structures, contour_shape(Sphere((0.0, 0.0, 29.0), 4.0), "Far", 9, 3.0)), FRAME
    )
    rd = write_dose(grid, tmp_path / "RD.dcm", frame_of_reference_uid=FRAME)
    rs = write_structures(planning, tmp_path / "RS.dcm", frame_of_reference_uid=FRAME)
    assert "WARNING" in run(capsys, "dvh", "--dose", rd, "--structures", rs)[2]
    assert run(capsys, "dvh", "--dose", rd, "--structures", rs, "-q")[2] == ""
    assert "isodose: DEBUG:" in run(capsys, "dvh", "--dose", rd, "--structures", rs, "-vv", "--backend", "auto")[2]
    assert run(capsys, "-q", "dvh", "--dose", rd, "--structures", rs)[2] == ""
    # Quiet hides warnings on the terminal, never in the results: the JSON and CSV keep them.
    rd, rs, rp = write_case(tmp_path)
    classify = ["classify", "--dose", rd, "--structures", rs, "--plan", rp, "--recurrence", "Recurrence"]
    classify += ["--metric", "Nope:D95"]
    # One case typed by hand: an ROI name that is not there is refused, since a typo would change the results.
    code, out, err = run(capsys, "-q", *classify, "--format", "json")
    assert code == 2 and out == "" and err.count("\n") == 1 and "no ROI 'Nope'" in err
    classify += ["--allow-missing-targets"]
    code, out, err = run(capsys, "-q", *classify, "--format", "json")
    assert code == 0 and err == ""
    [warning] = json.loads(out)["warnings"]
    assert "no ROI 'Nope'" in warning and "Nope:D95 is left out" in warning
    code, out, err = run(capsys, *classify, "-q", "--format", "csv")
    [row] = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and err == "" and "no ROI 'Nope'" in row["warnings"]


def test_every_command_that_prints_results_offers_table_json_and_csv(tmp_path, capsys):
    rd, rs, rp = write_case(tmp_path)
    code, out, _ = run(
        capsys,
        "classify",
        "--dose",
        rd,
        "--structures",
        rs,
        "--plan",
        rp,
        "--recurrence",
        "Recurrence",
        "--format",
        "csv",
    )
    [row] = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and row["class_volume"] == "marginal" and "warnings" in row
    code, out, _ = run(
        capsys, "accumulate", "--course", f"{rd}:35", "--course", f"{rd}:{rp}", "--structures", rs, "--format", "csv"
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and {"physical_D95", "eqd2_D95", "alpha_beta_gy"} <= set(rows[0])
    code, out, _ = run(capsys, "backends", "--format", "csv")
    assert code == 0 and {r["name"] for r in csv.DictReader(io.StringIO(out))} == {"cupy", "numba", "numpy"}


def test_the_accumulate_table_labels_every_column_with_its_quantity_and_unit(tmp_path, capsys):
    rd, rs, rp = write_case(tmp_path)
    code, out, _ = run(
        capsys,
        "accumulate",
        "--course",
        f"{rd}:35",
        "--course",
        f"{rd}:{rp}",
        "--structures",
        rs,
        "--metric",
        "D95",
        "--metric",
        "V20Gy",
    )
    header = out.splitlines()[2]
    assert code == 0
    for label in (
        "a/b Gy",
        "Volume cc",
        "Dmean Gy phys",
        "Dmean Gy EQD2",
        "D95 Gy phys",
        "D95 Gy EQD2",
        "V20Gy % phys",
        "V20Gy % EQD2",
    ):
        assert label in header, (label, header)


def test_rois_by_number_and_one_roi_by_name(tmp_path, capsys):
    from isodose.dvh import compute_dvhs

    rd, rs, _ = write_case(tmp_path)
    code, out, _ = run(capsys, "dvh", "--dose", rd, "--structures", rs, "--roi", "2", "--format", "json")
    assert code == 0 and [s["name"] for s in json.loads(out)["structures"]] == ["Cord"]
    grid, structures = example_case()
    assert [d.name for d in compute_dvhs(grid, structures, "Cord")] == ["Cord"]


def test_the_results_table_keeps_every_digit(tmp_path):
    from isodose.cohort.runner import run_cohort
    from isodose.cohort.settings import RunSettings
    from isodose.cohort.store import ResultStore

    rd, rs, rp = write_case(tmp_path)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,"
        "registration\nc1,RD.dcm,RS.dcm,RP.dcm,,Recurrence,,\n"
    )
    run_cohort(manifest, tmp_path / "r.h5", settings=RunSettings(), workers=1)
    [entry] = ResultStore.open(tmp_path / "r.h5", create=False).cases()
    [row] = list(csv.DictReader((tmp_path / "r.csv").open()))
    for key in ("recurrence_volume_cc", "inside_isodose_pct", "D95"):
        assert float(row[key]) == entry["record"][key]  # the same float, not one rounded to 6 digits


def test_a_dicom_file_given_as_a_manifest_says_so(tmp_path, capsys):
    rd, _, _ = write_case(tmp_path)
    code, _, err = run(capsys, "cohort", "run", rd, "--out", tmp_path / "r.h5")
    assert code == 2 and "is a DICOM file, not a manifest" in err and "UTF-8" not in err


def test_a_store_of_other_settings_names_what_differs(tmp_path, capsys):
    rd, rs, rp = write_case(tmp_path)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,"
        "registration\nc1,RD.dcm,RS.dcm,RP.dcm,,Recurrence,,\n"
    )
    arguments = ["cohort", "run", manifest, "--out", tmp_path / "r.h5", "--workers", "1", "--no-progress"]
    assert run(capsys, *arguments)[0] == 0
    code, _, err = run(capsys, *arguments, "--isodose", "90")
    assert code == 2 and "criteria.isodose_pct: the store has 95.0, this run asks for 90.0" in err


# --------------------------------------------------------------------------------------------------------
# What a second new user's trial found
# --------------------------------------------------------------------------------------------------------
def test_a_folders_prescription_never_overrides_a_plans(tmp_path, capsys):
    """``--prescription`` is for the cases of a folder that have no RTPLAN: a case with its plan keeps the plan's
    (it replaced it once, and every V95% with it); with a manifest it is refused, not ignored."""
    from isodose.cohort.cases import discover_cases

    folder = tmp_path / "cohort"
    (folder / "with-plan").mkdir(parents=True)
    write_case(folder / "with-plan", patient="P1")
    (folder / "no-plan").mkdir()
    rd, rs, rp = write_case(folder / "no-plan", patient="P2")
    rp.unlink()
    cases = {c.case_id: c for c in discover_cases(folder, "Recurrence", prescription_gy=50.0)}
    assert cases["P1"].plan is not None and cases["P1"].prescription_gy is None
    assert cases["P2"].plan is None and cases["P2"].prescription_gy == 50.0
    out = tmp_path / "r.h5"
    code, _, err = run(capsys, "cohort", "run", folder, "--out", out, "--prescription", "50", "--no-progress")
    assert code == 0, err
    rows = {r["case_id"]: r for r in csv.DictReader(io.StringIO(out.with_suffix(".csv").read_text()))}
    assert float(rows["P1"]["prescription_gy"]) == 70.0 and float(rows["P2"]["prescription_gy"]) == 50.0
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,registration\n"
        f"c1,{rd},{rs},,60,Recurrence,,\n"
    )
    code, _, err = run(capsys, "cohort", "run", manifest, "--out", tmp_path / "m.h5", "--prescription", "50")
    assert code == 2 and "--prescription is for the cases of a folder" in err and "prescription_gy column" in err


def test_a_manifest_row_without_plan_or_prescription_fails_that_case_alone(tmp_path, capsys):
    rd, rs, rp = write_case(tmp_path)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,registration\n"
        f"good,{rd},{rs},{rp},,Recurrence,,\nbare,{rd},{rs},,,Recurrence,,\n"
    )
    code, out, _ = run(capsys, "cohort", "run", manifest, "--out", tmp_path / "r.h5", "--workers", "1", "--no-progress")
    assert code == 0 and "1 x the manifest gives no plan and no prescription_gy (case bare)" in out


def test_the_summary_names_a_single_failed_cases_file_whole(tmp_path, capsys):
    """Failures are grouped by reason with their files' paths shortened to the files' names (every case has an
    RD.dcm), so that one problem of many cases is one line; a reason of one case shows its error whole."""
    rd, rs, rp = write_case(tmp_path)
    missing = tmp_path / "nope" / "RD.dcm"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,registration\n"
        f"good,{rd},{rs},{rp},,Recurrence,,\nbad,{missing},{rs},{rp},,Recurrence,,\n"
    )
    code, out, _ = run(capsys, "cohort", "run", manifest, "--out", tmp_path / "r.h5", "--workers", "1", "--no-progress")
    assert code == 0 and f"1 x {missing}: no such file (case bad)" in out, out


def test_a_rerun_that_leaves_some_cases_failed_and_others_done_exits_0(tmp_path, capsys):
    """Exit status 4 says that no case of the cohort has a result; a second run that retries the failed cases of a
    cohort whose other cases are done is not that."""
    rd, rs, rp = write_case(tmp_path)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,registration\n"
        f"good,{rd},{rs},{rp},,Recurrence,,\nbad,missing.dcm,{rs},{rp},,Recurrence,,\n"
    )
    arguments = ["--out", tmp_path / "r.h5", "--workers", "1", "--no-progress"]
    assert run(capsys, "cohort", "run", manifest, *arguments)[0] == 0
    code, out, _ = run(capsys, "cohort", "run", manifest, *arguments)
    assert code == 0 and "1 already done" in out and "(1 failed)" in out


def test_a_cohorts_store_in_a_missing_folder_is_refused_as_other_outputs_are(tmp_path, capsys):
    rd, rs, rp = write_case(tmp_path)
    code, _, err = run(capsys, "cohort", "run", tmp_path, "--out", tmp_path / "no" / "r.h5")
    assert code == 2 and "does not exist; create it first" in err and not (tmp_path / "no").exists()


def test_d100_is_dmin(tmp_path):
    """The dose the whole volume receives at least is the minimum dose, also where Dmin lies at a contour vertex
    below every sampled cell."""
    from isodose.dvh import compute_dvhs

    grid, structures = example_case()
    for dvh in compute_dvhs(grid, structures):
        assert dvh.metric("D100") == dvh.dmin_gy, dvh.name
        assert dvh.metric("D0") == dvh.dmax_gy, dvh.name


def test_written_rois_are_typed_by_their_names_where_no_type_is_given(tmp_path, capsys):
    """A phantom's GTV and PTVs are targets of the point-of-origin method (they were written as ORGAN)."""
    code, _, err = run(capsys, "phantom", "--out", tmp_path / "ph")
    assert code == 0, err
    [rs] = (tmp_path / "ph").glob("RS*.dcm")
    structures = read_structures(rs)
    targets = {s.name for s in structures.structures if s.is_target}
    assert targets and all(name.upper().startswith(("GTV", "CTV", "PTV")) for name in targets)
    assert all(s.interpreted_type == "ORGAN" for s in structures.structures if s.name not in targets)


def test_small_messages_a_user_met(tmp_path, capsys, caplog):
    # A plan of two target prescriptions says which it takes.
    from pydicom import dcmread

    rd, rs, rp = write_case(tmp_path)
    ds = dcmread(rp)
    second = type(ds.DoseReferenceSequence[0])()
    second.update(ds.DoseReferenceSequence[0])
    second.DoseReferenceNumber = 2
    second.TargetPrescriptionDose = "56"
    ds.DoseReferenceSequence.append(second)
    ds.save_as(rp)
    with caplog.at_level("WARNING", logger="isodose"):
        assert read_plan(rp).prescription_gy == 70.0
    assert "2 target prescriptions (70, 56 Gy): the highest, 70 Gy" in caplog.text
    # -q and -v contradict each other.
    with pytest.raises(SystemExit) as stop:
        main(["-q", "dvh", "--dose", str(rd), "--structures", str(rs), "-v"])
    assert stop.value.code == 2 and "contradict each other" in capsys.readouterr().err
    # A Nelms folder that is not there is named as such.
    code, _, err = run(capsys, "validate", "nelms", tmp_path / "nowhere")
    assert code == 2 and "no such folder" in err
    # A dose difference is not advised to be summed from beams.
    (tmp_path / "error").mkdir()
    rd, rs, rp = write_case(tmp_path / "error")
    ds = dcmread(rd)
    ds.DoseType = "ERROR"
    ds.save_as(rd)
    code, _, err = run(capsys, "classify", "--dose", rd, "--structures", rs, "--plan", rp, "--recurrence", "Recurrence")
    assert code == 2 and "DoseType is ERROR" in err and "beam" not in err and "give the plan's dose" in err


def test_every_files_warnings_go_with_the_dvhs_in_json_and_csv(tmp_path, capsys):
    """The plan's warnings (read before the dose) and the dose's are the document's in JSON, and in CSV every row's:
    a table of DVHs never loses what was warned about its inputs."""
    import copy

    rd, rs, rp = write_case(tmp_path, summation="FRACTION")
    plan = pydicom.dcmread(rp)
    second = copy.deepcopy(plan.DoseReferenceSequence[0])
    second.TargetPrescriptionDose = 60.0
    plan.DoseReferenceSequence.append(second)
    plan.save_as(rp)
    dvh = ["dvh", "--dose", rd, "--structures", rs, "--plan", rp]
    code, out, _ = run(capsys, *dvh, "--format", "json")
    warnings = json.loads(out)["warnings"]
    assert code == 0 and any("2 target prescriptions" in w for w in warnings)
    assert any("FRACTION" in w for w in warnings)
    code, out, _ = run(capsys, *dvh, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and rows
    assert all("2 target prescriptions" in r["warnings"] and "FRACTION" in r["warnings"] for r in rows)


def test_a_reference_dose_for_a_dose_in_gy_is_warned_about_and_repeated_rois_are_computed_once(tmp_path, capsys):
    rd, rs, _ = write_case(tmp_path)
    code, out, _ = run(
        capsys,
        "dvh",
        "--dose",
        rd,
        "--structures",
        rs,
        "--relative-dose-reference-gy",
        "50",
        "--roi",
        "PTV",
        "--roi",
        "ptv",
        "--roi",
        read_structures(rs).get("PTV").number,
        "--roi",
        "Cord",
        "--format",
        "json",
    )
    document = json.loads(out)
    assert code == 0 and [s["name"] for s in document["structures"]] == ["PTV", "Cord"]
    assert any(
        "DoseUnits is GY: the reference dose of relative dose (50 Gy) is not used" in w for w in document["warnings"]
    )
