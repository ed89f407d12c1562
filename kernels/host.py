"""What the CPU backends share: host arrays, host memory, and the batched calls of the protocol as loops.

On the CPU nothing is gained by merging the grids of many requests into one call, so ``grid_table`` only keeps
the grids as they are and the batched kernels call the single-grid kernel once per run of structures (or of
points) that share a grid. Each call is then the one the engine would have made for that grid alone, so batched
and single results are the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Bytes of memory one coverage cell needs while a batch is processed (its 6 float64 columns and room to spare).
BYTES_PER_CELL = 64
#: Requests of many grids are sampled one at a time on the CPU.
PREFERS_MERGED_REQUESTS = False
#: The CPU backends read dose grids where they are: a grid table holds the arrays themselves, not copies.
COPIES_GRIDS = False


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    return (MemoryError,)


def free_memory_bytes() -> int | None:
    return None


def asarray(array: Any, dtype: Any = np.float64) -> np.ndarray:
    """``array`` as a C-contiguous NumPy array of ``dtype``."""
    return np.ascontiguousarray(array, dtype=dtype)


def to_host(array: Any) -> np.ndarray:
    """A backend array (here already a NumPy array) as a NumPy array."""
    return np.asarray(array)


def plane_scanlines(scanlines: Any, n_planes: int) -> np.ndarray:
    """The scanlines of each of ``n_planes`` planes (int64) from ``scanlines``: one count for all of them, or
    one per plane. ValueError for a count below 1 or a number of counts that is not ``n_planes``."""
    counts = np.asarray(scanlines)
    if counts.ndim == 0:
        counts = np.full(n_planes, int(counts), dtype=np.int64)
    counts = counts.astype(np.int64, copy=False).reshape(-1)
    if len(counts) != n_planes:
        raise ValueError(f"{len(counts)} scanline counts for {n_planes} planes")
    if len(counts) and counts.min() < 1:
        raise ValueError("every plane needs at least one scanline")
    return np.ascontiguousarray(counts)


def check_courses(doses: Sequence[Any], weights: Sequence[float], fractions: Sequence[int]) -> None:
    """ValueError unless there is at least one dose, all of one shape, each with a weight and a fraction count."""
    if not len(doses) or len(weights) != len(doses) or len(fractions) != len(doses):
        raise ValueError(
            f"course_sum needs one weight and one fraction count for each of at least one dose "
            f"({len(doses)} doses, {len(weights)} weights, {len(fractions)} fraction counts)"
        )
    shapes = {tuple(dose.shape) for dose in doses}
    if len(shapes) > 1:
        raise ValueError(f"course_sum needs doses of one shape, not {sorted(shapes)}")


@dataclass(frozen=True, eq=False)
class HostGridTable:
    """Dose grids ``(dose, origin, spacing)`` kept as they are, for the CPU backends' batched calls."""

    grids: tuple[tuple[Any, np.ndarray, np.ndarray], ...]

    @property
    def n_grids(self) -> int:
        return len(self.grids)


def grid_table(grids: Sequence[tuple[Any, Any, Any]]) -> HostGridTable:
    return HostGridTable(
        tuple(
            (dose, np.asarray(origin, dtype=np.float64), np.asarray(spacing, dtype=np.float64))
            for dose, origin, spacing in grids
        )
    )


