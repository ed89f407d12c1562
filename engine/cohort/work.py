"""The work of one case (or of one batch of cases on a GPU): read its files, plan it, classify it, into an entry.

Nothing here raises for a bad case: a failure becomes the case's error entry, with the warnings logged on its way
(a case must never stop the cohort). The executors (:mod:`.local`, :mod:`.distributed`) run these functions in
worker processes; the orchestration (:mod:`.runner`) writes what they return.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ..errors import IsodoseError, collect_warnings
from .cases import Case, input_fingerprint
from .entries import CaseEntry, StoredCurve, Timings, error_entry
from .settings import RunSettings

if TYPE_CHECKING:
    from ..dispatch import Backend
    from ..model import DoseGrid, Registration, StructureSet
    from ..recurrence import PreparedRecurrence
    from ..reirradiation import Course

log = logging.getLogger(__name__)


def _curve(dvh, step_gy: float) -> np.ndarray:
    """A DVH's stored curve: its volumes (cc, to 1e-5) at every ``step_gy``, as an array (the journal, the store and
    the pipes of worker processes take arrays far quicker than lists of numbers)."""
    doses = dvh.dose_steps_gy(step_gy)
    return np.round(np.asarray(dvh.cumulative(doses), dtype=np.float64), 5)


@dataclass(frozen=True, eq=False)
class CaseInputs:
    """One case read from disk, ready to compute (what a reading worker hands to the computing process)."""

    case: Case
    dose: DoseGrid
    #: The planning structures and the follow-up ones (with the registration mapping them): None once the case is
    #: prepared where it was read, since what remains to do needs no contours.
    structures: StructureSet | None
    prescription_gy: float
    follow_up: StructureSet | None
    registration: Registration | None
    read_s: float
    warnings: tuple[str, ...] = ()
    #: The courses of a re-irradiated case: (course 1, course 2, the registration of course 2's frame or None).
    courses: tuple[Course, Course, Registration | None] | None = None
    #: What the result depends on (:func:`~isodose.cohort.cases.input_fingerprint`), taken before the files were read.
    fingerprint: dict | None = None
    #: The case's classification prepared where it was read (a PreparedRecurrence or the IsodoseError that
    #: stopped it), and the seconds that took; None when the computing process prepares it. A prepared case
    #: that is not re-irradiated no longer holds its structure sets and registration (they stay in the worker);
    #: sent to a GPU, its ``dose`` is only the part of the grid its sampling reads (:func:`cropped_for_device`).
    prepared: PreparedRecurrence | IsodoseError | None = None
    prepare_s: float = 0.0


def case_failure(exc: Exception, case_ids: str) -> str:
    """What stopped a case (or a batch), in one line: an isodose error as it is, anything else named as internal
    (its traceback in the debug log, with ``case_ids``)."""
    if isinstance(exc, IsodoseError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory"
    log.debug("case %s failed", case_ids, exc_info=True)
    return f"internal error: {type(exc).__name__}: {exc}"


TARGET_TYPES = ("GTV", "CTV", "PTV", "ITV")


def _rois_needed(case: Case, settings: RunSettings):
    """Which planning ROIs a case's classification reads (``rois(name, interpreted_type)``, for
    :func:`isodose.dicom.read.read_structures`): the recurrence, the targets of the point-of-origin method (every
    GTV, CTV and PTV unless the settings name them) and the ROIs of the target metrics. None (all of them) for a
    re-irradiated case, or where an ROI is named by a number."""
    from ..dvh import parse_roi_metric

    named = [case.recurrence_roi, *(parse_roi_metric(m).roi for m in settings.target_metrics)]
    named += list(settings.targets or ())
    if case.second_dose is not None or any(name.strip().isdigit() for name in named):
        return None
    wanted = {name.strip().casefold() for name in named}
    every_target = settings.targets is None

    def needed(name: str, interpreted_type: str) -> bool:
        if name.strip().casefold() in wanted:
            return True
        if not every_target:
            return False
        if interpreted_type:
            return interpreted_type in TARGET_TYPES
        return name.strip().upper().startswith(TARGET_TYPES)

    return needed


def read_case(case: Case, settings: RunSettings | None = None) -> CaseInputs | CaseEntry:
    """Read one case's files (an error entry when they cannot be read, or do not belong together), keeping the
    warnings logged meanwhile. ``settings`` give the reference dose of relative doses and whether mismatched
    files may go on (see :mod:`isodose.provenance`)."""
    from ..dicom.read import read_plan
    from ..images import read_case_registration
    from ..labels import MASK_FRAME, read_recurrence_mask, read_structure_file
    from ..provenance import check_inputs, check_whole_course

    settings = settings or RunSettings()
    started = time.perf_counter()
    fingerprint = input_fingerprint(case)  # before reading: a file changed meanwhile shows as changed on the next run
    with collect_warnings() as messages:
        try:
            if case.problem:
                raise IsodoseError(case.problem)
            assert case.dose is not None and case.structures is not None  # a case without them has its problem
            dose, beams = _read_doses([case.dose, *case.extra_doses], settings)
            structures = read_structure_file(case.structures, case.labels, rois=_rois_needed(case, settings))
            plan = read_plan(case.plan) if case.plan else None
            prescription = case.prescription_gy
            if prescription is None:
                prescription = plan.prescription_gy if plan is not None else None
                if prescription is None:
                    raise IsodoseError("the plan holds no prescription; give prescription_gy", path=case.plan)
            elif plan is not None and plan.prescription_gy is not None and plan.prescription_gy != prescription:
                log.warning(
                    "%s: the manifest's prescription_gy, %g Gy, is used, not the plan's %g Gy",
                    case.plan,
                    prescription,
                    plan.prescription_gy,
                )
            follow_up = read_structure_file(case.recurrence_structures) if case.recurrence_structures else None
            registration = (
                read_case_registration(
                    case.registration,
                    planning_frame_uid=dose.frame_of_reference_uid,
                    follow_up_frame_uid=(
                        follow_up.frame_of_reference_uid
                        if follow_up is not None
                        else (MASK_FRAME if case.recurrence_mask else "")
                    ),
                    field_fixed=case.registration_fixed,
                    patient_id=dose.patient_id,
                )
                if case.registration
                else None
            )
            if case.recurrence_mask:
                follow_up, name = read_recurrence_mask(
                    case.recurrence_mask,
                    case.recurrence_label,
                    case.recurrence_roi,
                    registration,
                    dose.frame_of_reference_uid,
                    "the manifest's recurrence_label",
                )
                case = replace(case, recurrence_roi=name)
            check_inputs(
                dose,
                [structures, follow_up, registration],
                plan,
                beam_doses=beams,
                allow_mismatch=settings.allow_mismatch,
            )
            check_whole_course(dose, strict=True)
            courses = _read_second_course(case, dose, settings) if case.second_dose else None
        except Exception as exc:
            seconds = time.perf_counter() - started
            timings = Timings(read_s=seconds, total_s=seconds)
            entry = error_entry(case.case_id, case_failure(exc, case.case_id), timings, messages)
            entry["inputs"] = fingerprint
            return entry
    return CaseInputs(
        case,
        dose,
        structures,
        prescription,
        follow_up,
        registration,
        time.perf_counter() - started,
        tuple(messages),
        courses=courses,
        fingerprint=fingerprint,
    )


def _read_doses(paths: list, settings: RunSettings) -> tuple[DoseGrid, int]:
    """A case's dose: one file, or the files of one plan's beams (or fractions) summed on the first one's grid;
    and how many per-beam doses it sums (0 when read whole)."""
    from ..dicom.read import read_dose
    from ..reirradiation import sum_doses

    doses = [read_dose(path, settings.relative_dose_reference_gy) for path in paths]
    beams = sum(d.summation_type == "BEAM" for d in doses) if len(doses) > 1 else 0
    return sum_doses(doses), beams


def _read_second_course(
    case: Case, dose: DoseGrid, settings: RunSettings
) -> tuple[Course, Course, Registration | None]:
    """The two courses of a re-irradiated case, and the registration of the second's frame (or None)."""
    from ..dicom.read import read_dose, read_plan, read_registration
    from ..model import Registration
    from ..provenance import check_inputs, check_whole_course
    from ..reirradiation import Course

    def planned_fractions(plan, what: str) -> int:
        if plan is None:
            column = "fractions" if what == "first" else "second_fractions"
            raise IsodoseError(
                f"the {what} course's number of fractions is needed and it has no RTPLAN to read it "
                f"from: add the plan, or give the case in a manifest with a {column} column"
            )
        fractions = read_plan(plan).number_of_fractions
        if fractions is None:
            raise IsodoseError(
                f"the plan holds no NumberOfFractionsPlanned for the {what} course; give the fractions in the manifest",
                path=plan,
            )
        return fractions

    first = Course(dose, case.fractions or planned_fractions(case.plan, "first"))
    second_dose = read_dose(case.second_dose, settings.relative_dose_reference_gy)
    second_plan = read_plan(case.second_plan) if case.second_plan else None
    second = Course(second_dose, case.second_fractions or planned_fractions(case.second_plan, "second"))
    registration = read_registration(case.second_registration) if case.second_registration else None
    if registration is not None and not isinstance(registration, Registration):
        raise IsodoseError(
            "is a deformable registration: courses are summed through a rigid one (a Spatial Registration)",
            path=case.second_registration,
        )
    check_inputs(second_dose, [dose, registration], second_plan, allow_mismatch=settings.allow_mismatch)
    check_whole_course(second_dose, strict=True)
    return first, second, registration


