"""Structures mapped through a deformable registration into the dose grid's frame, and their dose samples.

A recurrence drawn on follow-up imaging is mapped onto the planning CT through the registration between the two
frames. With a rigid registration the sampling kernels move each sample themselves (:mod:`isodose.sampling`).
Through a deformation, Vr is sampled here instead: the cells of its contours (``polygon_coverage``) are cut along
z into thin slabs, each cell-slab a weighted point in Vr's own frame; each point is carried into the planning
frame through the deformation (the ``displace_many`` kernel: the displacement interpolated trilinearly from the
field's grid points, and its Jacobian), and its volume scaled by the Jacobian determinant of the map, so that a
volume that shrinks or grows is counted right; then the dose is interpolated at the mapped points and accumulated
into Vr's histogram, as for any structure.

Which way the map runs. A :class:`~isodose.model.DeformableRegistration` carries points of its registered frame
into its source frame (PS3.3 C.20.3.1.1; an ITK field, fixed into moving). Where the registered frame is Vr's
(the follow-up frame), each sample is carried forward. Where it is the planning frame (the usual export of a
planning system: the planning CT fixed, the follow-up image deformed onto it), the map is inverted point by point:
the planning point ``p`` whose image is Vr's sample ``q`` solves ``post (pre p + d(p)) = q``, found by Newton's
method in the ``invert_displacement_many`` kernel (from ``pre^-1 post^-1 q``, a step halved while it would leave
the field's grid; it converges wherever the field does not fold), and the volume scales by ``1 / det J(p)``. The
largest residual ``|F(p) - q|`` is reported with the result. Inverting per sample is chosen over pulling the
planning frame back (testing which planning points land inside Vr) because it keeps Vr sampled in its own frame by
the same exact coverage as every other structure, whatever the direction of the field.

A point whose map leaves the field's grid is not extrapolated: it counts as outside (the dose grid's outside, in
the DVH), with a warning saying how much of the structure that is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .dispatch import Backend
from .errors import RegistrationError
from .model import DeformableRegistration, DoseGrid
from .sampling import GridBatch, SamplingRequest, StructureSamples, histogram_bin_width, plan_cells, sample_many
from .voxelize import SamplingOptions, SamplingPlan

log = logging.getLogger(__name__)

#: A residual above this (mm) after the inversion is a warning: the field is not invertible there.
INVERSION_WARNING_MM = 0.01


@dataclass(frozen=True, eq=False)
class Deformation:
    """How a structure's points reach the dose grid's frame through a deformable registration.

    Attributes
    ----------
    registration : DeformableRegistration
        The registration.
    inverse : bool
        Whether the registration runs from the dose grid's frame into the structure's (its registered frame is
        the planning frame): then each point is carried by the inverse map, found per point.
    """

    registration: DeformableRegistration
    inverse: bool

    @classmethod
    def between(cls, registration: DeformableRegistration, structure_frame: str, dose_frame: str) -> Deformation:
        """The deformation that carries points of ``structure_frame`` into ``dose_frame``.

        Raises
        ------
        RegistrationError
            When the registration does not relate those two frames.
        """
        frames = (registration.registered_frame_uid, registration.source_frame_uid)
        if frames == (structure_frame, dose_frame):
            return cls(registration, inverse=False)
        if frames == (dose_frame, structure_frame):
            return cls(registration, inverse=True)
        raise RegistrationError(
            f"relates frame of reference {frames[0]} (registered) to {frames[1]} (source), not the recurrence's "
            f"frame {structure_frame} to the dose's {dose_frame}",
            path=registration.source or None,
        )


#: A structure mapped through a deformation is sampled with this share of the most in-plane cells a rigid sampling
#: gives a structure (``SamplingOptions.target_cells``; 3,000 of the default 50,000), whatever its size: each cell is
#: also cut into slabs along z and mapped on its own, and its dose is spread over its mapped region, so the
#: closed-form checks hold with these coarser cells.
DEFORMED_CELL_SHARE = 0.06
#: ... and as many more scanlines per row of cells (coverage is exact along x and sampled along y: coarser cells
#: need more lines for the same area).
DEFORMED_SCANLINE_FACTOR = 4


def deformed_options(options: SamplingOptions) -> SamplingOptions:
    """The sampling options of a structure mapped through a deformation (see :data:`DEFORMED_CELL_SHARE`)."""
    return replace(
        options,
        target_cells=max(1, int(options.target_cells * DEFORMED_CELL_SHARE)),
        scanline_cells=None,
        scanlines=options.scanlines * DEFORMED_SCANLINE_FACTOR,
    )


def _det3(m: np.ndarray) -> np.ndarray:
    """Determinants of ``(n, 3, 3)`` matrices, by the rule of Sarrus (quicker than LAPACK for small matrices)."""
    return (
        m[:, 0, 0] * (m[:, 1, 1] * m[:, 2, 2] - m[:, 1, 2] * m[:, 2, 1])
        - m[:, 0, 1] * (m[:, 1, 0] * m[:, 2, 2] - m[:, 1, 2] * m[:, 2, 0])
        + m[:, 0, 2] * (m[:, 1, 0] * m[:, 2, 1] - m[:, 1, 1] * m[:, 2, 0])
    )


def _inv3(m: np.ndarray, det: np.ndarray) -> np.ndarray:
    """Inverses of ``(n, 3, 3)`` matrices from their cofactors (NaN where ``det`` is 0)."""
    cof = np.empty_like(m)
    cof[:, 0, 0] = m[:, 1, 1] * m[:, 2, 2] - m[:, 1, 2] * m[:, 2, 1]
    cof[:, 0, 1] = m[:, 0, 2] * m[:, 2, 1] - m[:, 0, 1] * m[:, 2, 2]
    cof[:, 0, 2] = m[:, 0, 1] * m[:, 1, 2] - m[:, 0, 2] * m[:, 1, 1]
    cof[:, 1, 0] = m[:, 1, 2] * m[:, 2, 0] - m[:, 1, 0] * m[:, 2, 2]
    cof[:, 1, 1] = m[:, 0, 0] * m[:, 2, 2] - m[:, 0, 2] * m[:, 2, 0]
    cof[:, 1, 2] = m[:, 0, 2] * m[:, 1, 0] - m[:, 0, 0] * m[:, 1, 2]
    cof[:, 2, 0] = m[:, 1, 0] * m[:, 2, 1] - m[:, 1, 1] * m[:, 2, 0]
    cof[:, 2, 1] = m[:, 0, 1] * m[:, 2, 0] - m[:, 0, 0] * m[:, 2, 1]
    cof[:, 2, 2] = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return cof / np.where(det == 0, np.nan, det)[:, None, None]


@dataclass(frozen=True)
class MappedPoints:
    """Points carried through a deformation: where they land (NaN where the map leaves the field's grid), the
    map's Jacobian at each (``jacobian[n]`` the derivatives of the mapped point along x, y and z of the original
    one) and its determinant (the factor by which a volume there grows), and the largest residual of the
    inversion (0 for a forward map)."""

    points_mm: np.ndarray
    jacobian_det: np.ndarray
    residual_mm: float
    jacobian: np.ndarray | None = None

    @property
    def outside_field(self) -> np.ndarray:
        return ~np.all(np.isfinite(self.points_mm), axis=1)


def _forward(registration: DeformableRegistration, table, kernels, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``F(p) = post (pre p + d(p))`` and its Jacobian ``post3 (pre3 + grad d)`` at each point."""
    displacement, gradient = kernels.displace_many(table, points, np.zeros(len(points), dtype=np.int64))
    pre, post = registration.pre_matrix, registration.post_matrix
    moved = points @ pre[:3, :3].T + pre[:3, 3] + displacement
    mapped = moved @ post[:3, :3].T + post[:3, 3]
    jacobian = post[:3, :3] @ (pre[:3, :3][None, :, :] + gradient)
    return mapped, jacobian


