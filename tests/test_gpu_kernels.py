"""The GPU backend without a GPU: its CUDA source compiled for the CPU (every thread in turn) and driven by
the backend's own host code with NumPy arrays, against the NumPy reference; and the source compiled by NVRTC
where NVRTC is installed. On a machine with a GPU, the tests marked gpu run the real thing."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from isodose.dispatch import Backend, select_backend
from isodose.dvh import compute_dvhs
from isodose.kernels import cupy_gpu, numpy_ref
from isodose.kernels.cupy_gpu import SOURCE, GpuKernels
from isodose.model import Contour, Structure
from isodose.phantoms import Shell, Sphere, contour_shape
from isodose.sampling import SamplingRequest, sample_many, sample_structures
from isodose.voxelize import SamplingOptions, plan_sampling

from .conftest import copy_cohort, linear_grid
from .cuda.device import DeviceArray
from .cuda.emulated import check_arguments, kernel_parameters
from .test_backends_agree import assert_same_dvhs
from .test_dvh_analytic import FIELDS, SHAPES
from .test_kernels import _awkward_structures, _coverage, _histograms, rigid


@pytest.fixture
def gpu(emulated_gpu):
    return emulated_gpu


def test_the_emulated_device_arrays_refuse_what_cupy_refuses(gpu):
    """The arrays of the emulation stand for CuPy's: no implicit conversion to NumPy, no host arrays mixed in;
    so the host code's tests here catch what would fail only on a GPU."""
    a = gpu.xp.asarray(np.arange(4.0))
    with pytest.raises(TypeError, match="does not become a NumPy array implicitly"):
        np.asarray(a)
    for mix in (
        lambda: a + np.ones(4),
        lambda: np.ones(4) * a,
        lambda: np.concatenate([a, np.ones(2)]),
        lambda: a.__setitem__(slice(0, 2), np.zeros(2)),
    ):
        with pytest.raises(TypeError, match="host \\(NumPy\\) array"):
            mix()
    b = (2 * a + 1)[a > 1]
    assert isinstance(b, DeviceArray) and isinstance(np.sqrt(b), DeviceArray) and b.get().tolist() == [5.0, 7.0]
    assert float(a.sum()) == 6.0 and int(a.max()) == 3 and gpu.to_host(a).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_the_device_clock_counts_the_emulated_device_work_and_none_of_the_hosts():
    """The host-work benchmark leaves out what the clock counts: copies, operations on device arrays and
    freeing them (on a GPU, memory goes back to CuPy's pool); host arithmetic is not counted."""
    import gc

    from .cuda.device import CLOCK, DeviceModule

    gc.collect()  # no device array of an earlier test is freed meanwhile
    CLOCK.seconds = 0.0
    host = np.ones(4_000_000)
    host = np.sqrt(host * 2.0)
    assert CLOCK.seconds == 0.0
    device = DeviceModule.asarray(host)
    device = device * 2.0
    copied = device.get()
    after_work = CLOCK.seconds
    assert after_work > 0 and copied.shape == host.shape
    del device
    assert CLOCK.seconds > after_work


def test_trilinear(gpu, rng):
    dose = rng.uniform(0, 70, (7, 8, 9)).astype(np.float32)
    origin, spacing = np.array([-5.0, 3.0, 10.0]), np.array([2.0, 2.5, 3.0])
    points = rng.uniform([-8, 0, 6], [25, 25, 35], (3000, 3))
    expected = numpy_ref.trilinear(dose, origin, spacing, points)
    # The grid from the host, and already on the device in another type.
    for grid in (dose, gpu.xp.asarray(dose, np.float64)):
        got = gpu.trilinear(grid, origin, spacing, points)
        assert np.array_equal(np.isnan(expected), np.isnan(got))
        np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=1e-12, atol=1e-10)


