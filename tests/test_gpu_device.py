"""The CuPy backend against the references: it must compute the same function as the NumPy reference (volumes
within 1e-5 relative, doses within 1e-3 Gy) on the analytic phantoms, the Nelms set, the head-and-neck case,
generated cohorts and plan sums. Each test runs twice: on a real GPU (``device``, marked gpu: skipped where no
CUDA device is usable), and on the CUDA kernels compiled for the CPU under the same host code (``emulated``),
so that CI runs every check the device runs."""

from __future__ import annotations

import numpy as np
import pytest

from isodose.dispatch import Backend, select_backend
from isodose.dvh import compute_dvhs
from isodose.phantoms import contour_shape, head_neck_case
from isodose.validation import load_nelms

from .conftest import linear_grid
from .test_dvh_analytic import FIELDS, SHAPES
from .test_gpu_kernels import assert_records_match
from .test_kernels import _awkward_structures

METRICS = ["D100", "D99", "D95", "D50", "D5", "D1", "D0", "D0.03cc", "Dmean"]


def assert_gpu_matches(reference, gpu_dvhs):
    for a, b in zip(reference, gpu_dvhs, strict=True):
        assert b.volume_cc == pytest.approx(a.volume_cc, rel=1e-5)
        assert b.volume_outside_dose_cc == pytest.approx(a.volume_outside_dose_cc, rel=1e-5, abs=1e-9)
        assert a.has_dose == b.has_dose
        if a.has_dose:
            assert b.metrics(METRICS) == pytest.approx(a.metrics(METRICS), abs=1e-3)


@pytest.fixture(params=["emulated", pytest.param("device", marks=pytest.mark.gpu)])
def gpu_backend(request) -> Backend:
    if request.param == "device":
        return select_backend("cupy")
    kernels = request.getfixturevalue("emulated_gpu")
    return Backend("cupy (emulated)", kernels.device, kernels)


@pytest.mark.gpu
def test_auto_picks_the_gpu():
    backend = select_backend("auto")
    assert backend.name == "cupy" and backend.device


@pytest.mark.slow
def test_phantoms(rng, gpu_backend):
    for gradient in FIELDS.values():
        _, grid = linear_grid(gradient=gradient)
        structures = [contour_shape(s, n, i, 2.5) for i, (n, s) in enumerate(SHAPES.items(), start=1)]
        structures += _awkward_structures(rng)
        assert_gpu_matches(
            compute_dvhs(grid, structures, backend="numpy"), compute_dvhs(grid, structures, backend=gpu_backend)
        )


@pytest.mark.slow
def test_nelms_cases(nelms_path, nelms_reference, gpu_backend):
    for case in load_nelms(nelms_path)[::7]:
        grid, rs, rois, expected = nelms_reference(case)
        assert_gpu_matches(expected, compute_dvhs(grid, rs, rois, backend=gpu_backend))


@pytest.mark.slow
def test_head_and_neck_case_and_repeatability(gpu_backend):
    grid, structures = head_neck_case()
    first = compute_dvhs(grid, structures, backend=gpu_backend)
    assert_gpu_matches(compute_dvhs(grid, structures, backend="numba"), first)
    again = compute_dvhs(grid, structures, backend=gpu_backend)
    for a, b in zip(first, again):
        assert np.array_equal(a.cumulative_cc, b.cumulative_cc) and a.dmean_gy == b.dmean_gy


@pytest.mark.slow
def test_cohort_on_the_gpu_gets_every_true_class(tmp_path, gpu_backend, request):
    from isodose.cohort.runner import run_cohort
    from isodose.cohort.settings import RunSettings
    from isodose.cohort.store import ResultStore
    from isodose.cohort.synthetic import read_truth

    manifest = request.getfixturevalue("generated_cohort")(20, 3)
    settings = RunSettings(target_metrics=("GTV:volume", "CTV60:D98"))
    # Reading workers feed the GPU, which samples up to 8 cases per launch (on a device, "cupy" arranges this
    # by itself; the emulated backend, an object, is asked for it).
    on_device = gpu_backend.name == "cupy"
    summary = run_cohort(
        manifest,
        tmp_path / "r.h5",
        settings=settings,
        workers=2,
        backend="cupy" if on_device else gpu_backend,
        pipelined=None if on_device else True,
        batch_size=8,
    )
    assert summary.failed == 0
    run_cohort(manifest, tmp_path / "numba.h5", settings=settings, workers=2, backend="numba")
    truth = read_truth(manifest.parent / "truth.csv")
    records = {e["case_id"]: e["record"] for e in ResultStore.open(tmp_path / "r.h5", create=False).cases()}
    for case_id, record in records.items():
        assert record["backend"] == gpu_backend.name
        assert record["class_volume"] == truth[case_id]["true_class_volume"]
        assert record["class_centroid"] == truth[case_id]["true_class_centroid"]
    numba = {e["case_id"]: e["record"] for e in ResultStore.open(tmp_path / "numba.h5", create=False).cases()}
    assert_records_match(numba, records)


