"""Scenarios of isodose.cli.readahead, each run in a fresh process (``python readahead_scenarios.py NAME [DIR]``) as a
command runs it: a process of one thread, which the helper is forked from. Prints what happened as JSON."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from isodose.cli import readahead
from isodose.cli.readahead import reading
from isodose.errors import StructureError, collect_warnings

HERE = os.getpid()
log = logging.getLogger("isodose.scenario")


class Shown(logging.Handler):
    """What the command's handler would show: every record, with the process and thread it is logged in."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[list] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append([record.levelname, record.getMessage(), record.process == HERE])


def where() -> str:
    return "here" if os.getpid() == HERE else "helper"


def main(name: str, folder: Path) -> dict:
    shown = Shown()
    logger = logging.getLogger("isodose")
    logger.handlers[:] = [shown]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    marker = folder / "third read made"

    def third():
        marker.write_text(where())
        return 3

    def unpicklable():
        return where() if where() == "here" else (lambda: 0)

    def killed():
        if where() == "helper":
            os.kill(os.getpid(), signal.SIGKILL)
        return where()

    def failing():
        if where() == "helper":
            raise ValueError("a bug")
        return where()

    def warned(value):
        def read():
            log.debug("debug %s", value)
            log.warning("warning %s from %s", value, where())
            return [value, where()]

        return read

    def error():
        log.warning("before the error")
        raise StructureError(f"has no contours (read {where()})", path="RS.dcm", obj="ROI 'GTV'")

    def slow():
        if where() == "helper":
            time.sleep(600)
        return where()

    def printing():
        print("helper|", end="")
        sys.stdout.flush()
        return where()

    def arrays(seed):
        def read():
            import numpy as np

            big = np.random.default_rng(seed).random((100, 3001))  # 2.4 MB: through the shared file
            return {"big": big, "strided": big[:, ::7], "small": big[0, :10].copy(), "where": where()}

        return read

    reads = {
        "values": [warned(1), warned(2), third],
        "arrays": [arrays(1), warned(2), arrays(3)],
        "arrays without a shared file": [arrays(1), warned(2), arrays(3)],
        "error": [warned(1), error, third],
        "failure": [warned(1), failing, warned(3)],
        "killed": [killed, warned(2)],
        "unpicklable": [unpicklable, warned(2)],
        "slow": [slow],
        "printing": [printing],
    }.get(name, [warned(1), warned(2), third])
    inputs: list = []
    if name == "large":  # a sparse file: larger than MAX_BYTES on paper only
        big = folder / "large.dcm"
        with open(big, "wb") as handle:
            handle.truncate(readahead.MAX_BYTES + 1)
        inputs = [None, big]
    if name == "no fork":

        def no_fork():
            raise BlockingIOError(11, "Resource temporarily unavailable")

        os.fork = no_fork
    if name == "arrays without a shared file":
        del os.memfd_create
    if name == "printing":
        sys.stdout.write("before|")  # buffered (stdout is a pipe) when the helper is forked
    out: dict = {"numpy before": "numpy" in sys.modules}
    try:
        with collect_warnings() as warnings, reading(reads, ahead=True, inputs=inputs) as files:
            out["ahead"] = files.ahead
            out["helper"] = files._helper
            out["numpy imported"] = "numpy" in sys.modules
            out["blas threads var"] = os.environ.get(readahead.BLAS_THREADS_VAR)
            if name in ("stopped", "slow"):
                raise RuntimeError("the command stopped before reading")
            if name == "ignored":  # the system reaps the helper now: it cannot be waited for
                signal.signal(signal.SIGCHLD, signal.SIG_IGN)
            for _ in reads:
                out.setdefault("values", []).append(files.next())
            if name.startswith("arrays"):
                out["values"] = [_described(value, seed) for value, seed in zip(out["values"], (1, None, 3))]
    except StructureError as exc:
        out["error"] = [type(exc).__name__, exc.path, exc.obj, exc.problem]
    except (ValueError, RuntimeError) as exc:
        out["raised"] = f"{type(exc).__name__}: {exc}"
    out["warnings"] = warnings
    out["shown"] = shown.lines
    out["third read"] = marker.read_text() if marker.exists() else None
    if out.get("helper"):
        try:
            os.kill(out["helper"], 0)
            out["helper left"] = True
        except ProcessLookupError:
            out["helper left"] = False
    return out


def _described(value, seed):
    """What a read of the arrays scenarios gave: whether each array is what was read, and mapped from the shared
    file rather than copied, and whether the command may write to it."""
    if seed is None:
        return value
    import mmap

    import numpy as np

    expected = np.random.default_rng(seed).random((100, 3001))

    def mapped(array):
        while isinstance(array.base, np.ndarray):
            array = array.base
        return isinstance(array.base, memoryview) and isinstance(array.base.obj, mmap.mmap)

    described = {"where": value["where"]}
    for key, want in (("big", expected), ("strided", expected[:, ::7]), ("small", expected[0, :10])):
        array = value[key]
        described[key] = [bool(np.array_equal(array, want)), mapped(array), bool(array.flags.writeable)]
    value["big"][0, 0] = -1.0  # the command's own copy of the page
    return described


if __name__ == "__main__":
    print("\n" + json.dumps(main(sys.argv[1], Path(sys.argv[2]))))
