"""Auditing a planning system's DVHs: the DVH Sequence read as written, isodose compared with it, one file or an
archive. References: closed-form DVHs of phantoms written as a planning system writes them, the Nelms 2015 set
(for where Dmin and Dmax are taken), and dicompyler-core's example patient, whose RTDOSE carries the DVHs of
its planning system (fetched from the package registry; skipped offline)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import dcmread

from isodose.audit import audit_dvhs, audit_files, read_dose_dvhs, size_class
from isodose.cli import main
from isodose.cohort.audit import AuditSettings, archive_summary, run_audit
from isodose.cohort.store import ResultStore
from isodose.dicom.read import read_dose, read_reported_dvhs, read_structures
from isodose.dicom.write import new_uid, write_dose, write_plan, write_structures
from isodose.dvh import PlanningSystemDVH, Tolerance, compute_dvhs
from isodose.errors import DicomReadError, InputMismatchError, IsodoseError
from isodose.phantoms import example_case, example_truths, reported_dvh
from isodose.voxelize import SamplingOptions

from .browser import screenshot


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_audited_case(folder: Path, *, shifted: dict[str, float] | None = None, patient="P1", **dvh_kwargs):
    """The example case with the closed-form DVHs of its ROIs in its RTDOSE's DVH Sequence (those of ``shifted``
    with every dose off by that many %), its RTSTRUCT and its RTPLAN."""
    folder.mkdir(parents=True, exist_ok=True)
    grid, structures = example_case()
    plan_uid, structure_set_uid = new_uid(), new_uid()
    numbers = {s.name: s.number for s in structures.structures}
    dvhs = [
        reported_dvh(truth, numbers[name], dose_shift_pct=(shifted or {}).get(name, 0.0), **dvh_kwargs)
        for name, truth in example_truths().items()
    ]
    rd = write_dose(
        grid,
        folder / "RD.dcm",
        patient_id=patient,
        frame_of_reference_uid=grid.frame_of_reference_uid,
        referenced_plan_uid=plan_uid,
        dvhs=dvhs,
        referenced_structure_set_uid=structure_set_uid,
        dvh_normalization_gy=dvh_kwargs.get("normalization_gy"),
    )
    rs = write_structures(
        structures,
        folder / "RS.dcm",
        patient_id=patient,
        frame_of_reference_uid=grid.frame_of_reference_uid,
        sop_instance_uid=structure_set_uid,
    )
    rp = write_plan(
        folder / "RP.dcm",
        prescription_gy=70.0,
        number_of_fractions=35,
        patient_id=patient,
        frame_of_reference_uid=grid.frame_of_reference_uid,
        sop_instance_uid=plan_uid,
    )
    return rd, rs, rp


# --------------------------------------------------------------------------------------------------------
# Reading the DVH Sequence
# --------------------------------------------------------------------------------------------------------
KINDS = [
    ("CUMULATIVE", "CM3"),
    ("CUMULATIVE", "PERCENT"),
    ("DIFFERENTIAL", "CM3"),
    ("DIFFERENTIAL", "PERCENT"),
    ("NATURAL", "PER_U"),
    ("NATURAL", "CM3"),
]


@pytest.mark.parametrize(("dvh_type", "volume_units"), KINDS)
def test_every_dvh_type_and_volume_unit_round_trips(tmp_path, dvh_type, volume_units):
    """Written as the standard says, read back as written, and read as the same curve: the closed form of each
    ROI's DVH (volume, Dmin, Dmean, Dmax, D95 and V60Gy) within the 0.01 Gy bins and 10 digits of the file."""
    truths = example_truths()
    rd, rs, _ = write_audited_case(tmp_path, dvh_type=dvh_type, volume_units=volume_units, dose_scaling=0.5)
    numbers = {s.name: s.number for s in read_structures(rs).structures}
    read = {d.roi_number: d for d in read_reported_dvhs(rd)}
    for name, truth in truths.items():
        written = reported_dvh(truth, numbers[name], dvh_type=dvh_type, volume_units=volume_units, dose_scaling=0.5)
        back = read[numbers[name]]
        assert (back.dvh_type, back.volume_units, back.dose_units, back.dose_scaling) == (
            dvh_type,
            volume_units,
            "GY",
            0.5,
        )
        np.testing.assert_allclose(back.bin_widths, written.bin_widths, rtol=1e-9)
        np.testing.assert_allclose(back.values, written.values, rtol=1e-9, atol=1e-12)
        assert back.mean_dose == pytest.approx(written.mean_dose, rel=1e-9)
    for tps in read_dose_dvhs(rd, read_structures(rs)):
        truth = truths[tps.name]
        if volume_units == "PERCENT":
            assert tps.relative_volume and math.isnan(tps.volume_cc) and math.isnan(tps.metric("D2cc"))
        else:
            assert tps.volume_cc == pytest.approx(truth.volume_mm3 / 1000.0, rel=1e-6)
        assert (tps.dmin_gy, tps.dmean_gy, tps.dmax_gy) == pytest.approx((truth.dmin_gy, truth.dmean_gy, truth.dmax_gy))
        assert tps.metric("D95") == pytest.approx(truth.dose_at_percent(95.0), abs=0.011)
        v60 = 100.0 * truth.volume_above(60.0) / truth.volume_mm3
        assert tps.metric("V60Gy") == pytest.approx(v60, abs=0.05)