def _with_reirradiation(inputs: CaseInputs, entry: CaseEntry, settings: RunSettings, backend) -> CaseEntry:
    """The entry of a re-irradiated case with its accumulated metrics and risk flags (or its error)."""
    from ..recurrence import recurrence_transform
    from ..reirradiation import reirradiation_record

    assert inputs.courses is not None and inputs.structures is not None  # a re-irradiated case keeps its contours
    first, second, registration = inputs.courses
    source = inputs.follow_up if inputs.follow_up is not None else inputs.structures
    transform = recurrence_transform(inputs.dose, source, inputs.registration) if inputs.follow_up is not None else None
    with collect_warnings() as messages:
        try:
            extra = reirradiation_record(
                first,
                second,
                source.get(inputs.case.recurrence_roi),
                registration=registration,
                recurrence_transform=transform,
                options=settings.options,
                backend=backend,
            )
        except IsodoseError as exc:
            return error_entry(
                inputs.case.case_id, f"re-irradiation: {exc}", entry["timings"], entry["warnings"] + messages
            )
    entry["record"].update(extra)
    entry["warnings"] = entry["warnings"] + messages
    return entry


def planning_curve_key(name: str) -> str:
    """The key in an entry's ``dvhs`` of the curve of planning ROI ``name`` where a recurrence mapped from another
    frame bears that name too (the curve names its ROI itself: ``roi``)."""
    return f"{name} (planning ROI)"


