"""Re-irradiation: biologically equivalent doses (BED, EQD2) and the sum of two courses on one grid.

The linear-quadratic model, voxel by voxel: a course of ``n`` fractions giving a physical dose ``D`` (fraction
dose ``d = D / n``) has ``BED = D (1 + d / (a/b))`` and ``EQD2 = BED / (1 + 2 / (a/b)) = D (d + a/b) / (2 + a/b)``,
for the tissue's alpha/beta ratio ``a/b`` (Gy). Each course is converted with its own fractionation before the
courses are added; a tissue recovery factor (a user's assumption, 0 by default) discounts the first course's
EQD2 by that percentage.

The sum lives on the first course's dose grid. The second course is resampled there by trilinear interpolation:
through the rigid transform of a DICOM spatial registration when its frame of reference differs, directly when
the frames are the same. Where the second grid does not reach, its dose is taken as 0 Gy and a warning gives the
share of the first grid concerned.

>>> from isodose.phantoms import example_case
>>> dose, structures = example_case()
>>> second = DoseGrid(dose.dose_gy * 0.4, dose.origin_mm, dose.spacing_mm, dose.frame_of_reference_uid)
>>> plan_sum = accumulate([Course(dose, 35), Course(second, 10)])
>>> [ptv] = accumulated_dvhs(plan_sum, structures, ["PTV"], alpha_beta={"PTV": 10.0})
>>> round(ptv.physical.dmean_gy, 1), round(ptv.eqd2.dmean_gy, 1)
(98.0, 100.0)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .dispatch import Backend, resolve_backend
from .dvh import DVH, dvh_request, dvhs_from_samples
from .errors import AccumulationError, FrameOfReferenceError
from .geometry import check_dose_grid, check_rigid, registration_matrix
from .model import DoseGrid, Registration, Structure, StructureSet
from .sampling import sample_many
from .voxelize import SamplingOptions

log = logging.getLogger(__name__)

#: Default alpha/beta ratios (Gy): tumour, spinal cord and brainstem, other normal tissue.
TUMOUR_ALPHA_BETA_GY = 10.0
CNS_ALPHA_BETA_GY = 2.0
NORMAL_ALPHA_BETA_GY = 3.0
_TUMOUR = re.compile(r"(^|[^a-z])(gtv|ctv|ptv|itv)", re.IGNORECASE)
_CNS = re.compile(r"cord|brain\s*_?-?\s*stem", re.IGNORECASE)


@dataclass(frozen=True)
class Course:
    """One course of radiotherapy: its physical dose and its number of fractions.

    Parameters
    ----------
    dose : DoseGrid
        The course's physical dose, Gy.
    fractions : int
        Its number of fractions, at least 1.

    Raises
    ------
    AccumulationError
        For a dose that is not a DoseGrid, or fractions that are not a whole number of at least 1.

    Examples
    --------
    >>> from isodose.phantoms import example_case
    >>> dose, _ = example_case()
    >>> Course(dose, 35).fractions
    35
    """

    dose: DoseGrid
    fractions: int

    def __post_init__(self) -> None:
        if not isinstance(self.dose, DoseGrid):
            raise AccumulationError(
                f"a course's dose must be a DoseGrid (isodose.read_dose reads one), not {type(self.dose).__name__}"
            )
        _check_fractions(self.fractions, self.dose.source or None)


def _check_fractions(fractions, path: str | None = None) -> int:
    if isinstance(fractions, bool) or not isinstance(fractions, int | np.integer) or fractions < 1:
        raise AccumulationError(
            f"a course needs a whole number of fractions of at least 1, not {fractions!r}", path=path
        )
    return int(fractions)


@dataclass(frozen=True, eq=False)
class PlanSum:
    """Courses on the first course's lattice (made by :func:`accumulate`).

    Attributes
    ----------
    reference : DoseGrid
        Course 1's dose grid: the lattice, frame of reference and source of the sum.
    doses : tuple
        Each course's physical dose (Gy, float64) on that lattice, as arrays of ``backend``: on the GPU they stay
        on the device, and so do the sums and EQD2 grids made from them for DVHs (``on_device=True``); the public
        accessors give NumPy arrays.
    fractions : tuple of int
        Each course's number of fractions.
    recovery_pct : float
        The share of course 1's EQD2 taken as repaired, %.
    backend : Backend
        Where the doses live.

    Examples
    --------
    >>> from isodose.phantoms import example_case
    >>> dose, structures = example_case()
    >>> second = DoseGrid(dose.dose_gy * 0.4, dose.origin_mm, dose.spacing_mm, dose.frame_of_reference_uid)
    >>> plan_sum = accumulate([Course(dose, 35), Course(second, 10)])
    >>> round(float(plan_sum.physical().dose_gy.max()), 1), round(float(plan_sum.eqd2(3.0).dose_gy.max()), 1)
    (140.0, 173.1)
    """

    reference: DoseGrid  # course 1's dose grid: the lattice, frame of reference and source of the sum
    doses: tuple[object, ...]
    fractions: tuple[int, ...]
    recovery_pct: float
    backend: Backend

    def physical(self, *, on_device: bool = False) -> DoseGrid:
        """The physical sum of the courses."""
        return self._sum(self.doses, [1.0] * len(self.doses), self.fractions, None, on_device)

    def eqd2(self, alpha_beta_gy: float, *, on_device: bool = False) -> DoseGrid:
        """The sum of each course's EQD2 for one alpha/beta ratio (the first course discounted by the recovery)."""
        weights = [1.0 - self.recovery_pct / 100.0] + [1.0] * (len(self.doses) - 1)
        return self._sum(self.doses, weights, self.fractions, _check_alpha_beta(alpha_beta_gy), on_device)

    def course_eqd2(self, course: int, alpha_beta_gy: float, *, on_device: bool = False) -> DoseGrid:
        """One course's EQD2 alone (``course`` counted from 0, without recovery)."""
        if not (isinstance(course, int | np.integer) and 0 <= course < len(self.doses)):
            raise AccumulationError(
                f"course {course!r} is not one of this plan sum's courses (0 to {len(self.doses) - 1}, counted from 0)"
            )
        return self._sum(
            [self.doses[course]], [1.0], [self.fractions[course]], _check_alpha_beta(alpha_beta_gy), on_device
        )

    @property
    def grid(self) -> DoseGrid:
        """The physical sum, on the host."""
        return self.physical()

    @property
    def doses_gy(self) -> tuple[np.ndarray, ...]:
        """Each course's physical dose on the sum's lattice, on the host."""
        return tuple(np.asarray(self.backend.kernels.to_host(dose), dtype=np.float64) for dose in self.doses)

    def _sum(self, doses, weights, fractions, alpha_beta, on_device: bool) -> DoseGrid:
        """A weighted sum of courses (physical, or EQD2 at ``alpha_beta``) by the backend's ``course_sum``, in
        one pass over the voxels: float32, where the doses live."""
        dose = self.backend.kernels.course_sum(doses, weights, fractions, alpha_beta)
        if not on_device:
            dose = np.ascontiguousarray(self.backend.kernels.to_host(dose))
        return replace(self.reference, dose_gy=dose)


