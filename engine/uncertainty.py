"""Classification under registration uncertainty: each case classified again under thousands of perturbed mappings.

The mapping of Vr onto the planning CT carries millimetres of error, and the volume method's thresholds are
sharp: a case at 95.1% of Vr inside the isodose is in-field, one at 94.9% marginal. :class:`Uncertainty` describes
rigid registration errors (translations with a standard deviation per axis, and rotations about Vr's centroid),
drawn reproducibly from a seed and applied on top of the case's own mapping (none, rigid or deformable).

How a case's draws are computed. Vr's samples are taken once, in its own frame (the covered part of each cell of
its contours, cut into slabs along z: :func:`isodose.deformation.plan_points`), and carried into the planning
frame by the case's mapping. Each draw only moves them rigidly and interpolates the dose again: the
``moved_doses_many`` kernel, all draws of many cases in one call (one launch on a GPU, parallel loops on Numba).
Each sample's dose is spread uniformly over its region (as the DVH kernels spread theirs), so the share inside
the isodose varies smoothly with the shift. The draws' values are anchored to the case's deterministic
classification: a draw's share inside the isodose is the deterministic share plus the change the draw makes to
the samples' share (and likewise D95 and D100), so that the samples, coarser than a DVH's, enter only through the
change, and zero uncertainty gives the deterministic classification exactly. The centroid of a draw is the
deterministic centroid moved by its translation (a rotation about the centroid leaves it in place).

Per case (:class:`UncertaintyResult`): the probability of each class by both methods with its Monte Carlo
standard error, percentiles of the share inside the isodose, of D95 and of D100, and whether the most likely class
is stable (holds at least ``stable_pct`` % of the draws). Per cohort: :func:`cohort_uncertainty`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .deformation import Deformation, map_points, plan_points, spread_widths
from .dispatch import Backend
from .errors import IsodoseError
from .geometry import PackedPlanes, transform_points
from .model import DoseGrid, LabelMask
from .sampling import GridBatch
from .voxelize import SamplingPlan

#: The classes, in the order probabilities are given.
CLASSES = ("in-field", "marginal", "out-field")
#: Percentiles reported of each quantity over the draws.
PERCENTILES = (2.5, 50.0, 97.5)


def _triple(value, name: str) -> tuple[float, float, float]:
    values = (value,) * 3 if isinstance(value, int | float) else tuple(value)
    if len(values) != 3 or not all(isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in values):
        raise IsodoseError(f"{name} must be one number or three (x, y, z), finite and at least 0, not {value!r}")
    return float(values[0]), float(values[1]), float(values[2])


@dataclass(frozen=True)
class Uncertainty:
    """Rigid registration errors, drawn on top of each case's own mapping.

    Parameters
    ----------
    translation_sd_mm : float or tuple of float
        The standard deviation of the translation along x, y and z (mm); one number for all three.
    rotation_sd_deg : float or tuple of float
        The standard deviation of the rotation about x, y and z, about Vr's centroid (degrees).
    draws : int
        The number of perturbed mappings per case.
    seed : int
        The seed: the same seed gives the same draws (each case's own, from the seed and the case's key).
    stable_pct : float
        A class is stable when it holds at least this share of the draws.
    samples : int
        About how many of Vr's samples each draw moves (see the uncertainty page of the docs for the choice).

    Examples
    --------
    >>> u = Uncertainty(translation_sd_mm=2.0, rotation_sd_deg=1.0, draws=4, seed=0)
    >>> u.translation_sd_mm, u.transforms((0.0, 0.0, 0.0)).shape
    ((2.0, 2.0, 2.0), (4, 4, 4))
    """

    translation_sd_mm: tuple[float, float, float] | float = (0.0, 0.0, 0.0)
    rotation_sd_deg: tuple[float, float, float] | float = (0.0, 0.0, 0.0)
    draws: int = 1000
    seed: int = 0
    stable_pct: float = 95.0
    samples: int = 4000

    def __post_init__(self) -> None:
        object.__setattr__(self, "translation_sd_mm", _triple(self.translation_sd_mm, "the translation's SD (mm)"))
        object.__setattr__(self, "rotation_sd_deg", _triple(self.rotation_sd_deg, "the rotation's SD (degrees)"))
        for name in ("draws", "samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise IsodoseError(f"the number of {name} must be a whole number of at least 1, not {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise IsodoseError(f"the seed must be a whole number of at least 0, not {self.seed!r}")
        if not (isinstance(self.stable_pct, int | float) and 50.0 < self.stable_pct <= 100.0):
            raise IsodoseError(f"the stability level must be above 50% and at most 100%, not {self.stable_pct!r}")

    def as_dict(self) -> dict:
        return {
            "translation_sd_mm": list(self.translation_sd_mm),  # type: ignore[arg-type]
            "rotation_sd_deg": list(self.rotation_sd_deg),  # type: ignore[arg-type]
            "draws": self.draws,
            "seed": self.seed,
            "stable_pct": self.stable_pct,
            "samples": self.samples,
        }

    def transforms(self, centre_mm: Sequence[float], key: str = "") -> np.ndarray:
        """The draws: ``(draws, 4, 4)`` rigid matrices, each a rotation about ``centre_mm`` (small angles about x,
        then y, then z) and a translation, from the seed and ``key`` (a case's id: the same case gets the same
        draws whatever else runs beside it)."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, *np.frombuffer(digest[:16], dtype=np.uint32)]))
        normal = rng.standard_normal((self.draws, 6))
        shift = normal[:, :3] * np.asarray(self.translation_sd_mm)
        angle = np.radians(normal[:, 3:] * np.asarray(self.rotation_sd_deg))
        cx, cy, cz = np.cos(angle).T
        sx, sy, sz = np.sin(angle).T
        rotation = np.empty((self.draws, 3, 3))
        # R = Rz Ry Rx
        rotation[:, 0, 0] = cz * cy
        rotation[:, 0, 1] = cz * sy * sx - sz * cx
        rotation[:, 0, 2] = cz * sy * cx + sz * sx
        rotation[:, 1, 0] = sz * cy
        rotation[:, 1, 1] = sz * sy * sx + cz * cx
        rotation[:, 1, 2] = sz * sy * cx - cz * sx
        rotation[:, 2, 0] = -sy
        rotation[:, 2, 1] = cy * sx
        rotation[:, 2, 2] = cy * cx
        centre = np.asarray(centre_mm, dtype=np.float64)
        out = np.tile(np.eye(4), (self.draws, 1, 1))
        out[:, :3, :3] = rotation
        out[:, :3, 3] = centre + shift - rotation @ centre
        return out