def test_coverage_including_planes_too_crowded_for_a_thread(gpu, rng):
    _, grid = linear_grid()
    # A comb whose scanlines cross 160 edges: more than a thread holds, so that plane goes to the host.
    teeth = 80
    comb = [(-30.0, -10.0)]
    for t in range(teeth):
        x = -30.0 + 60.0 * t / teeth
        comb += [(x, 10.0), (x + 0.3, 10.0), (x + 0.3, -9.0), (x + 60.0 / teeth, -9.0)]
    comb += [(30.0, -10.0)]
    structures = _awkward_structures(rng) + [Structure("comb", 9, (Contour(np.array(comb), 0.0),))]
    plan = plan_sampling(structures, grid, SamplingOptions(supersampling=5, scanlines=3))
    np.testing.assert_allclose(gpu.to_host(_coverage(gpu, plan)), _coverage(numpy_ref, plan), rtol=1e-9, atol=1e-9)
    # Scanlines per plane, the crowded plane's included.
    plan = replace(plan, plane_scanlines=1 + np.arange(len(plan.plane_nx)) % 4)
    np.testing.assert_allclose(gpu.to_host(_coverage(gpu, plan)), _coverage(numpy_ref, plan), rtol=1e-9, atol=1e-9)


def test_accumulate_histogram(gpu, rng):
    n = 5000
    values, weights = rng.uniform(0, 60, n), rng.uniform(0.1, 2, n)
    widths = rng.choice([0.0, 0.001, 0.3, 5.0], n)
    expected = numpy_ref.accumulate_histogram(values, weights, widths, 0.05, 1300)
    np.testing.assert_allclose(
        gpu.accumulate_histogram(values, weights, widths, 0.05, 1300), expected, rtol=1e-9, atol=1e-8
    )


@pytest.mark.parametrize("transformed", [False, True])
def test_cell_histograms(gpu, rng, transformed):
    _, grid = linear_grid(gradient=(0.4, -0.9, 0.7))
    structures = _awkward_structures(rng) + [
        contour_shape(Sphere((1, 2, 3), 9.0), "sphere", 5, 2.5),
        contour_shape(Shell((0, 0, 0), 14.0, 6.0), "shell", 6, 3.0),
        Structure("empty", 7, ()),
    ]
    plan = plan_sampling(structures, grid, SamplingOptions(target_cells=20000))
    transforms = np.stack([rigid(rng, tilt=i % 2 == 1) for i in range(len(structures))]) if transformed else None
    cells = _coverage(numpy_ref, plan)
    expected_hist, expected_stats = _histograms(numpy_ref, plan, grid, cells, transforms=transforms)
    hist, stats = _histograms(gpu, plan, grid, cells, transforms=transforms)
    # Fixed-point sums: each deposit is rounded to 2^-32 mm^3, and a bin gathers thousands of them.
    np.testing.assert_allclose(hist, expected_hist, rtol=1e-6, atol=1e-8)
    # Volumes and sums to 1e-6 (each cell's sums are rounded once); centroids to a micrometre.
    np.testing.assert_allclose(stats[:, :5], expected_stats[:, :5], rtol=1e-6, atol=1e-9, equal_nan=True)
    volume = np.maximum(stats[:, 0] + stats[:, 1], 1e-300)
    np.testing.assert_allclose(stats[:, 5:8] / volume[:, None], expected_stats[:, 5:] / volume[:, None], atol=1e-3)
    assert np.isnan(stats[6, 3]) and stats[6, 0] == 0
    # The first and last bins with mass, found on the device: outside them the histograms hold exactly nothing.
    assert stats.shape[1] == 10
    for s, (first, last) in enumerate(stats[:, 8:10].astype(int)):
        held = np.flatnonzero(hist[s])
        assert (first, last) == ((held[0], held[-1]) if len(held) else (hist.shape[1], -1)), s


def test_dvhs_through_the_gpu_host_code_match_numba(gpu, rng):
    backend = Backend("cupy (emulated)", gpu.device, gpu)
    for gradient in (FIELDS["oblique"], FIELDS["z"]):
        _, grid = linear_grid(gradient=gradient)
        structures = [contour_shape(s, n, i, 2.5) for i, (n, s) in enumerate(SHAPES.items(), start=1)]
        structures += _awkward_structures(rng)
        reference = compute_dvhs(grid, structures, backend="numba")
        assert_same_dvhs(reference, compute_dvhs(grid, structures, backend=backend))


