"""The flat table of a cohort: ``RESULTS.csv`` beside ``RESULTS.h5``, one row per case."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import StoreError
from ..formatting import WARNING_SEPARATOR, csv_cell
from ..outputs import private_temporary


def record_keys(entries: Iterable[dict]) -> list[str]:
    """Every key of the records, in the order first met."""
    keys: dict[str, None] = {}
    for e in entries:
        for k in e.get("record", {}):
            keys.setdefault(k, None)
    return list(keys)


def _temporary(path: Path) -> Path:
    try:
        return private_temporary(path)
    except OSError as exc:
        raise StoreError(f"cannot write the table ({exc.strerror or exc})", path=path) from exc


def write_table(entries: Sequence[dict], path: str | Path) -> Path:
    """Write the entries as a CSV with ``case_id``, ``error``, the records' keys and ``warnings`` (written whole,
    then renamed into place, so that a reader never sees half a table)."""
    path = Path(path)
    keys = record_keys(entries)
    tmp = _temporary(path)
    try:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["case_id", "error", *keys, "warnings"])
            for e in entries:
                record = e.get("record", {})
                warnings = WARNING_SEPARATOR.join(e.get("warnings", []))
                writer.writerow(
                    [
                        csv_cell(e["case_id"]),
                        csv_cell(e.get("error", "")),
                        *(csv_cell(record.get(k)) for k in keys),
                        csv_cell(warnings),
                    ]
                )
        os.replace(tmp, path)
    except OSError as exc:
        raise StoreError(f"cannot write the table ({exc.strerror or exc})", path=path) from exc
    return path


def write_rows_table(entries: Sequence[dict], path: str | Path) -> Path:
    """Write the entries' ``rows`` as a CSV, one line per row with its case's ``case_id`` and ``error`` (a failed
    case, which has no rows, is one line holding its error), written whole and renamed into place."""
    path = Path(path)
    keys: dict[str, None] = {}
    for e in entries:
        for row in e.get("rows", []):
            for k in row:
                keys.setdefault(k, None)
    tmp = _temporary(path)
    try:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["case_id", "error", *keys])
            for e in entries:
                rows = e.get("rows") or [{}]
                for row in rows:
                    writer.writerow(
                        [csv_cell(e["case_id"]), csv_cell(e.get("error", "")), *(csv_cell(row.get(k)) for k in keys)]
                    )
        os.replace(tmp, path)
    except OSError as exc:
        raise StoreError(f"cannot write the table ({exc.strerror or exc})", path=path) from exc
    return path
