"""The journal of a results store: ``RESULTS.h5.journal``, one JSON line per finished case, appended and synced
before the case counts as stored, so that a crash at any moment loses at most the cases in flight.

Its first line holds the run's settings (``{"settings": ..., "isodose_version": ...}``); each later line is one
case's entry (:class:`~isodose.cohort.entries.CaseEntry`), its DVH curves as float32 values in base64
(``cumulative_cc_f32``). A line cut short by a crash is ignored; the last line of a case wins.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import StoreError
from ..formatting import json_safe

log = logging.getLogger(__name__)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(value) -> str:
    """``value`` as JSON, NaN and infinities as null (the walk that replaces them only when there are some)."""
    try:
        return json.dumps(value, default=_json_default, allow_nan=False)
    except ValueError:
        return json.dumps(json_safe(value), default=_json_default, allow_nan=False)


#: Older journals wrote curves rounded to 1e-5 cc as integers (``cumulative_cc_x1e5``); they still read.
CURVE_SCALE = 100_000


def _journal_curves(dvhs: dict) -> tuple[dict, dict[str, np.ndarray] | None]:
    """The curves as the journal writes them: each one's volumes as the float32 values the HDF5 file keeps
    (little-endian, base64, ``cumulative_cc_f32``), which is some ten times quicker to encode than as JSON
    numbers and reads back exactly; values that are not finite become NaN, as JSON's null reads back. With the
    values that each curve reads back as, by ROI (None where a curve is written otherwise)."""
    out = {}
    stored: dict[str, np.ndarray] | None = {}
    for roi, curve in dvhs.items():
        try:
            values = np.array(curve["cumulative_cc"], dtype="<f4")  # a copy: the entry is left as it is
        except (KeyError, TypeError, ValueError):
            values = None
        if values is not None and values.ndim == 1:
            values[~np.isfinite(values)] = np.nan
            curve = {k: v for k, v in curve.items() if k != "cumulative_cc"}
            curve["cumulative_cc_f32"] = base64.b64encode(values.tobytes()).decode("ascii")
            if stored is not None:
                stored[roi] = values.astype(np.float32)
        else:
            stored = None
        out[roi] = curve
    return out, stored


def curve_values(curve: dict) -> np.ndarray:
    """A journal curve's volumes (cc, float32), however it was written."""
    if "cumulative_cc_f32" in curve:
        return np.frombuffer(base64.b64decode(curve["cumulative_cc_f32"]), dtype="<f4").astype(np.float32)
    if "cumulative_cc_x1e5" in curve:
        return (np.asarray(curve["cumulative_cc_x1e5"], dtype=np.float64) / CURVE_SCALE).astype(np.float32)
    return np.asarray(curve["cumulative_cc"], dtype=np.float32)


def encode_line(entry: Mapping[str, Any]) -> tuple[str, dict, list[dict] | None]:
    """One case's journal line; its entry without curves as it will read back from the journal; and its curves as
    :func:`curve_list` reads them back (None where one is written otherwise than as float32 values). The curves,
    most of the line, are encoded once and not decoded again."""
    without_curves = light(entry)
    record = without_curves.get("record")
    if isinstance(record, dict):  # its numbers that are not finite as null now: most records hold some
        without_curves["record"] = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
        }
    light_json = to_json(without_curves)
    if "dvhs" not in entry:
        return light_json + "\n", json.loads(light_json), [] if readable(entry) else None
    written, values = _journal_curves(entry["dvhs"])
    light_keys = light_json[1:-1]
    line = "{" + light_keys + (", " if light_keys else "") + f'"dvhs": {to_json(written)}}}'
    # Its curves read back as they are where the line reads back at all and their texts and numbers are plain (JSON
    # keeps a str, and a finite float exactly).
    plain = (
        readable(entry)
        and values is not None
        and all(
            isinstance(roi, str)
            and isinstance(c.get("roi", ""), str)
            and isinstance(c.get("role", ""), str)
            and isinstance(c.get("step_gy"), int | float)
            and math.isfinite(c["step_gy"])
            for roi, c in written.items()
        )
    )
    return line + "\n", json.loads(light_json), curve_list({"dvhs": written}, values) if plain else None


def readable(entry: Mapping[str, Any]) -> bool:
    """Whether a case's entry is one that :func:`read` takes (else it skips its line)."""
    return (
        isinstance(entry.get("case_id"), str)
        and entry.get("status") in ("ok", "error")
        and isinstance(entry.get("record", {}), dict)
    )


def curve_list(entry: dict, values: dict[str, np.ndarray] | None = None) -> list[dict]:
    """A journal entry's curves: dicts of ``roi``, ``role``, ``step_gy`` and ``cumulative_cc`` (``values``: each
    one's volumes by its key, where they are known already)."""
    return [
        {
            "roi": curve.get("roi", roi),
            "role": curve.get("role", "roi"),
            "step_gy": float(curve["step_gy"]),
            "cumulative_cc": values[roi] if values is not None else curve_values(curve),
        }
        for roi, curve in entry.get("dvhs", {}).items()
    ]


def light(entry: Mapping[str, Any]) -> dict:
    """An entry without its DVH curves."""
    return {k: v for k, v in entry.items() if k != "dvhs"}


def read(journal: Path) -> tuple[dict | None, dict[str, dict]]:
    """The settings and the entries (the last of each case, curves included) of the journal at ``journal``."""
    settings: dict | None = None
    entries: dict[str, dict] = {}
    if not journal.exists():
        return None, entries
    skipped = 0
    with journal.open("r", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # cut short by a crash: that case will be redone
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                skipped += bool(line.strip())
                continue
            if not isinstance(entry, dict):
                skipped += 1
            elif "case_id" in entry:
                if readable(entry):
                    entries[entry["case_id"]] = entry
                else:
                    skipped += 1
            elif isinstance(entry.get("settings"), dict):
                settings = entry["settings"]
            else:
                skipped += 1
    if skipped:
        log.warning(
            "%s: %d line(s) are not cases' entries (cut short, or damaged): skipped, their cases redone",
            journal,
            skipped,
        )
    return settings, entries


def start_journal(journal: Path, settings: dict) -> None:
    """Begin a journal with its settings line."""
    append_lines(
        journal, [json.dumps({"settings": settings, "isodose_version": __version__}) + "\n"], "cannot start the journal"
    )


def append_lines(journal: Path, lines: list[str], failure: str = "cannot append to the journal") -> None:
    """Append ``lines`` (each ending in a newline) and sync them to disk: a StoreError naming the journal when
    the disk refuses."""
    data = "".join(lines).encode("utf-8")
    try:
        # Never through a symbolic link planted at the journal's name.
        fd = os.open(journal, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "a+b") as handle:
            end = handle.seek(0, os.SEEK_END)
            if end:
                handle.seek(end - 1)
                if handle.read(1) != b"\n":  # a line cut short by a crash: the next begins on a line of its own
                    data = b"\n" + data
            handle.write(data)  # appended at the end whatever the position
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise StoreError(f"{failure} ({exc.strerror or exc})", path=journal) from exc
