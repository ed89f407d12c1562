"""The host's polygon tests (isodose.polygons): their NumPy halves (small inputs, no Numba loaded) give the compiled
halves' answers, on random rings with crossings, repeated vertices, collinear and touching edges."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isodose import compiled_polygons, polygons
from isodose.geometry import PackedPlanes, structure_planes
from isodose.phantoms import Shell, Sphere, contour_shape

coordinates = st.integers(-4, 4).map(float)  # a coarse lattice: many collinear, touching and repeated vertices
rings = st.lists(st.tuples(coordinates, coordinates), min_size=3, max_size=14).map(np.array)


@settings(max_examples=400, deadline=None)
@given(rings)
def test_the_numpy_ring_test_answers_as_the_compiled_one(ring):
    assert polygons._ring_crosses_itself_numpy(ring) == compiled_polygons.ring_crosses_itself(ring)


def test_a_long_ring_goes_to_the_compiled_test_and_a_short_one_does_not(monkeypatch):
    star = np.array([[np.cos(t), np.sin(t)] for t in np.linspace(0, 4 * np.pi, 5, endpoint=False)])  # a pentagram
    circle = np.array([[np.cos(t), np.sin(t)] for t in np.linspace(0, 2 * np.pi, 2 * polygons.SMALL_RING)])
    assert polygons.ring_crosses_itself(star) and not polygons.ring_crosses_itself(circle[:-1])
    monkeypatch.setattr(polygons, "take_compiled", lambda: False)
    monkeypatch.setattr(polygons, "_compiled", lambda: pytest.fail("a short ring needs no compiled test"))
    assert polygons.ring_crosses_itself(star)


def test_the_numpy_point_test_answers_as_the_compiled_one():
    rng = np.random.default_rng(2)
    shapes = [
        contour_shape(Sphere((1, 2, 3), 12.0), "s", 1, 2.5),
        contour_shape(Shell((0, 0, 0), 14.0, 6.0), "h", 2, 3),
    ]
    for shape in shapes:
        packed = PackedPlanes.of(structure_planes(shape))
        points = rng.uniform(-16, 16, (polygons.SMALL_POINTS, 3))
        points[0] = np.nan
        points[1, :2] = packed.vertices_mm[0]  # on a vertex
        args = (packed.slab_lo_mm, packed.slab_hi_mm, packed.plane_ring_start, packed.ring_vertex_start)
        small, compiled = np.zeros(len(points), bool), np.zeros(len(points), bool)
        polygons._points_in_packed_planes_numpy(*args, packed.vertices_mm, points, small)
        compiled_polygons.points_in_packed_planes(*args, packed.vertices_mm, points, compiled)
        assert np.array_equal(small, compiled) and 0 < small.sum() < len(points)


@pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "compiled"])
def test_structures_joined_hold_a_point_as_each_does_alone(monkeypatch, compiled):
    """A case's targets joined (``PlaneSets``: one call tests a centroid against them all, one buffer travels) answer
    for each point as each target's own planes do, with NumPy and compiled; each comes back whole on its own, and
    through a pickle."""
    import pickle

    from isodose.geometry import PlaneSets

    monkeypatch.setattr(polygons, "take_compiled", lambda: compiled)
    rng = np.random.default_rng(5)
    shapes = [
        contour_shape(Sphere((1, 2, 3), 12.0), "s", 1, 2.5),
        contour_shape(Shell((0, 0, 0), 14.0, 6.0), "h", 2, 3),
        contour_shape(Sphere((-6, 4, -9), 5.0), "t", 3, 1.0),
    ]
    alone = [PackedPlanes.of(structure_planes(shape)) for shape in shapes]
    empty = PackedPlanes.of([])
    for planes in (alone, [alone[1], empty, alone[0], alone[2]], [empty], []):
        joined = pickle.loads(pickle.dumps(PlaneSets.join(planes)))
        assert len(joined) == len(planes)
        for k, one in enumerate(planes):
            part = joined[k]
            for name in ("slab_lo_mm", "slab_hi_mm", "plane_ring_start", "ring_vertex_start", "vertices_mm"):
                assert np.array_equal(getattr(part, name), getattr(one, name)), name
        points = rng.uniform(-18, 18, (300, 3))
        points[0] = np.nan
        points[1, :2], points[1, 2] = alone[0].vertices_mm[0], alone[0].slab_lo_mm[0]  # on a vertex, a slab's face
        for point in points:
            expected = [bool(one.contain(point)[0]) if len(one.slab_lo_mm) else False for one in planes]
            assert joined.holding(point).tolist() == expected
    assert any(PlaneSets.join(alone).holding(p).any() for p in points)
    joined = PlaneSets.join(alone)
    assert np.array_equal(joined[-1].vertices_mm, alone[-1].vertices_mm)
    with pytest.raises(IndexError):
        joined[len(alone)]


def test_a_small_dvh_with_the_numpy_backend_never_loads_numba(write_phantom):
    rd, rs, _ = write_phantom(Sphere((0.0, 0.0, 0.0), 8.0))
    code = f"""
import sys
from isodose.dicom.read import read_dose, read_structures
from isodose.dvh import compute_dvhs
[dvh] = compute_dvhs(read_dose({str(rd)!r}), read_structures({str(rs)!r}), backend="numpy")
assert dvh.volume_cc > 2, dvh
print("numba" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr


def test_a_process_that_prefers_compiled_tests_takes_them_for_small_inputs_too():
    """``prefer_compiled`` (the process driving a GPU in a cohort run, which loads no compiled kernels): a small
    input takes the compiled tests (and so loads Numba), with the same answer; without it, NumPy's."""
    code = """
import sys
import numpy as np
from isodose import compiled, polygons
if sys.argv[1] == "prefer":
    compiled.prefer_compiled()
square = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])
inside = polygons.points_in_packed_planes(
    np.array([-1.0]), np.array([1.0]), np.array([0, 1]), np.array([0, 4]), square, np.array([[1.0, 1.0, 0.0]])
)
print(bool(inside[0]), "numba" in sys.modules)
"""
    runs = {
        how: subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True)
        for how in ("prefer", "not")
    }
    assert runs["prefer"].stdout.split() == ["True", "True"], runs["prefer"].stderr
    assert runs["not"].stdout.split() == ["True", "False"], runs["not"].stderr