def test_a_dose_grid_changed_in_place_since_an_earlier_computation_is_read_anew(gpu):
    """A grid is copied to the device for each computation, never kept from an earlier one: a grid whose values
    changed in place since (a tool that embeds isodose editing its own arrays, say) gives the DVHs of its new
    values, as on the CPU backends, not those of the old copy."""
    backend = Backend("cupy (emulated)", gpu.device, gpu)
    _, grid = linear_grid(gradient=FIELDS["oblique"])
    sphere = contour_shape(Sphere((1.0, -2.0, 0.5), 11.0), "S", 1, 2.5)
    [before] = compute_dvhs(grid, [sphere], backend=backend)
    grid.dose_gy[...] *= 2.0
    [after] = compute_dvhs(grid, [sphere], backend=backend)
    [expected] = compute_dvhs(grid, [sphere], backend="numba")
    assert after.dmax_gy == pytest.approx(2.0 * before.dmax_gy, rel=1e-6)
    assert_same_dvhs([expected], [after])


def test_gpu_sums_do_not_depend_on_thread_order(gpu):
    """Integer (fixed-point) sums: the same input gives the same bits; here, with threads run backwards."""
    _, grid = linear_grid(gradient=(0.4, -0.9, 0.7))
    sphere = contour_shape(Sphere((1, 2, 3), 15.0), "s", 1, 2.5)
    plan = plan_sampling([sphere], grid, SamplingOptions(target_cells=5000))
    cells = _coverage(numpy_ref, plan)
    forward = _histograms(gpu, plan, grid, cells)
    reversed_cells = cells.copy()
    # Reverse the cells of each plane: the same samples, deposited in another order.
    for p in range(len(plan.plane_nx)):
        start, end = plan.plane_cell_start[p], plan.plane_cell_start[p + 1]
        reversed_cells[start:end] = cells[start:end][::-1]
    backward = _histograms(gpu, plan, grid, reversed_cells)
    assert np.array_equal(forward[0], backward[0]) and np.array_equal(forward[1], backward[1], equal_nan=True)


def _counting(kernels):
    """The same kernels, counting the launches of each CUDA kernel."""
    counts: dict[str, int] = {}
    inner = kernels.launch

    def launch(name, n_threads, args):
        counts[name] = counts.get(name, 0) + 1
        inner(name, n_threads, args)

    return GpuKernels(kernels.xp, launch, kernels.device), counts


def test_many_cases_in_one_launch_match_each_case_alone(gpu, rng):
    """Structures of several cases, each in its own dose grid (other shapes, spacings and origins, some moved by
    a rigid transform), go through one coverage and one histogram launch, with the results of each case alone."""
    counting, counts = _counting(gpu)
    backend = Backend("cupy (emulated)", gpu.device, counting)
    options = SamplingOptions(target_cells=6000)
    requests = []
    for i, gradient in enumerate((FIELDS["oblique"], FIELDS["z"], (0.3, 0.2, -1.1), FIELDS["oblique"])):
        _, grid = linear_grid(
            gradient=gradient,
            dose_gy=100.0 + 10 * i,
            origin=(-40.0 - i, -41.0, -39.0 + 0.7 * i),
            spacing=(2.5, 2.0 + 0.5 * i, 3.0),
            shape=(28, 40 - 2 * i, 33 + i),
        )
        structures = [contour_shape(s, n, k, 2.5) for k, (n, s) in enumerate(SHAPES.items(), start=1)][: 2 + i]
        if i == 2:
            structures += [Structure("empty", 9, ())]
        transforms = np.stack([rigid(rng, tilt=k % 2 == 1) for k in range(len(structures))]) if i % 2 else None
        requests.append(SamplingRequest(plan_sampling(structures, grid, options), grid, transforms))
    together = sample_many(requests, backend, options)
    assert counts == {"coverage_kernel": 1, "cell_histograms_kernel": 1, "trilinear_kernel": 1}
    numba = select_backend("numba")
    for request, merged in zip(requests, together):
        alone = sample_structures(request.plan, request.grid, numba, options, request.transforms)
        assert merged.bin_width_gy == alone.bin_width_gy
        np.testing.assert_allclose(merged.hist_mm3, alone.hist_mm3, rtol=1e-6, atol=1e-6)
        for name in ("inside_mm3", "outside_mm3", "dose_volume_sum", "dmin_gy", "dmax_gy"):
            np.testing.assert_allclose(
                getattr(merged, name), getattr(alone, name), rtol=1e-7, atol=1e-6, equal_nan=True, err_msg=name
            )
        # The device sums position x volume in fixed point (2^-20 mm mm^3 a sample): the interior cells of a piece
        # of slab repeat one rounding, so a 0.1 cc structure's centroid may move by a few 1e-6 mm.
        np.testing.assert_allclose(merged.centroid_mm, alone.centroid_mm, rtol=0, atol=1e-5, err_msg="centroid_mm")


