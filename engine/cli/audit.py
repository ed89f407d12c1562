"""``isodose audit``: isodose against the planning system's own DVHs (an RTDOSE's DVH Sequence), for one file or
a whole archive."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .. import __version__
from ..errors import IsodoseError, collect_warnings
from ..formatting import csv_text, json_document, text_table
from ..outputs import output_file
from . import options
from .exit_codes import EXIT_EVERY_CASE_FAILED
from .progress import ProgressBar, print_summary


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "audit",
        help="isodose against the planning system's DVHs of an RTDOSE (--dose), or of every RTDOSE of an archive",
        description="Compare isodose's DVHs with those the planning system wrote in each RTDOSE's DVH Sequence: "
        "one file (--dose, --structures), or every RTDOSE of a folder or manifest (SOURCE --out AUDIT.csv, "
        "resumable).",
    )
    parser.add_argument("source", nargs="?", metavar="SOURCE", help="folder of DICOM exports, or an audit manifest")
    parser.add_argument("--out", metavar="AUDIT.csv", help="with SOURCE: the table to write (AUDIT.h5 beside it)")
    parser.add_argument("--dose", metavar="RD.dcm", help="an RTDOSE holding a DVH Sequence")
    parser.add_argument("--structures", metavar="RS.dcm", help="the RTSTRUCT its DVHs refer to")
    options.add_prescription(parser)
    parser.add_argument(
        "--roi", action="append", metavar="NAME", help="ROI to audit, by name or number (repeat; default: all reported)"
    )
    parser.add_argument(
        "--metric",
        action="append",
        metavar="M",
        help="metric compared beside D98, D95, D50, D2, the volume, Dmin, Dmean and Dmax (repeat)",
    )
    parser.add_argument(
        "--end-cap",
        default="half",
        choices=("half", "none", "both"),
        help="isodose's convention beyond the first and last contour planes; both compares the two (default half)",
    )
    parser.add_argument(
        "--tolerance-pct", type=float, default=3.0, metavar="PCT", help="agreement within this %% (default 3)"
    )
    parser.add_argument(
        "--dose-floor-gy",
        type=float,
        default=1.0,
        metavar="GY",
        help="doses below this are judged against it (default 1 Gy: 0.03 Gy at 3%%)",
    )
    options.add_format(parser)
    parser.add_argument("--html", metavar="FILE", help="one file: write both curves of each ROI and the table as HTML")
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N", help="with SOURCE: processes (default: one per core)"
    )
    parser.add_argument("--no-progress", action="store_true", help="with SOURCE: no progress bar")
    options.add_relative_dose(parser)
    options.add_allow_mismatch(parser)
    options.add_backend(parser)
    parser.add_argument(
        "--supersampling",
        type=int,
        default=None,
        metavar="N",
        help="in-plane cells per dose voxel side (default: adapted)",
    )
    parser.add_argument(
        "--extremes",
        default="vertices",
        choices=("vertices", "samples"),
        help="isodose's Dmin and Dmax over the samples, the contours' vertices and the dose grid's points inside "
        "(default), or the samples alone",
    )
    parser.set_defaults(func=run)
    return parser


def _tolerance(args: argparse.Namespace):
    from ..dvh import Tolerance

    for name, value in (("--tolerance-pct", args.tolerance_pct), ("--dose-floor-gy", args.dose_floor_gy)):
        if not (math.isfinite(value) and value >= 0):
            raise IsodoseError(f"{name} must be a number of at least 0, not {value}")
    return Tolerance(percent=args.tolerance_pct, dose_floor_gy=args.dose_floor_gy)


def _options(args: argparse.Namespace):
    from ..voxelize import SamplingOptions

    return SamplingOptions(supersampling=args.supersampling, extremes=args.extremes)


def run(args: argparse.Namespace) -> int:
    if args.source and (args.dose or args.structures):
        raise IsodoseError("give either SOURCE (an archive) or --dose and --structures (one file), not both")
    if args.source:
        return run_archive(args)
    if not (args.dose and args.structures):
        raise IsodoseError("give --dose RD.dcm and --structures RS.dcm (one file), or SOURCE --out AUDIT.csv")
    for flag, value in (("--out", args.out), ("--workers", args.workers)):
        if value is not None:
            raise IsodoseError(f"{flag} belongs to an archive's audit (SOURCE --out AUDIT.csv)")
    return run_file(args)


def run_file(args: argparse.Namespace) -> int:
    from ..audit import audit_files, end_caps_of

    tolerance = _tolerance(args)
    html_path = output_file(args.html, "--html") if args.html else None
    prescription = options.positive_prescription(args.prescription)  # else the plan's, read with the others
    with collect_warnings() as warnings:
        result = audit_files(
            args.dose,
            args.structures,
            args.plan,
            rois=args.roi,
            metrics=args.metric or (),
            end_caps=end_caps_of(args.end_cap),
            tolerance=tolerance,
            options=_options(args),
            backend=args.backend,
            prescription_gy=prescription,
            relative_reference_gy=args.relative_dose_reference_gy,
            allow_mismatch=args.allow_mismatch,
        )
    document = result.to_dict()
    document.update(
        {
            "isodose_version": __version__,
            "dose_file": str(args.dose),
            "structure_file": str(args.structures),
            "plan_file": str(args.plan) if args.plan else None,
        }
    )
    document["warnings"] = list(dict.fromkeys([*warnings, *document["warnings"]]))
    if args.format == "json":
        sys.stdout.write(json_document(document) + "\n")
    elif args.format == "csv":
        rows = result.rows()
        header = list(rows[0]) if rows else ["name"]
        sys.stdout.write(csv_text(header, [[r.get(k) for k in header] for r in rows]))
    else:
        print_file_table(result, sys.stdout)
    if html_path is not None:
        from ..cohort.report import write_audit_html

        write_audit_html(result, html_path, title=f"isodose against the planning system: {Path(args.dose).name}")
        print(f"HTML: {html_path}", file=sys.stdout if args.format == "table" else sys.stderr)
    return 0


def print_file_table(result, out) -> None:
    """The audit of one file as a table: one row per ROI and convention, then the summary in words."""
    several = len(result.end_caps) > 1
    from ..audit import AUDIT_METRICS
    from ..dvh import parse_metric

    extra = [m for m in result.metrics if m not in AUDIT_METRICS]
    header = ["ROI", *(["end cap"] if several else []), "TPS cc", "isodose cc", "diff %", "TPS Dmean Gy", "diff %"]
    header += ["TPS D95 Gy", "diff %"]
    for m in extra:
        unit = parse_metric(m).result_unit
        header += [f"TPS {m}{' ' + unit if unit else ''}", "diff %"]
    header += ["max DVH gap %", "agrees"]
    rows = []
    for s in result.structures:
        for cap, c in s.comparisons.items():
            rows.append(
                [
                    s.name,
                    *([cap] if several else []),
                    c.reference["volume_cc"],
                    c.values["volume_cc"],
                    c.difference_pct["volume_cc"],
                    c.reference["dmean_gy"],
                    c.difference_pct["dmean_gy"],
                    c.reference["D95"],
                    c.difference_pct["D95"],
                    *(v for m in extra for v in (c.reference[m], c.difference_pct[m])),
                    c.dvh_max_difference_pct,
                    "yes" if c.agrees else "no: " + ", ".join(c.outside_tolerance),
                ]
            )
    out.write(f"backend: {result.backend}   tolerance: {result.tolerance.percent:g}% (doses against at least ")
    out.write(f"{result.tolerance.dose_floor_gy:g} Gy)\n")
    out.write(text_table(header, rows, digits=3) + "\n")
    summary = result.summary()
    for cap, block in summary["end_caps"].items():
        out.write(f"{block['agree']} of {block['structures']} structures agree with end caps {cap}\n")
    if several:
        better = summary["better_end_cap"]
        out.write(f"better convention: {better}\n" if better else "neither convention fits better\n")


def run_archive(args: argparse.Namespace) -> int:
    from ..audit import end_caps_of
    from ..cohort.audit import AuditSettings, archive_summary, run_audit
    from ..cohort.local import check_workers
    from ..cohort.store import ResultStore

    if not args.out:
        raise IsodoseError("an archive's audit needs --out AUDIT.csv (its store AUDIT.h5 is written beside it)")
    if args.html or args.roi or args.plan or args.prescription is not None:
        raise IsodoseError("--html, --roi, --plan and --prescription belong to one file's audit (--dose, --structures)")
    check_workers(args.workers)
    output_file(args.out, "--out")
    _not_over_another_file(Path(args.out), Path(args.source))
    args.on_interrupt = f"the cases finished are kept in {args.out}: the same command goes on from there"
    settings = AuditSettings(
        metrics=tuple(args.metric or ()),
        end_caps=end_caps_of(args.end_cap),
        tolerance=_tolerance(args),
        options=_options(args),
        relative_dose_reference_gy=args.relative_dose_reference_gy,
        allow_mismatch=args.allow_mismatch,
    )
    bar = ProgressBar(enabled=not args.no_progress)
    try:
        summary = run_audit(
            args.source, args.out, settings=settings, workers=args.workers, backend=args.backend, on_progress=bar
        )
    finally:
        bar.finish()
    archive = archive_summary(ResultStore.open(summary.store, create=False), ["D95", *(args.metric or ())])
    if args.format == "json":
        sys.stdout.write(json_document(archive) + "\n")
    elif args.format == "csv":
        print_summary_csv(archive, sys.stdout)
    else:
        print_summary(summary)
        print_archive_table(archive, sys.stdout)
        if archive["cases_with_skipped_items"]:
            print(
                f"{archive['skipped_items']} DVH item(s) of {archive['cases_with_skipped_items']} case(s) could not be "
                f"used and were skipped: see the case_warnings column of {summary.table}"
            )
    if summary.cases and summary.failed == summary.cases:
        return EXIT_EVERY_CASE_FAILED
    return 0


def _not_over_another_file(out: Path, source: Path) -> None:
    """Refuse an ``--out`` that would write over the input, or over a file that is not an earlier audit's table."""
    if source.is_file() and out.resolve() == source.resolve():
        raise IsodoseError("--out names the manifest itself; give the audit's table another name", path=out)
    if source.is_dir() and out.resolve().is_relative_to(source.resolve()) and out.exists():
        header = ""
        try:
            with out.open(encoding="utf-8") as handle:
                header = handle.readline()
        except (OSError, UnicodeDecodeError):
            pass
        if not header.startswith("case_id,error,"):
            raise IsodoseError(
                "exists inside the archive and is not an audit's table: it is not written over; give --out another "
                "name",
                path=out,
            )
    elif out.exists():
        try:
            with out.open(encoding="utf-8") as handle:
                header = handle.readline()
        except (OSError, UnicodeDecodeError):
            header = ""
        if not header.startswith("case_id,error,"):
            raise IsodoseError("exists and is not an audit's table: it is not written over", path=out)