def map_points(deformation: Deformation, points_mm: np.ndarray, backend: Backend) -> MappedPoints:
    """Carry points of the structure's frame into the dose grid's frame (see the module docstring).

    Parameters
    ----------
    deformation : Deformation
        The map and its direction.
    points_mm : numpy.ndarray
        ``(n, 3)`` points of the structure's frame.
    backend : Backend
        The backend whose ``displace_many`` interpolates the field.

    Returns
    -------
    MappedPoints

    Examples
    --------
    >>> import numpy as np
    >>> from isodose.dispatch import resolve_backend
    >>> from isodose.model import DeformableRegistration
    >>> vectors = np.zeros((3, 3, 3, 3), np.float32)
    >>> vectors[..., 0] = 2.0  # 2 mm along x everywhere
    >>> reg = DeformableRegistration("plan", "follow-up", vectors, (-10.0, -10.0, -10.0), np.eye(3), (10.0,) * 3)
    >>> forward = map_points(Deformation.between(reg, "plan", "follow-up"), np.zeros((1, 3)), resolve_backend("numpy"))
    >>> forward.points_mm.tolist(), forward.jacobian_det.tolist()
    ([[2.0, 0.0, 0.0]], [1.0])
    >>> back = map_points(Deformation.between(reg, "follow-up", "plan"), forward.points_mm, resolve_backend("numpy"))
    >>> np.round(back.points_mm, 9).tolist(), back.residual_mm < 1e-6
    ([[0.0, 0.0, 0.0]], True)
    """
    registration = deformation.registration
    kernels = backend.kernels
    points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    if not len(points):
        return MappedPoints(np.empty((0, 3)), np.empty(0), 0.0, np.empty((0, 3, 3)))
    table = kernels.field_table([(registration.vectors_mm, registration.world_to_index())])
    if not deformation.inverse:
        mapped, jacobian = _forward(registration, table, kernels, points)
        det = _det3(jacobian)  # NaN where the map leaves the field's grid
        return MappedPoints(mapped, det, 0.0, jacobian)
    # The inverse: the planning point p with post (pre p + d(p)) = q, i.e. pre p + d(p) = post^-1 q (Newton's
    # method, in the kernel), and the Jacobian of the inverse map, J_F(p)^-1.
    post_inverse = np.linalg.inv(registration.post_matrix)
    targets = points @ post_inverse[:3, :3].T + post_inverse[:3, 3]
    found_points, gradient, residual = kernels.invert_displacement_many(
        table,
        targets,
        np.zeros(len(points), dtype=np.int64),
        registration.pre_matrix[None],
        np.linalg.inv(registration.pre_matrix)[None],
    )
    found = np.all(np.isfinite(found_points), axis=1)
    jacobian = registration.post_matrix[:3, :3] @ (registration.pre_matrix[:3, :3][None, :, :] + gradient)
    forward_det = _det3(jacobian)  # NaN where no point was found
    inverse_jacobian = _inv3(jacobian, forward_det)
    with np.errstate(invalid="ignore", divide="ignore"):
        det = np.where(forward_det != 0, 1.0 / forward_det, np.nan)
    # The residual in the structure's frame: post scales the one the kernel stops at.
    scale = float(np.linalg.norm(registration.post_matrix[:3, :3], 2))
    worst = float(np.nanmax(residual)) * scale if found.any() else 0.0
    return MappedPoints(found_points, det, worst, inverse_jacobian)


