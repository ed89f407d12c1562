// isodose GPU kernels: the same functions as kernels/numpy_ref.py, one thread per point, row or cell.
//
// Sums are accumulated in fixed point (64-bit integers) with integer atomics, so that results do not depend
// on the order in which threads run: every launch of the same input gives the same bits.
//   volumes and histogram masses: units of 2^-32 mm^3          (VOLUME_SCALE)
//   dose x volume:                 units of 2^-24 Gy mm^3       (DOSE_VOLUME_SCALE)
//   position x volume:             units of 2^-20 mm mm^3       (POSITION_VOLUME_SCALE)
// Doses are non-negative, so Dmin and Dmax use integer atomics on the bits of the double.
//
// The file is plain C++ apart from the CUDA qualifiers and atomics, so that it also compiles on a CPU
// against a small emulation header (tests/cuda/emulation.h) and can be tested without a GPU.

#define VOLUME_SCALE 4294967296.0
#define DOSE_VOLUME_SCALE 16777216.0
#define POSITION_VOLUME_SCALE 1048576.0
#define GRID_EPSILON 1e-6
#define SINGLE_VOXEL_HALF_WIDTH 0.5
#define MAX_CROSSINGS 128
#define INVERSION_ITERATIONS 50
#define INVERSION_TOLERANCE_MM 1e-7
#define INVERSION_HALVINGS 8
#define ISODOSE_NAN __longlong_as_double(0x7ff8000000000000LL)
#define ISODOSE_INF __longlong_as_double(0x7ff0000000000000LL)

typedef long long i64;
typedef unsigned long long u64;

__device__ __forceinline__ void add_fixed(i64* target, double value, double scale) {
    atomicAdd((u64*)target, (u64)(i64)llrint(value * scale));
}

__device__ __forceinline__ bool grid_coordinate(double p, double origin, double step, int n, int* index,
                                                double* fraction) {
    double f = (p - origin) / step;
    if (n == 1) {  // a single voxel along this axis: its slab, the dose constant across it (no index -1, no n - 2)
        *index = 0;
        *fraction = 0.0;
        return fabs(f) <= SINGLE_VOXEL_HALF_WIDTH + GRID_EPSILON;  // NaN too: false
    }
    if (!(f >= -GRID_EPSILON && f <= n - 1 + GRID_EPSILON)) return false;  // NaN too
    f = fmin(fmax(f, 0.0), n - 1.0);
    int i = (int)f;
    if (i > n - 2) i = n - 2;
    *index = i;
    *fraction = f - i;
    return true;
}

// Value and gradient of the trilinear interpolant in voxel cell (i, j, k) at fractions (tx, ty, tz); along an axis
// of a single voxel, that voxel is its own neighbour (a step of 0), so nothing outside the grid is read.
__device__ __forceinline__ double interpolate(const float* __restrict__ dose, int nz, int nx, int ny, int i, int j,
                                              int k, double tx, double ty, double tz, double sx, double sy,
                                              double sz, double* gx, double* gy, double* gz) {
    long long plane = (long long)nx * ny;
    long long base = k * plane + (long long)j * nx + i;
    long long di = nx > 1 ? 1 : 0, dj = ny > 1 ? nx : 0, dk = nz > 1 ? plane : 0;
    double c000 = dose[base], c001 = dose[base + di];
    double c010 = dose[base + dj], c011 = dose[base + dj + di];
    double c100 = dose[base + dk], c101 = dose[base + dk + di];
    double c110 = dose[base + dk + dj], c111 = dose[base + dk + dj + di];
    double c00 = c000 + tx * (c001 - c000);
    double c01 = c010 + tx * (c011 - c010);
    double c10 = c100 + tx * (c101 - c100);
    double c11 = c110 + tx * (c111 - c110);
    double c0 = c00 + ty * (c01 - c00);
    double c1 = c10 + ty * (c11 - c10);
    double dx0 = (1 - ty) * (c001 - c000) + ty * (c011 - c010);
    double dx1 = (1 - ty) * (c101 - c100) + ty * (c111 - c110);
    *gx = ((1 - tz) * dx0 + tz * dx1) / sx;
    *gy = ((1 - tz) * (c01 - c00) + tz * (c11 - c10)) / sy;
    *gz = (c1 - c0) / sz;
    return c0 + tz * (c1 - c0);
}

// ------------------------------------------------------------------------------------------------------
// Grid tables: the kernels that read dose take any number of grids at once (the grids of many cases, for
// one launch per batch of cases). Grid g's float32 values start at doses[grid_offset[g]], its shape is
// grid_shape[3g..3g+2] = (nz, ny, nx) and its geometry grid_geometry[6g..6g+5] = (ox, oy, oz, sx, sy, sz).
// ------------------------------------------------------------------------------------------------------
struct Grid {
    const float* dose;
    int nz, ny, nx;
    double ox, oy, oz, sx, sy, sz;
};

__device__ __forceinline__ Grid grid_at(const float* __restrict__ doses, const long long* __restrict__ grid_offset,
                                        const int* __restrict__ grid_shape, const double* __restrict__ grid_geometry,
                                        long long g) {
    Grid grid;
    grid.dose = doses + grid_offset[g];
    grid.nz = grid_shape[3 * g];
    grid.ny = grid_shape[3 * g + 1];
    grid.nx = grid_shape[3 * g + 2];
    grid.ox = grid_geometry[6 * g];
    grid.oy = grid_geometry[6 * g + 1];
    grid.oz = grid_geometry[6 * g + 2];
    grid.sx = grid_geometry[6 * g + 3];
    grid.sy = grid_geometry[6 * g + 4];
    grid.sz = grid_geometry[6 * g + 5];
    return grid;
}