def test_relative_doses_are_read_against_the_normalization_dose(tmp_path):
    rd, rs, _ = write_audited_case(tmp_path, dose_units="RELATIVE", normalization_gy=70.0)
    truths = example_truths()
    for tps in read_dose_dvhs(rd, read_structures(rs)):
        assert tps.dmean_gy == pytest.approx(truths[tps.name].dmean_gy)
        assert tps.metric("D95") == pytest.approx(truths[tps.name].dose_at_percent(95.0), abs=0.011)
        assert any("relative doses read as percentages of 70 Gy" in w for w in tps.warnings)
    # Without DVHNormalizationDoseValue, a reference must be given.
    ds = dcmread(rd)
    del ds.DVHNormalizationDoseValue
    ds.save_as(rd)
    assert read_dose_dvhs(rd) == []  # each item skipped, with a warning naming it
    assert len(read_dose_dvhs(rd, relative_reference_gy=70.0)) == 3


def malformed(item):
    """Ways a DVH Sequence item can be broken, each with what the warning says."""
    return {
        "two ROIs": ("refers to 2 ROIs", lambda i: i.DVHReferencedROISequence.append(i.DVHReferencedROISequence[0])),
        "error dose": ("DoseType is ERROR", lambda i: setattr(i, "DoseType", "ERROR")),
        "bins": ("DVHNumberOfBins is 3", lambda i: setattr(i, "DVHNumberOfBins", 3)),
        "units": ("DVHVolumeUnits LITRE is not one of", lambda i: setattr(i, "DVHVolumeUnits", "LITRE")),
        "odd data": ("not pairs of bin width and volume", lambda i: setattr(i, "DVHData", list(i.DVHData)[:-1])),
        "rising": ("CUMULATIVE volumes rise", lambda i: setattr(i, "DVHData", [0.01, 1.0, 0.01, 2.0])),
        "negative": ("negative volumes", lambda i: setattr(i, "DVHData", [0.01, 1.0, 0.01, -0.5])),
        "width": ("bin widths that are not positive", lambda i: setattr(i, "DVHData", [0.0, 1.0, 0.01, 0.5])),
        "type": ("DVHType is missing", lambda i: delattr(i, "DVHType")),
    }