def ok_entry(
    case_id: str, result, settings: RunSettings, timings: Timings, recurrence_apart: bool | None = None
) -> CaseEntry:
    """The store's entry of one classified case. ``recurrence_apart``: whether the recurrence came from a structure
    set or image of its own (a follow-up's), not from the planning ROIs (by default: whether it was registered)."""
    vr = result.recurrence_dvh
    apart = result.registered if recurrence_apart is None else recurrence_apart
    dvhs = {vr.name: ("recurrence", vr)}
    for name, d in result.roi_dvhs.items():
        if name not in dvhs:
            dvhs[name] = ("roi", d)
        elif apart:  # a planning ROI named like the recurrence, which came from elsewhere: another structure
            dvhs[planning_curve_key(name)] = ("roi", d)
        # else the recurrence is that planning ROI itself: its curve is stored once, as the recurrence's
    curves = {}
    for key, (role, d) in dvhs.items():
        if not d.has_dose:
            continue
        curve = StoredCurve(
            role="recurrence" if role == "recurrence" else "roi",
            step_gy=settings.dvh_step_gy,
            cumulative_cc=_curve(d, settings.dvh_step_gy),
        )
        if key != d.name:
            curve["roi"] = d.name
        curves[key] = curve
    return {
        "case_id": case_id,
        "status": "ok",
        "error": "",
        "record": result.record(),
        "timings": timings,
        "dvhs": curves,
        "warnings": list(result.warnings),
    }


def _recurrence_case(inputs: CaseInputs, settings: RunSettings):
    from ..recurrence import RecurrenceCase

    assert inputs.structures is not None  # not yet prepared

    return RecurrenceCase(
        inputs.dose,
        inputs.structures,
        inputs.case.recurrence_roi,
        inputs.prescription_gy,
        inputs.follow_up,
        inputs.registration,
        settings.targets,
        settings.metrics,
        settings.target_metrics,
        settings.criteria,
        settings.require_targets,
        settings.uncertainty,
        inputs.case.case_id,
    )


