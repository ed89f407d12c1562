"""``isodose demo``: a synthetic recurrence cohort generated as DICOM, classified, reported and checked."""

from __future__ import annotations

import argparse
import shutil
import time

from ..errors import IsodoseError
from ..outputs import output_folder
from . import options
from .progress import ProgressBar, print_summary


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("demo", help="generate a synthetic recurrence cohort, run it and report it")
    parser.add_argument("--cases", type=int, default=300, help="number of cases (default 300)")
    parser.add_argument("--out", default="out/demo", help="folder for the cohort, results and report")
    parser.add_argument("--workers", type=int, default=None, metavar="N")
    parser.add_argument("--seed", type=int, default=2024)
    options.add_backend(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..cohort.local import check_workers, default_workers
    from ..cohort.report import build_report, format_text, write_html
    from ..cohort.runner import run_cohort
    from ..cohort.settings import RunSettings
    from ..cohort.store import ResultStore
    from ..cohort.synthetic import generate_cohort, read_truth

    if args.cases < 1:
        raise IsodoseError(f"--cases must be at least 1, not {args.cases}")
    check_workers(args.workers)
    out = output_folder(args.out, "--out")
    workers = default_workers(args.workers)
    cohort = out / "cohort"
    results = out / "results.h5"
    if (cohort / "manifest.csv").exists():
        shutil.rmtree(cohort)  # a cohort this command wrote before: start afresh
    for stale in (results, results.with_name("results.h5.journal"), results.with_suffix(".csv")):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    print(f"Generating {args.cases} head-and-neck recurrence cases as DICOM in {cohort}/ ...")
    manifest = generate_cohort(cohort, args.cases, seed=args.seed, workers=workers)
    generated = time.perf_counter()
    print(f"  {generated - started:.1f} s. Classifying them with {workers} worker(s):")
    settings = RunSettings(target_metrics=("GTV:volume", "CTV60:D98", "CTV54:D95"))
    bar = ProgressBar()
    try:
        summary = run_cohort(
            manifest, results, settings=settings, workers=workers, backend=args.backend, on_progress=bar
        )
    finally:
        bar.finish()
    print_summary(summary)
    store = ResultStore.open(results, create=False)
    report = build_report(store)
    print()
    print(format_text(report))
    html_path = write_html(report, store, out / "report.html")
    truth = read_truth(cohort / "truth.csv")
    agree = {"class_volume": 0, "class_centroid": 0}
    for entry in report.cases:
        expected = truth[entry["case_id"]]
        for key in agree:
            agree[key] += entry["record"][key] == expected[f"true_{key}"]
    print()
    print(
        f"Against the truth of the generator: volume method {agree['class_volume']}/{len(truth)}, "
        f"point of origin {agree['class_centroid']}/{len(truth)} cases classified as constructed."
    )
    print(f"HTML report: {html_path}; total {time.perf_counter() - started:.1f} s")
    return 0
