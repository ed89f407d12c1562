"""Synthetic phantoms with closed-form DVHs, and a head-and-neck-sized case for benchmarks and demos.

Shapes are solids of revolution about an axis parallel to z (sphere, cylinder, cone, hollow sphere), so
that every contour plane holds circles. In a linear dose field ``d = d0 + g . (p - c)`` the dose in a
slab ``[a, b]`` of a disc of radius ``r`` depends on the in-plane projection ``u`` (whose density is the
chord length ``2 sqrt(r^2 - u^2)``) and on z (uniform), which gives the slab's cumulative distribution in
closed form:

    area of the disc with u <= t:   A(t) = r^2 (pi/2 + asin(s) + s sqrt(1 - s^2)),   s = t / r
    its antiderivative:             G(t) = r^3 (pi s/2 + s asin(s) + sqrt(1 - s^2) - (1 - s^2)^(3/2) / 3)
    volume below dose D:            (g_perp / g_z) [G(t(a)) - G(t(b))],  t(z) = (D - d0 - g_z (z - c_z)) / g_perp

:class:`SlabTruth` sums these over the slabs of the contoured structure (the geometry isodose computes
with, built here independently of the engine), and :func:`shape_truth` over thousands of thin slabs,
which converges to the exact DVH of the smooth solid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .model import Contour, DoseGrid, ReportedDVH, Structure, StructureSet, xyz

# --------------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sphere:
    centre_mm: tuple[float, float, float]
    radius_mm: float

    @property
    def z_range(self) -> tuple[float, float]:
        return self.centre_mm[2] - self.radius_mm, self.centre_mm[2] + self.radius_mm

    def radii(self, z: float) -> tuple[float, float]:
        """(outer, inner) radius of the cross-section at z (inner 0: no hole)."""
        dz = z - self.centre_mm[2]
        return math.sqrt(max(self.radius_mm**2 - dz * dz, 0.0)), 0.0

    @property
    def volume_mm3(self) -> float:
        return 4.0 / 3.0 * math.pi * self.radius_mm**3


@dataclass(frozen=True)
class Shell:
    """A hollow sphere: the contour planes through the cavity hold two rings (a hole, by even-odd)."""

    centre_mm: tuple[float, float, float]
    outer_mm: float
    inner_mm: float

    @property
    def z_range(self) -> tuple[float, float]:
        return self.centre_mm[2] - self.outer_mm, self.centre_mm[2] + self.outer_mm

    def radii(self, z: float) -> tuple[float, float]:
        dz = z - self.centre_mm[2]
        return (math.sqrt(max(self.outer_mm**2 - dz * dz, 0.0)), math.sqrt(max(self.inner_mm**2 - dz * dz, 0.0)))

    @property
    def volume_mm3(self) -> float:
        return 4.0 / 3.0 * math.pi * (self.outer_mm**3 - self.inner_mm**3)


@dataclass(frozen=True)
class _Upright:
    """A solid of height ``height_mm`` along z, centred on ``centre_mm``, of radius ``radius_mm`` at most."""

    centre_mm: tuple[float, float, float]
    radius_mm: float
    height_mm: float

    @property
    def z_range(self) -> tuple[float, float]:
        return self.centre_mm[2] - self.height_mm / 2, self.centre_mm[2] + self.height_mm / 2

    def height_fraction(self, z: float) -> float | None:
        """How far up the solid z lies (0 at the bottom, 1 at the top), or None outside it."""
        lo, hi = self.z_range
        if not lo - 1e-9 <= z <= hi + 1e-9:
            return None
        return min(max((z - lo) / self.height_mm, 0.0), 1.0)


@dataclass(frozen=True)
class Cylinder(_Upright):
    """Axis along z through ``centre_mm``, from ``centre z - height/2`` to ``centre z + height/2``."""

    def radii(self, z: float) -> tuple[float, float]:
        return (0.0 if self.height_fraction(z) is None else self.radius_mm), 0.0

    @property
    def volume_mm3(self) -> float:
        return math.pi * self.radius_mm**2 * self.height_mm


@dataclass(frozen=True)
class Cone(_Upright):
    """Apex at ``centre z - height/2``, base of ``radius_mm`` at ``centre z + height/2``."""

    def radii(self, z: float) -> tuple[float, float]:
        fraction = self.height_fraction(z)
        return (0.0 if fraction is None else self.radius_mm * fraction), 0.0

    @property
    def volume_mm3(self) -> float:
        return math.pi * self.radius_mm**2 * self.height_mm / 3.0


Shape = Sphere | Shell | Cylinder | Cone


def circle(centre_x: float, centre_y: float, radius: float, n_vertices: int) -> np.ndarray:
    """A regular polygon inscribed in the circle, counter-clockwise."""
    angle = 2.0 * math.pi * np.arange(n_vertices) / n_vertices
    return np.column_stack([centre_x + radius * np.cos(angle), centre_y + radius * np.sin(angle)])


def polygon_radius(radius: float, n_vertices: int) -> float:
    """Radius of the disc with the area of the inscribed ``n_vertices``-gon."""
    return radius * math.sqrt(n_vertices * math.sin(2.0 * math.pi / n_vertices) / (2.0 * math.pi))


def plane_positions(shape: Shape, spacing_mm: float, offset_mm: float = 0.0) -> np.ndarray:
    """Contour planes every ``spacing_mm`` from the bottom of the shape (shifted by ``offset_mm``)."""
    lo, hi = shape.z_range
    n = int(math.floor((hi - lo - offset_mm) / spacing_mm + 1e-9))
    return lo + offset_mm + spacing_mm * np.arange(n + 1)


def contour_shape(
    shape: Shape,
    name: str,
    number: int,
    spacing_mm: float,
    *,
    offset_mm: float = 0.0,
    n_vertices: int = 256,
    min_radius_mm: float = 1e-3,
) -> Structure:
    """Contour ``shape`` on axial planes as a :class:`Structure` (holes as a second ring)."""
    contours = []
    cx, cy, _ = shape.centre_mm
    for z in plane_positions(shape, spacing_mm, offset_mm):
        outer, inner = shape.radii(float(z))
        if outer < min_radius_mm:
            continue
        contours.append(Contour(circle(cx, cy, outer, n_vertices), float(z)))
        if inner >= min_radius_mm:
            contours.append(Contour(circle(cx, cy, inner, n_vertices)[::-1].copy(), float(z)))
    return Structure(name=name, number=number, contours=tuple(contours))


# --------------------------------------------------------------------------------------------------------
# Dose fields
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearField:
    """``dose = dose_gy + gradient . (p - centre_mm)`` (Gy, Gy/mm, mm)."""

    dose_gy: float
    gradient_gy_per_mm: tuple[float, float, float]
    centre_mm: tuple[float, float, float]

    def __call__(self, x, y, z):
        g = self.gradient_gy_per_mm
        c = self.centre_mm
        return self.dose_gy + g[0] * (x - c[0]) + g[1] * (y - c[1]) + g[2] * (z - c[2])

    def grid(
        self,
        origin_mm: Sequence[float],
        spacing_mm: Sequence[float],
        shape_zyx: Sequence[int],
        frame_of_reference_uid: str = "",
    ) -> DoseGrid:
        """The field sampled at voxel centres; trilinear interpolation reproduces it exactly."""
        z, y, x = (origin_mm[a] + spacing_mm[a] * np.arange(shape_zyx[2 - a]) for a in (2, 1, 0))
        dose = self(x[None, None, :], y[None, :, None], z[:, None, None])
        if dose.min() < 0:
            raise ValueError("the linear field goes negative inside the grid; raise dose_gy")
        return DoseGrid(
            np.ascontiguousarray(dose, dtype=np.float32), xyz(origin_mm), xyz(spacing_mm), frame_of_reference_uid
        )


# --------------------------------------------------------------------------------------------------------
# Closed-form DVHs
# --------------------------------------------------------------------------------------------------------


def _area_below(t: np.ndarray, r: np.ndarray | float) -> np.ndarray:
    s = np.clip(t / r, -1.0, 1.0)
    return r * r * (math.pi / 2 + np.arcsin(s) + s * np.sqrt(1.0 - s * s))


def _area_below_integral(t: np.ndarray, r: np.ndarray | float) -> np.ndarray:
    s = np.clip(t / r, -1.0, 1.0)
    root = np.sqrt(1.0 - s * s)
    inside = r**3 * (math.pi * s / 2 + s * np.arcsin(s) + root - root**3 / 3.0)
    return np.where(t > r, math.pi * r**3 + math.pi * r * r * (t - r), inside)


@dataclass(frozen=True)
class Slab:
    z_lo: float
    z_hi: float
    radius: float  # disc radius (area-equivalent to the contour polygon)
    sign: float  # +1 for a solid ring, -1 for a hole


class _ClosedForm:
    """What a closed-form DVH derives from its ``volume_mm3``, ``volume_below(dose)`` and ``_extremes()``."""

    @property
    def volume_mm3(self) -> float:
        raise NotImplementedError

    def volume_below(self, dose) -> np.ndarray:
        raise NotImplementedError

    def _extremes(self) -> tuple[float, float]:
        raise NotImplementedError

    def volume_above(self, dose) -> np.ndarray:
        return self.volume_mm3 - self.volume_below(dose)

    @property
    def dmin_gy(self) -> float:
        return self._extremes()[0]

    @property
    def dmax_gy(self) -> float:
        return self._extremes()[1]

    def dose_at_volume_mm3(self, volume_mm3: float) -> float:
        """The dose received by the hottest ``volume_mm3``, by bisection on the closed form."""
        lo, hi = self._extremes()
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            if self.volume_above(mid) > volume_mm3:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def dose_at_percent(self, percent: float) -> float:
        return self.dose_at_volume_mm3(percent / 100.0 * self.volume_mm3)


class SlabTruth(_ClosedForm):
    """Exact DVH of a stack of disc slabs (holes subtracted) in a linear field."""

    def __init__(self, slabs: Sequence[Slab], field: LinearField, centre_xy: tuple[float, float]):
        kept = [s for s in slabs if s.radius > 0 and s.z_hi > s.z_lo]
        self.z_lo = np.array([s.z_lo for s in kept])
        self.z_hi = np.array([s.z_hi for s in kept])
        self.radius = np.array([s.radius for s in kept])
        self.sign = np.array([s.sign for s in kept])
        g = field.gradient_gy_per_mm
        self.g_perp = math.hypot(g[0], g[1])
        self.g_z = g[2]
        # Dose on the shape's axis at z: base + g_z z; in-plane, it changes by g_perp per mm across it.
        self.base = field(centre_xy[0], centre_xy[1], 0.0)

    @property
    def volume_mm3(self) -> float:
        return float(np.sum(self.sign * math.pi * self.radius**2 * (self.z_hi - self.z_lo)))

    def volume_below(self, dose) -> np.ndarray:
        """Volume (mm^3) receiving less than ``dose``: the sum of every slab's closed form."""
        d = np.asarray(dose, dtype=np.float64)[..., None]
        r, a, b = self.radius, self.z_lo, self.z_hi
        if self.g_perp == 0.0:
            if self.g_z == 0.0:
                below = np.where(d >= self.base, math.pi * r * r * (b - a), 0.0)
            else:
                z_cut = (d - self.base) / self.g_z
                inside = (z_cut - a) / (b - a) if self.g_z > 0 else (b - z_cut) / (b - a)
                below = math.pi * r * r * (b - a) * np.clip(inside, 0.0, 1.0)
        else:
            t_a = (d - self.base - self.g_z * a) / self.g_perp
            if self.g_z == 0.0:
                below = (b - a) * _area_below(t_a, r)
            else:
                t_b = (d - self.base - self.g_z * b) / self.g_perp
                below = (self.g_perp / self.g_z) * (_area_below_integral(t_a, r) - _area_below_integral(t_b, r))
        return np.sum(self.sign * below, axis=-1)

    @property
    def dmean_gy(self) -> float:
        volume = self.sign * math.pi * self.radius**2 * (self.z_hi - self.z_lo)
        centre_dose = self.base + self.g_z * 0.5 * (self.z_lo + self.z_hi)
        return float(np.sum(volume * centre_dose) / np.sum(volume))

    def _extremes(self) -> tuple[float, float]:
        solid = self.sign > 0
        axis = self.base + self.g_z * np.concatenate([self.z_lo[solid], self.z_hi[solid]])
        reach = self.g_perp * np.concatenate([self.radius[solid], self.radius[solid]])
        return float(np.min(axis - reach)), float(np.max(axis + reach))


