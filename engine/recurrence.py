"""Failure patterns: where a recurrence lay in the dose of the original plan.

Two published methods classify a recurrence volume Vr (mapped onto the planning CT):

- **Volume method.** The share of Vr inside the reference isodose (default 95% of the prescription):
  *in-field* when at least 95% of Vr is inside, *marginal* from 20% up to 95%, *out-field* under 20%. Parts
  of Vr outside the dose grid count as outside the isodose (they are reported as well).
- **Point-of-origin method.** The volume centroid of Vr, the dose there and the target structures holding
  it: *in-field* when the centroid dose is at least 95% of the prescription, *marginal* when it is lower but
  the centroid lies inside a target, *out-field* otherwise.

Thresholds, the isodose level and the prescription are all settings (:class:`Criteria`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .deformation import Deformation, DeformedRequest, deformed_options, sample_requests
from .dispatch import Backend, resolve_backend
from .dvh import (
    DVH,
    Metric,
    RoiLabel,
    RoiMetric,
    check_frame_of_reference,
    dvh_request,
    dvhs_from_samples,
    parse_metric,
    parse_roi_metric,
)
from .errors import IsodoseError, RegistrationError, RoiNotFoundError, StructureError, collect_warnings
from .geometry import (
    PackedPlanes,
    PlaneSets,
    common_plane_spacing_mm,
    registration_matrix,
    structure_planes,
)
from .model import DeformableRegistration, DoseGrid, LabelMask, Registration, Structure, StructureSet
from .sampling import (
    GridBatch,
    SamplingRequest,
    StructureSamples,
    crop_window,
    cropped_grid,
    dose_range_gy,
    merge_plans,
    union_box,
)
from .uncertainty import Uncertainty, UncertaintyRequest, UncertaintyResult, classify_draws
from .voxelize import SamplingOptions, plan_sampling

log = logging.getLogger(__name__)

CLASSES = ("in-field", "marginal", "out-field")
#: Metrics of Vr always reported: V95% (of the prescription), D95, D98, D100 (= Dmin), Dmean and Dmax.
RECURRENCE_METRICS = ("V95%", "D95", "D98", "D100", "Dmean", "Dmax")


@dataclass(frozen=True)
class Criteria:
    """Classification thresholds, in % (of the prescription for doses, of Vr for volumes).

    Parameters
    ----------
    isodose_pct : float
        The reference isodose, % of the prescription (default 95).
    in_field_pct : float
        The share of Vr inside that isodose from which a recurrence is in-field, % (default 95).
    marginal_pct : float
        The share from which it is marginal; below it, out-field, % (default 20).
    centroid_isodose_pct : float
        The isodose of the point-of-origin method, % of the prescription (default 95).

    Raises
    ------
    IsodoseError
        For isodose levels outside (0, 200] or thresholds not ordered ``0 <= marginal <= in-field <= 100``.

    Examples
    --------
    >>> criteria = Criteria()
    >>> criteria.volume_class(96.0), criteria.volume_class(42.0), criteria.volume_class(5.0)
    ('in-field', 'marginal', 'out-field')
    """

    isodose_pct: float = 95.0
    in_field_pct: float = 95.0
    marginal_pct: float = 20.0
    centroid_isodose_pct: float = 95.0

    def __post_init__(self) -> None:
        if not 0 < self.isodose_pct <= 200 or not 0 < self.centroid_isodose_pct <= 200:
            raise IsodoseError("isodose levels must lie between 0 and 200% of the prescription")
        if not 0 <= self.marginal_pct <= self.in_field_pct <= 100:
            raise IsodoseError("thresholds must satisfy 0 <= marginal <= in-field <= 100 (% of Vr)")

    def volume_class(self, inside_pct: float) -> str:
        if inside_pct >= self.in_field_pct:
            return "in-field"
        return "marginal" if inside_pct >= self.marginal_pct else "out-field"

    def centroid_class(self, centroid_dose_gy: float, prescription_gy: float, in_target: bool) -> str:
        if math.isfinite(centroid_dose_gy) and centroid_dose_gy >= self.centroid_isodose_pct / 100 * prescription_gy:
            return "in-field"
        return "marginal" if in_target else "out-field"


@dataclass(frozen=True, eq=False)
class RecurrenceResult:
    """The classification of one recurrence by both methods, with its metrics (see the module docstring).

    Attributes
    ----------
    recurrence_roi : str
        Vr's ROI name.
    prescription_gy, isodose_gy : float
        The prescription and the reference isodose, Gy.
    registered : bool
        Whether Vr was mapped from another frame by a registration.
    registration_kind : str
        How: ``rigid`` (a Spatial Registration), ``deformable`` (a Deformable Spatial Registration), ``field`` (a
        displacement field image), or "" when Vr is in the planning frame.
    registration_file : str
        The registration's file ("" when none, or built in Python).
    registration_residual_mm : float
        Where Vr was carried through the inverse of a deformation, the largest residual of the inversion (mm): how
        far the mapped samples' images lie from Vr's samples; NaN otherwise.
    uncertainty : UncertaintyResult or None
        The classification under registration uncertainty, where it was asked for
        (:class:`~isodose.uncertainty.Uncertainty`).
    recurrence_volume_cc, recurrence_outside_dose_cc : float
        Vr's volume, and the part of it outside the dose grid (counted as outside the isodose), cc.
    inside_isodose_pct : float
        The share of Vr inside the reference isodose, %.
    class_volume : str
        ``in-field``, ``marginal`` or ``out-field`` by the volume method.
    centroid_mm : tuple of float
        Vr's volume centroid in the planning frame, mm.
    centroid_dose_gy : float
        The dose there, Gy.
    centroid_targets : tuple of str
        The targets holding the centroid.
    class_centroid : str
        The class by the point-of-origin method.
    metrics : dict of str to float
        Vr's metrics by their text (V95%, D95, D98, D100, Dmean, Dmax and any asked for); NaN where undefined.
    target_metrics : dict of str to float
        Each ``ROI:METRIC`` asked for.
    recurrence_dvh : DVH
        Vr's DVH; ``roi_dvhs`` those of the ROIs of the target metrics, but of an ROI asked only for its volume.
    backend, device : str
        What computed it.
    warnings : tuple of str
        The warnings logged while this case was classified (an ROI partly outside the grid, say).

    Examples
    --------
    >>> from isodose.phantoms import example_case
    >>> dose, structures = example_case()
    >>> result = classify_recurrence(dose, structures, "Recurrence", 70.0)
    >>> result.class_volume, round(result.inside_isodose_pct, 1), result.centroid_targets
    ('marginal', 42.7, ('PTV',))
    >>> result.record()["class_centroid"]
    'marginal'
    """

    recurrence_roi: str
    prescription_gy: float
    isodose_gy: float
    registered: bool
    recurrence_volume_cc: float
    recurrence_outside_dose_cc: float
    inside_isodose_pct: float
    class_volume: str
    centroid_mm: tuple[float, float, float]
    centroid_dose_gy: float
    centroid_targets: tuple[str, ...]
    class_centroid: str
    metrics: dict[str, float]
    target_metrics: dict[str, float]
    recurrence_dvh: DVH = field(repr=False)
    registration_kind: str = ""
    registration_file: str = ""
    registration_residual_mm: float = math.nan
    uncertainty: UncertaintyResult | None = field(repr=False, default=None)
    #: DVHs of the planning ROIs named in the target metrics, but those asked only for their volume (whose dose is
    #: sampled coarsely: see :func:`isodose.voxelize.plan_sampling`).
    roi_dvhs: dict[str, DVH] = field(repr=False, default_factory=dict)
    backend: str = ""
    device: str = ""
    #: The warnings logged while this case was classified (ROIs partly outside the grid, say).
    warnings: tuple[str, ...] = ()

    def record(self) -> dict[str, object]:
        """The flat record of the ``classify`` JSON and of each row of a cohort's table (units in keys)."""
        x, y, z = self.centroid_mm
        out: dict[str, object] = {
            "recurrence_roi": self.recurrence_roi,
            "recurrence_registered": self.registered,
            "registration_kind": self.registration_kind,
            "registration_file": self.registration_file,
            "registration_residual_mm": self.registration_residual_mm,
            "prescription_gy": self.prescription_gy,
            "isodose_gy": self.isodose_gy,
            "recurrence_volume_cc": self.recurrence_volume_cc,
            "recurrence_outside_dose_cc": self.recurrence_outside_dose_cc,
            "inside_isodose_pct": self.inside_isodose_pct,
            "class_volume": self.class_volume,
            "centroid_x_mm": x,
            "centroid_y_mm": y,
            "centroid_z_mm": z,
            "centroid_dose_gy": self.centroid_dose_gy,
            "centroid_targets": list(self.centroid_targets),
            "class_centroid": self.class_centroid,
        }
        out.update(self.metrics)
        out.update(self.target_metrics)
        if self.uncertainty is not None:
            out.update(self.uncertainty.record())
        out["backend"] = self.backend
        out["device"] = self.device
        return out


