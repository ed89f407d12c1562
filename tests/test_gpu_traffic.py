"""What crosses between host and device on the GPU backend, counted by the emulated device (tests/cuda): each
distinct dose grid copied once per batch, cropped to the box of the structures that sample it, the results
unchanged; and the synchronisations of a batch a small constant, whatever the number of cases."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from isodose.dispatch import Backend
from isodose.model import DoseGrid, StructureSet
from isodose.phantoms import LinearField, Sphere, contour_shape, head_neck_case
from isodose.recurrence import RecurrenceCase, classify_recurrences
from isodose.sampling import GridBatch, crop_window

from .cuda.device import TRAFFIC

TARGET_METRICS = ("GTV:volume", "CTV60:D98", "CTV54:D95")


@pytest.fixture(scope="module")
def case():
    """The head-and-neck case (a 19.2 MB grid) with a 5 cc Vr across PTV70's edge, and its targets."""
    grid, structures = head_neck_case()
    ptv = structures.get("PTV70")
    points = np.concatenate([c.points_mm for c in ptv.contours])
    z = float(np.mean([c.z_mm for c in ptv.contours]))
    radius = (5000.0 * 3 / (4 * math.pi)) ** (1 / 3)
    vr = contour_shape(Sphere((float(points[:, 0].max()), float(points[:, 1].mean()), z), radius), "Vr", 99, 2.0)
    chosen = [structures.get(name) for name in ("GTV", "PTV70", "CTV60", "CTV54")]
    return grid, StructureSet((*chosen, vr), structures.frame_of_reference_uid)


def classify(backend, grids, structures):
    TRAFFIC.reset()
    cases = [RecurrenceCase(g, structures, "Vr", 70.0, target_metrics=TARGET_METRICS) for g in grids]
    results = classify_recurrences(cases, backend=backend)
    return results, TRAFFIC.snapshot()


def whole_grids(gpu):
    """The same host code with cropping off (as if its grid tables held the arrays given)."""
    uncropped = type(gpu)(gpu.xp, gpu.launch, gpu.device)
    uncropped.COPIES_GRIDS = False
    return Backend("cupy (emulated, whole grids)", gpu.device, uncropped)


def assert_same_results(a, b):
    for x, y in zip(a, b):
        assert x.class_volume == y.class_volume and x.class_centroid == y.class_centroid
        assert x.inside_isodose_pct == pytest.approx(y.inside_isodose_pct, rel=1e-9, abs=1e-9)
        assert x.centroid_dose_gy == pytest.approx(y.centroid_dose_gy, rel=1e-9)
        for name, value in x.metrics.items():
            assert value == pytest.approx(y.metrics[name], rel=1e-9, abs=1e-9), name
        for name, value in x.target_metrics.items():
            assert value == pytest.approx(y.target_metrics[name], rel=1e-9, abs=1e-9), name


def test_a_grid_is_copied_once_per_batch_and_cropped_to_its_structures(emulated_gpu, case):
    grid, structures = case
    backend = Backend("cupy (emulated)", emulated_gpu.device, emulated_gpu)
    whole, whole_traffic = classify(whole_grids(emulated_gpu), [grid], structures)
    cropped, cropped_traffic = classify(backend, [grid], structures)
    assert_same_results(cropped, whole)
    assert whole_traffic["to_device_bytes"] > grid.dose_gy.nbytes  # the whole grid, and the plans
    # The structures' box plus a voxel is a small part of the grid: 20.2 MB a case become 1.4 MB.
    assert cropped_traffic["to_device_bytes"] < whole_traffic["to_device_bytes"] / 10
    # Four cases of one plan, each with its own DoseGrid object over the one dose array: one copy of the grid.
    grids = [replace(grid) for _ in range(4)]
    four, four_traffic = classify(backend, grids, structures)
    assert_same_results(four, cropped * 4)
    plans = whole_traffic["to_device_bytes"] - grid.dose_gy.nbytes  # a case's plans and small arrays
    crop = cropped_traffic["to_device_bytes"] - plans  # its grid's crop: 1.9% of the grid here
    assert crop < 0.03 * grid.dose_gy.nbytes
    assert four_traffic["to_device_bytes"] == pytest.approx(crop + 4 * plans, rel=1e-3)
    # Syncs and copies per batch do not grow with the cases of the batch.
    assert four_traffic["syncs"] == cropped_traffic["syncs"] <= 8
    assert four_traffic["to_device_copies"] == cropped_traffic["to_device_copies"]


