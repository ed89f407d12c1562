"""``isodose accumulate``: the plan sum of two courses or more, with physical and EQD2 DVH metrics."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..errors import IsodoseError, collect_warnings
from ..formatting import csv_text, json_document, json_number, text_table
from . import options


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("accumulate", help="plan sum of two courses or more: physical and EQD2 DVH metrics")
    parser.add_argument(
        "--course",
        action="append",
        required=True,
        metavar="RD.dcm:FRACTIONS",
        help="a course's RTDOSE and its fractions (or RD.dcm:RP.dcm to read them from the plan); "
        "repeat, first course first: the sum lives on its grid",
    )
    parser.add_argument(
        "--reg", metavar="REG.dcm", help="spatial registration relating the courses' frames of reference"
    )
    parser.add_argument("--structures", required=True, help="RTSTRUCT in the first course's frame of reference")
    parser.add_argument("--roi", action="append", metavar="NAME", help="ROI to report (repeat; default: all)")
    parser.add_argument(
        "--alpha-beta",
        action="append",
        metavar="ROI=VALUE",
        help="alpha/beta of an ROI in Gy (repeat; defaults: 10 targets, 2 cord and brainstem, 3 others)",
    )
    parser.add_argument(
        "--recovery",
        type=float,
        default=0.0,
        metavar="PCT",
        help="tissue recovery: the share of course 1's EQD2 taken as repaired (an assumption; default 0)",
    )
    parser.add_argument("--metric", action="append", metavar="M", help="metric (repeat; default D98, D95, D2cc)")
    parser.add_argument("--prescription", type=float, metavar="GY", help="prescription for V..%% metrics")
    options.add_format(parser)
    options.add_relative_dose(parser)
    options.add_allow_mismatch(parser)
    options.add_sampling(parser)
    parser.set_defaults(func=run)
    return parser


def course(text: str, relative_reference_gy: float | None = None):
    """``RD.dcm:FRACTIONS`` or ``RD.dcm:RP.dcm`` (the fractions read from the plan): the course, and its plan
    (None when the fractions were given)."""
    from ..dicom.read import read_dose, read_plan
    from ..reirradiation import Course

    path, separator, spec = text.rpartition(":")
    spec = spec.strip()
    if not separator or not path or not spec:
        raise IsodoseError(f"--course must be RD.dcm:FRACTIONS or RD.dcm:RP.dcm, not {text!r}")
    plan = None
    if spec.isdigit():
        fractions = int(spec)
    elif re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", spec):
        raise IsodoseError(f"--course {text}: the number of fractions must be a whole number of at least 1, not {spec}")
    elif not Path(spec).is_file():
        raise IsodoseError(f"--course {text}: {spec} is neither a number of fractions nor an RTPLAN file")
    else:
        plan = read_plan(spec)
        if plan.number_of_fractions is None:
            raise IsodoseError("the plan holds no NumberOfFractionsPlanned; give RD.dcm:FRACTIONS", path=spec)
        fractions = plan.number_of_fractions
    return Course(read_dose(path, relative_reference_gy), fractions), plan  # Course checks the fractions


def alpha_beta_overrides(items: Sequence[str] | None) -> dict[str, float]:
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
    return {
        "dmin_gy": json_number(dvh.dmin_gy),
        "dmean_gy": json_number(dvh.dmean_gy),
        "dmax_gy": json_number(dvh.dmax_gy),
        "metrics": {m.text: json_number(dvh.metric(m, prescription_gy)) for m in metrics},
    }


def run(args: argparse.Namespace) -> int:
    from ..dicom.read import read_registration, read_structures
    from ..dispatch import select_backend
    from ..dvh import parse_metrics
    from ..model import Registration
    from ..provenance import check_inputs, check_whole_course
    from ..reirradiation import accumulate, accumulated_dvhs

    metrics = parse_metrics(args.metric or ["D98", "D95", "D2cc"])
    prescription = options.positive_prescription(args.prescription)
    for m in metrics:
        if m.needs_prescription and prescription is None:
            raise IsodoseError(f"metric {m.text} needs a prescription: give --prescription GY")
    if len(args.course) < 2:
        raise IsodoseError("accumulate needs two courses or more: --course RD1.dcm:FRACTIONS --course RD2.dcm:...")
    backend = select_backend(args.backend)
    with collect_warnings() as warnings:
        read = [course(text, args.relative_dose_reference_gy) for text in args.course]
        courses = [c for c, _ in read]
        registration = read_registration(args.reg) if args.reg else None
        if registration is not None and not isinstance(registration, Registration):
            raise IsodoseError(
                "is a deformable registration: courses are summed through a rigid one (a Spatial Registration)",
                path=args.reg,
            )
        structures = read_structures(args.structures)
        for c, plan in read:
            check_inputs(c.dose, [], plan, allow_mismatch=args.allow_mismatch)
            check_whole_course(c.dose, strict=True, remedy="give each course's plan dose")
        check_inputs(
            courses[0].dose,
            [*(c.dose for c in courses[1:]), structures, registration],
            allow_mismatch=args.allow_mismatch,
        )
    plan_sum = accumulate(courses, registration=registration, recovery_pct=args.recovery, backend=backend)
    results = accumulated_dvhs(
        plan_sum,
        structures,
        args.roi or None,
        alpha_beta=alpha_beta_overrides(args.alpha_beta),
        options=options.sampling_options(args),
        backend=backend,
    )
    report = {
        "isodose_version": __version__,
        "backend": backend.name,
        "device": backend.device,
        "courses": [
            {"dose_file": text.rpartition(":")[0], "fractions": c.fractions} for text, c in zip(args.course, courses)
        ],
        "registration_file": args.reg,
        "structure_file": str(args.structures),
        "recovery_pct": args.recovery,
        "prescription_gy": prescription,
        "warnings": list(warnings),
        "structures": [
            {
                "name": r.name,
                "number": r.physical.number,
                "alpha_beta_gy": r.alpha_beta_gy,
                "volume_cc": json_number(r.physical.volume_cc),
                "volume_outside_dose_cc": json_number(r.physical.volume_outside_dose_cc),
                "physical": _dose_summary(r.physical, metrics, prescription),
                "eqd2": _dose_summary(r.eqd2, metrics, prescription),
            }
            for r in results
        ],
    }
    if args.format == "json":
        sys.stdout.write(json_document(report) + "\n")
        return 0
    if args.format == "csv":
        keys = ["dmin_gy", "dmean_gy", "dmax_gy"]
        header = ["name", "number", "alpha_beta_gy", "volume_cc", "volume_outside_dose_cc"]
        header += [f"physical_{k}" for k in keys] + [f"physical_{m.text}" for m in metrics]
        header += [f"eqd2_{k}" for k in keys] + [f"eqd2_{m.text}" for m in metrics]
        csv_rows = [
            [e["name"], e["number"], e["alpha_beta_gy"], e["volume_cc"], e["volume_outside_dose_cc"]]
            + [e["physical"][k] for k in keys]
            + [e["physical"]["metrics"][m.text] for m in metrics]
            + [e["eqd2"][k] for k in keys]
            + [e["eqd2"]["metrics"][m.text] for m in metrics]
            for e in report["structures"]
        ]
        sys.stdout.write(csv_text(header, csv_rows))
        return 0
    unit = {m.text: f" {m.result_unit}" if m.result_unit else "" for m in metrics}
    header = ["ROI", "a/b Gy", "Volume cc", "Dmean Gy phys", "Dmax Gy phys", "Dmean Gy EQD2", "Dmax Gy EQD2"]
    header += [f"{m.text}{unit[m.text]} phys" for m in metrics] + [f"{m.text}{unit[m.text]} EQD2" for m in metrics]
    rows = []
    for entry in report["structures"]:
        phys, eq = entry["physical"], entry["eqd2"]
        rows.append(
            [
                entry["name"],
                entry["alpha_beta_gy"],
                entry["volume_cc"],
                phys["dmean_gy"],
                phys["dmax_gy"],
                eq["dmean_gy"],
                eq["dmax_gy"],
            ]
            + [phys["metrics"][m.text] for m in metrics]
            + [eq["metrics"][m.text] for m in metrics]
        )
    courses_text = ", ".join(f"{c['dose_file']} in {c['fractions']} fractions" for c in report["courses"])
    print(f"plan sum of {courses_text}; tissue recovery {args.recovery:g}% of course 1; backend {backend.name}")
    print("phys: the physical sum of the courses; EQD2: the sum of each course's EQD2 at the ROI's alpha/beta")
    print(text_table(header, rows))
    return 0