def read_and_prepare(case: Case, settings: RunSettings) -> CaseInputs | CaseEntry:
    """:func:`read_case`, then the planning of the case's classification (what a reading worker does for the
    process that drives a GPU, which then only samples and finishes)."""
    inputs = read_case(case, settings)
    return prepare_inputs(inputs, settings) if isinstance(inputs, CaseInputs) else inputs


def prepare_inputs(inputs: CaseInputs, settings: RunSettings) -> CaseInputs:
    """A case already read, with its classification planned (see :func:`read_and_prepare`)."""
    from ..recurrence import prepare_recurrence

    started = time.perf_counter()
    prepared = prepare_recurrence(_recurrence_case(inputs, settings), settings.options)
    inputs = replace(inputs, prepared=prepared, prepare_s=time.perf_counter() - started)
    if inputs.courses is None:  # what remains to do needs none of the contours: they are not passed on
        inputs = replace(inputs, structures=None, follow_up=None, registration=None)
    return inputs


def read_and_send(case: Case, settings: RunSettings, receiver_pid: int, crop: bool = False, hold: int = 0):
    """:func:`read_and_prepare`, as a reading worker sends it to the process ``receiver_pid`` that drives the
    GPU: its dose grids through shared memory (see :mod:`isodose.cohort.handover`; this worker holds the last
    ``hold`` blocks it sent, and so frees them itself). ``crop`` (for a backend that copies grids, a GPU): only the
    part of the dose grid that the case's sampling reads is sent (:func:`cropped_for_device`)."""
    from .handover import send

    value = read_and_prepare(case, settings)
    if crop and isinstance(value, CaseInputs):
        value = cropped_for_device(value)
    return send(value, receiver_pid, hold)


def cropped_for_device(inputs: CaseInputs) -> CaseInputs:
    """A prepared case whose dose grid is then only the part its sampling reads
    (:func:`isodose.recurrence.cropped_to_samples`), where nothing else of the grid is read afterwards (a
    re-irradiated case sums its courses on the whole grid): the same classification and metrics, from fewer
    bytes."""
    from ..recurrence import PreparedRecurrence, cropped_to_samples

    if inputs.courses is not None or not isinstance(inputs.prepared, PreparedRecurrence):
        return inputs
    prepared = cropped_to_samples(inputs.prepared)
    if prepared is inputs.prepared:
        return inputs
    return replace(inputs, dose=prepared.dose, prepared=prepared)


def classify_batch(batch: list[CaseInputs], settings: RunSettings, backend=None, grids=None) -> list[CaseEntry]:
    """Classify cases already read, sampled together (one merged plan on a GPU); never raises for a bad case.

    Cases prepared where they were read (:func:`read_and_prepare`) are not prepared again. Each case's compute
    time is its share of the batch's, plus its preparing elsewhere. Each entry keeps its own case's warnings; when
    the batch itself fails, every case gets the error and the warnings logged meanwhile. ``grids``: the batch's
    dose grids already on the backend (:func:`isodose.recurrence.batch_grids` of its prepared cases)."""
    started = time.perf_counter()
    with collect_warnings() as messages:
        try:
            entries = _classify(batch, settings, backend, started, grids)
        except Exception as exc:
            error = case_failure(exc, ",".join(i.case.case_id for i in batch))
            entries = [error_entry(i.case.case_id, error, Timings(read_s=i.read_s), messages) for i in batch]
    # What the batch logged besides its cases' own warnings (each case keeps its own) concerns all its cases.
    kept = {m for entry in entries for m in entry["warnings"]}
    for_all = [m for m in dict.fromkeys(messages) if m not in kept]
    for inputs, entry in zip(batch, entries):
        entry["inputs"] = inputs.fingerprint
        entry["warnings"] = list(dict.fromkeys([*inputs.warnings, *entry["warnings"], *for_all]))
        entry["timings"]["total_s"] = inputs.read_s + inputs.prepare_s + time.perf_counter() - started
    return entries