def test_plan_sums_stay_on_the_device_and_match_numba(gpu_backend):
    """Resampling, EQD2 conversion and sums happen on the device (the plan sum's arrays are the backend's
    device arrays: CuPy's on a GPU), with Numba's DVHs and re-irradiation record."""
    from isodose.reirradiation import accumulate, accumulated_dvhs, reirradiation_record

    from .test_accumulate import structures as rois
    from .test_accumulate import two_courses

    device_array = type(gpu_backend.kernels.asarray(np.zeros(1)))
    assert device_array is not np.ndarray
    courses, registration = two_courses()
    on_gpu = accumulate(courses, registration=registration, backend=gpu_backend)
    assert all(isinstance(dose, device_array) for dose in on_gpu.doses)
    assert isinstance(on_gpu.eqd2(3.0, on_device=True).dose_gy, device_array)
    numba = accumulate(courses, registration=registration, backend="numba")
    for a, b in zip(numba.doses_gy, on_gpu.doses_gy, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9)
    expected = accumulated_dvhs(numba, rois(), backend="numba")
    got = accumulated_dvhs(on_gpu, rois(), backend=gpu_backend)
    assert_gpu_matches([d.physical for d in expected], [d.physical for d in got])
    assert_gpu_matches([d.eqd2 for d in expected], [d.eqd2 for d in got])
    gtv = rois()[0]
    assert_records_match(
        {"case": reirradiation_record(*courses, gtv, registration=registration, backend="numba")},
        {"case": reirradiation_record(*courses, gtv, registration=registration, backend=gpu_backend)},
    )


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["warp", "bounds", "block128", "shared", "warp,block128", "warp,shared"])
def test_every_kernel_variant_gives_the_defaults_bits(variant):
    """The variants of cell_histograms_kernel (see cupy_gpu.VARIANTS) on the head-and-neck case: the same
    histograms and statistics, bit for bit, as the default kernel (the sums are integers)."""
    from isodose.kernels import cupy_gpu
    from isodose.sampling import GridBatch, SamplingRequest, sample_many
    from isodose.voxelize import SamplingOptions, plan_sampling

    grid, structures = head_neck_case()
    options = SamplingOptions()
    plan = plan_sampling(structures.structures, grid, options)
    default = Backend("cupy", "default", cupy_gpu.build())
    changed = Backend("cupy", variant, cupy_gpu.build(cupy_gpu.variant_names(variant)))
    [a] = sample_many([SamplingRequest(plan, grid)], default, options, GridBatch.of([grid], default))
    [b] = sample_many([SamplingRequest(plan, grid)], changed, options, GridBatch.of([grid], changed))
    for field in ("hist_mm3", "inside_mm3", "outside_mm3", "dose_volume_sum", "dmin_gy", "dmax_gy", "centroid_mm"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


@pytest.mark.gpu
def test_a_batchs_grids_are_staged_in_page_locked_memory_and_copied_on_a_stream_of_their_own():
    """On the device, a batch's grid table is copied from page-locked memory on a stream that does not wait for
    the kernels' (its event is what they wait for), and interpolates as the NumPy reference does."""
    import cupy

    from isodose.kernels import numpy_ref
    from isodose.sampling import GridBatch

    gpu = select_backend("cupy")
    grid, _ = head_neck_case()
    batch = GridBatch.of([grid], gpu)
    assert isinstance(batch.table.ready, cupy.cuda.Event)
    assert isinstance(batch.table.staging.base, cupy.cuda.PinnedMemoryPointer)
    points = np.random.default_rng(2).uniform(-60, 60, (1000, 3)) + np.asarray(grid.origin_mm) + 60
    expected = numpy_ref.trilinear(grid.dose_gy.astype(np.float32), grid.origin_mm, grid.spacing_mm, points)
    np.testing.assert_allclose(batch.dose_at(points, np.zeros(1000, np.int64)), expected, rtol=1e-12, equal_nan=True)
