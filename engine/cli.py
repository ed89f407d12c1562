"""The ``isodose`` command line.

Every user error is one line on stderr and a non-zero exit code (2); unexpected failures are one line too
(exit 3) unless ``--debug`` asks for the traceback. Imports are lazy so that the command starts fast.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gc
import io
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import IsodoseError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
DEFAULT_NELMS = Path(__file__).resolve().parent.parent.parent / "shared" / "validation" / "nelms2015"


# --------------------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------------------
def _number(value: float, digits: int = 6) -> float | None:
    """A JSON-safe number: None for NaN."""
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def _cell(value: object, digits: int = 2) -> str:
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 2) -> str:
    from .text import text_table

    return text_table(header, [[_cell(v, digits) for v in row] for row in rows])


def _csv(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if isinstance(v, float) and not math.isfinite(v) else v for v in row])
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------
# isodose dvh
# --------------------------------------------------------------------------------------------------------
def _sampling_options(args: argparse.Namespace):
    from .voxelize import SamplingOptions

    return SamplingOptions(supersampling=args.supersampling, end_cap=args.end_cap)


def _prescription(args: argparse.Namespace) -> float | None:
    if args.prescription is not None:
        if not args.prescription > 0:
            raise IsodoseError(f"--prescription must be a positive dose in Gy, not {args.prescription}")
        return args.prescription
    if getattr(args, "plan", None):
        from .dicom.read import read_plan

        plan = read_plan(args.plan)
        if plan.prescription_gy is None:
            raise IsodoseError("the plan holds no TargetPrescriptionDose; give --prescription", path=args.plan)
        return plan.prescription_gy
    return None


def dvh_report(dvhs, metrics, prescription_gy, backend) -> dict:
    """The JSON document of ``isodose dvh``: keys carry their units."""
    return {
        "isodose_version": __version__,
        "backend": backend.name,
        "device": backend.device,
        "prescription_gy": prescription_gy,
        "structures": [
            {
                "name": d.name,
                "number": d.number,
                "volume_cc": _number(d.volume_cc),
                "volume_outside_dose_cc": _number(d.volume_outside_dose_cc),
                "dmin_gy": _number(d.dmin_gy),
                "dmean_gy": _number(d.dmean_gy),
                "dmax_gy": _number(d.dmax_gy),
                "metrics": {m.text: _number(d.metric(m, prescription_gy)) for m in metrics},
            }
            for d in dvhs
        ],
    }


def write_dvh_curves(dvhs, path: str | Path, step_gy: float) -> Path:
    """Cumulative and differential DVHs of every structure, one row per structure and dose step."""
    import numpy as np

    top = max((d.dmax_gy for d in dvhs if d.has_dose), default=0.0)
    doses = step_gy * np.arange(int(math.floor(top / step_gy)) + 2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["structure", "dose_gy", "cumulative_cc", "cumulative_pct", "differential_cc"])
        for d in dvhs:
            if not d.has_dose:
                continue
            cumulative = d.cumulative(doses)
            relative = 100.0 * cumulative / d.dose_volume_cc
            differential = np.append(cumulative[:-1] - cumulative[1:], 0.0)
            for row in zip(doses, cumulative, relative, differential):
                writer.writerow([d.name] + [f"{v:.6g}" for v in row])
    return path


def _print_dvh_report(report: dict, metrics, fmt: str, out) -> None:
    if fmt == "json":
        out.write(json.dumps(report, indent=2) + "\n")
        return
    header = ["structure", "volume_cc", "volume_outside_dose_cc", "dmin_gy", "dmean_gy", "dmax_gy"]
    header += [m.text for m in metrics]
    rows = []
    for s in report["structures"]:
        values = [s[k] for k in header[1:6]] + [s["metrics"][m.text] for m in metrics]
        rows.append([s["name"]] + [math.nan if v is None else v for v in values])
    if fmt == "csv":
        out.write(_csv(header, rows))
        return
    out.write(f"backend: {report['backend']} ({report['device']})")
    if report["prescription_gy"]:
        out.write(f"   prescription: {report['prescription_gy']:g} Gy")
    out.write("\n")
    pretty = ["ROI", "Volume cc", "Outside cc", "Dmin Gy", "Dmean Gy", "Dmax Gy"] + [m.text for m in metrics]
    out.write(_table(pretty, rows) + "\n")


def cmd_dvh(args: argparse.Namespace) -> int:
    from .dicom.read import read_dose, read_structures
    from .dispatch import select_backend
    from .dvh import compute_dvhs, parse_metrics

    metrics = parse_metrics(args.metric or [])
    prescription = _prescription(args)
    for m in metrics:
        if m.needs_prescription and prescription is None:
            raise IsodoseError(f"metric {m.text} needs a prescription: give --prescription GY or --plan RP.dcm")
    step = _dvh_step(args) if args.dvh_out else None
    backend = select_backend(args.backend)
    options = _sampling_options(args)
    dose = read_dose(args.dose)
    structures = read_structures(args.structures)
    rois = args.roi or None
    dvhs = compute_dvhs(dose, structures, rois, options=options, backend=backend)
    report = dvh_report(dvhs, metrics, prescription, backend)
    report["dose_file"] = str(args.dose)
    report["structure_file"] = str(args.structures)
    _print_dvh_report(report, metrics, args.format, sys.stdout)
    if args.dvh_out:
        write_dvh_curves(dvhs, args.dvh_out, step)
    return 0


# --------------------------------------------------------------------------------------------------------
# isodose validate nelms
# --------------------------------------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    from .dispatch import select_backend
    from .validation import NELMS_METRICS, NelmsSummary, run_nelms

    backend = select_backend(args.backend)
    started = time.perf_counter()
    values = run_nelms(args.path, backend=backend, options=_sampling_options(args))
    elapsed = time.perf_counter() - started
    names = [name for name, _, _ in NELMS_METRICS]
    rows, case_values = [], {}
    for v in values:
        case_values.setdefault(v.case, []).append(v)
    for case, items in case_values.items():
        errors = {v.metric: v.error_pct for v in items}
        rows.append([case.structure, case.gradient, case.voxel_mm] + [errors[n] for n in names])
    summary = NelmsSummary.of(values)
    by_spacing = {}
    for v in values:
        by_spacing.setdefault(v.case.plane_spacing, []).append(v)
    if args.format == "json":
        document = json.dumps({
            "backend": backend.name,
            "device": backend.device,
            "seconds": round(elapsed, 3),
            "summary": summary.__dict__,
            "by_plane_spacing": {k: NelmsSummary.of(v).__dict__ for k, v in by_spacing.items()},
            "values": [
                {"structure": v.case.structure, "gradient": v.case.gradient, "dose_voxel_mm": v.case.voxel_mm,
                 "metric": v.metric, "isodose": _number(v.isodose), "analytical": _number(v.analytical),
                 "error_pct": _number(v.error_pct, 4)}
                for v in values
            ],
        }, indent=2)
        sys.stdout.write(document + "\n")
        return 0
    header = ["structure", "gradient", "dose_voxel_mm"] + [f"{n} err %" for n in names]
    if args.format == "csv":
        sys.stdout.write(_csv(header, rows))
        return 0
    print(f"Nelms 2015 analytical set: {args.path}")
    print(f"backend: {backend.name} ({backend.device}), {elapsed:.1f} s; error of isodose against the analytical "
          "value, % of it")
    print(_table(["structure", "gradient", "grid mm"] + names, rows))
    print()
    spacing_rows = [[k, s.values, s.over_3pct, s.over_2pct, s.over_1pct, s.max_abs_error_pct]
                    for k, s in ((k, NelmsSummary.of(v)) for k, v in sorted(by_spacing.items()))]
    spacing_rows.append(["all", summary.values, summary.over_3pct, summary.over_2pct, summary.over_1pct,
                         summary.max_abs_error_pct])
    print(_table(["contour spacing", "values", "> 3%", "> 2%", "> 1%", "max |error| %"], spacing_rows))
    return 0


# --------------------------------------------------------------------------------------------------------
# isodose phantom
# --------------------------------------------------------------------------------------------------------
def cmd_phantom(args: argparse.Namespace) -> int:
    from .dicom.write import write_dose, write_plan, write_structures
    from .phantoms import head_neck_case

    out = Path(args.out)
    grid, structures = head_neck_case()
    rd = write_dose(grid, out / "RD.phantom.dcm")
    rs = write_structures(structures, out / "RS.phantom.dcm")
    rp = write_plan(out / "RP.phantom.dcm", prescription_gy=70.0, number_of_fractions=35,
                    frame_of_reference_uid=grid.frame_of_reference_uid, target_name="PTV70")
    print(f"head-and-neck phantom (dose grid 200 x 200 x 120 at 2.5 mm, 20 ROIs): {rd}, {rs}, {rp}")
    print(f"try: isodose dvh --dose {rd} --structures {rs} --plan {rp} --metric D95 --metric V95%")
    return 0


# --------------------------------------------------------------------------------------------------------
# isodose classify
# --------------------------------------------------------------------------------------------------------
def _split_metrics(texts: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Metrics of Vr, and ROI:METRIC metrics of planning ROIs; both checked now."""
    from .dvh import parse_metric, parse_roi_metric

    plain, of_roi = [], []
    for text in texts or []:
        if ":" in text:
            parse_roi_metric(text)
            of_roi.append(text)
        else:
            parse_metric(text)
            plain.append(text)
    return plain, of_roi


