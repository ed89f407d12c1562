"""The recurrence as mapped onto the planning frame, exported as an RTSTRUCT (isodose.mapped) and read back: the
same class and a volume within 2% of the mapped recurrence's, in the planning frame (its frame, patient and study
the planning ones), for contours and masks, through rigid and deformable registrations; and the command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isodose.dicom.read import read_structures
from isodose.geometry import rigid_matrix
from isodose.model import LabelMask, Registration, Structure, StructureSet
from isodose.phantoms import Sphere, contour_shape, example_case
from isodose.recurrence import classify_recurrence

pytest.importorskip("skimage")

from isodose.mapped import export_recurrence  # noqa: E402

from .test_deformable import (  # noqa: E402
    FOLLOW_UP,
    PLAN,
    PRESCRIPTION,
    affine_inverse,
    field_registration,
    follow_up,
    planning,
)


def round_trip(tmp_path, dose, structures, roi, prescription, **mapping):
    """The case's result, and the result of classifying the exported recurrence read back in the planning frame."""
    result = classify_recurrence(dose, structures, roi, prescription, **mapping)
    path = export_recurrence(tmp_path / "RS_mapped.dcm", dose, structures, roi, name="Mapped", **mapping)
    exported = read_structures(path)
    assert exported.names == ["Mapped"] and exported.frame_of_reference_uid == dose.frame_of_reference_uid
    assert exported.patient_id == (structures.patient_id or dose.patient_id or "UNKNOWN")
    joined = StructureSet(structures.structures + exported.structures, structures.frame_of_reference_uid)
    back = classify_recurrence(dose, joined, "Mapped", prescription)
    return result, back


def assert_round_trip(result, back):
    assert back.class_volume == result.class_volume and back.class_centroid == result.class_centroid
    assert back.recurrence_volume_cc == pytest.approx(result.recurrence_volume_cc, rel=0.02)
    assert back.inside_isodose_pct == pytest.approx(result.inside_isodose_pct, abs=2.0)
    assert not back.registered


def test_a_recurrence_in_the_planning_frame_round_trips(tmp_path):
    dose, structures = example_case()
    assert_round_trip(*round_trip(tmp_path, dose, structures, "Recurrence", 70.0))


def test_a_follow_up_recurrence_through_a_rigid_registration_round_trips(tmp_path):
    dose, structures = example_case()
    shift = (6.0, -4.0, 3.0)
    vr = contour_shape(Sphere((5.0 - shift[0], -shift[1], -shift[2]), 11.0), "Vr", 9, 2.0)
    registration = Registration(dose.frame_of_reference_uid, {"9.8.7": rigid_matrix(translation_mm=shift)})
    result, back = round_trip(
        tmp_path, dose, structures, "Vr", 70.0, recurrence_structures=StructureSet((vr,), "9.8.7"),
        registration=registration,
    )  # fmt: skip
    assert result.registered and 5 < result.inside_isodose_pct < 95
    assert_round_trip(result, back)


def test_a_follow_up_recurrence_through_a_deformation_round_trips(tmp_path):
    """The deformable case's affine field (a scaling by 1.2 and a shift), stored planning to follow-up: the
    exported contours are those of the scaled sphere."""
    dose, structures = planning()
    registration = field_registration(affine_inverse, PLAN, FOLLOW_UP)
    result, back = round_trip(
        tmp_path, dose, structures, "Vr", PRESCRIPTION, recurrence_structures=follow_up(), registration=registration
    )
    assert result.registration_kind == "dicom"
    assert_round_trip(result, back)


def test_a_recurrence_mask_round_trips(tmp_path):
    dose, structures = example_case()
    values = np.zeros((14, 16, 18), np.float32)
    k, j, i = np.indices(values.shape)
    values[(i - 9) ** 2 + ((j - 8) * 1.2) ** 2 + ((k - 7) * 1.4) ** 2 <= 36] = 1.0  # an ellipsoid of 1 mm voxels
    mask = LabelMask(values, (-1.0, -5.0, -7.0), (1.0, 1.0, 1.0), np.eye(3))
    vr = StructureSet((Structure("Vr", 1, mask=mask),))
    result, back = round_trip(tmp_path, dose, structures, "Vr", 70.0, recurrence_structures=vr)
    assert 20 < result.inside_isodose_pct < 80
    assert_round_trip(result, back)


def test_the_classify_command_exports_the_mapped_recurrence(tmp_path, capsys):
    from isodose.cli import main
    from isodose.dicom.write import write_dose, write_structures

    dose, structures = example_case()
    rd = write_dose(dose, tmp_path / "RD.dcm", frame_of_reference_uid=structures.frame_of_reference_uid)
    rs = write_structures(structures, tmp_path / "RS.dcm")
    out = tmp_path / "RS_mapped.dcm"
    argv = ["classify", "--dose", rd, "--structures", rs, "--recurrence", "Recurrence", "--prescription", "70"]
    assert main([str(a) for a in [*argv, "--format", "json", "--export-recurrence", out]]) == 0
    record = json.loads(capsys.readouterr().out)
    [mapped] = read_structures(out).structures
    assert mapped.name == "Recurrence" and len(mapped.contours) >= 3
    joined = StructureSet(
        tuple(s for s in structures.structures if s.name != "Recurrence") + (mapped,), structures.frame_of_reference_uid
    )
    back = classify_recurrence(dose, joined, "Recurrence", 70.0)
    assert back.class_volume == record["class_volume"]
    assert back.recurrence_volume_cc == pytest.approx(record["recurrence_volume_cc"], rel=0.02)
    assert main([str(a) for a in [*argv, "--export-recurrence", tmp_path]]) == 2
    assert "--export-recurrence" in capsys.readouterr().err