def _classify(batch: list[CaseInputs], settings: RunSettings, backend, started: float, grids=None) -> list[CaseEntry]:
    from ..recurrence import classify_prepared, prepare_recurrence

    prepared = [
        i.prepared if i.prepared is not None else prepare_recurrence(_recurrence_case(i, settings), settings.options)
        for i in batch
    ]
    results = classify_prepared(prepared, backend=backend, grids=grids)
    share = (time.perf_counter() - started) / max(len(batch), 1)
    entries = []
    for inputs, result in zip(batch, results):
        timing = Timings(read_s=inputs.read_s, compute_s=share + inputs.prepare_s)
        if isinstance(result, Exception):
            entries.append(error_entry(inputs.case.case_id, str(result), timing, list(result.warnings)))
        else:
            apart = bool(inputs.case.recurrence_structures or inputs.case.recurrence_mask)
            entry = ok_entry(inputs.case.case_id, result, settings, timing, apart)
            if inputs.courses is not None:
                entry = _with_reirradiation(inputs, entry, settings, backend)
            entries.append(entry)
    return entries


def classify_inputs(inputs: CaseInputs, settings: RunSettings, backend=None) -> CaseEntry:
    """Classify one case already read; never raises for a bad case."""
    [entry] = classify_batch([inputs], settings, backend)
    return entry


def process_case(case: Case, settings: RunSettings, backend=None) -> CaseEntry:
    """Read and classify one case; never raises for a bad case (the error goes into the returned entry)."""
    inputs = read_case(case, settings)
    return classify_inputs(inputs, settings, backend) if isinstance(inputs, CaseInputs) else inputs


def process_batch(cases: list[Case], settings: RunSettings, backend=None) -> list[CaseEntry]:
    """Read cases and classify them as one batch (one merged sampling plan on a GPU), in order; never raises for a
    bad case (a case that cannot be read gets its error entry, the others are classified). Batches are a GPU
    worker's: its cases' centroids are tested by the compiled host tests (see :class:`ReceivedBatches`)."""
    from ..compiled import prefer_compiled

    prefer_compiled()
    read = [read_case(case, settings) for case in cases]
    inputs = [r for r in read if isinstance(r, CaseInputs)]
    entries = iter(classify_batch(inputs, settings, backend) if inputs else [])
    return [next(entries) if isinstance(r, CaseInputs) else r for r in read]


@dataclass
class StagedBatch:
    """A batch of the GPU arrangement received, with its dose grids on their way to the device."""

    received: list[CaseInputs | CaseEntry]
    grids: object = None


@dataclass(frozen=True)
class ReceivedBatches:
    """The GPU arrangement's finishing: the values reading workers sent (:func:`read_and_send`) received here
    (their dose grids mapped from shared memory) and classified as one batch; entries pass through.

    It is done in two steps, so that an executor can overlap them: :meth:`stage` receives a batch and starts its
    grids' copy to the device, :meth:`complete` classifies it. The executor stages the next batch before it
    completes the one before, so that the next batch's copies run while this one's kernels do. Called as a
    :data:`~isodose.cohort.execution.Finish`, it does both at once."""

    settings: RunSettings
    backend: str | Backend | None = None

    def __call__(self, items: list[tuple[Case, object]]) -> list[CaseEntry]:
        return self.complete(self.stage(items))

    def stage(self, items: list[tuple[Case, object]]) -> StagedBatch:
        from ..compiled import prefer_compiled
        from ..dispatch import resolve_backend
        from ..recurrence import batch_grids
        from . import handover

        # This process classifies every case and loads no compiled kernels (the device computes): its cases'
        # centroids are tested against their targets by the compiled host tests all the same, 20 us a case
        # rather than 150 with NumPy's, once Numba has loaded (once per run).
        prefer_compiled()
        received: list[CaseInputs | CaseEntry] = []
        for case, sent in items:
            try:
                received.append(handover.receive(sent))  # type: ignore[arg-type]
            except OSError as exc:
                received.append(
                    error_entry(case.case_id, f"the case's data from its reading worker was lost on the way ({exc})")
                )
        read = [inputs for inputs in received if isinstance(inputs, CaseInputs)]
        grids = None
        prepared = [inputs.prepared for inputs in read if inputs.prepared is not None]
        if read and len(prepared) == len(read):
            try:
                grids = batch_grids(prepared, resolve_backend(self.backend))
            except Exception:  # classifying the batch meets the same failure, and reports it for its cases
                grids = None
        return StagedBatch(received, grids)

    def complete(self, staged: StagedBatch) -> list[CaseEntry]:
        read = [inputs for inputs in staged.received if isinstance(inputs, CaseInputs)]
        entries = iter(classify_batch(read, self.settings, self.backend, staged.grids) if read else [])
        return [next(entries) if isinstance(inputs, CaseInputs) else inputs for inputs in staged.received]
