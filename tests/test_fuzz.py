"""Property-based tests over the DICOM readers and the polygon kernels: whatever the input, the outcome is a
result or an IsodoseError, never another exception or a crash; and Numba's coverage of any rings is the
reference's. The numbers of examples are fixed (``EXAMPLES``) so that a run's count can be reported."""

from __future__ import annotations

import logging
import math

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from isodose import polygons
from isodose.cohort.cases import discover_cases
from isodose.dicom.read import read_dose, read_plan, read_registration, read_structures
from isodose.dicom.write import write_dose, write_plan, write_registration, write_structures
from isodose.dvh import compute_dvhs
from isodose.errors import IsodoseError
from isodose.kernels import numba_cpu, numpy_ref
from isodose.model import Contour, DoseGrid, Structure
from isodose.phantoms import Sphere, contour_shape
from isodose.voxelize import SamplingOptions, plan_sampling

from . import references

# pydicom warns about every damaged value it reads, and hypothesis about the size of the files it is given.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
]
EXAMPLES = {"bytes": 250, "tags": 250, "rings": 150, "crossings": 300}


def fuzz(kind: str) -> settings:
    """Fixed seeds and example counts (a run is reproducible and its count reportable), no deadline."""
    return settings(
        max_examples=EXAMPLES[kind],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


READERS = {"RTDOSE": read_dose, "RTSTRUCT": read_structures, "RTPLAN": read_plan, "REG": read_registration}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One valid file of each kind that isodose reads."""
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(3)
    grid = DoseGrid(rng.uniform(0, 60, (5, 6, 7)).astype(np.float32), (-10.0, -12.0, -6.0), (3.0, 3.0, 3.0), "1.2.3")
    sphere = contour_shape(Sphere((0.0, 0.0, 0.0), 6.0), "Sphere", 1, 2.0)
    matrix = np.eye(4)
    matrix[:3, 3] = [1.0, -2.0, 0.5]
    return {
        "RTDOSE": write_dose(grid, root / "rd.dcm", bits=16).read_bytes(),
        "RTSTRUCT": write_structures([sphere], root / "rs.dcm", frame_of_reference_uid="1.2.3").read_bytes(),
        "RTPLAN": write_plan(root / "rp.dcm", prescription_gy=70.0, number_of_fractions=35).read_bytes(),
        "REG": write_registration(
            root / "reg.dcm", registered_frame_uid="1.2.3", source_frame_uid="4.5.6", matrix=matrix
        ).read_bytes(),
    }


def _outcome(kind: str, path) -> str:
    """Read ``path`` as ``kind``: "result" or "error" (an IsodoseError); anything else fails the test."""
    logging.disable(logging.WARNING)
    try:
        result = READERS[kind](path)
        if kind == "RTDOSE":
            assert np.all(np.isfinite(result.dose_gy)) and min(result.spacing_mm) > 0
        return "result"
    except IsodoseError as exc:
        assert "\n" not in str(exc) and path.name in str(exc)
        return "error"
    finally:
        logging.disable(logging.NOTSET)


@fuzz("bytes")
@given(data=st.data(), kind=st.sampled_from(sorted(READERS)))
def test_damaged_bytes_give_a_result_or_an_isodose_error(files, tmp_path, data, kind):
    raw = bytearray(files[kind])
    header = min(len(raw), 2048) if kind == "RTDOSE" else len(raw)  # a dose file is mostly pixels
    for _ in range(data.draw(st.integers(1, 6), label="flips")):
        raw[data.draw(st.integers(0, header - 1), label="at")] = data.draw(st.integers(0, 255), label="byte")
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw)), label="length")]
    folder = tmp_path / "export"
    folder.mkdir(exist_ok=True)
    path = folder / f"{kind.lower()}.dcm"
    path.write_bytes(bytes(raw))
    _outcome(kind, path)
    logging.disable(logging.WARNING)
    try:  # sorting a folder of exports into cases reads the same headers
        discover_cases(folder, "Sphere", prescription_gy=70.0)
    except IsodoseError:
        pass
    finally:
        logging.disable(logging.NOTSET)


_VALUES = st.one_of(
    st.none(),
    st.just(""),
    st.text(max_size=12),
    st.integers(-(2**31), 2**31 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=8),
)


def _elements(ds: Dataset, prefix=()):
    """Every data element keyword path of a dataset, into its sequences."""
    for element in ds:
        if element.keyword in ("", "PixelData"):
            continue
        yield (*prefix, element.keyword)
        if element.VR == "SQ":
            for i, item in enumerate(element.value[:2]):
                yield from _elements(item, (*prefix, element.keyword, i))


@fuzz("tags")
@given(data=st.data(), kind=st.sampled_from(sorted(READERS)))
@pytest.mark.slow
def test_odd_tag_values_give_a_result_or_an_isodose_error(files, tmp_path, data, kind):
    path = tmp_path / f"{kind.lower()}.dcm"
    path.write_bytes(files[kind])
    ds = pydicom.dcmread(path)
    paths = list(_elements(ds))
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        where = data.draw(st.sampled_from(paths), label="element")
        parent = ds
        for step in where[:-1]:
            parent = parent[step] if isinstance(step, int) else getattr(parent, step)
        value = data.draw(_VALUES, label="value")
        try:
            if value is None:
                delattr(parent, where[-1])
            else:
                setattr(parent, where[-1], value)
            ds.save_as(path)
        except Exception:  # pydicom refuses the value (or the element is already gone): try another edit
            ds = pydicom.dcmread(path)
            paths = list(_elements(ds))
    _outcome(kind, path)


_COORDINATE = st.one_of(st.floats(-40, 40), st.sampled_from([0.0, 1.5, -1.5, 20.0, 1e-9]))
_RING = st.lists(st.tuples(_COORDINATE, _COORDINATE), min_size=3, max_size=24)


@fuzz("rings")
@given(
    planes=st.lists(st.lists(_RING, min_size=1, max_size=3), min_size=1, max_size=4),
    start_z=st.sampled_from([-6.0, -1.0, 0.5]),
    spacing=st.sampled_from([1.0, 2.5]),
)
@pytest.mark.slow
def test_any_rings_give_finite_dvhs_and_numba_covers_them_as_the_reference(planes, start_z, spacing):
    grid = DoseGrid(
        np.fromfunction(lambda z, y, x: 10 + x + 0.5 * y - z, (6, 30, 30), dtype=np.float32),
        (-30.0, -30.0, -8.0),
        (2.0, 2.0, 3.0),
        "1.2.3",
    )
    contours = tuple(
        Contour(np.array(ring, dtype=np.float64), start_z + k * spacing)
        for k, rings in enumerate(planes)
        for ring in rings
    )
    structure = Structure("fuzzed", 1, contours, "1.2.3")
    logging.disable(logging.WARNING)
    try:
        [dvh] = compute_dvhs(grid, [structure], backend="numba")
    except IsodoseError:
        return
    finally:
        logging.disable(logging.NOTSET)
    assert math.isfinite(dvh.volume_cc) and dvh.volume_cc >= 0
    if dvh.has_dose:
        assert grid.dose_gy.min() - 1e-3 <= dvh.dmin_gy <= dvh.dmean_gy + 1e-9 <= dvh.dmax_gy + 2e-9
        assert dvh.dmax_gy <= grid.dose_gy.max() + 1e-3
    plan = plan_sampling([structure], grid, SamplingOptions())
    geometry = dict(
        vertices=plan.vertices,
        ring_start=plan.ring_start,
        plane_ring_start=plan.plane_ring_start,
        plane_cell_start=plan.plane_cell_start,
        plane_x0=plan.plane_x0_mm,
        plane_y0=plan.plane_y0_mm,
        plane_nx=plan.plane_nx,
        plane_ny=plan.plane_ny,
        plane_hx=plan.plane_hx_mm,
        plane_hy=plan.plane_hy_mm,
        scanlines=plan.plane_scanlines,
    )
    expected = numpy_ref.polygon_coverage(**geometry)
    got = numba_cpu.polygon_coverage(**geometry)
    np.testing.assert_allclose(got[:, 0], expected[:, 0], rtol=1e-9, atol=1e-12)
    # The centroid and spread of a sliver of 1e-19 mm2 are rounding noise, and weigh nothing.
    weighty = expected[:, 0] > 1e-9
    np.testing.assert_allclose(got[weighty], expected[weighty], rtol=1e-9, atol=1e-9)
    assert np.all(got[:, 0] >= 0) and np.all(got[:, 0] <= plan.plane_hx_mm[0] * plan.plane_hy_mm[0] * (1 + 1e-9))


@fuzz("crossings")
@given(ring=st.lists(st.tuples(st.integers(-4, 4), st.integers(-4, 4)), min_size=3, max_size=12))
def test_numba_finds_the_self_crossings_the_reference_finds(ring):
    """Integer vertices make touching, collinear and repeated vertices common: only proper crossings count."""
    points = np.array(ring, dtype=np.float64)
    assert polygons.ring_crosses_itself(points) == references.ring_crosses_itself(points)
