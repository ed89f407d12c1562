"""``isodose cohort run`` and ``isodose cohort report``: whole cohorts, resumable, into one store."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from ..errors import IsodoseError
from ..formatting import csv_text, json_document
from ..outputs import output_file, output_folder
from . import options
from .exit_codes import EXIT_EVERY_CASE_FAILED
from .progress import ProgressBar, print_summary


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("cohort", help="run and report whole cohorts")
    actions = parser.add_subparsers(dest="cohort_command", metavar="ACTION")
    actions.required = True

    run_parser = actions.add_parser("run", help="classify every case of a manifest or folder (resumable)")
    run_parser.add_argument("input", help="manifest CSV, or a folder of DICOM exports")
    run_parser.add_argument(
        "--out", required=True, metavar="RESULTS.h5", help="results store (RESULTS.csv is written beside)"
    )
    run_parser.add_argument(
        "--workers", type=int, default=None, metavar="N", help="processes (default: one per CPU core)"
    )
    run_parser.add_argument(
        "--metric", action="append", metavar="M", help="extra metric of Vr, or of a planning ROI as ROI:METRIC (repeat)"
    )
    run_parser.add_argument("--target", action="append", metavar="ROI", help="targets for the point-of-origin method")
    run_parser.add_argument(
        "--recurrence-roi",
        default="Recurrence",
        metavar="NAME",
        help="recurrence ROI name when the input is a folder (default: Recurrence)",
    )
    run_parser.add_argument(
        "--prescription", type=float, metavar="GY", help="prescription for cases of a folder without an RTPLAN"
    )
    run_parser.add_argument(
        "--second-courses",
        action="store_true",
        help="folder input: a patient with two planning frames is one re-irradiated case (the "
        "earlier plan is course 1, the later course 2, related by a REG)",
    )
    run_parser.add_argument(
        "--dvh-step", type=float, default=0.1, metavar="GY", help="dose step of stored DVHs (0.1 Gy)"
    )
    run_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    options.add_relative_dose(run_parser)
    options.add_allow_mismatch(run_parser)
    run_parser.add_argument(
        "--require-targets",
        action="store_true",
        help="fail a case whose target metrics name an ROI it lacks (by default: classified, "
        "those metrics null, with a warning)",
    )
    dask = run_parser.add_mutually_exclusive_group()
    dask.add_argument(
        "--scheduler",
        metavar="tcp://HOST:8786",
        help="run on this Dask cluster (needs isodose[distributed]; workers must see the input paths)",
    )
    dask.add_argument("--scheduler-file", metavar="FILE", help="run on the Dask cluster this scheduler file describes")
    dask.add_argument(
        "--local-cluster",
        action="store_true",
        help="run on a Dask cluster of --workers processes started on this machine",
    )
    options.add_criteria(run_parser)
    options.add_uncertainty(run_parser)
    options.add_sampling(run_parser)
    run_parser.set_defaults(func=run)

    report_parser = actions.add_parser("report", help="failure-pattern table, metric summaries and HTML report")
    report_parser.add_argument("results", metavar="RESULTS.h5")
    report_parser.add_argument("--html", metavar="FILE", help="HTML report (default: RESULTS.html)")
    report_parser.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="COLUMN",
        help="cross-tabulate the classes against a manifest column (a covariate), with its test (repeatable)",
    )
    report_parser.add_argument(
        "--categorical", action="append", default=[], metavar="COLUMN", help="take a --by column as categories"
    )
    report_parser.add_argument(
        "--continuous", action="append", default=[], metavar="COLUMN", help="take a --by column as numbers"
    )
    report_parser.add_argument(
        "--table",
        metavar="FILE",
        help="the per-case table in the papers' layout: FILE.csv, FILE.md (Markdown) or FILE.tex (LaTeX, booktabs)",
    )
    report_parser.add_argument("--figures", metavar="DIR", help="each figure also as SVG and as a 300-dpi PNG in DIR")
    options.add_format(report_parser)
    report_parser.set_defaults(func=report)
    return parser


def run_settings(args: argparse.Namespace):
    from ..cohort.settings import RunSettings

    vr_metrics, roi_metrics = options.split_metrics(args.metric)
    return RunSettings(
        metrics=tuple(vr_metrics),
        target_metrics=tuple(roi_metrics),
        targets=tuple(args.target) if args.target else None,
        criteria=options.criteria(args),
        options=options.sampling_options(args),
        dvh_step_gy=options.dvh_step(args),
        relative_dose_reference_gy=args.relative_dose_reference_gy,
        allow_mismatch=args.allow_mismatch,
        require_targets=args.require_targets,
        uncertainty=options.uncertainty(args),
    )


def run(args: argparse.Namespace) -> int:
    from ..cohort.local import check_workers, default_workers
    from ..cohort.runner import run_cohort

    check_workers(args.workers)
    options.positive_prescription(args.prescription)
    if args.prescription is not None and not Path(args.input).is_dir():
        raise IsodoseError(
            "--prescription is for the cases of a folder that have no RTPLAN; a manifest gives each case's "
            "prescription in its prescription_gy column",
            path=args.input,
        )
    if not Path(args.out).is_dir():  # a folder is refused by the store, with what to give instead
        output_file(args.out, "--out")
    settings = run_settings(args)
    args.on_interrupt = f"the cases finished are kept in {args.out}: the same command goes on from there"
    bar = ProgressBar(enabled=not args.no_progress)
    start = functools.partial(
        run_cohort,
        args.input,
        args.out,
        settings=settings,
        workers=args.workers,
        backend=args.backend,
        recurrence_roi=args.recurrence_roi,
        prescription_gy=args.prescription,
        second_courses=args.second_courses,
        on_progress=bar,
    )
    try:
        if args.scheduler or args.scheduler_file or args.local_cluster:
            from ..cohort.distributed import dask_client

            local = default_workers(args.workers) if args.local_cluster else None
            with dask_client(args.scheduler, args.scheduler_file, local) as client:
                summary = start(client=client)
        else:
            summary = start()
    finally:
        bar.finish()
    print_summary(summary)
    if summary.cases and summary.failed == summary.cases:  # no case of the cohort has a result
        return EXIT_EVERY_CASE_FAILED
    return 0


def report(args: argparse.Namespace) -> int:
    from ..cohort.report import METHODS, build_report, format_text, write_html
    from ..cohort.statistics import TABLE_FORMATS, paper_columns, paper_table
    from ..cohort.store import ResultStore
    from ..recurrence import CLASSES

    html_path = output_file(args.html if args.html else Path(args.results).with_suffix(".html"), "--html")
    table_path = None
    if args.table:
        table_path = output_file(args.table, "--table")
        if table_path.suffix.lower() not in TABLE_FORMATS:
            raise IsodoseError("--table needs a .csv, .md or .tex file", path=args.table)
    both = set(args.categorical) & set(args.continuous)
    if both:
        raise IsodoseError(f"--categorical and --continuous both name {sorted(both)[0]!r}")
    for output, option in ((html_path, "--html"), (table_path, "--table")):
        if output is not None:
            ResultStore.check_not_ours(output, args.results, option)
    if args.figures:
        ResultStore.check_not_ours(args.figures, args.results, "--figures")
        output_folder(args.figures, "--figures")
    store = ResultStore.open(args.results, create=False)
    cohort = build_report(store, by=args.by, categorical=args.categorical, continuous=args.continuous)
    if args.format == "json":
        document = {
            "store": str(cohort.store),
            "cases": cohort.n_ok + len(cohort.failed),
            "classified": cohort.n_ok,
            "failed": [{"case_id": c, "error": e} for c, e in cohort.failed],
            "patterns": cohort.patterns,
            "summaries": [s.__dict__ for s in cohort.summaries],
            "warnings": [{"case_id": c, "warnings": messages} for c, messages in cohort.warnings],
            "uncertainty": {method: u.__dict__ for method, u in cohort.uncertainty.items()},
            "by_class": {
                method: [
                    {"quantity": s.label, "key": s.key, "p_kruskal_wallis": s.p_value}
                    | {c: d.__dict__ for c, d in s.by_class.items()}
                    for s in stats
                ]
                for method, stats in cohort.class_stats.items()
            },
            "covariates": {
                method: [_covariate_json(r) for r in results] for method, results in cohort.covariates.items()
            },
            "notes": cohort.notes,
        }
        sys.stdout.write(json_document(document, default=lambda v: None) + "\n")
    elif args.format == "csv":  # the failure patterns, one row per method and class
        rows = [
            [label, c, cohort.patterns[key][c], 100.0 * cohort.patterns[key][c] / cohort.n_ok if cohort.n_ok else None]
            for key, label in METHODS
            for c in CLASSES
        ]
        sys.stdout.write(csv_text(["method", "class", "cases", "cases_pct"], rows))
    else:
        print(format_text(cohort))
    write_html(cohort, store, html_path, figures=args.figures)
    said = sys.stdout if args.format == "table" else sys.stderr
    print(f"HTML report: {html_path}", file=said)
    if table_path is not None:
        text = paper_table(cohort.cases, paper_columns(cohort.settings), TABLE_FORMATS[table_path.suffix.lower()])
        table_path.write_text(text, encoding="utf-8")
        print(f"table: {table_path}", file=said)
    if args.figures:
        print(f"figures (SVG and 300-dpi PNG): {args.figures}", file=said)
    return 0


def _covariate_json(result) -> dict:
    from ..cohort.statistics import CrossTable

    if isinstance(result, CrossTable):
        return {
            "column": result.column,
            "kind": "categorical",
            "categories": list(result.categories),
            "counts": result.counts.tolist(),
            "test": result.test,
            "p_value": result.p_value,
        }
    return {
        "column": result.key,
        "kind": "continuous",
        "test": "Kruskal-Wallis",
        "p_value": result.p_value,
        "by_class": {c: d.__dict__ for c, d in result.by_class.items()},
    }