@pytest.mark.parametrize("tilt", [False, True])
def test_resample(gpu, rng, tilt):
    dose = rng.uniform(0, 70, (9, 10, 11)).astype(np.float32)
    origin, spacing = np.array([-5.0, 3.0, 10.0]), np.array([2.0, 2.5, 3.0])
    onto = ((-9.0, -2.0, 4.0), (1.5, 2.0, 2.5), (12, 13, 14))
    matrix = rigid(rng, tilt, shift=(1.0, 2.0, -1.0))
    expected = numpy_ref.resample(dose, origin, spacing, *onto, matrix)
    got = gpu.to_host(gpu.resample(dose, origin, spacing, *onto, matrix))
    assert got.shape == expected.shape == (12, 13, 14)
    assert np.array_equal(np.isnan(expected), np.isnan(got))
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=1e-12, atol=1e-9)


def test_course_sum(gpu, rng):
    doses = [rng.uniform(0, 80, (6, 7, 8)), rng.uniform(0, 40, (6, 7, 8))]
    for alpha_beta in (None, 2.0):
        got = gpu.course_sum([gpu.xp.asarray(d) for d in doses], [0.9, 1.0], [30, 5], alpha_beta)
        assert isinstance(got, gpu.xp.ndarray) and got.dtype == np.float32
        assert np.array_equal(gpu.to_host(got), numpy_ref.course_sum(doses, [0.9, 1.0], [30, 5], alpha_beta))


def test_plan_sums_through_the_gpu_host_code_match_numba(gpu):
    """Two courses in different frames, related by a registration: the resampling is one launch, the plan sum's
    DVHs (physical and EQD2) one more, and they and the re-irradiation record are Numba's."""
    from isodose.reirradiation import accumulate, accumulated_dvhs, reirradiation_record

    from .test_accumulate import structures as rois
    from .test_accumulate import two_courses

    courses, registration = two_courses()
    counting, counts = _counting(gpu)
    backend = Backend("cupy (emulated)", gpu.device, counting)
    on_gpu = accumulate(courses, registration=registration, recovery_pct=25.0, backend=backend)
    assert counts == {"resample_kernel": 1}
    numba = accumulate(courses, registration=registration, recovery_pct=25.0, backend="numba")
    for a, b in zip(numba.doses_gy, on_gpu.doses_gy, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9)
    expected = accumulated_dvhs(numba, rois(), backend="numba")
    got = accumulated_dvhs(on_gpu, rois(), backend=backend)
    # The physical sum and the three EQD2 grids (one per alpha/beta) are sampled in one launch.
    assert counts == {"resample_kernel": 1, "coverage_kernel": 1, "cell_histograms_kernel": 1, "trilinear_kernel": 1}
    assert [d.alpha_beta_gy for d in got] == [10.0, 2.0, 3.0]
    assert_same_dvhs([d.physical for d in expected], [d.physical for d in got])
    assert_same_dvhs([d.eqd2 for d in expected], [d.eqd2 for d in got])
    gtv = rois()[0]
    record = reirradiation_record(*courses, gtv, registration=registration, backend="numba")
    assert_records_match(
        {"case": record}, {"case": reirradiation_record(*courses, gtv, registration=registration, backend=backend)}
    )