#: ROI names the archive's summary table shows (the most frequent first).
ROIS_SHOWN = 15


def _group_rows(groups: dict, label: str) -> list[list]:
    return [
        [
            f"{label}{name}",
            g["structures"],
            g["agree_pct"],
            g["median_abs_difference_volume_pct"],
            g["median_abs_difference_dmean_pct"],
            g["median_abs_difference_D95_pct"],
            g["median_dvh_max_difference_pct"],
        ]
        for name, g in groups.items()
    ]


def print_archive_table(archive: dict, out) -> None:
    """An archive's audit summed up: per convention, all structures, by size class, by ROI (the most frequent)."""
    header = ["structures", "n", "agree %", "|vol| % median", "|Dmean| %", "|D95| %", "max DVH gap %"]
    for cap, block in archive["end_caps"].items():
        out.write(f"\nend caps {cap}:\n")
        rows = _group_rows({"all": block["all"]}, "")
        rows += _group_rows(block["by_size_class"], "  ")
        names = dict(list(block["by_roi"].items())[:ROIS_SHOWN])
        rows += _group_rows(names, "  ROI ")
        out.write(text_table(header, rows) + "\n")
        if len(block["by_roi"]) > ROIS_SHOWN:
            out.write(
                f"(and {len(block['by_roi']) - ROIS_SHOWN} more ROI names: see the JSON summary, --format json)\n"
            )
    if "better_end_cap" in archive:
        better = archive["better_end_cap"]
        counts = ", ".join(f"{cap}: {n}" for cap, n in archive["better_end_cap_structures"].items())
        out.write(
            f"\nthe convention that fits this archive: {better} (structures each fits better: {counts})\n"
            if better
            else f"\nneither convention fits this archive better (structures each fits better: {counts})\n"
        )


def print_summary_csv(archive: dict, out) -> None:
    """The archive's summary as CSV: one row per convention and group (all, size class, ROI name)."""
    header = ["end_cap", "group", "name", "structures", "agree", "agree_pct"]
    keys = [k for k in next(iter(archive["end_caps"].values()))["all"] if k.startswith("median")]
    rows = []
    for cap, block in archive["end_caps"].items():
        for group, items in (
            ("all", {"all": block["all"]}),
            ("size_class", block["by_size_class"]),
            ("roi", block["by_roi"]),
        ):
            for name, g in items.items():
                rows.append([cap, group, name, g["structures"], g["agree"], g["agree_pct"], *(g[k] for k in keys)])
    out.write(csv_text(header + keys, rows))