// The dose of grid g at point (px, py, pz); NaN outside the box of its voxel centres.
__device__ __forceinline__ double trilinear_at(Grid g, double px, double py, double pz) {
    int i, j, k;
    double tx, ty, tz, gx, gy, gz;
    bool inside = grid_coordinate(px, g.ox, g.sx, g.nx, &i, &tx) && grid_coordinate(py, g.oy, g.sy, g.ny, &j, &ty) &&
                  grid_coordinate(pz, g.oz, g.sz, g.nz, &k, &tz);
    return inside ? interpolate(g.dose, g.nz, g.nx, g.ny, i, j, k, tx, ty, tz, g.sx, g.sy, g.sz, &gx, &gy, &gz)
                  : ISODOSE_NAN;
}

// ------------------------------------------------------------------------------------------------------
// trilinear: one thread per point, in the grid point_grid[n]; NaN outside that grid.
// ------------------------------------------------------------------------------------------------------
extern "C" __global__ void trilinear_kernel(const float* __restrict__ doses, const long long* __restrict__ grid_offset,
                                            const int* __restrict__ grid_shape,
                                            const double* __restrict__ grid_geometry,
                                            const long long* __restrict__ point_grid,
                                            const double* __restrict__ points, long long n_points,
                                            double* __restrict__ out) {
    long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= n_points) return;
    Grid g = grid_at(doses, grid_offset, grid_shape, grid_geometry, point_grid[n]);
    out[n] = trilinear_at(g, points[3 * n], points[3 * n + 1], points[3 * n + 2]);
}

// ------------------------------------------------------------------------------------------------------
// resample: one thread per voxel centre of another lattice, (origin, spacing) = lattice[0..2], lattice[3..5]
// and (nz, ny, nx) = (n_points / (ny nx), lattice_ny, lattice_nx), mapped by the rigid 4x4 transform (row
// major) into grid 0 of the table; NaN outside it. out is in the lattice's (z, y, x) order.
// ------------------------------------------------------------------------------------------------------
extern "C" __global__ void resample_kernel(const float* __restrict__ doses, const long long* __restrict__ grid_offset,
                                           const int* __restrict__ grid_shape,
                                           const double* __restrict__ grid_geometry,
                                           const double* __restrict__ lattice, long long lattice_ny,
                                           long long lattice_nx, const double* __restrict__ transform,
                                           long long n_points, double* __restrict__ out) {
    long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= n_points) return;
    long long i = n % lattice_nx, row = n / lattice_nx;
    long long j = row % lattice_ny, k = row / lattice_ny;
    double x = lattice[0] + lattice[3] * i, y = lattice[1] + lattice[4] * j, z = lattice[2] + lattice[5] * k;
    double px = transform[0] * x + transform[1] * y + transform[2] * z + transform[3];
    double py = transform[4] * x + transform[5] * y + transform[6] * z + transform[7];
    double pz = transform[8] * x + transform[9] * y + transform[10] * z + transform[11];
    out[n] = trilinear_at(grid_at(doses, grid_offset, grid_shape, grid_geometry, 0), px, py, pz);
}

