"""Kernels: every backend against the NumPy reference, and the reference against exact answers."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest

from isodose.geometry import rigid_matrix
from isodose.kernels import numba_cpu, numpy_ref
from isodose.model import Contour, DoseGrid, Structure
from isodose.phantoms import Cone, Shell, Sphere, contour_shape
from isodose.voxelize import SamplingOptions, plan_sampling

from .conftest import linear_grid

COMPILED = [numba_cpu]


def _coverage(kernels, plan):
    return kernels.polygon_coverage(*_coverage_geometry(plan), plan.plane_scanlines)


def _coverage_geometry(plan):
    """The arguments of ``polygon_coverage`` that ``plan`` gives, all but the scanlines."""
    return (
        plan.vertices,
        plan.ring_start,
        plan.plane_ring_start,
        plan.plane_cell_start,
        plan.plane_x0_mm,
        plan.plane_y0_mm,
        plan.plane_nx,
        plan.plane_ny,
        plan.plane_hx_mm,
        plan.plane_hy_mm,
    )


def _histograms(kernels, plan, grid, cells, n_bins=4096, chunks=64, transforms=None):
    bin_width = grid.max_gy * 1.000001 / n_bins
    if transforms is None:
        transforms = np.broadcast_to(np.eye(4), (plan.n_structures, 4, 4))
    return kernels.cell_histograms(
        grid.dose_gy,
        np.array(grid.origin_mm),
        np.array(grid.spacing_mm),
        cells,
        plan.plane_cell_start,
        plan.plane_z_lo_mm,
        plan.plane_z_hi_mm,
        plan.structure_plane_start,
        transforms,
        bin_width,
        n_bins,
        chunks,
    )


def rigid(rng, tilt: bool, shift=(5.0, -7.0, 3.0)):
    """A random rotation about z (tilt=False) or about a random axis, with a translation."""
    axis = rng.normal(size=3) if tilt else (0.0, 0.0, 1.0)
    return rigid_matrix(np.degrees(rng.uniform(0.05, 0.4)), axis, shift)


def _star(rng, centre, n=40, r=(4.0, 11.0)):
    angle = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = rng.uniform(*r, n)
    return np.column_stack([centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle)])


def _awkward_structures(rng):
    """Star polygons, a polygon with a hole, a self-intersecting bow-tie and two islands in one plane."""
    contours = []
    for z in np.arange(-6.0, 6.1, 1.5):
        contours.append(Contour(_star(rng, (rng.uniform(-2, 2), rng.uniform(-2, 2))), float(z)))
    star = Structure("star", 1, tuple(contours))
    ring = Structure(
        "ring",
        2,
        (
            Contour(_star(rng, (0, 0), r=(9, 12)), 0.0),
            Contour(_star(rng, (0, 0), r=(3, 5))[::-1].copy(), 0.0),
            Contour(_star(rng, (1, 0), r=(9, 12)), 2.0),
        ),
    )
    bowtie = Structure("bowtie", 3, (Contour(np.array([[-8.0, -6.0], [8.0, 6.0], [8.0, -6.0], [-8.0, 6.0]]), 1.0),))
    islands = Structure(
        "islands",
        4,
        (
            Contour(_star(rng, (-12, 0), r=(2, 4)), 0.0),
            Contour(_star(rng, (12, 3), r=(2, 4)), 0.0),
        ),
    )
    return [star, ring, bowtie, islands]


# --- trilinear -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernels", COMPILED)
def test_trilinear_matches_reference(kernels, rng):
    dose = rng.uniform(0, 70, (7, 8, 9)).astype(np.float32)
    origin, spacing = np.array([-5.0, 3.0, 10.0]), np.array([2.0, 2.5, 3.0])
    points = rng.uniform([-8, 0, 6], [25, 25, 35], (5000, 3))
    expected = numpy_ref.trilinear(dose, origin, spacing, points)
    got = kernels.trilinear(dose, origin, spacing, points)
    assert np.array_equal(np.isnan(expected), np.isnan(got))
    assert np.isnan(expected).any() and (~np.isnan(expected)).any()
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=1e-12, atol=1e-10)


def test_the_compiled_trilinear_gives_the_references_bits(rng):
    """The doses at contour vertices are interpolated where cases are planned by whichever host kernels that process
    takes (:func:`isodose.dispatch.host_kernels`): Numba's and NumPy's give the same bits, in float32 and float64."""
    for dtype in (np.float32, np.float64):
        dose = rng.uniform(0, 70, (9, 11, 13)).astype(dtype)
        origin, spacing = np.array([-5.25, 3.125, 10.0]), np.array([2.0, 2.5, 3.0])
        points = rng.uniform([-8, 0, 6], [35, 35, 40], (20000, 3))
        expected = numpy_ref.trilinear(dose, origin, spacing, points)
        got = numba_cpu.trilinear(dose, origin, spacing, points)
        assert np.isnan(expected).any() and (~np.isnan(expected)).any()
        assert got.tobytes() == expected.tobytes()


def test_trilinear_reproduces_linear_fields_and_voxel_values(rng):
    field, grid = linear_grid(gradient=(0.3, -0.7, 1.1))
    lo = np.array([e[0] for e in grid.extent_mm])
    hi = np.array([e[1] for e in grid.extent_mm])
    points = rng.uniform(lo, hi, (2000, 3))
    for kernels in [numpy_ref, *COMPILED]:
        values = kernels.trilinear(grid.dose_gy, np.array(grid.origin_mm), np.array(grid.spacing_mm), points)
        np.testing.assert_allclose(values, field(*points.T), atol=2e-4)  # float32 grid
        corner = np.array([[hi[0], hi[1], hi[2]], [lo[0], lo[1], lo[2]]])
        at_corner = kernels.trilinear(grid.dose_gy, np.array(grid.origin_mm), np.array(grid.spacing_mm), corner)
        assert at_corner[0] == pytest.approx(grid.dose_gy[-1, -1, -1])
        assert at_corner[1] == pytest.approx(grid.dose_gy[0, 0, 0])
        outside = kernels.trilinear(
            grid.dose_gy,
            np.array(grid.origin_mm),
            np.array(grid.spacing_mm),
            corner + np.array([[0.01, 0, 0], [0, -0.01, 0]]),
        )
        assert np.isnan(outside).all()


@pytest.mark.parametrize("tilt", [False, True])
@pytest.mark.parametrize("kernels", COMPILED)
def test_resample_matches_reference(kernels, rng, tilt):
    dose = rng.uniform(0, 70, (9, 10, 11)).astype(np.float32)
    origin, spacing = np.array([-5.0, 3.0, 10.0]), np.array([2.0, 2.5, 3.0])
    onto = ((-9.0, -2.0, 4.0), (1.5, 2.0, 2.5), (12, 13, 14))
    matrix = rigid(rng, tilt, shift=(1.0, 2.0, -1.0))
    expected = numpy_ref.trilinear(dose, origin, spacing, numpy_ref.lattice_points(*onto, matrix)).reshape(onto[2])
    got = kernels.to_host(kernels.resample(dose, origin, spacing, *onto, matrix))
    assert got.shape == (12, 13, 14)
    assert np.array_equal(np.isnan(expected), np.isnan(got))
    assert np.isnan(expected).any() and (~np.isnan(expected)).any()
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=1e-12, atol=1e-9)


def test_resampling_a_grid_onto_itself_gives_its_voxels():
    dose = np.random.default_rng(2).uniform(0, 70, (5, 6, 7)).astype(np.float32)
    origin, spacing = (-10.0, 4.0, 7.5), (2.5, 2.5, 3.0)
    for kernels in [numpy_ref, *COMPILED]:
        np.testing.assert_allclose(
            kernels.resample(dose, origin, spacing, origin, spacing, dose.shape, np.eye(4)), dose, rtol=1e-6
        )


@pytest.mark.parametrize("kernels", [numpy_ref, *COMPILED])
def test_course_sum_is_the_weighted_sum_of_physical_or_eqd2_doses(kernels, rng):
    doses = [rng.uniform(0, 80, (6, 7, 8)), rng.uniform(0, 40, (6, 7, 8)).astype(np.float32), np.full((6, 7, 8), 2.0)]
    weights, fractions = [0.75, 1.0, 0.5], [35, 10, 1]
    for alpha_beta in (None, 3.0, 10.0):
        got = kernels.to_host(kernels.course_sum(doses, weights, fractions, alpha_beta))
        assert got.dtype == np.float32 and got.shape == (6, 7, 8)
        # Closed forms; the third course (2 Gy in one fraction) has EQD2 (2 + a/b) 2 / (2 + a/b) = 2 Gy.
        if alpha_beta is None:
            expected = 0.75 * doses[0] + doses[1] + 0.5 * 2.0
        else:
            expected = (
                sum(
                    w * d * (d / n + alpha_beta) / (2.0 + alpha_beta)
                    for w, d, n in zip(weights[:2], np.asarray(doses[:2], np.float64), fractions)
                )
                + 1.0
            )
        np.testing.assert_allclose(got, expected, rtol=1e-7)
        # Every backend rounds the same float64 sum once: the same bits.
        assert np.array_equal(got, numpy_ref.course_sum(doses, weights, fractions, alpha_beta))
    with pytest.raises(ValueError, match="doses of one shape"):
        kernels.course_sum([doses[0], doses[0][:3]], [1.0, 1.0], [1, 1])
    with pytest.raises(ValueError, match="2 doses, 1 weights, 2 fraction counts"):
        kernels.course_sum(doses[:2], [1.0], [1, 1])
    with pytest.raises(ValueError, match="at least one dose"):
        kernels.course_sum([], [], [])


# --- coverage --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernels", COMPILED)
def test_coverage_matches_reference_on_awkward_polygons(kernels, rng):
    _, grid = linear_grid()
    plan = plan_sampling(_awkward_structures(rng), grid, SamplingOptions(supersampling=5, scanlines=3))
    expected = _coverage(numpy_ref, plan)
    got = _coverage(kernels, plan)
    assert expected[:, 0].sum() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kernels", [numpy_ref, *COMPILED])
def test_coverage_with_scanlines_per_plane_is_each_plane_alone(kernels, rng):
    """Scanlines given per plane: each plane's cells are those of a call with its count for every plane."""
    _, grid = linear_grid()
    plan = plan_sampling(_awkward_structures(rng), grid, SamplingOptions(supersampling=5, scanlines=3))
    counts = 1 + np.arange(len(plan.plane_nx)) % 4
    got = kernels.polygon_coverage(*_coverage_geometry(plan), counts)
    for count in np.unique(counts):
        alone = kernels.polygon_coverage(*_coverage_geometry(plan), int(count))
        for p in np.flatnonzero(counts == count):
            rows = slice(plan.plane_cell_start[p], plan.plane_cell_start[p + 1])
            np.testing.assert_array_equal(got[rows], alone[rows])
    with pytest.raises(ValueError, match="scanline counts for"):
        kernels.polygon_coverage(*_coverage_geometry(plan), counts[:-1])
    with pytest.raises(ValueError, match="at least one scanline"):
        kernels.polygon_coverage(*_coverage_geometry(plan), counts * 0)