def recurrence_transform(
    dose: DoseGrid, recurrence_structures: StructureSet, registration: Registration | None
) -> np.ndarray | None:
    """The matrix from the recurrence's frame to the dose's, or None when they are the same frame."""
    source, target = recurrence_structures.frame_of_reference_uid, dose.frame_of_reference_uid
    if not source or not target or source == target:
        return None
    if registration is None:
        raise RegistrationError(
            f"the recurrence structures are in frame of reference {source} and the dose in {target}: a spatial "
            "registration between them is needed",
            path=recurrence_structures.source or None,
        )
    return registration_matrix(registration, source, target)


@dataclass(frozen=True, eq=False)
class RecurrenceCase:
    """The inputs of one classification: the arguments of :func:`classify_recurrence`, for
    :func:`classify_recurrences`.

    Parameters
    ----------
    dose, structures, recurrence_roi, prescription_gy : object
        As for :func:`classify_recurrence`.
    recurrence_structures, registration, targets, metrics, target_metrics, criteria, require_targets : object
        As for :func:`classify_recurrence`.

    Examples
    --------
    >>> from isodose.phantoms import example_case
    >>> dose, structures = example_case()
    >>> case = RecurrenceCase(dose, structures, "Recurrence", 70.0, target_metrics=("PTV:D95",))
    >>> [result] = classify_recurrences([case])
    >>> round(result.target_metrics["PTV:D95"], 1)
    59.1
    """

    dose: DoseGrid
    structures: StructureSet | Sequence[Structure]
    recurrence_roi: str
    prescription_gy: float
    recurrence_structures: StructureSet | None = None
    registration: Registration | DeformableRegistration | None = None
    targets: Sequence[str] | None = None
    metrics: Sequence[str | Metric] = ()
    target_metrics: Sequence[str | RoiMetric] = ()
    criteria: Criteria | None = None
    require_targets: bool = False
    #: Registration errors to classify the case under (draws of perturbed mappings), and the key its draws are
    #: drawn with (a cohort gives each case's id, so that a case's draws do not depend on the others).
    uncertainty: Uncertainty | None = None
    uncertainty_key: str = ""

    def __post_init__(self) -> None:
        # Structures may be given as a plain sequence, as compute_dvhs takes them.
        for name in ("structures", "recurrence_structures"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, StructureSet):
                object.__setattr__(self, name, StructureSet(tuple(value)))