// ------------------------------------------------------------------------------------------------------
// polygon_coverage: one thread per row of cells of one plane. It finds the crossings of each scanline with
// the plane's edges, sorts them, and adds the exact overlap of every inside span with every cell of the
// row (area, first and second moments about the cell centre), then turns the sums into area, centroid and
// covariance. Rows are disjoint, so no atomics. A scanline crossing more than MAX_CROSSINGS edges sets the
// row's overflow flag, and the host computes that plane another way.
// ------------------------------------------------------------------------------------------------------
extern "C" __global__ void coverage_kernel(const double* __restrict__ vertices, const long long* __restrict__ ring_start,
                                           const long long* __restrict__ plane_ring_start,
                                           const long long* __restrict__ plane_cell_start,
                                           const double* __restrict__ plane_x0, const double* __restrict__ plane_y0,
                                           const long long* __restrict__ plane_nx,
                                           const double* __restrict__ plane_hx, const double* __restrict__ plane_hy,
                                           const long long* __restrict__ row_plane,
                                           const long long* __restrict__ row_in_plane, long long n_rows,
                                           const int* __restrict__ plane_scanlines, double* __restrict__ cells,
                                           int* __restrict__ overflow) {
    long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= n_rows) return;
    long long p = row_plane[row];
    long long j = row_in_plane[row];
    long long nx = plane_nx[p];
    double x0 = plane_x0[p], y0 = plane_y0[p], hx = plane_hx[p], hy = plane_hy[p];
    int scanlines = plane_scanlines[p];
    double band = hy / scanlines;
    double row_centre = y0 + (j + 0.5) * hy;
    double* out = cells + 6 * (plane_cell_start[p] + j * nx);
    for (long long i = 0; i < 6 * nx; ++i) out[i] = 0.0;
    double xs[MAX_CROSSINGS];
    for (int t = 0; t < scanlines; ++t) {
        double y = y0 + j * hy + (t + 0.5) * band;
        int n = 0;
        for (long long r = plane_ring_start[p]; r < plane_ring_start[p + 1]; ++r) {
            long long a0 = ring_start[r], a1 = ring_start[r + 1];
            for (long long e = a0; e < a1; ++e) {
                long long f = e + 1 < a1 ? e + 1 : a0;
                double ya = vertices[2 * e + 1], yb = vertices[2 * f + 1];
                if ((ya <= y && y < yb) || (yb <= y && y < ya)) {
                    if (n == MAX_CROSSINGS) {
                        overflow[row] = 1;
                        return;
                    }
                    double xa = vertices[2 * e];
                    xs[n++] = xa + (y - ya) * (vertices[2 * f] - xa) / (yb - ya);
                }
            }
        }
        for (int a = 1; a < n; ++a) {  // insertion sort: a scanline crosses few edges
            double v = xs[a];
            int b = a - 1;
            while (b >= 0 && xs[b] > v) {
                xs[b + 1] = xs[b];
                --b;
            }
            xs[b + 1] = v;
        }
        double dy = y - row_centre;
        for (int q = 0; q + 1 < n; q += 2) {
            double span_lo = xs[q], span_hi = xs[q + 1];
            long long ia = (long long)floor((span_lo - x0) / hx);
            long long ib = (long long)floor((span_hi - x0) / hx);
            if (ia < 0) ia = 0;
            if (ib > nx - 1) ib = nx - 1;
            for (long long i = ia; i <= ib; ++i) {
                double left = x0 + hx * i;
                double lo = fmax(span_lo, left), hi = fmin(span_hi, left + hx);
                if (hi <= lo) continue;
                double length = hi - lo;
                double xm = 0.5 * (lo + hi) - (left + 0.5 * hx);
                double* c = out + 6 * i;
                c[0] += length;
                c[1] += length * xm;
                c[2] += length * dy;
                c[3] += length * (xm * xm + length * length / 12.0);
                c[4] += length * xm * dy;
                c[5] += length * (dy * dy + band * band / 12.0);
            }
        }
    }
    for (long long i = 0; i < nx; ++i) {
        double* c = out + 6 * i;
        double centre_x = x0 + (i + 0.5) * hx;
        double length = c[0];
        if (length > 0) {
            double mx = c[1] / length, my = c[2] / length;
            double vxx = fmax(c[3] / length - mx * mx, 0.0);
            double vxy = c[4] / length - mx * my;
            double vyy = fmax(c[5] / length - my * my, 0.0);
            c[0] = length * band;
            c[1] = centre_x + mx;
            c[2] = row_centre + my;
            c[3] = vxx;
            c[4] = vxy;
            c[5] = vyy;
        } else {
            c[0] = 0.0;
            c[1] = centre_x;
            c[2] = row_centre;
            c[3] = 0.0;
            c[4] = 0.0;
            c[5] = 0.0;
        }
    }
}

// Shared-memory histograms (a variant of cell_histograms_kernel, see below): a block whose cells all belong to one
// structure adds its deposits to a window of SHARED_BINS + 1 bins in shared memory, and then the window to the
// structure's histogram in global memory.
#ifndef ISODOSE_SHARED_HISTOGRAM
#define ISODOSE_SHARED_HISTOGRAM 0
#endif
#define SHARED_BINS 2048

// Where deposits go: bins of a histogram of differences in global memory, or, for bins inside a block's window
// (window not null), that window in shared memory. Integer sums: either way gives the same bits.
struct Bins {
    i64* delta;
    i64* window;
    int window_low;
    __device__ __forceinline__ void add(int k, i64 amount) const {
        if (window) {
            unsigned offset = (unsigned)(k - window_low);
            if (offset <= SHARED_BINS) {
                atomicAdd((u64*)&window[offset], (u64)amount);
                return;
            }
        }
        atomicAdd((u64*)&delta[k], (u64)amount);
    }
};

// ------------------------------------------------------------------------------------------------------
// Uniform deposit of `weight` over [value - width/2, value + width/2] into a histogram of differences (see
// numpy_ref.deposit_differences), in fixed point: the four parts sum to exactly zero, so the density comes
// back to zero after every deposit whatever the rounding.
// ------------------------------------------------------------------------------------------------------
__device__ __forceinline__ void deposit(const Bins& bins, double value, double width, double weight,
                                        double inverse_bin_width, int n_bins) {
    double half = 0.5 * width * inverse_bin_width;
    double centre = value * inverse_bin_width;
    double lo = centre - half, hi = centre + half;
    if (lo < 0.0) {
        hi -= lo;
        lo = 0.0;
    }
    if (hi > n_bins) {
        lo = fmax(lo - (hi - n_bins), 0.0);
        hi = (double)n_bins;
    }
    int ka = (int)lo, kb = (int)hi;
    if (ka > n_bins - 1) ka = n_bins - 1;
    if (kb > n_bins - 1) kb = n_bins - 1;
    i64 total = (i64)llrint(weight * VOLUME_SCALE);
    if (ka == kb) {
        bins.add(ka, total);
        bins.add(ka + 1, -total);
        return;
    }
    double s = weight / (hi - lo) * VOLUME_SCALE;
    i64 a1 = (i64)llrint(s * (ka + 1 - lo));
    i64 a2 = (i64)llrint(s * (lo - ka));
    i64 b1 = (i64)llrint(s * (kb + 1 - hi));
    i64 b2 = a1 + a2 - b1;
    bins.add(ka, a1);
    bins.add(ka + 1, a2);
    bins.add(kb, -b1);
    bins.add(kb + 1, -b2);
}

