from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from isodose import polygons
from isodose.errors import IsodoseError, StructureError
from isodose.geometry import (
    ContourPlane,
    PackedPlanes,
    check_rigid,
    common_plane_spacing_mm,
    group_planes,
    plane_positions_mm,
    polygon_area_mm2,
    rigid_matrix,
    slab_bounds,
    structure_contains,
    structure_planes,
    transform_points,
)
from isodose.model import Contour, Structure
from isodose.voxelize import SamplingOptions, plan_sampling

from .conftest import linear_grid

SQUARE = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 3.0], [0.0, 3.0]])


def test_polygon_area_is_signed_by_orientation():
    assert polygon_area_mm2(SQUARE) == pytest.approx(6.0)
    assert polygon_area_mm2(SQUARE[::-1]) == pytest.approx(-6.0)


def test_group_planes_clusters_by_value_not_by_string():
    contours = [Contour(SQUARE, z) for z in (2.5, 0.0, 2.5000001, 5.0, -0.000004)]
    planes = group_planes(contours)
    assert [len(p.rings) for p in planes] == [2, 2, 1]
    np.testing.assert_allclose([p.z_mm for p in planes], [0.0, 2.5, 5.0], atol=1e-5)
    np.testing.assert_array_equal(plane_positions_mm(contours), [p.z_mm for p in planes])
    assert plane_positions_mm([]).shape == (0,)


def test_slabs_reach_halfway_with_half_end_caps():
    lo, hi = slab_bounds(np.array([0.0, 2.0, 4.0, 7.0]))
    np.testing.assert_allclose(lo, [-1.0, 1.0, 3.0, 5.5])
    np.testing.assert_allclose(hi, [1.0, 3.0, 5.5, 8.0])
    lo, hi = slab_bounds(np.array([0.0, 2.0, 4.0]), end_cap="none")
    np.testing.assert_allclose(lo, [0.0, 1.0, 3.0])
    np.testing.assert_allclose(hi, [1.0, 3.0, 4.0])


def test_gaps_split_a_structure_into_capped_pieces():
    lo, hi = slab_bounds(np.array([0.0, 2.0, 4.0, 20.0, 22.0]))
    np.testing.assert_allclose(lo, [-1.0, 1.0, 3.0, 19.0, 21.0])
    np.testing.assert_allclose(hi, [1.0, 3.0, 5.0, 21.0, 23.0])


def test_single_plane_structures_take_the_fallback_spacing():
    lo, hi = slab_bounds(np.array([3.0]), fallback_spacing_mm=2.5)
    assert (lo[0], hi[0]) == (1.75, 4.25)
    with pytest.raises(StructureError):
        slab_bounds(np.array([3.0]))
    with pytest.raises(StructureError):
        slab_bounds(np.array([0.0, 1.0]), end_cap="full")


def _inside_rings(rings, x, y) -> np.ndarray:
    """Reference: the even-odd rule with half-open edges (as the coverage kernel), a point and an edge at a time."""
    inside = []
    for px, py in zip(x, y):
        crossings = 0
        for ring in rings:
            for (x1, y1), (x2, y2) in zip(ring, np.roll(ring, -1, axis=0)):
                if y1 != y2 and (y1 <= py < y2 or y2 <= py < y1) and px < x1 + (py - y1) * ((x2 - x1) / (y2 - y1)):
                    crossings += 1
        inside.append(crossings % 2 == 1)
    return np.array(inside, dtype=bool)


