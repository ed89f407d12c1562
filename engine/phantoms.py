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
from dataclasses import dataclass

import numpy as np

from .model import Contour, DoseGrid, Structure

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
class Cylinder:
    """Axis along z through ``centre_mm``, from ``centre z - height/2`` to ``centre z + height/2``."""

    centre_mm: tuple[float, float, float]
    radius_mm: float
    height_mm: float

    @property
    def z_range(self) -> tuple[float, float]:
        return self.centre_mm[2] - self.height_mm / 2, self.centre_mm[2] + self.height_mm / 2

    def radii(self, z: float) -> tuple[float, float]:
        lo, hi = self.z_range
        return (self.radius_mm if lo - 1e-9 <= z <= hi + 1e-9 else 0.0), 0.0

    @property
    def volume_mm3(self) -> float:
        return math.pi * self.radius_mm**2 * self.height_mm


@dataclass(frozen=True)
class Cone:
    """Apex at ``centre z - height/2``, base of ``radius_mm`` at ``centre z + height/2``."""

    centre_mm: tuple[float, float, float]
    radius_mm: float
    height_mm: float

    @property
    def z_range(self) -> tuple[float, float]:
        return self.centre_mm[2] - self.height_mm / 2, self.centre_mm[2] + self.height_mm / 2

    def radii(self, z: float) -> tuple[float, float]:
        lo, hi = self.z_range
        if not lo - 1e-9 <= z <= hi + 1e-9:
            return 0.0, 0.0
        return self.radius_mm * min(max((z - lo) / self.height_mm, 0.0), 1.0), 0.0

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
    shape: Shape, name: str, number: int, spacing_mm: float, *, offset_mm: float = 0.0, n_vertices: int = 256,
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

    def grid(self, origin_mm: Sequence[float], spacing_mm: Sequence[float], shape_zyx: Sequence[int],
             frame_of_reference_uid: str = "") -> DoseGrid:
        """The field sampled at voxel centres; trilinear interpolation reproduces it exactly."""
        z, y, x = (origin_mm[a] + spacing_mm[a] * np.arange(shape_zyx[2 - a]) for a in (2, 1, 0))
        dose = self(x[None, None, :], y[None, :, None], z[:, None, None])
        if dose.min() < 0:
            raise ValueError("the linear field goes negative inside the grid; raise dose_gy")
        return DoseGrid(np.ascontiguousarray(dose, dtype=np.float32), tuple(map(float, origin_mm)),
                        tuple(map(float, spacing_mm)), frame_of_reference_uid)


# --------------------------------------------------------------------------------------------------------
# Closed-form DVHs
# --------------------------------------------------------------------------------------------------------


def _area_below(t: np.ndarray, r: float) -> np.ndarray:
    s = np.clip(t / r, -1.0, 1.0)
    return r * r * (math.pi / 2 + np.arcsin(s) + s * np.sqrt(1.0 - s * s))


def _area_below_integral(t: np.ndarray, r: float) -> np.ndarray:
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


class SlabTruth:
    """Exact DVH of a stack of disc slabs (holes subtracted) in a linear field."""

    def __init__(self, slabs: Sequence[Slab], field: LinearField, centre_xy: tuple[float, float]):
        self.slabs = [s for s in slabs if s.radius > 0 and s.z_hi > s.z_lo]
        self.field = field
        g = field.gradient_gy_per_mm
        self.g_perp = math.hypot(g[0], g[1])
        self.g_z = g[2]
        # Dose at the shape's axis, at z: d_axis(z) = base + g_z z.
        cx, cy = centre_xy
        self.base = field(cx, cy, 0.0)

    @property
    def volume_mm3(self) -> float:
        return sum(s.sign * math.pi * s.radius**2 * (s.z_hi - s.z_lo) for s in self.slabs)

    def _slab_below(self, slab: Slab, dose: np.ndarray) -> np.ndarray:
        r, a, b = slab.radius, slab.z_lo, slab.z_hi
        if self.g_perp == 0.0:
            if self.g_z == 0.0:
                return np.where(dose >= self.base, math.pi * r * r * (b - a), 0.0)
            z_cut = (dose - self.base) / self.g_z
            lo, hi = (a, b) if self.g_z > 0 else (b, a)
            frac = np.clip((z_cut - lo) / (hi - lo), 0.0, 1.0)
            return math.pi * r * r * (b - a) * frac
        t_a = (dose - self.base - self.g_z * a) / self.g_perp
        if self.g_z == 0.0:
            return (b - a) * _area_below(t_a, r)
        t_b = (dose - self.base - self.g_z * b) / self.g_perp
        return (self.g_perp / self.g_z) * (_area_below_integral(t_a, r) - _area_below_integral(t_b, r))

    def volume_below(self, dose) -> np.ndarray:
        dose = np.asarray(dose, dtype=np.float64)
        return sum(s.sign * self._slab_below(s, dose) for s in self.slabs)

    def volume_above(self, dose) -> np.ndarray:
        return self.volume_mm3 - self.volume_below(dose)

    @property
    def dmean_gy(self) -> float:
        total = sum(
            s.sign * math.pi * s.radius**2 * (s.z_hi - s.z_lo) * (self.base + self.g_z * 0.5 * (s.z_lo + s.z_hi))
            for s in self.slabs
        )
        return total / self.volume_mm3

    def _extremes(self) -> tuple[float, float]:
        values = []
        for s in self.slabs:
            if s.sign < 0:
                continue
            for z in (s.z_lo, s.z_hi):
                centre = self.base + self.g_z * z
                values += [centre - self.g_perp * s.radius, centre + self.g_perp * s.radius]
        return min(values), max(values)

    @property
    def dmin_gy(self) -> float:
        return self._extremes()[0]

    @property
    def dmax_gy(self) -> float:
        return self._extremes()[1]

    def dose_at_volume_mm3(self, volume_mm3: float) -> float:
        """The dose received by the hottest ``volume_mm3``, by bisection on the closed form."""
        lo, hi = self.dmin_gy, self.dmax_gy
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if self.volume_above(mid) > volume_mm3:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def dose_at_percent(self, percent: float) -> float:
        return self.dose_at_volume_mm3(percent / 100.0 * self.volume_mm3)


def slab_truth(
    structure_shape: Shape, field: LinearField, spacing_mm: float, *, offset_mm: float = 0.0,
    n_vertices: int = 256, end_cap: str = "half", min_radius_mm: float = 1e-3,
) -> SlabTruth:
    """Exact DVH of ``contour_shape(shape, ...)`` as isodose models it: each plane a slab reaching halfway
    to its neighbours, with half a plane spacing of end-cap (or none)."""
    planes = [z for z in plane_positions(structure_shape, spacing_mm, offset_mm)
              if structure_shape.radii(float(z))[0] >= min_radius_mm]
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