extern "C" __global__ void histogram_kernel(const double* __restrict__ values, const double* __restrict__ weights,
                                            const double* __restrict__ widths, long long n, double inverse_bin_width,
                                            int n_bins, i64* __restrict__ delta) {
    long long m = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= n) return;
    deposit(Bins{delta, nullptr, 0}, values[m], widths[m], weights[m], inverse_bin_width, n_bins);
}

__device__ __forceinline__ long long upper_bound(const long long* __restrict__ starts, long long count, long long x) {
    // The last index i in [0, count) with starts[i] <= x.
    long long lo = 0, hi = count;
    while (hi - lo > 1) {
        long long mid = (lo + hi) / 2;
        if (starts[mid] <= x) lo = mid; else hi = mid;
    }
    return lo;
}

// The per-cell sums and extremes of cell_histograms_kernel added to structure s's: one thread's atomics (the default),
// or, with ISODOSE_WARP_SUMS, those of the lanes of a warp that share a structure summed first (__match_any_sync and
// shuffles) and added by one lane with one atomic a value. The sums are integers, so either gives the same bits. The
// warp variant needs every lane of a warp to reach it, and warp intrinsics: it runs only on a GPU.
#ifndef ISODOSE_WARP_SUMS
#define ISODOSE_WARP_SUMS 0
#endif
// Launch bounds of cell_histograms_kernel: none by default; a build may define it, e.g. __launch_bounds__(256, 2).
#ifndef ISODOSE_CELL_BOUNDS
#define ISODOSE_CELL_BOUNDS
#endif

__device__ __forceinline__ void add_cell_stats(i64* stats_fixed, u64* extremes, long long s, const i64* sums,
                                               u64 low_bits, u64 high_bits) {
    i64* stats = stats_fixed + 6 * s;
    for (int v = 0; v < 6; ++v) {
        if (sums[v] != 0) atomicAdd((u64*)&stats[v], (u64)sums[v]);
    }
    if (low_bits != 0x7FF0000000000000ULL) atomicMin(&extremes[2 * s], low_bits);
    if (high_bits != 0) atomicMax(&extremes[2 * s + 1], high_bits);
}

#if ISODOSE_WARP_SUMS
// Structure s's sums go to slot `slot` of stats_fixed and extremes (s itself, or 0 for a block's shared sums).
__device__ __forceinline__ void add_cell_stats_warp(i64* stats_fixed, u64* extremes, long long s, long long slot,
                                                    const i64* sums, u64 low_bits, u64 high_bits) {
    unsigned group = __match_any_sync(0xFFFFFFFFu, s);
    if (s < 0) return;  // lanes without a cell form their own group, and add nothing
    i64 total[6] = {0, 0, 0, 0, 0, 0};
    u64 low = 0x7FF0000000000000ULL, high = 0;
    for (unsigned rest = group; rest; rest &= rest - 1) {
        int lane = __ffs(rest) - 1;
        for (int v = 0; v < 6; ++v) total[v] += __shfl_sync(group, sums[v], lane);
        u64 l = __shfl_sync(group, low_bits, lane), h = __shfl_sync(group, high_bits, lane);
        low = l < low ? l : low;
        high = h > high ? h : high;
    }
    if ((threadIdx.x & 31) == (unsigned)(__ffs(group) - 1))
        add_cell_stats(stats_fixed, extremes, slot, total, low, high);
}
#endif

// ------------------------------------------------------------------------------------------------------
// cell_histograms: one thread per cell. It walks the cell's slab in pieces (split at the dose planes when
// the structure's transform keeps z axial, else in pieces of at most half a voxel), moves each sample into
// its structure's dose grid (structure_grid[s], see grid tables) by the structure's rigid transform,
// interpolates there and deposits the sample's spread into its structure's histogram of differences (bins
// of 1 / structure_inverse_bin_width[s] Gy). Statistics per structure (fixed point, see the top):
//   stats_fixed[s, 0..5]: inside volume, outside volume, dose x volume, x, y, z x volume
//   extremes[s, 0..1]:    bits of Dmin and Dmax
// With ISODOSE_SHARED_HISTOGRAM, a block whose cells all belong to one structure sums its deposits in shared memory,
// in a window of bins around the dose at its first cell (deposits outside the window go to global memory as
// before), and its statistics too; then adds both to the structure's, one atomic a bin. Every thread of a block then
// reaches its barriers: it runs on a GPU, or in the emulation's cooperative launches.
// ------------------------------------------------------------------------------------------------------
#if ISODOSE_SHARED_HISTOGRAM
// The structure every cell of this block belongs to (-1 when there are several), and the lowest bin of its window.
__device__ __forceinline__ void block_structure_window(
    const float* __restrict__ doses, const long long* __restrict__ grid_offset, const int* __restrict__ grid_shape,
    const double* __restrict__ grid_geometry, const double* __restrict__ cells, long long n_cells,
    const long long* __restrict__ plane_cell_start, long long n_planes, const double* __restrict__ plane_z_lo,
    const double* __restrict__ plane_z_hi, const long long* __restrict__ structure_plane_start, long long n_structures,
    const long long* __restrict__ structure_grid, const double* __restrict__ structure_transform,
    const double* __restrict__ structure_inverse_bin_width, long long* structure, int* window_low) {
    long long first = (long long)blockIdx.x * blockDim.x;
    long long last = first + blockDim.x - 1 < n_cells - 1 ? first + blockDim.x - 1 : n_cells - 1;
    *structure = -1;
    *window_low = 0;
    if (first >= n_cells) return;
    long long p = upper_bound(plane_cell_start, n_planes, first);
    long long s = upper_bound(structure_plane_start, n_structures, p);
    if (upper_bound(structure_plane_start, n_structures, upper_bound(plane_cell_start, n_planes, last)) != s) return;
    *structure = s;
    const double* m = structure_transform + 16 * s;
    double cx = cells[6 * first + 1], cy = cells[6 * first + 2], cz = 0.5 * (plane_z_lo[p] + plane_z_hi[p]);
    double value = trilinear_at(grid_at(doses, grid_offset, grid_shape, grid_geometry, structure_grid[s]),
                                m[0] * cx + m[1] * cy + m[2] * cz + m[3], m[4] * cx + m[5] * cy + m[6] * cz + m[7],
                                m[8] * cx + m[9] * cy + m[10] * cz + m[11]);
    double centre = value * structure_inverse_bin_width[s];  // NaN outside the grid: the window starts at 0
    *window_low = centre > 0.5 * SHARED_BINS ? (int)fmin(centre - 0.5 * SHARED_BINS, 2147483647.0 - SHARED_BINS) : 0;
}
#endif