class BoxesTruth(_ClosedForm):
    """Exact DVH of weighted boxes in a linear field: the voxelised shape a label image describes (each voxel a box
    of its own geometry, weighted by its value), or any union of disjoint boxes.

    Box ``b`` is ``corner[b] + axes @ (u, v, w)`` for ``u`` in ``[0, size[b, 0]]`` and so on (``axes``: 3 x 3,
    orthonormal columns, shared by every box), weighted by ``weight[b]``. Along each axis the dose changes
    linearly, so the dose over a box is a constant plus the sum of three uniform variables, whose distribution has
    a closed form (piecewise cubic, by inclusion and exclusion of the box's corners).
    """

    def __init__(self, corner: np.ndarray, size: np.ndarray, weight: np.ndarray, axes: np.ndarray, field: LinearField):
        self.corner = np.asarray(corner, dtype=np.float64).reshape(-1, 3)
        self.size = np.asarray(size, dtype=np.float64).reshape(-1, 3)
        self.weight = np.asarray(weight, dtype=np.float64).reshape(-1)
        gradient = np.asarray(field.gradient_gy_per_mm, dtype=np.float64) @ np.asarray(axes, dtype=np.float64)
        low_dose = np.array([field(*c) for c in self.corner])
        # Dose = low + sum of a_k u_k over the box, u_k in [0, size_k]: each term uniform on [min, max] of a_k size_k.
        spans = gradient[None, :] * self.size
        self.low = low_dose + np.minimum(spans, 0.0).sum(axis=1)
        self.widths = np.abs(spans)
        self.volumes = self.weight * self.size.prod(axis=1)

    @property
    def volume_mm3(self) -> float:
        return float(self.volumes.sum())

    def volume_below(self, dose) -> np.ndarray:
        d = np.asarray(dose, dtype=np.float64)[..., None] - self.low  # (..., boxes)
        widths = np.where(self.widths > 0, self.widths, np.inf)
        flat = self.widths <= 0
        # P(sum < d) for uniforms of the given widths: inclusion-exclusion of (d - corner)_+^3 / (6 w1 w2 w3), with
        # axes along which the dose is constant taken out (a uniform of width 0 is a step).
        fraction = np.zeros_like(d)
        for box_flat in np.unique(flat, axis=0):
            chosen = np.all(flat == box_flat, axis=1)
            live = np.flatnonzero(~box_flat)
            w = self.widths[chosen][:, live]
            x = d[..., chosen]
            if not len(live):
                fraction[..., chosen] = (x > 0).astype(np.float64)
                continue
            total = np.zeros_like(x)
            for corner in np.ndindex(*(2,) * len(live)):
                shift = (np.asarray(corner)[None, :] * w).sum(axis=1)
                sign = (-1.0) ** sum(corner)
                total += sign * np.maximum(x - shift, 0.0) ** len(live)
            fraction[..., chosen] = np.clip(total / (math.factorial(len(live)) * np.prod(w, axis=1)), 0.0, 1.0)
        del widths
        return np.sum(self.volumes * fraction, axis=-1)

    @property
    def dmean_gy(self) -> float:
        return float(np.sum(self.volumes * (self.low + 0.5 * self.widths.sum(axis=1))) / self.volume_mm3)

    def _extremes(self) -> tuple[float, float]:
        held = self.weight > 0
        return float(self.low[held].min()), float((self.low + self.widths.sum(axis=1))[held].max())


