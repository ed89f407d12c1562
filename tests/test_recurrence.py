"""Classifying recurrences, against closed forms: a spherical Vr cut by the 95% isodose plane of a linear
field, in the planning frame or drawn on a follow-up frame and mapped by a rigid registration."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from isodose.dicom.read import read_registration, read_structures
from isodose.dicom.write import write_registration, write_structures
from isodose.errors import IsodoseError, RegistrationError, RoiNotFoundError, StructureError
from isodose.geometry import invert_rigid, transform_points
from isodose.model import Structure, StructureSet
from isodose.phantoms import LinearField, Sphere, contour_shape, shape_truth, slab_truth
from isodose.recurrence import Criteria, RecurrenceCase, classify_recurrence, prepare_recurrence

from .test_kernels import rigid

FRAME = "1.2.826.0.1.3680043.10.1457.100"
FOLLOW_UP = "1.2.826.0.1.3680043.10.1457.200"
RX = 70.0
#: dose = 70 + x (Gy): the 95% isodose (66.5 Gy) is the plane x = -3.5 mm.
FIELD = LinearField(RX, (1.0, 0.0, 0.0), (0.0, 0.0, 0.0))
GRID = FIELD.grid((-40.0, -40.0, -40.0), (2.0, 2.0, 2.0), (41, 41, 41), FRAME)


def planning_set(vr_centre, radius=8.0, spacing=1.0, extra=()):
    vr = contour_shape(Sphere(vr_centre, radius), "Vr", 1, spacing)
    ptv = contour_shape(Sphere((0.0, 0.0, 0.0), 30.0), "PTV", 2, 2.0)
    structures = [
        Structure(vr.name, vr.number, vr.contours, interpreted_type="GTV"),
        Structure(ptv.name, ptv.number, ptv.contours, interpreted_type="PTV"),
        *extra,
    ]
    return StructureSet(tuple(structures), FRAME)


def expected_inside_pct(centre, radius=8.0, spacing=1.0):
    truth = slab_truth(Sphere(centre, radius), FIELD, spacing)
    return 100.0 * float(truth.volume_above(0.95 * RX)) / truth.volume_mm3


@pytest.mark.parametrize(
    "centre_x, volume_class, centroid_class",
    [
        (20.0, "in-field", "in-field"),
        (0.5, "marginal", "in-field"),
        (-10.0, "out-field", "marginal"),
        (-2.0, "marginal", "in-field"),
    ],
)
def test_both_methods_on_a_sphere_cut_by_the_isodose(centre_x, volume_class, centroid_class):
    centre = (centre_x, 1.3, -0.7)
    result = classify_recurrence(GRID, planning_set(centre), "Vr", RX, backend="numba")
    assert result.inside_isodose_pct == pytest.approx(expected_inside_pct(centre), abs=0.05)
    assert result.class_volume == volume_class
    assert result.class_centroid == centroid_class
    assert result.centroid_mm == pytest.approx(centre, abs=0.02)
    assert result.centroid_dose_gy == pytest.approx(RX + centre_x, abs=1e-3)
    assert result.centroid_targets == ("PTV",)  # Vr itself is a GTV but is not its own target
    truth = slab_truth(Sphere(centre, 8.0), FIELD, 1.0)
    assert result.recurrence_volume_cc == pytest.approx(truth.volume_mm3 / 1000, rel=2e-4)
    assert result.metrics["D100"] == pytest.approx(truth.dmin_gy, abs=0.02)
    assert result.metrics["D95"] == pytest.approx(truth.dose_at_percent(95), abs=0.02)
    assert result.metrics["V95%"] == pytest.approx(result.inside_isodose_pct, abs=1e-9)
    assert set(result.metrics) == {"V95%", "D95", "D98", "D100", "Dmean", "Dmax"}


def test_structures_may_be_a_plain_list_as_for_dvhs():
    structures = planning_set((0.5, 0.0, 0.0))
    expected = classify_recurrence(GRID, structures, "Vr", RX, backend="numba").record()
    got = classify_recurrence(GRID, list(structures.structures), "Vr", RX, backend="numba").record()
    assert got == expected


def test_point_of_origin_outside_every_target():
    result = classify_recurrence(GRID, planning_set((-10.0, 0.0, 0.0)), "Vr", RX, targets=[], backend="numba")
    assert result.centroid_targets == () and result.class_centroid == "out-field"


def test_thresholds_isodose_and_prescription_are_settings():
    centre = (0.5, 0.0, 0.0)
    structures = planning_set(centre)
    inside = classify_recurrence(GRID, structures, "Vr", RX).inside_isodose_pct
    assert 80 < inside < 90
    assert (
        classify_recurrence(GRID, structures, "Vr", RX, criteria=Criteria(in_field_pct=80)).class_volume == "in-field"
    )
    assert (
        classify_recurrence(
            GRID, structures, "Vr", RX, criteria=Criteria(marginal_pct=90, in_field_pct=95)
        ).class_volume
        == "out-field"
    )
    # A lower isodose level (90% of 70 Gy: x = -7) puts all of Vr above it.
    lower = classify_recurrence(GRID, structures, "Vr", RX, criteria=Criteria(isodose_pct=85.0))
    assert lower.inside_isodose_pct == pytest.approx(100.0) and lower.isodose_gy == pytest.approx(59.5)
    higher_rx = classify_recurrence(GRID, structures, "Vr", 80.0)
    assert higher_rx.isodose_gy == 76.0 and higher_rx.inside_isodose_pct == pytest.approx(
        100
        * float(slab_truth(Sphere(centre, 8.0), FIELD, 1.0).volume_above(76.0))
        / slab_truth(Sphere(centre, 8.0), FIELD, 1.0).volume_mm3,
        abs=0.05,
    )
    with pytest.raises(IsodoseError):
        Criteria(marginal_pct=96)
    with pytest.raises(IsodoseError, match="prescription"):
        classify_recurrence(GRID, structures, "Vr", 0.0)


def test_target_metrics_and_extra_metrics():
    result = classify_recurrence(
        GRID,
        planning_set((0.5, 0.0, 0.0)),
        "Vr",
        RX,
        metrics=["D2cc", "V60Gy_cc"],
        target_metrics=["PTV:D98", "PTV:volume", "Vr:Dmean"],
    )
    ptv_truth = slab_truth(Sphere((0.0, 0.0, 0.0), 30.0), FIELD, 2.0)
    assert result.target_metrics["PTV:D98"] == pytest.approx(ptv_truth.dose_at_percent(98), abs=0.02)
    assert result.target_metrics["PTV:volume"] == pytest.approx(ptv_truth.volume_mm3 / 1000, rel=2e-4)
    assert result.target_metrics["Vr:Dmean"] == pytest.approx(result.metrics["Dmean"], abs=1e-9)
    assert {"D2cc", "V60Gy_cc"} <= set(result.metrics)
    record = result.record()
    for key in (
        "recurrence_volume_cc",
        "inside_isodose_pct",
        "class_volume",
        "class_centroid",
        "centroid_dose_gy",
        "V95%",
        "D95",
        "D98",
        "D100",
        "Dmean",
        "Dmax",
        "PTV:D98",
        "backend",
    ):
        assert key in record
    with pytest.raises(RoiNotFoundError):
        classify_recurrence(
            GRID, planning_set((0.5, 0.0, 0.0)), "Vr", RX, target_metrics=["CTV:D98"], require_targets=True
        )


def test_an_roi_asked_only_for_its_volume_is_sampled_for_it_alone():
    """An ROI whose only target metric is its volume gets the cells its shape needs rather than 8 per voxel side
    for the dose, on the same scanlines: the same volume to rounding (the closed form's within tolerance), no DVH of
    it kept (none was asked for), and Vr's sampling, its metrics and the classes unchanged."""
    node = Sphere((5.0, 0.0, 0.0), 6.0)
    shape = contour_shape(node, "Node", 3, 1.0)
    planning = planning_set(
        (0.5, 0.0, 0.0), extra=(Structure(shape.name, 3, shape.contours, interpreted_type="ORGAN"),)
    )
    truth_cc = slab_truth(node, FIELD, 1.0).volume_mm3 / 1000
    with_dose = classify_recurrence(GRID, planning, "Vr", RX, target_metrics=["Node:Dmean", "Node:volume"])
    alone = classify_recurrence(GRID, planning, "Vr", RX, target_metrics=["Node:volume"])
    assert with_dose.target_metrics["Node:volume"] == pytest.approx(truth_cc, rel=2e-4)
    assert alone.target_metrics["Node:volume"] == pytest.approx(with_dose.target_metrics["Node:volume"], rel=1e-12)
    assert "Node" in with_dose.roi_dvhs and alone.roi_dvhs == {}
    assert alone.metrics == with_dose.metrics and alone.inside_isodose_pct == with_dose.inside_isodose_pct
    assert (alone.class_volume, alone.class_centroid) == (with_dose.class_volume, with_dose.class_centroid)

    def node_cells(target_metrics):
        prepared = prepare_recurrence(RecurrenceCase(GRID, planning, "Vr", RX, target_metrics=target_metrics))
        [node_plan] = [r.plan for r in prepared.requests[1:]]
        return int(node_plan.structure_cells()[node_plan.names.index("Node")]), prepared.volume_only

    cells_with_dose, none = node_cells(["Node:Dmean", "Node:volume"])
    cells_alone, volume_only = node_cells(["Node:volume"])
    assert none == () and volume_only == ("Node",)
    assert cells_alone * 4 < cells_with_dose
    # Vr's own ROI asked for its volume is sampled as Vr is: one volume, not two a little apart
    own = classify_recurrence(GRID, planning, "Vr", RX, target_metrics=["Vr:volume"])
    assert own.target_metrics["Vr:volume"] == own.recurrence_volume_cc and "Vr" in own.roi_dvhs


def test_a_target_metric_of_a_missing_roi_is_null_with_a_warning_and_the_case_classified():
    """A cohort asking for GTV:volume on cases without a GTV keeps their classification: the metric is null, and a
    warning names the ROI. Targets of the point-of-origin method missing likewise, unless require_targets."""
    planning = planning_set((0.5, 0.0, 0.0))
    expected = classify_recurrence(GRID, planning, "Vr", RX, target_metrics=["PTV:D98"])
    result = classify_recurrence(
        GRID, planning, "Vr", RX, target_metrics=["PTV:D98", "GTV:volume"], targets=["PTV", "CTV"]
    )
    assert (
        math.isnan(result.target_metrics["GTV:volume"])
        and result.record()["GTV:volume"] != result.record()["GTV:volume"]
    )
    assert result.target_metrics["PTV:D98"] == expected.target_metrics["PTV:D98"]
    assert (result.class_volume, result.class_centroid) == (expected.class_volume, expected.class_centroid)
    assert any("no ROI 'GTV'" in w and "GTV:volume" in w for w in result.warnings), result.warnings
    assert any("no ROI 'CTV'" in w and "point-of-origin" in w for w in result.warnings), result.warnings
    with pytest.raises(RoiNotFoundError, match="no ROI 'CTV'"):
        classify_recurrence(GRID, planning, "Vr", RX, targets=["PTV", "CTV"], require_targets=True)


def test_recurrence_drawn_on_a_follow_up_frame(tmp_path, rng):
    """The same sphere, contoured on a follow-up frame moved by a rigid transform, mapped back by a DICOM
    registration: the classification is that of the sphere in the planning frame."""
    centre = np.array([0.5, 2.0, -1.0])
    matrix = rigid(rng, tilt=True, shift=(6.0, -4.0, 9.0))  # follow-up -> planning
    centre_follow = transform_points(invert_rigid(matrix), centre)[0]
    vr_follow = contour_shape(Sphere(tuple(centre_follow), 8.0), "Vr", 1, 0.5)
    rs2 = read_structures(write_structures([vr_follow], tmp_path / "rs2.dcm", frame_of_reference_uid=FOLLOW_UP))
    reg = read_registration(
        write_registration(tmp_path / "reg.dcm", registered_frame_uid=FRAME, source_frame_uid=FOLLOW_UP, matrix=matrix)
    )
    planning = planning_set((30.0, 30.0, 30.0))  # its own Vr is elsewhere; the follow-up one is used
    result = classify_recurrence(GRID, planning, "Vr", RX, recurrence_structures=rs2, registration=reg)
    smooth = shape_truth(Sphere(tuple(centre), 8.0), FIELD)
    assert result.registered
    assert result.centroid_mm == pytest.approx(tuple(centre), abs=0.02)
    assert result.inside_isodose_pct == pytest.approx(
        100 * float(smooth.volume_above(0.95 * RX)) / smooth.volume_mm3, abs=0.3
    )
    assert result.recurrence_volume_cc == pytest.approx(smooth.volume_mm3 / 1000, rel=3e-3)
    assert result.metrics["Dmean"] == pytest.approx(RX + centre[0], abs=0.02)
    assert result.class_volume == "marginal" and result.class_centroid == "in-field"
    # A registration relating other frames, and none at all, are errors.
    other = read_registration(
        write_registration(tmp_path / "other.dcm", registered_frame_uid=FRAME, source_frame_uid="9.9.9", matrix=matrix)
    )
    with pytest.raises(RegistrationError, match="does not map frame"):
        classify_recurrence(GRID, planning, "Vr", RX, recurrence_structures=rs2, registration=other)
    with pytest.raises(RegistrationError, match="a spatial registration between them is needed"):
        classify_recurrence(GRID, planning, "Vr", RX, recurrence_structures=rs2)


def test_follow_up_set_in_the_planning_frame_needs_no_registration(tmp_path):
    centre = (0.5, 0.0, 0.0)
    vr = contour_shape(Sphere(centre, 8.0), "Vr", 1, 1.0)
    rs2 = read_structures(write_structures([vr], tmp_path / "rs2.dcm", frame_of_reference_uid=FRAME))
    result = classify_recurrence(GRID, planning_set((30.0, 30.0, 30.0)), "Vr", RX, recurrence_structures=rs2)
    assert not result.registered
    assert result.inside_isodose_pct == pytest.approx(expected_inside_pct(centre), abs=0.05)


def test_registrations_that_are_not_rigid_are_refused(tmp_path):
    scaled = np.diag([1.1, 1.0, 1.0, 1.0])
    path = write_registration(
        tmp_path / "reg.dcm", registered_frame_uid=FRAME, source_frame_uid=FOLLOW_UP, matrix=scaled
    )
    with pytest.raises(RegistrationError, match="registration item 1: the matrix is not rigid"):
        read_registration(path)
    affine = write_registration(
        tmp_path / "affine.dcm",
        registered_frame_uid=FRAME,
        source_frame_uid=FOLLOW_UP,
        matrix=np.eye(4),
        matrix_type="AFFINE",
    )
    with pytest.raises(RegistrationError, match="matrix type is AFFINE, not RIGID"):
        read_registration(affine)


def test_part_of_vr_outside_the_dose_grid_counts_as_outside_the_isodose():
    centre = (20.0, 0.0, 40.0)  # high dose, but half of it beyond the grid's last plane (z = 40)
    result = classify_recurrence(GRID, planning_set(centre), "Vr", RX)
    assert result.recurrence_outside_dose_cc == pytest.approx(result.recurrence_volume_cc / 2, rel=0.02)
    assert result.inside_isodose_pct == pytest.approx(50.0, abs=1.0)
    assert result.metrics["V95%"] == pytest.approx(100.0)


def test_empty_or_missing_recurrence_roi():
    structures = planning_set((0.0, 0.0, 0.0), extra=(Structure("Empty", 9, ()),))
    with pytest.raises(StructureError, match="ROI 'Empty': the recurrence ROI has no contours"):
        classify_recurrence(GRID, structures, "Empty", RX)
    with pytest.raises(RoiNotFoundError):
        classify_recurrence(GRID, structures, "Recurrence", RX)
    assert math.isfinite(classify_recurrence(GRID, structures, "vr", RX).inside_isodose_pct)  # case-insensitive


def test_the_warnings_kept_with_a_result_are_its_own_when_cases_run_in_threads():
    """Cases computed at once in threads of one process (a Dask worker's, a tool's) log through one logger: each
    result keeps the warnings of its own thread, not those another case logged meanwhile."""
    import logging
    import threading

    from isodose.errors import collect_warnings

    log = logging.getLogger("isodose.test")
    collecting, logged = threading.Event(), threading.Event()
    kept: dict[str, list[str]] = {}

    def first_case():
        with collect_warnings() as messages:
            collecting.set()
            logged.wait(10)  # the other case warns while this one collects
            log.warning("a warning of the first case")
        kept["first"] = list(messages)

    def second_case():
        collecting.wait(10)
        with collect_warnings() as messages:
            log.warning("a warning of the second case")
        kept["second"] = list(messages)
        logged.set()

    threads = [threading.Thread(target=first_case), threading.Thread(target=second_case)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert kept == {"first": ["a warning of the first case"], "second": ["a warning of the second case"]}


def test_planning_rois_without_a_target_are_said_so():
    """No GTV, CTV, ITV or PTV among the planning ROIs (their types lost, say): the centroid has no target to be in,
    so the point-of-origin class can only be in-field or out-field; a warning goes with the result."""
    vr = contour_shape(Sphere((-10.0, 1.3, -0.7), 8.0), "Vr", 1, 1.0)
    cord = contour_shape(Sphere((0.0, 0.0, 0.0), 30.0), "Breast", 2, 2.0)
    structures = StructureSet((vr, Structure(cord.name, cord.number, cord.contours, interpreted_type="ORGAN")), FRAME)
    result = classify_recurrence(GRID, structures, "Vr", RX, backend="numba")
    assert result.class_centroid == "out-field" and result.centroid_targets == ()
    assert any("no GTV, CTV, ITV or PTV" in w and "--target" in w for w in result.warnings), result.warnings
    named = classify_recurrence(GRID, structures, "Vr", RX, targets=["Breast"], backend="numba")
    assert named.class_centroid == "marginal" and not any("no GTV" in w for w in named.warnings)
    with_targets = classify_recurrence(GRID, planning_set((-10.0, 1.3, -0.7)), "Vr", RX)
    assert not any("no GTV" in w for w in with_targets.warnings)


def test_a_prepared_case_carries_its_grid_extremes_so_the_sampling_process_need_not_search(monkeypatch):
    """Where cases are read and planned (a cohort's reading workers), each structure's extremes at the grid's points
    are searched there, with the dose range: the process that samples (the one driving a GPU) uses them as they
    came, and the results are those of a case searched where it is sampled."""
    import pickle

    from isodose import sampling
    from isodose.recurrence import RecurrenceCase, classify_prepared, prepare_recurrence

    case = RecurrenceCase(GRID, planning_set((-2.0, 1.3, -0.7)), "Vr", RX, target_metrics=("PTV:D95",))
    prepared = pickle.loads(pickle.dumps(prepare_recurrence(case)))  # as it travels from a reading worker
    assert all(r.known_grid_extremes is not None for r in prepared.requests)
    expected = classify_recurrence(GRID, case.structures, "Vr", RX, target_metrics=("PTV:D95",))

    def searched(*args, **kwargs):
        raise AssertionError("the grid was searched again where the case is sampled")

    monkeypatch.setattr(sampling, "grid_point_extremes", searched)
    [result] = classify_prepared([prepared])
    assert result.record() == expected.record()


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_a_prepared_case_carries_the_doses_at_its_vertices_which_change_no_result(tmp_path, rng, monkeypatch, backend):
    """The extremes of the dose at each structure's contour vertices (for Dmin and Dmax) are taken where a case is
    planned, on the host, and travel with it: the process that samples it neither interpolates the vertices nor,
    once its grid is cropped for a device, receives them. On the CPU backends the results are those of the vertices
    interpolated where they are sampled, bit for bit (with the Vr of a follow-up frame moved by a registration too)."""
    import pickle

    from isodose import sampling
    from isodose.recurrence import classify_prepared, cropped_to_samples

    matrix = rigid(rng, tilt=True, shift=(6.0, -4.0, 9.0))
    centre_follow = transform_points(invert_rigid(matrix), np.array([-2.0, 1.3, -0.7]))[0]
    vr_follow = contour_shape(Sphere(tuple(centre_follow), 8.0), "Vr", 1, 0.5)
    rs2 = read_structures(write_structures([vr_follow], tmp_path / "rs2.dcm", frame_of_reference_uid=FOLLOW_UP))
    reg = read_registration(
        write_registration(tmp_path / "reg.dcm", registered_frame_uid=FRAME, source_frame_uid=FOLLOW_UP, matrix=matrix)
    )
    cases = [
        RecurrenceCase(GRID, planning_set((-2.0, 1.3, -0.7)), "Vr", RX, target_metrics=("PTV:D95",)),
        RecurrenceCase(GRID, planning_set((30.0, 30.0, 30.0)), "Vr", RX, rs2, reg, target_metrics=("PTV:D95",)),
    ]
    for case in cases:
        prepared = prepare_recurrence(case)
        assert all(r.known_vertex_extremes[0] is r.grid for r in prepared.requests)
        unknown = replace(prepared, requests=tuple(replace(r, known_vertex_extremes=None) for r in prepared.requests))
        [expected] = classify_prepared([unknown], backend=backend)  # interpolated where they are sampled
        assert expected.registered is (case.registration is not None)
        cropped = pickle.loads(pickle.dumps(cropped_to_samples(prepared)))  # as it travels to a GPU's process
        assert cropped.grid_cropped and all(r.vertices_dropped for r in cropped.requests)
        assert all(len(r.plan.vertex_points) == 0 for r in cropped.requests)

        def interpolated(*args, **kwargs):
            raise AssertionError("the vertices were interpolated again where the case is sampled")

        with monkeypatch.context() as patch:
            patch.setattr(sampling, "vertex_point_extremes", interpolated)
            [carried] = classify_prepared([prepared], backend=backend)
            [sent] = classify_prepared([cropped], backend=backend)
        got, want = carried.record(), expected.record()
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert value == got[key] or (isinstance(value, float) and math.isnan(value) and math.isnan(got[key])), key
        # On its cropped grid (sampled about another origin: the same doses, to the last bits of the arithmetic).
        numbers = {k for k, v in want.items() if isinstance(v, float)}
        assert {k: v for k, v in sent.record().items() if k not in numbers} == {
            k: v for k, v in want.items() if k not in numbers
        }
        assert {k: sent.record()[k] for k in numbers} == pytest.approx(
            {k: want[k] for k in numbers}, rel=1e-12, abs=1e-12, nan_ok=True
        )
        # A request that let go of its vertices knows their doses only on its own grid.
        request = cropped.requests[0]
        with pytest.raises(ValueError, match="only on its own grid"):
            replace(request, grid=GRID).vertex_extremes()
        with pytest.raises(ValueError, match="only on its own grid"):
            classify_prepared([replace(cropped, requests=(replace(request, grid=GRID), *cropped.requests[1:]))])
        with pytest.raises(ValueError, match="once their extremes are known"):
            unknown.requests[0].without_vertices()
        # Cases whose vertices' extremes are known sampled with one whose are not: each as alone.
        for mixed in classify_prepared([prepared, unknown], backend=backend):
            got = mixed.record()
            for key, value in want.items():
                same = value == got[key] or (isinstance(value, float) and math.isnan(value) and math.isnan(got[key]))
                assert same, key


def test_what_a_request_took_of_its_grid_is_taken_anew_for_other_transforms_or_plans():
    """The extremes a request took of its grid (at its vertices, inside its structures) hold for its own grid, plan
    and transforms: a copy of it with the structures moved, or another plan, takes them anew rather than reusing
    them (a sphere moved 15 mm along the gradient has its Dmin 15 Gy higher)."""
    from isodose.geometry import rigid_matrix
    from isodose.recurrence import prepare_recurrence
    from isodose.sampling import vertex_point_extremes

    prepared = prepare_recurrence(RecurrenceCase(GRID, planning_set((-2.0, 1.3, -0.7)), "Vr", RX))
    request = prepared.requests[0]
    assert request.known(request.known_vertex_extremes) is request.known_vertex_extremes[1]
    shift = rigid_matrix(translation_mm=(15.0, 0.0, 0.0))
    moved = replace(request, transforms=np.broadcast_to(shift, (request.plan.n_structures, 4, 4)).copy())
    assert moved.known(moved.known_vertex_extremes) is None and moved.known(moved.known_grid_extremes) is None
    expected = vertex_point_extremes(moved.plan, moved.structure_transforms(), moved.grid)
    assert np.array_equal(moved.vertex_extremes(), expected)
    assert moved.vertex_extremes()[0, 0] == pytest.approx(request.vertex_extremes()[0, 0] + 15.0)
    other_plan = replace(request, plan=replace(request.plan))
    assert other_plan.known(other_plan.known_vertex_extremes) is None
    dropped = request.without_vertices()
    assert dropped.known(dropped.known_vertex_extremes) is request.known_vertex_extremes[1]
    assert dropped.known(dropped.known_grid_extremes) is request.known_grid_extremes[1]
    with pytest.raises(ValueError, match="only on its own grid"):
        replace(dropped, transforms=moved.transforms).vertex_extremes()


def test_a_prepared_cases_targets_test_a_point_against_planes_and_masks_in_their_order():
    """The point-of-origin method's targets of a prepared case: contoured ones joined (one test for them all), label
    masks apart, names in order; iterated, each with its own planes or mask (as the draws of uncertainty use them)."""
    import pickle

    from isodose.geometry import PackedPlanes, structure_planes
    from isodose.recurrence import Targets

    big = PackedPlanes.of(structure_planes(contour_shape(Sphere((0.0, 0.0, 0.0), 20.0), "PTV", 1, 2.0)))
    small = PackedPlanes.of(structure_planes(contour_shape(Sphere((5.0, 0.0, 0.0), 4.0), "GTV", 2, 1.0)))
    box = Box((-30, -30, -1), (30, 30, 1))
    targets = pickle.loads(pickle.dumps(Targets.of([("PTV", big), ("slab", box), ("GTV", small)])))
    assert [name for name, _ in targets] == ["PTV", "slab", "GTV"] and len(targets) == 3
    shapes = dict(iter(targets))
    assert isinstance(shapes["slab"], Box) and np.array_equal(shapes["GTV"].vertices_mm, small.vertices_mm)
    assert targets.holding(np.array([5.0, 0.0, 0.2])) == ("PTV", "slab", "GTV")
    assert targets.holding(np.array([5.0, 0.0, 3.0])) == ("PTV", "GTV")
    assert targets.holding(np.array([-15.0, 0.0, 0.0])) == ("PTV", "slab")
    assert targets.holding(np.array([25.0, 25.0, 5.0])) == ()
    assert Targets().holding(np.zeros(3)) == () and list(Targets()) == []


class Box:
    """A label mask's test, as the targets use it: inside a box."""

    def __init__(self, low, high):
        self.low, self.high = np.asarray(low), np.asarray(high)

    def contain(self, points):
        points = np.asarray(points).reshape(-1, 3)
        return np.all((points >= self.low) & (points < self.high), axis=1)