@pytest.mark.parametrize("kind", sorted(malformed(None)))
def test_a_malformed_item_is_skipped_with_a_warning_naming_the_item_and_its_roi(tmp_path, kind, caplog):
    rd, rs, rp = write_audited_case(tmp_path)
    message, damage = malformed(None)[kind]
    ds = dcmread(rd)
    item = ds.DVHSequence[1]  # the Cord's, ROI 2
    if kind in ("bins", "rising", "negative", "width"):
        item.DVHNumberOfBins = 2 if kind != "bins" else item.DVHNumberOfBins
    damage(item)
    ds.save_as(rd)
    with caplog.at_level("WARNING", logger="isodose"):
        dvhs = read_reported_dvhs(rd)
    assert [d.roi_number for d in dvhs] == [1, 3]
    assert f"{rd}: DVH item 2" in caplog.text and message in caplog.text and "skipped" in caplog.text
    if kind != "two ROIs":
        assert "DVH item 2 (ROI 2)" in caplog.text
    # The audit goes on with the others, and keeps the warning with its result.
    result = audit_files(rd, rs, rp)
    assert [s.name for s in result.structures] == ["PTV", "Recurrence"]
    assert any("DVH item 2" in w and message in w for w in result.warnings)


def test_a_dose_without_a_dvh_sequence_is_a_one_line_error(tmp_path, capsys):
    grid, structures = example_case()
    rd = write_dose(grid, tmp_path / "RD.dcm")
    rs = write_structures(structures, tmp_path / "RS.dcm")
    with pytest.raises(DicomReadError, match="holds no DVH Sequence"):
        read_reported_dvhs(rd)
    code, out, err = run(capsys, "audit", "--dose", rd, "--structures", rs)
    assert code == 2 and out == "" and err.count("\n") == 1 and "RD.dcm: holds no DVH Sequence" in err


def test_reported_statistics_in_percent_of_the_prescription_are_read_as_such(tmp_path):
    """A planning system that writes DVHMinimum/Mean/MaximumDose in % of the prescription though DoseUnits is GY
    (dicompyler-core's example does): read as % where only that fits the curve, else the curve's own."""
    truth = example_truths()["PTV"]
    item = reported_dvh(truth, 1)
    percent = replace(
        item, minimum_dose=100 * item.minimum_dose / 70, mean_dose=100.0, maximum_dose=100 * item.maximum_dose / 70
    )
    tps = PlanningSystemDVH.from_reported(percent, "PTV", prescription_gy=70.0)
    assert tps.dmean_gy == pytest.approx(70.0) and tps.dmin_gy == pytest.approx(truth.dmin_gy)
    assert any("only as % of the prescription (70 Gy)" in w for w in tps.warnings)
    alone = PlanningSystemDVH.from_reported(percent, "PTV")  # no prescription: the curve's
    assert alone.dmean_gy == pytest.approx(truth.dmean_gy, abs=0.01) and alone.dmax_gy == pytest.approx(
        item.bin_widths.sum(), abs=0.011
    )
    assert any("do not fit its curve" in w for w in alone.warnings)


# --------------------------------------------------------------------------------------------------------
# Comparing
# --------------------------------------------------------------------------------------------------------
def test_the_closed_form_dvhs_of_phantoms_agree_and_a_shifted_roi_is_flagged_alone(tmp_path):
    rd, rs, rp = write_audited_case(tmp_path / "exact")
    result = audit_files(rd, rs, rp, metrics=["V95%", "D2cc", "HI"])
    assert result.agrees and [s.name for s in result.structures] == ["PTV", "Cord", "Recurrence"]
    for s in result.structures:
        [c] = s.comparisons.values()
        assert max(abs(v) for v in c.difference_pct.values() if math.isfinite(v)) < 0.05, s.name
        assert c.dvh_max_difference_pct < 0.05
    rd, rs, rp = write_audited_case(tmp_path / "shifted", shifted={"Cord": 5.0})
    result = audit_files(rd, rs, rp)
    verdict = {s.name: s.agrees() for s in result.structures}
    assert verdict == {"PTV": True, "Cord": False, "Recurrence": True}
    [cord] = [s for s in result.structures if s.name == "Cord"]
    c = cord.comparisons["half"]
    # isodose is exact: the planning system's doses are 5% high, so isodose's are 1/1.05 of its.
    assert c.difference_pct["dmean_gy"] == pytest.approx(100 * (1 / 1.05 - 1), abs=0.01)
    assert set(c.outside_tolerance) >= {"dmean_gy", "dmax_gy", "D95", "D50"} and "volume_cc" not in c.outside_tolerance