@dataclass(frozen=True, eq=False)
class Targets:
    """The targets of a prepared case's point-of-origin method, in order: their names, and the planes of those that
    are contoured joined in one :class:`~isodose.geometry.PlaneSets` (one test of a centroid against them all, one
    buffer to pickle), or a label image's mask. Iterated, ``(name, planes or mask)`` for each."""

    names: tuple[str, ...] = ()
    #: The contoured targets' planes, in their order among ``names``; None where none is contoured.
    planes: PlaneSets | None = None
    #: Each target's label mask, or None where it is contoured.
    masks: tuple[LabelMask | None, ...] = ()

    @classmethod
    def of(cls, targets: Sequence[tuple[str, PackedPlanes | LabelMask]]) -> Targets:
        contoured = [shape for _, shape in targets if isinstance(shape, PackedPlanes)]
        return cls(
            tuple(name for name, _ in targets),
            PlaneSets.join(contoured) if contoured else None,
            tuple(None if isinstance(shape, PackedPlanes) else shape for _, shape in targets),
        )

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        planes = iter(range(len(self.planes))) if self.planes is not None else iter(())
        for name, mask in zip(self.names, self.masks):
            yield name, (mask if mask is not None else self.planes[next(planes)])  # type: ignore[index]

    def holding(self, point_mm: np.ndarray) -> tuple[str, ...]:
        """The names of the targets that hold the ``(x, y, z)`` point, in order."""
        point = np.asarray(point_mm, dtype=np.float64).reshape(1, 3)
        in_planes = iter(self.planes.holding(point) if self.planes is not None else ())
        return tuple(
            name
            for name, mask in zip(self.names, self.masks)
            if (next(in_planes) if mask is None else bool(mask.contain(point)[0]))
        )


@dataclass(frozen=True, eq=False)
class PreparedRecurrence:
    """A classification whose inputs are checked and whose sampling is planned, waiting for its samples: all
    the work before the kernels (:func:`prepare_recurrence`). It holds only what finishing needs, not the
    structure sets: made in one process (a reading worker), it is small and quick to pickle to another (the
    one that drives a GPU) however many contours the case has."""

    dose: DoseGrid
    prescription_gy: float
    criteria: Criteria
    options: SamplingOptions
    requests: tuple[SamplingRequest | DeformedRequest, ...]
    vr: RoiLabel
    registered: bool
    rois: tuple[RoiLabel, ...]
    #: Each target metric with the name of its ROI in the structure set (metrics keep the text asked for).
    roi_metrics: tuple[tuple[RoiMetric, str | None], ...]
    vr_metrics: tuple[Metric, ...]
    #: The targets of the point-of-origin method: each one's name and planes (with their slabs) or mask.
    targets: Targets = field(default_factory=Targets)
    #: What was logged while preparing.
    warnings: tuple[str, ...] = ()
    #: How Vr was mapped (see :attr:`RecurrenceResult.registration_kind`), and the registration's file.
    registration_kind: str = ""
    registration_file: str = ""
    #: The case's draws, planned, where uncertainty was asked for.
    uncertainty: UncertaintyRequest | None = None
    #: The ROIs of the target metrics asked only for their volume: sampled for it alone, so no DVH of theirs is kept.
    volume_only: tuple[str, ...] = ()
    #: Whether ``dose`` is already the part of the grid that its sampling reads (:func:`cropped_to_samples`): it is
    #: then used as it is, never cropped again (a second crop of a crop could move its origin by a rounding).
    grid_cropped: bool = False


