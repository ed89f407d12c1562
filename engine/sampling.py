"""Dose at the weighted samples of a sampling plan, accumulated per structure by the chosen backend.

The plan is processed in batches of planes bounded by ``max_cells_per_batch`` cells (and, on a device, by
half of its free memory), so that memory stays bounded for any structure; a batch that still runs out of
memory is split in two and retried, never left partial. Batches and chunks depend only on the input (and
the memory at hand), so results do not depend on the machine's thread count. Dmin and Dmax also take the dose
at every contour vertex on both faces of its slab, so that extremes on the surface are not missed between
interior samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dispatch import Backend
from .errors import IsodoseError
from .geometry import transform_points
from .model import DoseGrid
from .voxelize import SamplingOptions, SamplingPlan


@dataclass(frozen=True, eq=False)
class StructureSamples:
    """Raw per-structure results: a dose histogram (mm^3 per bin from 0 Gy) and exact sums."""

    hist_mm3: np.ndarray
    bin_width_gy: float
    inside_mm3: np.ndarray
    outside_mm3: np.ndarray
    dose_volume_sum: np.ndarray
    dmin_gy: np.ndarray
    dmax_gy: np.ndarray
    #: Volume centroid of each structure (all of it, inside and outside the grid) in the dose grid's frame.
    centroid_mm: np.ndarray
    backend: str
    device: str


def histogram_range(grid: DoseGrid, n_bins: int) -> float:
    """Bin width (Gy) of histograms spanning 0 to just above the grid's maximum dose."""
    top = grid.max_gy * (1.0 + 1e-6)
    return (top if top > 0 else 1.0) / n_bins


def sample_structures(
    plan: SamplingPlan, grid: DoseGrid, backend: Backend, options: SamplingOptions,
    transforms: np.ndarray | None = None,
) -> StructureSamples:
    """Sample every structure of ``plan``; ``transforms`` (one rigid 4x4 per structure, identity by default)
    maps each structure's coordinates into the dose grid's frame."""
    kernels = backend.kernels
    n_structures = plan.n_structures
    n_bins = options.dose_bins
    bin_width = histogram_range(grid, n_bins)
    origin = np.asarray(grid.origin_mm, dtype=np.float64)
    spacing = np.asarray(grid.spacing_mm, dtype=np.float64)
    dose = grid.dose_gy

    if transforms is None:
        transforms = np.broadcast_to(np.eye(4), (n_structures, 4, 4))
    transforms = np.ascontiguousarray(transforms, dtype=np.float64).reshape(n_structures, 4, 4)
    hist = np.zeros((n_structures, n_bins))
    sums = np.zeros((n_structures, 6))  # inside, outside, dose x volume, x, y, z x volume
    dmin = np.full(n_structures, np.inf)
    dmax = np.full(n_structures, -np.inf)
    plane_structure = plan.plane_structure()

    out_of_memory = getattr(kernels, "out_of_memory_errors", lambda: (MemoryError,))()
    max_cells = options.max_cells_per_batch
    free = getattr(kernels, "free_memory_bytes", lambda: None)()
    if free:  # a device's memory: use at most half of what is free now
        max_cells = max(1, min(max_cells, int(0.5 * free / getattr(kernels, "BYTES_PER_CELL", 64))))

    def run_batch(first: int, end: int) -> None:
        cell_start = plan.plane_cell_start[first : end + 1]
        ring_start = plan.plane_ring_start[first : end + 1]
        vertex_start = plan.ring_start[ring_start[0] : ring_start[-1] + 1]
        # The structures present in this batch, and where each one's planes start within it.
        owners = plane_structure[first:end]
        present, first_plane = np.unique(owners, return_index=True)
        structure_start = np.append(first_plane, end - first)
        try:
            cells = kernels.polygon_coverage(
                plan.vertices[vertex_start[0] : vertex_start[-1]],
                vertex_start - vertex_start[0],
                ring_start - ring_start[0],
                cell_start - cell_start[0],
                plan.plane_x0[first:end],
                plan.plane_y0[first:end],
                plan.plane_nx[first:end],
                plan.plane_ny[first:end],
                plan.plane_hx[first:end],
                plan.plane_hy[first:end],
                plan.scanlines,
            )
            batch_hist, batch_stats = kernels.cell_histograms(
                dose, origin, spacing, cells, cell_start - cell_start[0],
                plan.plane_z_lo[first:end], plan.plane_z_hi[first:end], structure_start, transforms[present],
                bin_width, n_bins, options.chunks,
            )
            del cells
        except out_of_memory as exc:
            # Not enough memory for this batch: split it and try again; a single plane cannot be split.
            if end - first == 1:
                name = plan.names[int(owners[0])]
                raise IsodoseError(
                    f"not enough memory for one contour plane ({int(cell_start[-1] - cell_start[0]):,} cells on "
                    f"{backend.name}); lower the supersampling", obj=f"ROI {name!r}",
                ) from exc
            middle = (first + end) // 2
            run_batch(first, middle)
            run_batch(middle, end)
            return
        batch_hist = np.asarray(batch_hist)
        batch_stats = np.asarray(batch_stats)
        hist[present] += batch_hist
        sums[present] += batch_stats[:, [0, 1, 2, 5, 6, 7]]
        dmin[present] = np.fmin(dmin[present], batch_stats[:, 3])
        dmax[present] = np.fmax(dmax[present], batch_stats[:, 4])

    for first, end in plan.batches(max_cells):
        run_batch(first, end)

    if len(plan.vertex_points):
        vertices = plan.vertex_points.copy()
        for s in range(n_structures):
            segment = slice(plan.vertex_structure_start[s], plan.vertex_structure_start[s + 1])
            vertices[segment] = transform_points(transforms[s], vertices[segment])
        vertex_dose = np.asarray(kernels.trilinear(dose, origin, spacing, vertices))
        for s in range(n_structures):
            values = vertex_dose[plan.vertex_structure_start[s] : plan.vertex_structure_start[s + 1]]
            values = values[np.isfinite(values)]
            if len(values) and sums[s, 0] > 0:
                dmin[s] = min(dmin[s], values.min())
                dmax[s] = max(dmax[s], values.max())

    dmin[~np.isfinite(dmin)] = np.nan
    dmax[~np.isfinite(dmax)] = np.nan
    volume = sums[:, 0] + sums[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = np.where(volume[:, None] > 0, sums[:, 3:6] / volume[:, None], np.nan)
    return StructureSamples(
        hist_mm3=hist,
        bin_width_gy=bin_width,
        inside_mm3=sums[:, 0],
        outside_mm3=sums[:, 1],
        dose_volume_sum=sums[:, 2],
        dmin_gy=dmin,
        dmax_gy=dmax,
        centroid_mm=centroid,
        backend=backend.name,
        device=backend.device,
    )