extern "C" __global__ void ISODOSE_CELL_BOUNDS cell_histograms_kernel(
    const float* __restrict__ doses, const long long* __restrict__ grid_offset, const int* __restrict__ grid_shape,
    const double* __restrict__ grid_geometry, const double* __restrict__ cells, long long n_cells,
    const long long* __restrict__ plane_cell_start, long long n_planes, const double* __restrict__ plane_z_lo,
    const double* __restrict__ plane_z_hi, const long long* __restrict__ structure_plane_start, long long n_structures,
    const long long* __restrict__ structure_grid, const double* __restrict__ structure_transform,
    const double* __restrict__ structure_inverse_bin_width, int n_bins, i64* __restrict__ delta,
    i64* __restrict__ stats_fixed, u64* __restrict__ extremes) {
    long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    // A thread without a cell (past the end, or of no area) adds nothing; with warp sums it still takes part in
    // its warp's reduction, so it does not return.
    long long s = -1;
    i64 sums[6] = {0, 0, 0, 0, 0, 0};
    u64 low_bits = 0x7FF0000000000000ULL, high_bits = 0;  // +inf and +0.0: the extremes' identities
#if ISODOSE_SHARED_HISTOGRAM
    __shared__ i64 window[SHARED_BINS + 1];
    __shared__ i64 block_sums[6];
    __shared__ u64 block_extremes[2];
    __shared__ long long block_structure;
    __shared__ int window_low;
    if (threadIdx.x == 0) {
        block_structure_window(doses, grid_offset, grid_shape, grid_geometry, cells, n_cells, plane_cell_start,
                               n_planes, plane_z_lo, plane_z_hi, structure_plane_start, n_structures, structure_grid,
                               structure_transform, structure_inverse_bin_width, &block_structure, &window_low);
        block_extremes[0] = 0x7FF0000000000000ULL;
        block_extremes[1] = 0;
    }
    for (unsigned k = threadIdx.x; k <= SHARED_BINS; k += blockDim.x) window[k] = 0;
    if (threadIdx.x < 6) block_sums[threadIdx.x] = 0;
    __syncthreads();
#endif
    double area = c < n_cells ? cells[6 * c] : 0.0;
    if (area > 0.0) {
        long long p = upper_bound(plane_cell_start, n_planes, c);
        s = upper_bound(structure_plane_start, n_structures, p);
        const double* m = structure_transform + 16 * s;
        Grid g = grid_at(doses, grid_offset, grid_shape, grid_geometry, structure_grid[s]);
        const float* dose = g.dose;
        const int nz = g.nz, ny = g.ny, nx = g.nx;
        const double ox = g.ox, oy = g.oy, oz = g.oz, sx = g.sx, sy = g.sy, sz = g.sz;
        const double inverse_bin_width = structure_inverse_bin_width[s];
        bool axial = m[8] == 0.0 && m[9] == 0.0 && m[10] == 1.0;
        double cx = cells[6 * c + 1], cy = cells[6 * c + 2];
        double vxx = cells[6 * c + 3], vxy = cells[6 * c + 4], vyy = cells[6 * c + 5];
        double z_end = plane_z_hi[p], z_a = plane_z_lo[p];
        double uniform_piece = 0.5 * fmin(sx, fmin(sy, sz));
        long long n_uniform = (long long)ceil((z_end - z_a) / uniform_piece - 1e-9);
        if (n_uniform < 1) n_uniform = 1;
        double uniform_dz = (z_end - z_a) / n_uniform;
        Bins bins{delta + s * (long long)(n_bins + 1), nullptr, 0};
#if ISODOSE_SHARED_HISTOGRAM
        if (block_structure >= 0) {
            bins.window = window;
            bins.window_low = window_low;
        }
#endif
        double inside_sum = 0, outside_sum = 0, dose_sum = 0, x_sum = 0, y_sum = 0, z_sum = 0;
        double dmin = ISODOSE_INF, dmax = -ISODOSE_INF;
        while (z_a < z_end) {
            double z_b;
            if (axial) {
                double shifted = z_a + m[11];
                z_b = fmin(oz + (floor((shifted - oz) / sz + 1e-9) + 1.0) * sz - m[11], z_end);
            } else {
                z_b = fmin(z_a + uniform_dz, z_end);
                if (z_end - z_b < 1e-9 * uniform_dz) z_b = z_end;
            }
            double dz = z_b - z_a;
            double z_local = 0.5 * (z_a + z_b);
            z_a = z_b;
            double weight = area * dz;
            double px = m[0] * cx + m[1] * cy + m[2] * z_local + m[3];
            double py = m[4] * cx + m[5] * cy + m[6] * z_local + m[7];
            double pz = axial ? z_local + m[11] : m[8] * cx + m[9] * cy + m[10] * z_local + m[11];
            x_sum += weight * px;
            y_sum += weight * py;
            z_sum += weight * pz;
            int i, j, k;
            double tx, ty, tz, gx, gy, gz;
            if (!(grid_coordinate(px, ox, sx, nx, &i, &tx) && grid_coordinate(py, oy, sy, ny, &j, &ty) &&
                  grid_coordinate(pz, oz, sz, nz, &k, &tz))) {
                outside_sum += weight;
                continue;
            }
            double value = interpolate(dose, nz, nx, ny, i, j, k, tx, ty, tz, sx, sy, sz, &gx, &gy, &gz);
            // Not negative, and never -0.0: the extremes are kept with integer atomics on the doubles' bits, which
            // order as the values only for +0.0 and up (the bits of -0.0 beat those of every positive dose).
            if (!(value > 0.0)) value = 0.0;
            // Gradient in the structure's own frame (R^T g), for the variance over the sample's region.
            double lx = m[0] * gx + m[4] * gy + m[8] * gz;
            double ly = m[1] * gx + m[5] * gy + m[9] * gz;
            double lz = m[2] * gx + m[6] * gy + m[10] * gz;
            double variance = lx * lx * vxx + 2.0 * lx * ly * vxy + ly * ly * vyy + lz * lz * dz * dz / 12.0;
            deposit(bins, value, sqrt(12.0 * fmax(variance, 0.0)), weight, inverse_bin_width, n_bins);
            inside_sum += weight;
            dose_sum += weight * value;
            dmin = fmin(dmin, value);
            dmax = fmax(dmax, value);
        }
        // Each sum rounded to fixed point once per cell: integer sums then give the same bits in any order.
        sums[0] = (i64)llrint(inside_sum * VOLUME_SCALE);
        sums[1] = (i64)llrint(outside_sum * VOLUME_SCALE);
        sums[2] = (i64)llrint(dose_sum * DOSE_VOLUME_SCALE);
        sums[3] = (i64)llrint(x_sum * POSITION_VOLUME_SCALE);
        sums[4] = (i64)llrint(y_sum * POSITION_VOLUME_SCALE);
        sums[5] = (i64)llrint(z_sum * POSITION_VOLUME_SCALE);
        if (inside_sum > 0) {
            // Non-negative doubles order as their bit patterns do.
            low_bits = (u64)__double_as_longlong(dmin);
            high_bits = (u64)__double_as_longlong(dmax);
        }
    }
    i64* stats_target = stats_fixed;
    u64* extremes_target = extremes;
    long long slot = s;
#if ISODOSE_SHARED_HISTOGRAM
    if (block_structure >= 0) {  // the block's own sums, added to the structure's once below
        stats_target = block_sums;
        extremes_target = block_extremes;
        slot = 0;
    }
#endif
#if ISODOSE_WARP_SUMS
    add_cell_stats_warp(stats_target, extremes_target, s, slot, sums, low_bits, high_bits);
#else
    if (s >= 0) add_cell_stats(stats_target, extremes_target, slot, sums, low_bits, high_bits);
#endif
#if ISODOSE_SHARED_HISTOGRAM
    __syncthreads();
    if (block_structure >= 0) {
        i64* structure_delta = delta + block_structure * (long long)(n_bins + 1);
        for (unsigned k = threadIdx.x; k <= SHARED_BINS; k += blockDim.x) {
            long long bin = (long long)window_low + k;
            if (window[k] != 0 && bin <= n_bins) atomicAdd((u64*)&structure_delta[bin], (u64)window[k]);
        }
        if (threadIdx.x == 0)
            add_cell_stats(stats_fixed, extremes, block_structure, block_sums, block_extremes[0], block_extremes[1]);
    }
#endif
}