def test_the_gpu_arrangement_prefers_the_compiled_host_tests(monkeypatch):
    from isodose import compiled
    from isodose.cohort.settings import RunSettings
    from isodose.cohort.work import ReceivedBatches

    monkeypatch.setattr(compiled, "_prefer_compiled", False)
    assert ReceivedBatches(RunSettings(), "numpy").stage([]).received == []
    assert compiled._prefer_compiled


def _grid_point_brute_force(packed: PackedPlanes, dose: np.ndarray, origin, spacing) -> tuple[float, float]:
    """The extremes of ``dose`` over its grid points inside, each point tested alone (the point test)."""
    nz, ny, nx = dose.shape
    axes = [origin[a] + np.arange(n) * spacing[a] for a, n in enumerate((nx, ny, nz))]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    inside = packed.contain(np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1))
    values = dose.ravel()[inside]
    return (float(values.min()), float(values.max())) if len(values) else (np.inf, -np.inf)


@pytest.mark.parametrize(
    "shape, origin",
    [
        (contour_shape(Sphere((1, 2, 3), 12.0), "s", 1, 2.5), (-20.0, -20.0, -20.0)),
        (contour_shape(Sphere((1, 2, 3), 12.0), "s", 1, 2.5), (-19.3, -20.6, -21.1)),
        (contour_shape(Shell((0, 0, 0), 14.0, 6.0), "h", 2, 3), (-20.0, -20.0, -20.0)),  # a hole in its rings
        (contour_shape(Sphere((0, 0, 0), 1.0), "tiny", 3, 2.5), (-20.0, -20.0, -20.0)),  # between grid points
    ],
    ids=["sphere", "sphere-offset", "shell", "tiny"],
)
def test_grid_extremes_inside_a_structure_are_those_of_the_points_it_contains(shape, origin):
    """The scanline search of a structure's grid points (compiled, and NumPy's) finds the extremes that testing each
    grid point alone finds, on a random dose over contoured solids: a sphere on and off the grid's lattice, a shell
    (a hole in its rings, some vertices on a grid row), a structure between grid points."""
    rng = np.random.default_rng(7)
    dose = rng.uniform(0, 70, (17, 17, 17)).astype(np.float32)
    spacing = (2.5, 2.5, 2.5)
    packed = PackedPlanes.of(structure_planes(shape))
    expected = _grid_point_brute_force(packed, dose, origin, spacing)
    args = (
        0,
        len(packed.slab_lo_mm),
        packed.slab_lo_mm,
        packed.slab_hi_mm,
        packed.plane_ring_start,
        packed.ring_vertex_start,
        packed.vertices_mm,
        dose,
        np.array(origin),
        np.array(spacing),
    )
    small, compiled = np.empty(2), np.empty(2)
    polygons._grid_extremes_numpy(*args, small)
    compiled_polygons.grid_extremes_in_planes(*args, compiled)
    assert tuple(small) == tuple(compiled) == expected
    if shape.name == "tiny":
        assert expected == (np.inf, -np.inf)
    else:
        assert expected[0] < expected[1]


def test_grid_extremes_see_every_grid_point_the_point_test_sees():
    """Point by point: a dose of 1 at one grid point and 0 elsewhere, for every grid point, on rings whose vertices
    lie on grid points and half-points (edges through grid points, along grid lines and diagonals), a hole, a ring
    crossing itself, and slabs whose faces lie on grid planes: the search finds that point (Dmax 1) exactly where
    testing it alone says it is inside, compiled and with NumPy."""
    rng = np.random.default_rng(11)
    shape, origin, spacing = (4, 7, 8), np.array([0.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0])
    for _ in range(12):
        rings = [rng.integers(0, 14, (int(rng.integers(3, 8)), 2)) / 2.0 for _ in range(int(rng.integers(1, 3)))]
        vertices = np.vstack(rings)
        packed = PackedPlanes(
            slab_lo_mm=np.array([0.0, 2.0]),
            slab_hi_mm=np.array([2.0, 3.5]),
            plane_ring_start=np.array([0, len(rings), 2 * len(rings)]),
            ring_vertex_start=np.cumsum([0, *[len(r) for r in rings], *[len(r) for r in rings]]),
            vertices_mm=np.vstack([vertices, vertices]),
        )
        args = (packed.slab_lo_mm, packed.slab_hi_mm, packed.plane_ring_start, packed.ring_vertex_start)
        for flat in range(int(np.prod(shape))):
            k, j, i = np.unravel_index(flat, shape)
            dose = np.zeros(shape, np.float32)
            dose[k, j, i] = 1.0
            inside = packed.contain(np.array([[i * 1.0, j * 1.0, k * 1.0]]))[0]
            small, compiled = np.empty(2), np.empty(2)
            call = (0, 2, *args, packed.vertices_mm, dose, origin, spacing)
            polygons._grid_extremes_numpy(*call, small)
            compiled_polygons.grid_extremes_in_planes(*call, compiled)
            assert small[1] == compiled[1] and (small[1] == 1.0) == inside, (flat, inside, small, compiled)
