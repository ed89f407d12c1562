// Launchers of the emulated kernels, one per kernel, with the kernel's own parameters after (grid, block).
#include "emulation.h"
#include "../../kernels/cuda/isodose.cu"

extern "C" void emulate_trilinear_kernel(unsigned grid, unsigned block, const float* doses,
                                         const long long* grid_offset, const int* grid_shape,
                                         const double* grid_geometry, const long long* point_grid,
                                         const double* points, long long n_points, double* out) {
    EMULATE_LAUNCH(grid, block,
                   trilinear_kernel(doses, grid_offset, grid_shape, grid_geometry, point_grid, points, n_points, out));
}

extern "C" void emulate_resample_kernel(unsigned grid, unsigned block, const float* doses,
                                        const long long* grid_offset, const int* grid_shape,
                                        const double* grid_geometry, const double* lattice, long long lattice_ny,
                                        long long lattice_nx, const double* transform, long long n_points,
                                        double* out) {
    EMULATE_LAUNCH(grid, block,
                   resample_kernel(doses, grid_offset, grid_shape, grid_geometry, lattice, lattice_ny, lattice_nx,
                                   transform, n_points, out));
}

extern "C" void emulate_coverage_kernel(unsigned grid, unsigned block, const double* vertices,
                                        const long long* ring_start, const long long* plane_ring_start,
                                        const long long* plane_cell_start, const double* plane_x0,
                                        const double* plane_y0, const long long* plane_nx, const double* plane_hx,
                                        const double* plane_hy, const long long* row_plane,
                                        const long long* row_in_plane, long long n_rows,
                                        const int* plane_scanlines, double* cells, int* overflow) {
    EMULATE_LAUNCH(grid, block,
                   coverage_kernel(vertices, ring_start, plane_ring_start, plane_cell_start, plane_x0, plane_y0,
                                   plane_nx, plane_hx, plane_hy, row_plane, row_in_plane, n_rows, plane_scanlines, cells,
                                   overflow));
}

extern "C" void emulate_histogram_kernel(unsigned grid, unsigned block, const double* values, const double* weights,
                                         const double* widths, long long n, double inverse_bin_width, int n_bins,
                                         long long* delta) {
    EMULATE_LAUNCH(grid, block, histogram_kernel(values, weights, widths, n, inverse_bin_width, n_bins, delta));
}

extern "C" void emulate_cell_histograms_kernel(
    unsigned grid, unsigned block, const float* doses, const long long* grid_offset, const int* grid_shape,
    const double* grid_geometry, const double* cells, long long n_cells, const long long* plane_cell_start,
    long long n_planes, const double* plane_z_lo, const double* plane_z_hi, const long long* structure_plane_start,
    long long n_structures, const long long* structure_grid, const double* structure_transform,
    const double* structure_inverse_bin_width, int n_bins, long long* delta, long long* stats_fixed,
    unsigned long long* extremes) {
#if ISODOSE_WARP_SUMS || ISODOSE_SHARED_HISTOGRAM  // variants whose threads synchronise
#define EMULATE_CELL_LAUNCH EMULATE_COOPERATIVE_LAUNCH
#else
#define EMULATE_CELL_LAUNCH EMULATE_LAUNCH
#endif
    EMULATE_CELL_LAUNCH(grid, block,
                   cell_histograms_kernel(doses, grid_offset, grid_shape, grid_geometry, cells, n_cells,
                                          plane_cell_start, n_planes, plane_z_lo, plane_z_hi, structure_plane_start,
                                          n_structures, structure_grid, structure_transform,
                                          structure_inverse_bin_width, n_bins, delta, stats_fixed, extremes));
}

extern "C" void emulate_displace_kernel(unsigned grid, unsigned block, const float* vectors,
                                        const long long* field_offset, const int* field_shape,
                                        const double* field_matrix, const long long* point_field,
                                        const double* points, long long n_points, double* displacement,
                                        double* jacobian) {
    EMULATE_LAUNCH(grid, block,
                   displace_kernel(vectors, field_offset, field_shape, field_matrix, point_field, points, n_points,
                                   displacement, jacobian));
}

extern "C" void emulate_invert_kernel(unsigned grid, unsigned block, const float* vectors,
                                      const long long* field_offset, const int* field_shape,
                                      const double* field_matrix, const long long* point_field, const double* targets,
                                      const double* pre, const double* pre_inverse, long long n_points,
                                      double* points, double* jacobian, double* residual) {
    EMULATE_LAUNCH(grid, block,
                   invert_kernel(vectors, field_offset, field_shape, field_matrix, point_field, targets, pre,
                                 pre_inverse, n_points, points, jacobian, residual));
}

extern "C" void emulate_moved_doses_kernel(unsigned grid, unsigned block, const float* doses,
                                           const long long* grid_offset, const int* grid_shape,
                                           const double* grid_geometry, const double* points,
                                           const long long* point_grid, const long long* case_point_start,
                                           const double* transforms, const long long* case_transform_start,
                                           const long long* out_start, long long n_cases, long long n_out,
                                           double* out) {
    EMULATE_LAUNCH(grid, block,
                   moved_doses_kernel(doses, grid_offset, grid_shape, grid_geometry, points, point_grid,
                                      case_point_start, transforms, case_transform_start, out_start, n_cases, n_out,
                                      out));
}
