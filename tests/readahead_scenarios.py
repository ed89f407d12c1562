"""Scenarios of isodose.cli.readahead, each run in a fresh process (``python readahead_scenarios.py NAME [DIR]``) as a
command runs it: a process of one thread, which the helper is forked from. Prints what happened as JSON."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

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
        raise StructureError("has no contours", path="RS.dcm", obj="ROI 'GTV'")

    reads = {
        "values": [warned(1), warned(2), third],
        "error": [warned(1), error, third],
        "failure": [warned(1), failing, warned(3)],
        "killed": [killed, warned(2)],
        "unpicklable": [unpicklable, warned(2)],
    }[name if name != "stopped" else "values"]
    out: dict = {}
    try:
        with collect_warnings() as warnings, reading(reads, ahead=True) as files:
            out["ahead"] = files.ahead
            out["helper"] = files._helper
            if name == "stopped":
                raise RuntimeError("the command stopped before reading")
            for _ in reads:
                out.setdefault("values", []).append(files.next())
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


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]))))