def test_packed_planes_test_each_point_in_the_one_slab_that_holds_it():
    """Against the plane-by-plane test: a structure in two pieces (a gap), rings with holes, points on slab
    edges, outside every slab and with a NaN z; and its pickle is a few buffers, however many rings."""
    import pickle

    outer = np.array([[-10.0, -10.0], [10.0, -10.0], [10.0, 10.0], [-10.0, 10.0]])
    hole = 0.4 * outer
    planes = [ContourPlane(z, (outer, hole) if z < 10 else (0.5 * outer,)) for z in (0.0, 2.0, 4.0, 6.0, 20.0, 22.0)]
    rng = np.random.default_rng(5)
    lo, hi = slab_bounds(np.array([p.z_mm for p in planes]))
    z = np.concatenate([rng.uniform(-3, 25, 400), lo, hi, [np.nan]])
    points = np.column_stack([rng.uniform(-12, 12, len(z)), rng.uniform(-12, 12, len(z)), z])
    # Points on the rings' vertices' rows and columns (the half-open rule decides them) in every slab.
    on_edges = np.array(
        [
            (x, y, zz)
            for x in (-10.0, -4.0, 0.0, 4.0, 5.0, 10.0)
            for y in (-10.0, -4.0, 4.0, 5.0, 10.0)
            for zz in (1.0, 21.0)
        ]
    )
    points = np.concatenate([points, on_edges])
    z = points[:, 2]
    expected = np.zeros(len(points), dtype=bool)
    for plane, z_lo, z_hi in zip(planes, lo, hi):
        in_slab = (points[:, 2] >= z_lo) & (points[:, 2] < z_hi)
        expected[in_slab] = _inside_rings(plane.rings, points[in_slab, 0], points[in_slab, 1])
    packed = PackedPlanes.of(planes)
    assert 0 < expected.sum() < len(points)
    np.testing.assert_array_equal(packed.contain(points), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(packed)).contain(points), expected)
    many = PackedPlanes.of([ContourPlane(float(k), (outer,) * 3) for k in range(200)])
    buffers = []
    pickle.dumps(many, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 1  # its arrays in one buffer (isodose.packing), not one per ring
    assert not PackedPlanes.of([]).contain(points).any()
    structure = Structure("S", 1, tuple(Contour(ring, p.z_mm) for p in planes for ring in p.rings))
    np.testing.assert_array_equal(structure_contains(structure, points), expected)


def test_common_plane_spacing_is_the_structure_sets():
    a = Structure("a", 1, tuple(Contour(SQUARE, z) for z in (0.0, 3.0, 6.0)))
    b = Structure("b", 2, (Contour(SQUARE, 1.0),))
    assert common_plane_spacing_mm([a, b]) == 3.0
    assert common_plane_spacing_mm([b]) is None


def test_lattice_is_aligned_with_the_dose_grid_and_adapts_to_size():
    _, grid = linear_grid(origin=(-40.3, -40.1, -40.0), spacing=(2.5, 2.0, 2.5))
    small = Structure("small", 1, tuple(Contour(SQUARE * 0.5, z) for z in (0.0, 1.0)))
    large = Structure("large", 2, tuple(Contour(SQUARE * 15, z) for z in np.arange(0, 40, 2.5)))
    plan = plan_sampling([small, large], grid)
    assert plan.supersampling[0] > plan.supersampling[1] >= SamplingOptions().min_supersampling
    for p in range(len(plan.plane_nx)):
        x_axis = (plan.plane_x0_mm[p], plan.plane_hx_mm[p], 2.5, -40.3)
        y_axis = (plan.plane_y0_mm[p], plan.plane_hy_mm[p], 2.0, -40.1)
        for origin, step, spacing, grid_origin in (x_axis, y_axis):
            assert ((origin - grid_origin) / step) == pytest.approx(round((origin - grid_origin) / step), abs=1e-6)
            assert (spacing / step) == pytest.approx(round(spacing / step))
    fixed = plan_sampling([small, large], grid, SamplingOptions(supersampling=3))
    assert list(fixed.supersampling) == [3, 3]


def test_batches_cover_every_plane_once():
    _, grid = linear_grid()
    structures = [
        Structure(f"s{i}", i, tuple(Contour(SQUARE * (1 + i), z) for z in np.arange(0, 10, 1.0))) for i in range(1, 5)
    ]
    plan = plan_sampling(structures, grid)
    batches = list(plan.batches(max_cells=plan.n_cells // 7))
    assert batches[0][0] == 0 and batches[-1][1] == len(plan.plane_nx)
    assert all(a[1] == b[0] for a, b in zip(batches, batches[1:]))
    assert len(batches) >= 7


def test_batches_are_the_longest_runs_of_planes_within_the_limit():
    """Against the definition, plane by plane: a batch grows while the next plane still ends within ``max_cells``
    of its first plane's start, and holds at least one plane (planes of no cells and planes larger than the limit
    included)."""
    from isodose.voxelize import SamplingPlan

    def reference(starts, n_planes, max_cells):
        start = 0
        while start < n_planes:
            end = start + 1
            while end < n_planes and starts[end + 1] <= starts[start] + max_cells:
                end += 1
            yield start, end
            start = end

    rng = np.random.default_rng(11)
    for _ in range(400):
        n = int(rng.integers(1, 40))
        counts = rng.integers(0, 50, n) * (rng.uniform(size=n) < 0.85)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        plan = object.__new__(SamplingPlan)  # only what batches() reads
        object.__setattr__(plan, "plane_nx", np.ones(n, dtype=np.int64))
        object.__setattr__(plan, "plane_cell_start", starts)
        limit = int(rng.integers(1, 150))
        assert list(plan.batches(limit)) == list(reference(starts, n, limit))


def test_sampling_options_are_checked():
    with pytest.raises(IsodoseError):
        SamplingOptions(supersampling=0)
    with pytest.raises(IsodoseError):
        SamplingOptions(end_cap="full")
    with pytest.raises(IsodoseError):
        SamplingOptions(min_supersampling=10, max_supersampling=5)


def test_a_stray_point_is_an_error_not_a_memory_blow_up():
    _, grid = linear_grid()
    stray = np.array([[0.0, 0.0], [5.0, 0.0], [5.0, 5.0], [9000.0, 9000.0]])
    with pytest.raises(StructureError, match="ROI 'stray'.*needs .* cells"):
        plan_sampling([Structure("stray", 1, (Contour(stray, 0.0),))], grid, SamplingOptions(supersampling=8))


def _rings_structure(name, rings_per_plane, planes=(0.0, 2.0, 4.0)):
    contours = tuple(Contour(np.asarray(r, dtype=np.float64), z) for z in planes for r in rings_per_plane)
    return Structure(name, 1, contours, "1.2.3", source="rs.dcm")


def test_a_contour_repeated_in_its_plane_counts_once_with_a_warning(caplog):
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]
    shifted_start = [[10, 0], [10, 10], [0, 10], [0, 0]]
    with caplog.at_level(logging.WARNING):
        planes = structure_planes(_rings_structure("twice", [square, shifted_start]))
    assert [len(p.rings) for p in planes] == [1, 1, 1]
    assert "rs.dcm: ROI 'twice': 3 contour(s) repeat another of their plane (first at z = 0 mm)" in caplog.text
    caplog.clear()
    inner = [[2, 2], [8, 2], [8, 8], [2, 8]]  # a hole is not a repeat
    with caplog.at_level(logging.WARNING):
        assert [len(p.rings) for p in structure_planes(_rings_structure("holed", [square, inner]))] == [2, 2, 2]
    assert caplog.text == ""


def test_a_contour_crossing_itself_is_kept_with_a_warning(caplog):
    bow_tie = [[0, 0], [10, 10], [10, 0], [0, 10]]
    with caplog.at_level(logging.WARNING):
        planes = structure_planes(_rings_structure("bow", [bow_tie]))
    assert [len(p.rings) for p in planes] == [1, 1, 1]
    assert (
        "ROI 'bow': 3 contour(s) cross themselves (first at z = 0 mm); their inside is taken by the even-odd"
        in caplog.text
    )
    assert polygons.ring_crosses_itself(bow_tie) and not polygons.ring_crosses_itself([[0, 0], [10, 0], [5, 8]])


def test_rigid_matrix_rotates_about_its_axis_then_translates():
    quarter = rigid_matrix(90.0, translation_mm=(1.0, 2.0, 3.0))
    np.testing.assert_allclose(
        transform_points(quarter, [[1.0, 0.0, 0.0], [0.0, 0.0, 5.0]]), [[1.0, 3.0, 3.0], [1.0, 2.0, 8.0]], atol=1e-12
    )
    axis = np.array([1.0, -2.0, 0.5])
    tilted = rigid_matrix(37.0, axis)
    check_rigid(tilted)
    np.testing.assert_allclose(transform_points(tilted, [3 * axis])[0], 3 * axis, atol=1e-12)  # the axis stays
    np.testing.assert_allclose(rigid_matrix(-37.0, axis) @ tilted, np.eye(4), atol=1e-12)
    with pytest.raises(ValueError, match="non-zero 3-vector"):
        rigid_matrix(10.0, (0.0, 0.0, 0.0))


@pytest.mark.parametrize(
    "points, z, message",
    [
        ([[0.0, 0.0], [np.nan, 5.0], [5.0, 5.0]], 0.0, "holds NaN or infinite coordinates \\(z = 0.0 mm\\)"),
        ([[0.0, 0.0], [0.0, 5.0], [5.0, 5.0]], np.inf, "holds NaN or infinite coordinates \\(z = inf mm\\)"),
        ([0.0, 0.0, 0.0, 5.0, 5.0, 5.0], 0.0, "has points of shape \\(6,\\), not \\(n, 2\\)"),
        ([[0.0, 0.0, 1.0], [0.0, 5.0, 1.0], [5.0, 5.0, 1.0]], 1.0, "has points of shape \\(3, 3\\)"),
    ],
)
def test_contours_made_in_python_are_checked(points, z, message):
    structure = Structure("Made", 4, (Contour(np.array(points), z),), source="made.dcm")
    _, grid = linear_grid()
    with pytest.raises(StructureError, match=f"^made.dcm: ROI 'Made': a contour {message}"):
        plan_sampling([structure], grid, SamplingOptions())


@given(
    st.lists(st.floats(-1e300, 1e300) | st.just(float("nan")), min_size=1, max_size=40),
)
@example(values=[-0.0])  # a zero's sign: np.median's mean gives 0.0
@example(values=[-0.0, -0.0])
@settings(max_examples=300, deadline=None)
def test_median_is_numpys_bit_for_bit(values):
    from isodose.geometry import median

    expected = np.median(np.array(values))
    got = median(np.array(values))
    assert (np.isnan(expected) and np.isnan(got)) or np.float64(got).tobytes() == np.float64(expected).tobytes()


def test_plane_spacing_imports_no_masked_arrays():
    """The median of plane spacings is found without ``numpy.ma``, which ``np.median`` imports on its first call."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
from isodose.geometry import common_plane_spacing_mm, nominal_spacing_mm
from isodose.model import Contour, Structure
square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
rings = tuple(Contour(square, z) for z in (0.0, 2.5, 5.0, 10.0))
print(common_plane_spacing_mm([Structure("A", 1, rings)]), nominal_spacing_mm(np.array([0.0, 3.0, 9.0])))
print("numpy.ma" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["2.5", "4.5", "False"]


def test_plans_and_planes_unpickle_their_small_arrays_as_views_of_one_buffer():
    """A sampling plan and a target's planes (what a reading worker hands over) pickle their small arrays as one
    buffer (isodose.packing): the same values, dtypes and shapes, 2-D and empty ones included, writable, with
    every protocol; arrays larger than the limit, or not numeric, travel as NumPy pickles them."""
    import pickle
    from dataclasses import replace

    from isodose.geometry import PackedPlanes, structure_planes
    from isodose.packing import PACKED_MAX_BYTES
    from isodose.phantoms import head_neck_case
    from isodose.voxelize import SamplingOptions, plan_sampling

    grid, structures = head_neck_case()
    chosen = [structures.get(name) for name in ("GTV", "PTV70", "SpinalCord")]
    plan = plan_sampling(chosen, grid, SamplingOptions(target_cells=20000))
    planes = PackedPlanes.of(structure_planes(structures.get("PTV70")))
    for original in (plan, planes):
        names = [name for name, value in vars(original).items() if isinstance(value, np.ndarray)]
        assert len(names) >= 5
        for protocol in (2, 4, 5):
            data = pickle.dumps(original, protocol=protocol)
            copy = pickle.loads(data)
            assert type(copy) is type(original) and vars(copy).keys() == vars(original).keys()
            bases = {}
            for name in names:
                a, b = getattr(original, name), getattr(copy, name)
                assert b.dtype == a.dtype and b.shape == a.shape, name
                np.testing.assert_array_equal(b, a, err_msg=name)
                assert b.flags.writeable or not b.size, name
                if b.size and a.nbytes <= PACKED_MAX_BYTES:
                    bases.setdefault(id(b.base), []).append(name)
            assert len(bases) == 1, bases  # one buffer for all of them
            others = {k: v for k, v in vars(original).items() if not isinstance(v, np.ndarray)}
            assert {k: getattr(copy, k) for k in others} == others
    # A large array (a label image's weights, say) and an object array are pickled as NumPy does.
    big = replace(planes, vertices_mm=np.zeros((PACKED_MAX_BYTES // 16 + 1, 2)))
    odd = replace(planes, slab_lo_mm=np.array([1.0, "a"], dtype=object))
    for value, name in ((big, "vertices_mm"), (odd, "slab_lo_mm")):
        copy = pickle.loads(pickle.dumps(value, protocol=5))
        assert getattr(copy, name).dtype == getattr(value, name).dtype
        np.testing.assert_array_equal(getattr(copy, name), getattr(value, name))
        np.testing.assert_array_equal(copy.ring_vertex_start, value.ring_vertex_start)
    # An array held twice is packed once and comes back as one array.
    twice = replace(planes, slab_hi_mm=planes.slab_lo_mm)
    buffers = []
    copy = pickle.loads(pickle.dumps(twice, protocol=5, buffer_callback=buffers.append), buffers=buffers)
    assert copy.slab_hi_mm is copy.slab_lo_mm
    assert buffers[0].raw().nbytes < pickle.PickleBuffer(pickle.dumps(planes, protocol=5)).raw().nbytes
    # A non-contiguous array packs as its values.
    strided = replace(planes, slab_hi_mm=np.arange(20.0)[::2])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(strided)).slab_hi_mm, np.arange(20.0)[::2])