def mask_truth(mask, field: LinearField) -> BoxesTruth:
    """:class:`BoxesTruth` of a :class:`~isodose.model.LabelMask`: each voxel with weight a box of its geometry."""
    k, j, i = np.nonzero(mask.weights > 0)
    spacing = np.asarray(mask.spacing_mm, dtype=np.float64)
    direction = np.asarray(mask.direction, dtype=np.float64)
    local = (np.stack([i, j, k], axis=1) - 0.5) * spacing  # each voxel's lowest corner, along the image's axes
    corner = np.asarray(mask.origin_mm, dtype=np.float64) + local @ direction.T
    size = np.broadcast_to(spacing, corner.shape)
    return BoxesTruth(corner, size, mask.weights[k, j, i], direction, field)


def slab_truth(
    structure_shape: Shape,
    field: LinearField,
    spacing_mm: float,
    *,
    offset_mm: float = 0.0,
    n_vertices: int = 256,
    end_cap: str = "half",
    min_radius_mm: float = 1e-3,
) -> SlabTruth:
    """Exact DVH of ``contour_shape(shape, ...)`` as isodose models it: each plane a slab reaching halfway
    to its neighbours, with half a plane spacing of end-cap (or none)."""
    planes = [
        z
        for z in plane_positions(structure_shape, spacing_mm, offset_mm)
        if structure_shape.radii(float(z))[0] >= min_radius_mm
    ]
    cap = spacing_mm / 2 if end_cap == "half" else 0.0
    slabs = []
    for i, z in enumerate(planes):
        lo = z - cap if i == 0 else 0.5 * (planes[i - 1] + z)
        hi = z + cap if i == len(planes) - 1 else 0.5 * (z + planes[i + 1])
        outer, inner = structure_shape.radii(float(z))
        slabs.append(Slab(lo, hi, polygon_radius(outer, n_vertices), 1.0))
        if inner >= min_radius_mm:
            slabs.append(Slab(lo, hi, polygon_radius(inner, n_vertices), -1.0))
    return SlabTruth(slabs, field, structure_shape.centre_mm[:2])