def test_tolerance_judges_small_values_against_floors():
    t = Tolerance()
    assert t.allows(0.029, 0.01, "Gy") and not t.allows(0.031, 0.01, "Gy")  # 3% of the 1 Gy floor
    assert t.allows(1.79, 60.0, "Gy") and not t.allows(1.81, 60.0, "Gy")
    assert t.allows(0.003, 0.05, "cc") and not t.allows(0.004, 0.05, "cc")
    with pytest.raises(Exception, match="percent must be a number of at least 0"):
        Tolerance(percent=-1)


def test_the_largest_curve_gap_is_exact_for_piecewise_linear_curves():
    grid, structures = example_case()
    [half] = compute_dvhs(grid, structures, ["PTV"])
    [none] = compute_dvhs(grid, structures, ["PTV"], options=SamplingOptions(end_cap="none"))
    c = half.compare(none)
    doses = np.linspace(0, 90, 200_001)
    dense = np.max(np.abs(half.cumulative(doses, relative=True) - none.cumulative(doses, relative=True)))
    assert c.dvh_max_difference_pct == pytest.approx(dense, abs=1e-3) and c.dvh_max_difference_pct >= dense - 1e-12


def test_both_end_caps_say_which_convention_fits(tmp_path):
    rd, rs, rp = write_audited_case(tmp_path)
    result = audit_files(rd, rs, rp, end_caps=("half", "none"))
    assert result.better_end_cap == "half"  # the closed forms are of half end caps
    assert all(s.better_end_cap == "half" for s in result.structures)
    document = result.to_dict()
    [ptv] = [s for s in document["structures"] if s["name"] == "PTV"]
    assert set(ptv["end_caps"]) == {"half", "none"} and ptv["better_end_cap"] == "half" and "tps" in ptv
    assert document["summary"]["better_end_cap"] == "half"


def test_a_structure_set_other_than_the_one_the_dvhs_refer_to_is_refused(tmp_path):
    rd, _, rp = write_audited_case(tmp_path)
    _, structures = example_case()
    other = write_structures(structures, tmp_path / "RS.other.dcm", patient_id="P1")
    with pytest.raises(InputMismatchError, match="DVHs refer to the ROIs of RTSTRUCT"):
        audit_files(rd, other, rp)
    assert audit_files(rd, other, rp, allow_mismatch=True).agrees


def test_rois_by_name_and_an_roi_the_planning_system_did_not_report(tmp_path):
    rd, rs, rp = write_audited_case(tmp_path)
    assert [s.name for s in audit_files(rd, rs, rp, rois=["cord", 3]).structures] == ["Cord", "Recurrence"]
    grid, structures = example_case()
    reported = [d for d in read_dose_dvhs(rd, structures) if d.name != "Cord"]
    with pytest.raises(Exception, match="reported no DVH of ROI 'Cord'"):
        audit_dvhs(grid, structures, reported, rois=["Cord"])
    # The same from the files: the ROI named, not "every item was skipped".
    ds = pydicom.dcmread(rd)
    cord = read_structures(rs).get("Cord").number
    ds.DVHSequence = [item for item in ds.DVHSequence if item.DVHReferencedROISequence[0].ReferencedROINumber != cord]
    ds.save_as(rd)
    with pytest.raises(IsodoseError, match="reported no DVH of ROI 'Cord'"):
        audit_files(rd, rs, rp, rois=["Cord"])