@pytest.mark.slow
def test_cohort_batches_on_the_gpu_give_the_numbers_of_one_case_at_a_time(gpu, tmp_path, generated_cohort):
    """The GPU arrangement of a cohort run (reading workers, batches of cases sampled together) with the
    emulated kernels: every case's record as Numba computes it case by case, re-irradiated cases included."""
    import csv

    from isodose.cohort.runner import run_cohort
    from isodose.cohort.settings import RunSettings
    from isodose.cohort.store import ResultStore
    from isodose.dicom.read import read_dose
    from isodose.dicom.write import write_dose
    from isodose.model import DoseGrid

    manifest = copy_cohort(generated_cohort(7, 11), tmp_path / "data")
    # Two cases re-irradiated: a second course of 40% of the first's dose in 10 fractions, on the same grid.
    rows = list(csv.DictReader(manifest.open()))
    for row in rows[:2]:
        first = read_dose(manifest.parent / row["dose"])
        second = DoseGrid(
            first.dose_gy * np.float32(0.4), first.origin_mm, first.spacing_mm, first.frame_of_reference_uid
        )
        path = write_dose(
            second,
            manifest.parent / f"{row['case_id']}-RD2.dcm",
            frame_of_reference_uid=first.frame_of_reference_uid,
            patient_id=first.patient_id,
        )
        row.update(fractions="35", second_dose=path.name, second_fractions="10")
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=[*rows[0], "fractions", "second_dose", "second_fractions"], restval=""
        )
        writer.writeheader()
        writer.writerows(rows)
    settings = RunSettings(target_metrics=("GTV:volume", "CTV60:D98"))
    counting, counts = _counting(gpu)
    backend = Backend("cupy (emulated)", gpu.device, counting)
    run_cohort(
        manifest, tmp_path / "gpu.h5", settings=settings, workers=2, backend=backend, pipelined=True, batch_size=4
    )
    run_cohort(manifest, tmp_path / "numba.h5", settings=settings, workers=1, backend="numba")
    # 7 cases in batches of at most 4: at least 2 batches, never one launch per case; and each re-irradiated
    # case's plan sum resampled and sampled once more.
    assert counts["resample_kernel"] == 2
    assert 2 + 2 <= counts["cell_histograms_kernel"] < 7 + 2
    records = {}
    for name in ("gpu", "numba"):
        entries = ResultStore.open(tmp_path / f"{name}.h5", create=False).cases()
        assert all(e["status"] == "ok" for e in entries)
        records[name] = {e["case_id"]: e["record"] for e in entries}
    assert len(records["gpu"]) == 7
    assert sum("vr_accumulated_eqd2_d95_gy" in r for r in records["gpu"].values()) == 2
    assert_records_match(records["numba"], records["gpu"])
    assert {r["backend"] for r in records["gpu"].values()} == {"cupy (emulated)"}


def assert_records_match(expected_records: dict, records: dict) -> None:
    """Cohort records of two backends: the same classes, volumes within 1e-5 relative, doses within 1e-3 Gy."""
    assert records.keys() == expected_records.keys()
    for case_id, expected in expected_records.items():
        got = records[case_id]
        for key, value in expected.items():
            if key in ("backend", "device"):
                continue
            if isinstance(value, float):
                tolerance = 1e-3 if key.endswith("_gy") or key.startswith("D") else 1e-5 * max(1.0, abs(value))
                assert got[key] == pytest.approx(value, abs=tolerance, nan_ok=True), (case_id, key)
            else:
                assert got[key] == value, (case_id, key)


def test_every_launch_is_checked_against_the_kernel_parameters(gpu):
    """The emulated launcher checks each launch's arguments against the CUDA source (so every test here runs
    the check); it refuses what would reach a real kernel wrongly."""
    parameters = kernel_parameters(SOURCE.read_text())
    launched = set(re.findall(r'self\.launch\(\s*"(\w+)"', open(cupy_gpu.__file__).read()))
    assert launched == set(parameters) and len(launched) == 8
    n = 10
    values, delta = gpu.xp.asarray(np.linspace(0.0, 9.0, n)), gpu.xp.zeros(5, np.int64)
    good = [values, gpu.xp.asarray(np.ones(n)), gpu.xp.zeros(n), np.int64(n), np.float64(1.0), np.int32(4), delta]
    check_arguments("histogram_kernel", parameters["histogram_kernel"], good)
    wrong = {
        5: (np.int64(4), "n_bins needs a NumPy int32 scalar"),
        3: (n, "n needs a NumPy int64 scalar, got int"),
        0: (values.astype(np.float32), "values needs a device array of float64"),
        1: (np.ones(n), "weights needs a device array of float64, got ndarray"),
        6: (delta.astype(np.uint64), "delta needs a device array of int64"),
    }
    for index, (argument, message) in wrong.items():
        with pytest.raises(TypeError, match=f"histogram_kernel: {message}"):
            gpu.launch("histogram_kernel", n, [*good[:index], argument, *good[index + 1 :]])
    with pytest.raises(TypeError, match="6 arguments for 7 parameters"):
        gpu.launch("histogram_kernel", n, good[:-1])
    assert not delta.any()  # nothing ran
    gpu.launch("histogram_kernel", n, good)
    assert delta.any()


