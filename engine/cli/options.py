"""Options shared by several commands, and the checks that turn their values into the engine's arguments."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from ..errors import IsodoseError

BACKEND_CHOICES = ("auto", "numpy", "numba", "cupy")
FORMATS = ("table", "json", "csv")


def add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default=None,
        choices=BACKEND_CHOICES,
        help="compute backend (default: $ISODOSE_BACKEND, else auto)",
    )


def add_sampling(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--supersampling`` and ``--end-cap``."""
    add_backend(parser)
    parser.add_argument(
        "--supersampling",
        type=int,
        default=None,
        metavar="N",
        help="in-plane cells per dose voxel side (default: adapted to each structure's size)",
    )
    parser.add_argument(
        "--end-cap",
        default="half",
        choices=("half", "none"),
        help="extent beyond the first and last contour planes (default: half a plane spacing)",
    )


def add_prescription(parser: argparse.ArgumentParser) -> None:
    prescription = parser.add_mutually_exclusive_group()
    prescription.add_argument(
        "--prescription", type=float, metavar="GY", help="prescription dose (Gy), for V..%% metrics and the isodose"
    )
    prescription.add_argument("--plan", metavar="RP.dcm", help="RTPLAN to read the prescription from")


def add_criteria(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--isodose",
        type=float,
        default=95.0,
        metavar="PCT",
        help="reference isodose, %% of the prescription (default 95)",
    )
    parser.add_argument(
        "--in-field",
        type=float,
        default=95.0,
        metavar="PCT",
        help="share of Vr inside the isodose for in-field (default 95)",
    )
    parser.add_argument(
        "--marginal",
        type=float,
        default=20.0,
        metavar="PCT",
        help="share of Vr inside the isodose for marginal; below it out-field (default 20)",
    )


def add_format(parser: argparse.ArgumentParser, formats: Sequence[str] = FORMATS) -> None:
    parser.add_argument(
        "--format",
        default="table",
        choices=tuple(formats),
        help=f"how results are printed ({', '.join(formats)}; default table)",
    )


def sampling_options(args: argparse.Namespace):
    from ..voxelize import SamplingOptions

    return SamplingOptions(supersampling=args.supersampling, end_cap=args.end_cap)


def positive_prescription(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise IsodoseError(f"--prescription must be a positive dose in Gy, not {value}")
    return value


def prescription(args: argparse.Namespace) -> float | None:
    """The prescription (Gy) of ``--prescription``, else of ``--plan``'s RTPLAN, else None."""
    if args.prescription is not None:
        return positive_prescription(args.prescription)
    if getattr(args, "plan", None):
        from ..dicom.read import read_plan

        plan = read_plan(args.plan)
        if plan.prescription_gy is None:
            raise IsodoseError("the plan holds no TargetPrescriptionDose; give --prescription", path=args.plan)
        return plan.prescription_gy
    return None


def criteria(args: argparse.Namespace):
    from ..recurrence import Criteria

    return Criteria(
        isodose_pct=args.isodose,
        in_field_pct=args.in_field,
        marginal_pct=args.marginal,
        centroid_isodose_pct=args.isodose,
    )


def split_metrics(texts: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Metrics of Vr, and ROI:METRIC metrics of planning ROIs; both checked now."""
    from ..dvh import parse_metric, parse_roi_metric

    plain, of_roi = [], []
    for text in texts or []:
        if ":" in text:
            parse_roi_metric(text)
            of_roi.append(text)
        else:
            parse_metric(text)
            plain.append(text)
    return plain, of_roi


def dvh_step(args: argparse.Namespace) -> float:
    if not (math.isfinite(args.dvh_step) and args.dvh_step > 0):
        raise IsodoseError(f"--dvh-step must be a positive dose in Gy, not {args.dvh_step}")
    return args.dvh_step
