"""Dose-volume histograms and their metrics.

A :class:`DVH` holds the cumulative curve exactly as it was accumulated: a piecewise-linear function of
dose, knotted at the histogram's bin edges and at Dmin and Dmax. Metrics are read off that curve by
linear interpolation, never from the nearest bin.

Metric grammar (one parser for the API, the CLI and cohorts; letters are case-insensitive):

==============  ====================================================================  ======
``D95``         dose (Gy) received by the hottest 95% of the volume (``D95%`` too)    Gy
``D2cc``        dose (Gy) received by the hottest 2 cc (``D0.03cc``...)               Gy
``V20Gy``       share of the volume receiving at least 20 Gy                          %
``V20Gy_cc``    volume receiving at least 20 Gy                                       cc
``V95%``        share of the volume receiving at least 95% of the prescription        %
``V95%_cc``     volume receiving at least 95% of the prescription                     cc
``Dmean``       mean dose; ``Dmin`` and ``Dmax`` likewise                             Gy
``HI``          homogeneity index (D2 - D98) / D50 (ICRU 83)
``volume``      the structure's whole volume                                          cc
==============  ====================================================================  ======

Where a metric belongs to a named ROI (the target metrics of a recurrence study), it is written
``ROI:METRIC``, for example ``CTV60:D98`` or ``GTV:volume`` (:func:`parse_roi_metric`).

Relative volumes are relative to the part of the structure inside the dose grid; the part outside is
reported as ``volume_outside_dose_cc`` and takes no part in any dose statistic.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .dispatch import Backend, resolve_backend
from .errors import FrameOfReferenceError, MetricError
from .formatting import json_number
from .geometry import check_dose_grid, check_rigid, common_plane_spacing_mm, structure_warnings
from .model import DoseGrid, Structure, StructureSet, xyz
from .sampling import SamplingRequest, StructureSamples, sample_many
from .voxelize import SamplingOptions, plan_sampling

log = logging.getLogger(__name__)

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DOSE_AT_VOLUME = re.compile(rf"^D{_NUMBER}(%|CC)?$", re.IGNORECASE)
_VOLUME_AT_DOSE = re.compile(rf"^V{_NUMBER}(GY|%)(_CC)?$", re.IGNORECASE)
_STATISTICS = {"DMEAN": "mean", "DMIN": "min", "DMAX": "max", "VOLUME": "volume"}


@dataclass(frozen=True)
class Metric:
    """A parsed metric (see :func:`parse_metric`).

    Attributes
    ----------
    text : str
        The metric as given (results are keyed by it).
    kind : str
        ``dose_at_volume`` (D95, D2cc), ``volume_at_dose`` (V20Gy, V95%_cc), ``statistic`` (Dmean, volume) or
        ``hi``.
    value : float
        The number in the text (NaN for statistics).
    volume_unit : str
        ``pct`` (of the volume inside the dose grid) or ``cc``: of the volume given (D metrics) or of the result
        (V metrics).
    dose_unit : str
        For V metrics, the threshold's unit: ``gy``, or ``pct_rx`` (% of the prescription).
    statistic : str
        For statistics: ``mean``, ``min``, ``max`` or ``volume``.

    Examples
    --------
    >>> parse_metric("V95%_cc")
    Metric(text='V95%_cc', kind='volume_at_dose', value=95.0, volume_unit='cc', dose_unit='pct_rx', statistic='')
    """

    text: str
    kind: str
    value: float = math.nan
    volume_unit: str = ""
    dose_unit: str = ""
    statistic: str = ""

    @property
    def result_unit(self) -> str:
        """The unit of the metric's value: ``Gy``, ``%``, ``cc``, or "" (HI)."""
        if self.kind == "dose_at_volume":
            return "Gy"
        if self.kind == "volume_at_dose":
            return "cc" if self.volume_unit == "cc" else "%"
        if self.kind == "statistic":
            return "cc" if self.statistic == "volume" else "Gy"
        return ""

    @property
    def needs_prescription(self) -> bool:
        """Whether the metric's value depends on the prescription (V95%)."""
        return self.kind == "volume_at_dose" and self.dose_unit == "pct_rx"