def _criteria(args: argparse.Namespace):
    from .recurrence import Criteria

    return Criteria(isodose_pct=args.isodose, in_field_pct=args.in_field, marginal_pct=args.marginal,
                    centroid_isodose_pct=args.isodose)


def cmd_classify(args: argparse.Namespace) -> int:
    from .dicom.read import read_dose, read_registration, read_structures
    from .recurrence import classify_recurrence

    if args.registration and not args.recurrence_structures:
        raise IsodoseError("--registration maps --recurrence-structures; give both")
    vr_metrics, roi_metrics = _split_metrics(args.metric)
    criteria = _criteria(args)
    prescription = _prescription(args)
    if prescription is None:
        raise IsodoseError("classification needs the prescription: give --prescription GY or --plan RP.dcm")
    dose = read_dose(args.dose)
    structures = read_structures(args.structures)
    follow_up = read_structures(args.recurrence_structures) if args.recurrence_structures else None
    registration = read_registration(args.registration) if args.registration else None
    result = classify_recurrence(
        dose, structures, args.recurrence, prescription, recurrence_structures=follow_up, registration=registration,
        targets=args.target, metrics=vr_metrics, target_metrics=roi_metrics, criteria=criteria,
        options=_sampling_options(args), backend=args.backend,
    )
    record = {key: (_number(v) if isinstance(v, float) else v) for key, v in result.record().items()}
    if args.format == "json":
        sys.stdout.write(json.dumps(record, indent=2) + "\n")
        return 0
    width = max(len(k) for k in record)
    for key, value in record.items():
        shown = ", ".join(value) if isinstance(value, list) else ("-" if value is None else value)
        print(f"{key.ljust(width)}  {shown}")
    return 0


