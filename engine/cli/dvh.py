"""``isodose dvh``: DVHs and metrics of the ROIs of an RTDOSE and an RTSTRUCT (or a label image)."""

from __future__ import annotations

import argparse
import csv
import logging
import shlex
import sys
from pathlib import Path

from .. import __version__
from ..errors import IsodoseError, MetricError, OutputError, collect_warnings
from ..formatting import WARNING_SEPARATOR, csv_safe, csv_text, json_document, terminal_safe, text_table
from ..outputs import output_file
from . import options


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("dvh", help="DVHs and metrics of ROIs from RTDOSE + RTSTRUCT")
    options.add_dose(parser)
    options.add_structures(parser)
    parser.add_argument(
        "--roi", action="append", metavar="NAME", help="ROI to compute, by name or number (repeat; default: all)"
    )
    parser.add_argument(
        "--metric",
        action="append",
        metavar="M",
        help="metric to report (repeat): D95 (D95%%), D2cc, V20Gy, V20Gy_cc, V95%%, V95%%_cc, Dmean, Dmin, Dmax, HI, "
        "volume",
    )
    options.add_prescription(parser)
    options.add_format(parser)
    parser.add_argument("--dvh-out", metavar="FILE", help="write cumulative and differential DVH curves as CSV")
    parser.add_argument("--dvh-step", type=float, default=0.01, metavar="GY", help="dose step of --dvh-out (0.01 Gy)")
    options.add_sampling(parser)
    parser.set_defaults(func=run)
    return parser


def dvh_document(dvhs, metrics, prescription_gy, backend) -> dict:
    """The JSON document of ``isodose dvh`` (keys carry their units)."""
    return {
        "isodose_version": __version__,
        "backend": backend.name,
        "device": backend.device,
        "prescription_gy": prescription_gy,
        "structures": [d.to_dict(metrics, prescription_gy) for d in dvhs],
    }


#: The columns of ``--dvh-out``: the same names as the JSON's, with units.
CURVE_COLUMNS = ("name", "number", "dose_gy", "cumulative_cc", "cumulative_pct", "differential_cc")


def write_dvh_curves(dvhs, path: str | Path, step_gy: float) -> Path:
    """Cumulative and differential DVHs of every structure, one row per structure and dose step. A structure that
    holds no dose (no contours, or none inside the dose grid) has no curve, and a warning names it."""
    import numpy as np

    highest = max((d for d in dvhs if d.has_dose), key=lambda d: d.dmax_gy, default=None)
    doses = highest.dose_steps_gy(step_gy) if highest is not None else np.zeros(2)
    path = Path(path)
    try:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(CURVE_COLUMNS)
            for d in dvhs:
                if not d.has_dose:
                    continue
                cumulative = d.cumulative(doses)
                relative = 100.0 * cumulative / d.dose_volume_cc
                differential = np.append(cumulative[:-1] - cumulative[1:], 0.0)
                for row in zip(doses, cumulative, relative, differential):
                    writer.writerow(
                        [csv_safe(d.name), "" if d.number is None else d.number] + [f"{v:.6g}" for v in row]
                    )
    except OSError as exc:
        raise OutputError(f"cannot be written ({exc.strerror or exc})", path=path, obj="--dvh-out") from exc
    left_out = [d.name for d in dvhs if not d.has_dose]
    if left_out:
        names = ", ".join(repr(terminal_safe(name)) for name in left_out)
        what = f"ROI {names}: it holds" if len(left_out) == 1 else f"ROIs {names}: they hold"
        logging.getLogger(__name__).warning(
            "%s: no curve for %s no dose (no contours, or none inside the dose grid)", path, what
        )
    return path