def parse_metric(text: str) -> Metric:
    """Parse one metric string of the grammar in the module docstring.

    Parameters
    ----------
    text : str
        ``D95``, ``D95%``, ``D2cc``, ``V20Gy``, ``V20Gy_cc``, ``V95%``, ``V95%_cc``, ``Dmean``, ``Dmin``, ``Dmax``,
        ``HI`` or ``volume`` (letters in any case).

    Returns
    -------
    Metric
        The parsed metric, its ``text`` as given.

    Raises
    ------
    MetricError
        For anything outside the grammar, or a volume percentage outside 0 to 100.

    Examples
    --------
    >>> m = parse_metric("d2cc")
    >>> m.kind, m.value, m.volume_unit
    ('dose_at_volume', 2.0, 'cc')
    """
    spec = text.strip()
    upper = spec.upper()
    if upper in _STATISTICS:
        return Metric(spec, "statistic", statistic=_STATISTICS[upper])
    if upper == "HI":
        return Metric(spec, "hi")
    match = _DOSE_AT_VOLUME.match(spec)
    if match:
        value = float(match.group(1))
        unit = "cc" if (match.group(2) or "").upper() == "CC" else "pct"
        if unit == "pct" and not 0.0 <= value <= 100.0:
            raise MetricError(f"{spec}: a volume percentage must lie between 0 and 100", obj="metric")
        return Metric(spec, "dose_at_volume", value, volume_unit=unit)
    match = _VOLUME_AT_DOSE.match(spec)
    if match:
        dose_unit = "gy" if match.group(2).upper() == "GY" else "pct_rx"
        volume_unit = "cc" if match.group(3) else "pct"
        return Metric(spec, "volume_at_dose", float(match.group(1)), volume_unit=volume_unit, dose_unit=dose_unit)
    raise MetricError(
        f"unknown metric {text!r}; expected D95, D95%, D2cc, V20Gy, V20Gy_cc, V95%, V95%_cc, Dmean, Dmin, "
        "Dmax, HI or volume",
        obj="metric",
    )


def parse_metrics(texts: Iterable[str]) -> list[Metric]:
    return [parse_metric(t) for t in texts]


@dataclass(frozen=True)
class RoiMetric:
    """A metric of a named ROI: ``text`` is ``ROI:METRIC`` as given."""

    text: str
    roi: str
    metric: Metric


def parse_roi_metric(text: str) -> RoiMetric:
    """Parse ``ROI:METRIC`` (the ROI name may itself hold colons; the metric follows the last one)."""
    roi, colon, metric = text.strip().rpartition(":")
    if not colon or not roi.strip():
        raise MetricError(f"{text!r} is not ROI:METRIC (for example CTV60:D98 or GTV:volume)", obj="metric")
    return RoiMetric(text.strip(), roi.strip(), parse_metric(metric))