def test_grids_read_elsewhere_too_are_copied_whole(emulated_gpu, case):
    """Cases with draws of uncertainty read their grid wherever the draws move Vr: not cropped."""
    from isodose.uncertainty import Uncertainty

    grid, structures = case
    backend = Backend("cupy (emulated)", emulated_gpu.device, emulated_gpu)
    TRAFFIC.reset()
    u = Uncertainty(translation_sd_mm=2.0, draws=10, seed=0)
    classify_recurrences([RecurrenceCase(grid, structures, "Vr", 70.0, uncertainty=u)], backend=backend)
    assert TRAFFIC.to_device_bytes > grid.dose_gy.nbytes


@pytest.mark.parametrize("shift", [0.0, 0.37, -1.6])
def test_the_crop_interpolates_as_the_whole_grid_everywhere_in_its_box(shift):
    field = LinearField(60.0, (0.3, -1.0, 0.2), (0.0, 0.0, 0.0))
    grid = field.grid((-20.0, -30.0, -10.0), (2.0, 2.5, 3.0), (12, 25, 17), "1.2.3")
    rng = np.random.default_rng(3)
    grid = replace(grid, dose_gy=(grid.dose_gy * (1 + 0.1 * rng.random(grid.dose_gy.shape))).astype(np.float32))
    low, high = np.array([-7.3 + shift, -12.0, -4.1]), np.array([5.2, 8.8 + shift, 14.9])
    z, y, x = crop_window(grid, low, high)
    assert (z.stop - z.start, y.stop - y.start, x.stop - x.start) < grid.dose_gy.shape
    crop = DoseGrid(
        grid.dose_gy[z, y, x],
        tuple(np.asarray(grid.origin_mm) + np.array([x.start, y.start, z.start]) * np.asarray(grid.spacing_mm)),
        grid.spacing_mm,
        grid.frame_of_reference_uid,
    )
    from isodose.kernels import numpy_ref

    points = low + rng.random((5000, 3)) * (high - low)
    whole = numpy_ref.trilinear(grid.dose_gy, grid.origin_mm, grid.spacing_mm, points)
    cropped = numpy_ref.trilinear(crop.dose_gy, crop.origin_mm, crop.spacing_mm, points)
    np.testing.assert_allclose(cropped, whole, rtol=1e-12, atol=1e-12)
    assert np.isfinite(whole).all()