def _check_alpha_beta(alpha_beta_gy: float) -> float:
    value = float(alpha_beta_gy)
    if not (np.isfinite(value) and value > 0):
        raise AccumulationError(f"alpha/beta must be a positive number of Gy, not {alpha_beta_gy!r}")
    return value


def _float64(dose_gy):
    """NumPy input as a float64 array; arrays of other libraries (CuPy) stay where they are, as float64."""
    if isinstance(dose_gy, np.ndarray | list | tuple | int | float | np.generic):
        return np.asarray(dose_gy, dtype=np.float64)
    return dose_gy.astype(np.float64)


def bed(dose_gy, fractions: int, alpha_beta_gy: float):
    """Biologically effective dose of a physical dose given in equal fractions: ``D (1 + d / (a/b))``.

    Parameters
    ----------
    dose_gy : array_like
        Physical dose, Gy (a NumPy or CuPy array, or a number).
    fractions : int
        Number of fractions, at least 1 (``d = D / fractions``).
    alpha_beta_gy : float
        The tissue's alpha/beta ratio, Gy, positive.

    Returns
    -------
    array
        BED, Gy, float64, where the input lives: a CuPy array gives a CuPy array.

    Raises
    ------
    AccumulationError
        For fractions or an alpha/beta ratio out of range.

    Examples
    --------
    >>> float(bed(60.0, 30, 10.0))
    72.0
    """
    ab = _check_alpha_beta(alpha_beta_gy)
    fractions = _check_fractions(fractions)
    dose = _float64(dose_gy)
    return dose * (1.0 + dose / fractions / ab)