@dataclass(frozen=True, eq=False)
class UncertaintyRequest:
    """What a case's draws need, planned where the case is prepared: Vr's sampling plan (in its own frame), its
    mapping into the dose grid's frame (a rigid 4x4, a :class:`~isodose.deformation.Deformation`, or None), the
    dose grid and the uncertainty, and the key its draws are drawn with."""

    plan: SamplingPlan
    grid: DoseGrid
    mapping: np.ndarray | Deformation | None
    uncertainty: Uncertainty
    key: str = ""


@dataclass(frozen=True)
class UncertaintyResult:
    """A case's classification under its draws (see the module docstring).

    Attributes
    ----------
    draws : int
        How many.
    volume_probability_pct, centroid_probability_pct : dict of str to float
        The probability (%) of each class by the volume method and the point-of-origin method.
    volume_se_pct, centroid_se_pct : dict of str to float
        The Monte Carlo standard error of each probability (percentage points): sqrt(p (1 - p) / draws).
    inside_isodose_pct, d95_gy, d100_gy : dict of float to float
        The 2.5th, 50th and 97.5th percentiles (keys) over the draws.
    volume_likely, centroid_likely : str
        The most likely class by each method.
    volume_stable, centroid_stable : bool
        Whether it holds at least ``stable_pct`` % of the draws.
    stable_pct : float
        The level.

    Examples
    --------
    A 8 mm sphere whose top lies 1 mm below the 95% isodose (a plane of a linear field), under 2 mm translations:

    >>> from isodose import StructureSet, classify_recurrence
    >>> from isodose.phantoms import LinearField, Sphere, contour_shape
    >>> dose = LinearField(60.0, (0.0, -1.0, 0.0), (0.0, 0.0, 0.0)).grid((-40.0,) * 3, (2.5,) * 3, (33,) * 3, "1.2.3")
    >>> vr = contour_shape(Sphere((0.0, -6.0, 0.0), 8.0), "Vr", 9, 1.0)
    >>> u = Uncertainty(translation_sd_mm=2.0, draws=400, seed=0)
    >>> result = classify_recurrence(dose, StructureSet((vr,), "1.2.3"), "Vr", 60.0, uncertainty=u, backend="numpy")
    >>> r = result.uncertainty
    >>> result.class_volume, r.volume_likely, r.volume_stable, round(r.volume_probability_pct["in-field"], 1)
    ('in-field', 'in-field', True, 95.8)
    >>> round(r.inside_isodose_pct[2.5], 1), r.inside_isodose_pct[50.0]
    (93.4, 100.0)
    """

    draws: int
    volume_probability_pct: dict[str, float]
    volume_se_pct: dict[str, float]
    centroid_probability_pct: dict[str, float]
    centroid_se_pct: dict[str, float]
    inside_isodose_pct: dict[float, float]
    d95_gy: dict[float, float]
    d100_gy: dict[float, float]
    volume_likely: str
    volume_stable: bool
    centroid_likely: str
    centroid_stable: bool
    stable_pct: float

    def record(self) -> dict[str, object]:
        """Flat columns (units in their keys) for the classify JSON and a cohort's table."""
        out: dict[str, object] = {"uncertainty_draws": self.draws}
        for method, probabilities, errors in (
            ("volume", self.volume_probability_pct, self.volume_se_pct),
            ("centroid", self.centroid_probability_pct, self.centroid_se_pct),
        ):
            for c in CLASSES:
                key = c.replace("-", "_")
                out[f"p_{method}_{key}_pct"] = probabilities[c]
                out[f"se_{method}_{key}_pct"] = errors[c]
        for name, values in (
            ("inside_isodose_pct", self.inside_isodose_pct),
            ("D95_gy", self.d95_gy),
            ("D100_gy", self.d100_gy),
        ):
            for q, v in values.items():
                out[f"{name}_p{q:g}".replace(".", "_")] = v
        out["class_volume_likely"] = self.volume_likely
        out["class_volume_stable"] = self.volume_stable
        out["class_centroid_likely"] = self.centroid_likely
        out["class_centroid_stable"] = self.centroid_stable
        return out


