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

from .compiled import take_compiled
from .dispatch import Backend, resolve_backend
from .errors import DoseUnitsError, FrameOfReferenceError, MetricError
from .formatting import json_number
from .geometry import check_dose_grid, check_rigid, common_plane_spacing_mm, structure_warnings
from .model import RELATIVE_FRACTION_MAX, DoseGrid, ReportedDVH, Structure, StructureSet, xyz
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
    def needs_dose(self) -> bool:
        """Whether the metric's value depends on the dose: all but ``volume``."""
        return not (self.kind == "statistic" and self.statistic == "volume")

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
    cells, supersampling : int
        The in-plane cells its sampling chose (summed over its planes) and the cells per dose-voxel side (see
        :class:`~isodose.voxelize.SamplingOptions`); 0 where not known.

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
    #: The in-plane cells its sampling used (over all its planes) and its supersampling (cells per dose-voxel side);
    #: 0 where not known (a DVH read from a file, or made from a histogram).
    cells: int = 0
    supersampling: int = 0

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
        if volume_cc >= self.dose_volume_cc * (1 - 1e-12):
            return self.dmin_gy  # the whole volume receives at least Dmin: D100 is Dmin
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

    def compare(
        self,
        reference: DVH,
        metrics: Iterable[Metric | str] = (),
        prescription_gy: float | None = None,
        tolerance: Tolerance | None = None,
    ) -> DVHComparison:
        """This DVH against ``reference`` (a planning system's, another calculator's): volume, Dmin, Dmean, Dmax
        and ``metrics``, each difference in % of the reference's value, judged against ``tolerance``; and the
        largest gap between the two cumulative curves.

        Parameters
        ----------
        reference : DVH
            The DVH compared with (a :class:`PlanningSystemDVH`, say).
        metrics : iterable of Metric or str
            Metrics compared beside the volume and the dose statistics.
        prescription_gy : float, optional
            For metrics relative to the prescription (V95%).
        tolerance : Tolerance, optional
            When two values agree (3% by default, see :class:`Tolerance`).

        Returns
        -------
        DVHComparison

        Examples
        --------
        >>> from isodose.phantoms import example_case
        >>> from isodose.voxelize import SamplingOptions
        >>> dose, structures = example_case()
        >>> [half] = compute_dvhs(dose, structures, ["PTV"])
        >>> [none] = compute_dvhs(dose, structures, ["PTV"], options=SamplingOptions(end_cap="none"))
        >>> comparison = half.compare(none, ["D95"])
        >>> round(comparison.difference_pct["volume_cc"], 1), comparison.agrees
        (2.9, True)
        """
        tolerance = tolerance or Tolerance()
        parsed = [parse_metric(m) if isinstance(m, str) else m for m in metrics]
        units = {"volume_cc": "cc", "dmin_gy": "Gy", "dmean_gy": "Gy", "dmax_gy": "Gy"}
        units.update({m.text: m.result_unit for m in parsed})

        def values(dvh: DVH) -> dict[str, float]:
            out = {"volume_cc": dvh.volume_cc, "dmin_gy": dvh.dmin_gy, "dmean_gy": dvh.dmean_gy, "dmax_gy": dvh.dmax_gy}
            out.update(dvh.metrics(parsed, prescription_gy))
            return out

        this, other = values(self), values(reference)
        difference: dict[str, float] = {}
        within: dict[str, bool | None] = {}
        for key, unit in units.items():
            a, b = this[key], other[key]
            if not (math.isfinite(a) and math.isfinite(b)):
                difference[key], within[key] = math.nan, None
                continue
            difference[key] = 100.0 * (a - b) / abs(b) if b != 0 else (0.0 if a == b else math.nan)
            within[key] = tolerance.allows(a - b, b, unit)
        gap, at = _largest_curve_gap(self, reference)
        return DVHComparison(
            self.name,
            self.number,
            this,
            other,
            difference,
            within,
            gap,
            at,
            tuple(m.text for m in parsed),
            tolerance,
        )

    def to_reported(self, roi_number: int | None = None, bin_gy: float = 0.01) -> ReportedDVH:
        """This DVH as a planning system writes one in an RTDOSE's DVH Sequence: cumulative, in cc, bins of
        ``bin_gy`` from 0 Gy to past Dmax (each value the volume receiving at least the dose where its bin
        starts), with Dmin, Dmean and Dmax (for archives to audit, and to export isodose's DVHs).

        Examples
        --------
        >>> from isodose.phantoms import example_case
        >>> dose, structures = example_case()
        >>> [ptv] = compute_dvhs(dose, structures, ["PTV"])
        >>> item = ptv.to_reported()
        >>> item.dvh_type, len(item.values), round(float(item.values[0]), 2)
        ('CUMULATIVE', 8493, 14.21)
        """
        number = roi_number if roi_number is not None else self.number
        if number is None:
            raise MetricError("a DVH Sequence item needs the ROI's number", obj=self.name)
        top = self.dmax_gy if self.has_dose else 0.0
        n_bins = int(math.floor(top / bin_gy)) + 1
        starts = bin_gy * np.arange(n_bins)
        values = np.asarray(self.volume_at_dose_cc(starts), dtype=np.float64) if self.has_dose else np.zeros(n_bins)
        return ReportedDVH(
            roi_number=int(number),
            item=0,
            dvh_type="CUMULATIVE",
            dose_units="GY",
            dose_type="PHYSICAL",
            volume_units="CM3",
            dose_scaling=1.0,
            bin_widths=np.full(n_bins, bin_gy),
            values=values,
            minimum_dose=self.dmin_gy,
            mean_dose=self.dmean_gy,
            maximum_dose=self.dmax_gy,
        )

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
            "cells": self.cells,
            "supersampling": self.supersampling,
            "warnings": list(self.warnings),
        }