def test_the_cupy_backend_reports_the_resources_of_its_compiled_kernels():
    """What CuPy says of a compiled kernel (RawKernel.num_regs, .local_size_bytes) goes into the GPU benchmark's
    kernel row; here with a stand-in for the RawModule."""

    class Compiled:
        num_regs, local_size_bytes = 152, 0

    class Module:
        def get_function(self, name):
            assert name == "cell_histograms_kernel"
            return Compiled()

    kernels = cupy_gpu._CupyKernels(np, None, "stand-in", Module())
    assert kernels.kernel_resources("cell_histograms_kernel") == {"registers": 152, "local_bytes": 0}


@pytest.mark.parametrize("cuda", [12, 13])
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_cuda_source_compiles_with_nvrtc(arch, cuda):
    """With each CUDA version's NVRTC (the test extra installs both wheels): CuPy compiles the source with the
    NVRTC of its own CUDA (cupy-cuda12x or cupy-cuda13x)."""
    from .cuda.nvrtc import compile_to_ptx, load_nvrtc

    nvrtc = load_nvrtc(cuda)
    if nvrtc is None:
        pytest.skip(f"NVRTC of CUDA {cuda} is not installed (the test extra installs it on Linux x86_64)")
    compiled, log = compile_to_ptx(nvrtc, SOURCE.read_text(), arch)
    assert compiled and log == "", log
    broken, log = compile_to_ptx(nvrtc, SOURCE.read_text().replace("double half =", "double half ="[:-2]), arch)
    assert not broken and "error" in log


@pytest.mark.parametrize("cuda", [12, 13])
@pytest.mark.parametrize("variant", sorted(cupy_gpu.VARIANTS))
def test_every_kernel_variant_compiles_with_nvrtc(variant, cuda):
    """The variants of cell_histograms_kernel compile for the device (their bits are checked in the emulation's
    cooperative launches below, and on a GPU by the gpu tests)."""
    from .cuda.nvrtc import compile_to_ptx, load_nvrtc

    nvrtc = load_nvrtc(cuda)
    if nvrtc is None:
        pytest.skip(f"NVRTC of CUDA {cuda} is not installed")
    options, _ = cupy_gpu.VARIANTS[variant]
    compiled, log = compile_to_ptx(nvrtc, SOURCE.read_text(), "compute_90", options)
    assert compiled and log == "", log


@pytest.mark.parametrize("variant", [*sorted(cupy_gpu.VARIANTS), "warp,shared,block128"])
def test_every_kernel_variant_gives_the_defaults_bits_in_the_emulation(variant, emulated_gpu, tmp_path, rng):
    """Each variant of cell_histograms_kernel run in the emulation (the warp intrinsics, barriers and shared memory
    of warp sums and shared histograms in its cooperative launches, lanes in lockstep): the same histograms and
    statistics, bit for bit, as the default kernel, with structures that share blocks and ones that fill them, in
    the dose grid's frame and tilted."""
    from .cuda.emulated import build, emulated_kernels

    names = cupy_gpu.variant_names(variant)
    changed = emulated_kernels(build(tmp_path, names), names)
    assert changed.device.endswith(f"(variants {', '.join(names)})")
    _, grid = linear_grid(gradient=(0.4, -0.9, 0.7))
    structures = _awkward_structures(rng)[:3] + [
        contour_shape(Sphere((1, 2, 3), 12.0), "sphere", 5, 2.5),
        contour_shape(Shell((0, 0, 0), 14.0, 6.0), "shell", 6, 3.0),
    ]
    plan = plan_sampling(structures, grid, SamplingOptions(target_cells=3000))
    cells = _coverage(numpy_ref, plan)
    for transforms in (None, np.stack([rigid(rng, tilt=True) for _ in structures])):
        hist, stats = _histograms(emulated_gpu, plan, grid, cells, transforms=transforms)
        variant_hist, variant_stats = _histograms(changed, plan, grid, cells, transforms=transforms)
        assert hist.any() and np.array_equal(hist, variant_hist)
        assert np.array_equal(stats, variant_stats, equal_nan=True)