def _probabilities(classes: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    n = len(classes)
    p = {c: float(np.count_nonzero(classes == k)) / n for k, c in enumerate(CLASSES)}
    return ({c: 100.0 * v for c, v in p.items()}, {c: 100.0 * math.sqrt(v * (1 - v) / n) for c, v in p.items()})


def _sorted_low_quantile(filled: np.ndarray, weights: np.ndarray, target: float) -> np.ndarray:
    order = np.argsort(filled, axis=1, kind="stable")
    cumulative = np.cumsum(weights[order], axis=1)
    index = np.argmax(cumulative >= target, axis=1)
    return np.take_along_axis(filled, order, axis=1)[np.arange(len(filled)), index]


def _weighted_low_quantile(doses: np.ndarray, weights: np.ndarray, share: float) -> np.ndarray:
    """Per row of ``doses`` (draws x samples), the dose below which ``share`` of the weighted volume lies (NaN
    doses, outside the grid, count as the lowest).

    Only the lowest few samples of each row are sorted (a partition finds them): a row whose lowest ``k`` do not
    hold ``share`` of the volume is sorted whole. The value found is the full sort's, since the partition keeps
    exactly the ``k`` smallest doses."""
    filled = np.where(np.isfinite(doses), doses, -np.inf)
    n = filled.shape[1]
    if n == 0:
        return np.full(len(filled), np.nan)
    target = share * float(weights.sum())
    k = min(n, int(3 * share * n) + 16)
    if k >= n:
        out = _sorted_low_quantile(filled, weights, target)
    else:
        lowest = np.argpartition(filled, k - 1, axis=1)[:, :k]
        low = np.take_along_axis(filled, lowest, axis=1)
        order = np.argsort(low, axis=1, kind="stable")
        cumulative = np.cumsum(weights[np.take_along_axis(lowest, order, axis=1)], axis=1)
        index = np.argmax(cumulative >= target, axis=1)
        out = np.take_along_axis(low, order, axis=1)[np.arange(len(filled)), index]
        short = np.flatnonzero(cumulative[:, -1] < target)
        if short.size:
            out[short] = _sorted_low_quantile(filled[short], weights, target)
    return np.where(np.isfinite(out), out, np.nan)


@dataclass(frozen=True)
class _Samples:
    points: np.ndarray  # in the dose grid's frame
    weights: np.ndarray
    widths: np.ndarray
    grid_index: int


def _samples(request: UncertaintyRequest, backend: Backend, batch: GridBatch) -> _Samples:
    """Vr's coarse samples carried into the dose grid's frame by the case's mapping, with their spread widths."""
    thickness = 0.5 * min(request.grid.spacing_mm)
    points, volumes, _, covariance = plan_points(request.plan, backend, thickness)
    mapping = request.mapping
    if isinstance(mapping, Deformation):
        mapped = map_points(mapping, points, backend)
        placed = ~mapped.outside_field
        where, jacobian = mapped.points_mm, mapped.jacobian
        weights = np.where(placed, volumes * np.abs(np.nan_to_num(mapped.jacobian_det, nan=1.0)), volumes)
        assert jacobian is not None
    else:
        matrix = np.eye(4) if mapping is None else np.asarray(mapping, dtype=np.float64)
        where = transform_points(matrix, points)
        jacobian = np.broadcast_to(matrix[:3, :3], (len(points), 3, 3))
        weights = volumes
    grid_index = batch.index(request.grid)
    widths = np.zeros(len(points))
    finite = np.all(np.isfinite(where), axis=1)
    if finite.any():
        step = 0.05 * min(request.grid.spacing_mm)
        widths[finite] = spread_widths(batch, grid_index, where[finite], jacobian[finite], covariance[finite], step)
    return _Samples(where, weights, widths, grid_index)


def _inside_share(doses: np.ndarray, samples: _Samples, isodose_gy: float) -> np.ndarray:
    """Per draw, the share (%) of the samples' volume at or above the isodose, each sample's dose spread uniformly
    over its width (NaN, outside the grid, counts as outside)."""
    spread = samples.widths > 0
    inverse = np.zeros(len(samples.widths))
    inverse[spread] = 1.0 / samples.widths[spread]
    fraction = doses - isodose_gy
    fraction *= inverse[None, :]
    fraction += 0.5
    np.clip(fraction, 0.0, 1.0, out=fraction)
    if not spread.all():
        sharp = ~spread
        fraction[:, sharp] = doses[:, sharp] >= isodose_gy
    fraction[np.isnan(fraction)] = 0.0
    fraction *= samples.weights[None, :]
    # Row by row with the same summation (a matrix product may sum rows in different orders: identical draws must
    # give identical shares, so that zero uncertainty gives the deterministic share exactly).
    return 100.0 * fraction.sum(axis=1) / samples.weights.sum()


def classify_draws(
    requests: Sequence[UncertaintyRequest],
    deterministic: Sequence,
    targets: Sequence[Iterable[tuple[str, PackedPlanes | LabelMask]]],
    volume_class: Sequence[Callable[[np.ndarray], np.ndarray]],
    centroid_class: Sequence[Callable[[np.ndarray, np.ndarray], np.ndarray]],
    backend: Backend,
    batch: GridBatch,
) -> list[UncertaintyResult]:
    """The draws of many cases, their doses in one ``moved_doses_many`` call.

    Parameters
    ----------
    requests : sequence of UncertaintyRequest
        One per case.
    deterministic : sequence of RecurrenceResult
        Each case's deterministic classification (the draws are anchored to it).
    targets : sequence of iterables of (str, PackedPlanes or LabelMask)
        Each case's targets of the point-of-origin method.
    volume_class, centroid_class : sequence of callable
        Each case's classes, vectorised: the class index (0 in-field, 1 marginal, 2 out-field) of inside shares,
        and of centroid doses with whether the centroid lies in a target.
    backend, batch : Backend, GridBatch
        Where to compute, and the cases' dose grids there.

    Returns
    -------
    list of UncertaintyResult
    """
    all_samples = [_samples(r, backend, batch) for r in requests]
    transforms = []
    for request, result in zip(requests, deterministic):
        # Each draw moves the samples about Vr's centroid in the planning frame; the first matrix is the identity
        # (the anchor: the samples' own values, unmoved).
        moves = request.uncertainty.transforms(result.centroid_mm, request.key)
        transforms.append(np.concatenate([np.eye(4)[None], moves]))
    point_start = np.concatenate([[0], np.cumsum([len(s.points) for s in all_samples])]).astype(np.int64)
    transform_start = np.concatenate([[0], np.cumsum([len(t) for t in transforms])]).astype(np.int64)
    points = np.concatenate([s.points for s in all_samples]) if all_samples else np.zeros((0, 3))
    point_grid = np.concatenate([np.full(len(s.points), s.grid_index, dtype=np.int64) for s in all_samples])
    flat = backend.kernels.moved_doses_many(
        batch.table,
        np.nan_to_num(points, nan=1e30),  # a sample the mapping lost stays outside every grid
        point_grid,
        point_start,
        np.concatenate(transforms) if transforms else np.zeros((0, 4, 4)),
        transform_start,
    )
    out = []
    offset = 0
    for c, (request, result, samples) in enumerate(zip(requests, deterministic, all_samples)):
        n_points, n_moves = len(samples.points), len(transforms[c])
        doses = np.asarray(flat[offset : offset + n_points * n_moves]).reshape(n_moves, n_points)
        offset += n_points * n_moves
        u = request.uncertainty
        share = _inside_share(doses, samples, result.isodose_gy)
        d95 = _weighted_low_quantile(doses, samples.weights, 0.05)
        d100 = np.min(np.where(np.isfinite(doses), doses - 0.5 * samples.widths[None, :], np.inf), axis=1)
        d100 = np.where(np.isfinite(d100), d100, np.nan)
        share = np.clip(result.inside_isodose_pct + (share[1:] - share[0]), 0.0, 100.0)
        d95 = result.metrics.get("D95", math.nan) + (d95[1:] - d95[0])
        d100 = result.metrics.get("D100", math.nan) + (d100[1:] - d100[0])
        centroids = transforms[c][1:, :3, :3] @ np.asarray(result.centroid_mm) + transforms[c][1:, :3, 3]
        centroid_dose = batch.dose_at(centroids, np.full(len(centroids), samples.grid_index))
        in_target = np.zeros(len(centroids), dtype=bool)
        for _, planes in targets[c]:
            in_target |= planes.contain(centroids)
        volume_classes = volume_class[c](share)
        centroid_classes = centroid_class[c](centroid_dose, in_target)
        volume_p, volume_se = _probabilities(volume_classes)
        centroid_p, centroid_se = _probabilities(centroid_classes)
        volume_likely = max(CLASSES, key=lambda k: volume_p[k])
        centroid_likely = max(CLASSES, key=lambda k: centroid_p[k])
        out.append(
            UncertaintyResult(
                draws=u.draws,
                volume_probability_pct=volume_p,
                volume_se_pct=volume_se,
                centroid_probability_pct=centroid_p,
                centroid_se_pct=centroid_se,
                inside_isodose_pct={q: float(np.percentile(share, q)) for q in PERCENTILES},
                d95_gy={
                    q: float(np.nanpercentile(d95, q)) if np.isfinite(d95).any() else math.nan for q in PERCENTILES
                },
                d100_gy={
                    q: float(np.nanpercentile(d100, q)) if np.isfinite(d100).any() else math.nan for q in PERCENTILES
                },
                volume_likely=volume_likely,
                volume_stable=volume_p[volume_likely] >= u.stable_pct,
                centroid_likely=centroid_likely,
                centroid_stable=centroid_p[centroid_likely] >= u.stable_pct,
                stable_pct=u.stable_pct,
            )
        )
    return out


@dataclass(frozen=True)
class CohortUncertainty:
    """A cohort's classification under uncertainty (see :func:`cohort_uncertainty`).

    Attributes
    ----------
    cases : int
        The cases with draws.
    expected_counts : dict of str to float
        The expected number of cases of each class: the sum of the cases' probabilities.
    share_interval_pct : dict of str to tuple of float
        The 95% interval of each class's share of the cohort (%), from both the cases' uncertainty and the
        cohort's sampling.
    unstable : tuple of str
        The cases whose most likely class is not stable.
    method : str
        ``volume`` or ``centroid``.

    Examples
    --------
    >>> p = np.array([[100.0, 0.0, 0.0], [60.0, 40.0, 0.0], [0.0, 10.0, 90.0]])
    >>> summary = cohort_uncertainty(["a", "b", "c"], p, [True, False, False])
    >>> summary.cases, summary.unstable, [round(v, 1) for v in summary.share_interval_pct["out-field"]]
    (3, ('b', 'c'), [0.0, 66.7])
    """

    cases: int
    expected_counts: dict[str, float]
    share_interval_pct: dict[str, tuple[float, float]]
    unstable: tuple[str, ...]
    method: str


def cohort_uncertainty(
    case_ids: Sequence[str],
    probabilities_pct: np.ndarray,
    stable: Sequence[bool],
    *,
    method: str = "volume",
    replicates: int = 10_000,
    seed: int = 0,
) -> CohortUncertainty:
    """A cohort's classes under uncertainty: expected counts, and an interval for each class's share.

    The interval combines two sources, by a two-level bootstrap: the cohort's sampling (the cases are a sample of
    the patients such a study could have had: each replicate draws as many cases, with replacement) and each
    case's uncertainty (each drawn case's class is drawn from its own probabilities). The 2.5th and 97.5th
    percentiles of the replicates' shares bound the interval. Without uncertainty (probabilities of 0 or 100%)
    it is the plain bootstrap interval of the shares.

    Parameters
    ----------
    case_ids : sequence of str
        The cases.
    probabilities_pct : numpy.ndarray
        ``(cases, 3)``: each case's probability (%) of in-field, marginal, out-field.
    stable : sequence of bool
        Whether each case's most likely class is stable.
    method : str
        Which method the probabilities are of (for the record).
    replicates, seed : int
        The bootstrap's replicates and seed.

    Returns
    -------
    CohortUncertainty

    Examples
    --------
    >>> p = np.array([[100.0, 0.0, 0.0], [50.0, 50.0, 0.0], [0.0, 0.0, 100.0]])
    >>> summary = cohort_uncertainty(["a", "b", "c"], p, [True, False, True])
    >>> summary.expected_counts, summary.unstable
    ({'in-field': 1.5, 'marginal': 0.5, 'out-field': 1.0}, ('b',))
    """
    p = np.asarray(probabilities_pct, dtype=np.float64).reshape(-1, 3) / 100.0
    n = len(p)
    expected = {c: float(p[:, k].sum()) for k, c in enumerate(CLASSES)}
    intervals: dict[str, tuple[float, float]] = {}
    if n:
        rng = np.random.default_rng(seed)
        chosen = rng.integers(0, n, size=(replicates, n))
        cumulative = np.cumsum(p, axis=1)
        u = rng.random((replicates, n))
        classes = (u[:, :, None] > cumulative[chosen][:, :, :2]).sum(axis=2)  # 0, 1 or 2 per drawn case
        for k, c in enumerate(CLASSES):
            shares = 100.0 * np.mean(classes == k, axis=1)
            intervals[c] = (float(np.percentile(shares, 2.5)), float(np.percentile(shares, 97.5)))
    else:
        intervals = {c: (math.nan, math.nan) for c in CLASSES}
    unstable = tuple(case for case, ok in zip(case_ids, stable) if not ok)
    return CohortUncertainty(n, expected, intervals, unstable, method)
