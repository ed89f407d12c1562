"""Whether the files of one case belong together, and whether a dose stands for the whole course.

A physicist trusts a result only when its inputs are one patient's and one plan's: an RTPLAN of another patient
accepted beside a dose gives another prescription (and every V95% with it), and a per-beam dose judged against
the whole course's prescription is wrong by the number of beams. The checks here look at what the files say of
themselves:

- every file of a case names the same PatientID (where it names one);
- the RTDOSE's ReferencedRTPlanSequence names the RTPLAN given beside it (where both say);
- the RTDOSE is the dose of a whole course: its DoseSummationType is not that of a part (BEAM, FRACTION, a
  session or a control point), and its DoseType is not ERROR (a dose difference). EFFECTIVE dose (biologically
  weighted, as proton plans give in Gy(RBE)) is accepted, with a warning.

A mismatch is an :class:`~isodose.errors.InputMismatchError` naming both files; a user who knows better can
go on (``allow_mismatch``, ``--allow-mismatch``), with a warning that says what was let through.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .errors import InputMismatchError
from .model import DoseGrid, Plan, Registration, StructureSet

log = logging.getLogger(__name__)

#: Dose summation types that stand for a part of a course only.
PARTIAL_SUMMATION_TYPES = ("BEAM", "FRACTION", "BEAM_SESSION", "FRACTION_SESSION", "BRACHY_SESSION", "CONTROL_POINT")

Input = DoseGrid | StructureSet | Plan | Registration


def _name(item: Input) -> str:
    return item.source or f"the {type(item).__name__}"


def mismatches(
    dose: DoseGrid, others: Sequence[Input | None] = (), plan: Plan | None = None, beam_doses: int = 0
) -> list[str]:
    """What does not belong together among a case's inputs, one sentence each naming both files.

    Parameters
    ----------
    dose : DoseGrid
        The case's dose.
    others : sequence
        Its other inputs: structure sets, registrations, other doses (None entries are skipped).
    plan : Plan, optional
        The plan given with the dose (for its prescription or fractions).
    beam_doses : int
        How many per-beam doses were summed into ``dose`` (0 when it was read whole): where the plan says how
        many beams it has, they must all be there.

    Returns
    -------
    list of str
        Empty when everything belongs together.

    Examples
    --------
    >>> from isodose.model import Plan, StructureSet
    >>> from isodose.phantoms import example_case
    >>> dose, structures = example_case()
    >>> mismatches(dose, [structures], Plan(70.0, 35, patient_id="P2", source="RP.dcm"))
    []
    """
    problems = []
    items = [i for i in (dose, *others, plan) if i is not None]
    named = [(i, i.patient_id) for i in items if i.patient_id]
    if named:
        first, patient = named[0]
        for item, other in named[1:]:
            if other != patient:
                problems.append(
                    f"{_name(item)} is of patient {other!r}, {_name(first)} of patient {patient!r}: they do not "
                    "belong to one case"
                )
                break
    if plan is not None and dose.referenced_plan_uid and plan.sop_instance_uid:
        if dose.referenced_plan_uid != plan.sop_instance_uid:
            problems.append(
                f"{_name(dose)} references RTPLAN {dose.referenced_plan_uid}, but {_name(plan)} is RTPLAN "
                f"{plan.sop_instance_uid}: the plan is not the dose's"
            )
    if plan is not None and beam_doses and plan.beam_numbers and dose.referenced_beam_numbers:
        missing = sorted(set(plan.beam_numbers) - set(dose.referenced_beam_numbers))
        foreign = sorted(set(dose.referenced_beam_numbers) - set(plan.beam_numbers))
        if missing or foreign:
            said = []
            if missing:
                said.append(f"beam{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} missing")
            if foreign:
                said.append(f"beam{'s' if len(foreign) > 1 else ''} {', '.join(map(str, foreign))} not of the plan")
            problems.append(
                f"the beam doses given are of beams {', '.join(map(str, dose.referenced_beam_numbers))} of "
                f"{_name(plan)}, which has beams {', '.join(map(str, plan.beam_numbers))} ({'; '.join(said)}): "
                "their sum is not the plan's dose"
            )
    if plan is not None and beam_doses and plan.number_of_beams and beam_doses != plan.number_of_beams:
        problems.append(
            f"{beam_doses} beam doses were given for {_name(plan)}, which has {plan.number_of_beams} beams: their "
            "sum is not the plan's dose"
        )
    return problems


def check_inputs(
    dose: DoseGrid,
    others: Sequence[Input | None] = (),
    plan: Plan | None = None,
    *,
    beam_doses: int = 0,
    allow_mismatch: bool = False,
) -> None:
    """Refuse inputs that do not belong together (see :func:`mismatches`), or, with ``allow_mismatch``, warn.

    Parameters
    ----------
    dose : DoseGrid
        The case's dose.
    others : sequence
        Its other inputs (structure sets, registrations, other doses).
    plan : Plan, optional
        The plan given with the dose.
    beam_doses : int
        How many per-beam doses were summed into ``dose`` (see :func:`mismatches`).
    allow_mismatch : bool
        Go on, with a warning, where the files say they do not belong together.

    Returns
    -------
    None

    Raises
    ------
    InputMismatchError
        For the first mismatch, unless ``allow_mismatch``.

    Examples
    --------
    >>> from isodose.model import Plan
    >>> from isodose.phantoms import example_case
    >>> from dataclasses import replace
    >>> dose, structures = example_case()
    >>> dose = replace(dose, patient_id="P1", source="RD.dcm")
    >>> check_inputs(dose, [structures], Plan(70.0, 35, patient_id="P2", source="RP.dcm"))
    Traceback (most recent call last):
    ...
    isodose.errors.InputMismatchError: RP.dcm is of patient 'P2', RD.dcm of patient 'P1': they do not belong ...
    """
    for problem in mismatches(dose, others, plan, beam_doses):
        if not allow_mismatch:
            raise InputMismatchError(problem + " (--allow-mismatch goes on regardless)")
        log.warning("%s; going on, as asked (--allow-mismatch)", problem)


def partial_dose(dose: DoseGrid) -> str:
    """Why ``dose`` is not the dose of a whole course ("" when it is, or cannot be told).

    Parameters
    ----------
    dose : DoseGrid
        A dose, with the DoseSummationType and DoseType its file gave.

    Returns
    -------
    str
        A sentence naming the tag, or "".

    Examples
    --------
    >>> from dataclasses import replace
    >>> from isodose.phantoms import example_case
    >>> dose, _ = example_case()
    >>> partial_dose(replace(dose, summation_type="BEAM", source="RD.beam1.dcm"))
    'RD.beam1.dcm: DoseSummationType is BEAM: the dose of a part of the course, not of the whole plan'
    """
    if dose.summation_type in PARTIAL_SUMMATION_TYPES:
        return (
            f"{_name(dose)}: DoseSummationType is {dose.summation_type}: the dose of a part of the course, not of the "
            "whole plan"
        )
    if dose.dose_type == "ERROR":
        return f"{_name(dose)}: DoseType is ERROR: a dose difference, not a dose"
    return ""


#: What to do about a per-beam (or per-fraction) dose, where several doses of one plan are summed.
SUM_THE_PARTS = "give every beam's (or fraction's) dose to sum them, or the plan's dose"


def check_whole_course(dose: DoseGrid, *, strict: bool, remedy: str = SUM_THE_PARTS) -> None:
    """Refuse (``strict``: classification, cohorts) or warn about (DVHs) a dose that is not a whole course's:
    judging a per-beam dose against the whole prescription is wrong. EFFECTIVE dose is accepted with a warning.

    Parameters
    ----------
    dose : DoseGrid
        The dose.
    strict : bool
        Refuse rather than warn.
    remedy : str
        What the refusal of a partial dose advises (by default: the doses of every beam, to be summed).

    Returns
    -------
    None

    Raises
    ------
    InputMismatchError
        For a partial dose when ``strict``.

    Examples
    --------
    >>> from isodose.phantoms import example_case
    >>> dose, _ = example_case()
    >>> check_whole_course(dose, strict=True)  # a dose built in Python says nothing against it
    """
    problem = partial_dose(dose)
    if problem and strict:
        if dose.dose_type == "ERROR":  # a dose difference: no sum of parts makes it a dose
            raise InputMismatchError(problem + "; give the plan's dose")
        raise InputMismatchError(f"{problem}; {remedy}")
    if problem:
        log.warning("%s; its metrics are those of that part alone", problem)
    if dose.dose_type == "EFFECTIVE":
        log.warning(
            "%s: DoseType is EFFECTIVE: a biologically weighted dose (Gy(RBE), say), taken as given", _name(dose)
        )


def check_dvh_structures(
    referenced_uid: str, dvh_source: str, structures: StructureSet, *, allow_mismatch: bool = False
) -> None:
    """Refuse (or, with ``allow_mismatch``, warn about) a structure set that is not the one an RTDOSE's DVHs refer
    to: their ROI numbers would name other ROIs.

    Parameters
    ----------
    referenced_uid : str
        The SOPInstanceUID the RTDOSE's ReferencedStructureSetSequence names ("" when it names none).
    dvh_source : str
        The RTDOSE file, for the message.
    structures : StructureSet
        The structure set given.
    allow_mismatch : bool
        Go on, with a warning.

    Raises
    ------
    InputMismatchError
        When both files say who they are and they differ, unless ``allow_mismatch``.

    Examples
    --------
    >>> from isodose.model import StructureSet
    >>> check_dvh_structures("1.2.3", "RD.dcm", StructureSet((), sop_instance_uid="1.2.3"))
    >>> check_dvh_structures("1.2.3", "RD.dcm", StructureSet((), source="RS.dcm", sop_instance_uid="1.2.4"))
    Traceback (most recent call last):
    ...
    isodose.errors.InputMismatchError: RD.dcm's DVHs refer to the ROIs of RTSTRUCT 1.2.3, but RS.dcm is RTSTRUCT ...
    """
    if not referenced_uid or not structures.sop_instance_uid or referenced_uid == structures.sop_instance_uid:
        return
    problem = (
        f"{dvh_source}'s DVHs refer to the ROIs of RTSTRUCT {referenced_uid}, but {_name(structures)} is RTSTRUCT "
        f"{structures.sop_instance_uid}: its ROI numbers may name other ROIs"
    )
    if not allow_mismatch:
        raise InputMismatchError(problem + " (--allow-mismatch goes on regardless)")
    log.warning("%s; going on, as asked (--allow-mismatch)", problem)