COOPERATIVE_PROGRAM = r"""
#include "emulation.h"
#include <stdio.h>
// Barriers and shared memory: each thread writes its slot, then reads its neighbour's, which only a barrier orders.
__global__ void neighbours(long long* out) {
    __shared__ long long slots[64];
    slots[threadIdx.x] = 100 * blockIdx.x + threadIdx.x;
    __syncthreads();
    out[64 * blockIdx.x + threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}
// Warp intrinsics: lanes grouped by parity, each group's sum by shuffles within the group.
__global__ void group_sums(long long* out) {
    unsigned group = __match_any_sync(0xFFFFFFFFu, (long long)(threadIdx.x & 1));
    long long sum = 0;
    for (unsigned rest = group; rest; rest &= rest - 1)
        sum += __shfl_sync(group, (long long)threadIdx.x, __ffs(rest) - 1);
    out[threadIdx.x] = sum;
}
__global__ void outside_mask(long long* out) {
    unsigned group = __match_any_sync(0xFFFFFFFFu, (long long)(threadIdx.x & 1));
    out[threadIdx.x] = __shfl_sync(group, (long long)threadIdx.x, (threadIdx.x + 1) & 31);
}
int main(int argc, char** argv) {
    long long out[128];
    EMULATE_COOPERATIVE_LAUNCH(2, 64, neighbours(out));
    for (int b = 0; b < 2; ++b)
        for (int t = 0; t < 64; ++t)
            if (out[64 * b + t] != 100 * b + (t + 1) % 64) return 1;
    EMULATE_COOPERATIVE_LAUNCH(1, 64, group_sums(out));
    for (int t = 0; t < 64; ++t) {
        long long base = t & ~31, expected = 0;
        for (int k = t & 1; k < 32; k += 2) expected += base + k;
        if (out[t] != expected) return 2;
    }
    printf("ok\n");
    fflush(stdout);
    if (argc > 1) EMULATE_COOPERATIVE_LAUNCH(1, 32, outside_mask(out));
    return 0;
}
"""