# --------------------------------------------------------------------------------------------------------
# isodose cohort run | report
# --------------------------------------------------------------------------------------------------------
def _run_settings(args: argparse.Namespace):
    from .cohort.runner import RunSettings

    vr_metrics, roi_metrics = _split_metrics(args.metric)
    return RunSettings(metrics=tuple(vr_metrics), target_metrics=tuple(roi_metrics),
                       targets=tuple(args.target) if args.target else None, criteria=_criteria(args),
                       options=_sampling_options(args), dvh_step_gy=_dvh_step(args))


def _dvh_step(args: argparse.Namespace) -> float:
    if not (math.isfinite(args.dvh_step) and args.dvh_step > 0):
        raise IsodoseError(f"--dvh-step must be a positive dose in Gy, not {args.dvh_step}")
    return args.dvh_step


def _print_run(summary) -> None:
    rate = summary.processed / summary.seconds if summary.seconds > 0 else 0.0
    print(f"{summary.cases} cases: {summary.processed} processed ({summary.failed} failed), {summary.skipped} already "
          f"done; {summary.seconds:.1f} s ({rate:.1f} cases/s)")
    print(f"results: {summary.store}; table: {summary.table}")


def cmd_cohort_run(args: argparse.Namespace) -> int:
    from .cohort.runner import check_workers, run_cohort

    check_workers(args.workers)
    if args.prescription is not None and not args.prescription > 0:
        raise IsodoseError(f"--prescription must be a positive dose in Gy, not {args.prescription}")
    settings = _run_settings(args)
    run = functools.partial(run_cohort, args.input, args.out, settings=settings, workers=args.workers,
                            backend=args.backend, recurrence_roi=args.recurrence_roi,
                            prescription_gy=args.prescription, second_courses=args.second_courses,
                            progress=not args.no_progress)
    if args.scheduler or args.scheduler_file or args.local_cluster:
        from .cohort.distributed import dask_client

        local = (args.workers or os.cpu_count() or 1) if args.local_cluster else None
        with dask_client(args.scheduler, args.scheduler_file, local) as client:
            summary = run(client=client)
    else:
        summary = run()
    _print_run(summary)
    return 0