def eqd2(dose_gy, fractions: int, alpha_beta_gy: float):
    """Equivalent dose in 2 Gy fractions: ``D (d + a/b) / (2 + a/b)`` with ``d = D / fractions``.

    Parameters
    ----------
    dose_gy : array_like
        Physical dose, Gy (a NumPy or CuPy array, or a number).
    fractions : int
        Number of fractions, at least 1.
    alpha_beta_gy : float
        The tissue's alpha/beta ratio, Gy, positive.

    Returns
    -------
    array
        EQD2, Gy, float64, where the input lives: a CuPy array gives a CuPy array.

    Raises
    ------
    AccumulationError
        For fractions or an alpha/beta ratio out of range.

    Examples
    --------
    >>> float(eqd2(30.0, 10, 3.0))
    36.0
    """
    ab = _check_alpha_beta(alpha_beta_gy)
    fractions = _check_fractions(fractions)
    dose = _float64(dose_gy)
    return dose * (dose / fractions + ab) / (2.0 + ab)


def default_alpha_beta(structure: Structure) -> float:
    """10 Gy for targets (GTV, CTV, PTV, ITV by interpreted type or name), 2 Gy for the spinal cord and the
    brainstem, 3 Gy for other normal tissue."""
    kind = structure.interpreted_type.upper()
    if kind in ("GTV", "CTV", "PTV", "ITV") or _TUMOUR.search(structure.name):
        return TUMOUR_ALPHA_BETA_GY
    if _CNS.search(structure.name):
        return CNS_ALPHA_BETA_GY
    return NORMAL_ALPHA_BETA_GY


def _resampled(dose: DoseGrid, onto: DoseGrid, transform: np.ndarray | None, backend: Backend):
    """``dose`` at the voxel centres of ``onto`` as an array of the backend, 0 Gy where it does not reach, and
    the share of centres concerned."""
    matrix = np.eye(4) if transform is None else check_rigid(transform, "the registration's transform")
    out_of_memory = backend.kernels.out_of_memory_errors()
    try:
        values = backend.kernels.resample(
            dose.dose_gy,
            np.asarray(dose.origin_mm, dtype=np.float64),
            np.asarray(dose.spacing_mm, dtype=np.float64),
            onto.origin_mm,
            onto.spacing_mm,
            onto.dose_gy.shape,
            matrix,
        )
    except out_of_memory as exc:
        raise AccumulationError(
            f"not enough memory on {backend.device} to hold this course on a grid of "
            f"{onto.dose_gy.size:,} voxels (8 bytes each, besides the other courses)",
            path=dose.source or None,
        ) from exc
    outside = values != values  # NaN: outside the grid of ``dose``
    share = int(outside.sum()) / values.size if values.size else 0.0
    values[outside] = 0.0
    return values, share


def resample(
    dose: DoseGrid, onto: DoseGrid, transform: np.ndarray | None = None, backend: str | Backend | None = None
) -> tuple[np.ndarray, float]:
    """``dose`` at the voxel centres of ``onto`` (trilinear), and the share of those centres it does not reach
    (where its value is 0). ``transform`` maps ``onto``'s coordinates into ``dose``'s (rigid 4x4)."""
    chosen = resolve_backend(backend)
    values, share = _resampled(dose, onto, transform, chosen)
    return np.asarray(chosen.kernels.to_host(values), dtype=np.float64), share