def test_the_cooperative_emulation_keeps_lanes_in_lockstep_and_refuses_undefined_intrinsics(tmp_path):
    """The emulation's cooperative launches (tests/cuda/emulation.h) on kernels of known results: a barrier orders
    shared memory between threads, __match_any_sync groups lanes and __shfl_sync reads within a group; a shuffle
    the hardware would leave undefined (from a lane outside the mask) stops the launch with its reason."""
    import shutil
    import subprocess

    from .cuda.emulated import HERE

    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    source = tmp_path / "cooperative.cpp"
    source.write_text(COOPERATIVE_PROGRAM)
    program = tmp_path / "cooperative"
    subprocess.run([compiler, "-std=c++17", "-I", str(HERE), "-o", str(program), str(source)], check=True)
    good = subprocess.run([str(program)], capture_output=True, text=True)
    assert (good.returncode, good.stdout) == (0, "ok\n")
    bad = subprocess.run([str(program), "undefined"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stdout == "ok\n"
    assert "a shuffle from a lane outside its mask" in bad.stderr


def test_variant_names_are_checked():
    assert cupy_gpu.variant_names(" warp, block128 ") == ("warp", "block128")
    assert cupy_gpu.variant_names("") == () and cupy_gpu.variant_names(None) == ()
    with pytest.raises(ValueError, match="unknown variant 'fast' \\(known: warp, bounds, block128, shared\\)"):
        cupy_gpu.variant_names("warp,fast")


# --- the dispatcher's test launch, and memory ---------------------------------------------------------------
class _Wrapped:
    """A kernel module that behaves like another one, but for what a test changes."""

    def __init__(self, inner, **changes):
        self._inner = inner
        self.__dict__.update(changes)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_test_launch_accepts_good_kernels_and_refuses_wrong_ones(gpu):
    from isodose.dispatch import _device_after_selftest
    from isodose.errors import BackendError
    from isodose.kernels import numba_cpu, selftest

    for kernels in (numpy_ref, numba_cpu, gpu):
        selftest.check(kernels)
    wrong = _Wrapped(gpu, device_name=lambda: "GPU 0", trilinear=lambda *a: np.asarray(gpu.trilinear(*a)) + 1e-3)
    with pytest.raises(BackendError, match="disagrees with the reference on its test launch \\(trilinear\\)"):
        _device_after_selftest(wrong, "cupy")

    def failing_compiler(*args, **kwargs):
        raise RuntimeError("nvrtc: error: compilation failed")

    broken = _Wrapped(gpu, device_name=lambda: "GPU 0", polygon_coverage=failing_compiler)
    with pytest.raises(BackendError, match="failed its test launch \\(RuntimeError: nvrtc"):
        _device_after_selftest(broken, "cupy")
    assert _device_after_selftest(_Wrapped(gpu, device_name=lambda: "GPU 0"), "cupy") == "GPU 0"


def _limited(inner, max_cells: int, free_bytes: int | None = None):
    """Kernels that run out of memory on batches of more than ``max_cells`` cells."""

    def polygon_coverage(*args):
        n_cells = int(np.asarray(args[3])[-1])
        if n_cells > max_cells:
            raise MemoryError(f"{n_cells} cells")
        return inner.polygon_coverage(*args)

    return _Wrapped(
        inner,
        polygon_coverage=polygon_coverage,
        free_memory_bytes=lambda: free_bytes,
        out_of_memory_errors=lambda: (MemoryError,),
        BYTES_PER_CELL=64,
    )


def test_batches_that_run_out_of_memory_are_split_and_retried(gpu):
    from isodose.errors import IsodoseError
    from isodose.kernels import numba_cpu

    _, grid = linear_grid(gradient=FIELDS["oblique"])
    structures = [contour_shape(s, n, i, 2.5) for i, (n, s) in enumerate(SHAPES.items(), start=1)]
    reference = compute_dvhs(grid, structures, backend="numba")
    for kernels in (_limited(numba_cpu, 150_000), _limited(gpu, 150_000), _limited(numba_cpu, 10**9, 64 * 200_000)):
        backend = Backend("limited", "a small device", kernels)
        assert_same_dvhs(reference, compute_dvhs(grid, structures, backend=backend))
    with pytest.raises(IsodoseError, match="ROI 'sphere': not enough memory for one contour plane"):
        compute_dvhs(grid, structures, backend=Backend("tiny", "a tiny device", _limited(numba_cpu, 1000)))


def test_a_staging_buffer_used_again_leaves_each_table_its_own_doses(emulated_gpu, rng):
    """Grids are staged in one host buffer, used again for the next table as CuPy's pool of page-locked memory
    uses its blocks again: a table copied before keeps its doses; and with NumPy as the array module (whose asarray
    would not copy) a staged copy is a copy all the same."""
    import numpy

    gpu = GpuKernels(emulated_gpu.xp, emulated_gpu.launch, emulated_gpu.device)  # a buffer of its own
    first = [(rng.uniform(0, 70, (4, 5, 6)).astype(np.float32), np.zeros(3), np.ones(3)) for _ in range(3)]
    second = [(rng.uniform(0, 70, (6, 5, 4)).astype(np.float32), np.ones(3), np.ones(3)) for _ in range(2)]
    tables = [gpu.grid_table(first), gpu.grid_table(second)]
    assert tables[1].staging.ctypes.data == tables[0].staging.ctypes.data  # the same buffer, used again
    for table, grids in zip(tables, (first, second)):
        expected = np.concatenate([dose.reshape(-1) for dose, _, _ in grids])
        np.testing.assert_array_equal(gpu.to_host(table.doses), expected)
    on_numpy = GpuKernels(numpy, emulated_gpu.launch, "numpy")
    buffer = on_numpy.staging_buffer(16)
    buffer[:] = 1
    copied, _ = on_numpy.copy_staged(buffer)
    on_numpy.staging_buffer(16)[:] = 2
    assert np.all(copied == 1)