@dataclass(frozen=True, eq=False)
class DVH:
    """The dose-volume histogram of one structure.

    ``dose_gy`` (increasing, from Dmin to Dmax) and ``cumulative_cc`` (volume receiving at least that
    dose, non-increasing) are the knots of the piecewise-linear cumulative DVH; metrics are interpolated on it.

    Attributes
    ----------
    name : str
        The structure's name.
    volume_cc : float
        Its whole volume, cc, inside the dose grid and out.
    volume_outside_dose_cc : float
        The part of it outside the dose grid, cc: left out of every dose statistic.
    dmin_gy, dmean_gy, dmax_gy : float
        Minimum, mean and maximum dose over the part inside the grid, Gy (NaN for an empty structure).
    dose_gy, cumulative_cc : numpy.ndarray
        The knots of the cumulative curve: doses (Gy) and the volume (cc) receiving at least each.
    backend : str
        The backend that computed it.
    number : int or None
        The structure's ROI number.
    centroid_mm : tuple of float or None
        The volume centroid ``(x, y, z)``, mm, in the dose grid's frame; None for an empty structure.
    warnings : tuple of str
        What was warned about this structure while it was sampled: contours repeated in their plane or crossing
        themselves, part of it outside the dose grid, no contours.

    Examples
    --------
    >>> from isodose.phantoms import example_case
    >>> dose, structures = example_case()
    >>> [ptv] = compute_dvhs(dose, structures, ["PTV"])
    >>> round(ptv.volume_cc, 2), round(ptv.dmean_gy, 2)
    (14.21, 70.0)
    >>> round(ptv.metric("V95%", prescription_gy=70.0), 1)
    67.3
    """

    name: str
    volume_cc: float
    volume_outside_dose_cc: float
    dmin_gy: float
    dmean_gy: float
    dmax_gy: float
    dose_gy: np.ndarray
    cumulative_cc: np.ndarray
    backend: str = ""
    number: int | None = None
    #: Volume centroid (x, y, z) in the dose grid's frame, mm; None when the structure is empty.
    centroid_mm: tuple[float, float, float] | None = None
    #: What was warned about this structure: its contours (repeated, crossing), the dose grid not reaching it.
    warnings: tuple[str, ...] = ()

    @property
    def dose_volume_cc(self) -> float:
        """The volume inside the dose grid: the 100% of every relative metric."""
        return float(self.cumulative_cc[0]) if len(self.cumulative_cc) else 0.0

    @property
    def has_dose(self) -> bool:
        return self.dose_volume_cc > 0

    # -- the curve ------------------------------------------------------------------------------------
    def volume_at_dose_cc(self, dose_gy: float | np.ndarray) -> float | np.ndarray:
        """Volume (cc) receiving at least ``dose_gy``."""
        d = np.asarray(dose_gy, dtype=np.float64)
        if not self.has_dose:
            return np.full(d.shape, np.nan)[()] if d.ndim else math.nan
        total = self.dose_volume_cc
        if self.dmax_gy - self.dmin_gy <= 0:
            out = np.where(d <= self.dmax_gy, total, 0.0)
        else:
            out = np.interp(d, self.dose_gy, self.cumulative_cc, left=total, right=0.0)
            out = np.where(d > self.dmax_gy, 0.0, out)
        return float(out) if out.ndim == 0 else out

    def dose_at_volume_cc(self, volume_cc: float) -> float:
        """Minimum dose (Gy) of the hottest ``volume_cc``; NaN when the structure is smaller than that."""
        if not self.has_dose:
            return math.nan
        if volume_cc <= 0:
            return self.dmax_gy
        if volume_cc > self.dose_volume_cc * (1 + 1e-12):
            return math.nan
        c = self.cumulative_cc
        # The last knot still receiving at least volume_cc: where the curve crosses it, at its hottest.
        i = int(np.searchsorted(-c, -volume_cc, side="right")) - 1
        i = max(i, 0)
        if i >= len(c) - 1:
            return float(self.dose_gy[-1])
        drop = c[i] - c[i + 1]
        fraction = (c[i] - volume_cc) / drop if drop > 0 else 0.0
        return float(self.dose_gy[i] + fraction * (self.dose_gy[i + 1] - self.dose_gy[i]))

    def dose_at_percent(self, percent: float) -> float:
        return self.dose_at_volume_cc(percent / 100.0 * self.dose_volume_cc)

    def dose_steps_gy(self, step_gy: float) -> np.ndarray:
        """Doses from 0 Gy by ``step_gy`` up to the first step above Dmax: where stored curves are sampled."""
        top = self.dmax_gy if self.has_dose else 0.0
        return step_gy * np.arange(int(math.floor(top / step_gy)) + 2)

    def cumulative(self, dose_gy: np.ndarray, relative: bool = False) -> np.ndarray:
        """Cumulative DVH at the given doses, in cc or (``relative``) in % of the volume inside the grid."""
        v = np.asarray(self.volume_at_dose_cc(np.asarray(dose_gy, dtype=np.float64)), dtype=np.float64)
        return 100.0 * v / self.dose_volume_cc if relative else v

    def differential(self, bin_edges_gy: np.ndarray, relative: bool = False) -> np.ndarray:
        """Volume (cc, or %) receiving a dose in each bin ``[edge_i, edge_i+1)``."""
        c = self.cumulative(bin_edges_gy, relative)
        return c[:-1] - c[1:]

    # -- metrics ----------------------------------------------------------------------------------------
    def metric(self, metric: Metric | str, prescription_gy: float | None = None) -> float:
        """The value of one metric (Gy, % or cc as the grammar says; NaN when undefined)."""
        m = parse_metric(metric) if isinstance(metric, str) else metric
        if m.needs_prescription and not (prescription_gy and prescription_gy > 0):
            raise MetricError(f"{m.text} needs a prescription dose, and none was given", obj=self.name)
        if m.kind == "statistic" and m.statistic == "volume":
            return self.volume_cc
        if not self.has_dose:
            return math.nan
        if m.kind == "statistic":
            return {"mean": self.dmean_gy, "min": self.dmin_gy, "max": self.dmax_gy}[m.statistic]
        if m.kind == "hi":
            d50 = self.dose_at_percent(50.0)
            return (self.dose_at_percent(2.0) - self.dose_at_percent(98.0)) / d50 if d50 > 0 else math.nan
        if m.kind == "dose_at_volume":
            return self.dose_at_percent(m.value) if m.volume_unit == "pct" else self.dose_at_volume_cc(m.value)
        threshold = m.value if m.dose_unit == "gy" else m.value / 100.0 * float(prescription_gy or 0.0)
        volume = float(self.volume_at_dose_cc(threshold))
        return volume if m.volume_unit == "cc" else 100.0 * volume / self.dose_volume_cc

    def metrics(self, metrics: Iterable[Metric | str], prescription_gy: float | None = None) -> dict[str, float]:
        """The values of several metrics, keyed by their text as given."""
        parsed = [parse_metric(m) if isinstance(m, str) else m for m in metrics]
        return {m.text: self.metric(m, prescription_gy) for m in parsed}

    def to_dict(self, metrics: Iterable[Metric | str] = (), prescription_gy: float | None = None) -> dict[str, Any]:
        """The DVH as the JSON of ``isodose dvh`` holds it: keys with units, numbers rounded to 1e-6, None where a
        value does not exist (NaN), and the ``metrics`` asked for, keyed by their text."""
        values = self.metrics(metrics, prescription_gy)
        return {
            "name": self.name,
            "number": self.number,
            "volume_cc": json_number(self.volume_cc),
            "volume_outside_dose_cc": json_number(self.volume_outside_dose_cc),
            "dmin_gy": json_number(self.dmin_gy),
            "dmean_gy": json_number(self.dmean_gy),
            "dmax_gy": json_number(self.dmax_gy),
            "metrics": {text: json_number(value) for text, value in values.items()},
            "warnings": list(self.warnings),
        }


