"""How numbers and tables are written for people and for files: one place for the terminal, CSV and JSON.

- :func:`json_number`: a number for a JSON document (None where it is not finite, as JSON has no NaN);
- :func:`shown` and :func:`text_table`: cells and aligned tables for the terminal;
- :func:`csv_cell` and :func:`csv_text`: cells and whole documents for CSV files (text that a spreadsheet would
  run as a formula gets a leading apostrophe: :func:`csv_safe`);
- :func:`terminal_safe`: control characters escaped in what reaches a terminal.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence


def json_number(value: float | None, digits: int = 6) -> float | None:
    """A JSON-safe number rounded to ``digits`` decimals: None for None, NaN and infinities.

    >>> json_number(float("nan")) is None, json_number(2.0 / 3.0)
    (True, 0.666667)
    """
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def terminal_safe(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x1b``, ``\\n``...): a case id or ROI name
    cannot clear or recolour a terminal, or forge lines of a table.

    >>> terminal_safe("GTV\\x1b[2J\\nforged")
    'GTV\\\\x1b[2J\\\\nforged'
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


#: The first characters that make a spreadsheet read a cell as a formula (OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(text: str) -> str:
    """A text cell a spreadsheet will not run: one starting like a formula (``=``, ``+``, ``-``, ``@``, tab or
    carriage return) gets a leading apostrophe, as OWASP advises; numbers (``-1.5``) are left as they are.

    >>> csv_safe("=HYPERLINK(1)"), csv_safe("-1.5"), csv_safe("GTV")
    ("'=HYPERLINK(1)", '-1.5', 'GTV')
    """
    if not text.startswith(FORMULA_STARTS):
        return text
    try:
        float(text)
    except ValueError:
        return "'" + text
    return text


def json_safe(value):
    """``value`` with every float that is not finite (NaN, infinities) made None, through dicts, lists and tuples, as
    JSON's null: JSON has no NaN (Python's ``json`` would write a bare ``NaN``, which strict readers refuse).

    >>> json_safe({"sd": float("nan"), "values": [1.0, float("inf")]})
    {'sd': None, 'values': [1.0, None]}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def json_document(value, default=None) -> str:
    """``value`` as an indented JSON document, with null where a number is missing (see :func:`json_safe`);
    ``default`` as :func:`json.dumps` takes it, for values JSON does not hold.

    >>> print(json_document({"Dmax": float("nan")}))
    {
      "Dmax": null
    }
    """
    return json.dumps(json_safe(value), indent=2, allow_nan=False, default=default)


def shown(value: object, digits: int = 2) -> str:
    """A table cell for the terminal: floats to ``digits`` decimals, ``-`` where there is no value, lists
    joined by commas.

    >>> shown(12.345), shown(float("nan")), shown(None), shown(["GTV", "CTV"])
    ('12.35', '-', '-', 'GTV, CTV')
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, list | tuple):
        return terminal_safe(", ".join(str(v) for v in value))
    return terminal_safe(str(value))


_NOT_WORDS = re.compile(r"nan|inf|(?<=\d)[eE](?=[+-]?\d)")


def reads_as_text(cell: str) -> bool:
    """Whether a table cell holds words (a class, an ROI, an error) rather than numbers: counts, percentages,
    intervals, ``< 0.001``, ``12.3 ± 4.5``, ``29 (82.9%)`` and ``-`` for none read as numbers.

    >>> reads_as_text("in-field"), reads_as_text("< 0.001"), reads_as_text("29 (82.9%)"), reads_as_text("1e-05")
    (True, False, False, False)
    """
    return bool(re.search(r"[A-Za-z]", _NOT_WORDS.sub("", cell)))


def text_columns(rows: Sequence[Sequence[str]], n_columns: int) -> list[bool]:
    """For each column, whether it reads from the left: the first always, any other whose cells hold words
    (:func:`reads_as_text`); numbers read from the right."""
    return [i == 0 or any(reads_as_text(str(row[i])) for row in rows) for i in range(n_columns)]


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 2) -> str:
    """Columns aligned (the first and those of words to the left, those of numbers to the right: see
    :func:`text_columns`), with a rule under the header; cells as :func:`shown` writes them.

    >>> print(text_table(["ROI", "Dmean Gy"], [["PTV", 70.123], ["Cord", float("nan")]]))
    ROI   Dmean Gy
    ----  --------
    PTV      70.12
    Cord         -
    """
    text = [[terminal_safe(str(h)) for h in header]]
    text += [[terminal_safe(c) if isinstance(c, str) else shown(c, digits) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(header))]
    left = text_columns(text[1:], len(header))
    lines = []
    for n, row in enumerate(text):
        cells = [c.ljust(w) if words else c.rjust(w) for c, w, words in zip(row, widths, left)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


#: Separates warnings where several share one cell or line (their messages hold ``;`` and ``,`` themselves).
WARNING_SEPARATOR = " | "


def csv_cell(value: object) -> str:
    """A CSV cell: empty where there is no value, lists joined by ``;``, booleans as ``true``/``false``, numbers
    in full precision (the shortest text that reads back as the same float).

    >>> csv_cell(None), csv_cell(["a", "b"]), csv_cell(True), csv_cell(0.5)
    ('', 'a;b', 'true', '0.5')
    >>> csv_cell(14880.03)
    '14880.03'
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, list | tuple):
        return csv_safe(";".join(str(v) for v in value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return csv_safe(value)
    return str(value)


def csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A CSV document (header, then rows), cells as :func:`csv_cell` writes them.

    >>> print(csv_text(["name", "dmean_gy"], [["PTV", 70.0], ["Cord", None]]), end="")
    name,dmean_gy
    PTV,70.0
    Cord,
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([csv_cell(v) for v in row])
    return buffer.getvalue()