@dataclass(frozen=True, eq=False)
class DeformedRequest:
    """The structures of one sampling plan (in their own frame), carried into the dose grid ``grid`` through
    ``deformation``: the deformable counterpart of :class:`~isodose.sampling.SamplingRequest`."""

    plan: SamplingPlan
    grid: DoseGrid
    deformation: Deformation
    known_dose_range: tuple[DoseGrid, float, float] | None = None

    def with_dose_range(self, dose_range: tuple[float, float] | None = None) -> DeformedRequest:
        base = SamplingRequest(self.plan, self.grid).with_dose_range(dose_range)
        return replace(self, known_dose_range=base.known_dose_range)

    def dose_range(self) -> tuple[float, float]:
        return SamplingRequest(self.plan, self.grid, known_dose_range=self.known_dose_range).dose_range()


def slab_thickness_mm(request: DeformedRequest) -> float:
    """The thickness of the slabs the planes are cut into: half the finest spacing of the dose grid and of the
    field's grid, so that every sample sees the dose and the deformation vary linearly across it."""
    spacing = [*request.grid.spacing_mm, *request.deformation.registration.grid_spacing_mm]
    return 0.5 * min(float(s) for s in spacing)


def structure_points(
    request: DeformedRequest, backend: Backend
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`plan_points` of a deformed request, its slabs no thicker than :func:`slab_thickness_mm`."""
    return plan_points(request.plan, backend, slab_thickness_mm(request))


def plan_points(
    plan: SamplingPlan, backend: Backend, thickness: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each structure's weighted points in the patient coordinates of its structure set: the covered part of each
    cell of its planes (a label image's weighted voxels' cells), cut along z into slabs no thicker than
    ``thickness`` (mm). Returns the points ``(n, 3)``, their volumes (mm^3), the structure of each, and the
    covariance of each point's region ``(n, 3, 3)`` (the covered part of its cell in x and y, a uniform slab in z;
    turned with the structure's frame where that is oblique)."""
    kernels = backend.kernels
    cells = kernels.to_host(plan_cells(kernels, plan, 0, len(plan.plane_nx)))
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 6)
    plane_structure = plan.plane_structure()
    points, volumes, owners, spreads = [], [], [], []
    for p in range(len(plan.plane_nx)):
        plane_cells = cells[plan.plane_cell_start[p] : plan.plane_cell_start[p + 1]]
        covered = plane_cells[plane_cells[:, 0] > 0]
        if not len(covered):
            continue
        z_lo, z_hi = float(plan.plane_z_lo_mm[p]), float(plan.plane_z_hi_mm[p])
        n_slabs = max(1, math.ceil((z_hi - z_lo) / thickness - 1e-9))
        dz = (z_hi - z_lo) / n_slabs
        z = z_lo + dz * (np.arange(n_slabs) + 0.5)
        xy = np.repeat(covered[:, 1:3], n_slabs, axis=0)
        points.append(np.column_stack([xy, np.tile(z, len(covered))]))
        volumes.append(np.repeat(covered[:, 0] * dz, n_slabs))
        owners.append(np.full(len(covered) * n_slabs, plane_structure[p], dtype=np.int64))
        covariance = np.zeros((len(covered), 3, 3))
        covariance[:, 0, 0], covariance[:, 0, 1], covariance[:, 1, 1] = covered[:, 3], covered[:, 4], covered[:, 5]
        covariance[:, 1, 0] = covered[:, 4]
        covariance[:, 2, 2] = dz * dz / 12.0
        spreads.append(np.repeat(covariance, n_slabs, axis=0))
    if not points:
        return np.empty((0, 3)), np.empty(0), np.empty(0, dtype=np.int64), np.empty((0, 3, 3))
    every, owner, spread = np.concatenate(points), np.concatenate(owners), np.concatenate(spreads)
    for s in np.flatnonzero(np.any(plan.structure_frame != np.eye(4), axis=(1, 2))):  # label images not axial
        mine = owner == s
        frame = plan.structure_frame[s]
        every[mine] = every[mine] @ frame[:3, :3].T + frame[:3, 3]
        spread[mine] = frame[:3, :3] @ spread[mine] @ frame[:3, :3].T
    return every, np.concatenate(volumes), owner, spread