def _runs(keys: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of equal consecutive rows of ``keys``."""
    if not len(keys):
        return []
    change = np.flatnonzero(np.any(keys[1:] != keys[:-1], axis=1)) + 1
    bounds = np.concatenate([[0], change, [len(keys)]])
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def trilinear_many(
    trilinear: Callable[..., np.ndarray], table: HostGridTable, points: Any, point_grid: Any
) -> np.ndarray:
    """``trilinear`` of each point in its grid of ``table``: one call per run of points sharing a grid."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    point_grid = np.asarray(point_grid, dtype=np.int64).reshape(-1)
    out = np.empty(len(points))
    for start, end in _runs(point_grid[:, None]):
        out[start:end] = trilinear(*table.grids[int(point_grid[start])], points[start:end])
    return out


def cell_histograms_many(
    cell_histograms: Callable[..., tuple[np.ndarray, np.ndarray]],
    table: HostGridTable,
    cells: Any,
    plane_cell_start: Any,
    plane_z_lo: Any,
    plane_z_hi: Any,
    structure_plane_start: Any,
    structure_grid: Any,
    structure_transform: Any,
    structure_bin_width: Any,
    n_bins: int,
    n_chunks: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``cell_histograms`` of structures in many grids: one call per run of structures sharing a grid and a bin
    width, over that run's planes and cells."""
    structure_plane_start = np.asarray(structure_plane_start, dtype=np.int64)
    plane_cell_start = np.asarray(plane_cell_start, dtype=np.int64)
    structure_grid = np.asarray(structure_grid, dtype=np.int64)
    bin_width = np.asarray(structure_bin_width, dtype=np.float64)
    transforms = np.asarray(structure_transform, dtype=np.float64).reshape(-1, 4, 4)
    n_structures = len(structure_plane_start) - 1
    hist = np.zeros((n_structures, int(n_bins)))
    stats = np.zeros((n_structures, 8))
    for first, end in _runs(np.column_stack([structure_grid, bin_width])):
        p0, p1 = int(structure_plane_start[first]), int(structure_plane_start[end])
        c0 = int(plane_cell_start[p0])
        run_hist, run_stats = cell_histograms(
            *table.grids[int(structure_grid[first])],
            cells[c0 : int(plane_cell_start[p1])],
            plane_cell_start[p0 : p1 + 1] - c0,
            plane_z_lo[p0:p1],
            plane_z_hi[p0:p1],
            structure_plane_start[first : end + 1] - p0,
            transforms[first:end],
            float(bin_width[first]),
            n_bins,
            n_chunks,
        )
        hist[first:end] = run_hist
        stats[first:end] = run_stats
    return hist, stats


@dataclass(frozen=True)
class HostFieldTable:
    """Displacement fields ``(vectors, world_to_index)`` kept as they are, for the CPU backends' batched calls."""

    fields: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def n_fields(self) -> int:
        return len(self.fields)


def field_table(fields: Sequence[tuple[Any, Any]]) -> HostFieldTable:
    """Check and keep displacement fields: vectors ``(nz, ny, nx, 3)`` and a 4x4 ``world_to_index`` each."""
    kept = []
    for vectors, world_to_index in fields:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 4 or vectors.shape[3] != 3:
            raise ValueError(f"a displacement field's vectors are (nz, ny, nx, 3), not {vectors.shape}")
        matrix = np.ascontiguousarray(world_to_index, dtype=np.float64).reshape(4, 4)
        kept.append((vectors, matrix))
    return HostFieldTable(tuple(kept))


def displace_many(
    displace: Callable[..., tuple[np.ndarray, np.ndarray]], table: HostFieldTable, points: Any, point_field: Any
) -> tuple[np.ndarray, np.ndarray]:
    """``displace`` of each point in its field of ``table``: one call per run of points sharing a field."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    point_field = np.asarray(point_field, dtype=np.int64).reshape(-1)
    displacement = np.empty((len(points), 3))
    jacobian = np.empty((len(points), 3, 3))
    for start, end in _runs(point_field[:, None]):
        vectors, matrix = table.fields[int(point_field[start])]
        displacement[start:end], jacobian[start:end] = displace(vectors, matrix, points[start:end])
    return displacement, jacobian


def invert_displacement_many(
    invert: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]],
    table: HostFieldTable,
    targets: Any,
    point_field: Any,
    pre: Any,
    pre_inverse: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``invert`` of each target in its field of ``table``: one call per run of targets sharing a field."""
    targets = np.asarray(targets, dtype=np.float64).reshape(-1, 3)
    point_field = np.asarray(point_field, dtype=np.int64).reshape(-1)
    pre = np.asarray(pre, dtype=np.float64).reshape(-1, 4, 4)
    pre_inverse = np.asarray(pre_inverse, dtype=np.float64).reshape(-1, 4, 4)
    points = np.empty((len(targets), 3))
    jacobian = np.empty((len(targets), 3, 3))
    residual = np.empty(len(targets))
    for start, end in _runs(point_field[:, None]):
        f = int(point_field[start])
        vectors, matrix = table.fields[f]
        points[start:end], jacobian[start:end], residual[start:end] = invert(
            vectors, matrix, targets[start:end], pre[f], pre_inverse[f]
        )
    return points, jacobian, residual


def moved_doses_many(
    moved_doses: Callable[..., np.ndarray],
    table: HostGridTable,
    points: Any,
    point_grid: Any,
    case_point_start: Any,
    transforms: Any,
    case_transform_start: Any,
) -> np.ndarray:
    """``moved_doses(dose, origin, spacing, points, transforms, out) -> out`` of each case (its points in one grid at
    a time, ``out`` of shape ``(transforms, points)``), laid end to end as the protocol says. A case whose points lie
    in one grid is written in place into the result."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    point_grid = np.asarray(point_grid, dtype=np.int64).reshape(-1)
    transforms = np.asarray(transforms, dtype=np.float64).reshape(-1, 4, 4)
    starts = np.asarray(case_point_start, dtype=np.int64)
    transform_starts = np.asarray(case_transform_start, dtype=np.int64)
    sizes = np.diff(starts) * np.diff(transform_starts)
    result = np.empty(int(sizes.sum()))
    offset = 0
    for c in range(len(starts) - 1):
        a, b = int(starts[c]), int(starts[c + 1])
        moves = transforms[transform_starts[c] : transform_starts[c + 1]]
        block = result[offset : offset + int(sizes[c])].reshape(len(moves), b - a)
        offset += int(sizes[c])
        runs = list(_runs(point_grid[a:b, None]))
        for start, end in runs:
            grid = table.grids[int(point_grid[a + start])]
            if len(runs) == 1:
                moved_doses(*grid, points[a:b], moves, block)
            else:
                block[:, start:end] = moved_doses(*grid, points[a + start : a + end], moves, None)
    return result