def _empty_dvh(
    name: str,
    number: int | None,
    volume_cc: float,
    outside_cc: float,
    backend: str,
    centroid_mm: tuple[float, float, float] | None,
) -> DVH:
    return DVH(
        name,
        volume_cc,
        outside_cc,
        math.nan,
        math.nan,
        math.nan,
        np.zeros(0),
        np.zeros(0),
        backend,
        number,
        centroid_mm,
    )


def dvh_from_histogram(
    name: str,
    hist_mm3: np.ndarray,
    bin_width_gy: float,
    inside_mm3: float,
    outside_mm3: float,
    dose_volume_sum: float,
    dmin_gy: float,
    dmax_gy: float,
    backend: str = "",
    number: int | None = None,
    centroid_mm: tuple[float, float, float] | None = None,
) -> DVH:
    """Build a DVH from an accumulated histogram and the exact sums of its samples.

    The histogram's mass outside [Dmin, Dmax] (the spread of samples at the extremes) is folded into the
    bins holding Dmin and Dmax, and the bins holding them are cut at Dmin and Dmax, so that the curve
    starts at exactly Dmin and ends at exactly Dmax.
    """
    volume_cc = float(inside_mm3 + outside_mm3) / 1000.0
    outside_cc = float(outside_mm3) / 1000.0
    if not inside_mm3 > 0 or not math.isfinite(dmin_gy) or not math.isfinite(dmax_gy):
        return _empty_dvh(name, number, volume_cc, outside_cc, backend, centroid_mm)
    n_bins = len(hist_mm3)
    mass = np.clip(np.asarray(hist_mm3, dtype=np.float64), 0.0, None)
    k_lo = min(int(dmin_gy / bin_width_gy), n_bins - 1)
    k_hi = min(int(dmax_gy / bin_width_gy), n_bins - 1)
    folded = mass[k_lo : k_hi + 1].copy()
    folded[0] += mass[:k_lo].sum()
    folded[-1] += mass[k_hi + 1 :].sum()
    total = folded.sum()
    scale = inside_mm3 / total if total > 0 else 0.0
    inner_edges = bin_width_gy * np.arange(k_lo + 1, k_hi + 1)
    dose = np.concatenate([[dmin_gy], inner_edges, [dmax_gy]])
    below = np.concatenate([[0.0], np.cumsum(folded) * scale])
    below[-1] = inside_mm3
    cumulative_cc = (inside_mm3 - below) / 1000.0
    cumulative_cc[-1] = 0.0
    dmean = min(max(dose_volume_sum / inside_mm3, dmin_gy), dmax_gy)
    return DVH(
        name,
        volume_cc,
        outside_cc,
        float(dmin_gy),
        float(dmean),
        float(dmax_gy),
        dose,
        cumulative_cc,
        backend,
        number,
        centroid_mm,
    )


