"""CuPy GPU backend: the kernels of ``cuda/isodose.cu`` (RawModule), with the same signatures and meaning as
``numpy_ref``.

Data stays on the device between steps: the cells made by ``polygon_coverage`` are a device array that
``cell_histograms`` reads, and the engine puts a computation's dose grids on the device once (``grid_table``)
for all its launches; the host gets only the histograms and statistics. Nothing is kept from one computation
to the next: a host array may have changed in place since. Sums are fixed-point integers (see the CUDA
source), so a launch gives the same bits whatever the order its threads run in.

The host code is written against an array module and a launcher (:class:`GpuKernels`), so that it also runs
with NumPy and the kernels compiled for the CPU (tests/cuda), which is how CI checks it without a GPU.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import host, numpy_ref

NAME = "cupy"
SOURCE = Path(__file__).with_name("cuda") / "isodose.cu"
BLOCK = 256
#: Fixed-point scales, as in the CUDA source.
VOLUME_SCALE = 2.0**32
DOSE_VOLUME_SCALE = 2.0**24
POSITION_VOLUME_SCALE = 2.0**20
#: Bytes of device memory one cell needs while a batch is processed (cells array, with room to spare).
BYTES_PER_CELL = 64
#: The structures of many requests, each in its own grid, are sampled in one launch.
PREFERS_MERGED_REQUESTS = True
#: ``grid_table`` copies the grids to the device: the engine crops each to the box of what samples it.
COPIES_GRIDS = True


@dataclass(frozen=True, eq=False)
class GridTable:
    """Dose grids on the device, as the kernels read them (see "grid tables" in the CUDA source)."""

    doses: object
    offsets: object
    shapes: object
    geometry: object
    n_grids: int
    #: Where the table was copied to the device asynchronously: the event its copy records (kernels that read the
    #: table wait for it on the device, not on the host), and the host staging buffer, kept until then.
    ready: object = None
    staging: object = None

    def args(self) -> list:
        return [self.doses, self.offsets, self.shapes, self.geometry]


@dataclass(frozen=True, eq=False)
class FieldTable:
    """Displacement fields on the device, as ``displace_kernel`` reads them (see the CUDA source)."""

    vectors: object
    offsets: object
    shapes: object
    matrices: object
    n_fields: int

    def args(self) -> list:
        return [self.vectors, self.offsets, self.shapes, self.matrices]


class GpuKernels:
    """The host side of the GPU kernels.

    ``xp`` is the array module (cupy, or numpy in tests) and ``launch(name, n_threads, args)`` runs a kernel
    of the CUDA source over ``n_threads`` threads; ``args`` are device arrays and NumPy scalars.
    """

    NAME = NAME
    BYTES_PER_CELL = BYTES_PER_CELL
    PREFERS_MERGED_REQUESTS = PREFERS_MERGED_REQUESTS
    COPIES_GRIDS = COPIES_GRIDS

    def __init__(self, xp, launch, device: str):
        self.xp = xp
        self.launch = launch
        self.device = device
        self._staging = np.empty(0, dtype=np.uint8)

    # -- capabilities -----------------------------------------------------------------------------------------
    def device_name(self) -> str:
        return self.device

    def out_of_memory_errors(self) -> tuple[type[BaseException], ...]:
        return (MemoryError,)

    def free_memory_bytes(self) -> int | None:
        return None

    # -- transfers --------------------------------------------------------------------------------------------
    def to_device(self, array, dtype):
        if isinstance(array, self.xp.ndarray) and array.dtype == dtype and array.flags.c_contiguous:
            return array
        return self.xp.ascontiguousarray(self.xp.asarray(array, dtype=dtype))

    def to_host(self, array) -> np.ndarray:
        return array.get() if hasattr(array, "get") else np.asarray(array)

    def asarray(self, array, dtype=np.float64):
        """``array`` on the device as ``dtype`` (no copy when it is there already)."""
        return self.to_device(array, dtype)

    # -- staged copies: one buffer a table, copied while the device computes -------------------------------------
    def staging_buffer(self, nbytes: int) -> np.ndarray:
        """A host buffer of ``nbytes`` bytes to copy to the device from (page-locked on a GPU, from CuPy's pool of
        it). Here one buffer, grown as needed and used again, as that pool's blocks are: :meth:`copy_staged` has
        copied it by the time it returns, so the next table may overwrite it."""
        if self._staging.nbytes < nbytes:
            self._staging = np.empty(nbytes, dtype=np.uint8)
        return self._staging[:nbytes]

    def copy_staged(self, host: np.ndarray):
        """``host`` (a :meth:`staging_buffer`) copied to the device: ``(device bytes, ready)``, where ``ready`` is
        what a kernel reading them waits for (None: the copy is done already)."""
        device = self.xp.asarray(host)
        if isinstance(device, np.ndarray) and np.shares_memory(device, host):  # an array module that is NumPy
            device = device.copy()
        return device, None

    def wait_ready(self, table) -> list:
        """The arguments of ``table`` for a kernel, once the kernels' stream waits for the table's copy."""
        return table.args()

    def grid_table(self, grids) -> GridTable:
        """Put dose grids ``[(dose, origin, spacing), ...]`` on the device as one table (see the CUDA source).

        Grids on the host (the engine's, cropped) are written into one staging buffer with the table's offsets,
        shapes and geometry, as float32, and that buffer is copied in one copy: on a GPU from page-locked memory on
        a stream of its own, so that it overlaps the kernels already running (of the batch before); the kernels
        that read the table wait for it on the device. A grid already on the device as float32 is used as it is."""
        grids = list(grids)
        if grids and not any(isinstance(dose, self.xp.ndarray) for dose, _, _ in grids):
            return self._staged_grid_table(grids)
        parts = [self.to_device(dose, np.float32) for dose, _, _ in grids]
        shapes = [part.shape for part in parts]
        doses = parts[0].reshape(-1) if len(parts) == 1 else self.xp.concatenate([p.reshape(-1) for p in parts])
        sizes = [int(np.prod(shape)) for shape in shapes]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        geometry = np.array([[*map(float, origin), *map(float, spacing)] for _, origin, spacing in grids])
        return GridTable(
            doses,
            self.to_device(offsets, np.int64),
            self.to_device(np.array(shapes, dtype=np.int32).reshape(-1, 3), np.int32),
            self.to_device(geometry.reshape(-1, 6), np.float64),
            len(grids),
        )

    def _staged_grid_table(self, grids) -> GridTable:
        shapes = [tuple(int(n) for n in np.shape(dose)) for dose, _, _ in grids]
        sizes = [math.prod(shape) for shape in shapes]
        n_grids, n_values = len(grids), sum(sizes)
        # Layout: float32 doses, then int64 offsets, float64 geometry and int32 shapes, each at a multiple of 8.
        starts = np.cumsum([0, -(-4 * n_values // 8) * 8, 8 * n_grids, 48 * n_grids, -(-12 * n_grids // 8) * 8])
        host = self.staging_buffer(int(starts[-1]))
        values = host[: 4 * n_values].view(np.float32)
        offset = 0
        for (dose, _, _), size, shape in zip(grids, sizes, shapes):
            np.copyto(values[offset : offset + size].reshape(shape), dose, casting="same_kind")
            offset += size
        host[starts[1] : starts[2]].view(np.int64)[:] = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        geometry = host[starts[2] : starts[3]].view(np.float64).reshape(n_grids, 6)
        for k, (_, origin, spacing) in enumerate(grids):
            geometry[k] = [*map(float, origin), *map(float, spacing)]
        host[starts[3] : starts[3] + 12 * n_grids].view(np.int32)[:] = np.asarray(shapes, dtype=np.int32).reshape(-1)
        device, ready = self.copy_staged(host)
        return GridTable(
            device[: 4 * n_values].view(np.float32),
            device[starts[1] : starts[2]].view(np.int64),
            device[starts[3] : starts[3] + 12 * n_grids].view(np.int32),
            device[starts[2] : starts[3]].view(np.float64),
            n_grids,
            ready,
            host,
        )

    def field_table(self, fields) -> FieldTable:
        """Put displacement fields ``[(vectors (nz, ny, nx, 3), world_to_index 4x4), ...]`` on the device as one
        table (see the CUDA source)."""
        fields = list(fields)
        parts = []
        for vectors, _ in fields:
            if len(vectors.shape) != 4 or vectors.shape[3] != 3:
                raise ValueError(f"a displacement field's vectors are (nz, ny, nx, 3), not {tuple(vectors.shape)}")
            parts.append(self.to_device(vectors, np.float32))
        flat = parts[0].reshape(-1) if len(parts) == 1 else self.xp.concatenate([p.reshape(-1) for p in parts])
        sizes = [int(np.prod(p.shape)) for p in parts]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        shapes = np.array([p.shape[:3] for p in parts], dtype=np.int32).reshape(-1, 3)
        matrices = np.array([np.asarray(m, dtype=np.float64).reshape(4, 4)[:3].ravel() for _, m in fields])
        return FieldTable(
            flat,
            self.to_device(offsets, np.int64),
            self.to_device(shapes, np.int32),
            self.to_device(matrices.reshape(-1, 12), np.float64),
            len(fields),
        )

    def displace_many(self, table: FieldTable, points, point_field):
        """Displacement and Jacobian of each point in its own field of ``table`` (``point_field[n]``)."""
        points = self.to_device(np.asarray(points, dtype=np.float64).reshape(-1, 3), np.float64)
        n = int(points.shape[0])
        displacement = self.xp.empty(3 * n, dtype=np.float64)
        jacobian = self.xp.empty(9 * n, dtype=np.float64)
        if n:
            self.launch(
                "displace_kernel",
                n,
                [
                    *self.wait_ready(table),
                    self.to_device(point_field, np.int64),
                    points,
                    np.int64(n),
                    displacement,
                    jacobian,
                ],
            )
        return self.to_host(displacement).reshape(n, 3), self.to_host(jacobian).reshape(n, 3, 3)

    def invert_displacement_many(self, table: FieldTable, targets, point_field, pre, pre_inverse):
        """Newton's inverse of each target in its own field (see ``numpy_ref.invert_displacement``)."""
        targets = self.to_device(np.asarray(targets, dtype=np.float64).reshape(-1, 3), np.float64)
        n = int(targets.shape[0])
        points = self.xp.empty(3 * n, dtype=np.float64)
        jacobian = self.xp.empty(9 * n, dtype=np.float64)
        residual = self.xp.empty(n, dtype=np.float64)
        if n:
            self.launch(
                "invert_kernel",
                n,
                [
                    *self.wait_ready(table),
                    self.to_device(point_field, np.int64),
                    targets,
                    self.to_device(np.asarray(pre, dtype=np.float64).reshape(-1, 16), np.float64),
                    self.to_device(np.asarray(pre_inverse, dtype=np.float64).reshape(-1, 16), np.float64),
                    np.int64(n),
                    points,
                    jacobian,
                    residual,
                ],
            )
        return self.to_host(points).reshape(n, 3), self.to_host(jacobian).reshape(n, 3, 3), self.to_host(residual)

    def moved_doses_many(
        self, table: GridTable, points, point_grid, case_point_start, transforms, case_transform_start
    ):
        """Doses at each case's points moved by each of its transforms, in one launch (see the CUDA source)."""
        starts = np.asarray(case_point_start, dtype=np.int64)
        transform_starts = np.asarray(case_transform_start, dtype=np.int64)
        sizes = np.diff(starts) * np.diff(transform_starts)
        out_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        n = int(out_start[-1])
        out = self.xp.empty(n, dtype=np.float64)
        if n:
            self.launch(
                "moved_doses_kernel",
                n,
                [
                    *self.wait_ready(table),
                    self.to_device(np.asarray(points, dtype=np.float64).reshape(-1, 3), np.float64),
                    self.to_device(point_grid, np.int64),
                    self.to_device(starts, np.int64),
                    self.to_device(np.asarray(transforms, dtype=np.float64).reshape(-1, 16), np.float64),
                    self.to_device(transform_starts, np.int64),
                    self.to_device(out_start, np.int64),
                    np.int64(len(starts) - 1),
                    np.int64(n),
                    out,
                ],
            )
        return self.to_host(out)

    # -- kernels ----------------------------------------------------------------------------------------------
    def trilinear(self, dose, origin, spacing, points):
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if not len(points):
            return np.empty(0)
        return self.trilinear_many(self.grid_table([(dose, origin, spacing)]), points, np.zeros(len(points), np.int64))

    def trilinear_many(self, table: GridTable, points, point_grid):
        """Trilinear dose at each point in its own grid of ``table`` (``point_grid[n]``), NaN outside it."""
        points = self.to_device(np.asarray(points, dtype=np.float64).reshape(-1, 3), np.float64)
        n = int(points.shape[0])
        out = self.xp.empty(n, dtype=np.float64)
        if n:
            self.launch(
                "trilinear_kernel",
                n,
                [*self.wait_ready(table), self.to_device(point_grid, np.int64), points, np.int64(n), out],
            )
        return self.to_host(out)

    def resample(self, dose, origin, spacing, onto_origin, onto_spacing, onto_shape, transform):
        """Trilinear dose at the voxel centres of another lattice, as a device array (see ``numpy_ref``)."""
        onto_shape = tuple(int(n) for n in onto_shape)
        n = math.prod(onto_shape)
        out = self.xp.empty(onto_shape, dtype=np.float64)
        if n:
            lattice = np.array([*map(float, onto_origin), *map(float, onto_spacing)])
            self.launch(
                "resample_kernel",
                n,
                [
                    *self.wait_ready(self.grid_table([(dose, origin, spacing)])),
                    self.to_device(lattice, np.float64),
                    np.int64(onto_shape[1]),
                    np.int64(onto_shape[2]),
                    self.to_device(np.asarray(transform, np.float64).reshape(16), np.float64),
                    np.int64(n),
                    out,
                ],
            )
        return out

    def course_sum(self, doses, weights, fractions, alpha_beta=None):
        """The reference's array code on the device (CuPy's element-wise kernels): memory-bound either way."""
        return numpy_ref.course_sum_in(self.xp, [self.asarray(dose) for dose in doses], weights, fractions, alpha_beta)

    def polygon_coverage(
        self,
        vertices,
        ring_start,
        plane_ring_start,
        plane_cell_start,
        plane_x0,
        plane_y0,
        plane_nx,
        plane_ny,
        plane_hx,
        plane_hy,
        scanlines,
    ):
        xp = self.xp
        plane_ny = np.asarray(plane_ny, dtype=np.int64)
        n_planes = len(plane_ny)
        counts = host.plane_scanlines(scanlines, n_planes)
        n_rows = int(plane_ny.sum())
        row_plane = np.repeat(np.arange(n_planes, dtype=np.int64), plane_ny)
        row_start = np.concatenate([[0], np.cumsum(plane_ny)[:-1]]).astype(np.int64)
        row_in_plane = np.arange(n_rows, dtype=np.int64) - np.repeat(row_start, plane_ny)
        cells = xp.empty((int(plane_cell_start[-1]), 6), dtype=np.float64)  # each row's thread writes its cells
        overflow = xp.zeros(n_rows, dtype=np.int32)
        if n_rows:
            self.launch(
                "coverage_kernel",
                n_rows,
                [
                    self.to_device(np.asarray(vertices, np.float64).reshape(-1, 2), np.float64),
                    self.to_device(ring_start, np.int64),
                    self.to_device(plane_ring_start, np.int64),
                    self.to_device(plane_cell_start, np.int64),
                    self.to_device(plane_x0, np.float64),
                    self.to_device(plane_y0, np.float64),
                    self.to_device(plane_nx, np.int64),
                    self.to_device(plane_hx, np.float64),
                    self.to_device(plane_hy, np.float64),
                    self.to_device(row_plane, np.int64),
                    self.to_device(row_in_plane, np.int64),
                    np.int64(n_rows),
                    self.to_device(counts, np.int32),
                    cells,
                    overflow,
                ],
            )
        # Planes with a scanline crossing more edges than a thread holds are computed on the host instead.
        crowded = np.unique(row_plane[np.nonzero(self.to_host(overflow))[0]])
        for p in crowded:
            rings = slice(int(plane_ring_start[p]), int(plane_ring_start[p + 1]))
            ring_bounds = np.asarray(ring_start)[rings.start : rings.stop + 1]
            plane_cells = numpy_ref.polygon_coverage(
                np.asarray(vertices).reshape(-1, 2)[ring_bounds[0] : ring_bounds[-1]],
                ring_bounds - ring_bounds[0],
                np.array([0, rings.stop - rings.start]),
                np.array([0, int(plane_nx[p] * plane_ny[p])]),
                [plane_x0[p]],
                [plane_y0[p]],
                [plane_nx[p]],
                [plane_ny[p]],
                [plane_hx[p]],
                [plane_hy[p]],
                int(counts[p]),
            )
            cells[int(plane_cell_start[p]) : int(plane_cell_start[p + 1])] = self.to_device(plane_cells, np.float64)
        return cells

    def accumulate_histogram(self, values, weights, widths, bin_width, n_bins, n_chunks=64):
        del n_chunks  # integer sums need no fixed chunking
        values = self.to_device(values, np.float64)
        n = int(values.shape[0])
        delta = self.xp.zeros(int(n_bins) + 1, dtype=np.int64)
        if n:
            self.launch(
                "histogram_kernel",
                n,
                [
                    values,
                    self.to_device(weights, np.float64),
                    self.to_device(widths, np.float64),
                    np.int64(n),
                    np.float64(1.0 / bin_width),
                    np.int32(n_bins),
                    delta,
                ],
            )
        return self.to_host(self.xp.cumsum(delta)[:n_bins] / VOLUME_SCALE)

    def cell_histograms(
        self,
        dose,
        origin,
        spacing,
        cells,
        plane_cell_start,
        plane_z_lo,
        plane_z_hi,
        structure_plane_start,
        structure_transform,
        bin_width,
        n_bins,
        n_chunks,
    ):
        n_structures = len(structure_plane_start) - 1
        return self.cell_histograms_many(
            self.grid_table([(dose, origin, spacing)]),
            cells,
            plane_cell_start,
            plane_z_lo,
            plane_z_hi,
            structure_plane_start,
            np.zeros(n_structures, np.int64),
            structure_transform,
            np.full(n_structures, float(bin_width)),
            n_bins,
            n_chunks,
        )

    def cell_histograms_many(
        self,
        table: GridTable,
        cells,
        plane_cell_start,
        plane_z_lo,
        plane_z_hi,
        structure_plane_start,
        structure_grid,
        structure_transform,
        structure_bin_width,
        n_bins,
        n_chunks,
    ):
        """:func:`cell_histograms` of structures in many grids at once: structure ``s`` is sampled in grid
        ``structure_grid[s]`` of ``table``, into bins of ``structure_bin_width[s]`` Gy."""
        del n_chunks  # integer sums need no fixed chunking
        xp = self.xp
        n_structures = len(structure_plane_start) - 1
        n_planes = len(plane_cell_start) - 1
        cells = self.to_device(cells, np.float64).reshape(-1, 6)
        n_cells = int(cells.shape[0])
        delta = xp.zeros((n_structures, int(n_bins) + 1), dtype=np.int64)
        stats_fixed = xp.zeros((n_structures, 6), dtype=np.int64)
        extremes = xp.zeros((n_structures, 2), dtype=np.uint64)
        extremes[:, 0] = np.uint64(0x7FF0000000000000)  # +inf: the minimum's starting point
        if n_cells and n_structures:
            self.launch(
                "cell_histograms_kernel",
                n_cells,
                [
                    *self.wait_ready(table),
                    cells,
                    np.int64(n_cells),
                    self.to_device(plane_cell_start, np.int64),
                    np.int64(n_planes),
                    self.to_device(plane_z_lo, np.float64),
                    self.to_device(plane_z_hi, np.float64),
                    self.to_device(structure_plane_start, np.int64),
                    np.int64(n_structures),
                    self.to_device(structure_grid, np.int64),
                    self.to_device(np.asarray(structure_transform, np.float64).reshape(-1, 16), np.float64),
                    self.to_device(1.0 / np.asarray(structure_bin_width, np.float64), np.float64),
                    np.int32(n_bins),
                    delta,
                    stats_fixed,
                    extremes,
                ],
            )
        counts = xp.cumsum(delta, axis=1)[:, :n_bins]  # fixed point: a bin with no mass holds exactly 0
        hist = self.to_host(counts / VOLUME_SCALE)  # converted on the device
        # The first and the last bin with mass, found on the device and brought with the sums: the host then
        # reads only those bins of the histograms (a structure's doses span a few thousand of their 16,384).
        bins = xp.arange(int(n_bins), dtype=np.int64)
        held = counts != 0
        spans = xp.concatenate(
            [
                stats_fixed,
                xp.where(held, bins, np.int64(n_bins)).min(axis=1).reshape(-1, 1),
                xp.where(held, bins, np.int64(-1)).max(axis=1).reshape(-1, 1),
            ],
            axis=1,
        )
        fixed = self.to_host(spans).astype(np.float64)
        bounds = self.to_host(extremes).view(np.float64)
        inside = fixed[:, 0] / VOLUME_SCALE
        stats = np.empty((n_structures, 10))
        stats[:, 8:10] = fixed[:, 6:8]
        stats[:, 0] = inside
        stats[:, 1] = fixed[:, 1] / VOLUME_SCALE
        stats[:, 2] = fixed[:, 2] / DOSE_VOLUME_SCALE
        stats[:, 3] = np.where(inside > 0, bounds[:, 0], np.nan)
        stats[:, 4] = np.where(inside > 0, bounds[:, 1], np.nan)
        stats[:, 5:8] = fixed[:, 3:6] / POSITION_VOLUME_SCALE
        return hist, stats


# --------------------------------------------------------------------------------------------------------
# The CuPy instance
# --------------------------------------------------------------------------------------------------------
def _cupy():
    import cupy

    return cupy


class _CupyKernels(GpuKernels):
    def __init__(self, xp, launch, device: str, module):
        super().__init__(xp, launch, device)
        self.module = module
        #: The variants of ``cell_histograms_kernel`` this instance was built with (see ``VARIANTS``).
        self.variants: tuple[str, ...] = ()

        self._copy_stream: Any = None

    def out_of_memory_errors(self) -> tuple[type[BaseException], ...]:
        return (MemoryError, self.xp.cuda.memory.OutOfMemoryError)

    def staging_buffer(self, nbytes: int) -> np.ndarray:
        import cupyx

        return cupyx.empty_pinned((nbytes,), dtype=np.uint8)  # from CuPy's pool of page-locked memory

    def copy_staged(self, host: np.ndarray):
        # A stream that does not wait for the default one (where the kernels run), so the copy overlaps them.
        if self._copy_stream is None:
            self._copy_stream = self.xp.cuda.Stream(non_blocking=True)
        stream = self._copy_stream
        device = self.xp.empty(host.shape, dtype=np.uint8)
        device.set(host, stream=stream)
        return device, stream.record()

    def wait_ready(self, table) -> list:
        ready = getattr(table, "ready", None)
        if ready is not None:
            self.xp.cuda.get_current_stream().wait_event(ready)
        return table.args()

    def free_memory_bytes(self) -> int | None:
        free, _ = self.xp.cuda.Device().mem_info
        return int(free + self.xp.get_default_memory_pool().free_bytes())

    def kernel_resources(self, name: str) -> dict[str, int]:
        """What each thread of kernel ``name`` takes as compiled for this device: registers (they bound how many
        threads an SM holds at once) and local memory in bytes (register spills and local arrays)."""
        function = self.module.get_function(name)
        return {"registers": int(function.num_regs), "local_bytes": int(function.local_size_bytes)}


#: Variants of ``cell_histograms_kernel`` to measure on a device, by name: the compile options and the threads a
#: block of that kernel each takes. The default (none) is the kernel as measured so far; ``ISODOSE_CUDA_VARIANT``
#: (names separated by commas) builds the backend with others. Every variant gives the same bits (integer sums).
VARIANTS: dict[str, tuple[tuple[str, ...], int | None]] = {
    # The per-cell sums and extremes of a warp's lanes that share a structure summed with shuffles, one atomic per
    # warp and value (about 4 million atomics a head-and-neck case on the same eight addresses a structure, else).
    "warp": (("-DISODOSE_WARP_SUMS=1",), None),
    # At most 128 registers a thread (152 without), so that an SM holds two blocks of 256.
    "bounds": (("-DISODOSE_CELL_BOUNDS=__launch_bounds__(256, 2)",), None),
    # Blocks of 128 threads: finer occupancy steps at 152 registers a thread.
    "block128": ((), 128),
    # A block whose cells all belong to one structure sums its deposits in a window of 2,049 bins in shared memory
    # and its statistics there too, then adds them to the structure's: one global atomic a bin and value a block.
    "shared": (("-DISODOSE_SHARED_HISTOGRAM=1",), None),
}


def variant_names(text: str | None) -> tuple[str, ...]:
    """The variants named in ``text`` (an ``ISODOSE_CUDA_VARIANT`` value); a ValueError names an unknown one."""
    names = tuple(n.strip() for n in (text or "").split(",") if n.strip())
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"ISODOSE_CUDA_VARIANT: unknown variant {unknown[0]!r} (known: {', '.join(VARIANTS)})")
    return names