@pytest.mark.parametrize("kernels", COMPILED)
def test_coverage_matches_reference_where_windows_cut_spans(kernels):
    """Windows that cut a plane's polygons (spans running past the window on either side, or lying wholly
    beside it), spans inside one cell, and span ends on cell edges: the cells covered from side to side and the
    cut ones as the reference computes them."""
    square = np.array([[-10.0, -10.0], [10.0, -10.0], [10.0, 10.0], [-10.0, 10.0]])
    sliver = np.array([[0.1, -3.0], [0.3, -3.0], [0.3, 3.0], [0.1, 3.0]])  # narrower than a cell
    edges = np.array([[-4.0, -4.0], [4.0, -4.0], [4.0, 4.0], [-4.0, 4.0]])  # ends on cell edges
    diamond = np.array([[0.0, -9.0], [9.0, 0.0], [0.0, 9.0], [-9.0, 0.0]])
    planes = [
        ((square,), (-4.0, -4.0, 8, 8)),  # inside the square: every span passes both sides
        ((square,), (5.0, -4.0, 10, 8)),  # the square's right side cuts it
        ((square,), (12.0, -4.0, 5, 8)),  # wholly right of the square
        ((square,), (-20.0, -4.0, 5, 8)),  # wholly left of it
        ((sliver,), (-2.0, -4.0, 8, 8)),
        ((edges,), (-6.0, -6.0, 12, 12)),
        ((diamond, sliver), (-9.5, -9.5, 19, 19)),  # a hole cut by the sliver: spans with inner ends
    ]
    vertices, ring_start, plane_ring_start = [], [0], [0]
    x0, y0, nx, ny = [], [], [], []
    for rings, (px, py, pnx, pny) in planes:
        for ring in rings:
            vertices.append(ring)
            ring_start.append(ring_start[-1] + len(ring))
        plane_ring_start.append(len(ring_start) - 1)
        x0.append(px)
        y0.append(py)
        nx.append(pnx)
        ny.append(pny)
    nx, ny = np.array(nx), np.array(ny)
    args = (
        np.concatenate(vertices),
        np.array(ring_start),
        np.array(plane_ring_start),
        np.concatenate(([0], np.cumsum(nx * ny))),
        np.array(x0),
        np.array(y0),
        nx,
        ny,
        np.full(len(planes), 1.0),
        np.full(len(planes), 1.0),
    )
    for scanlines in (1, 3):
        expected = numpy_ref.polygon_coverage(*args, scanlines)
        got = kernels.polygon_coverage(*args, scanlines)
        assert expected[:, 0].sum() > 0
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_coverage_area_equals_polygon_area(rng):
    _, grid = linear_grid()
    for scanlines in (1, 2, 4):
        polygon = _star(rng, (0.3, -0.2), n=60)
        x, y = polygon[:, 0], polygon[:, 1]
        area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        centroid = np.array(
            [
                np.sum((x + np.roll(x, -1)) * (x * np.roll(y, -1) - np.roll(x, -1) * y)),
                np.sum((y + np.roll(y, -1)) * (x * np.roll(y, -1) - np.roll(x, -1) * y)),
            ]
        ) / (6 * 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
        plan = plan_sampling(
            [Structure("s", 1, (Contour(polygon, 0.0),))], grid, SamplingOptions(supersampling=25, scanlines=scanlines)
        )
        for kernels in [numpy_ref, *COMPILED]:
            cells = _coverage(kernels, plan)
            assert cells[:, 0].sum() == pytest.approx(area, rel=2e-4)
            covered_centroid = (cells[:, 0:1] * cells[:, 1:3]).sum(axis=0) / cells[:, 0].sum()
            np.testing.assert_allclose(covered_centroid, centroid, atol=2e-3)


def test_coverage_of_full_cells_is_exact():
    """A rectangle aligned with the scanline bands: every inside cell is fully covered, with the centroid at
    its centre and the covariance of a uniform rectangle."""
    _, grid = linear_grid(origin=(0.0, 0.0, 0.0), spacing=(2.0, 2.0, 2.0))
    rect = np.array([[0.3, 2.0], [9.7, 2.0], [9.7, 8.0], [0.3, 8.0]])
    plan = plan_sampling([Structure("r", 1, (Contour(rect, 4.0),))], grid, SamplingOptions(supersampling=4))
    for kernels in [numpy_ref, *COMPILED]:
        cells = _coverage(kernels, plan)
        assert cells[:, 0].sum() == pytest.approx(9.4 * 6.0, rel=1e-12)
        full = cells[np.isclose(cells[:, 0], 0.25)]
        assert len(full) > 50
        np.testing.assert_allclose(full[:, 3], 0.5**2 / 12, rtol=1e-9)
        np.testing.assert_allclose(full[:, 5], 0.5**2 / 12, rtol=1e-9)
        np.testing.assert_allclose(full[:, 4], 0.0, atol=1e-12)
        np.testing.assert_allclose((full[:, 1] - grid.origin_mm[0]) / 0.5 % 1.0, 0.5, atol=1e-9)


def test_even_odd_rule_removes_holes_and_crossings():
    _, grid = linear_grid()
    outer = np.array([[-10.0, -10.0], [10.0, -10.0], [10.0, 10.0], [-10.0, 10.0]])
    hole = np.array([[-5.0, -5.0], [5.0, -5.0], [5.0, 5.0], [-5.0, 5.0]])
    for hole_points in (hole, hole[::-1]):  # the hole's orientation does not matter
        plan = plan_sampling(
            [Structure("s", 1, (Contour(outer, 0.0), Contour(hole_points.copy(), 0.0)))],
            grid,
            SamplingOptions(supersampling=4),
        )
        for kernels in [numpy_ref, *COMPILED]:
            assert _coverage(kernels, plan)[:, 0].sum() == pytest.approx(400 - 100, rel=1e-9)
    # A bow-tie: two triangles of 48 mm^2 each, whatever the winding of each lobe.
    bowtie = np.array([[-8.0, -6.0], [8.0, 6.0], [8.0, -6.0], [-8.0, 6.0]])
    plan = plan_sampling([Structure("b", 1, (Contour(bowtie, 0.0),))], grid, SamplingOptions(supersampling=20))
    for kernels in [numpy_ref, *COMPILED]:
        assert _coverage(kernels, plan)[:, 0].sum() == pytest.approx(96.0, rel=2e-3)


# --- histograms ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernels", COMPILED)
def test_accumulate_histogram_matches_reference(kernels, rng):
    n = 20000
    values = rng.uniform(0, 60, n)
    weights = rng.uniform(0.1, 2, n)
    widths = rng.choice([0.0, 0.001, 0.3, 5.0], n)
    expected = numpy_ref.accumulate_histogram(values, weights, widths, 0.05, 1300)
    got = kernels.accumulate_histogram(values, weights, widths, 0.05, 1300)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert got.sum() == pytest.approx(weights.sum(), rel=1e-12)


def test_uniform_deposit_gives_exact_bin_masses():
    for kernels in [numpy_ref, *COMPILED]:
        hist = kernels.accumulate_histogram(np.array([2.35]), np.array([3.0]), np.array([1.5]), 0.5, 10)
        # Density 2 per Gy over [1.6, 3.1]: bins [1.5,2) [2,2.5) [2.5,3) [3,3.5) hold 0.8, 1, 1, 0.2.
        np.testing.assert_allclose(hist, [0, 0, 0, 0.8, 1.0, 1.0, 0.2, 0, 0, 0], atol=1e-12)
        point = kernels.accumulate_histogram(np.array([0.7]), np.array([2.0]), np.array([0.0]), 0.5, 4)
        np.testing.assert_allclose(point, [0, 2.0, 0, 0])
        # Spreads reaching past either end are moved inside, keeping their mass.
        ends = kernels.accumulate_histogram(np.array([0.1, 1.95]), np.array([1.0, 1.0]), np.array([0.6, 0.6]), 0.5, 4)
        np.testing.assert_allclose(ends, [5 / 6, 1 / 6, 1 / 6, 5 / 6], atol=1e-12)


@pytest.mark.parametrize("kernels", COMPILED)
def test_cell_histograms_match_reference(kernels, rng):
    _, grid = linear_grid(gradient=(0.4, -0.9, 0.7))
    structures = _awkward_structures(rng) + [
        contour_shape(Sphere((1, 2, 3), 9.0), "sphere", 5, 2.5),
        contour_shape(Shell((0, 0, 0), 14.0, 6.0), "shell", 6, 3.0),
        Structure("empty", 7, ()),
        contour_shape(Cone((30, 30, 30), 10.0, 20.0), "partly outside", 8, 2.0),
    ]
    plan = plan_sampling(structures, grid, SamplingOptions(target_cells=20000))
    cells = _coverage(numpy_ref, plan)
    expected_hist, expected_stats = _histograms(numpy_ref, plan, grid, cells)
    hist, stats = _histograms(kernels, plan, grid, cells)
    np.testing.assert_allclose(hist, expected_hist, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats, expected_stats, rtol=1e-9, atol=1e-6, equal_nan=True)
    assert np.isnan(stats[6, 3]) and stats[6, 0] == 0  # empty
    assert stats[7, 1] > 0 and stats[7, 0] > 0  # partly outside the grid
    np.testing.assert_allclose(hist.sum(axis=1), stats[:, 0], rtol=1e-9)


@pytest.mark.parametrize("kernels", COMPILED)
@pytest.mark.parametrize("shape", [(1, 9, 11), (9, 1, 11), (9, 11, 1), (2, 9, 11), (9, 2, 11), (9, 11, 2), (1, 1, 11)])
def test_cell_histograms_match_reference_on_grids_of_one_or_two_voxels_along_an_axis(kernels, rng, shape):
    """An axis of one voxel is its own neighbour, an axis of two has one voxel cell: a dose that is not linear,
    so that a sample reading a wrong neighbour changes the histogram, not only its mean."""
    spacing = (2.5, 2.5, 2.5)
    origin = tuple(-0.5 * (n - 1) * h for n, h in zip(shape[::-1], spacing))
    grid = DoseGrid(60.0 * rng.random(shape), origin, spacing, "1.2.3.4")
    structures = [
        contour_shape(Sphere((0.0, 0.0, 0.0), 6.0), "sphere", 1, 1.25),
        contour_shape(Cone((1.0, -1.0, 0.0), 4.0, 5.0), "cone", 2, 1.0),
    ]
    plan = plan_sampling(structures, grid, SamplingOptions(target_cells=20000))
    cells = _coverage(numpy_ref, plan)
    expected_hist, expected_stats = _histograms(numpy_ref, plan, grid, cells)
    hist, stats = _histograms(kernels, plan, grid, cells)
    assert expected_stats[:, 0].min() > 0  # each samples the grid
    np.testing.assert_allclose(hist, expected_hist, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats, expected_stats, rtol=1e-9, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("kernels", COMPILED)
@pytest.mark.parametrize("tilt", [False, True], ids=["rotation about z", "tilted"])
def test_transformed_structures_match_reference(kernels, rng, tilt):
    _, grid = linear_grid(gradient=(0.4, -0.9, 0.7))
    structures = [
        contour_shape(Sphere((1, 2, 3), 9.0), "sphere", 1, 2.5),
        contour_shape(Shell((0, 0, 0), 14.0, 6.0), "shell", 2, 3.0),
        *_awkward_structures(rng)[:2],
    ]
    plan = plan_sampling(structures, grid, SamplingOptions(target_cells=20000))
    transforms = np.stack([rigid(rng, tilt) for _ in structures])
    cells = _coverage(numpy_ref, plan)
    expected_hist, expected_stats = _histograms(numpy_ref, plan, grid, cells, transforms=transforms)
    hist, stats = _histograms(kernels, plan, grid, cells, transforms=transforms)
    np.testing.assert_allclose(hist, expected_hist, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats, expected_stats, rtol=1e-9, atol=1e-6, equal_nan=True)
    # Moving a structure keeps its volume and moves its centroid with it.
    _, untransformed = _histograms(numpy_ref, plan, grid, cells)
    volume = stats[:, 0] + stats[:, 1]
    np.testing.assert_allclose(volume, untransformed[:, 0] + untransformed[:, 1], rtol=1e-9)
    centroid = untransformed[:, 5:8] / volume[:, None]
    moved = np.einsum("sij,sj->si", transforms[:, :3, :3], centroid) + transforms[:, :3, 3]
    np.testing.assert_allclose(stats[:, 5:8] / volume[:, None], moved, atol=0.02)


@pytest.mark.slow
def test_numba_results_do_not_depend_on_thread_count(rng):
    _, grid = linear_grid(gradient=(0.4, -0.9, 0.7))
    structures = [contour_shape(Sphere((1, 2, 3), 15.0), "sphere", 1, 2.5), *_awkward_structures(rng)]
    plan = plan_sampling(structures, grid, SamplingOptions(target_cells=300000))
    threads = numba.get_num_threads()
    try:
        results = []
        for n in sorted({1, max(2, threads)}):
            numba.set_num_threads(n)
            cells = _coverage(numba_cpu, plan)
            results.append((cells, *_histograms(numba_cpu, plan, grid, cells)))
    finally:
        numba.set_num_threads(threads)
    for a, b in zip(results[0], results[-1]):
        assert np.array_equal(a, b, equal_nan=True)


def test_slab_pieces_split_at_dose_planes():
    pieces = numpy_ref.slab_pieces(-1.25, 4.0, grid_z0=-10.0, grid_dz=2.5)
    assert pieces == [(-1.25, 0.0), (0.0, 2.5), (2.5, 4.0)]
    assert math.isclose(sum(b - a for a, b in numpy_ref.slab_pieces(0.1, 0.2, 0.0, 3.0)), 0.1)


def test_numba_lanes_deal_every_item_once_and_balance_the_cost(rng):
    costs = np.concatenate([rng.uniform(1, 100, 40), [5000.0, 0.0, 0.0]])
    threads = numba.get_num_threads()
    lane_start, lane_items = numba_cpu._lanes(costs)
    assert lane_start[0] == 0 and lane_start[-1] == len(costs) and len(lane_start) == min(threads, len(costs)) + 1
    assert sorted(lane_items.tolist()) == list(range(len(costs)))
    loads = [costs[lane_items[a:b]].sum() for a, b in zip(lane_start[:-1], lane_start[1:])]
    # Greedy dealing, costliest first: no lane exceeds the fair share by more than one item's cost.
    assert max(loads) <= max(costs.sum() / len(loads), costs.max()) + costs[costs < 5000].max() + len(costs)
    one_lane = numba_cpu._lanes(np.array([3.0]))
    assert one_lane[0].tolist() == [0, 1] and one_lane[1].tolist() == [0]


_THREADS_AT_ONCE = """
import sys, threading
import numba
import numpy as np
from isodose.dvh import compute_dvhs
from isodose.model import DoseGrid
from isodose.phantoms import LinearField, Sphere, contour_shape

grid = LinearField(100.0, (0.3, -0.6, 0.7), (0.0, 0.0, 0.0)).grid((-40.0,) * 3, (2.5,) * 3, (33,) * 3, "1.2.3")
structures = [contour_shape(Sphere((1.0, -2.0, 0.5), 20.0), "s", 1, 1.0)]
[alone] = compute_dvhs(grid, structures, backend="numba")
assert numba.threading_layer() == "workqueue", numba.threading_layer()
results = []

def work():
    for _ in range(8):
        results.append(compute_dvhs(grid, structures, backend="numba")[0])

threads = [threading.Thread(target=work) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
assert len(results) == 32
assert all(np.array_equal(d.cumulative_cc, alone.cumulative_cc) and d.dmax_gy == alone.dmax_gy for d in results)
print("ok")
"""


def test_numba_kernels_may_be_called_from_many_threads_at_once():
    """Cases computed together in threads of one process (a multi-threaded Dask worker, a tool's thread pool):
    with Numba's workqueue threading layer, the one left where neither TBB nor OpenMP is installed, two threads in
    parallel regions at once would abort the process; each thread gets the DVH it gets alone."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    done = subprocess.run(
        [sys.executable, "-c", _THREADS_AT_ONCE], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


_LARGE_PLANE = """
import resource
import numpy as np
from isodose.kernels import numba_cpu

t = np.linspace(0.0, 2.0 * np.pi, 400, endpoint=False)
vertices = np.stack([50.0 + 49.0 * np.cos(t), 50.0 + 49.0 * np.sin(t)], axis=1)


def coverage(n):  # one plane: a disc in a window of n x n cells of 0.1 mm
    return numba_cpu.polygon_coverage(
        vertices, np.array([0, 400]), np.array([0, 1]), np.array([0, n * n]), np.array([0.0]), np.array([0.0]),
        np.array([n]), np.array([n]), np.array([100.0 / n]), np.array([100.0 / n]), np.array([2]),
    )


coverage(4)  # loaded from the cache (or compiled) on a tiny window
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
cells = coverage(1000)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(grown / cells.nbytes, cells[:, 0].sum())
"""


def test_coverage_of_a_large_plane_needs_little_memory_besides_its_cells():
    """A plane's moments are summed row by row, not in a second array of the whole window: the peak memory of
    covering a window of a million cells grows by its cells (48 MB) and little else (a second array would double
    it). Measured in a process of its own, whose peak no other test has raised."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _LARGE_PLANE], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    ratio, area = (float(v) for v in done.stdout.split())
    assert area == pytest.approx(math.pi * 49.0**2, rel=1e-3)  # the disc, whatever the memory
    assert ratio < 1.4, ratio
