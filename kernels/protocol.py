"""The contract every backend keeps: the kernels and capabilities the engine uses, with their signatures.

A backend is anything that has all of :class:`Kernels`: the modules ``numpy_ref`` and ``numba_cpu``, and an
instance of ``cupy_gpu.GpuKernels`` (whose module-level functions forward to one). The engine calls backends only
through these names, never probing for others, so a new backend is a new module with every member below (see the
architecture page of the docs); ``tests/test_protocol.py`` checks each backend's names and signatures against
this class.

Arrays and scalars in, arrays out: coordinates in mm, doses in Gy, dose arrays indexed ``(z, y, x)``, points
given as ``(x, y, z)``. Arrays "of the backend" are NumPy arrays on the CPU backends and device arrays on the GPU;
``asarray`` and ``to_host`` move data in and out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: The members of the contract, in the order the docs list them.
CAPABILITIES = (
    "NAME",
    "BYTES_PER_CELL",
    "PREFERS_MERGED_REQUESTS",
    "COPIES_GRIDS",
    "device_name",
    "out_of_memory_errors",
    "free_memory_bytes",
    "asarray",
    "to_host",
)
KERNELS = (
    "trilinear",
    "resample",
    "course_sum",
    "polygon_coverage",
    "accumulate_histogram",
    "cell_histograms",
    "grid_table",
    "trilinear_many",
    "cell_histograms_many",
    "field_table",
    "displace_many",
    "invert_displacement_many",
    "moved_doses_many",
)


@runtime_checkable
class Kernels(Protocol):
    """What the engine needs of a backend. See the package docstring for what each kernel computes."""

    #: The backend's name, as results record it.
    NAME: str
    #: Bytes of memory one coverage cell needs while a batch is processed (bounds batches on a device).
    BYTES_PER_CELL: int
    #: Whether many requests, each in its own dose grid, are best sampled as one merged plan (one launch on a
    #: GPU); the CPU backends take them one at a time.
    PREFERS_MERGED_REQUESTS: bool
    #: Whether ``grid_table`` copies the grids (to a device) rather than holding the arrays given: the engine then
    #: crops each grid to the box of the points that will read it, so that fewer bytes are copied.
    COPIES_GRIDS: bool

    # -- capabilities ---------------------------------------------------------------------------------------
    def device_name(self) -> str:
        """The device the kernels run on, for the record."""
        ...

    def out_of_memory_errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions that mean "this batch does not fit": the engine splits the batch and tries again."""
        ...

    def free_memory_bytes(self) -> int | None:
        """Memory free for the next batch (a device's), or None when the host's memory is what bounds it."""
        ...

    def asarray(self, array: Any, dtype: Any = np.float64) -> Any:
        """``array`` as an array of the backend of ``dtype`` (no copy when it is one already)."""
        ...

    def to_host(self, array: Any) -> np.ndarray:
        """An array of the backend as a NumPy array."""
        ...

    # -- kernels ----------------------------------------------------------------------------------------------
    def trilinear(self, dose: Any, origin: Any, spacing: Any, points: Any) -> np.ndarray:
        """Dose at each point by trilinear interpolation; NaN outside the box spanned by the voxel centres."""
        ...

    def resample(
        self, dose: Any, origin: Any, spacing: Any, onto_origin: Any, onto_spacing: Any, onto_shape: Any, transform: Any
    ) -> Any:
        """``trilinear`` at every voxel centre of another lattice mapped by a rigid 4x4; an array of the backend."""
        ...

    def course_sum(
        self, doses: Sequence[Any], weights: Sequence[float], fractions: Sequence[int], alpha_beta: float | None = None
    ) -> Any:
        """Weighted sum of same-shaped course doses (physical, or EQD2 at ``alpha_beta``) as float32."""
        ...

    def polygon_coverage(
        self,
        vertices: Any,
        ring_start: Any,
        plane_ring_start: Any,
        plane_cell_start: Any,
        plane_x0: Any,
        plane_y0: Any,
        plane_nx: Any,
        plane_ny: Any,
        plane_hx: Any,
        plane_hy: Any,
        scanlines: Any,
    ) -> Any:
        """Area, centroid and covariance of the even-odd interior of each plane's rings in each of its cells;
        ``scanlines`` per row of cells, one count for every plane or one per plane."""
        ...

    def accumulate_histogram(
        self, values: Any, weights: Any, widths: Any, bin_width: float, n_bins: int, n_chunks: int = 64
    ) -> np.ndarray:
        """Histogram in which each value spreads its weight uniformly over ``[value - width/2, value + width/2]``."""
        ...

    def cell_histograms(
        self,
        dose: Any,
        origin: Any,
        spacing: Any,
        cells: Any,
        plane_cell_start: Any,
        plane_z_lo: Any,
        plane_z_hi: Any,
        structure_plane_start: Any,
        structure_transform: Any,
        bin_width: float,
        n_bins: int,
        n_chunks: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-structure dose histograms (mm^3 per bin) and statistics of covered cells sampled through slabs."""
        ...

    # -- batched: many dose grids in one call -----------------------------------------------------------------
    def grid_table(self, grids: Sequence[tuple[Any, Any, Any]]) -> Any:
        """Dose grids ``[(dose, origin, spacing), ...]`` put where the kernels read them, once (on a GPU: copied
        to the device), for the batched calls below."""
        ...

    def trilinear_many(self, table: Any, points: Any, point_grid: Any) -> np.ndarray:
        """``trilinear`` of each point in its own grid of ``table`` (``point_grid[n]``)."""
        ...

    def cell_histograms_many(
        self,
        table: Any,
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
        """``cell_histograms`` of structures in many grids: structure ``s`` in grid ``structure_grid[s]`` of
        ``table``, into bins of ``structure_bin_width[s]`` Gy. A backend that finds them at no cost (the GPU, on
        the device) may add two columns to the statistics: the first and the last bin of each structure's histogram
        that hold mass (``n_bins`` and -1 where none does); the bins outside them hold exactly nothing."""
        ...

    # -- displacement fields --------------------------------------------------------------------------------
    def field_table(self, fields: Sequence[tuple[Any, Any]]) -> Any:
        """Displacement fields ``[(vectors, world_to_index), ...]`` put where the kernels read them, once: vectors
        ``(nz, ny, nx, 3)`` in mm at the field's grid points, and the 4x4 taking a point (mm) to its fractional
        grid index ``(i, j, k)`` (``vectors[k, j, i]``)."""
        ...

    def displace_many(self, table: Any, points: Any, point_field: Any) -> tuple[np.ndarray, np.ndarray]:
        """The displacement ``(n, 3)`` and its Jacobian ``(n, 3, 3)`` (each component's derivatives along x, y, z)
        at each point in its own field of ``table`` (``point_field[n]``), by trilinear interpolation of the
        vectors; NaN outside the box of the field's grid points."""
        ...

    def invert_displacement_many(
        self, table: Any, targets: Any, point_field: Any, pre: Any, pre_inverse: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each target ``t`` in its own field of ``table``: the point ``p`` with ``pre p + d(p) = t`` (Newton's
        method from ``pre^-1 t``; ``pre[f]`` and ``pre_inverse[f]`` the field's 4x4 and its inverse), the
        Jacobian of ``d`` at ``p`` ``(n, 3, 3)``, and the residual ``|pre p + d(p) - t|`` (mm); NaN where the
        iteration leaves the field's grid."""
        ...

    # -- perturbations -----------------------------------------------------------------------------------------
    def moved_doses_many(
        self,
        table: Any,
        points: Any,
        point_grid: Any,
        case_point_start: Any,
        transforms: Any,
        case_transform_start: Any,
    ) -> np.ndarray:
        """The dose at each point of each case moved by each of its case's rigid 4x4 transforms, in the point's
        grid of ``table``: case ``c``'s points ``case_point_start[c]:...`` and transforms
        ``case_transform_start[c]:...``; the result is flat, case by case, each case's block ``(transforms,
        points)`` row by row; NaN outside the grid."""
        ...