def check_frame_of_reference(dose: DoseGrid, structures: StructureSet) -> None:
    """Dose and structures must share their frame of reference (when both files name one)."""
    a, b = dose.frame_of_reference_uid, structures.frame_of_reference_uid
    if a and b and a != b:
        raise FrameOfReferenceError(
            f"frame of reference {b} differs from the dose's {a} ({dose.source or 'dose'}); "
            "map the structures with a registration first",
            path=structures.source or None,
        )


def _select_structures(
    structures: StructureSet | Sequence[Structure], rois: Sequence[str | int] | str | int | None
) -> list[Structure]:
    structure_set = structures if isinstance(structures, StructureSet) else StructureSet(tuple(structures))
    if rois is None:
        return list(structure_set.structures)
    if isinstance(rois, str | int):  # one ROI (a string would otherwise be taken letter by letter)
        rois = [rois]
    return [structure_set.get(r) for r in rois]


def dvh_request(
    dose: DoseGrid,
    structures: StructureSet | Sequence[Structure],
    rois: Sequence[str | int] | str | int | None = None,
    *,
    options: SamplingOptions | None = None,
    check_frame: bool = True,
    transform: np.ndarray | None = None,
) -> tuple[list[Structure], SamplingRequest]:
    """The chosen structures and their sampling request (what :func:`compute_dvhs` samples); for batching
    many cases into one :func:`isodose.sampling.sample_many`."""
    options = options or SamplingOptions()
    check_dose_grid(dose)
    if isinstance(structures, StructureSet) and check_frame and transform is None:
        check_frame_of_reference(dose, structures)
    selected = _select_structures(structures, rois)
    all_structures = structures.structures if isinstance(structures, StructureSet) else structures
    plan = plan_sampling(selected, dose, options, common_plane_spacing_mm(all_structures))
    transforms = None
    if transform is not None:
        matrix = check_rigid(transform, "the structures' transform")
        transforms = np.broadcast_to(matrix, (len(selected), 4, 4))
    return selected, SamplingRequest(plan, dose, transforms)