def spread_widths(
    batch: GridBatch, grid_index: int, mapped: np.ndarray, jacobian: np.ndarray, covariance: np.ndarray, step: float
) -> np.ndarray:
    """The width of the uniform distribution with the variance of the (locally linear) dose over each sample's
    region once mapped, as the rigid kernels spread theirs: the dose gradient ``g`` at the mapped point (central
    differences of the trilinear dose), carried back by the map's Jacobian ``J``, over the region's covariance
    ``C``: ``sqrt(12 (J^T g)^T C (J^T g))``. Without it, a sample would put all its volume on one side of an
    isodose that cuts its cell (half a cell's bias across the isodose's section)."""
    n = len(mapped)
    offsets = step * np.eye(3)
    probes = (mapped[:, None, :] + np.concatenate([offsets, -offsets])[None, :, :]).reshape(-1, 3)
    values = batch.dose_at(probes, np.full(len(probes), grid_index)).reshape(n, 6)
    gradient = (values[:, :3] - values[:, 3:]) / (2.0 * step)
    gradient = np.where(np.isfinite(gradient), gradient, 0.0)  # at the grid's edge: no spread
    local = np.einsum("nij,ni->nj", np.nan_to_num(jacobian), gradient)  # J^T g
    variance = np.einsum("ni,nij,nj->n", local, covariance, local)
    return np.sqrt(12.0 * np.maximum(variance, 0.0))