# --------------------------------------------------------------------------------------------------------
# Conventions, with evidence
# --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_vertex_extremes_are_exact_on_the_nelms_set_and_sampled_ones_are_not(nelms_path):
    """Why ``extremes="vertices"`` is the default: over the 90 Nelms cases, Dmin and Dmax with the contours'
    vertices match the analytical values (to 0.01%); over the samples alone, Dmin is off by a median of several %
    (the samples lie inside the surface where the extreme is)."""
    from isodose.validation import run_nelms

    errors = {}
    for extremes in ("vertices", "samples"):
        values = run_nelms(nelms_path, backend="numba", options=SamplingOptions(extremes=extremes))
        errors[extremes] = {m: [abs(v.error_pct) for v in values if v.metric == m] for m in ("Dmin", "Dmax")}
    assert max(errors["vertices"]["Dmin"] + errors["vertices"]["Dmax"]) < 0.01
    assert np.median(errors["samples"]["Dmin"]) > 3.0


def test_sampled_extremes_leave_out_the_vertices(tmp_path):
    grid, structures = example_case()
    [vertices] = compute_dvhs(grid, structures, ["PTV"])
    [samples] = compute_dvhs(grid, structures, ["PTV"], options=SamplingOptions(extremes="samples"))
    assert vertices.dmin_gy < samples.dmin_gy and vertices.dmax_gy > samples.dmax_gy
    assert vertices.dmean_gy == samples.dmean_gy and vertices.volume_cc == samples.volume_cc
    with pytest.raises(Exception, match="extremes must be one of vertices, samples"):
        SamplingOptions(extremes="surface")


def test_dicompylers_example_patient(dicompyler_example):
    """The planning system's DVHs of a real export (dicompyler-core's example patient: Eclipse, 0.01 Gy bins,
    its statistics in % of the 14 Gy prescription). With end caps none, isodose matches it within 0.8% in volume
    and 0.03 Gy in D95 for every structure of 10 cc to 2,000 cc; with half end caps thin structures are much
    larger (Borders 74%); none fits this system better."""
    result = audit_files(
        dicompyler_example["rtdose"],
        dicompyler_example["rtss"],
        dicompyler_example["rtplan"],
        end_caps=("half", "none"),
    )
    by_name = {s.name: s for s in result.structures}
    assert len(by_name) == 9
    assert by_name["Tumor Bed Block"].tps.dmin_gy == pytest.approx(12.499, abs=1e-3)  # 89.28% of 14 Gy
    assert any("% of the prescription (14 Gy)" in w for w in by_name["Tumor Bed"].warnings)
    for s in result.structures:
        if 10.0 <= s.tps.volume_cc <= 2000.0:
            c = s.comparisons["none"]
            assert abs(c.difference_pct["volume_cc"]) < 0.8, s.name
            assert abs(c.values["D95"] - c.reference["D95"]) < 0.03, s.name
    assert by_name["Borders"].comparisons["half"].difference_pct["volume_cc"] == pytest.approx(73.7, abs=0.5)
    assert result.better_end_cap == "none"
    # BODY's stated mean (0.462 Gy, as % of the prescription) fits isodose's; its binned curve's (0.483) would not.
    assert by_name["BODY"].tps.dmean_gy == pytest.approx(0.4619, abs=1e-3)
    assert abs(by_name["BODY"].comparisons["none"].difference_pct["dmean_gy"]) < 1.0
    # The BODY's end caps reach past the dose grid: 144.8 cc with half end caps, under 0.1 cc without.
    assert by_name["BODY"].isodose["half"].volume_outside_dose_cc == pytest.approx(144.8, abs=0.1)
    assert by_name["BODY"].isodose["none"].volume_outside_dose_cc < 0.1