def prepare_recurrence(
    case: RecurrenceCase, options: SamplingOptions | None = None
) -> PreparedRecurrence | IsodoseError:
    """Check one case's inputs and plan its sampling; never raises for a bad case: the error comes back, and
    either way the warnings logged on the way are kept with it. What is planned holds the dose grid as it is now
    (its dose range among others): a grid changed in place afterwards needs the case prepared again."""
    with collect_warnings() as messages:
        try:
            prepared = _prepare(case, options or SamplingOptions())
        except IsodoseError as exc:
            exc.warnings = tuple(messages)
            return exc
    return replace(prepared, warnings=tuple(messages))


def _target_roi(structures: StructureSet, roi: str, what: str, required: bool) -> str | None:
    """The name of a target ROI in the planning set; without it, an error (``required``) or a warning, and None:
    the case is classified all the same, the metrics of that ROI null."""
    try:
        return structures.get(roi).name
    except RoiNotFoundError as exc:
        if required:
            raise
        log.warning(
            "%s; %s is left out (null), and the case classified without it (--require-targets refuses such cases)",
            exc,
            what,
        )
        return None


def _prepare(case: RecurrenceCase, options: SamplingOptions) -> PreparedRecurrence:
    """Check one case's inputs and plan its sampling (all the work before the kernels)."""
    prescription_gy = case.prescription_gy
    if not (prescription_gy and prescription_gy > 0 and math.isfinite(prescription_gy)):
        raise IsodoseError(f"the prescription must be a positive dose in Gy, not {prescription_gy!r}")
    criteria = case.criteria or Criteria()
    dose = case.dose
    structures = case.structures if isinstance(case.structures, StructureSet) else StructureSet(tuple(case.structures))
    check_frame_of_reference(dose, structures)

    follow_up = case.recurrence_structures
    source = follow_up if follow_up is not None else structures
    vr_structure = source.get(case.recurrence_roi)
    if vr_structure.is_empty:
        raise StructureError(
            "the recurrence ROI has no contours", path=source.source or None, obj=f"ROI {vr_structure.name!r}"
        )
    registration = case.registration if follow_up is not None else None
    kind = ""
    vr_request: SamplingRequest | DeformedRequest
    mapping: np.ndarray | Deformation | None
    if isinstance(registration, DeformableRegistration):
        deformation = Deformation.between(registration, source.frame_of_reference_uid, dose.frame_of_reference_uid)
        plan = plan_sampling(
            [vr_structure], dose, deformed_options(options), common_plane_spacing_mm(source.structures)
        )
        vr_request = DeformedRequest(plan, dose, deformation)
        kind, registered, mapping = registration.kind, True, deformation
    else:
        transform = recurrence_transform(dose, source, registration) if follow_up is not None else None
        _, vr_request = dvh_request(
            dose, source, [vr_structure.name], options=options, check_frame=transform is None, transform=transform
        )
        registered, mapping = transform is not None, transform
        kind = "rigid" if registered else ""
    uncertainty = None
    if case.uncertainty is not None:
        uncertainty = UncertaintyRequest(
            _uncertainty_plan(vr_structure, source, dose, case.uncertainty, options),
            dose,
            mapping,
            case.uncertainty,
            case.uncertainty_key,
        )
    requests: list[SamplingRequest | DeformedRequest] = [vr_request]

    vr_metrics = [parse_metric(m) for m in RECURRENCE_METRICS]
    extra = [parse_metric(m) if isinstance(m, str) else m for m in case.metrics]
    known = {m.text for m in vr_metrics}
    vr_metrics += [m for m in extra if m.text not in known]

    roi_metrics = [parse_roi_metric(m) if isinstance(m, str) else m for m in case.target_metrics]
    metric_rois = [
        _target_roi(structures, m.roi, f"the target metric {m.text}", case.require_targets) for m in roi_metrics
    ]
    roi_names = list(dict.fromkeys(name for name in metric_rois if name is not None))
    # An ROI asked only for its volume is sampled for its volume alone (plan_sampling's volume_only), and keeps no
    # curve; but not Vr's own ROI, which is sampled as Vr is (its volume and Vr's one number in a record).
    with_dose = {name for m, name in zip(roi_metrics, metric_rois) if name is not None and m.metric.needs_dose}
    if follow_up is None:
        with_dose.add(vr_structure.name)
    volume_only = tuple(name for name in roi_names if name not in with_dose)
    roi_structures: list[Structure] = []
    if roi_names:
        made = [
            dvh_request(dose, structures, names, options=options, volume_only=alone)
            for names, alone in (([name for name in roi_names if name in with_dose], False), (list(volume_only), True))
            if names
        ]
        roi_structures = [s for selected, _ in made for s in selected]
        requests.append(SamplingRequest(merge_plans([request.plan for _, request in made]), dose))
    if case.targets is None:
        target_structures = [
            s for s in structures.structures if s.is_target and not s.is_empty and s is not vr_structure
        ]
        if not target_structures:
            log.warning(
                "%s: no GTV, CTV, ITV or PTV with contours among the planning ROIs (by RTROIInterpretedType, else by "
                "the start of the name): no target can hold the recurrence's centroid, so the point-of-origin class "
                "is in-field or out-field only; name the targets (--target ROI)",
                structures.source or "the planning structures",
            )
    else:
        target_structures = [
            structures.get(name)
            for name in case.targets
            if _target_roi(structures, name, "a target of the point-of-origin method", case.require_targets) is not None
        ]
    spacing_mm = common_plane_spacing_mm(structures.structures)
    targets = Targets.of(
        [
            (
                s.name,
                s.mask if s.mask is not None else PackedPlanes.of(structure_planes(s), options.end_cap, spacing_mm),
            )
            for s in target_structures
        ]
    )
    # The grid's dose range, scanned here once (where cases are read, in a cohort run), not where they are sampled;
    # and the grid's extremes inside each structure and at its contours' vertices (for Dmin and Dmax), taken here
    # too, on the host.
    dose_range = dose_range_gy(dose)
    requests = [r.with_dose_range(dose_range) for r in requests]
    if options.extremes == "vertices":
        requests = [
            r.with_grid_extremes().with_vertex_extremes() if isinstance(r, SamplingRequest) else r for r in requests
        ]
    return PreparedRecurrence(
        dose,
        float(prescription_gy),
        criteria,
        options,
        tuple(requests),
        RoiLabel.of(vr_structure),
        registered,
        tuple(RoiLabel.of(s) for s in roi_structures),
        tuple(zip(roi_metrics, metric_rois)),
        tuple(vr_metrics),
        targets,
        registration_kind=kind,
        registration_file=(registration.source if registration is not None and kind else ""),
        uncertainty=uncertainty,
        volume_only=volume_only,
    )