def shape_truth(structure_shape: Shape, field: LinearField, n_slabs: int = 4000) -> SlabTruth:
    """DVH of the smooth solid itself: thin slabs (midpoint radii), converging as ``1 / n_slabs^2``."""
    lo, hi = structure_shape.z_range
    edges = np.linspace(lo, hi, n_slabs + 1)
    slabs = []
    for a, b in zip(edges[:-1], edges[1:]):
        outer, inner = structure_shape.radii(0.5 * (a + b))
        slabs.append(Slab(a, b, outer, 1.0))
        if inner > 0:
            slabs.append(Slab(a, b, inner, -1.0))
    return SlabTruth(slabs, field, structure_shape.centre_mm[:2])


def reported_dvh(
    truth: SlabTruth,
    roi_number: int,
    *,
    bin_gy: float = 0.01,
    dvh_type: str = "CUMULATIVE",
    volume_units: str = "CM3",
    dose_scaling: float = 1.0,
    dose_units: str = "GY",
    normalization_gy: float | None = None,
    dose_shift_pct: float = 0.0,
) -> ReportedDVH:
    """The closed-form DVH of ``truth`` as a planning system would write it in an RTDOSE's DVH Sequence: bins of
    ``bin_gy`` from 0 Gy to past Dmax, and Dmin, Dmean and Dmax, in the type and units asked for (for tests that
    a DVH Sequence is read as written, and for audits with a known answer).

    ``dose_shift_pct`` scales every dose of the curve and of the statistics (a planning system off by that much);
    ``dose_units`` RELATIVE writes doses in % of ``normalization_gy``.
    """
    scale = 1.0 + dose_shift_pct / 100.0
    n_bins = int(math.floor(truth.dmax_gy * scale / bin_gy)) + 1
    edges = bin_gy * np.arange(n_bins + 1)
    above = np.clip(truth.volume_above(edges / scale), 0.0, None) / 1000.0  # cc, at each bin's start
    above[0] = truth.volume_mm3 / 1000.0
    in_bin = np.clip(above[:-1] - above[1:], 0.0, None)
    total = truth.volume_mm3 / 1000.0
    if dvh_type == "CUMULATIVE":
        values = above[:-1]
    elif dvh_type == "DIFFERENTIAL" or volume_units != "PER_U":
        values = in_bin
    else:  # NATURAL, per unit of u = dose^-3/2
        with np.errstate(divide="ignore"):
            u = np.where(edges > 0, edges, np.inf) ** -1.5
        values = np.where(in_bin > 0, in_bin / np.where(np.isfinite(u[:-1]), u[:-1] - u[1:], np.inf), 0.0)
    if volume_units == "PERCENT":
        values = 100.0 * values / total
    statistics = np.array([truth.dmin_gy, truth.dmean_gy, truth.dmax_gy]) * scale
    unit = 1.0
    if dose_units == "RELATIVE":
        if not normalization_gy:
            raise ValueError("relative DVH doses need normalization_gy")
        unit = normalization_gy / 100.0
    return ReportedDVH(
        roi_number=roi_number,
        item=0,
        dvh_type=dvh_type,
        dose_units=dose_units,
        dose_type="PHYSICAL",
        volume_units=volume_units,
        dose_scaling=dose_scaling,
        bin_widths=np.full(n_bins, bin_gy / unit / dose_scaling),
        values=values,
        minimum_dose=float(statistics[0] / unit),
        mean_dose=float(statistics[1] / unit),
        maximum_dose=float(statistics[2] / unit),
        normalization_dose=normalization_gy if normalization_gy is not None else math.nan,
    )


