"""``isodose validate nelms``: isodose against the analytical values of the Nelms 2015 DVH set."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..errors import OutputError, ValidationDataError
from ..formatting import csv_text, json_document, json_number, text_table
from . import options

#: Where the Nelms set is looked for when no PATH is given.
NELMS_ENV_VAR = "ISODOSE_NELMS"


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("validate", help="compare with reference data sets")
    sets = parser.add_subparsers(dest="dataset", metavar="DATASET")
    sets.required = True
    nelms = sets.add_parser("nelms", help="the Nelms 2015 analytical DVH set")
    nelms.add_argument(
        "path",
        nargs="?",
        default=None,
        help=f"folder with analytical.csv, dose_grids/ and structures/ (default: ${NELMS_ENV_VAR})",
    )
    options.add_format(nelms)
    nelms.add_argument(
        "--tables",
        metavar="DIR",
        help="also write the case table and the summary as text into DIR (nelms-cases.txt, "
        "nelms-summary.txt; make validate writes the docs' copies)",
    )
    options.add_sampling(nelms)
    nelms.set_defaults(func=run)
    return parser


def nelms_path(given: str | None) -> str:
    """The folder of the Nelms set: PATH, else ``$ISODOSE_NELMS``; an error saying both when neither is given."""
    path = given or os.environ.get(NELMS_ENV_VAR)
    if not path:
        raise ValidationDataError(
            f"give the folder of the Nelms 2015 set (it holds analytical.csv) as PATH, or set {NELMS_ENV_VAR}",
            obj="validate nelms",
        )
    return path


def run(args: argparse.Namespace) -> int:
    from ..dispatch import select_backend
    from ..validation import NELMS_METRICS, NelmsSummary, run_nelms

    path = nelms_path(args.path)
    backend = select_backend(args.backend)
    started = time.perf_counter()
    values = run_nelms(path, backend=backend, options=options.sampling_options(args))
    elapsed = time.perf_counter() - started
    names = [name for name, _, _ in NELMS_METRICS]
    case_values: dict = {}
    for v in values:
        case_values.setdefault(v.case, []).append(v)
    rows = []
    for case, items in case_values.items():
        errors = {v.metric: v.error_pct for v in items}
        rows.append([case.structure, case.gradient, case.voxel_mm] + [errors[n] for n in names])
    summary = NelmsSummary.of(values)
    by_spacing: dict = {}
    for v in values:
        by_spacing.setdefault(v.case.plane_spacing, []).append(v)
    if args.format == "json":
        print(
            json_document(
                {
                    "backend": backend.name,
                    "device": backend.device,
                    "seconds": round(elapsed, 3),
                    "summary": summary.__dict__,
                    "by_plane_spacing": {k: NelmsSummary.of(v).__dict__ for k, v in by_spacing.items()},
                    "values": [
                        {
                            "structure": v.case.structure,
                            "gradient": v.case.gradient,
                            "dose_voxel_mm": v.case.voxel_mm,
                            "metric": v.metric,
                            "isodose": json_number(v.isodose),
                            "analytical": json_number(v.analytical),
                            "error_pct": json_number(v.error_pct, 4),
                        }
                        for v in values
                    ],
                },
            )
        )
        return 0
    if args.format == "csv":
        print(csv_text(["structure", "gradient", "dose_voxel_mm"] + [f"{n} err %" for n in names], rows), end="")
        return 0
    case_table = text_table(["structure", "gradient", "grid mm"] + names, rows)
    spacing_rows = [
        [k, s.values, s.over_3pct, s.over_2pct, s.over_1pct, s.max_abs_error_pct]
        for k, s in ((k, NelmsSummary.of(v)) for k, v in sorted(by_spacing.items()))
    ]
    spacing_rows.append(
        ["all", summary.values, summary.over_3pct, summary.over_2pct, summary.over_1pct, summary.max_abs_error_pct]
    )
    summary_table = text_table(["contour spacing", "values", "> 3%", "> 2%", "> 1%", "max |error| %"], spacing_rows)
    if args.tables:
        _write_tables(Path(args.tables), {"nelms-cases.txt": case_table, "nelms-summary.txt": summary_table})
    print(f"Nelms 2015 analytical set: {path}")
    print(
        f"backend: {backend.name} ({backend.device}), {elapsed:.1f} s; error of isodose against the analytical "
        "value, % of it"
    )
    print(case_table)
    print()
    print(summary_table)
    return 0


def _write_tables(folder: Path, tables: dict[str, str]) -> None:
    """Write each table as a text file in ``folder`` (an existing folder)."""
    if not folder.is_dir():
        raise OutputError("is not a folder (--tables needs an existing folder)", path=folder)
    for name, table in tables.items():
        try:
            (folder / name).write_text(table + "\n", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot be written ({exc.strerror or exc})", path=folder / name) from exc
