"""A one-off command's files read in a helper process while it loads the kernels (isodose.cli.readahead): the same
values, log records, errors and output as reading them in the command's own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from isodose.cli import readahead
from isodose.dicom.write import write_dose, write_plan, write_structures
from isodose.model import Structure
from isodose.phantoms import Sphere, contour_shape

from .conftest import linear_grid

SCENARIOS = Path(__file__).with_name("readahead_scenarios.py")
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the helper is forked on Linux only")


def scenario(name: str, tmp_path: Path, *, timeout: float = 120, preexec_fn=None, **env: str | None) -> dict:
    """Runs the scenario in a fresh process (``env`` added to this one's environment, a None removing a variable);
    what it printed before its JSON is under "printed"."""
    environment = {**os.environ, **env}
    done = subprocess.run(
        [sys.executable, str(SCENARIOS), name, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={key: value for key, value in environment.items() if value is not None},
        preexec_fn=preexec_fn,
    )
    assert done.returncode == 0, done.stderr
    printed, _, document = done.stdout.rstrip("\n").rpartition("\n")
    return {**json.loads(document), "printed": printed.rstrip("\n")}


def test_the_helper_reads_in_order_and_its_records_are_logged_here(tmp_path):
    out = scenario("values", tmp_path)
    assert out["ahead"] and out["values"] == [[1, "helper"], [2, "helper"], 3]
    assert out["third read"] == "helper"
    # every record of the helper's, debug included, logged in the command's process and thread, in order, once
    said, *shown = out["shown"]
    assert said[0] == "DEBUG" and said[1].startswith("reading 3 input(s) in helper process")
    assert shown == [
        ["DEBUG", "debug 1", True],
        ["WARNING", "warning 1 from helper", True],
        ["DEBUG", "debug 2", True],
        ["WARNING", "warning 2 from helper", True],
    ]
    assert out["warnings"] == ["warning 1 from helper", "warning 2 from helper"]  # kept with the results
    assert out["helper left"] is False


def test_an_error_of_the_helper_is_raised_here_as_it_was_and_stops_the_reading(tmp_path):
    out = scenario("error", tmp_path)
    assert out["values"] == [[1, "helper"]]
    assert out["error"] == ["StructureError", "RS.dcm", "ROI 'GTV'", "has no contours (read helper)"]
    assert out["warnings"] == ["warning 1 from helper", "before the error"]
    assert out["third read"] is None  # the reads after an error are not made
    assert out["helper left"] is False


@pytest.mark.parametrize("name", ["failure", "killed", "unpicklable"])
def test_a_read_the_helper_cannot_send_is_made_here(tmp_path, name):
    """A helper failing otherwise than with an IsodoseError, killed, or with a value that does not pickle: that read
    and the ones after it are made in the command's own process (a bug then shows there, as it would have)."""
    out = scenario(name, tmp_path)
    if name == "failure":
        assert out["values"] == [[1, "helper"], "here", [3, "here"]]
        assert out["warnings"] == ["warning 1 from helper", "warning 3 from here"]
    else:
        assert out["values"] == ["here", [2, "here"]]
        assert out["warnings"] == ["warning 2 from here"]  # not doubled by the helper's
    assert out["helper left"] is False


@pytest.mark.parametrize("name", ["stopped", "slow"])
def test_the_helper_is_stopped_when_the_command_stops_before_reading(tmp_path, name):
    """Stopped, not waited for: the "slow" helper would read for ten minutes (the scenario's time-out is 60 s)."""
    out = scenario(name, tmp_path, timeout=60)
    assert out["ahead"] and out["raised"] == "RuntimeError: the command stopped before reading"
    assert out["helper left"] is False and out["warnings"] == []


def test_a_helper_the_system_reaps_is_not_waited_for(tmp_path):
    """SIGCHLD ignored once the helper runs: the system reaps it, and stopping it is no error."""
    out = scenario("ignored", tmp_path)
    assert out["ahead"] and out["values"] == [[1, "helper"], [2, "helper"], 3] and out["helper left"] is False


@pytest.mark.parametrize("name", ["no fork", "large", "sigchld ignored"])
def test_without_a_helper_the_reads_are_made_here(tmp_path, name):
    """No helper to be had (fork fails), inputs larger than MAX_BYTES, or SIGCHLD ignored from the start (the
    helper could not be waited for): the same reads, made in the command's own process."""
    import signal

    ignore = (lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN)) if name == "sigchld ignored" else None
    out = scenario(name, tmp_path, preexec_fn=ignore)
    assert not out["ahead"] and out["helper"] is None
    assert out["values"] == [[1, "here"], [2, "here"], 3]
    assert out["warnings"] == ["warning 1 from here", "warning 2 from here"]


