"""The command line, end to end on generated DICOM."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from isodose.cli import main
from isodose.dicom.read import read_dose, read_structures
from isodose.dicom.write import write_dose, write_plan, write_structures
from isodose.dvh import compute_dvhs
from isodose.errors import IsodoseError
from isodose.phantoms import Cylinder, Sphere, contour_shape

from .conftest import linear_grid


@pytest.fixture
def case(tmp_path):
    _, grid = linear_grid(gradient=(0.3, -0.8, 0.5), frame_uid="1.2.3")
    structures = [
        contour_shape(Sphere((0.0, 0.0, 0.0), 12.0), "PTV", 1, 2.0),
        contour_shape(Cylinder((5.0, 5.0, 0.0), 4.0, 20.0), "Cord", 2, 2.0),
    ]
    rd = write_dose(grid, tmp_path / "RD.dcm")
    rs = write_structures(structures, tmp_path / "RS.dcm", frame_of_reference_uid="1.2.3")
    rp = write_plan(tmp_path / "RP.dcm", prescription_gy=100.0, number_of_fractions=30)
    return rd, rs, rp


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_dvh_json_has_the_documented_keys(case, capsys):
    rd, rs, _ = case
    code, out, err = run(
        capsys,
        "dvh",
        "--dose",
        rd,
        "--structures",
        rs,
        "--metric",
        "D95",
        "--metric",
        "V95%",
        "--metric",
        "D0.03cc",
        "--prescription",
        "100",
        "--format",
        "json",
        "--backend",
        "numba",
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["backend"] == "numba" and report["prescription_gy"] == 100.0
    [ptv, cord] = report["structures"]
    assert set(ptv) >= {"name", "volume_cc", "volume_outside_dose_cc", "dmin_gy", "dmean_gy", "dmax_gy", "metrics"}
    assert list(ptv["metrics"]) == ["D95", "V95%", "D0.03cc"]
    [dvh] = compute_dvhs(read_dose(rd), read_structures(rs), ["PTV"])
    assert ptv["volume_cc"] == pytest.approx(dvh.volume_cc, abs=1e-6)
    assert ptv["metrics"]["D95"] == pytest.approx(dvh.metric("D95"), abs=1e-6)
    assert ptv["metrics"]["V95%"] == pytest.approx(dvh.metric("V95Gy"), abs=1e-6)
    assert cord["name"] == "Cord"


def test_dvh_roi_selection_plan_and_formats(case, capsys, tmp_path):
    rd, rs, rp = case
    code, out, _ = run(
        capsys,
        "dvh",
        "--dose",
        rd,
        "--structures",
        rs,
        "--roi",
        "Cord",
        "--metric",
        "V95%",
        "--plan",
        rp,
        "--format",
        "csv",
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["name"], r["number"]) for r in rows] == [("Cord", "2")]
    assert float(rows[0]["V95%"]) >= 0 and float(rows[0]["volume_cc"]) > 0
    curves = tmp_path / "curves.csv"
    code, out, _ = run(
        capsys, "dvh", "--dose", rd, "--structures", rs, "--format", "table", "--dvh-out", curves, "--dvh-step", "0.5"
    )
    assert code == 0 and "PTV" in out and "backend:" in out
    table = list(csv.DictReader(curves.open()))
    # the table names each metric asked for with its unit, as its other columns (the CSV and JSON keep the text)
    code, out, _ = run(capsys, "dvh", "--dose", rd, "--structures", rs, *"--metric D95 --metric V20Gy".split())
    header = out.splitlines()[1].split()
    assert code == 0 and header[-4:] == ["D95", "(Gy)", "V20Gy", "(%)"]
    assert set(table[0]) == {"name", "number", "dose_gy", "cumulative_cc", "cumulative_pct", "differential_cc"}
    ptv = [r for r in table if r["name"] == "PTV"]
    assert float(ptv[0]["cumulative_pct"]) == pytest.approx(100.0)
    assert sum(float(r["differential_cc"]) for r in ptv) == pytest.approx(float(ptv[0]["cumulative_cc"]), rel=1e-6)


def test_dvh_out_names_the_rois_it_has_no_curve_for(case, capsys, tmp_path):
    """An ROI without contours is reported as empty, and the curves file, which has no curve for it, says so."""
    import pydicom

    rd, rs, _ = case
    ds = pydicom.dcmread(rs)
    ds.ROIContourSequence = [item for item in ds.ROIContourSequence if item.ReferencedROINumber != 2]  # Cord
    emptied = tmp_path / "RS-without-cord.dcm"
    ds.save_as(emptied)
    curves = tmp_path / "curves.csv"
    code, _, err = run(capsys, "dvh", "--dose", rd, "--structures", emptied, "--dvh-out", curves)
    assert code == 0, err
    assert {row["name"] for row in csv.DictReader(curves.open())} == {"PTV"}
    assert f"{curves}: no curve for ROI 'Cord': it holds no dose" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--roi", "GTV"], "no ROI 'GTV'"),
        (["--metric", "D95x"], "unknown metric 'D95x'"),
        (["--metric", "Spinal Cord:D2cc"], "for one ROI, give --roi 'Spinal Cord' --metric D2cc"),
        (["--metric", "V95%"], "needs a prescription"),
        (["--prescription", "-3"], "--prescription must be a positive dose"),
        (["--dvh-out", "curves.csv", "--dvh-step", "-1"], "--dvh-step must be a positive dose in Gy, not -1.0"),
        (["--dvh-out", "curves.csv", "--dvh-step", "0"], "--dvh-step must be a positive dose in Gy, not 0.0"),
    ],
)
def test_user_errors_are_one_line(case, capsys, extra, message):
    rd, rs, _ = case
    code, out, err = run(capsys, "dvh", "--dose", rd, "--structures", rs, *extra)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1 and err.startswith("isodose: error:")


def test_errors_with_line_breaks_from_libraries_print_on_one_line(capsys, monkeypatch):
    from isodose import cli
    from isodose.cli import backends

    def fail(args):
        raise IsodoseError("cannot be read (Unable to open file (read failed\n, filename = 'x'))", path="r.h5")

    monkeypatch.setattr(backends, "run", fail)
    code = cli.main(["backends"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "isodose: error: r.h5: cannot be read (Unable to open file (read failed , filename = 'x'))\n"


@pytest.mark.slow
def test_bad_files_are_one_line_without_traceback(case, tmp_path):
    rd, rs, _ = case
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 50)
    for dose, structures, message in [
        (junk, rs, "junk.dcm"),
        (rs, rs, "expected RTDOSE"),
        (tmp_path / "none.dcm", rs, "no such file"),
        (rd, rd, "expected RTSTRUCT"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "isodose.cli", "dvh", "--dose", str(dose), "--structures", str(structures)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2
        assert message in result.stderr and "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1


def test_validate_needs_the_data(tmp_path, capsys):
    code, _, err = run(capsys, "validate", "nelms", tmp_path)
    assert code == 2 and "analytical.csv not found" in err


def test_backends_and_version(capsys):
    code, out, _ = run(capsys, "backends")
    assert code == 0 and "numba" in out and "auto" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0


def test_phantom_writes_a_case_the_dvh_command_reads(tmp_path, capsys):
    code, out, err = run(capsys, "phantom", "--out", tmp_path / "ph")
    assert code == 0, err
    code, out, err = run(
        capsys,
        "dvh",
        "--dose",
        tmp_path / "ph" / "RD.phantom.dcm",
        "--structures",
        tmp_path / "ph" / "RS.phantom.dcm",
        "--plan",
        tmp_path / "ph" / "RP.phantom.dcm",
        "--metric",
        "V95%",
        "--format",
        "json",
    )
    assert code == 0, err
    report = json.loads(out)
    assert len(report["structures"]) == 20 and report["prescription_gy"] == 70.0
    volumes = {s["name"]: s["volume_cc"] for s in report["structures"]}
    assert 2900 < volumes["BODY"] < 3100 and min(volumes.values()) > 0.9


def test_console_script_is_installed():
    script = (
        "import importlib.metadata as m; "
        "print([e.value for e in m.entry_points(group='console_scripts') if e.name == 'isodose'])"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "isodose.cli:run" in result.stdout


def test_help_and_version_answer_without_importing_numpy():
    """``isodose --help`` and ``--version`` answer at once: the console command imports nothing heavy before its
    arguments are parsed (the command's own modules import NumPy, Numba and pydicom when they run)."""
    code = """
import sys
from isodose.cli.main import console
sys.argv = ["isodose", sys.argv[1]]
try:
    console()
except SystemExit:
    pass
print("numpy" in sys.modules, "numba" in sys.modules, "pydicom" in sys.modules, file=sys.stderr)
"""
    for flag in ("--help", "--version"):
        done = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True)
        assert done.stderr.split()[-3:] == ["False", "False", "False"], (flag, done.stderr)