def test_a_crop_keeps_two_voxels_an_axis_and_a_single_voxel_axis_as_it_is():
    grid = LinearField(60.0, (0.0, -1.0, 0.0), (0.0, 0.0, 0.0)).grid((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (1, 10, 10), "x")
    z, y, x = crop_window(grid, np.array([4.2, 4.2, 0.0]), np.array([4.3, 4.3, 0.0]))
    assert (z, y, x) == (slice(0, 1), slice(3, 7), slice(3, 7))
    # A box beyond the grid: two voxels at its edge (every point of the box is outside either way).
    z, y, x = crop_window(grid, np.array([50.0, -9.0, 0.0]), np.array([60.0, -8.0, 0.0]))
    assert (y, x) == (slice(0, 2), slice(8, 10))


def test_without_extents_or_on_a_cpu_backend_grids_stay_whole(emulated_gpu, case):
    grid, _ = case
    box = (np.array([0.0, 0.0, 0.0]), np.array([10.0, 10.0, 10.0]))
    backend = Backend("cupy (emulated)", emulated_gpu.device, emulated_gpu)
    assert GridBatch.of([grid], backend).windows == (tuple(slice(0, n) for n in grid.dose_gy.shape),)
    assert GridBatch.of([grid], backend, [box]).windows != (tuple(slice(0, n) for n in grid.dose_gy.shape),)
    assert GridBatch.of([grid, grid], backend, [box, None]).windows == (tuple(slice(0, n) for n in grid.dose_gy.shape),)
    from isodose.dispatch import select_backend

    numba = GridBatch.of([grid], select_backend("numba"), [box])
    assert numba.windows == (tuple(slice(0, n) for n in grid.dose_gy.shape),)


def test_a_batchs_grids_and_their_table_go_to_the_device_in_one_copy(emulated_gpu):
    """Every grid of a batch, with the table's offsets, shapes and geometry, written into one staging buffer
    (page-locked on a GPU) and copied once, as float32: the bytes of the grids and a few more, and the doses
    the kernels read those of each grid."""
    field = LinearField(60.0, (0.3, -1.0, 0.2), (0.0, 0.0, 0.0))
    grids = [
        field.grid((-20.0, -30.0, -10.0), (2.0, 2.5, 3.0), (12, 25, 17), "1.2.3"),
        field.grid((-5.0, 0.0, 4.0), (1.0, 1.5, 2.0), (7, 9, 11), "1.2.3"),
        replace(field.grid((0.0, 0.0, 0.0), (3.0, 3.0, 3.0), (5, 6, 4), "1.2.3"), dose_gy=np.ones((5, 6, 4))),
    ]
    backend = Backend("cupy (emulated)", emulated_gpu.device, emulated_gpu)
    TRAFFIC.reset()
    batch = GridBatch.of(grids, backend)
    values = sum(g.dose_gy.size for g in grids)
    assert TRAFFIC.to_device_copies == 1
    assert 4 * values <= TRAFFIC.to_device_bytes <= 4 * values + 8 + (8 + 48 + 12) * len(grids) + 8
    rng = np.random.default_rng(5)
    point_grid = rng.integers(0, 3, 400)
    # Points across each grid's box and a little beyond (NaN there).
    low = np.array([g.origin_mm for g in grids])[point_grid]
    size = np.array([np.asarray(g.spacing_mm) * (np.array(g.dose_gy.shape[::-1]) - 1) for g in grids])[point_grid]
    points = low + rng.uniform(-0.1, 1.1, (400, 3)) * size
    from isodose.kernels import numpy_ref

    expected = [
        numpy_ref.trilinear(grids[g].dose_gy.astype(np.float32), grids[g].origin_mm, grids[g].spacing_mm, [p])[0]
        for g, p in zip(point_grid, points)
    ]
    np.testing.assert_allclose(batch.dose_at(points, point_grid), expected, rtol=1e-12, equal_nan=True)
    assert 200 < np.isfinite(expected).sum() < 400


def test_a_plans_extent_holds_every_cell_and_vertex_as_moved():
    """The box of a plan's planes and vertices, each structure's moved by its own rigid transform, against every
    corner of every plane and every vertex moved one by one; structures without planes add nothing."""
    from isodose.geometry import transform_points
    from isodose.sampling import plan_extent_mm
    from isodose.voxelize import SamplingOptions, plan_sampling

    from .test_kernels import rigid

    grid, structures = head_neck_case()
    chosen = [*(structures.get(name) for name in ("GTV", "PTV70")), replace(structures.get("CTV60"), contours=())]
    chosen.append(structures.get("CTV54"))
    plan = plan_sampling(chosen, grid, SamplingOptions(target_cells=20000))
    rng = np.random.default_rng(4)
    for transforms in (np.broadcast_to(np.eye(4), (4, 4, 4)), np.stack([rigid(rng, tilt=True) for _ in range(4)])):
        points = []
        owners = plan.plane_structure()
        for p in range(len(plan.plane_nx)):
            x = (plan.plane_x0_mm[p], plan.plane_x0_mm[p] + plan.plane_nx[p] * plan.plane_hx_mm[p])
            y = (plan.plane_y0_mm[p], plan.plane_y0_mm[p] + plan.plane_ny[p] * plan.plane_hy_mm[p])
            z = (plan.plane_z_lo_mm[p], plan.plane_z_hi_mm[p])
            corners = np.array([[a, b, c] for a in x for b in y for c in z])
            points.append(transform_points(transforms[owners[p]], corners))
        for s in range(4):
            vertices = plan.vertex_points[plan.vertex_structure_start[s] : plan.vertex_structure_start[s + 1]]
            points.append(transform_points(transforms[s], vertices))
        every = np.concatenate(points)
        low, high = plan_extent_mm(plan, transforms)
        if np.all(transforms == np.eye(4)):  # exact where nothing moves
            np.testing.assert_array_equal(low, every.min(axis=0))
            np.testing.assert_array_equal(high, every.max(axis=0))
        else:  # each structure's box moved holds its points, and is no larger than its corners' box
            assert np.all(low <= every.min(axis=0) + 1e-9) and np.all(high >= every.max(axis=0) - 1e-9)
            assert np.all(high - low < 1.8 * (every.max(axis=0) - every.min(axis=0)))


def test_a_case_planned_for_a_gpu_travels_with_only_the_part_of_its_grid_that_it_samples(emulated_gpu, case):
    """What a reading worker hands to the process driving a GPU (``cropped_to_samples``, pickled as the handover
    pickles it): the grid's crop that batch_grids would copy (1.9% of the grid here), the extents and transforms
    taken where it was planned, and the same results, bit for bit, from the same bytes on the device."""
    import pickle

    from isodose.recurrence import classify_prepared, cropped_to_samples, prepare_recurrence
    from isodose.uncertainty import Uncertainty

    grid, structures = case
    backend = Backend("cupy (emulated)", emulated_gpu.device, emulated_gpu)
    prepared = prepare_recurrence(RecurrenceCase(grid, structures, "Vr", 70.0, target_metrics=TARGET_METRICS))
    cropped = pickle.loads(pickle.dumps(cropped_to_samples(prepared), protocol=5))
    assert cropped.dose.dose_gy.nbytes < 0.03 * grid.dose_gy.nbytes
    assert cropped.dose.dose_gy.flags.c_contiguous
    assert all(r.grid is cropped.dose for r in cropped.requests)
    for r in cropped.requests:  # taken by the worker: the whole grid's dose range, the plan's extent
        assert {"_extent_mm", "_structure_transforms"} <= set(vars(r))
        assert r.dose_range() == prepared.requests[0].dose_range()
    # Its samples' doses, read from the crop, are the whole grid's (to the rounding of the crop's own origin).
    low, high = cropped.requests[0].extent_mm()
    points = np.random.default_rng(2).uniform(low, high, (500, 3))
    batch = GridBatch.of([grid, cropped.dose], whole_grids(emulated_gpu))
    np.testing.assert_allclose(batch.dose_at(points, np.ones(500)), batch.dose_at(points, np.zeros(500)), rtol=1e-12)
    results = {}
    for name, value in (("whole", prepared), ("cropped", cropped)):
        TRAFFIC.reset()
        [results[name]] = classify_prepared([value], backend=backend)
        results[name + " bytes"] = TRAFFIC.to_device_bytes
    assert results["cropped bytes"] == results["whole bytes"]
    assert results["cropped"].record() == results["whole"].record()
    vr_whole, vr_cropped = results["whole"].recurrence_dvh, results["cropped"].recurrence_dvh
    np.testing.assert_array_equal(vr_cropped.cumulative_cc, vr_whole.cumulative_cc)
    # Cases that read their grid elsewhere too keep it whole.
    drawn = prepare_recurrence(
        RecurrenceCase(grid, structures, "Vr", 70.0, uncertainty=Uncertainty(translation_sd_mm=2.0, draws=4, seed=0))
    )
    assert cropped_to_samples(drawn) is drawn


def test_a_cohort_run_on_a_gpu_has_its_workers_send_cropped_grids(emulated_gpu, generated_cohort):
    """The wiring of the crop in a cohort run: its reading workers' task crops for a backend that copies grids (and
    for no other, nor where the backend cannot load); what a worker sends then holds one grid, the crop, that every
    request and what was taken of it refer to, in fewer bytes of shared memory; the driving process copies that
    crop as it is; and the entries are those of the whole grids, bit for bit."""
    import os

    from isodose.cohort import handover
    from isodose.cohort.cases import read_manifest
    from isodose.cohort.runner import _arrangement
    from isodose.cohort.settings import RunSettings
    from isodose.cohort.work import classify_batch, read_and_send
    from isodose.recurrence import batch_grids

    settings = RunSettings(target_metrics=TARGET_METRICS)
    backend = Backend("cupy (emulated)", emulated_gpu.device, emulated_gpu)
    cases = read_manifest(generated_cohort(8, 3))
    for chosen, crops in ((backend, True), ("numpy", False), ("cupy", False)):
        arrangement = _arrangement(cases, settings, 2, chosen, True, 4, None)
        assert arrangement.task.keywords["crop"] is crops, chosen
        assert arrangement.task.keywords["hold"] == handover.blocks_to_hold(4, 2)  # each reader's last blocks
    entries, shared = {}, {}
    try:
        for crop in (False, True):
            sent = [read_and_send(case, settings, os.getpid(), crop=crop, hold=3 if crop else 0) for case in cases]
            assert len(handover._held) == (3 if crop else 0)  # the hold reaches the handover
            shared[crop] = sum(nbytes for s in sent for _, nbytes in s.layout)
            received = [handover.receive(s) for s in sent]
            for inputs in received:
                prepared = inputs.prepared
                assert prepared.grid_cropped is crop
                if crop:
                    assert inputs.dose is prepared.dose
                    for r in prepared.requests:
                        assert r.grid is r.known_dose_range[0] is r.known_grid_extremes[0] is prepared.dose
                        # the doses at its vertices came with it, and the vertices stayed behind
                        assert r.known_vertex_extremes[0] is prepared.dose and r.vertices_dropped
            if crop:  # the crop copied as it came
                batch = batch_grids([i.prepared for i in received], backend)
                assert all(w == tuple(slice(0, n) for n in g.dose_gy.shape) for w, g in zip(batch.windows, batch.grids))
            entries[crop] = classify_batch(received, settings, backend)
    finally:
        handover.sweep(os.getpid())
        handover.release_held()
    assert shared[True] < 0.6 * shared[False]
    for whole, cropped in zip(entries[False], entries[True]):
        assert cropped["status"] == whole["status"] == "ok"
        assert cropped["record"] == whole["record"]
        assert cropped["dvhs"].keys() == whole["dvhs"].keys()
        for key, curve in whole["dvhs"].items():
            np.testing.assert_array_equal(cropped["dvhs"][key]["cumulative_cc"], curve["cumulative_cc"])