def accumulate(
    courses: Sequence[Course],
    *,
    registration: Registration | None = None,
    recovery_pct: float = 0.0,
    backend: str | Backend | None = None,
) -> PlanSum:
    """Put every course on the first course's grid (see the module docstring).

    Parameters
    ----------
    courses : sequence of Course
        The courses, first course first: the sum lives on its grid.
    registration : Registration, optional
        Relates the frames of reference of courses in another frame than the first.
    recovery_pct : float
        The share of course 1's EQD2 taken as repaired before the next, % (a user's assumption; default 0).
    backend : str or Backend, optional
        The backend (see :func:`isodose.resolve_backend`): on the GPU the resampling is done on the device and
        the plan sum stays there.

    Returns
    -------
    PlanSum
        The courses' physical doses on the first course's lattice.

    Raises
    ------
    AccumulationError
        For no course, a recovery out of range, or grids that do not overlap at all.
    FrameOfReferenceError
        For a course in another frame without a registration.

    Examples
    --------
    >>> from isodose.phantoms import example_case
    >>> dose, structures = example_case()
    >>> second = DoseGrid(dose.dose_gy * 0.4, dose.origin_mm, dose.spacing_mm, dose.frame_of_reference_uid)
    >>> plan_sum = accumulate([Course(dose, 35), Course(second, 10)])
    >>> plan_sum.fractions
    (35, 10)
    """
    if not courses:
        raise AccumulationError("no course to accumulate")
    if not (0.0 <= float(recovery_pct) < 100.0):
        raise AccumulationError(f"the tissue recovery must be a percentage from 0 to below 100, not {recovery_pct!r}")
    chosen = resolve_backend(backend)
    for course in courses:
        check_dose_grid(course.dose)
    first = courses[0]
    doses = [chosen.kernels.asarray(first.dose.dose_gy, np.float64)]
    for k, course in enumerate(courses[1:], start=2):
        transform = None
        frame, base = course.dose.frame_of_reference_uid, first.dose.frame_of_reference_uid
        if frame and base and frame != base:
            if registration is None:
                raise FrameOfReferenceError(
                    f"course {k} is in frame of reference {frame}, course 1 in {base}: give the spatial registration "
                    "that relates them",
                    path=course.dose.source or None,
                )
            transform = registration_matrix(registration, base, frame)
        values, outside = _resampled(course.dose, first.dose, transform, chosen)
        if outside >= 1.0:
            raise AccumulationError(
                f"course {k}'s dose grid does not overlap course 1's at all (after the "
                "registration, if any): check the files and the registration",
                path=course.dose.source or None,
            )
        if outside > 0:
            log.warning(
                "%s: course %d's dose grid does not reach %.1f%% of course 1's grid; its dose is taken as 0 Gy there",
                course.dose.source or "dose",
                k,
                100 * outside,
            )
        doses.append(values)
    return PlanSum(first.dose, tuple(doses), tuple(int(c.fractions) for c in courses), float(recovery_pct), chosen)


def sum_doses(doses: Sequence[DoseGrid], *, backend: str | Backend | None = None) -> DoseGrid:
    """The physical sum of the parts of one plan's dose (its beams, or its fractions) on the first part's grid.

    Parts whose grids differ are resampled onto the first (trilinear, 0 Gy where a part does not reach, with a
    warning), as plan sums are. The parts must be of one frame of reference and one patient, and of one plan
    where their files name it; the sum stands for the whole plan (DoseSummationType ``PLAN``), so every part
    must be there: where the plan is at hand, :func:`isodose.provenance.check_inputs` counts them against its beams.

    Parameters
    ----------
    doses : sequence of DoseGrid
        The parts, two or more (one is returned as it is).
    backend : str or Backend, optional
        The backend that resamples and sums (see :func:`isodose.resolve_backend`).

    Returns
    -------
    DoseGrid
        The sum, float32, with the first part's lattice, frame, patient and plan, and a ``source`` naming every
        part.

    Raises
    ------
    AccumulationError
        For no dose, parts of several frames of reference, patients or plans, or parts of different kinds
        (a BEAM dose beside a FRACTION dose).

    Examples
    --------
    >>> from dataclasses import replace
    >>> from isodose.phantoms import example_case
    >>> dose, _ = example_case()
    >>> beams = [replace(dose, dose_gy=dose.dose_gy * w, summation_type="BEAM") for w in (0.25, 0.75)]
    >>> total = sum_doses(beams)
    >>> total.summation_type, float(abs(total.dose_gy - dose.dose_gy).max()) < 1e-4
    ('PLAN', True)
    """
    doses = list(doses)
    if not doses:
        raise AccumulationError("no dose to sum")
    if len(doses) == 1:
        return doses[0]
    for attribute, what in (
        ("frame_of_reference_uid", "frames of reference"),
        ("patient_id", "patients"),
        ("referenced_plan_uid", "plans"),
        ("summation_type", "kinds (DoseSummationType)"),
    ):
        values = {getattr(d, attribute) for d in doses if getattr(d, attribute)}
        if len(values) > 1:
            names = ", ".join(d.source or "a dose built in Python" for d in doses)
            raise AccumulationError(f"the doses to sum are of several {what} ({', '.join(sorted(values))}): {names}")
    _check_distinct_parts(doses)
    plan_sum = accumulate([Course(d, 1) for d in doses], backend=backend)
    total = plan_sum.physical()
    sources = [d.source for d in doses if d.source]
    beams = tuple(sorted({b for d in doses for b in d.referenced_beam_numbers}))
    return replace(
        total,
        source=" + ".join(sources) if sources else "",
        summation_type="PLAN",
        sop_instance_uid="",
        referenced_beam_numbers=beams,
    )