def print_report(document: dict, metrics, fmt: str, out) -> None:
    if fmt == "json":
        out.write(json_document(document) + "\n")
        return
    keys = ["volume_cc", "volume_outside_dose_cc", "dmin_gy", "dmean_gy", "dmax_gy"]
    rows = []
    for s in document["structures"]:
        rows.append([s["name"], *(s[k] for k in keys), *(s["metrics"][m.text] for m in metrics)])
    if fmt == "csv":
        header = ["name", "number", *keys, *(m.text for m in metrics), "cells", "supersampling", "warnings"]
        csv_rows = [
            [
                row[0],
                s["number"],
                *row[1:],
                s["cells"],
                s["supersampling"],
                WARNING_SEPARATOR.join(document["warnings"] + s["warnings"]),
            ]
            for row, s in zip(rows, document["structures"])
        ]
        out.write(csv_text(header, csv_rows))
        return
    out.write(f"backend: {document['backend']} ({document['device']})")
    if document["prescription_gy"]:
        out.write(f"   prescription: {document['prescription_gy']:g} Gy")
    out.write("\n")
    pretty = ["ROI", "Volume cc", "Outside cc", "Dmin Gy", "Dmean Gy", "Dmax Gy"]
    pretty += [f"{m.text} ({m.result_unit})" if m.result_unit else m.text for m in metrics]  # each with its unit
    out.write(text_table(pretty, rows) + "\n")


def run(args: argparse.Namespace) -> int:
    # Where the kernels are to be loaded, a helper reads the files meanwhile (isodose.cli.readahead).
    with options.read_ahead(args) as files:
        from ..dispatch import select_backend_for_work
        from ..dvh import dvh_request, parse_metrics, request_dvhs
        from ..provenance import check_inputs, check_whole_course

        for text in args.metric or []:  # ROI:METRIC is classify's and cohort's form; dvh's metrics apply to each ROI
            roi, colon, metric = text.rpartition(":")
            if colon and roi.strip():
                raise MetricError(
                    f"{text!r} names an ROI: dvh gives each metric for every ROI it reports; for one ROI, give "
                    f"--roi {shlex.quote(roi.strip())} --metric {shlex.quote(metric.strip())}",
                    obj="metric",
                )
        metrics = parse_metrics(args.metric or [])
        step = options.dvh_step(args) if args.dvh_out else None
        if args.dvh_out:
            output_file(args.dvh_out, "--dvh-out")
        # the backend of a sum of doses (0 cells: auto takes NumPy, a sum being memory-bound); numba or cupy load now,
        # while the helper reads, and an error of theirs is raised where it was before the files were read ahead
        sum_backend = files.meanwhile(lambda: select_backend_for_work(args.backend, 0, "summing the doses, if several"))
        with collect_warnings() as warnings:  # every file's warnings, the plan's too, go with the results
            plan = files.next()
            prescription = options.prescription(args, plan)
            for m in metrics:
                if m.needs_prescription and prescription is None:
                    raise IsodoseError(f"metric {m.text} needs a prescription: give --prescription GY or --plan RP.dcm")
            summing = sum_backend()  # before the dose is read, as it always was
            dose, beams = options.sum_dose(files.next(), summing)
            structures = files.next()
            check_inputs(dose, [structures], plan, beam_doses=beams, allow_mismatch=args.allow_mismatch)
            check_whole_course(dose, strict=False)
    sampling = options.sampling_options(args)
    selected, request = dvh_request(dose, structures, args.roi or None, options=sampling)
    # A small one-off computation is quicker with NumPy than loading the compiled kernels (unless --backend says).
    backend = select_backend_for_work(args.backend, request.plan.n_cells, "the DVHs")
    dvhs = request_dvhs(selected, request, backend, sampling)
    document = dvh_document(dvhs, metrics, prescription, backend)
    document["warnings"] = list(warnings)
    document["dose_file"] = " ".join(str(p) for p in args.dose)
    document["structure_file"] = str(args.structures)
    document["plan_file"] = str(args.plan) if args.plan else None
    print_report(document, metrics, args.format, sys.stdout)
    if step is not None:
        write_dvh_curves(dvhs, args.dvh_out, step)
    return 0