def example_truths() -> dict[str, SlabTruth]:
    """The closed-form DVHs of :func:`example_case`'s ROIs, as isodose models the contours (half end caps)."""
    return {name: slab_truth(shape, _EXAMPLE_FIELD, 3.0, offset_mm=1.5) for name, _, shape, _ in _EXAMPLE_ROIS}


# --------------------------------------------------------------------------------------------------------
# A head-and-neck-sized case
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ellipsoid:
    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]

    @property
    def z_range(self) -> tuple[float, float]:
        return self.centre_mm[2] - self.semi_axes_mm[2], self.centre_mm[2] + self.semi_axes_mm[2]

    def ellipse(self, z: float) -> tuple[float, float]:
        """Semi-axes (x, y) of the cross-section at z."""
        t = (z - self.centre_mm[2]) / self.semi_axes_mm[2]
        scale = math.sqrt(max(1.0 - t * t, 0.0))
        return self.semi_axes_mm[0] * scale, self.semi_axes_mm[1] * scale

    @property
    def volume_mm3(self) -> float:
        a, b, c = self.semi_axes_mm
        return 4.0 / 3.0 * math.pi * a * b * c

    def normalised_radius(self, x, y, z):
        """1 on the surface, below 1 inside."""
        (cx, cy, cz), (a, b, c) = self.centre_mm, self.semi_axes_mm
        return np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2)


