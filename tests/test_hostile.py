"""Careless and hostile use: outputs that would destroy results, damaged journals, stores without their settings.
Each test fails without its fix."""

from __future__ import annotations

import json

import pytest

from isodose.cli import main
from isodose.cohort.cases import read_manifest
from isodose.cohort.settings import RunSettings
from isodose.cohort.store import ResultStore
from isodose.cohort.work import process_case
from isodose.errors import StoreError

SETTINGS = RunSettings(target_metrics=("GTV:volume",))


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def cohort(generated_cohort):
    return generated_cohort(4, 7)


@pytest.fixture(scope="module")
def entries(cohort):
    return [process_case(case, SETTINGS) for case in read_manifest(cohort)[:3]]


def test_a_store_whose_table_would_replace_it_is_refused(cohort, tmp_path, capsys):
    """--out results.csv: the store's table (NAME.csv) would be written over the store itself."""
    out = tmp_path / "results.csv"
    code, _, err = run(capsys, "cohort", "run", cohort, "--out", out, "--workers", "1", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "ends in .csv" in err
    assert not out.exists()


def test_a_report_never_writes_over_its_store_or_its_companions(cohort, tmp_path, capsys):
    store = tmp_path / "results.html"  # a store named like its own report
    code, _, err = run(capsys, "cohort", "run", cohort, "--out", store, "--workers", "1", "--no-progress")
    assert code == 0, err
    before = store.read_bytes()
    for argv, what in (
        ([], "the store"),  # the report's default, RESULTS.html, is the store here
        (["--html", tmp_path / "results.csv"], "the table"),
        (["--html", tmp_path / "x.html", "--table", tmp_path / "results.csv"], "the table"),
        (["--html", tmp_path / "results.html.journal"], "the journal"),
        (["--html", tmp_path / "x.html", "--figures", store], "the store"),
    ):
        code, _, err = run(capsys, "cohort", "report", store, *argv)
        assert code == 2 and err.count("\n") == 1 and f"would write over {what}" in err, (argv, err)
    assert store.read_bytes() == before
    assert ResultStore.open(store, create=False).finished()


def test_a_torn_journal_line_does_not_take_the_next_case_with_it(entries, tmp_path):
    out = tmp_path / "r.h5"
    with ResultStore.open(out, SETTINGS.as_dict()) as store:
        store.append(entries[0])
        with store.journal.open("a") as handle:  # a crash mid-line (or a full disk)
            handle.write('{"case_id": "' + entries[1]["case_id"] + '", "status": "ok", "rec')
    with ResultStore.open(out, SETTINGS.as_dict()) as store:
        assert store.finished() == {entries[0]["case_id"]}
        store.append(entries[2])
    with ResultStore.open(out, SETTINGS.as_dict()) as store:
        assert store.finished() == {entries[0]["case_id"], entries[2]["case_id"]}
        curves = {c["case_id"] for c in store.dvh_curves()}
        assert entries[2]["case_id"] in curves  # held as finished, and with its DVH curves
        store.consolidate()
        assert entries[2]["case_id"] in {c["case_id"] for c in store.dvh_curves()}


def test_journal_lines_that_are_not_entries_are_skipped_with_a_warning(entries, tmp_path, caplog):
    out = tmp_path / "r.h5"
    with ResultStore.open(out, SETTINGS.as_dict()) as store:
        store.append(entries[0])
        with store.journal.open("a") as handle:
            handle.write(
                "123\nnull\n[1, 2]\n"
                + json.dumps({"case_id": "X"})
                + "\n"
                + json.dumps({"case_id": 5, "status": "ok"})
                + "\n"
            )
        store.append(entries[1])
    with caplog.at_level("WARNING"):
        store = ResultStore.open(out, create=False)
    assert store.finished() == {entries[0]["case_id"], entries[1]["case_id"]}
    assert "5 line(s) are not cases' entries" in caplog.text


def test_every_journal_carries_its_settings(entries, tmp_path, capsys):
    """A journal written after a consolidation starts with the settings; with the HDF5 file lost, a run with
    other settings is refused instead of adopting the cases."""
    out = tmp_path / "r.h5"
    with ResultStore.open(out, SETTINGS.as_dict()) as store:
        store.append(entries[0])
        store.consolidate()  # the journal is emptied
        store.append(entries[1])
    first = json.loads(out.with_name("r.h5.journal").read_text().splitlines()[0])
    assert first["settings"] == SETTINGS.as_dict()
    out.unlink()  # the HDF5 file lost
    other = RunSettings(target_metrics=("GTV:volume", "CTV60:D98")).as_dict()
    with pytest.raises(StoreError, match="other settings"):
        ResultStore.open(out, other)
    # A journal of an earlier version without its settings line, and no HDF5 file: refused, not adopted.
    journal = out.with_name("r.h5.journal")
    journal.write_text("\n".join(journal.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(StoreError, match="no settings, and the store's HDF5 file is missing"):
        ResultStore.open(out, other)


def write_planned_frame(folder, patient: str, frame: str) -> None:
    from isodose.dicom.write import new_uid, write_dose, write_plan, write_structures
    from isodose.phantoms import LinearField, Sphere, contour_shape

    folder.mkdir(parents=True)
    dose = LinearField(60.0, (0.0, -1.0, 0.0), (0.0, 0.0, 0.0)).grid((-20.0,) * 3, (2.5,) * 3, (17,) * 3, frame)
    vr = contour_shape(Sphere((0.0, 0.0, 0.0), 5.0), "Recurrence", 1, 2.5)
    uid = new_uid()
    write_dose(dose, folder / "RD.dcm", patient_id=patient, frame_of_reference_uid=frame, referenced_plan_uid=uid)
    write_structures([vr], folder / "RS.dcm", patient_id=patient, frame_of_reference_uid=frame)
    write_plan(
        folder / "RP.dcm",
        prescription_gy=60.0,
        number_of_fractions=30,
        patient_id=patient,
        frame_of_reference_uid=frame,
        sop_instance_uid=uid,
    )


def test_folder_discovery_never_gives_two_cases_one_id(tmp_path, caplog):
    """Patient P with two planning frames gives P_1 and P_2; a patient whose ID is P_1 took one of them."""
    from isodose.cohort.cases import discover_cases

    root = "1.2.826.0.1.3680043.8.498.77"
    write_planned_frame(tmp_path / "a", "P", root + "1")
    write_planned_frame(tmp_path / "b", "P", root + "2")
    write_planned_frame(tmp_path / "c", "P_1", root + "3")
    with caplog.at_level("WARNING"):
        cases = discover_cases(tmp_path, "Recurrence")
    ids = [c.case_id for c in cases]
    assert len(ids) == len(set(ids)) == 3 and {"P_1", "P_2"} <= set(ids)
    assert "were taken by another case and renamed" in caplog.text and "P_1 -> P_1-2" in caplog.text


def test_two_rois_sharing_a_number_are_an_error_naming_both(tmp_path, capsys):
    import pydicom

    from isodose.dicom.read import read_structures
    from isodose.dicom.write import write_structures
    from isodose.errors import StructureError
    from isodose.phantoms import Sphere, contour_shape

    frame = "1.2.826.0.1.3680043.8.498.781"
    big = contour_shape(Sphere((0.0, 0.0, 0.0), 10.0), "Parotid_L", 1, 2.5)
    small = contour_shape(Sphere((0.0, 0.0, 0.0), 4.0), "GTV", 2, 2.5)
    path = write_structures([big, small], tmp_path / "RS.dcm", frame_of_reference_uid=frame)
    ds = pydicom.dcmread(path)
    ds.StructureSetROISequence[1].ROINumber = 1
    ds.ROIContourSequence[1].ReferencedROINumber = 1
    ds.save_as(path)
    with pytest.raises(StructureError, match="ROIs 'Parotid_L' and 'GTV' share ROINumber 1"):
        read_structures(path)


@pytest.mark.parametrize(
    "points",
    [[[1.0, 1.0]] * 4, [[0.0, 0.0], [5.0, 0.0], [5.0, 5.0], [5.0, 0.0]]],
    ids=["all points equal", "doubling back"],
)
def test_a_recurrence_enclosing_no_area_is_an_error_never_a_class(tmp_path, capsys, points):
    import numpy as np

    from isodose.dicom.write import write_dose, write_structures
    from isodose.model import Contour, Structure
    from isodose.phantoms import LinearField, Sphere, contour_shape

    frame = "1.2.826.0.1.3680043.8.498.782"
    dose = LinearField(60.0, (0.0, -1.0, 0.0), (0.0, 0.0, 0.0)).grid((-20.0,) * 3, (2.5,) * 3, (17,) * 3, frame)
    ptv = contour_shape(Sphere((0.0, 0.0, 0.0), 8.0), "PTV", 1, 2.5)
    vr = Structure("Vr", 2, tuple(Contour(np.array(points), z) for z in (-2.5, 0.0, 2.5)))
    rd = write_dose(dose, tmp_path / "RD.dcm", frame_of_reference_uid=frame)
    rs = write_structures([ptv, vr], tmp_path / "RS.dcm", frame_of_reference_uid=frame)
    code, out, err = run(
        capsys, "classify", "--dose", rd, "--structures", rs, "--recurrence", "Vr", "--prescription", "60"
    )
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("isodose: error:") and "encloses no volume" in last, (out, err)
    assert "Traceback" not in err
    assert "in-field" not in out and "out-field" not in out


def test_control_characters_never_reach_the_terminal_and_formulas_never_reach_a_spreadsheet(tmp_path, capsys):
    import csv
    import os

    from isodose.dicom.write import write_example_case
    from isodose.formatting import csv_safe, terminal_safe, text_table

    assert "\x1b" not in text_table(["ROI"], [["GTV\x1b[2J"]]) and "\\x1b[2J" in text_table(["ROI"], [["GTV\x1b[2J"]])
    assert "\n" not in terminal_safe("a\nforged line")
    assert csv_safe("=cmd|'/C calc'!A0") == "'=cmd|'/C calc'!A0" and csv_safe("@SUM(A1)") == "'@SUM(A1)"
    assert csv_safe("-2.5") == "-2.5" and csv_safe("-CTV") == "'-CTV"
    rd, rs, rp = write_example_case(tmp_path)
    import pydicom

    ds = pydicom.dcmread(rs)
    ds.StructureSetROISequence[0].ROIName = '=HYPERLINK("x")\x1b[31m'
    ds.save_as(rs)
    curves = tmp_path / "curves.csv"
    code, out, err = run(capsys, "dvh", "--dose", rd, "--structures", rs, "--dvh-out", curves)
    assert code == 0, err
    assert "\x1b" not in out and "\\x1b[31m" in out
    code, out, _ = run(capsys, "dvh", "--dose", rd, "--structures", rs, "--format", "csv")
    rows = list(csv.reader(out.splitlines()))
    assert any(cell.startswith("'=HYPERLINK") for row in rows for cell in row)
    assert not any(cell.startswith("=") for row in rows for cell in row)
    names = {row[0] for row in csv.reader(curves.read_text().splitlines()[1:])}
    assert all(not n.startswith("=") for n in names) and any(n.startswith("'=") for n in names)
    assert os.path.exists(curves)


def test_tex_in_an_roi_name_is_plotted_as_text(tmp_path):
    from isodose.cohort.report import FIGURE_FONTS

    assert FIGURE_FONTS["text.parse_math"] is False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(FIGURE_FONTS):
        figure, axis = plt.subplots()
        axis.set_title("GTV $\\frac{$ broken")  # an invalid $...$ pair: an error if parsed as mathtext
        figure.savefig(tmp_path / "t.png")
        plt.close(figure)


def test_fifos_and_devices_are_refused_as_inputs_and_dvh_steps_bounded(tmp_path, capsys):
    import os

    from isodose.dicom.write import write_example_case

    rd, rs, rp = write_example_case(tmp_path)
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    code, _, err = run(capsys, "dvh", "--dose", fifo, "--structures", rs)
    assert code == 2 and err.count("\n") == 1 and "not a regular file" in err
    code, _, err = run(capsys, "dvh", "--dose", "/dev/zero", "--structures", rs)
    assert code == 2 and err.count("\n") == 1 and "not a regular file" in err
    code, _, err = run(capsys, "cohort", "run", fifo, "--out", tmp_path / "r.h5", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "not a regular file" in err
    for step in ("1e-300", "1e-6"):
        code, _, err = run(
            capsys, "dvh", "--dose", rd, "--structures", rs, "--dvh-out", tmp_path / "c.csv", "--dvh-step", step
        )
        assert code == 2 and err.count("\n") == 1 and "the finest step is 0.001 Gy" in err


def test_folder_discovery_follows_linked_patients_and_stops_at_link_loops(tmp_path):
    from isodose.cohort.cases import discover_cases

    root = "1.2.826.0.1.3680043.8.498.79"
    elsewhere = tmp_path / "elsewhere"
    write_planned_frame(elsewhere / "A", "A", root + "1")
    cohort = tmp_path / "cohort"
    write_planned_frame(cohort / "B", "B", root + "2")
    (cohort / "A").symlink_to(elsewhere / "A", target_is_directory=True)
    (cohort / "B" / "loop").symlink_to(cohort, target_is_directory=True)  # a loop back to the top
    cases = discover_cases(cohort, "Recurrence")
    assert sorted(c.case_id for c in cases) == ["A", "B"]


def _write_odd_image(path) -> None:
    """A CT image whose header says explicit VR and whose data set is written in implicit VR: pydicom reads it
    with a warning."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CT", "A"
    with open(path, "wb") as handle:
        handle.write(b"\0" * 128 + b"DICM")
        fp = DicomFileLike(handle)
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_file_meta_info(fp, meta, enforce_standard=True)
        fp.is_implicit_VR = True
        write_dataset(fp, ds)


def test_folder_discovery_says_what_it_found_and_left_out(tmp_path, caplog, capsys):
    """Discovery counts a folder's files: the RT ones by modality, and those it leaves out (images, other files);
    a folder with no RTDOSE says so on one line with what it holds."""
    import logging

    from isodose.cohort.cases import discover_cases

    cohort = tmp_path / "cohort"
    write_planned_frame(cohort / "A", "A", "1.2.826.0.1.3680043.8.498.791")
    (cohort / "A" / "notes.txt").write_text("not DICOM")
    _write_odd_image(cohort / "A" / "CT.1.dcm")  # not an RT file, and pydicom warns as it reads it
    with caplog.at_level(logging.DEBUG, logger="isodose"):
        [case] = discover_cases(cohort, "Recurrence")
    assert case.case_id == "A"
    assert "5 file(s): 1 RTDOSE, 1 RTSTRUCT, 1 RTPLAN; 2 other file(s)" in caplog.text
    assert "CT.1.dcm: left out" in caplog.text and "notes.txt: left out" in caplog.text  # named at debug level
    isodose_warnings = [r for r in caplog.records if r.name.startswith("isodose") and r.levelno >= logging.WARNING]
    assert not isodose_warnings, [r.getMessage() for r in isodose_warnings]  # the image's warning concerns no case
    only_images = tmp_path / "images"
    only_images.mkdir()
    (only_images / "notes.txt").write_text("not DICOM")
    code, _, err = run(capsys, "cohort", "run", only_images, "--out", tmp_path / "r.h5", "--no-progress")
    assert code == 2 and err.count("\n") == 1, err
    assert "holds no RTDOSE file, so no case (1 file(s): none of them RT)" in err


def test_cases_given_by_a_relative_path_name_their_files_whole(tmp_path, monkeypatch):
    """A folder or manifest given relative to where the run starts: the cases' paths are absolute (with '..'
    folded), so that the errors and warnings stored with their results name their files wherever they are read."""
    from isodose.cohort.cases import load_cases

    write_planned_frame(tmp_path / "cohort" / "A", "A", "1.2.826.0.1.3680043.8.498.792")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    [case] = load_cases("../cohort", "Recurrence")
    assert case.dose is not None and case.dose.is_absolute() and ".." not in case.dose.parts
    assert case.dose == tmp_path / "cohort" / "A" / "RD.dcm"


def test_a_manifest_row_with_more_fields_than_its_header(tmp_path, cohort, capsys):
    text = cohort.read_text().splitlines()
    trailing = tmp_path / "trailing.csv"  # a trailing comma on a row, as spreadsheets write: harmless
    trailing.write_text(text[0] + "\n" + text[1] + ",\n")
    from isodose.cohort.cases import read_manifest

    [case] = read_manifest(trailing)
    more = tmp_path / "more.csv"
    more.write_text(text[0] + "\n" + text[1] + ",surplus\n")
    code, _, err = run(capsys, "cohort", "run", more, "--out", tmp_path / "r.h5", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "line 2: has 9 fields where the header has 8" in err, err
    assert case.case_id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("{not json", "not JSON"),
        ('{"id": "x"}', "gives no scheduler address"),
        ("[1]", "no scheduler address"),
    ],
)
def test_a_bad_scheduler_file_is_a_one_line_error(tmp_path, cohort, capsys, text, message):
    pytest.importorskip("distributed")
    path = tmp_path / "scheduler.json"
    path.write_text(text)
    code, _, err = run(
        capsys, "cohort", "run", cohort, "--out", tmp_path / "r.h5", "--scheduler-file", path, "--no-progress"
    )
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_a_figures_folder_in_the_way_of_a_file_is_a_one_line_error(cohort, tmp_path, capsys):
    store = tmp_path / "r.h5"
    code, _, err = run(capsys, "cohort", "run", cohort, "--out", store, "--workers", "1", "--no-progress")
    assert code == 0, err
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for figures in (a_file, a_file / "figures"):
        code, _, err = run(capsys, "cohort", "report", store, "--figures", figures)
        assert code == 2 and err.count("\n") == 1 and "--figures" in err and "internal error" not in err, err


def test_contours_merged_by_the_plane_tolerance_are_warned_of(tmp_path):
    """A 10 mm sphere contoured every 0.001 mm: its planes, closer than the plane tolerance, merge and halve its
    volume by the even-odd rule; the DVH says so."""
    import math

    import numpy as np

    from isodose.dvh import compute_dvhs
    from isodose.model import Contour, Structure
    from isodose.phantoms import LinearField

    dose = LinearField(60.0, (0.0, -1.0, 0.0), (0.0, 0.0, 0.0)).grid((-20.0,) * 3, (2.5,) * 3, (17,) * 3, "1.2.3")
    angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    contours = []
    for z in np.arange(-9.9995, 10.0, 0.001):
        r = math.sqrt(max(100.0 - z * z, 0.0))
        if r > 0.05:
            contours.append(Contour(np.column_stack([r * np.cos(angles), r * np.sin(angles)]), float(z)))
    [dvh] = compute_dvhs(dose, [Structure("Sphere", 1, tuple(contours))], backend="numpy")
    assert any("were merged into one plane" in w for w in dvh.warnings), dvh.warnings


def test_links_planted_at_the_stores_fixed_names_are_never_written_through(entries, tmp_path):
    import os
    import stat

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "r.h5"
    (tmp_path / "r.h5.tmp").symlink_to(victim)  # an earlier version wrote its HDF5 file here, then renamed it
    (tmp_path / "r.csv.tmp").symlink_to(victim)
    with ResultStore.open(out, SETTINGS.as_dict()) as store:
        store.append(entries[0])
        store.consolidate()
        store.write_table()
    assert victim.read_text() == "keep me"
    assert ResultStore.open(out, create=False).finished() == {entries[0]["case_id"]}
    mode = stat.S_IMODE(os.stat(out).st_mode)
    assert mode & 0o044 == 0o044 & ~_umask()  # the permissions a plainly made file has
    other = tmp_path / "s.h5"
    (tmp_path / "s.h5.lock").symlink_to(victim)
    with pytest.raises(StoreError, match="lock file is a symbolic link"):
        ResultStore.open(other, SETTINGS.as_dict())
    (tmp_path / "s.h5.lock").unlink()
    (tmp_path / "s.h5.journal").symlink_to(victim)
    with pytest.raises(StoreError):
        with ResultStore.open(other, SETTINGS.as_dict()) as store:
            store.append(entries[0])
    assert victim.read_text() == "keep me"


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_mid_run_stops_the_workers_and_keeps_finished_cases(generated_cohort, tmp_path, signame):
    """The command and its worker processes end within seconds of the signal: a caller reading its output to the
    end is not left waiting for workers still running; a Ctrl-C at the terminal (SIGINT to the whole process
    group, workers included) prints one line, not a traceback per worker."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    cohort = generated_cohort(150, 5)
    out = tmp_path / "r.h5"
    command = [sys.executable, "-m", "isodose.cli", "cohort", "run", cohort, "--out", out, "--workers", "2"]
    proc = subprocess.Popen(
        [str(c) for c in command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job is
    )
    lines: list[str] = []
    running = threading.Event()

    def read() -> None:  # to the end of the pipe: it ends only when no process holds it open
        for line in proc.stderr:
            lines.append(line)
            if "/150 cases" in line and not line.startswith("[" + "#" * 24):
                running.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert running.wait(timeout=120), "".join(lines)  # the workers have started and finished a first case
    os.killpg(proc.pid, getattr(signal, signame))  # as a terminal or a job scheduler signals a job
    started = time.monotonic()
    proc.wait(timeout=30)
    reader.join(timeout=15)
    assert not reader.is_alive(), "a process still holds the command's output open"
    assert time.monotonic() - started < 15
    stderr = "".join(lines)
    assert proc.returncode in (130, 128 + getattr(signal, signame)), (proc.returncode, stderr)
    assert "Traceback" not in stderr, stderr
    assert stderr.count("isodose: ") <= 2, stderr  # the stop's line (and perhaps a warning)
    assert f"the cases finished are kept in {out}: the same command goes on from there" in stderr, stderr
    left = True
    deadline = time.monotonic() + 10.0
    while left and time.monotonic() < deadline:  # nothing of the process group is left 10 s after
        try:
            os.killpg(proc.pid, 0)
            left_over = subprocess.run(
                ["ps", "-o", "pid,stat,args", "-g", str(proc.pid)], capture_output=True, text=True
            )
            time.sleep(0.5)
        except ProcessLookupError:
            left = False
    assert not left, left_over.stdout


def test_a_report_read_while_the_run_consolidates_keeps_every_curve(entries, tmp_path):
    out = tmp_path / "r.h5"
    with ResultStore.open(out, SETTINGS.as_dict()) as writer:
        writer.append(entries[0])
        writer.consolidate()
        writer.append_many(entries[1:])  # in the journal
        reader = ResultStore.open(out, create=False)  # a report opens the store...
        writer.consolidate()  # ...the run consolidates...
        curves = {c["case_id"] for c in reader.dvh_curves()}  # ...and the report reads the curves
    assert curves == {e["case_id"] for e in entries}


def test_a_damaged_dvh_group_is_reported_and_the_records_kept(entries, tmp_path, capsys, caplog):
    import h5py

    out = tmp_path / "r.h5"
    with ResultStore.open(out, SETTINGS.as_dict()) as store:
        store.append_many(entries)
        store.consolidate()
    with h5py.File(out, "a") as f:
        del f["dvh/cumulative_cc"]
    with caplog.at_level("WARNING"):
        store = ResultStore.open(out, create=False)
        assert store.dvh_curves() == [] and len(store.finished()) == len(entries)
    assert "its DVH curves cannot be read" in caplog.text
    code, text, err = run(capsys, "cohort", "report", out, "--html", tmp_path / "r.html")
    assert code == 0 and f"{len(entries)} classified" in text and "cannot be read" in err, err


def test_the_memory_check_honours_the_address_space_limit(tmp_path):
    """Under ``ulimit -v`` a dose grid larger than the limit allows is refused with the figures, not a MemoryError
    (the machine's MemAvailable alone would have let it through)."""
    import subprocess
    import sys

    import pydicom

    from isodose.dicom.write import write_example_case

    rd, _, _ = write_example_case(tmp_path)
    ds = pydicom.dcmread(rd)
    ds.NumberOfFrames, ds.Rows, ds.Columns = 400, 512, 512  # 105 M voxels: some 1.3 GB to read
    ds.GridFrameOffsetVector = [float(k) for k in range(400)]
    ds.save_as(rd)
    script = (
        "import resource, sys\n"
        "from isodose.dicom.read import read_dose\n"
        "size = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 600 * 2**20, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    read_dose(sys.argv[1])\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(rd)], capture_output=True, text=True, timeout=120)
    assert "DoseGridError" in done.stdout and "address-space limit" in done.stdout, (done.stdout, done.stderr)


def test_output_paths_that_are_folders_or_lie_under_a_file_are_one_line_errors(tmp_path, capsys):
    from isodose.dicom.write import write_example_case

    rd, rs, _ = write_example_case(tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for argv in (
        ["demo", "--cases", "2", "--out", a_file],
        ["dvh", "--dose", rd, "--structures", rs, "--dvh-out", tmp_path],
        ["dvh", "--dose", rd, "--structures", rs, "--dvh-out", a_file / "curves.csv"],
        ["phantom", "--out", a_file / "x"],
    ):
        code, _, err = run(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "internal error" not in err, (argv, err)


def test_a_store_whose_table_would_replace_the_manifest_is_refused(cohort, tmp_path, capsys):
    """cohort.csv with --out cohort.h5: the results table (cohort.csv beside the store) would be written over the
    manifest; refused before any work, the manifest left as it was."""
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(cohort.read_text().replace("cases/", f"{cohort.parent}/cases/"))
    before = manifest.read_bytes()
    out = tmp_path / "cohort.h5"
    code, _, err = run(capsys, "cohort", "run", manifest, "--out", out, "--workers", "1", "--no-progress")
    assert code == 2 and err.count("\n") == 1
    assert "cohort.csv: the results table (cohort.csv, beside the store cohort.h5) would be written over" in err
    assert manifest.read_bytes() == before and not out.exists()