def compute_dvhs(
    dose: DoseGrid,
    structures: StructureSet | Sequence[Structure],
    rois: Sequence[str | int] | str | int | None = None,
    *,
    options: SamplingOptions | None = None,
    backend: str | Backend | None = None,
    check_frame: bool = True,
    transform: np.ndarray | None = None,
) -> list[DVH]:
    """DVHs of the chosen ROIs, in the order asked for.

    Parameters
    ----------
    dose : DoseGrid
        The dose, Gy.
    structures : StructureSet or sequence of Structure
        The structures; with a StructureSet, its frame of reference must be the dose's (unless ``transform``).
    rois : sequence of str or int, or str or int, optional
        ROI names (exact, else case-insensitive) or numbers, or one of them; all ROIs by default.
    options : SamplingOptions, optional
        How finely the structures are sampled (the defaults meet the Nelms 2015 bar).
    backend : str or Backend, optional
        ``auto``, ``numpy``, ``numba`` or ``cupy``, or a backend from :func:`isodose.resolve_backend`.
    check_frame : bool
        Whether to refuse structures in another frame of reference than the dose's.
    transform : numpy.ndarray, optional
        A rigid 4x4 matrix mapping the structures' coordinates (mm) into the dose grid's frame (from a spatial
        registration): the structures are sampled in their own frame and the samples moved, so no contour is
        re-sliced.

    Returns
    -------
    list of DVH
        One per ROI asked for.

    Raises
    ------
    RoiNotFoundError
        For an ROI the structure set does not hold.
    FrameOfReferenceError
        When the frames differ and no ``transform`` is given.

    Examples
    --------
    >>> from isodose.phantoms import example_case
    >>> dose, structures = example_case()
    >>> [cord] = compute_dvhs(dose, structures, ["Cord"])
    >>> round(cord.metric("D2cc"), 2), round(cord.volume_cc, 2)
    (nan, 1.51)
    """
    options = options or SamplingOptions()
    chosen_backend = resolve_backend(backend)
    selected, request = dvh_request(
        dose, structures, rois, options=options, check_frame=check_frame, transform=transform
    )
    [samples] = sample_many([request], chosen_backend, options)
    return dvhs_from_samples(selected, samples)


@dataclass(frozen=True)
class RoiLabel:
    """What a DVH takes from its structure once the structure is sampled: its name and number, whether it
    had contours, and the warnings its contours gave (a prepared case keeps these in place of the contours)."""

    name: str
    number: int | None
    is_empty: bool
    warnings: tuple[str, ...] = ()

    @classmethod
    def of(cls, structure: Structure) -> RoiLabel:
        return cls(structure.name, structure.number, structure.is_empty, structure_warnings(structure))


def _warnings_of(structure: Structure | RoiLabel) -> tuple[str, ...]:
    return structure.warnings if isinstance(structure, RoiLabel) else structure_warnings(structure)


def dvhs_from_samples(structures: Sequence[Structure | RoiLabel], samples: StructureSamples) -> list[DVH]:
    """The DVHs of sampled structures (or of their labels), in order."""
    dvhs = []
    for s, structure in enumerate(structures):
        centroid = samples.centroid_mm[s]
        dvh = dvh_from_histogram(
            structure.name,
            samples.hist_mm3[s],
            samples.bin_width_gy,
            samples.inside_mm3[s],
            samples.outside_mm3[s],
            samples.dose_volume_sum[s],
            samples.dmin_gy[s],
            samples.dmax_gy[s],
            samples.backend,
            structure.number,
            xyz(centroid) if np.all(np.isfinite(centroid)) else None,
        )
        messages = list(_warnings_of(structure))
        if structure.is_empty:
            messages.append(f"ROI {structure.name} has no contours: reported as empty")
        elif not dvh.has_dose:
            messages.append(f"ROI {structure.name} lies wholly outside the dose grid")
        elif dvh.volume_outside_dose_cc > 0:
            messages.append(
                f"ROI {structure.name}: {dvh.volume_outside_dose_cc:.3f} cc lie outside the dose grid and are left "
                "out of its dose statistics"
            )
        for message in messages[len(_warnings_of(structure)) :]:  # those of its contours were logged already
            log.warning("%s", message)
        dvhs.append(replace(dvh, warnings=tuple(messages)))
    return dvhs