def variant_build(variants: tuple[str, ...] = ()) -> tuple[tuple[str, ...], dict[str, int]]:
    """The compile options and the block size of each kernel whose block is not ``BLOCK``, for ``variants``."""
    options: list[str] = []
    blocks = {}
    for name in variant_names(",".join(variants)):
        extra, block = VARIANTS[name]
        options += extra
        if block is not None:
            blocks["cell_histograms_kernel"] = block
    return tuple(options), blocks


def build(variants: tuple[str, ...] = ()) -> _CupyKernels:
    """The CuPy backend's kernels compiled on this device, with ``variants`` of ``cell_histograms_kernel``."""
    cupy = _cupy()
    options, blocks = variant_build(variants)
    module = cupy.RawModule(code=SOURCE.read_text(), options=("-std=c++17", *options))

    def launch(name: str, n_threads: int, args) -> None:
        function = module.get_function(name)
        block = blocks.get(name, BLOCK)
        function((math.ceil(n_threads / block),), (block,), tuple(args))

    device = device_name() + (f" (variants {', '.join(variants)})" if variants else "")
    kernels = _CupyKernels(cupy, launch, device, module)
    kernels.variants = tuple(variants)
    return kernels


@functools.cache
def _instance() -> _CupyKernels:
    return build(variant_names(os.environ.get("ISODOSE_CUDA_VARIANT")))