def test_what_the_command_printed_before_the_fork_is_printed_once(tmp_path):
    out = scenario("printing", tmp_path, PYTHONUNBUFFERED="")  # stdout buffered, as it is in a pipe by default
    assert out["ahead"] and out["values"] == ["helper"]
    assert out["printed"] == "before|helper|"


def test_numpy_is_imported_once_before_the_fork_without_blas_threads(tmp_path):
    """The command and the helper both need NumPy: it is imported before the fork, its BLAS (OpenBLAS in NumPy's
    wheels, which starts its threads as it loads) at one thread, so that the process can still be forked, and the
    environment is left as it was: a thread count the user set stays set, and none is set where none was."""
    out = scenario("values", tmp_path, **{readahead.BLAS_THREADS_VAR: None})
    assert not out["numpy before"] and out["numpy imported"]
    assert out["ahead"] and out["values"] == [[1, "helper"], [2, "helper"], 3]
    assert out["blas threads var"] is None
    out = scenario("values", tmp_path, **{readahead.BLAS_THREADS_VAR: "4"})
    assert out["ahead"] and out["values"] == [[1, "helper"], [2, "helper"], 3]
    assert out["blas threads var"] == "4"


def test_no_helper_where_numpy_starts_threads_as_it_loads(tmp_path):
    """A NumPy whose BLAS starts threads as it loads, whatever OpenBLAS's variable says (a stand-in that starts one):
    no helper is forked from a process with threads, and the reads are made here."""
    stand_in = tmp_path / "site" / "numpy"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text(
        "import threading\nthreading.Thread(target=threading.Event().wait, daemon=True).start()\n"
    )
    path = os.pathsep.join(filter(None, [str(stand_in.parent), os.environ.get("PYTHONPATH")]))
    out = scenario("values", tmp_path, PYTHONPATH=path)
    assert out["numpy imported"] and not out["ahead"] and out["helper"] is None
    assert out["values"] == [[1, "here"], [2, "here"], 3]
    assert ["DEBUG", "NumPy started threads as it loaded: no reading helper, reading here", True] in out["shown"]


def test_numpy_is_not_imported_where_no_helper_is_forked(tmp_path):
    out = scenario("values", tmp_path, ISODOSE_READ_AHEAD="0")
    assert not out["ahead"] and not out["numpy imported"]


@pytest.mark.parametrize("off", ["0", "off", "False"])
def test_turned_off_the_reads_are_made_here(tmp_path, off):
    out = scenario("values", tmp_path, ISODOSE_READ_AHEAD=off)
    assert not out["ahead"] and out["helper"] is None
    assert out["values"] == [[1, "here"], [2, "here"], 3] and out["third read"] == "here"


def test_not_in_a_process_with_threads():
    """The test process runs threads (Numba's, pytest's): no helper is forked from it."""
    import threading

    started = threading.Event()
    done = threading.Event()
    thread = threading.Thread(target=lambda: (started.set(), done.wait(10)))
    thread.start()
    try:
        started.wait(10)
        assert not readahead.possible()
        with readahead.reading([lambda: os.getpid()], ahead=True) as files:
            assert not files.ahead and files.next() == os.getpid()
    finally:
        done.set()
        thread.join()


HELPER_LINE = "isodose: DEBUG: reading {} input(s) in helper process "


