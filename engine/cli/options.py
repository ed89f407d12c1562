"""Options shared by several commands, and the checks that turn their values into the engine's arguments."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from ..errors import IsodoseError

#: ``dispatch.CHOICES``, written here so that building the parser imports no engine module (a test checks they
#: agree).
BACKEND_CHOICES = ("auto", "cupy", "numba", "numpy")
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
    parser.add_argument(
        "--extremes",
        default="vertices",
        choices=("vertices", "samples"),
        help="Dmin and Dmax over the sampled volume, the contours' vertices and the dose grid's points inside "
        "(default), or the samples alone",
    )


def add_dose(parser: argparse.ArgumentParser, help_text: str = "RTDOSE file") -> None:
    """``--dose`` (one file or more: the beams or fractions of one plan are summed), ``--relative-dose-reference-gy``
    and ``--allow-mismatch``."""
    parser.add_argument(
        "--dose",
        required=True,
        nargs="+",
        action="extend",
        metavar="RD.dcm",
        help=f"{help_text}; several files of one plan (its beams, or its fractions) are summed",
    )
    add_relative_dose(parser)
    add_allow_mismatch(parser)


def add_relative_dose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--relative-dose-reference-gy",
        type=float,
        default=None,
        metavar="GY",
        help="read RTDOSE files in relative units (DoseUnits RELATIVE) with 100%% as this dose",
    )


def add_allow_mismatch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="go on (with a warning) where files say they do not belong together: another "
        "patient's, or a plan the dose does not reference",
    )


def read_dose_files(args: argparse.Namespace) -> list:
    """Each file of ``--dose``, read."""
    from ..dicom.read import read_dose as read_file

    return [read_file(path, args.relative_dose_reference_gy, warn_unused_reference=True) for path in args.dose]


def read_ahead(args: argparse.Namespace, *, follow_up: bool = False):
    """The files a one-off command reads first, given back in order by :func:`isodose.cli.readahead.reading`: the
    RTPLAN of ``--plan`` (None without one), the files of ``--dose`` (:func:`read_dose_files`), the structures of
    ``--structures``, and with ``follow_up`` those of ``--recurrence-structures`` (None without them). Where the
    command will load compiled kernels, a helper process reads them meanwhile."""
    from ..dispatch import loads_compiled_kernels
    from .readahead import reading

    reads = [lambda: plan(args), lambda: read_dose_files(args), lambda: read_structures(args.structures, args.labels)]
    inputs = [args.plan, *args.dose, args.structures]
    if follow_up:
        reads.append(lambda: read_structures(args.recurrence_structures) if args.recurrence_structures else None)
        inputs.append(args.recurrence_structures)
    return reading(reads, ahead=loads_compiled_kernels(args.backend), inputs=inputs)


def sum_dose(doses: list, backend=None):
    """The files of ``--dose`` read (:func:`read_dose_files`), summed on the first one's grid where there are
    several: the dose and how many per-beam doses it sums (0 when read whole)."""
    from ..reirradiation import sum_doses

    beams = sum(d.summation_type == "BEAM" for d in doses) if len(doses) > 1 else 0
    return sum_doses(doses, backend=backend), beams


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

    return SamplingOptions(supersampling=args.supersampling, end_cap=args.end_cap, extremes=args.extremes)


def positive_prescription(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise IsodoseError(f"--prescription must be a positive dose in Gy, not {value}")
    return value


def plan(args: argparse.Namespace):
    """The RTPLAN of ``--plan``, read; None without one."""
    if not getattr(args, "plan", None):
        return None
    from ..dicom.read import read_plan

    return read_plan(args.plan)


def prescription(args: argparse.Namespace, plan=None) -> float | None:
    """The prescription (Gy) of ``--prescription``, else of the RTPLAN ``plan`` (``--plan``), else None."""
    if args.prescription is not None:
        return positive_prescription(args.prescription)
    if plan is not None:
        if plan.prescription_gy is None:
            raise IsodoseError("the plan holds no TargetPrescriptionDose; give --prescription", path=plan.source)
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


#: The finest DVH step a command takes (Gy): 100,000 points a curve for a 100 Gy maximum.
MIN_DVH_STEP_GY = 0.001


def dvh_step(args: argparse.Namespace) -> float:
    if not (math.isfinite(args.dvh_step) and args.dvh_step > 0):
        raise IsodoseError(f"--dvh-step must be a positive dose in Gy, not {args.dvh_step}")
    if args.dvh_step < MIN_DVH_STEP_GY:
        raise IsodoseError(
            f"--dvh-step {args.dvh_step:g} Gy gives too many points a curve; the finest step is {MIN_DVH_STEP_GY:g} Gy"
        )
    return args.dvh_step


def add_uncertainty(parser: argparse.ArgumentParser) -> None:
    """``--uncertainty-translation-mm``, ``--uncertainty-rotation-deg``, ``--draws``, ``--seed`` and
    ``--stable-level``: classification under registration uncertainty."""
    group = parser.add_argument_group("classification under registration uncertainty")
    group.add_argument(
        "--uncertainty-translation-mm",
        type=float,
        nargs="+",
        metavar="SD",
        help="standard deviation of the registration's translation, mm: one value, or three (x y z)",
    )
    group.add_argument(
        "--uncertainty-rotation-deg",
        type=float,
        nargs="+",
        metavar="SD",
        help="standard deviation of its rotation about Vr's centroid, degrees: one value, or three (x y z)",
    )
    group.add_argument("--draws", type=int, default=None, metavar="N", help="perturbed mappings per case (1000)")
    group.add_argument("--seed", type=int, default=None, metavar="N", help="seed of the draws (0)")
    group.add_argument(
        "--stable-level",
        type=float,
        default=None,
        metavar="PCT",
        help="a class is stable when it holds at least this share of the draws (95)",
    )


def uncertainty(args: argparse.Namespace):
    """The :class:`~isodose.uncertainty.Uncertainty` the options ask for, or None when none of them is given."""
    given = [
        args.uncertainty_translation_mm,
        args.uncertainty_rotation_deg,
        args.draws,
        args.seed,
        args.stable_level,
    ]
    if all(v is None for v in given):
        return None
    if args.uncertainty_translation_mm is None and args.uncertainty_rotation_deg is None:
        raise IsodoseError(
            "--draws, --seed and --stable-level need the registration's error: give --uncertainty-translation-mm "
            "or --uncertainty-rotation-deg (0 for none)"
        )
    from ..uncertainty import Uncertainty

    def triple(values, name):
        if values is None:
            return (0.0, 0.0, 0.0)
        if len(values) not in (1, 3):
            raise IsodoseError(f"{name} takes one value or three (x y z), not {len(values)}")
        return tuple(values) * 3 if len(values) == 1 else tuple(values)

    return Uncertainty(
        translation_sd_mm=triple(args.uncertainty_translation_mm, "--uncertainty-translation-mm"),
        rotation_sd_deg=triple(args.uncertainty_rotation_deg, "--uncertainty-rotation-deg"),
        draws=1000 if args.draws is None else args.draws,
        seed=0 if args.seed is None else args.seed,
        stable_pct=95.0 if args.stable_level is None else args.stable_level,
    )


def add_structures(parser: argparse.ArgumentParser, help_text: str = "RTSTRUCT or SEG file") -> None:
    parser.add_argument(
        "--structures",
        required=True,
        help=f"{help_text}, or a label image (.nii, .nii.gz, .nrrd, .mha: a mask, a multi-label map, a fractional map)",
    )
    parser.add_argument(
        "--labels",
        metavar="FILE",
        help='names of a label image\'s labels: JSON {"1": "GTV", ...} or CSV rows label,name',
    )


def read_structures(path, labels=None):
    """An RTSTRUCT, or a label image's structures (named by ``labels``, a JSON or CSV file)."""
    from ..labels import is_label_image, read_structure_file

    if labels and not is_label_image(path):
        raise IsodoseError(f"--labels names the labels of a label image; {path} is not one (.nii, .nrrd, .mha)")
    return read_structure_file(path, labels)