def device_name() -> str:
    cupy = _cupy()
    device = cupy.cuda.Device()
    properties = cupy.cuda.runtime.getDeviceProperties(device.id)
    name = properties["name"].decode() if isinstance(properties["name"], bytes) else properties["name"]
    return f"{name} (GPU {device.id})"


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    return _instance().out_of_memory_errors()


def free_memory_bytes() -> int | None:
    return _instance().free_memory_bytes()


def kernel_resources(name: str) -> dict[str, int]:
    return _instance().kernel_resources(name)


def trilinear(dose, origin, spacing, points):
    return _instance().trilinear(dose, origin, spacing, points)


def resample(dose, origin, spacing, onto_origin, onto_spacing, onto_shape, transform):
    return _instance().resample(dose, origin, spacing, onto_origin, onto_spacing, onto_shape, transform)


def course_sum(doses, weights, fractions, alpha_beta=None):
    return _instance().course_sum(doses, weights, fractions, alpha_beta)


def asarray(array, dtype=np.float64):
    return _instance().asarray(array, dtype)


def to_host(array) -> np.ndarray:
    return _instance().to_host(array)


def polygon_coverage(
    vertices,
    ring_start,
    plane_ring_start,
    plane_cell_start,
    plane_x0,
    plane_y0,
    plane_nx,
    plane_ny,
    plane_hx,
    plane_hy,
    scanlines,
):
    return _instance().polygon_coverage(
        vertices,
        ring_start,
        plane_ring_start,
        plane_cell_start,
        plane_x0,
        plane_y0,
        plane_nx,
        plane_ny,
        plane_hx,
        plane_hy,
        scanlines,
    )