def _command(*argv: str, read_ahead: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "isodose", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "ISODOSE_READ_AHEAD": read_ahead, **env},
    )


def _without_helper_line(stderr: str, n_reads: int) -> str:
    """stderr less the one line that says a helper reads (there must be one)."""
    lines = stderr.splitlines(keepends=True)
    said = [line for line in lines if line.startswith(HELPER_LINE.format(n_reads))]
    assert len(said) == 1, stderr
    return "".join(line for line in lines if line not in said)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A phantom whose reading warns (an ROI without contours), with a plan holding the prescription."""
    folder = tmp_path_factory.mktemp("readahead-case")
    _, grid = linear_grid(gradient=(0.3, -0.8, 0.5), frame_uid="1.2.3")
    structures = [
        contour_shape(Sphere((0.0, 0.0, 0.0), 12.0), "PTV", 1, 2.0),
        Structure(name="Empty", number=2, contours=()),
    ]
    write_dose(grid, folder / "RD.dcm")
    write_structures(structures, folder / "RS.dcm", frame_of_reference_uid="1.2.3")
    write_plan(folder / "RP.dcm", prescription_gy=100.0, number_of_fractions=30)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("command", ["dvh", "classify"])
def test_the_command_prints_the_same_with_the_files_read_ahead(case, tmp_path, command):
    """``--backend numba`` in a fresh process (where the helper reads the files): the same output, warnings and
    exit status as with the files read in the command's own process. Reading the dose warns (a relative dose's
    reference given for a dose in Gy), and the warning is kept with the results."""
    files = ["--dose", str(case / "RD.dcm"), "--structures", str(case / "RS.dcm"), "--plan", str(case / "RP.dcm")]
    files += ["--relative-dose-reference-gy", "70"]
    if command == "dvh":
        argv = ["dvh", *files, "--metric", "D95", "--metric", "V95%", "--format", "json"]
    else:
        argv = ["classify", *files, "--recurrence", "PTV", "--format", "json"]
    ahead, here = (_command("-vv", *argv, "--backend", "numba", read_ahead=v) for v in ("1", "0"))
    assert ahead.returncode == here.returncode == 0, (ahead.stderr, here.stderr)
    assert ahead.stdout == here.stdout
    assert _without_helper_line(ahead.stderr, 3 if command == "dvh" else 4) == here.stderr
    warnings = json.loads(ahead.stdout)["warnings"]
    assert any("relative" in w for w in warnings) and all(w in ahead.stderr for w in warnings)


@pytest.mark.slow
def test_an_error_in_the_files_read_ahead_is_the_same_one_line(case, tmp_path):
    bad = tmp_path / "RD.dcm"
    bad.write_bytes(b"not DICOM at all")
    argv = ["-vv", "dvh", "--dose", str(bad), "--structures", str(case / "RS.dcm"), "--backend", "numba"]
    ahead, here = (_command(*argv, read_ahead=v) for v in ("1", "0"))
    assert ahead.returncode == here.returncode == 2
    assert _without_helper_line(ahead.stderr, 3) == here.stderr and "Traceback" not in ahead.stderr
    assert ahead.stderr.splitlines()[-1] == f"isodose: error: {bad}: not a DICOM file"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        # the plan's error before the backend's (cupy cannot run here, or can: the plan's error comes first)
        (["dvh", "--plan", "{text}", "--backend", "cupy"], {}, "not a DICOM file"),
        (["dvh", "--metric", "V95%", "--backend", "cupy"], {}, "metric V95% needs a prescription"),
        (["classify", "--recurrence", "PTV", "--backend", "cupy"], {}, "classification needs the prescription"),
        # a metric's error before the backend named in the environment, or the --dvh-out folder's
        (["dvh", "--metric", "Q7"], {"ISODOSE_BACKEND": "bogus"}, "Q7"),
        (["dvh", "--metric", "Q7", "--backend", "numba", "--dvh-out", "{missing}/c.csv"], {}, "Q7"),
    ],
)
def test_errors_come_in_the_same_order_with_the_files_read_ahead(case, tmp_path, argv, env, message):
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    argv = [a.format(text=text, missing=tmp_path / "missing") for a in argv]
    argv[1:1] = ["--dose", str(case / "RD.dcm"), "--structures", str(case / "RS.dcm")]
    ahead, here = (_command(*argv, read_ahead=v, **env) for v in ("1", "0"))
    assert ahead.returncode == here.returncode == 2, (ahead.stderr, here.stderr)
    assert ahead.stderr == here.stderr
    last = ahead.stderr.splitlines()[-1]
    assert last.startswith("isodose: error:") and message in last, ahead.stderr


def test_the_backend_s_error_comes_before_the_dose_s(case, tmp_path):
    """As before the files were read ahead: the backend is chosen (for a sum of doses) before the dose is read, so
    that an unusable --backend cupy is the error, not the unreadable dose."""
    from isodose.dispatch import cuda_usable

    if cuda_usable():
        pytest.skip("CuPy can run here: --backend cupy is no error")
    bad = tmp_path / "RD.dcm"
    bad.write_bytes(b"not DICOM at all")
    argv = ["dvh", "--dose", str(bad), "--structures", str(case / "RS.dcm"), "--backend", "cupy"]
    ahead, here = (_command(*argv, read_ahead=v) for v in ("1", "0"))
    assert ahead.returncode == here.returncode == 2 and ahead.stderr == here.stderr
    assert ahead.stderr.splitlines()[-1].startswith("isodose: error: the cupy backend"), ahead.stderr


def test_errors_pickle_with_their_parts():
    """What the helper sends back, and the command raises again: an IsodoseError of its class, with its file, object,
    problem and kept warnings."""
    import pickle

    from isodose.errors import DoseGridError

    error = DoseGridError("has no pixels", path="RD.dcm", obj="frame 3")
    error.warnings = ("a warning",)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is DoseGridError and str(again) == str(error)
    assert (again.path, again.obj, again.problem) == ("RD.dcm", "frame 3", "has no pixels")
    assert again.warnings == ("a warning",)


@pytest.mark.parametrize("shared", [True, False])
def test_large_arrays_come_through_a_shared_file_mapped_and_writable(tmp_path, shared):
    """A read's large contiguous arrays (a dose grid's voxels) come through a file in memory that the command maps
    rather than copies, equal to what was read and writable (copy on write); small and strided ones come through
    the pipe, and so does everything where the system gives no such file."""
    out = scenario("arrays" if shared else "arrays without a shared file", tmp_path)
    assert out["ahead"]
    first, second, third = out["values"]
    assert second == [2, "helper"]
    for value in (first, third):
        assert value["where"] == "helper"
        assert value["big"] == [True, shared, True]
        assert value["strided"] == [True, False, True]
        assert value["small"] == [True, False, True]


def test_the_shared_file_holds_each_buffer_aligned_after_the_last(tmp_path):
    """The helper's side of the shared file, in this process: each large buffer written at the next multiple of
    SPILL_ALIGNMENT after the last, the rest pickled; the command's side gives the values back."""
    import numpy as np

    with open(tmp_path / "spill", "w+b") as handle:
        spill = readahead._Spill(handle.fileno())
        values = [np.arange(9_001.0), np.arange(10, dtype=np.int16), np.ones((200, 51), dtype=np.float32)]
        first = spill.message(values)
        spans_first = list(spill.spans)
        second = spill.message({"again": np.full(70_001, 7, dtype=np.uint8)})
        spans_second = list(spill.spans)
        import pickle

        assert spans_first == [(0, 72_008)] and spans_second == [(72_064, 70_001)]  # 40_800 bytes stay in band
        back = readahead._unspilled(pickle.loads(first), handle.fileno())
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(back, values))
        assert np.array_equal(readahead._unspilled(pickle.loads(second), handle.fileno())["again"], np.full(70_001, 7))
        third = spill.message(np.arange(3.0) + 0.5)
        assert spill.spans == [] and np.array_equal(readahead._unspilled(pickle.loads(third), None), [0.5, 1.5, 2.5])
