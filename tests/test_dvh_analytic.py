"""DVHs of analytic phantoms, end to end through DICOM, against closed forms.

Two references: the exact DVH of the contoured geometry (each plane a slab, half end-caps), which the
engine must reproduce to within rounding and sampling; and the smooth solid itself, which it approaches
as the contour spacing shrinks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from isodose.dicom.read import read_dose, read_structures
from isodose.dvh import compute_dvhs
from isodose.errors import DoseGridError
from isodose.model import DoseGrid, Structure
from isodose.phantoms import Cone, Cylinder, Shell, Sphere, contour_shape, head_neck_case, shape_truth, slab_truth
from isodose.voxelize import SamplingOptions, plan_sampling

from .conftest import linear_grid

SHAPES = {
    "sphere": Sphere((1.3, -2.1, 0.7), 15.0),
    "cylinder": Cylinder((0.4, 0.2, -1.0), 12.0, 30.0),
    "cone": Cone((0.0, 1.0, 0.0), 14.0, 28.0),
    "shell": Shell((0.5, 0.5, 0.5), 18.0, 9.0),
    "small sphere (0.1 cc)": Sphere((0.3, 0.2, 0.1), 2.9),
}
FIELDS = {"x": (1.0, 0.0, 0.0), "y": (0.0, -1.0, 0.0), "z": (0.0, 0.0, 1.0), "oblique": (0.6, -0.5, 0.62)}
PERCENTS = (99, 95, 50, 5, 1)


def _compare(dvh, truth, volume_rtol, dose_atol):
    assert dvh.volume_cc == pytest.approx(truth.volume_mm3 / 1000, rel=volume_rtol)
    assert dvh.volume_outside_dose_cc == 0.0
    assert dvh.dmean_gy == pytest.approx(truth.dmean_gy, abs=dose_atol / 2)
    assert dvh.dmin_gy == pytest.approx(truth.dmin_gy, abs=dose_atol)
    assert dvh.dmax_gy == pytest.approx(truth.dmax_gy, abs=dose_atol)
    for p in PERCENTS:
        assert dvh.metric(f"D{p}") == pytest.approx(truth.dose_at_percent(p), abs=dose_atol), f"D{p}"
    if truth.volume_mm3 > 60:
        assert dvh.metric("D0.03cc") == pytest.approx(truth.dose_at_volume_mm3(30.0), abs=2 * dose_atol)
    for level in (0.25, 0.5, 0.75):
        dose = truth.dmin_gy + level * (truth.dmax_gy - truth.dmin_gy)
        expected = 100 * truth.volume_above(dose) / truth.volume_mm3
        assert dvh.metric(f"V{dose:.6f}Gy") == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize("spacing", [1.0, 2.5])
@pytest.mark.parametrize("field_name", FIELDS)
@pytest.mark.parametrize("shape_name", SHAPES)
def test_contoured_phantoms_match_their_exact_dvh(tmp_path, write_phantom, shape_name, field_name, spacing):
    shape = SHAPES[shape_name]
    rd, rs, field = write_phantom(shape, gradient=FIELDS[field_name], spacing_mm=spacing)
    [dvh] = compute_dvhs(read_dose(rd), read_structures(rs), backend="numba")
    _compare(dvh, slab_truth(shape, field, spacing), volume_rtol=2e-4, dose_atol=0.02)


@pytest.mark.parametrize("voxel_mm", [1.0, 4.0, 5.0])
@pytest.mark.parametrize("shape_name", ["sphere", "cone", "shell", "small sphere (0.1 cc)"])
def test_dose_grid_resolutions(tmp_path, write_phantom, shape_name, voxel_mm):
    """The same phantoms on finer and coarser dose grids, in an oblique field (the grid is offset from the
    shapes so that no voxel plane is special)."""
    n = int(round(80 / voxel_mm)) + 1
    field, grid = linear_grid(
        gradient=FIELDS["oblique"], origin=(-40.3, -39.7, -40.1), spacing=(voxel_mm,) * 3, shape=(n, n, n)
    )
    shape = SHAPES[shape_name]
    rd, rs, _ = write_phantom(shape, spacing_mm=2.0, grid=grid)
    [dvh] = compute_dvhs(read_dose(rd), read_structures(rs), backend="numba")
    _compare(dvh, slab_truth(shape, field, 2.0), volume_rtol=2e-4, dose_atol=0.02)


@pytest.mark.parametrize("shape_name", ["sphere", "cone", "shell"])
def test_fine_contours_approach_the_smooth_solid(tmp_path, write_phantom, shape_name):
    shape = SHAPES[shape_name]
    rd, rs, field = write_phantom(shape, gradient=FIELDS["oblique"], spacing_mm=0.5)
    [dvh] = compute_dvhs(read_dose(rd), read_structures(rs), backend="numba", options=SamplingOptions(end_cap="none"))
    truth = shape_truth(shape, field)
    assert dvh.volume_cc == pytest.approx(shape.volume_mm3 / 1000, rel=3e-3)
    assert truth.volume_mm3 == pytest.approx(shape.volume_mm3, rel=1e-5)  # the reference itself
    for p in PERCENTS:
        assert dvh.metric(f"D{p}") == pytest.approx(truth.dose_at_percent(p), abs=0.1)
    assert dvh.dmean_gy == pytest.approx(truth.dmean_gy, abs=0.02)


def test_numpy_reference_on_phantoms(write_phantom):
    for shape_name, field_name in [("shell", "oblique"), ("cone", "z"), ("small sphere (0.1 cc)", "y")]:
        rd, rs, field = write_phantom(SHAPES[shape_name], gradient=FIELDS[field_name], spacing_mm=2.5)
        [dvh] = compute_dvhs(read_dose(rd), read_structures(rs), backend="numpy")
        _compare(dvh, slab_truth(SHAPES[shape_name], field, 2.5), volume_rtol=2e-4, dose_atol=0.02)


def test_end_caps_half_or_none():
    _, grid = linear_grid(gradient=(0.0, 0.0, 1.0))
    shape = Cylinder((0.0, 0.0, 0.0), 10.0, 20.0)
    structure = contour_shape(shape, "c", 1, 2.0, n_vertices=720)
    area = math.pi * 100 * (720 * math.sin(2 * math.pi / 720) / (2 * math.pi))
    [half] = compute_dvhs(grid, [structure])
    [none] = compute_dvhs(grid, [structure], options=SamplingOptions(end_cap="none"))
    assert half.volume_cc == pytest.approx(area * 22.0 / 1000, rel=1e-4)
    assert none.volume_cc == pytest.approx(area * 20.0 / 1000, rel=1e-4)
    # With the dose along z, Dmin and Dmax sit on the end faces.
    field_at = {"half": (-11.0, 11.0), "none": (-10.0, 10.0)}
    for dvh, key in ((half, "half"), (none, "none")):
        assert dvh.dmin_gy == pytest.approx(100 + field_at[key][0], abs=1e-4)
        assert dvh.dmax_gy == pytest.approx(100 + field_at[key][1], abs=1e-4)


def test_structure_partly_outside_the_dose_grid():
    """A sphere cut in half by the grid's x edge: half its volume is reported outside, and the dose
    statistics describe the half inside, exactly, without spreading the outside over them."""
    _, grid = linear_grid(gradient=(0.0, 0.0, 1.0))
    x_edge = grid.extent_mm[0][1]
    shape = Sphere((x_edge, 0.0, 0.0), 12.0)
    structure = contour_shape(shape, "s", 1, 1.0)
    [dvh] = compute_dvhs(grid, [structure])
    truth = slab_truth(shape, _field_z(), 1.0)
    assert dvh.volume_cc == pytest.approx(truth.volume_mm3 / 1000, rel=2e-4)
    assert dvh.volume_outside_dose_cc == pytest.approx(dvh.volume_cc / 2, rel=2e-3)
    assert dvh.dose_volume_cc == pytest.approx(dvh.volume_cc / 2, rel=2e-3)
    # The dose depends on z only, so the inside half has the whole sphere's relative DVH.
    for p in PERCENTS:
        assert dvh.metric(f"D{p}") == pytest.approx(truth.dose_at_percent(p), abs=0.02)
    assert dvh.metric("V100Gy") == pytest.approx(50.0, abs=0.05)


def _field_z():
    field, _ = linear_grid(gradient=(0.0, 0.0, 1.0))
    return field


def test_structure_wholly_outside_and_empty_structures():
    _, grid = linear_grid()
    far = contour_shape(Sphere((200.0, 0.0, 0.0), 5.0), "far", 1, 1.0)
    empty = Structure("empty", 2, ())
    far_dvh, empty_dvh = compute_dvhs(grid, [far, empty])
    assert not far_dvh.has_dose and far_dvh.volume_outside_dose_cc == pytest.approx(far_dvh.volume_cc)
    assert far_dvh.volume_cc == pytest.approx(4 / 3 * math.pi * 125 / 1000, rel=0.02)
    assert math.isnan(far_dvh.metric("D95")) and math.isnan(far_dvh.dmean_gy)
    assert not empty_dvh.has_dose and empty_dvh.volume_cc == 0.0


def test_supersampling_can_be_set():
    _, grid = linear_grid(gradient=FIELDS["oblique"])
    shape = SHAPES["sphere"]
    structure = contour_shape(shape, "s", 1, 2.0)
    truth = slab_truth(shape, linear_grid(gradient=FIELDS["oblique"])[0], 2.0)
    for m in (2, 8):
        [dvh] = compute_dvhs(grid, [structure], options=SamplingOptions(supersampling=m))
        assert dvh.volume_cc == pytest.approx(truth.volume_mm3 / 1000, rel=1e-3)
        assert dvh.metric("D95") == pytest.approx(truth.dose_at_percent(95), abs=0.05)


def test_dvh_has_its_backend_and_agrees_with_itself_across_batches():
    _, grid = linear_grid(gradient=FIELDS["oblique"])
    structures = [contour_shape(s, n, i, 2.0) for i, (n, s) in enumerate(SHAPES.items(), start=1)]
    whole = compute_dvhs(grid, structures, backend="numba")
    batched = compute_dvhs(grid, structures, backend="numba", options=SamplingOptions(max_cells_per_batch=5000))
    for a, b in zip(whole, batched):
        assert a.backend == "numba"
        assert a.volume_cc == pytest.approx(b.volume_cc, rel=1e-12)
        np.testing.assert_allclose(a.cumulative_cc, b.cumulative_cc, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_grids_made_in_python_with_negative_or_non_finite_doses_are_refused(backend):
    """The readers refuse such files; a DoseGrid built in Python (a dose difference, say) is refused too, with
    its source named, before any sampling."""
    _, grid = linear_grid(gradient=(1.0, 0.0, 0.0), dose_gy=50.0)
    sphere = contour_shape(Sphere((0.0, 0.0, 0.0), 15.0), "S", 1, 2.5)
    for dose, message in [
        (grid.dose_gy - 45.0, "negative values \\(down to -35 Gy\\)"),
        (np.where(grid.dose_gy > 60, np.nan, grid.dose_gy), "NaN or infinite"),
        (np.where(grid.dose_gy > 60, np.inf, grid.dose_gy), "NaN or infinite"),
    ]:
        bad = DoseGrid(
            dose.astype(np.float32),
            grid.origin_mm,
            grid.spacing_mm,
            grid.frame_of_reference_uid,
            source="difference.dcm",
        )
        with pytest.raises(DoseGridError, match=f"^difference.dcm: dose holds {message}"):
            compute_dvhs(bad, [sphere], backend=backend)


def test_grids_made_in_python_with_an_unusable_lattice_are_refused():
    _, grid = linear_grid()
    sphere = contour_shape(Sphere((0.0, 0.0, 0.0), 15.0), "S", 1, 2.5)

    def made(**changes):
        fields = dict(
            dose_gy=grid.dose_gy,
            origin_mm=grid.origin_mm,
            spacing_mm=grid.spacing_mm,
            frame_of_reference_uid=grid.frame_of_reference_uid,
            source="made.dcm",
        )
        return DoseGrid(**{**fields, **changes})

    for changes, message in [
        (dict(spacing_mm=(-2.5, 2.5, 2.5)), "spacing_mm must be three finite, positive distances"),
        (dict(spacing_mm=(2.5, 0.0, 2.5)), "spacing_mm must be three finite, positive distances"),
        (dict(spacing_mm=(2.5, 2.5, np.nan)), "spacing_mm must be three finite, positive distances"),
        (dict(origin_mm=(0.0, np.inf, 0.0)), "origin_mm must be three finite coordinates"),
        (dict(dose_gy=grid.dose_gy[0]), "dose_gy must be a 3-D array indexed \\(z, y, x\\), not an array of shape"),
        (dict(dose_gy=grid.dose_gy.tolist()), "dose_gy must be a 3-D array indexed \\(z, y, x\\), not list"),
        (dict(dose_gy=grid.dose_gy[:0]), "the dose grid holds no voxels"),
    ]:
        with pytest.raises(DoseGridError, match=f"^made.dcm: {message}"):
            compute_dvhs(made(**changes), [sphere], backend="numba")


def test_a_request_bins_doses_by_the_range_of_its_own_grid():
    """A request keeps its grid's dose range (taken where it was planned, so that a process sampling it need
    not scan the grid again); a copy of the request onto another grid (a plan sum's EQD2, say) bins by the
    other grid's range, or doses above the first grid's maximum would fall off the histogram."""
    from dataclasses import replace

    from isodose.dispatch import select_backend
    from isodose.dvh import dvh_request, dvhs_from_samples
    from isodose.sampling import sample_many

    _, grid = linear_grid(gradient=(1.0, 0.0, 0.0), dose_gy=50.0)
    hotter = DoseGrid(3.0 * grid.dose_gy, grid.origin_mm, grid.spacing_mm, grid.frame_of_reference_uid)
    sphere = contour_shape(Sphere((0.0, 0.0, 0.0), 15.0), "S", 1, 2.5)
    [structure], request = dvh_request(grid, [sphere])
    request = request.with_dose_range()
    assert request.dose_range() == (float(grid.dose_gy.min()), float(grid.dose_gy.max()))
    backend = select_backend("numba")
    [copied] = sample_many([replace(request, grid=hotter)], backend, SamplingOptions())
    [expected] = compute_dvhs(hotter, [sphere], backend=backend)
    [got] = dvhs_from_samples([structure], copied)
    assert got.dmax_gy == pytest.approx(expected.dmax_gy) and got.dmax_gy > float(grid.dose_gy.max())
    assert got.metric("D2") == pytest.approx(expected.metric("D2"), abs=1e-9)
    np.testing.assert_allclose(got.cumulative_cc, expected.cumulative_cc, rtol=1e-12)


def test_a_structure_sampled_through_a_transform_is_the_structure_moved():
    """Sampling a structure through a rigid transform (a registered recurrence) gives the DVH of its contours
    moved by that transform: in a linear field, Dmin and Dmax lie at contour vertices on the slabs' faces, so
    they must agree to rounding, and the vertices must be moved too."""
    from isodose.geometry import rigid_matrix
    from isodose.model import Contour

    _, grid = linear_grid(gradient=FIELDS["oblique"])
    sphere = contour_shape(Sphere((1.0, -2.0, 0.5), 11.0), "S", 1, 2.5)
    matrix = rigid_matrix(20.0, (0.0, 0.0, 1.0), (4.2, -3.1, 2.5))
    moved = Structure(
        "S",
        1,
        tuple(Contour(c.points_mm @ matrix[:2, :2].T + matrix[:2, 3], c.z_mm + matrix[2, 3]) for c in sphere.contours),
    )
    [through] = compute_dvhs(grid, [sphere], transform=matrix, backend="numba")
    [expected] = compute_dvhs(grid, [moved], backend="numba")
    [unmoved] = compute_dvhs(grid, [sphere], backend="numba")
    assert through.dmin_gy == pytest.approx(expected.dmin_gy, abs=1e-9)
    assert through.dmax_gy == pytest.approx(expected.dmax_gy, abs=1e-9)
    assert abs(through.dmax_gy - unmoved.dmax_gy) > 1.0  # the transform matters here
    assert through.volume_cc == pytest.approx(expected.volume_cc, rel=1e-3)
    assert through.dmean_gy == pytest.approx(expected.dmean_gy, abs=0.02)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_structure_with_no_volume_inside_the_grid_takes_no_dose_from_its_vertices(backend):
    """A box whose left side lies on the grid's last x plane: its vertices there have a dose, but its volume
    (every sample) lies beyond the grid. Its samples report no dose, not extremes taken from the vertices alone."""
    from isodose.dispatch import select_backend
    from isodose.dvh import dvh_request
    from isodose.model import Contour
    from isodose.sampling import sample_many

    _, grid = linear_grid(gradient=(1.0, 0.0, 0.0))
    x_edge = grid.extent_mm[0][1]
    square = np.array([[x_edge, -5.0], [x_edge + 5.0, -5.0], [x_edge + 5.0, 5.0], [x_edge, 5.0]])
    box = Structure("box", 1, tuple(Contour(square, z) for z in (-2.5, 0.0, 2.5)))
    [_], request = dvh_request(grid, [box])
    [samples] = sample_many([request], select_backend(backend), SamplingOptions())
    assert samples.inside_mm3[0] == 0.0 and samples.outside_mm3[0] > 0
    assert math.isnan(samples.dmin_gy[0]) and math.isnan(samples.dmax_gy[0])
    [dvh] = compute_dvhs(grid, [box], backend=backend)
    assert not dvh.has_dose and math.isnan(dvh.dmax_gy)


def test_cells_follow_what_the_metrics_need(write_phantom):
    """Small structures get a fixed number of cells per dose-voxel side (and at least ``min_cells``) rather than
    ``target_cells``; their scanlines lie as close as the finer cells' would, so volumes stay as exact. The cells
    chosen are reported with each DVH, and the metrics meet the closed form either way."""
    adaptive = SamplingOptions()
    finest = SamplingOptions(
        target_cells=100_000, voxel_supersampling=adaptive.max_supersampling, min_cells=100_000, scanline_cells=None
    )
    for shape_name in ("small sphere (0.1 cc)", "sphere"):
        rd, rs, field = write_phantom(SHAPES[shape_name], gradient=FIELDS["oblique"], spacing_mm=2.5)
        dose, structures = read_dose(rd), read_structures(rs)
        truth = slab_truth(SHAPES[shape_name], field, 2.5)
        [chosen] = compute_dvhs(dose, structures, backend="numba", options=adaptive)
        [fine] = compute_dvhs(dose, structures, backend="numba", options=finest)
        for dvh in (chosen, fine):
            _compare(dvh, truth, volume_rtol=2e-4, dose_atol=0.02)
        [plan_chosen, plan_fine] = (plan_sampling(list(structures.structures), dose, o) for o in (adaptive, finest))
        assert (chosen.cells, chosen.supersampling) == (plan_chosen.structure_cells()[0], plan_chosen.supersampling[0])
        assert (fine.cells, fine.supersampling) == (plan_fine.structure_cells()[0], plan_fine.supersampling[0])
        assert chosen.supersampling < fine.supersampling
        if shape_name == "sphere":  # 14 cc: the cells per voxel side the dose needs
            assert chosen.supersampling == adaptive.voxel_supersampling and chosen.cells < fine.cells / 1.5
        else:  # 0.1 cc: finer, for its shape: 2,000 cells or so instead of 100,000
            assert adaptive.voxel_supersampling < chosen.supersampling and chosen.cells < fine.cells / 10
            assert chosen.cells >= adaptive.min_cells  # its area over the cells' is about min_cells; windows hold more
        lines_mm = plan_chosen.plane_hy_mm / plan_chosen.plane_scanlines
        assert np.all(lines_mm <= plan_fine.plane_hy_mm / plan_fine.plane_scanlines + 1e-12)
    # Large structures get at most target_cells cells, a few per voxel side, with the scanlines of scanline_cells.
    grid, head_neck = head_neck_case()
    ctv = [head_neck.get("CTV60")]
    plan_chosen, plan_fine = (plan_sampling(ctv, grid, o) for o in (adaptive, finest))
    assert plan_chosen.supersampling[0] < plan_fine.supersampling[0] < adaptive.voxel_supersampling
    assert plan_chosen.structure_cells()[0] < plan_fine.structure_cells()[0]
    lines_mm = plan_chosen.plane_hy_mm / plan_chosen.plane_scanlines
    assert np.all(lines_mm <= plan_fine.plane_hy_mm / plan_fine.plane_scanlines + 1e-12)
    # Without scanline_cells, lines follow the cells (two a row at the cap), as with a cap of their own.
    own = plan_sampling(ctv, grid, SamplingOptions(scanline_cells=None))
    assert set(own.plane_scanlines) == {adaptive.scanlines}
    [fixed] = compute_dvhs(dose, structures, backend="numba", options=SamplingOptions(supersampling=3))
    assert fixed.supersampling == 3
    assert set(plan_sampling(list(structures.structures), dose, SamplingOptions(supersampling=3)).plane_scanlines) == {
        2
    }


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_hot_and_a_cold_voxel_inside_a_structure_are_its_dmax_and_dmin(backend):
    """A hot spot at one voxel deep inside a structure: the samples (at cells' centres, between the grid's points)
    and the contours' vertices (on its surface) all miss it, and only the grid's own points inside find it. Dmax is
    that voxel's dose, and Dmin the cold one's, exactly; taking the samples alone (``extremes="samples"``, as
    systems that sample voxels' centres do not) gives less."""
    origin, spacing = (-40.0, -40.0, -40.0), (2.5, 2.5, 2.5)
    dose = np.full((33, 33, 33), 5.0, dtype=np.float32)
    dose[16, 16, 16] = 10.0  # the grid point (0, 0, 0)
    dose[16, 17, 18] = 1.0  # (5, 2.5, 0)
    grid = DoseGrid(dose, origin, spacing, "1.2.3.4")
    sphere = contour_shape(Sphere((0.6, 0.3, 0.4), 15.0), "S", 1, 2.5)
    [dvh] = compute_dvhs(grid, [sphere], backend=backend)
    assert (dvh.dmin_gy, dvh.dmax_gy) == (1.0, 10.0)
    [sampled] = compute_dvhs(grid, [sphere], backend=backend, options=SamplingOptions(extremes="samples"))
    assert 5.0 < sampled.dmax_gy < 9.0 and 1.0 < sampled.dmin_gy < 5.0
    assert dvh.metric("D50") == pytest.approx(sampled.metric("D50"), abs=1e-9)