def accumulate_histogram(values, weights, widths, bin_width, n_bins, n_chunks=64):
    return _instance().accumulate_histogram(values, weights, widths, bin_width, n_bins, n_chunks)


def grid_table(grids) -> GridTable:
    return _instance().grid_table(grids)


def trilinear_many(table, points, point_grid):
    return _instance().trilinear_many(table, points, point_grid)


def cell_histograms_many(
    table,
    cells,
    plane_cell_start,
    plane_z_lo,
    plane_z_hi,
    structure_plane_start,
    structure_grid,
    structure_transform,
    structure_bin_width,
    n_bins,
    n_chunks,
):
    return _instance().cell_histograms_many(
        table,
        cells,
        plane_cell_start,
        plane_z_lo,
        plane_z_hi,
        structure_plane_start,
        structure_grid,
        structure_transform,
        structure_bin_width,
        n_bins,
        n_chunks,
    )


def cell_histograms(
    dose,
    origin,
    spacing,
    cells,
    plane_cell_start,
    plane_z_lo,
    plane_z_hi,
    structure_plane_start,
    structure_transform,
    bin_width,
    n_bins,
    n_chunks,
):
    return _instance().cell_histograms(
        dose,
        origin,
        spacing,
        cells,
        plane_cell_start,
        plane_z_lo,
        plane_z_hi,
        structure_plane_start,
        structure_transform,
        bin_width,
        n_bins,
        n_chunks,
    )


def field_table(fields) -> FieldTable:
    return _instance().field_table(fields)


def displace_many(table, points, point_field):
    return _instance().displace_many(table, points, point_field)


def invert_displacement_many(table, targets, point_field, pre, pre_inverse):
    return _instance().invert_displacement_many(table, targets, point_field, pre, pre_inverse)


def moved_doses_many(table, points, point_grid, case_point_start, transforms, case_transform_start):
    return _instance().moved_doses_many(table, points, point_grid, case_point_start, transforms, case_transform_start)