def test_cumulative_volumes_are_read_at_the_start_of_their_bins(dicompyler_example):
    """The first value of a cumulative DVH is the whole volume (the volume receiving at least 0 Gy), so each value
    belongs to the dose where its bin starts. On the example patient this reading is also closer to isodose (the
    mean of |D98|, |D95|, |D50|, |D2| differences) than the curve one bin higher for 6 of its 9 ROIs."""
    structures = read_structures(dicompyler_example["rtss"])
    tps = read_dose_dvhs(dicompyler_example["rtdose"], structures, prescription_gy=14.0)
    grid = read_dose(dicompyler_example["rtdose"])
    mine = compute_dvhs(grid, structures, [t.number for t in tps], options=SamplingOptions(end_cap="none"))
    closer = 0
    for t, m in zip(tps, mine):
        assert t.cumulative_cc[0] == pytest.approx(t.reported.values[0])
        width = float(t.reported.bin_widths[0] * t.reported.dose_scaling)
        later = replace(t, dose_gy=t.dose_gy + width, dmax_gy=t.dmax_gy + width)
        gap = [np.mean([abs(m.metric(x) - d.metric(x)) for x in ("D98", "D95", "D50", "D2")]) for d in (t, later)]
        closer += gap[0] < gap[1]
    assert closer == 6


# --------------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------------
def test_the_audit_command_prints_table_json_and_csv(tmp_path, capsys):
    rd, rs, rp = write_audited_case(tmp_path, shifted={"Recurrence": 5.0})
    arguments = ["audit", "--dose", rd, "--structures", rs, "--plan", rp]
    code, out, err = run(capsys, *arguments)
    assert code == 0, err
    assert "2 of 3 structures agree with end caps half" in out and "no: dmin_gy" in out
    code, out, _ = run(capsys, *arguments, "--format", "json", "--metric", "V95%")
    document = json.loads(out)
    assert set(document) >= {"structures", "summary", "warnings", "dose_file", "plan_file"}
    [ptv] = [s for s in document["structures"] if s["name"] == "PTV"]
    for block in ("tps", "isodose", "difference_pct"):
        assert set(ptv[block]) >= {"volume_cc", "dmin_gy", "dmean_gy", "dmax_gy", "metrics"}
        assert set(ptv[block]["metrics"]) == {"D98", "D95", "D50", "D2", "V95%"}
    assert ptv["agrees"] is True and ptv["number"] == 1 and "dvh_max_difference_pct" in ptv and ptv["warnings"] == []
    assert document["summary"]["end_caps"]["half"]["agree"] == 2
    code, out, _ = run(capsys, *arguments, "--format", "csv", "--end-cap", "both")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["name"], r["end_cap"]) for r in rows[:2]] == [("PTV", "half"), ("PTV", "none")]
    assert rows[0]["agrees"] == "true" and "difference_D95_pct" in rows[0] and rows[0]["better_end_cap"] == "half"


def test_the_command_line_refuses_what_does_not_fit_in_one_line(tmp_path, capsys):
    rd, rs, _ = write_audited_case(tmp_path)
    for argv, message in (
        (["audit"], "give --dose RD.dcm and --structures RS.dcm"),
        (["audit", tmp_path, "--dose", rd], "not both"),
        (["audit", tmp_path], "needs --out AUDIT.csv"),
        (["audit", "--dose", rd, "--structures", rs, "--out", tmp_path / "a.csv"], "--out belongs to an archive"),
        (["audit", tmp_path, "--out", tmp_path / "a.csv", "--html", tmp_path / "a.html"], "belong to one file's"),
        (["audit", "--dose", rd, "--structures", rs, "--tolerance-pct", "-1"], "--tolerance-pct must be"),
        (["audit", "--dose", rd, "--structures", rs, "--roi", "Liver"], "no ROI 'Liver'"),
        (["audit", "--dose", rd, "--structures", rs, "--metric", "V95%"], "V95% needs a prescription"),
    ):
        code, _, err = run(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and message in err, (argv, err)


def test_the_html_shows_both_curves_of_each_roi_in_a_browser(tmp_path, capsys):
    rd, rs, rp = write_audited_case(tmp_path, shifted={"Cord": 5.0})
    page = tmp_path / "audit.html"
    code, out, err = run(
        capsys, "audit", "--dose", rd, "--structures", rs, "--plan", rp, "--end-cap", "both", "--html", page
    )
    assert code == 0, err
    text = page.read_text()
    assert text.count("<img") == 3 and "data:image/png;base64," in text and "NO</td>" in text
    assert "http://" not in text and "https://" not in text  # self-contained
    pixels = screenshot(page, tmp_path / "audit.png")
    # The planning system's curves (black), isodose's (blue and red) are drawn: pixels of each colour are there.
    blue = (pixels[..., 2] > 0.6) & (pixels[..., 0] < 0.3)
    red = (pixels[..., 0] > 0.7) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)
    black = pixels.sum(axis=-1) < 0.3
    assert blue.sum() > 300 and red.sum() > 300 and black.sum() > 300