@dataclass(frozen=True, eq=False)
class OrientedEllipsoid:
    """An ellipsoid with semi-axes ``semi_axes_mm`` along the columns of ``rotation``; every axial section is
    an ellipse, computed exactly."""

    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    rotation: np.ndarray

    @property
    def _form(self) -> np.ndarray:
        return self.rotation @ np.diag(1.0 / np.asarray(self.semi_axes_mm, float) ** 2) @ self.rotation.T

    @property
    def z_range(self) -> tuple[float, float]:
        half = math.sqrt(np.linalg.inv(self._form)[2, 2])
        return self.centre_mm[2] - half, self.centre_mm[2] + half

    @property
    def volume_mm3(self) -> float:
        a, b, c = self.semi_axes_mm
        return 4.0 / 3.0 * math.pi * a * b * c

    def contains(self, points_mm: np.ndarray) -> np.ndarray:
        d = np.asarray(points_mm, float).reshape(-1, 3) - np.asarray(self.centre_mm)
        return np.einsum("ni,ij,nj->n", d, self._form, d) <= 1.0

    def section(self, z: float, n_vertices: int) -> np.ndarray | None:
        """The ellipse where the plane at z cuts the ellipsoid, as a polygon (None if it misses)."""
        q = self._form
        d = z - self.centre_mm[2]
        q_xy, q_z = q[:2, :2], q[:2, 2]
        inverse = np.linalg.inv(q_xy)
        shift = -d * inverse @ q_z
        r2 = 1.0 - d * d * q[2, 2] + d * d * q_z @ inverse @ q_z
        if r2 <= 1e-6:
            return None
        eigenvalues, eigenvectors = np.linalg.eigh(q_xy)
        angle = 2.0 * math.pi * np.arange(n_vertices) / n_vertices
        unit = np.stack([np.cos(angle), np.sin(angle)])
        points = eigenvectors @ (np.sqrt(r2 / eigenvalues)[:, None] * unit)
        return (points + (np.asarray(self.centre_mm[:2]) + shift)[:, None]).T

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` points uniformly distributed inside."""
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1)[:, None]
        radius = rng.random(n) ** (1.0 / 3.0)
        local = direction * radius[:, None] * np.asarray(self.semi_axes_mm)
        return local @ self.rotation.T + np.asarray(self.centre_mm)


@dataclass(frozen=True)
class EllipticCylinder:
    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float]
    height_mm: float

    @property
    def z_range(self) -> tuple[float, float]:
        return self.centre_mm[2] - self.height_mm / 2, self.centre_mm[2] + self.height_mm / 2

    def ellipse(self, z: float) -> tuple[float, float]:
        lo, hi = self.z_range
        return self.semi_axes_mm if lo - 1e-9 <= z <= hi + 1e-9 else (0.0, 0.0)

    @property
    def volume_mm3(self) -> float:
        return math.pi * self.semi_axes_mm[0] * self.semi_axes_mm[1] * self.height_mm

    def normalised_radius(self, x, y, z):
        (cx, cy, cz), (a, b) = self.centre_mm, self.semi_axes_mm
        radial = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
        axial = np.abs(z - cz) / (self.height_mm / 2)
        return np.maximum(radial, axial)


def contour_ellipses(
    shape: Ellipsoid | EllipticCylinder, name: str, number: int, plane_z_mm: np.ndarray, n_vertices: int = 96
) -> Structure:
    """Contour an elliptical solid on the given axial planes."""
    cx, cy, _ = shape.centre_mm
    angle = 2.0 * math.pi * np.arange(n_vertices) / n_vertices
    contours = []
    for z in plane_z_mm:
        a, b = shape.ellipse(float(z))
        if min(a, b) < 0.05:
            continue
        ring = np.column_stack([cx + a * np.cos(angle), cy + b * np.sin(angle)])
        contours.append(Contour(ring, float(z)))
    return Structure(name=name, number=number, contours=tuple(contours))


#: name: (centre (x, y, z) mm, semi-axes mm, prescription level Gy or None). Volumes run from 1 cc to 3 l.
HEAD_NECK_STRUCTURES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float | None]] = {
    "GTV": ((0.0, -10.0, 20.0), (14.0, 12.0, 15.0), None),
    "PTV70": ((0.0, -10.0, 20.0), (26.0, 22.0, 27.0), 70.0),
    "CTV60": ((0.0, -5.0, 10.0), (38.0, 32.0, 42.0), None),
    "PTV60_L": ((38.0, 5.0, -5.0), (16.0, 16.0, 32.0), 60.0),
    "PTV60_R": ((-38.0, 5.0, -5.0), (16.0, 16.0, 32.0), 60.0),
    "CTV54": ((0.0, 0.0, -10.0), (52.0, 42.0, 60.0), None),
    "PTV54": ((0.0, 0.0, -10.0), (56.0, 46.0, 64.0), 54.0),
    "BrainStem": ((0.0, 30.0, 55.0), (11.0, 11.0, 18.0), None),
    "SpinalCord": ((0.0, 52.0, -20.0), (5.0, 5.0, 50.0), None),
    "Parotid_L": ((48.0, 15.0, 30.0), (14.0, 16.0, 22.0), None),
    "Parotid_R": ((-48.0, 15.0, 30.0), (14.0, 16.0, 22.0), None),
    "OralCavity": ((0.0, -45.0, 5.0), (30.0, 22.0, 18.0), None),
    "Larynx": ((0.0, -30.0, -55.0), (13.0, 12.0, 16.0), None),
    "Eye_L": ((32.0, -50.0, 62.0), (12.0, 12.0, 12.0), None),
    "Eye_R": ((-32.0, -50.0, 62.0), (12.0, 12.0, 12.0), None),
    "OpticNerve_L": ((18.0, -28.0, 62.0), (4.5, 14.0, 4.5), None),
    "OpticNerve_R": ((-18.0, -28.0, 62.0), (4.5, 14.0, 4.5), None),
    "Chiasm": ((0.0, -12.0, 62.0), (10.0, 7.0, 4.0), None),
    "Cochlea_L": ((40.0, 20.0, 60.0), (6.2, 6.2, 6.2), None),
}
BODY = EllipticCylinder((0.0, 0.0, 0.0), (70.0, 85.0), 160.0)


@dataclass(frozen=True)
class ImrtDose:
    """An IMRT-like dose, defined everywhere: plateaus at each target's level (about 97% of it on the
    target's surface) with a steep sigmoid fall-off (80% to 20% over about 7 mm), a low bath inside the body,
    no dose outside it."""

    targets: tuple[tuple[Ellipsoid, float], ...]
    body: EllipticCylinder = None  # type: ignore[assignment]
    falloff_mm: float = 2.5
    bath_gy: float = 8.0

    def __call__(self, x, y, z) -> np.ndarray:
        x, y, z = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float), np.asarray(z, float))
        dose = np.zeros(x.shape)
        w = self.falloff_mm
        for shape, level in self.targets:
            mean_axis = float(np.mean(shape.semi_axes_mm))
            # Signed distance-like coordinate: mm outside the surface (negative inside).
            outside = (shape.normalised_radius(x, y, z) - 1.0) * mean_axis
            np.maximum(dose, level * 1.02 / (1.0 + np.exp(np.clip((outside - 3.0 * w) / w, -60, 60))), out=dose)
        body = self.body or BODY
        centre = np.asarray(body.centre_mm)
        distance = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
        inside_body = body.normalised_radius(x, y, z) <= 1.0
        return np.where(inside_body, np.maximum(dose, self.bath_gy * np.exp(-distance / 60.0)), 0.0)

    def grid(
        self,
        origin_mm: Sequence[float],
        spacing_mm: Sequence[float],
        shape_zyx: Sequence[int],
        frame_of_reference_uid: str = "",
    ) -> DoseGrid:
        z, y, x = (origin_mm[a] + spacing_mm[a] * np.arange(shape_zyx[2 - a]) for a in (2, 1, 0))
        dose = np.empty(tuple(shape_zyx), dtype=np.float32)
        for k, zk in enumerate(z):  # a slice at a time keeps the temporaries small
            dose[k] = self(x[None, :], y[:, None], zk)
        return DoseGrid(dose, xyz(origin_mm), xyz(spacing_mm), frame_of_reference_uid)


def head_neck_case(
    grid_shape_zyx: tuple[int, int, int] = (120, 200, 200),
    spacing_mm: float = 2.5,
    plane_spacing_mm: float = 2.5,
    frame_of_reference_uid: str = "1.2.826.0.1.3680043.10.1457.1",
) -> tuple[DoseGrid, StructureSet]:
    """A head-and-neck-sized case: 20 structures from about 1 cc to 3000 cc (BODY) on a dose grid of
    ``grid_shape_zyx`` voxels of ``spacing_mm`` (200 x 200 x 120 at 2.5 mm by default)."""
    nz, ny, nx = grid_shape_zyx
    origin = (-spacing_mm * (nx - 1) / 2, -spacing_mm * (ny - 1) / 2, -spacing_mm * (nz - 1) / 2)
    shapes = {name: Ellipsoid(c, a) for name, (c, a, _) in HEAD_NECK_STRUCTURES.items()}
    targets = [(shapes[name], level) for name, (_, _, level) in HEAD_NECK_STRUCTURES.items() if level]
    grid = ImrtDose(tuple(targets), BODY).grid(origin, (spacing_mm,) * 3, grid_shape_zyx, frame_of_reference_uid)
    lo, hi = BODY.z_range
    planes = np.arange(lo, hi + 1e-9, plane_spacing_mm)
    structures = [contour_ellipses(BODY, "BODY", 1, planes, n_vertices=256)]
    for number, (name, shape) in enumerate(shapes.items(), start=2):
        structures.append(contour_ellipses(shape, name, number, planes))
    return grid, StructureSet(tuple(structures), frame_of_reference_uid=frame_of_reference_uid)


def example_case() -> tuple[DoseGrid, StructureSet]:
    """A tiny case for examples and doctests: quick to sample, with a known answer.

    A 60 mm cube of dose at 3 mm voxels, the linear field ``70 - y`` Gy (70 Gy at the origin, falling 1 Gy/mm
    towards +y), and three ROIs contoured every 3 mm: ``PTV`` (a sphere of radius 15 mm at the origin), ``Cord``
    (a cylinder of radius 4 mm, 30 mm long, at x = 20 mm) and ``Recurrence`` (a sphere of radius 5 mm centred on
    y = 4 mm, where the field is 66 Gy: the 95% isodose of a 70 Gy prescription, 66.5 Gy at y = 3.5 mm, cuts it
    a little off-centre, leaving 42.7% of it inside).

    Returns
    -------
    tuple of DoseGrid and StructureSet
        The dose grid (frame of reference ``"1.2.826.0.1.3680043.8.498.1"``) and the structures, in that frame.

    Examples
    --------
    >>> dose, structures = example_case()
    >>> dose.shape, structures.names
    ((21, 21, 21), ['PTV', 'Cord', 'Recurrence'])
    """
    frame = "1.2.826.0.1.3680043.8.498.1"
    grid = _EXAMPLE_FIELD.grid((-30.0, -30.0, -30.0), (3.0, 3.0, 3.0), (21, 21, 21), frame)
    structures = [
        replace(contour_shape(shape, name, number, 3.0, offset_mm=1.5), interpreted_type=kind)
        for name, number, shape, kind in _EXAMPLE_ROIS
    ]
    return grid, StructureSet(tuple(structures), frame)


#: The field and the ROIs (name, number, shape, interpreted type) of :func:`example_case`.
_EXAMPLE_FIELD = LinearField(70.0, (0.0, -1.0, 0.0), (0.0, 0.0, 0.0))
_EXAMPLE_ROIS: tuple[tuple[str, int, Shape, str], ...] = (
    ("PTV", 1, Sphere((0.0, 0.0, 0.0), 15.0), "PTV"),
    ("Cord", 2, Cylinder((20.0, 0.0, 0.0), 4.0, 30.0), "ORGAN"),
    ("Recurrence", 3, Sphere((0.0, 4.0, 0.0), 5.0), "GTV"),
)
