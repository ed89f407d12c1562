"""DICOM SEG as structures (isodose.dicom.seg, through highdicom): binary and fractional segments on their own
grid, as the same voxels given as a label image in memory; a SEG of unknown frame refused; folder discovery
picking a SEG up beside the planning RTSTRUCT."""

from __future__ import annotations

import math

import numpy as np
import pytest

from isodose.dvh import compute_dvhs
from isodose.errors import FrameOfReferenceError, StructureError
from isodose.model import LabelMask, Structure

from .test_backends_agree import assert_same_dvhs

pytest.importorskip("highdicom")

from isodose.dicom.seg import read_segmentation  # noqa: E402

from .segmentations import ct_series, seg_of  # noqa: E402

ORIGIN, SPACING = (-9.0, -7.5, -6.0), (1.1, 1.3, 1.7)


def masks():
    first = np.zeros((10, 12, 14), bool)
    first[2:6, 3:9, 2:7] = True
    second = np.zeros((10, 12, 14), bool)
    second[5:9, 2:5, 8:13] = True
    return first, second


@pytest.fixture(scope="module")
def grid():
    from isodose.phantoms import LinearField

    return LinearField(80.0, (0.6, -0.5, 0.62), (0.0, 0.0, 0.0)).grid(
        (-40.0, -40.0, -40.0), (2.5, 2.5, 2.5), (33, 33, 33), "1.2.3.4"
    )


def test_a_binary_seg_gives_its_segments_as_structures_on_its_grid(tmp_path, grid):
    first, second = masks()
    path = tmp_path / "seg.dcm"
    seg_of(ct_series(10, 12, 14, ORIGIN, SPACING), [first, second], ["GTV", "Cord"]).save_as(path)
    rois = read_segmentation(path)
    assert rois.names == ["GTV", "Cord"] and [s.number for s in rois.structures] == [1, 2]
    assert rois.frame_of_reference_uid == "1.2.3.4" and rois.patient_id == "P1"
    gtv = rois.get("GTV").mask
    assert gtv.is_axial and gtv.weights.shape == (4, 6, 5)
    assert gtv.origin_mm == pytest.approx((-9.0 + 2 * 1.1, -7.5 + 3 * 1.3, -6.0 + 2 * 1.7))
    in_memory = [
        Structure(name, k + 1, mask=LabelMask(m.astype(np.float32), ORIGIN, SPACING, np.eye(3)))
        for k, (name, m) in enumerate(zip(rois.names, (first, second)))
    ]
    assert_same_dvhs(compute_dvhs(grid, in_memory), compute_dvhs(grid, rois))


def test_a_fractional_seg_on_an_oblique_grid(tmp_path, grid):
    """Fractions (stored as 0 to 255) on CT slices tilted about x: the structure's voxels carry their fractions,
    and its axes are the slices' rows, columns and normal (in the order the SEG stacks them)."""
    tilt = 0.4
    orientation = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), math.sin(tilt))
    first, _ = masks()
    rng = np.random.default_rng(3)
    fractions = np.where(first, rng.uniform(0.2, 1.0, first.shape), 0.0).astype(np.float32)
    path = tmp_path / "fractional.dcm"
    seg_of(ct_series(10, 12, 14, ORIGIN, SPACING, orientation), [fractions], ["Soft"], fractional=True).save_as(path)
    [soft] = read_segmentation(path).structures
    stored = np.round(fractions * 255) / 255  # what the SEG holds
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    direction = np.column_stack([row, column, np.cross(row, column)])
    np.testing.assert_allclose(soft.mask.direction[:, :2], direction[:, :2], atol=1e-6)  # rows and columns
    np.testing.assert_allclose(np.abs(soft.mask.direction[:, 2] @ direction[:, 2]), 1.0, atol=1e-9)  # the slices'
    expected = LabelMask(stored.astype(np.float32), ORIGIN, SPACING, direction)
    assert soft.mask.volume_cc == pytest.approx(expected.volume_cc, rel=1e-5)
    assert_same_dvhs(compute_dvhs(grid, [Structure("Soft", 1, mask=expected)]), compute_dvhs(grid, [soft]))


def test_a_seg_of_unknown_frame_or_another_frame_is_refused_in_one_line(tmp_path, grid):
    first, _ = masks()
    seg = seg_of(ct_series(10, 12, 14, ORIGIN, SPACING), [first], ["GTV"])
    del seg.FrameOfReferenceUID
    seg.save_as(tmp_path / "noframe.dcm")
    with pytest.raises(StructureError, match="noframe.dcm: names no frame of reference"):
        read_segmentation(tmp_path / "noframe.dcm")
    seg_of(ct_series(10, 12, 14, ORIGIN, SPACING, frame="9.9.9"), [first], ["GTV"]).save_as(tmp_path / "other.dcm")
    with pytest.raises(FrameOfReferenceError, match="other.dcm: frame of reference 9.9.9 differs from the dose's"):
        compute_dvhs(grid, read_segmentation(tmp_path / "other.dcm"))
    (tmp_path / "plain.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    with pytest.raises(StructureError, match="plain.dcm: cannot be read as a DICOM SEG"):
        read_segmentation(tmp_path / "plain.dcm")


def test_folder_discovery_takes_a_recurrence_segmented_beside_the_planning_contours(tmp_path):
    """A patient folder holding the planning RTDOSE, RTPLAN and RTSTRUCT and a SEG of the recurrence on the
    planning frame: one case, its structures the RTSTRUCT and its recurrence the SEG's segment; and the cohort's
    record that of classifying the same voxels in Python."""
    from isodose.cohort.cases import discover_cases
    from isodose.cohort.runner import run_cohort
    from isodose.cohort.store import ResultStore
    from isodose.dicom.write import write_dose, write_plan, write_structures
    from isodose.phantoms import example_case
    from isodose.recurrence import classify_recurrence

    dose, structures = example_case()
    frame = structures.frame_of_reference_uid
    patient = tmp_path / "patient"
    patient.mkdir()
    write_dose(dose, patient / "RD.dcm", frame_of_reference_uid=frame)
    write_structures(structures, patient / "RS.dcm")
    write_plan(patient / "RP.dcm", prescription_gy=70.0, number_of_fractions=35, frame_of_reference_uid=frame)
    first, _ = masks()
    series = ct_series(10, 12, 14, (2.0, -9.0, -8.0), (1.5, 2.0, 2.5), frame=frame, patient="PHANTOM")
    seg_of(series, [first], ["Relapse"]).save_as(patient / "SEG.dcm")
    [case] = discover_cases(tmp_path, recurrence_roi="Relapse")
    assert case.problem == "" and case.structures.name == "RS.dcm" and case.recurrence_structures.name == "SEG.dcm"
    run_cohort(tmp_path, tmp_path / "out.h5", recurrence_roi="Relapse", workers=1, backend="numba")
    [entry] = ResultStore.open(tmp_path / "out.h5", create=False).cases()
    assert entry["status"] == "ok", entry
    expected = classify_recurrence(
        dose, structures, "Relapse", 70.0, recurrence_structures=read_segmentation(patient / "SEG.dcm")
    )
    assert entry["record"]["class_volume"] == expected.class_volume
    assert entry["record"]["inside_isodose_pct"] == pytest.approx(expected.inside_isodose_pct, abs=1e-6)