// ------------------------------------------------------------------------------------------------------
// Displacement fields: field f's float32 vectors, (nz, ny, nx) grid points of 3 components each, start at
// vectors[field_offset[f]], its shape is field_shape[3f..3f+2] = (nz, ny, nx), and field_matrix[12f..12f+11] are the
// top three rows (row major) of its world-to-index 4x4. One thread per point, in the field point_field[n]: the
// displacement (3 values) and its Jacobian (9, row major: component by x, y, z); NaN outside the grid points' box.
// ------------------------------------------------------------------------------------------------------
__device__ __forceinline__ double interpolate_component(const float* __restrict__ v, int c, int nz, int nx, int ny,
                                                        int i, int j, int k, double tx, double ty, double tz,
                                                        double* gi, double* gj, double* gk) {
    long long plane = (long long)nx * ny;
    long long base = k * plane + (long long)j * nx + i;
    long long di = nx > 1 ? 1 : 0, dj = ny > 1 ? nx : 0, dk = nz > 1 ? plane : 0;
    double c000 = v[3 * base + c], c001 = v[3 * (base + di) + c];
    double c010 = v[3 * (base + dj) + c], c011 = v[3 * (base + dj + di) + c];
    double c100 = v[3 * (base + dk) + c], c101 = v[3 * (base + dk + di) + c];
    double c110 = v[3 * (base + dk + dj) + c], c111 = v[3 * (base + dk + dj + di) + c];
    double c00 = c000 + tx * (c001 - c000);
    double c01 = c010 + tx * (c011 - c010);
    double c10 = c100 + tx * (c101 - c100);
    double c11 = c110 + tx * (c111 - c110);
    double c0 = c00 + ty * (c01 - c00);
    double c1 = c10 + ty * (c11 - c10);
    double dx0 = (1 - ty) * (c001 - c000) + ty * (c011 - c010);
    double dx1 = (1 - ty) * (c101 - c100) + ty * (c111 - c110);
    *gi = (1 - tz) * dx0 + tz * dx1;
    *gj = (1 - tz) * (c01 - c00) + tz * (c11 - c10);
    *gk = c1 - c0;
    return c0 + tz * (c1 - c0);
}