# --------------------------------------------------------------------------------------------------------
# An archive
# --------------------------------------------------------------------------------------------------------
def test_an_archive_is_audited_in_parallel_resumably_and_summed_up(tmp_path, capsys):
    archive = tmp_path / "archive"
    write_audited_case(archive / "a", patient="A")
    write_audited_case(archive / "b", patient="B", shifted={"Cord": 5.0})
    write_audited_case(archive / "c", patient="C")
    (archive / "c" / "RS.dcm").unlink()  # its structure set is missing: that case fails with the reason
    out = tmp_path / "AUDIT.csv"
    code, text, err = run(
        capsys, "audit", archive, "--out", out, "--workers", "2", "--no-progress", "--end-cap", "both"
    )
    assert code == 0, err
    assert "3 cases: 3 processed (1 failed)" in text and "no RTSTRUCT in frame of reference" in text
    assert "the convention that fits this archive: half" in text
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 * 3 * 2 + 1  # two cases, three ROIs, two conventions; the failed case's one line
    assert {(r["case_id"], r["name"]) for r in rows if r["end_cap"] == "half" and r["agrees"] == "false"} == {
        ("B", "Cord")
    }
    summary = archive_summary(ResultStore.open(tmp_path / "AUDIT.h5", create=False))
    half = summary["end_caps"]["half"]
    assert half["all"]["structures"] == 6 and half["all"]["agree"] == 5
    assert set(half["by_size_class"]) == {"under 1 cc", "1-10 cc", "10-100 cc"}
    assert half["by_roi"]["Cord"]["agree_pct"] == 50.0 and summary["better_end_cap"] == "half"
    # Resumed: the finished cases are not computed again; the failed one is retried.
    code, text, _ = run(capsys, "audit", archive, "--out", out, "--workers", "1", "--no-progress", "--end-cap", "both")
    assert "2 already done" in text
    # Another convention is another store's.
    code, _, err = run(capsys, "audit", archive, "--out", out, "--no-progress", "--end-cap", "none")
    assert code == 2 and "end_caps" in err and "other settings" in err
    code, js, _ = run(capsys, "audit", archive, "--out", out, "--no-progress", "--end-cap", "both", "--format", "json")
    assert json.loads(js)["end_caps"]["none"]["all"]["structures"] == 6


def test_an_archive_from_a_manifest_and_from_the_structure_set_the_dose_refers_to(tmp_path):
    folder = tmp_path / "one-frame"
    rd, rs, rp = write_audited_case(folder)
    # A second RTSTRUCT in the same frame: the one the DVHs refer to is taken.
    _, structures = example_case()
    write_structures(
        structures, folder / "RS.other.dcm", patient_id="P1", frame_of_reference_uid=structures.frame_of_reference_uid
    )
    summary = run_audit(folder, tmp_path / "A.csv", workers=1)
    assert (summary.cases, summary.failed) == (1, 0)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"case_id,dose,structures,plan\nx,{rd},{rs},\n")
    summary = run_audit(manifest, tmp_path / "M.csv", workers=1, settings=AuditSettings(metrics=("D2cc",)))
    [row] = [r for r in csv.DictReader((tmp_path / "M.csv").open()) if r["name"] == "PTV"]
    assert summary.failed == 0 and row["case_id"] == "x" and "tps_D2cc_gy" in row
    with pytest.raises(Exception, match="give the audit's CSV"):
        run_audit(manifest, tmp_path / "M.h5")