def cmd_cohort_report(args: argparse.Namespace) -> int:
    from .cohort.report import build_report, format_text, write_html
    from .cohort.store import ResultStore

    store = ResultStore.open(args.results, create=False)
    report = build_report(store)
    if args.format == "json":
        document = {
            "store": str(report.store), "cases": report.n_ok + len(report.failed), "classified": report.n_ok,
            "failed": [{"case_id": c, "error": e} for c, e in report.failed],
            "patterns": report.patterns,
            "summaries": [s.__dict__ for s in report.summaries],
        }
        sys.stdout.write(json.dumps(document, indent=2, default=lambda v: None) + "\n")
    else:
        print(format_text(report))
    html_path = Path(args.html) if args.html else Path(args.results).with_suffix(".html")
    write_html(report, store, html_path)
    print(f"HTML report: {html_path}", file=sys.stderr if args.format == "json" else sys.stdout)
    return 0


# --------------------------------------------------------------------------------------------------------
# isodose demo
# --------------------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    import os
    import shutil

    from .cohort.report import build_report, format_text, write_html
    from .cohort.runner import RunSettings, check_workers, run_cohort
    from .cohort.store import ResultStore
    from .cohort.synthetic import generate_cohort, read_truth

    if args.cases < 1:
        raise IsodoseError(f"--cases must be at least 1, not {args.cases}")
    check_workers(args.workers)
    out = Path(args.out)
    workers = args.workers or os.cpu_count() or 1
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
    summary = run_cohort(manifest, results, settings=settings, workers=workers, backend=args.backend)
    _print_run(summary)
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
    print(f"Against the truth of the generator: volume method {agree['class_volume']}/{len(truth)}, "
          f"point of origin {agree['class_centroid']}/{len(truth)} cases classified as constructed.")
    print(f"HTML report: {html_path}; total {time.perf_counter() - started:.1f} s")
    return 0


# --------------------------------------------------------------------------------------------------------
# isodose backends
# --------------------------------------------------------------------------------------------------------
def cmd_backends(args: argparse.Namespace) -> int:
    from .dispatch import available_backends, select_backend

    for name, device in available_backends().items():
        print(f"{name:6s} {device}")
    print(f"auto   -> {select_backend('auto').name}")
    return 0