def sample_deformed(
    request: DeformedRequest, backend: Backend, options: SamplingOptions, batch: GridBatch | None = None
) -> StructureSamples:
    """The samples of a deformed request: the same quantities as :func:`isodose.sampling.sample_many` gives a
    rigid one (histograms, volumes inside and outside the grid, dose x volume, extremes, centroids)."""
    batch = batch if batch is not None else GridBatch.of([request.grid], backend)
    plan = request.plan
    n = plan.n_structures
    n_bins = options.dose_bins
    bin_width = histogram_bin_width(request.grid, n_bins, request.dose_range())
    points, volumes, owners, covariance = structure_points(request, backend)
    mapped = map_points(request.deformation, points, backend)
    source = request.deformation.registration.source or "the registration"
    notes: list[str] = []
    if mapped.residual_mm > INVERSION_WARNING_MM:
        notes.append(
            f"{source}: the inverse of the deformation is found only to {mapped.residual_mm:.3g} mm at some samples "
            "(the field folds there)"
        )
    off_field = mapped.outside_field
    weights = np.where(off_field, volumes, volumes * np.abs(np.nan_to_num(mapped.jacobian_det, nan=1.0)))
    grid_index = batch.index(request.grid)
    dose = np.full(len(points), np.nan)
    if (~off_field).any():
        dose[~off_field] = batch.dose_at(mapped.points_mm[~off_field], np.full(int((~off_field).sum()), grid_index))
    inside = np.isfinite(dose)
    widths = np.zeros(len(points))
    if inside.any():
        assert mapped.jacobian is not None
        step = 0.05 * min(request.grid.spacing_mm)
        widths[inside] = spread_widths(
            batch, grid_index, mapped.points_mm[inside], mapped.jacobian[inside], covariance[inside], step
        )
    hist = np.zeros((n, n_bins))
    sums = np.zeros((n, 6))
    dmin = np.full(n, np.nan)
    dmax = np.full(n, np.nan)
    for s in range(n):
        mine = owners == s
        held = mine & inside
        if held.any():
            hist[s] = backend.kernels.to_host(
                backend.kernels.accumulate_histogram(dose[held], weights[held], widths[held], bin_width, n_bins)
            )
            dmin[s], dmax[s] = float(dose[held].min()), float(dose[held].max())
        sums[s, 0] = weights[held].sum()
        sums[s, 1] = weights[mine & ~inside].sum()
        sums[s, 2] = (weights[held] * dose[held]).sum()
        placed = mine & ~off_field
        sums[s, 3:6] = (weights[placed, None] * mapped.points_mm[placed]).sum(axis=0)
        lost = float(volumes[mine & off_field].sum())
        if lost > 0:
            notes.append(
                f"ROI {plan.names[s]}: {lost / 1000.0:.3f} cc of it map outside the deformation's grid ({source}): "
                "counted as outside the dose grid"
            )
    if options.extremes == "vertices" and len(plan.vertex_points):
        _vertex_extremes(request, backend, batch, grid_index, sums, dmin, dmax)
    placed_volume = np.array([weights[(owners == s) & ~off_field].sum() for s in range(n)])
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = np.where(placed_volume[:, None] > 0, sums[:, 3:6] / placed_volume[:, None], np.nan)
    return StructureSamples(
        hist_mm3=hist,
        bin_width_gy=float(bin_width),
        inside_mm3=sums[:, 0],
        outside_mm3=sums[:, 1],
        dose_volume_sum=sums[:, 2],
        dmin_gy=dmin,
        dmax_gy=dmax,
        centroid_mm=centroid,
        backend=backend.name,
        device=backend.device,
        warnings=tuple(notes),
        inversion_residual_mm=mapped.residual_mm if request.deformation.inverse else math.nan,
        cells=plan.structure_cells(),
        supersampling=plan.supersampling,
    )


def _vertex_extremes(request, backend, batch, grid_index, sums, dmin, dmax) -> None:
    """Dmin and Dmax also over the contours' vertices on both faces of their slabs, mapped as the samples are."""
    plan = request.plan
    starts = plan.vertex_structure_start
    mapped = map_points(request.deformation, plan.vertex_points, backend)
    dose = np.full(len(plan.vertex_points), np.nan)
    placed = ~mapped.outside_field
    if placed.any():
        dose[placed] = batch.dose_at(mapped.points_mm[placed], np.full(int(placed.sum()), grid_index))
    for s in range(plan.n_structures):
        values = dose[starts[s] : starts[s + 1]]
        values = values[np.isfinite(values)]
        if len(values) and sums[s, 0] > 0:
            dmin[s] = np.fmin(dmin[s], values.min())
            dmax[s] = np.fmax(dmax[s], values.max())


def sample_requests(
    requests: Sequence[SamplingRequest | DeformedRequest],
    backend: Backend,
    options: SamplingOptions,
    grids: GridBatch | None = None,
) -> list[StructureSamples]:
    """The samples of each request, rigid ones together (:func:`isodose.sampling.sample_many`), deformed ones
    here, in the order given."""
    requests = list(requests)
    batch = grids if grids is not None else GridBatch.of([r.grid for r in requests], backend)
    rigid = [r for r in requests if isinstance(r, SamplingRequest)]
    rigid_samples = iter(sample_many(rigid, backend, options, grids=batch) if rigid else [])
    return [
        next(rigid_samples) if isinstance(r, SamplingRequest) else sample_deformed(r, backend, options, batch)
        for r in requests
    ]