extern "C" __global__ void displace_kernel(const float* __restrict__ vectors, const long long* __restrict__ field_offset,
                                           const int* __restrict__ field_shape,
                                           const double* __restrict__ field_matrix,
                                           const long long* __restrict__ point_field,
                                           const double* __restrict__ points, long long n_points,
                                           double* __restrict__ displacement, double* __restrict__ jacobian) {
    long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= n_points) return;
    long long f = point_field[n];
    const double* m = field_matrix + 12 * f;
    int nz = field_shape[3 * f], ny = field_shape[3 * f + 1], nx = field_shape[3 * f + 2];
    double px = points[3 * n], py = points[3 * n + 1], pz = points[3 * n + 2];
    double fi = m[0] * px + m[1] * py + m[2] * pz + m[3];
    double fj = m[4] * px + m[5] * py + m[6] * pz + m[7];
    double fk = m[8] * px + m[9] * py + m[10] * pz + m[11];
    int i, j, k;
    double tx, ty, tz;
    bool inside = grid_coordinate(fi, 0.0, 1.0, nx, &i, &tx) && grid_coordinate(fj, 0.0, 1.0, ny, &j, &ty) &&
                  grid_coordinate(fk, 0.0, 1.0, nz, &k, &tz);
    if (!inside) {
        for (int a = 0; a < 3; ++a) displacement[3 * n + a] = ISODOSE_NAN;
        for (int a = 0; a < 9; ++a) jacobian[9 * n + a] = ISODOSE_NAN;
        return;
    }
    const float* v = vectors + field_offset[f];
    for (int c = 0; c < 3; ++c) {
        double gi, gj, gk;
        displacement[3 * n + c] = interpolate_component(v, c, nz, nx, ny, i, j, k, tx, ty, tz, &gi, &gj, &gk);
        for (int b = 0; b < 3; ++b) jacobian[9 * n + 3 * c + b] = gi * m[b] + gj * m[4 + b] + gk * m[8 + b];
    }
}

// The displacement (d[3]) and its Jacobian (g[9], row major) of field f at one point; false outside its grid.
__device__ __forceinline__ bool field_at(const float* __restrict__ v, const double* __restrict__ m, int nz, int ny,
                                         int nx, double px, double py, double pz, double* d, double* g) {
    double fi = m[0] * px + m[1] * py + m[2] * pz + m[3];
    double fj = m[4] * px + m[5] * py + m[6] * pz + m[7];
    double fk = m[8] * px + m[9] * py + m[10] * pz + m[11];
    int i, j, k;
    double tx, ty, tz;
    if (!(grid_coordinate(fi, 0.0, 1.0, nx, &i, &tx) && grid_coordinate(fj, 0.0, 1.0, ny, &j, &ty) &&
          grid_coordinate(fk, 0.0, 1.0, nz, &k, &tz)))
        return false;
    for (int c = 0; c < 3; ++c) {
        double gi, gj, gk;
        d[c] = interpolate_component(v, c, nz, nx, ny, i, j, k, tx, ty, tz, &gi, &gj, &gk);
        for (int b = 0; b < 3; ++b) g[3 * c + b] = gi * m[b] + gj * m[4 + b] + gk * m[8 + b];
    }
    return true;
}

// x = a^-1 y for a 3x3 a (row major), by Cramer's rule; false when a is singular.
__device__ __forceinline__ bool solve3(const double* a, const double* y, double* x) {
    double det = a[0] * (a[4] * a[8] - a[5] * a[7]) - a[1] * (a[3] * a[8] - a[5] * a[6]) +
                 a[2] * (a[3] * a[7] - a[4] * a[6]);
    if (det == 0.0 || !isfinite(det)) return false;
    x[0] = (y[0] * (a[4] * a[8] - a[5] * a[7]) - a[1] * (y[1] * a[8] - a[5] * y[2]) +
            a[2] * (y[1] * a[7] - a[4] * y[2])) / det;
    x[1] = (a[0] * (y[1] * a[8] - a[5] * y[2]) - y[0] * (a[3] * a[8] - a[5] * a[6]) +
            a[2] * (a[3] * y[2] - y[1] * a[6])) / det;
    x[2] = (a[0] * (a[4] * y[2] - y[1] * a[7]) - a[1] * (a[3] * y[2] - y[1] * a[6]) +
            y[0] * (a[3] * a[7] - a[4] * a[6])) / det;
    return true;
}