# --------------------------------------------------------------------------------------------------------
# isodose accumulate
# --------------------------------------------------------------------------------------------------------
def _course(text: str):
    """``RD.dcm:FRACTIONS`` or ``RD.dcm:RP.dcm`` (the fractions read from the plan)."""
    from .accumulate import Course
    from .dicom.read import read_dose, read_plan

    path, separator, spec = text.rpartition(":")
    spec = spec.strip()
    if not separator or not path or not spec:
        raise IsodoseError(f"--course must be RD.dcm:FRACTIONS or RD.dcm:RP.dcm, not {text!r}")
    if spec.isdigit():
        fractions = int(spec)
    elif re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", spec):
        raise IsodoseError(f"--course {text}: the number of fractions must be a whole number of at least 1, "
                           f"not {spec}")
    elif not Path(spec).is_file():
        raise IsodoseError(f"--course {text}: {spec} is neither a number of fractions nor an RTPLAN file")
    else:
        fractions = read_plan(spec).number_of_fractions
        if fractions is None:
            raise IsodoseError("the plan holds no NumberOfFractionsPlanned; give RD.dcm:FRACTIONS", path=spec)
    return Course(read_dose(path), fractions)  # Course checks the fractions


def _alpha_beta_overrides(items: Sequence[str] | None) -> dict[str, float]:
    overrides = {}
    for item in items or []:
        roi, separator, value = item.rpartition("=")
        try:
            overrides[roi] = float(value)
        except ValueError:
            roi = ""
        if not separator or not roi:
            raise IsodoseError(f"--alpha-beta must be ROI=VALUE (Gy), not {item!r}")
    return overrides


def _dose_summary(dvh, metrics, prescription_gy) -> dict:
    return {"dmin_gy": _number(dvh.dmin_gy), "dmean_gy": _number(dvh.dmean_gy), "dmax_gy": _number(dvh.dmax_gy),
            "metrics": {m.text: _number(dvh.metric(m, prescription_gy)) for m in metrics}}


def cmd_accumulate(args: argparse.Namespace) -> int:
    from .accumulate import accumulate, accumulated_dvhs
    from .dicom.read import read_registration, read_structures
    from .dispatch import select_backend
    from .dvh import parse_metrics

    metrics = parse_metrics(args.metric or ["D98", "D95", "D2cc"])
    prescription = _prescription(args)
    for m in metrics:
        if m.needs_prescription and prescription is None:
            raise IsodoseError(f"metric {m.text} needs a prescription: give --prescription GY")
    if len(args.course) < 2:
        raise IsodoseError("accumulate needs two courses or more: --course RD1.dcm:FRACTIONS --course RD2.dcm:...")
    backend = select_backend(args.backend)
    courses = [_course(text) for text in args.course]
    registration = read_registration(args.reg) if args.reg else None
    structures = read_structures(args.structures)
    plan_sum = accumulate(courses, registration=registration, recovery_pct=args.recovery, backend=backend)
    results = accumulated_dvhs(plan_sum, structures, args.roi or None,
                               alpha_beta=_alpha_beta_overrides(args.alpha_beta), options=_sampling_options(args),
                               backend=backend)
    report = {
        "isodose_version": __version__,
        "backend": backend.name,
        "device": backend.device,
        "courses": [{"dose_file": text.rpartition(":")[0], "fractions": c.fractions}
                    for text, c in zip(args.course, courses)],
        "registration_file": args.reg,
        "structure_file": str(args.structures),
        "recovery_pct": args.recovery,
        "prescription_gy": prescription,
        "structures": [
            {"name": r.name, "number": r.physical.number, "alpha_beta_gy": r.alpha_beta_gy,
             "volume_cc": _number(r.physical.volume_cc),
             "volume_outside_dose_cc": _number(r.physical.volume_outside_dose_cc),
             "physical": _dose_summary(r.physical, metrics, prescription),
             "eqd2": _dose_summary(r.eqd2, metrics, prescription)}
            for r in results
        ],
    }
    if args.format == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    header = ["ROI", "a/b Gy", "Volume cc", "Dmean Gy", "Dmax Gy", "EQD2 Dmean", "EQD2 Dmax"]
    header += [f"{m.text}" for m in metrics] + [f"EQD2 {m.text}" for m in metrics]
    rows = []
    for entry in report["structures"]:
        phys, eq = entry["physical"], entry["eqd2"]
        rows.append([entry["name"], entry["alpha_beta_gy"], entry["volume_cc"], phys["dmean_gy"], phys["dmax_gy"],
                     eq["dmean_gy"], eq["dmax_gy"]] + [phys["metrics"][m.text] for m in metrics]
                    + [eq["metrics"][m.text] for m in metrics])
    courses_text = ", ".join(f"{c['dose_file']} in {c['fractions']} fractions" for c in report["courses"])
    print(f"plan sum of {courses_text}; tissue recovery {args.recovery:g}% of course 1; backend {backend.name}")
    print(_table(header, rows))
    return 0