def _check_distinct_parts(doses: Sequence[DoseGrid]) -> None:
    """Each part once: no RTDOSE given twice (by its SOPInstanceUID) and no beam twice (by the beam it names)."""
    seen: dict[str, DoseGrid] = {}
    beams: dict[int, DoseGrid] = {}
    for d in doses:
        if d.sop_instance_uid:
            if d.sop_instance_uid in seen:
                raise AccumulationError(
                    f"{d.source or 'a dose'} is the same RTDOSE (SOPInstanceUID {d.sop_instance_uid}) as "
                    f"{seen[d.sop_instance_uid].source or 'another'}: the sum would count it twice"
                )
            seen[d.sop_instance_uid] = d
        for beam in d.referenced_beam_numbers if d.summation_type == "BEAM" else ():
            if beam in beams:
                raise AccumulationError(
                    f"{d.source or 'a dose'} and {beams[beam].source or 'another'} are both the dose of beam {beam}: "
                    "the sum would count that beam twice"
                )
            beams[beam] = d


@dataclass(frozen=True)
class AccumulatedDVH:
    """One structure's DVH of the physical sum and of the EQD2 sum (at its alpha/beta)."""

    name: str
    alpha_beta_gy: float
    physical: DVH
    eqd2: DVH


def alpha_betas(structures: Sequence[Structure], overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each structure's alpha/beta: ``overrides`` by ROI name (exact, else case-insensitive), else the default."""
    overrides = dict(overrides or {})
    names = {s.name for s in structures}
    folded = {s.name.casefold(): s.name for s in structures}
    resolved: dict[str, float] = {}
    for key, value in overrides.items():
        name = key if key in names else folded.get(key.casefold())
        if name is None:
            raise AccumulationError(f"alpha/beta given for ROI {key!r}, which the structure set does not hold")
        resolved[name] = _check_alpha_beta(value)
    return {s.name: resolved.get(s.name, default_alpha_beta(s)) for s in structures}


def accumulated_dvhs(
    plan_sum: PlanSum,
    structures: StructureSet | Sequence[Structure],
    rois: Sequence[str | int] | None = None,
    *,
    alpha_beta: Mapping[str, float] | None = None,
    options: SamplingOptions | None = None,
    backend: str | Backend | None = None,
) -> list[AccumulatedDVH]:
    """DVHs of the chosen structures in the physical sum and in the EQD2 sum, each structure at its alpha/beta.

    Parameters
    ----------
    plan_sum : PlanSum
        The courses, from :func:`accumulate`.
    structures : StructureSet or sequence of Structure
        The structures, in the first course's frame of reference.
    rois : sequence of str or int, optional
        The ROIs (all by default).
    alpha_beta : mapping of str to float, optional
        Alpha/beta ratios (Gy) by ROI name; others take the defaults (10 Gy targets, 2 Gy spinal cord and
        brainstem, 3 Gy other tissue).
    options : SamplingOptions, optional
        How finely the structures are sampled.
    backend : str or Backend, optional
        The backend; all grids (one EQD2 grid per distinct ratio) are sampled together, one launch on a GPU.

    Returns
    -------
    list of AccumulatedDVH
        Per ROI, its alpha/beta and its ``physical`` and ``eqd2`` DVHs.

    Examples
    --------
    >>> from isodose.phantoms import example_case
    >>> dose, structures = example_case()
    >>> second = DoseGrid(dose.dose_gy * 0.4, dose.origin_mm, dose.spacing_mm, dose.frame_of_reference_uid)
    >>> plan_sum = accumulate([Course(dose, 35), Course(second, 10)])
    >>> [cord] = accumulated_dvhs(plan_sum, structures, ["Cord"])
    >>> cord.alpha_beta_gy, round(cord.physical.dmax_gy, 1), round(cord.eqd2.dmax_gy, 1)
    (2.0, 103.6, 112.8)
    """
    chosen = resolve_backend(backend)
    options = options or SamplingOptions()
    all_structures = structures.structures if isinstance(structures, StructureSet) else tuple(structures)
    selected, physical_request = dvh_request(plan_sum.reference, structures, rois, options=options)
    ratios = alpha_betas(all_structures, alpha_beta)
    by_ratio: dict[float, list[Structure]] = {}
    for structure in selected:
        by_ratio.setdefault(ratios[structure.name], []).append(structure)
    # Each ratio's structures in its EQD2 grid; the lattice is the physical sum's, so a plan serves as is.
    subsets = [
        (ratio, dvh_request(plan_sum.reference, structures, [m.name for m in members], options=options))
        for ratio, members in sorted(by_ratio.items())
    ]
    requests = [replace(physical_request, grid=plan_sum.physical(on_device=True))]
    requests += [replace(request, grid=plan_sum.eqd2(ratio, on_device=True)) for ratio, (_, request) in subsets]
    physical_samples, *eqd2_samples = sample_many(requests, chosen, options)
    physical = dvhs_from_samples(selected, physical_samples)
    eqd2_dvhs = {
        id(s): dvh
        for (_, (members, _)), samples in zip(subsets, eqd2_samples, strict=True)
        for s, dvh in zip(members, dvhs_from_samples(members, samples), strict=True)
    }
    return [AccumulatedDVH(s.name, ratios[s.name], dvh, eqd2_dvhs[id(s)]) for s, dvh in zip(selected, physical)]


#: Published risk thresholds for re-irradiated nasopharyngeal carcinoma (see :func:`reirradiation_record`).
REIRRADIATION_EQD2_RISK_GY = 68.0
ACCUMULATED_GTV_EQD2_RISK_GY = 145.5
RECURRENT_GTV_RISK_CC = 25.0


def reirradiation_record(
    first: Course,
    second: Course,
    recurrence: Structure,
    *,
    registration: Registration | None = None,
    recurrence_transform: np.ndarray | None = None,
    options: SamplingOptions | None = None,
    backend: str | Backend | None = None,
) -> dict[str, object]:
    """Accumulated metrics of the recurrence (the recurrent GTV) for a second course, and the published risk
    flags, as a flat record (units in keys). The recurrence is in course 1's frame, or mapped there by
    ``recurrence_transform``; its alpha/beta is the tumour's (10 Gy).

    - ``vr_course2_eqd2_d95_gy``: D95 of the recurrence in the second course alone, in EQD2; the flag
      ``risk_reirradiation_eqd2_ge_68gy`` is it at or above 68 Gy.
    - ``vr_accumulated_eqd2_d95_gy``: D95 of the recurrence in the EQD2 sum of both courses; the flag
      ``risk_accumulated_gtv_eqd2_ge_145_5gy`` is it at or above 145.5 Gy.
    - ``risk_recurrent_gtv_ge_25cc``: the recurrence's volume at or above 25 cc.
    """
    chosen = resolve_backend(backend)
    options = options or SamplingOptions()
    plan_sum = accumulate([first, second], registration=registration, backend=chosen)
    ab = TUMOUR_ALPHA_BETA_GY
    # The three grids share course 1's lattice: one sampling plan serves them (one launch on a GPU).
    selected, request = dvh_request(plan_sum.reference, [recurrence], options=options, transform=recurrence_transform)
    grids = (
        plan_sum.physical(on_device=True),
        plan_sum.eqd2(ab, on_device=True),
        plan_sum.course_eqd2(1, ab, on_device=True),
    )
    samples = sample_many([replace(request, grid=grid) for grid in grids], chosen, options)
    physical, accumulated, alone = (dvhs_from_samples(selected, s)[0] for s in samples)
    record: dict[str, Any] = {
        "course1_fractions": first.fractions,
        "course2_fractions": second.fractions,
        "vr_alpha_beta_gy": ab,
        "vr_accumulated_physical_d95_gy": physical.metric("D95"),
        "vr_accumulated_physical_dmean_gy": physical.dmean_gy,
        "vr_accumulated_eqd2_d95_gy": accumulated.metric("D95"),
        "vr_accumulated_eqd2_dmean_gy": accumulated.dmean_gy,
        "vr_accumulated_eqd2_dmax_gy": accumulated.dmax_gy,
        "vr_course2_eqd2_d95_gy": alone.metric("D95"),
        "vr_course2_eqd2_dmean_gy": alone.dmean_gy,
    }
    record["risk_reirradiation_eqd2_ge_68gy"] = bool(record["vr_course2_eqd2_d95_gy"] >= REIRRADIATION_EQD2_RISK_GY)
    record["risk_accumulated_gtv_eqd2_ge_145_5gy"] = bool(
        record["vr_accumulated_eqd2_d95_gy"] >= ACCUMULATED_GTV_EQD2_RISK_GY
    )
    record["risk_recurrent_gtv_ge_25cc"] = bool(physical.volume_cc >= RECURRENT_GTV_RISK_CC)
    return record