def _uncertainty_plan(
    vr: Structure, structures: StructureSet, dose: DoseGrid, uncertainty: Uncertainty, options: SamplingOptions
):
    """Vr's sampling plan for its draws: about ``uncertainty.samples`` points in all (in-plane cells times the
    slabs each plane is cut into, half the dose grid's finest spacing thick), with four times the scanlines."""
    spacing = common_plane_spacing_mm(structures.structures) or dose.spacing_mm[2]
    slabs = max(1, math.ceil(spacing / (0.5 * min(dose.spacing_mm)) - 1e-9))
    coarse = replace(
        options,
        target_cells=max(16, uncertainty.samples // slabs),
        scanline_cells=None,
        scanlines=options.scanlines * 4,
        supersampling=None,
    )
    return plan_sampling([vr], dose, coarse, common_plane_spacing_mm(structures.structures))


def _sampled_dvhs(prepared: PreparedRecurrence, samples: Sequence[StructureSamples]) -> tuple[DVH, dict[str, DVH]]:
    """Vr's DVH and those of the ROIs of the target metrics, from one case's samples (one per request)."""
    [vr] = dvhs_from_samples([prepared.vr], samples[0])
    roi_dvhs = {d.name: d for d in dvhs_from_samples(prepared.rois, samples[1])} if prepared.rois else {}
    return vr, roi_dvhs


def _finish(
    prepared: PreparedRecurrence, vr: DVH, roi_dvhs: dict[str, DVH], centroid_dose: float, samples: StructureSamples
) -> RecurrenceResult:
    """Classify one case from its DVHs and the dose at Vr's centroid."""
    criteria = prepared.criteria
    prescription_gy = prepared.prescription_gy
    if vr.volume_cc <= 0 and vr.volume_outside_dose_cc <= 0:  # never a class for a recurrence of no volume
        raise StructureError(
            "encloses no volume: its contours have no area (all points equal, or a polygon that doubles back on "
            "itself), so there is no recurrence to classify",
            obj=f"the recurrence ROI {vr.name!r}",
        )
    isodose_gy = criteria.isodose_pct / 100.0 * prescription_gy
    inside_cc = float(vr.volume_at_dose_cc(isodose_gy)) if vr.has_dose else 0.0
    # A share, so never above 100% (the volume at the isodose and Vr's volume are sums of the same samples, and may
    # differ in their last bit).
    inside_pct = min(100.0, 100.0 * inside_cc / vr.volume_cc) if vr.volume_cc > 0 else 0.0

    centroid = _centroid(vr)
    holding = prepared.targets.holding(centroid)
    metric_values = {m.text: float(vr.metric(m, prescription_gy)) for m in prepared.vr_metrics}
    target_values = {
        m.text: float(roi_dvhs[roi].metric(m.metric, prescription_gy)) if roi is not None else math.nan
        for m, roi in prepared.roi_metrics
    }
    return RecurrenceResult(
        recurrence_roi=vr.name,
        prescription_gy=float(prescription_gy),
        isodose_gy=isodose_gy,
        registered=prepared.registered,
        recurrence_volume_cc=vr.volume_cc,
        recurrence_outside_dose_cc=vr.volume_outside_dose_cc,
        inside_isodose_pct=inside_pct,
        class_volume=criteria.volume_class(inside_pct),
        centroid_mm=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
        centroid_dose_gy=centroid_dose,
        centroid_targets=holding,
        class_centroid=criteria.centroid_class(centroid_dose, prescription_gy, bool(holding)),
        metrics=metric_values,
        target_metrics=target_values,
        recurrence_dvh=vr,
        registration_kind=prepared.registration_kind,
        registration_file=prepared.registration_file,
        registration_residual_mm=samples.inversion_residual_mm,
        roi_dvhs={name: d for name, d in roi_dvhs.items() if name not in prepared.volume_only},
        backend=samples.backend,
        device=samples.device,
    )


def _centroid(vr: DVH) -> np.ndarray:
    """Vr's volume centroid (x, y, z) in the dose grid's frame, mm; NaN for an empty Vr."""
    return np.array(vr.centroid_mm if vr.centroid_mm is not None else (math.nan,) * 3, dtype=np.float64)


def classify_recurrence(
    dose: DoseGrid,
    structures: StructureSet | Sequence[Structure],
    recurrence_roi: str,
    prescription_gy: float,
    *,
    recurrence_structures: StructureSet | None = None,
    registration: Registration | DeformableRegistration | None = None,
    targets: Sequence[str] | None = None,
    metrics: Sequence[str | Metric] = (),
    target_metrics: Sequence[str | RoiMetric] = (),
    criteria: Criteria | None = None,
    require_targets: bool = False,
    uncertainty: Uncertainty | None = None,
    options: SamplingOptions | None = None,
    backend: str | Backend | None = None,
) -> RecurrenceResult:
    """Classify one recurrence by both methods and report its metrics.

    Parameters
    ----------
    dose : DoseGrid
        The planning dose, Gy.
    structures : StructureSet or sequence of Structure
        The planning structures, in the dose's frame of reference.
    recurrence_roi : str
        Vr's ROI name: in ``recurrence_structures`` when given, else in ``structures``.
    prescription_gy : float
        The prescription, Gy: the reference isodose is a percentage of it.
    recurrence_structures : StructureSet, optional
        A structure set drawn on follow-up imaging, in another frame, holding Vr.
    registration : Registration or DeformableRegistration, optional
        The registration relating the follow-up frame to the planning frame: rigid (a Spatial Registration), or
        deformable (a Deformable Spatial Registration, or a displacement field image): see
        :mod:`isodose.deformation` for how Vr is mapped through a deformation.
    targets : sequence of str, optional
        The ROIs tested for holding the centroid (default: every GTV, CTV and PTV of the planning set).
    metrics : sequence of str or Metric
        Extra metrics of Vr.
    target_metrics : sequence of str or RoiMetric
        ``ROI:METRIC`` of planning ROIs, e.g. ``CTV60:D98``, ``GTV:volume``.
    criteria : Criteria, optional
        The isodose level and thresholds (default 95%; in-field from 95%, marginal from 20%).
    require_targets : bool
        Refuse a case whose target metrics or targets name an ROI the planning set lacks; by default the case is
        classified all the same, those metrics null, with a warning naming the ROI.
    uncertainty : Uncertainty, optional
        Registration errors to classify the case under as well (``result.uncertainty``): the probability of each
        class, percentiles, stability (see :mod:`isodose.uncertainty`).
    options : SamplingOptions, optional
        How finely the structures are sampled.
    backend : str or Backend, optional
        The backend (see :func:`isodose.resolve_backend`).

    Returns
    -------
    RecurrenceResult
        Both classes, the share inside the isodose, the centroid, the metrics and the warnings.

    Raises
    ------
    IsodoseError
        For a missing ROI, a prescription that is not a positive dose, frames that differ without a
        registration, or a registration that does not relate them.

    Examples
    --------
    >>> from isodose.phantoms import example_case
    >>> dose, structures = example_case()
    >>> result = classify_recurrence(dose, structures, "Recurrence", 70.0, criteria=Criteria(isodose_pct=80))
    >>> result.isodose_gy, result.class_volume
    (56.0, 'in-field')
    """
    case = RecurrenceCase(
        dose,
        structures,
        recurrence_roi,
        prescription_gy,
        recurrence_structures,
        registration,
        targets,
        metrics,
        target_metrics,
        criteria,
        require_targets,
        uncertainty,
    )
    [result] = classify_recurrences([case], options=options, backend=backend)
    if isinstance(result, Exception):
        raise result
    return result


def classify_recurrences(
    cases: Sequence[RecurrenceCase],
    *,
    options: SamplingOptions | None = None,
    backend: str | Backend | None = None,
) -> list[RecurrenceResult | IsodoseError]:
    """Classify many recurrences, sampling them together: on the GPU, all the cases' structures go through
    one merged plan (see :func:`isodose.sampling.sample_many`).

    Parameters
    ----------
    cases : sequence of RecurrenceCase
        The cases.
    options : SamplingOptions, optional
        How finely the structures are sampled (the same for every case).
    backend : str or Backend, optional
        The backend (see :func:`isodose.resolve_backend`).

    Returns
    -------
    list of RecurrenceResult or IsodoseError
        For each case its result, or the error that stopped it (with the case's warnings in its ``warnings``):
        one bad case never stops the others. The results are those of :func:`classify_recurrence` case by case.

    Examples
    --------
    >>> from isodose.phantoms import example_case
    >>> dose, structures = example_case()
    >>> cases = [RecurrenceCase(dose, structures, "Recurrence", 70.0), RecurrenceCase(dose, structures, "GTV", 70.0)]
    >>> good, bad = classify_recurrences(cases)
    >>> good.class_volume, type(bad).__name__
    ('marginal', 'RoiNotFoundError')
    """
    options = options or SamplingOptions()
    return classify_prepared([prepare_recurrence(case, options) for case in cases], backend=backend)


def cropped_to_samples(prepared: PreparedRecurrence) -> PreparedRecurrence:
    """``prepared`` with its dose grid cut to the part its sampling reads, as :func:`batch_grids` cuts it for a
    backend that copies grids (the box of its requests' samples, one voxel more each side): what a reading worker
    hands to the process driving a GPU, so that the rest of the grid is neither written to shared memory nor freed
    by that process (a head-and-neck grid is some 19 MB, the box of a recurrence and its targets a few percent of
    it). The same case where its grid is read elsewhere too (draws of uncertainty, a deformation) or where nothing
    is sampled."""
    requests = prepared.requests
    if prepared.uncertainty is not None or not all(
        isinstance(r, SamplingRequest) and r.grid is prepared.dose for r in requests
    ):
        return prepared
    box = union_box([r.extent_mm() for r in requests])  # type: ignore[union-attr]
    if box is None:
        return prepared
    grid = cropped_grid(prepared.dose, crop_window(prepared.dose, *box))
    if grid is prepared.dose:
        return prepared
    # What the requests' vertices were needed for where they are sampled (their doses' extremes) is known by now.
    moved = [r.on_crop(grid) for r in requests]  # type: ignore[union-attr]
    kept = tuple(r.without_vertices() if r.known(r.known_vertex_extremes) is not None else r for r in moved)
    return replace(prepared, dose=grid, requests=kept, grid_cropped=True)


def batch_grids(prepared: Sequence[PreparedRecurrence | IsodoseError], backend: Backend) -> GridBatch:
    """The dose grids of prepared cases put where ``backend`` computes, as :func:`classify_prepared` reads them.

    Each grid is cropped to the box of its requests' samples, unless a case reads it elsewhere too: through a
    deformation (its samples are placed only while sampling) or in its draws of uncertainty; a grid cropped already
    (:func:`cropped_to_samples`) is used as it is. On a GPU the copy overlaps what the device is computing
    meanwhile: a caller may put the next batch's grids there first."""
    ready = [p for p in prepared if isinstance(p, PreparedRecurrence)]
    extents = [
        r.extent_mm() if isinstance(r, SamplingRequest) and p.uncertainty is None and not p.grid_cropped else None
        for p in ready
        for r in p.requests
    ]
    return GridBatch.of([r.grid for p in ready for r in p.requests], backend, extents)


def classify_prepared(
    prepared: Sequence[PreparedRecurrence | IsodoseError],
    *,
    backend: str | Backend | None = None,
    grids: GridBatch | None = None,
) -> list[RecurrenceResult | IsodoseError]:
    """:func:`classify_recurrences` of cases already prepared (by :func:`prepare_recurrence`, here or in other
    processes): their samples in one :func:`~isodose.sampling.sample_many`, then each case finished. Errors
    from preparing come back as they are. ``grids`` are the cases' grids as :func:`batch_grids` put them on the
    backend, when the caller has done that already."""
    chosen = resolve_backend(backend)
    results: list[RecurrenceResult | IsodoseError | None] = [
        p if isinstance(p, IsodoseError) else None for p in prepared
    ]
    ready = {i: p for i, p in enumerate(prepared) if isinstance(p, PreparedRecurrence)}
    warnings = {i: list(p.warnings) for i, p in ready.items()}
    requests = [r for p in ready.values() for r in p.requests]
    options = next(iter(ready.values())).options if ready else SamplingOptions()
    if any(p.options != options for p in ready.values()):
        raise IsodoseError("cases sampled together need the same sampling options")
    # The cases' grids go where the backend computes once, for their samples and for the doses at their centroids.
    batch = grids if grids is not None else batch_grids(prepared, chosen)
    try:
        samples = sample_requests(requests, chosen, options, grids=batch)
    except IsodoseError:
        if len(ready) <= 1:
            raise
        samples = None  # one case's failure (memory for one plane, say): sample the cases one by one
    sampled: dict[int, tuple[list[StructureSamples], DVH, dict[str, DVH]]] = {}
    position = 0
    for i, p in ready.items():
        with collect_warnings() as messages:
            try:
                if samples is None:
                    case_samples = sample_requests(p.requests, chosen, p.options, grids=batch)
                else:
                    case_samples = samples[position : position + len(p.requests)]
                    position += len(p.requests)
                sampled[i] = (case_samples, *_sampled_dvhs(p, case_samples))
            except IsodoseError as exc:
                results[i] = exc
        warnings[i] += messages
    # The dose at every case's centroid, in one call.
    order = list(sampled)
    centroids = np.array([_centroid(sampled[i][1]) for i in order]).reshape(-1, 3)
    centroid_doses = batch.dose_at(centroids, np.array([batch.index(ready[i].requests[0].grid) for i in order]))
    for i, centroid_dose in zip(order, centroid_doses):
        case_samples, vr, roi_dvhs = sampled[i]
        with collect_warnings() as messages:
            try:
                results[i] = _finish(ready[i], vr, roi_dvhs, float(centroid_dose), case_samples[0])
            except IsodoseError as exc:
                results[i] = exc
        warnings[i] += messages
    _with_uncertainty(ready, results, warnings, chosen, batch)
    finished: list[RecurrenceResult | IsodoseError] = []
    for i, result in enumerate(results):
        assert result is not None  # every case is prepared, failed or finished by now
        if i in ready and isinstance(result, RecurrenceResult):
            result = replace(result, warnings=tuple(warnings[i]))
        elif i in ready and isinstance(result, IsodoseError):  # a failed case keeps the warnings logged on its way
            result.warnings = tuple(warnings[i])
        finished.append(result)
    return finished


def _with_uncertainty(
    ready: dict[int, PreparedRecurrence],
    results: list[RecurrenceResult | IsodoseError | None],
    warnings: dict[int, list[str]],
    backend: Backend,
    batch: GridBatch,
) -> None:
    """The draws of every classified case that asked for them, in one call of the kernels; their results replace
    the cases' own (a failure of the draws fails the case, with its reason)."""
    chosen = [i for i, p in ready.items() if p.uncertainty is not None and isinstance(results[i], RecurrenceResult)]
    if not chosen:
        return

    def volume_class(criteria: Criteria):
        return lambda share: np.where(share >= criteria.in_field_pct, 0, np.where(share >= criteria.marginal_pct, 1, 2))

    def centroid_class(criteria: Criteria, prescription_gy: float):
        level = criteria.centroid_isodose_pct / 100.0 * prescription_gy
        return lambda dose, in_target: np.where(np.isfinite(dose) & (dose >= level), 0, np.where(in_target, 1, 2))

    with collect_warnings() as messages:
        try:
            drawn = classify_draws(
                [ready[i].uncertainty for i in chosen],  # type: ignore[misc]
                [results[i] for i in chosen],
                [ready[i].targets for i in chosen],
                [volume_class(ready[i].criteria) for i in chosen],
                [centroid_class(ready[i].criteria, ready[i].prescription_gy) for i in chosen],
                backend,
                batch,
            )
        except IsodoseError as exc:
            for i in chosen:
                results[i] = IsodoseError(f"the draws of its uncertainty failed: {exc}")
            return
    for i, outcome in zip(chosen, drawn):
        result = results[i]
        assert isinstance(result, RecurrenceResult)
        results[i] = replace(result, uncertainty=outcome)
        warnings[i] += messages