@pytest.mark.parametrize(
    "argv",
    [
        ["dvh", "--dose", "RD.dcm", "--prescription", "14", "--plan", "RP.dcm"],
        ["nonsense"],
        ["dvh", "--dose", "RD.dcm"],
    ],
)
def test_a_usage_error_is_one_line_with_where_to_read_more(argv):
    done = subprocess.run([sys.executable, "-m", "isodose.cli", *argv], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert "error:" in done.stderr and "--help)" in done.stderr and "usage:" not in done.stderr


@pytest.mark.parametrize("module", ["isodose", "isodose.cli"])
def test_python_dash_m_runs_the_command(module):
    done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("isodose "), (done.stdout, done.stderr)


def test_the_console_command_ends_with_its_status_its_output_flushed_and_exit_handlers_run(tmp_path):
    """The console command ends its process without the interpreter's teardown (``main.leave``): with the
    command's exit status, its buffered output written, and the process's exit handlers run."""
    code = """
import atexit, sys
atexit.register(lambda: print("exit handler ran", file=sys.stderr))
sys.argv = ["isodose", *sys.argv[1:]]
from isodose.cli.main import console
console()
print("not reached", file=sys.stderr)
"""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}  # stdout buffered in a pipe
    ok = subprocess.run([sys.executable, "-c", code, "backends"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "numpy" in ok.stdout, (ok.stdout, ok.stderr)
    assert ok.stderr.strip().endswith("exit handler ran") and "not reached" not in ok.stderr
    missing = tmp_path / "missing.dcm"
    bad = subprocess.run(
        [sys.executable, "-c", code, "dvh", "--dose", str(missing), "--structures", str(missing)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "isodose: error:" in bad.stderr and "exit handler ran" in bad.stderr, bad.stderr


def test_the_console_command_waits_for_threads_left_running_as_the_interpreter_does():
    code = """
import sys, threading, time
def late():
    time.sleep(0.3)
    print("thread finished", file=sys.stderr)
threading.Thread(target=late).start()
sys.argv = ["isodose", "--version"]
from isodose.cli.main import leave
leave(0)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "thread finished" in done.stderr, done.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_output_that_cannot_be_written_is_an_error_and_a_closed_output_is_not_a_traceback():
    """The console command's output that cannot be written at its end (a full disk) is said on stderr, with
    Python's own status for it (120), as it was at the interpreter's exit; a process started with its stdout closed
    ends without a traceback."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}  # stdout buffered
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "isodose", "backends"], stdout=full, stderr=subprocess.PIPE, text=True, env=env
        )
    assert done.returncode == 120 and "isodose: error: the output could not be written" in done.stderr, done.stderr
    closed = subprocess.run(
        [sys.executable, "-m", "isodose", "backends"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: os.close(1),
    )
    assert "Traceback" not in closed.stderr and closed.returncode == 0, closed.stderr
