"""``isodose classify``: one recurrence by the volume and point-of-origin methods."""

from __future__ import annotations

import argparse
import sys

from ..errors import IsodoseError, collect_warnings
from ..formatting import WARNING_SEPARATOR, csv_text, json_document, json_number, shown
from . import options
from .readahead import Reads


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("classify", help="classify one recurrence by the volume and point-of-origin methods")
    options.add_dose(parser, "planning RTDOSE")
    options.add_structures(parser, "planning RTSTRUCT (or SEG)")
    parser.add_argument(
        "--recurrence",
        metavar="ROI",
        help="the recurrence ROI (Vr); with --recurrence-mask, its name (default: the mask's)",
    )
    parser.add_argument(
        "--recurrence-mask",
        metavar="FILE",
        help="the recurrence as a label image (.nii, .nii.gz, .nrrd, .mha: a mask, a label map or a fractional map), "
        "in the planning frame, or in the follow-up frame with --registration",
    )
    parser.add_argument(
        "--recurrence-label",
        type=int,
        metavar="N",
        help="the recurrence's label in --recurrence-mask (default: its only label)",
    )
    parser.add_argument(
        "--recurrence-structures",
        metavar="RS2.dcm",
        help="RTSTRUCT (or SEG) drawn on follow-up imaging holding the recurrence ROI",
    )
    parser.add_argument(
        "--registration",
        metavar="REG.dcm",
        help="registration relating the follow-up frame and the planning frame: a REG (rigid or deformable), "
        "or a displacement field image (.nii, .nii.gz, .mha, .nrrd; needs --field-fixed)",
    )
    parser.add_argument(
        "--field-fixed",
        choices=("planning", "follow-up"),
        help="for a displacement field image: which image was fixed when it was computed",
    )
    options.add_prescription(parser)
    parser.add_argument(
        "--target",
        action="append",
        metavar="ROI",
        help="target tested for holding the centroid (repeat; default: every GTV, CTV and PTV)",
    )
    parser.add_argument(
        "--metric",
        action="append",
        metavar="M",
        help="extra metric of Vr (D2cc...) or of a planning ROI as ROI:METRIC (CTV60:D98)",
    )
    missing = parser.add_mutually_exclusive_group()
    missing.add_argument(
        "--allow-missing-targets",
        action="store_false",
        dest="require_targets",
        help="classify the case all the same where a --target or an ROI:METRIC names an ROI the planning set lacks: "
        "that target left out and those metrics null, with a warning (by default one case typed here is refused, "
        "as a name mistyped would change its class; a cohort run goes on by default)",
    )
    missing.add_argument(
        "--require-targets",
        action="store_true",
        dest="require_targets",
        help="refuse the case when a --target or an ROI:METRIC names an ROI the planning set lacks (the default)",
    )
    parser.set_defaults(require_targets=True)
    parser.add_argument(
        "--export-recurrence",
        metavar="RS_mapped.dcm",
        help="write the recurrence as mapped onto the planning frame as an RTSTRUCT (contours on the dose grid's "
        "planes), to view on the planning CT",
    )
    options.add_criteria(parser)
    options.add_uncertainty(parser)
    options.add_format(parser)
    options.add_sampling(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if not args.recurrence and not args.recurrence_mask:
        raise IsodoseError("give the recurrence: --recurrence ROI, or --recurrence-mask FILE")
    if args.recurrence_mask and args.recurrence_structures:
        raise IsodoseError("give the recurrence as --recurrence-structures or as --recurrence-mask, not both")
    if args.recurrence_label is not None and not args.recurrence_mask:
        raise IsodoseError("--recurrence-label picks a label of --recurrence-mask; give both")
    if args.registration and not (args.recurrence_structures or args.recurrence_mask):
        raise IsodoseError("--registration maps --recurrence-structures (or --recurrence-mask); give both")
    if args.field_fixed and not args.registration:
        raise IsodoseError("--field-fixed says how the --registration field image was computed; give both")
    if args.export_recurrence:
        from ..outputs import output_file

        output_file(args.export_recurrence, "--export-recurrence")
    # Where the kernels are to be loaded, a helper reads these files meanwhile (isodose.cli.readahead); the
    # registration and a recurrence mask, whose reading needs the dose's frame, are read here after them.
    with options.read_ahead(args, follow_up=True) as files:
        return _classify(args, files)


def _classify(args: argparse.Namespace, files: Reads) -> int:
    from ..cohort.statistics import unit_of
    from ..dispatch import SMALL_WORK_CELLS, select_backend_for_work
    from ..images import read_case_registration
    from ..labels import MASK_FRAME, read_recurrence_mask
    from ..provenance import check_inputs, check_whole_course
    from ..recurrence import RecurrenceCase, classify_prepared, prepare_recurrence

    vr_metrics, roi_metrics = options.split_metrics(args.metric)
    criteria = options.criteria(args)
    uncertainty = options.uncertainty(args)
    # the backend of a sum of doses (0 cells: auto takes NumPy, a sum being memory-bound); numba or cupy load now,
    # while the helper reads, and an error of theirs is raised where it was before the files were read ahead
    sum_backend = files.meanwhile(lambda: select_backend_for_work(args.backend, 0, "summing the doses, if several"))
    with collect_warnings() as warnings:
        plan = files.next()
        prescription = options.prescription(args, plan)
        if prescription is None:
            raise IsodoseError("classification needs the prescription: give --prescription GY or --plan RP.dcm")
        summing = sum_backend()  # before the dose is read, as it always was
        dose, beams = options.sum_dose(files.next(), summing)
        structures = files.next()
        follow_up = files.next()
        registration = (
            read_case_registration(
                args.registration,
                planning_frame_uid=dose.frame_of_reference_uid,
                follow_up_frame_uid=(follow_up.frame_of_reference_uid if follow_up is not None else MASK_FRAME),
                field_fixed=args.field_fixed,
                patient_id=dose.patient_id,
            )
            if args.registration
            else None
        )
        recurrence = args.recurrence
        if args.recurrence_mask:
            follow_up, recurrence = read_recurrence_mask(
                args.recurrence_mask,
                args.recurrence_label,
                args.recurrence,
                registration,
                dose.frame_of_reference_uid,
                "--recurrence-label N",
            )
        check_inputs(
            dose, [structures, follow_up, registration], plan, beam_doses=beams, allow_mismatch=args.allow_mismatch
        )
        check_whole_course(dose, strict=True)
    case = RecurrenceCase(
        dose,
        structures,
        recurrence,
        prescription,
        follow_up,
        registration,
        args.target,
        vr_metrics,
        roi_metrics,
        criteria,
        args.require_targets,
        uncertainty,
    )
    prepared = prepare_recurrence(case, options.sampling_options(args))
    if isinstance(prepared, IsodoseError):
        raise prepared
    # A small one-off case is quicker with NumPy than loading the compiled kernels (unless --backend says); draws of
    # uncertainty are not small.
    cells = sum(r.plan.n_cells for r in prepared.requests) if uncertainty is None else SMALL_WORK_CELLS + 1
    backend = select_backend_for_work(args.backend, cells, "the classification")
    [result] = classify_prepared([prepared], backend=backend)
    if isinstance(result, IsodoseError):
        raise result
    record = {key: (json_number(v) if isinstance(v, float) else v) for key, v in result.record().items()}
    if args.export_recurrence:
        from ..mapped import export_recurrence

        export_recurrence(
            args.export_recurrence,
            dose,
            structures,
            recurrence,
            recurrence_structures=follow_up,
            registration=registration,
            backend=backend,
        )
    messages = list(dict.fromkeys([*warnings, *result.warnings]))
    record["warnings"] = messages
    if args.format == "json":
        sys.stdout.write(json_document(record) + "\n")
        return 0
    if args.format == "csv":
        row = {**record, "warnings": WARNING_SEPARATOR.join(messages)}
        sys.stdout.write(csv_text(list(row), [list(row.values())]))
        return 0
    # The metrics with their units (the other keys carry theirs in their names, as in the JSON and CSV).
    units = {key: unit_of(key) for key in (*result.metrics, *result.target_metrics)}
    labels = {key: f"{key} ({units[key]})" if units.get(key) else key for key in record}
    width = max(len(label) for label in labels.values())
    for key, value in record.items():
        if key == "warnings":
            value = WARNING_SEPARATOR.join(str(w) for w in value) if isinstance(value, list) and value else "-"
        print(f"{labels[key].ljust(width)}  {value if isinstance(value, float) else shown(value)}")
    return 0