# --------------------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------------------
def _add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default=None, choices=("auto", "numpy", "numba", "cupy"),
                        help="compute backend (default: $ISODOSE_BACKEND, else auto)")
    parser.add_argument("--supersampling", type=int, default=None, metavar="N",
                        help="in-plane cells per dose voxel side (default: adapted to each structure's size)")
    parser.add_argument("--end-cap", default="half", choices=("half", "none"),
                        help="extent beyond the first and last contour planes (default: half a plane spacing)")


def _add_prescription(parser: argparse.ArgumentParser) -> None:
    prescription = parser.add_mutually_exclusive_group()
    prescription.add_argument("--prescription", type=float, metavar="GY",
                              help="prescription dose (Gy), for V..%% metrics and the isodose")
    prescription.add_argument("--plan", metavar="RP.dcm", help="RTPLAN to read the prescription from")


def _add_criteria(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--isodose", type=float, default=95.0, metavar="PCT",
                        help="reference isodose, %% of the prescription (default 95)")
    parser.add_argument("--in-field", type=float, default=95.0, metavar="PCT",
                        help="share of Vr inside the isodose for in-field (default 95)")
    parser.add_argument("--marginal", type=float, default=20.0, metavar="PCT",
                        help="share of Vr inside the isodose for marginal; below it out-field (default 20)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isodose", description="Dose-volume engine for radiotherapy research.")
    parser.add_argument("--version", action="version", version=f"isodose {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    parser.add_argument("--debug", action="store_true", help="show the traceback of unexpected errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    dvh = commands.add_parser("dvh", help="DVHs and metrics of ROIs from RTDOSE + RTSTRUCT")
    dvh.add_argument("--dose", required=True, help="RTDOSE file")
    dvh.add_argument("--structures", required=True, help="RTSTRUCT file")
    dvh.add_argument("--roi", action="append", metavar="NAME", help="ROI to compute (repeat; default: all)")
    dvh.add_argument("--metric", action="append", metavar="M",
                     help="metric to report (repeat): D95, D2cc, V20Gy, V20Gy_cc, V95%%, Dmean, Dmin, Dmax, HI")
    _add_prescription(dvh)
    dvh.add_argument("--format", default="table", choices=("table", "json", "csv"))
    dvh.add_argument("--dvh-out", metavar="FILE", help="write cumulative and differential DVH curves as CSV")
    dvh.add_argument("--dvh-step", type=float, default=0.01, metavar="GY", help="dose step of --dvh-out (0.01 Gy)")
    _add_sampling(dvh)
    dvh.set_defaults(func=cmd_dvh)

    validate = commands.add_parser("validate", help="compare with reference data sets")
    sets = validate.add_subparsers(dest="dataset", metavar="DATASET")
    sets.required = True
    nelms = sets.add_parser("nelms", help="the Nelms 2015 analytical DVH set")
    nelms.add_argument("path", nargs="?", default=str(DEFAULT_NELMS), help="folder with analytical.csv")
    nelms.add_argument("--format", default="table", choices=("table", "json", "csv"))
    _add_sampling(nelms)
    nelms.set_defaults(func=cmd_validate)

    acc = commands.add_parser("accumulate", help="plan sum of two courses or more: physical and EQD2 DVH metrics")
    acc.add_argument("--course", action="append", required=True, metavar="RD.dcm:FRACTIONS",
                     help="a course's RTDOSE and its fractions (or RD.dcm:RP.dcm to read them from the plan); "
                          "repeat, first course first: the sum lives on its grid")
    acc.add_argument("--reg", metavar="REG.dcm", help="spatial registration relating the courses' frames of reference")
    acc.add_argument("--structures", required=True, help="RTSTRUCT in the first course's frame of reference")
    acc.add_argument("--roi", action="append", metavar="NAME", help="ROI to report (repeat; default: all)")
    acc.add_argument("--alpha-beta", action="append", metavar="ROI=VALUE",
                     help="alpha/beta of an ROI in Gy (repeat; defaults: 10 targets, 2 cord and brainstem, 3 others)")
    acc.add_argument("--recovery", type=float, default=0.0, metavar="PCT",
                     help="tissue recovery: the share of course 1's EQD2 taken as repaired (an assumption; default 0)")
    acc.add_argument("--metric", action="append", metavar="M", help="metric (repeat; default D98, D95, D2cc)")
    acc.add_argument("--prescription", type=float, metavar="GY", help="prescription for V..%% metrics")
    acc.add_argument("--format", default="table", choices=("table", "json"))
    _add_sampling(acc)
    acc.set_defaults(func=cmd_accumulate)

    classify = commands.add_parser("classify", help="classify one recurrence by the volume and point-of-origin methods")
    classify.add_argument("--dose", required=True, help="planning RTDOSE")
    classify.add_argument("--structures", required=True, help="planning RTSTRUCT")
    classify.add_argument("--recurrence", required=True, metavar="ROI", help="the recurrence ROI (Vr)")
    classify.add_argument("--recurrence-structures", metavar="RS2.dcm",
                          help="RTSTRUCT drawn on follow-up imaging holding the recurrence ROI")
    classify.add_argument("--registration", metavar="REG.dcm",
                          help="spatial registration mapping the follow-up frame onto the planning frame")
    _add_prescription(classify)
    classify.add_argument("--target", action="append", metavar="ROI",
                          help="target tested for holding the centroid (repeat; default: every GTV, CTV and PTV)")
    classify.add_argument("--metric", action="append", metavar="M",
                          help="extra metric of Vr (D2cc...) or of a planning ROI as ROI:METRIC (CTV60:D98)")
    _add_criteria(classify)
    classify.add_argument("--format", default="table", choices=("table", "json"))
    _add_sampling(classify)
    classify.set_defaults(func=cmd_classify)

    cohort = commands.add_parser("cohort", help="run and report whole cohorts")
    cohort_commands = cohort.add_subparsers(dest="cohort_command", metavar="ACTION")
    cohort_commands.required = True
    run = cohort_commands.add_parser("run", help="classify every case of a manifest or folder (resumable)")
    run.add_argument("input", help="manifest CSV, or a folder of DICOM exports")
    run.add_argument("--out", required=True, metavar="RESULTS.h5", help="results store (RESULTS.csv is written beside)")
    run.add_argument("--workers", type=int, default=None, metavar="N", help="processes (default: one per CPU core)")
    run.add_argument("--metric", action="append", metavar="M",
                     help="extra metric of Vr, or of a planning ROI as ROI:METRIC (repeat)")
    run.add_argument("--target", action="append", metavar="ROI", help="targets for the point-of-origin method")
    run.add_argument("--recurrence-roi", default="Recurrence", metavar="NAME",
                     help="recurrence ROI name when the input is a folder (default: Recurrence)")
    run.add_argument("--prescription", type=float, metavar="GY",
                     help="prescription for cases of a folder without an RTPLAN")
    run.add_argument("--second-courses", action="store_true",
                     help="folder input: a patient with two planning frames is one re-irradiated case (the earlier "
                          "plan is course 1, the later course 2, related by a REG)")
    run.add_argument("--dvh-step", type=float, default=0.1, metavar="GY", help="dose step of stored DVHs (0.1 Gy)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    dask = run.add_mutually_exclusive_group()
    dask.add_argument("--scheduler", metavar="tcp://HOST:8786",
                      help="run on this Dask cluster (needs isodose[distributed]; workers must see the input paths)")
    dask.add_argument("--scheduler-file", metavar="FILE", help="run on the Dask cluster this scheduler file describes")
    dask.add_argument("--local-cluster", action="store_true",
                      help="run on a Dask cluster of --workers processes started on this machine")
    _add_criteria(run)
    _add_sampling(run)
    run.set_defaults(func=cmd_cohort_run)
    report = cohort_commands.add_parser("report", help="failure-pattern table, metric summaries and HTML report")
    report.add_argument("results", metavar="RESULTS.h5")
    report.add_argument("--html", metavar="FILE", help="HTML report (default: RESULTS.html)")
    report.add_argument("--format", default="table", choices=("table", "json"))
    report.set_defaults(func=cmd_cohort_report)

    demo = commands.add_parser("demo", help="generate a synthetic recurrence cohort, run it and report it")
    demo.add_argument("--cases", type=int, default=300, help="number of cases (default 300)")
    demo.add_argument("--out", default="out/demo", help="folder for the cohort, results and report")
    demo.add_argument("--workers", type=int, default=None, metavar="N")
    demo.add_argument("--seed", type=int, default=2024)
    demo.add_argument("--backend", default=None, choices=("auto", "numpy", "numba", "cupy"))
    demo.set_defaults(func=cmd_demo)

    phantom = commands.add_parser("phantom", help="write a head-and-neck-sized phantom case as DICOM")
    phantom.add_argument("--out", default="out/phantom")
    phantom.set_defaults(func=cmd_phantom)

    backends = commands.add_parser("backends", help="list the compute backends usable on this machine")
    backends.set_defaults(func=cmd_backends)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("isodose: %(levelname)s: %(message)s"))
    root = logging.getLogger("isodose")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _one_line(error: BaseException) -> str:
    """An error's message on one line (messages of libraries underneath, h5py's say, may hold line breaks)."""
    return " ".join(str(error).split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        return args.func(args)
    except IsodoseError as exc:
        print(f"isodose: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("isodose: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head, say
        return 0
    except Exception as exc:
        if args.debug:
            raise
        print(f"isodose: internal error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


#: First-generation threshold of the garbage collector in the console command (Python's default is 700).
CONSOLE_GC_THRESHOLD = 50_000


def run() -> None:
    """The console command: :func:`main` in a process that ends when it returns.

    Loading Numba's compiled kernels leaves some hundreds of thousands of long-lived objects (its typing and
    lowering registries). The collector's default thresholds walk them again and again during the run, and
    the interpreter's last collection walks them once more at exit: about a quarter of a one-case command's
    wall time. The command therefore collects less often and freezes what is left before exiting (see
    ``gc.freeze``); every file it wrote is closed by then. :func:`main`, for embedding, changes nothing.
    """

    gc.set_threshold(CONSOLE_GC_THRESHOLD)
    try:
        code = main()
    finally:
        gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