def _largest_curve_gap(a: DVH, b: DVH) -> tuple[float, float]:
    """The largest difference between two cumulative DVHs in % of each one's volume inside the dose grid, and the
    dose (Gy) where it lies. Both curves are piecewise linear, so the largest gap lies at a knot of one of them."""
    if not (a.has_dose and b.has_dose):
        return math.nan, math.nan
    doses = np.union1d(a.dose_gy, b.dose_gy)
    gaps = np.abs(a.cumulative(doses, relative=True) - b.cumulative(doses, relative=True))
    k = int(np.argmax(gaps))
    return float(gaps[k]), float(doses[k])


@dataclass(frozen=True)
class Tolerance:
    """When a value agrees with its reference: a difference of at most ``percent`` % of the reference's value, or
    of that share of a floor where the value is small (a dose near 0 Gy, a sliver of volume), so that a Dmin of
    0.02 Gy against 0.01 Gy is not a disagreement of 100%.

    Parameters
    ----------
    percent : float
        The tolerance, % of the reference value (3 by default).
    dose_floor_gy : float
        Doses are judged against at least this (Gy).
    volume_floor_cc : float
        Volumes in cc are judged against at least this.
    volume_floor_pct : float
        Volumes in % are judged against at least this (percentage points).
    index_floor : float
        Dimensionless values (HI) are judged against at least this.

    Examples
    --------
    >>> Tolerance().allows(0.02, 0.5, "Gy")  # 0.02 Gy is within 3% of the 1 Gy floor
    True
    >>> Tolerance().allows(2.5, 60.0, "Gy")
    False
    """

    percent: float = 3.0
    dose_floor_gy: float = 1.0
    volume_floor_cc: float = 0.1
    volume_floor_pct: float = 1.0
    index_floor: float = 0.1

    def __post_init__(self) -> None:
        for name in ("percent", "dose_floor_gy", "volume_floor_cc", "volume_floor_pct", "index_floor"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise MetricError(f"tolerance {name} must be a number of at least 0, not {value!r}", obj="tolerance")

    def floor(self, unit: str) -> float:
        return {"Gy": self.dose_floor_gy, "cc": self.volume_floor_cc, "%": self.volume_floor_pct}.get(
            unit, self.index_floor
        )

    def allows(self, difference: float, reference: float, unit: str) -> bool:
        """Whether ``difference`` (value minus reference, in ``unit``: Gy, cc, % or "") is within tolerance."""
        return abs(difference) <= self.percent / 100.0 * max(abs(reference), self.floor(unit)) * (1 + 1e-12)


@dataclass(frozen=True)
class DVHComparison:
    """One DVH against a reference (see :meth:`DVH.compare`).

    Attributes
    ----------
    name : str
        The structure's name.
    number : int or None
        Its ROI number.
    values, reference : dict of str to float
        ``volume_cc``, ``dmin_gy``, ``dmean_gy``, ``dmax_gy`` and each metric (by its text) of the DVH compared and
        of the reference (NaN where undefined).
    difference_pct : dict of str to float
        The same keys: value minus reference, in % of the reference's value (NaN where either is undefined).
    within_tolerance : dict of str to bool or None
        The same keys: whether the difference is within :attr:`tolerance` (None where it cannot be judged).
    dvh_max_difference_pct : float
        The largest gap between the two cumulative curves, in % of the volume (each curve relative to its own
        volume inside the dose grid).
    dvh_max_difference_at_gy : float
        The dose where that gap lies.
    metrics : tuple of str
        The metrics compared, beside the volume and the dose statistics.
    tolerance : Tolerance
        What agreeing means.

    Examples
    --------
    >>> from isodose.phantoms import example_case
    >>> dose, structures = example_case()
    >>> [cord] = compute_dvhs(dose, structures, ["Cord"])
    >>> [thin] = compute_dvhs(dose, structures, ["Cord"], options=SamplingOptions(end_cap="none"))
    >>> comparison = thin.compare(cord)
    >>> comparison.agrees, comparison.outside_tolerance, round(comparison.difference_pct["volume_cc"], 1)
    (False, ('volume_cc',), -10.0)
    """

    name: str
    number: int | None
    values: dict[str, float]
    reference: dict[str, float]
    difference_pct: dict[str, float]
    within_tolerance: dict[str, bool | None]
    dvh_max_difference_pct: float
    dvh_max_difference_at_gy: float
    metrics: tuple[str, ...]
    tolerance: Tolerance

    @property
    def agrees(self) -> bool:
        """Every value that can be judged is within tolerance."""
        return all(v for v in self.within_tolerance.values() if v is not None)

    @property
    def outside_tolerance(self) -> tuple[str, ...]:
        """The keys of the values outside tolerance."""
        return tuple(k for k, v in self.within_tolerance.items() if v is False)

    @staticmethod
    def _block(flat: dict[str, float], metrics: tuple[str, ...]) -> dict[str, Any]:
        block: dict[str, Any] = {k: json_number(flat[k]) for k in ("volume_cc", "dmin_gy", "dmean_gy", "dmax_gy")}
        block["metrics"] = {m: json_number(flat[m]) for m in metrics}
        return block

    def to_dict(self) -> dict[str, Any]:
        """``values`` (as ``isodose``), ``reference`` (as ``tps``), ``difference_pct``, ``dvh_max_difference_pct``
        and ``agrees``, as the JSON of ``isodose audit`` holds them."""
        return {
            "isodose": self._block(self.values, self.metrics),
            "tps": self._block(self.reference, self.metrics),
            "difference_pct": self._block(self.difference_pct, self.metrics),
            "dvh_max_difference_pct": json_number(self.dvh_max_difference_pct),
            "dvh_max_difference_at_gy": json_number(self.dvh_max_difference_at_gy),
            "outside_tolerance": list(self.outside_tolerance),
            "agrees": self.agrees,
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
    span: tuple[int, int] | None = None,
) -> DVH:
    """Build a DVH from an accumulated histogram and the exact sums of its samples.

    The histogram's mass outside [Dmin, Dmax] (the spread of samples at the extremes) is folded into the
    bins holding Dmin and Dmax, and the bins holding them are cut at Dmin and Dmax, so that the curve
    starts at exactly Dmin and ends at exactly Dmax. ``span``: the first and last bins that hold mass, where known
    (the bins outside hold exactly nothing, and are not read).
    """
    volume_cc = float(inside_mm3 + outside_mm3) / 1000.0
    outside_cc = float(outside_mm3) / 1000.0
    if not inside_mm3 > 0 or not math.isfinite(dmin_gy) or not math.isfinite(dmax_gy):
        return _empty_dvh(name, number, volume_cc, outside_cc, backend, centroid_mm)
    n_bins = len(hist_mm3)
    hist = np.asarray(hist_mm3, dtype=np.float64)
    k_lo = min(int(dmin_gy / bin_width_gy), n_bins - 1)
    k_hi = min(int(dmax_gy / bin_width_gy), n_bins - 1)
    # The mass in [k_lo, k_hi] (negative rounding clipped to 0), with the mass beyond folded in.
    folded = np.clip(hist[k_lo : k_hi + 1], 0.0, None)
    first, last = (0, n_bins - 1) if span is None else (max(int(span[0]), 0), min(int(span[1]), n_bins - 1))
    if first < k_lo:
        folded[0] += np.clip(hist[first:k_lo], 0.0, None).sum()
    if last > k_hi:
        folded[-1] += np.clip(hist[k_hi + 1 : last + 1], 0.0, None).sum()
    total = folded.sum()
    scale = inside_mm3 / total if total > 0 else 0.0
    n = len(folded)
    # The bin edges from Dmin to Dmax, and the volume at or above each (cc).
    dose = np.empty(n + 1)
    cumulative_cc = np.empty(n + 1)
    if take_compiled():  # the same values, in one pass
        from .compiled_dvh import curve_knots

        curve_knots(folded, k_lo, bin_width_gy, dmin_gy, dmax_gy, scale, inside_mm3, dose, cumulative_cc)
    else:  # written in place: the same values as the array expressions, with fewer arrays made
        dose[0], dose[n] = dmin_gy, dmax_gy
        np.multiply(bin_width_gy, np.arange(k_lo + 1, k_hi + 1), out=dose[1:n])
        cumulative_cc[0] = 0.0
        np.cumsum(folded, out=cumulative_cc[1:])
        np.multiply(cumulative_cc[1:], scale, out=cumulative_cc[1:])  # the volume below each edge (mm3)
        cumulative_cc[n] = inside_mm3
        np.subtract(inside_mm3, cumulative_cc, out=cumulative_cc)
        np.divide(cumulative_cc, 1000.0, out=cumulative_cc)
        cumulative_cc[n] = 0.0
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


#: A reported DVHMeanDose fits its curve within this share of the curve's mean (or a bin): loose enough for a mean
#: computed from the dose grid rather than from the binned curve, tight enough to catch a unit that is not the one
#: DoseUnits says (a % of the prescription differs from Gy by its factor).
MEAN_FIT = 0.10


@dataclass(frozen=True, eq=False)
class PlanningSystemDVH(DVH):
    """A planning system's DVH of one ROI: one item of an RTDOSE's DVH Sequence as a :class:`DVH`, its metrics read
    off its curve with the same grammar as isodose's own.

    How the file's values become the curve (PS3.3 C.8.8.4; see the audit page of the docs):

    - the dose bins start at 0 Gy and follow one another, each ``bin_width * DVHDoseScaling`` wide (relative doses
      are % of DVHNormalizationDoseValue, or fractions of it when the bins end at 2 or less);
    - a ``CUMULATIVE`` value is the volume receiving at least the dose where its bin starts (the first is the whole
      volume); a ``DIFFERENTIAL`` value is the volume whose dose lies in its bin, spread evenly across it; a
      ``NATURAL`` value in ``PER_U`` is the volume per unit of u = dose^-3/2 across its bin;
    - the curve is linear between bin edges, from the first bin holding volume to the last;
    - Dmin, Dmean and Dmax are the file's DVHMinimum/Mean/MaximumDose where they fit the curve (within a bin of its
      ends, within a bin or 1% of its mean). Where they do not, but fit it once read as % of the prescription (a
      planning system that writes them so), they are read so; otherwise the curve's own are used. Each case is
      a warning.

    Attributes
    ----------
    reported : ReportedDVH
        The item as the file holds it.
    relative_volume : bool
        The file gives volumes in % (``PERCENT``): the curve is in % (its 100% is the ROI's volume), ``volume_cc``
        is NaN, and metrics in cc are NaN.

    Examples
    --------
    >>> from isodose.phantoms import example_truths, reported_dvh
    >>> item = reported_dvh(example_truths()["PTV"], 1)  # closed-form, cumulative, 0.01 Gy bins
    >>> ptv = PlanningSystemDVH.from_reported(item, "PTV")
    >>> round(ptv.volume_cc, 2), round(ptv.dmean_gy, 2), round(ptv.metric("D95"), 2)
    (14.21, 70.0, 59.08)
    """

    reported: ReportedDVH | None = None
    relative_volume: bool = False

    @classmethod
    def from_reported(
        cls,
        reported: ReportedDVH,
        name: str | None = None,
        *,
        prescription_gy: float | None = None,
        relative_reference_gy: float | None = None,
        relative_fractions: bool | None = None,
    ) -> PlanningSystemDVH:
        """The curve of a DVH Sequence item (see the class docstring).

        Parameters
        ----------
        reported : ReportedDVH
            The item (:func:`isodose.audit.read_dose_dvhs` reads them, named).
        name : str, optional
            The ROI's name (default ``ROI <number>``).
        prescription_gy : float, optional
            The plan's prescription: DVHMinimum/Mean/MaximumDose that fit the curve only as % of it are read so.
        relative_reference_gy : float, optional
            The 100% of relative doses where the file gives no DVHNormalizationDoseValue.
        relative_fractions : bool, optional
            Whether relative doses are fractions (1.0 = 100%) or percentages; by default told from this item's bins
            (fractions where they end at 2 or less). :func:`isodose.audit.read_dose_dvhs` tells it once for a file
            from all its items, so that a low-dose organ's DVH is read as its neighbours are.

        Raises
        ------
        DoseUnitsError
            For relative doses without a reference dose, or a natural DVH with volume in the bin that starts at
            0 Gy (where u = dose^-3/2 is infinite).
        """
        label = f"{reported.source}: {reported.label}" if reported.source else reported.label
        name = name if name is not None else f"ROI {reported.roi_number}"
        messages: list[str] = []
        widths = reported.bin_widths * reported.dose_scaling
        edges = np.concatenate([[0.0], np.cumsum(widths)])
        factor = 1.0
        if reported.dose_units == "RELATIVE":
            reference = reported.normalization_dose
            if not (math.isfinite(reference) and reference > 0):
                reference = relative_reference_gy if relative_reference_gy is not None else math.nan
            if not (math.isfinite(reference) and reference > 0):
                raise DoseUnitsError(
                    "its doses are RELATIVE and the file gives no DVHNormalizationDoseValue; give the dose of 100% "
                    "(--relative-dose-reference-gy)",
                    path=reported.source or None,
                    obj=reported.label,
                )
            fraction = edges[-1] <= RELATIVE_FRACTION_MAX if relative_fractions is None else relative_fractions
            factor = reference if fraction else reference / 100.0
            messages.append(
                f"{label}: relative doses read as {'fractions' if fraction else 'percentages'} of {reference:g} Gy"
            )
        edges = edges * factor
        values = reported.values
        if reported.dvh_type == "CUMULATIVE":
            in_bin = values - np.append(values[1:], 0.0)
        elif reported.dvh_type == "NATURAL" and reported.volume_units == "PER_U":
            if values[0] > 0 and edges[0] == 0:
                raise DoseUnitsError(
                    "a NATURAL DVH cannot hold volume in the bin that starts at 0 Gy (u = dose^-3/2 is infinite there)",
                    path=reported.source or None,
                    obj=reported.label,
                )
            with np.errstate(divide="ignore"):
                u = np.where(edges > 0, edges, np.inf) ** -1.5
            u[0] = 0.0 if values[0] == 0 else u[0]
            in_bin = np.where(values > 0, values * np.abs(u[:-1] - u[1:]), 0.0)
        else:
            in_bin = values
        in_bin = np.clip(in_bin, 0.0, None)
        relative = reported.volume_units == "PERCENT"
        holding = np.flatnonzero(in_bin > 0)
        if not len(holding):
            empty = _empty_dvh(name, reported.roi_number, 0.0, math.nan, "", None)
            return cls(
                **{f: getattr(empty, f) for f in _DVH_FIELDS},
                reported=reported,
                relative_volume=relative,
            )
        first, last = int(holding[0]), int(holding[-1])
        above = np.concatenate([np.cumsum(in_bin[::-1])[::-1], [0.0]])  # volume at or above each edge
        dose = edges[first : last + 2]
        cumulative = above[first : last + 2]
        total = float(above[0])
        middle = 0.5 * (edges[:-1] + edges[1:])
        curve = (float(edges[first]), float(np.sum(in_bin * middle) / total), float(edges[last + 1]))
        bin_gy = float(np.max(widths[first : last + 1])) * factor
        reported_gy = np.array([reported.minimum_dose, reported.mean_dose, reported.maximum_dose]) * factor
        statistics = _fitting_statistics(curve, reported_gy, bin_gy, dose, prescription_gy, label, messages)
        for message in messages:
            log.warning("%s", message)
        return cls(
            name,
            math.nan if relative else total,
            math.nan,
            statistics[0],
            statistics[1],
            statistics[2],
            dose,
            cumulative,
            "",
            reported.roi_number,
            None,
            tuple(messages),
            reported=reported,
            relative_volume=relative,
        )

    def metric(self, metric: Metric | str, prescription_gy: float | None = None) -> float:
        m = parse_metric(metric) if isinstance(metric, str) else metric
        in_cc = (m.kind in ("dose_at_volume", "volume_at_dose") and m.volume_unit == "cc") or (
            m.kind == "statistic" and m.statistic == "volume"
        )
        if self.relative_volume and in_cc:  # the file gives no volume in cc
            return math.nan
        return super().metric(m, prescription_gy)


_DVH_FIELDS = (
    "name",
    "volume_cc",
    "volume_outside_dose_cc",
    "dmin_gy",
    "dmean_gy",
    "dmax_gy",
    "dose_gy",
    "cumulative_cc",
    "backend",
    "number",
    "centroid_mm",
    "warnings",
)


def _fitting_statistics(
    curve: tuple[float, float, float],
    reported: np.ndarray,
    bin_gy: float,
    dose: np.ndarray,
    prescription_gy: float | None,
    label: str,
    messages: list[str],
) -> tuple[float, float, float]:
    """Dmin, Dmean and Dmax of a planning system's DVH: its reported ones where they fit its curve, read as % of
    the prescription where only that fits, else the curve's (see :class:`PlanningSystemDVH`)."""
    low, mean, high = curve
    first_bin_top = float(dose[1]) if len(dose) > 1 else high
    last_bin_bottom = float(dose[-2]) if len(dose) > 1 else low

    def fits(values: np.ndarray) -> bool:
        checks = [
            low - bin_gy <= values[0] <= first_bin_top + bin_gy,
            abs(values[1] - mean) <= max(bin_gy, MEAN_FIT * mean),
            last_bin_bottom - bin_gy <= values[2] <= high + bin_gy,
        ]
        return all(ok for ok, v in zip(checks, values) if math.isfinite(v))

    present = np.isfinite(reported)
    if not present.any():
        return curve
    if fits(reported):
        return tuple(float(r) if math.isfinite(r) else c for r, c in zip(reported, curve))  # type: ignore[return-value]
    names = ("DVHMinimumDose", "DVHMeanDose", "DVHMaximumDose")
    shown = ", ".join(f"{n} {r:g}" for n, r, p in zip(names, reported, present) if p)
    if prescription_gy and prescription_gy > 0 and fits(reported * prescription_gy / 100.0):
        messages.append(
            f"{label}: {shown} fit its curve only as % of the prescription ({prescription_gy:g} Gy), not as the Gy "
            "its DoseUnits say: read as such"
        )
        scaled = reported * prescription_gy / 100.0
        return tuple(float(r) if math.isfinite(r) else c for r, c in zip(scaled, curve))  # type: ignore[return-value]
    messages.append(
        f"{label}: {shown} do not fit its curve (which runs from {low:.4g} to {high:.4g} Gy, mean {mean:.4g} Gy): "
        "the curve's own values are used"
    )
    return curve


def check_frame_of_reference(dose: DoseGrid, structures: StructureSet) -> None:
    """Dose and structures must share their frame of reference (when both files name one)."""
    a, b = dose.frame_of_reference_uid, structures.frame_of_reference_uid
    if a and b and a != b:
        raise FrameOfReferenceError(
            f"frame of reference {b} differs from the dose's {a} ({dose.source or 'dose'}): these structures were "
            "drawn on another image; give those of the dose's planning image (a follow-up's recurrence is mapped "
            "by classify --recurrence-structures with --registration)",
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
    # An ROI asked for twice (by name and by number, say) is computed and reported once, where first asked for.
    return list({id(s): s for s in (structure_set.get(r) for r in rois)}.values())


def dvh_request(
    dose: DoseGrid,
    structures: StructureSet | Sequence[Structure],
    rois: Sequence[str | int] | str | int | None = None,
    *,
    options: SamplingOptions | None = None,
    check_frame: bool = True,
    transform: np.ndarray | None = None,
    volume_only: bool = False,
) -> tuple[list[Structure], SamplingRequest]:
    """The chosen structures and their sampling request (what :func:`compute_dvhs` samples); for batching
    many cases into one :func:`isodose.sampling.sample_many`. ``volume_only``: see
    :func:`isodose.voxelize.plan_sampling`."""
    options = options or SamplingOptions()
    check_dose_grid(dose)
    if isinstance(structures, StructureSet) and check_frame and transform is None:
        check_frame_of_reference(dose, structures)
    selected = _select_structures(structures, rois)
    all_structures = structures.structures if isinstance(structures, StructureSet) else structures
    plan = plan_sampling(selected, dose, options, common_plane_spacing_mm(all_structures), volume_only=volume_only)
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
    return request_dvhs(selected, request, chosen_backend, options)


def request_dvhs(
    selected: Sequence[Structure], request: SamplingRequest, backend: str | Backend | None, options: SamplingOptions
) -> list[DVH]:
    """The DVHs of the structures of a :func:`dvh_request` (``selected``, in the order of its plan): its samples
    through the backend, then each structure's DVH."""
    [samples] = sample_many([request], resolve_backend(backend), options)
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
            span=(samples.hist_span[s, 0], samples.hist_span[s, 1]) if samples.hist_span is not None else None,
        )
        messages = list(_warnings_of(structure))
        messages += [w for w in samples.warnings if f"ROI {structure.name}:" in w or "ROI " not in w.split(":")[0]]
        if structure.is_empty:
            messages.append(f"ROI {structure.name} has no contours: reported as empty")
        elif dvh.volume_cc <= 0 and dvh.volume_outside_dose_cc <= 0:
            messages.append(f"ROI {structure.name} encloses no volume: its contours have no area")
        elif not dvh.has_dose:
            messages.append(f"ROI {structure.name} lies wholly outside the dose grid")
        elif dvh.volume_outside_dose_cc > 0:
            messages.append(
                f"ROI {structure.name}: {dvh.volume_outside_dose_cc:.3f} cc lie outside the dose grid and are left "
                "out of its dose statistics"
            )
        for message in messages[len(_warnings_of(structure)) :]:  # those of its contours were logged already
            log.warning("%s", message)
        dvhs.append(
            replace(
                dvh,
                warnings=tuple(messages),
                cells=int(samples.cells[s]) if samples.cells is not None else 0,
                supersampling=int(samples.supersampling[s]) if samples.supersampling is not None else 0,
            )
        )
    return dvhs