def test_size_classes():
    assert [size_class(v) for v in (0.5, 1.0, 99.9, 100.0, math.nan)] == [
        "under 1 cc",
        "1-10 cc",
        "10-100 cc",
        "over 100 cc",
        "unknown",
    ]


def test_relative_doses_are_read_one_way_for_the_whole_file(tmp_path):
    """A low-dose organ whose relative bins end below 2 (%) is read as a percentage, as its neighbours are, not
    as a fraction 100 times higher."""
    truths = example_truths()
    low = replace(reported_dvh(truths["Cord"], 2, dose_units="RELATIVE", normalization_gy=70.0))
    cold = replace(
        low,
        bin_widths=low.bin_widths / 50.0,
        mean_dose=low.mean_dose / 50.0,
        minimum_dose=math.nan,
        maximum_dose=math.nan,
    )  # doses under 2% of 70 Gy: a cold organ
    ptv = reported_dvh(truths["PTV"], 1, dose_units="RELATIVE", normalization_gy=70.0)
    grid, structures = example_case()
    rd = write_dose(grid, tmp_path / "RD.dcm", dvhs=[ptv, cold], dvh_normalization_gy=70.0)
    by_name = {d.name: d for d in read_dose_dvhs(rd, structures)}
    assert by_name["Cord"].dmean_gy == pytest.approx(truths["Cord"].dmean_gy / 50.0, rel=1e-3)
    assert by_name["PTV"].dmean_gy == pytest.approx(truths["PTV"].dmean_gy, rel=1e-6)
    assert all("read as percentages of 70 Gy" in " ".join(d.warnings) for d in by_name.values())


def test_an_archives_table_never_writes_over_another_file(tmp_path, capsys):
    archive = tmp_path / "archive"
    rd, _, _ = write_audited_case(archive / "a", patient="A")
    before = rd.read_bytes()
    code, _, err = run(capsys, "audit", archive, "--out", rd)
    assert code == 2 and "is not an audit's table: it is not written over" in err and rd.read_bytes() == before
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"case_id,dose,structures\nx,{rd},{archive / 'a' / 'RS.dcm'}\n")
    code, _, err = run(capsys, "audit", manifest, "--out", manifest)
    assert code == 2 and "names the manifest itself" in err
    table = tmp_path / "AUDIT.csv"
    assert run(capsys, "audit", archive, "--out", table, "--no-progress")[0] == 0
    assert run(capsys, "audit", archive, "--out", table, "--no-progress")[0] == 0  # an audit's table: resumed


def test_an_archives_table_names_each_dose_file_and_what_was_skipped(tmp_path, capsys):
    archive = tmp_path / "archive"
    rd, _, _ = write_audited_case(archive / "a", patient="A")
    ds = dcmread(rd)
    ds.DVHSequence[1].DoseType = "ERROR"
    ds.save_as(rd)
    grid, _ = example_case()
    write_dose(grid, archive / "b" / "RD.nodvh.dcm", patient_id="B")  # no DVH Sequence: left out, counted
    out = tmp_path / "AUDIT.csv"
    code, text, err = run(capsys, "audit", archive, "--out", out, "--no-progress", "--workers", "1")
    assert code == 0, err
    assert "1 DVH item(s) of 1 case(s) could not be used and were skipped" in text
    assert "1 RTDOSE file(s) hold no DVH Sequence and are not audited" in err
    rows = list(csv.DictReader(out.open()))
    assert {r["name"] for r in rows} == {"PTV", "Recurrence"} and all(r["dose_file"] == str(rd) for r in rows)
    assert all("DVH item 2 (ROI 2): DoseType is ERROR" in r["case_warnings"] for r in rows)