// ------------------------------------------------------------------------------------------------------
// The inverse of a field: one thread per target t, in the field point_field[n], solving pre p + d(p) = t by
// Newton's method from pre^-1 t, a step halved while it would leave the grid; pre and pre_inverse hold 16 values
// (row major) per field. Out: p (3), the Jacobian of d at p (9) and the residual |pre p + d(p) - t|; NaN where
// no point inside the grid is found.
// ------------------------------------------------------------------------------------------------------
extern "C" __global__ void invert_kernel(const float* __restrict__ vectors, const long long* __restrict__ field_offset,
                                         const int* __restrict__ field_shape, const double* __restrict__ field_matrix,
                                         const long long* __restrict__ point_field,
                                         const double* __restrict__ targets, const double* __restrict__ pre,
                                         const double* __restrict__ pre_inverse, long long n_points,
                                         double* __restrict__ points, double* __restrict__ jacobian,
                                         double* __restrict__ residual) {
    long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= n_points) return;
    long long f = point_field[n];
    const double* m = field_matrix + 12 * f;
    const double* a0 = pre + 16 * f;
    const double* ai = pre_inverse + 16 * f;
    int nz = field_shape[3 * f], ny = field_shape[3 * f + 1], nx = field_shape[3 * f + 2];
    const float* v = vectors + field_offset[f];
    const double* t = targets + 3 * n;
    double p[3], d[3], g[9], trial[3], td[3], tg[9], mismatch[3], step[3], a[9];
    for (int r = 0; r < 3; ++r) p[r] = ai[4 * r] * t[0] + ai[4 * r + 1] * t[1] + ai[4 * r + 2] * t[2] + ai[4 * r + 3];
    bool ok = field_at(v, m, nz, ny, nx, p[0], p[1], p[2], d, g);
    double size = ISODOSE_INF;
    for (int iteration = 0; iteration <= INVERSION_ITERATIONS && ok; ++iteration) {
        for (int r = 0; r < 3; ++r)
            mismatch[r] = a0[4 * r] * p[0] + a0[4 * r + 1] * p[1] + a0[4 * r + 2] * p[2] + a0[4 * r + 3] + d[r] - t[r];
        size = sqrt(mismatch[0] * mismatch[0] + mismatch[1] * mismatch[1] + mismatch[2] * mismatch[2]);
        if (size <= INVERSION_TOLERANCE_MM) break;
        for (int r = 0; r < 3; ++r)
            for (int c = 0; c < 3; ++c) a[3 * r + c] = a0[4 * r + c] + g[3 * r + c];
        if (!solve3(a, mismatch, step)) {
            ok = false;
            break;
        }
        double scale = 1.0;
        bool moved = false;
        for (int h = 0; h <= INVERSION_HALVINGS; ++h) {
            for (int r = 0; r < 3; ++r) trial[r] = p[r] - scale * step[r];
            if (field_at(v, m, nz, ny, nx, trial[0], trial[1], trial[2], td, tg)) {
                moved = true;
                break;
            }
            scale *= 0.5;
        }
        if (!moved) {
            ok = false;
            break;
        }
        for (int r = 0; r < 3; ++r) {
            p[r] = trial[r];
            d[r] = td[r];
        }
        for (int r = 0; r < 9; ++r) g[r] = tg[r];
    }
    for (int r = 0; r < 3; ++r) points[3 * n + r] = ok ? p[r] : ISODOSE_NAN;
    for (int r = 0; r < 9; ++r) jacobian[9 * n + r] = ok ? g[r] : ISODOSE_NAN;
    residual[n] = ok ? size : ISODOSE_NAN;
}

// ------------------------------------------------------------------------------------------------------
// moved doses: perturbations of many cases in one launch. Case c's points are points[case_point_start[c]..] (each
// in its grid point_grid[i] of the table), its rigid 4x4 transforms (row major) transforms[16 case_transform_start
// [c]..]; its block of out starts at out_start[c] and is (transforms, points), row by row. One thread per value.
// ------------------------------------------------------------------------------------------------------
extern "C" __global__ void moved_doses_kernel(const float* __restrict__ doses, const long long* __restrict__ grid_offset,
                                              const int* __restrict__ grid_shape,
                                              const double* __restrict__ grid_geometry,
                                              const double* __restrict__ points,
                                              const long long* __restrict__ point_grid,
                                              const long long* __restrict__ case_point_start,
                                              const double* __restrict__ transforms,
                                              const long long* __restrict__ case_transform_start,
                                              const long long* __restrict__ out_start, long long n_cases,
                                              long long n_out, double* __restrict__ out) {
    long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= n_out) return;
    long long c = upper_bound(out_start, n_cases, n);
    long long n_points = case_point_start[c + 1] - case_point_start[c];
    long long offset = n - out_start[c];
    long long d = offset / n_points;
    long long i = case_point_start[c] + (offset - d * n_points);
    const double* m = transforms + 16 * (case_transform_start[c] + d);
    double px = points[3 * i], py = points[3 * i + 1], pz = points[3 * i + 2];
    Grid g = grid_at(doses, grid_offset, grid_shape, grid_geometry, point_grid[i]);
    out[n] = trilinear_at(g, m[0] * px + m[1] * py + m[2] * pz + m[3], m[4] * px + m[5] * py + m[6] * pz + m[7],
                          m[8] * px + m[9] * py + m[10] * pz + m[11]);
}
