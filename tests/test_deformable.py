"""Recurrences mapped through deformable registrations: DICOM Deformable Spatial Registrations and displacement
field images. References: closed forms (an affine field maps a sphere onto a sphere of known radius; a planar
isodose cuts it in a spherical cap), an independent integral of the Jacobian of a smooth field, the equivalent
matrix, SimpleITK's DisplacementFieldTransform, and the NumPy reference for the other backends."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from isodose import classify_recurrence
from isodose.cli import main
from isodose.deformation import Deformation, map_points
from isodose.dicom.read import read_registration
from isodose.dicom.write import (
    new_uid,
    write_deformable_registration,
    write_dose,
    write_plan,
    write_registration,
    write_structures,
)
from isodose.dispatch import Backend, resolve_backend
from isodose.errors import RegistrationError
from isodose.geometry import rigid_matrix
from isodose.model import DeformableRegistration, Registration, StructureSet
from isodose.phantoms import LinearField, Sphere, contour_shape

PLAN, FOLLOW_UP = "1.2.826.0.1.3680043.8.498.100", "1.2.826.0.1.3680043.8.498.200"
FIELD = LinearField(60.0, (0.0, -1.0, 0.0), (0.0, 0.0, 0.0))  # 60 Gy at y = 0, falling 1 Gy/mm towards +y
PRESCRIPTION = 60.0
RADIUS, CENTRE = 8.0, np.array([3.0, 2.0, 1.0])  # Vr on the follow-up images: 2.1 cc
GRID = np.arange(-30.0, 30.01, 2.5)  # the deformation's grid points along each axis, mm


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def planning():
    dose = FIELD.grid((-40.0, -40.0, -40.0), (2.5, 2.5, 2.5), (33, 33, 33), PLAN)
    ptv = contour_shape(Sphere((0.0, 0.0, 0.0), 15.0), "PTV", 1, 2.5)
    return dose, StructureSet((ptv,), PLAN)


def follow_up():
    vr = contour_shape(Sphere(tuple(CENTRE), RADIUS), "Vr", 1, 1.0, offset_mm=0.5)
    return StructureSet((vr,), FOLLOW_UP)


def grid_points() -> np.ndarray:
    z, y, x = np.meshgrid(GRID, GRID, GRID, indexing="ij")
    return np.stack([x, y, z], axis=-1)


def field_registration(map_fn, registered: str, source: str) -> DeformableRegistration:
    """The deformation ``p -> map_fn(p)`` from ``registered`` into ``source`` as vectors at the grid points."""
    points = grid_points()
    vectors = (map_fn(points) - points).astype(np.float32)
    return DeformableRegistration(registered, source, vectors, (GRID[0],) * 3, np.eye(3), (2.5, 2.5, 2.5))


SCALE, ABOUT, SHIFT = 1.2, np.array([-1.0, 0.5, 0.0]), np.array([1.0, -2.0, 0.5])


def affine_forward(p):
    """Follow-up into planning: a uniform scaling by SCALE about ABOUT, then SHIFT."""
    return ABOUT + SCALE * (p - ABOUT) + SHIFT


def affine_inverse(p):
    return ABOUT + (p - ABOUT - SHIFT) / SCALE


def cap_share_pct(centre_y: float, radius: float, isodose_gy: float) -> float:
    """The share (%) of a sphere inside the isodose of FIELD: the cap below the plane y = 60 - isodose."""
    h = (60.0 - isodose_gy) - (centre_y - radius)
    h = min(max(h, 0.0), 2 * radius)
    return 100.0 * (math.pi * h * h * (3 * radius - h) / 3) / (4 / 3 * math.pi * radius**3)


def classify(registration, backend="numba", criteria=None):
    dose, structures = planning()
    return classify_recurrence(
        dose,
        structures,
        "Vr",
        PRESCRIPTION,
        recurrence_structures=follow_up(),
        registration=registration,
        backend=backend,
        criteria=criteria,
    )


# --------------------------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stored", ["follow-up to planning", "planning to follow-up"])
def test_an_affine_field_maps_a_sphere_onto_the_sphere_of_known_radius(stored):
    """The field stored either way (registered in the follow-up frame, carried forward; or registered in the
    planning frame, the usual export, inverted per sample): the mapped Vr is the sphere of radius SCALE x RADIUS
    about the mapped centre, whose share inside the 95% isodose is a spherical cap."""
    if stored == "follow-up to planning":
        registration = field_registration(affine_forward, FOLLOW_UP, PLAN)
    else:
        registration = field_registration(affine_inverse, PLAN, FOLLOW_UP)
    result = classify(registration)
    radius = SCALE * RADIUS
    centre = affine_forward(CENTRE)
    assert result.recurrence_volume_cc == pytest.approx(4 / 3 * math.pi * radius**3 / 1000, rel=0.005)
    assert result.inside_isodose_pct == pytest.approx(cap_share_pct(centre[1], radius, 0.95 * PRESCRIPTION), abs=0.3)
    assert np.allclose(result.centroid_mm, centre, atol=0.05)
    assert result.registration_kind == "dicom" and result.registered and not result.warnings
    if stored == "planning to follow-up":
        assert result.registration_residual_mm < 1e-6 and "registration_residual_mm" in result.record()
    else:
        assert math.isnan(result.registration_residual_mm)


def test_the_same_answer_comes_from_the_equivalent_matrix():
    """The affine map as a field, and as the pre-deformation matrix of a deformation of zero: the same mapping
    (trilinear interpolation reproduces an affine field), so the same numbers; a translation as a field, and as a
    rigid REG through the rigid path."""
    as_field = classify(field_registration(affine_forward, FOLLOW_UP, PLAN))
    affine = np.eye(4)
    affine[:3, :3] = SCALE * np.eye(3)
    affine[:3, 3] = ABOUT + SHIFT - SCALE * ABOUT
    zero = field_registration(lambda p: p, FOLLOW_UP, PLAN)
    as_matrix = classify(DeformableRegistration(**{**zero.__dict__, "pre_matrix": affine}))
    assert as_matrix.recurrence_volume_cc == pytest.approx(as_field.recurrence_volume_cc, rel=1e-6)
    assert as_matrix.inside_isodose_pct == pytest.approx(as_field.inside_isodose_pct, abs=1e-4)
    unmoved = classify(zero)  # no deformation at all: the deformable path's numbers are the rigid path's
    identity = classify(Registration(PLAN, {FOLLOW_UP: np.eye(4)}))
    # (sampled more coarsely in the plane: deformation.DEFORMED_CELL_SHARE)
    assert unmoved.inside_isodose_pct == pytest.approx(identity.inside_isodose_pct, abs=0.05)
    assert unmoved.recurrence_volume_cc == pytest.approx(identity.recurrence_volume_cc, rel=2e-4)
    shift = np.array([2.0, -3.0, 1.5])
    translated = classify(field_registration(lambda p: p + shift, FOLLOW_UP, PLAN))
    rigid = classify(Registration(PLAN, {FOLLOW_UP: rigid_matrix(translation_mm=tuple(shift))}))
    assert rigid.registration_kind == "rigid"
    assert translated.recurrence_volume_cc == pytest.approx(rigid.recurrence_volume_cc, rel=2e-4)
    assert translated.inside_isodose_pct == pytest.approx(rigid.inside_isodose_pct, abs=0.3)
    assert translated.class_volume == rigid.class_volume and translated.class_centroid == rigid.class_centroid


def test_the_standards_order_matrices_and_offsets():
    """PS3.3 C.20.3.1.1: the pre-deformation matrix first, then the offsets, then the post-deformation matrix,
    F(p) = post (pre p + d). With pre a scaling by 1.2, d a constant 5 mm along x and post a shift of 2 mm along y,
    Vr's centre c goes to 1.2 c + (5, 2, 0); another order would put it elsewhere (1.2 (c + d) + post: 1 mm off)."""
    pre = np.diag([1.2, 1.2, 1.2, 1.0])
    post = rigid_matrix(translation_mm=(0.0, 2.0, 0.0))
    offsets = field_registration(lambda p: p + np.array([5.0, 0.0, 0.0]), FOLLOW_UP, PLAN)
    registration = DeformableRegistration(**{**offsets.__dict__, "pre_matrix": pre, "post_matrix": post})
    result = classify(registration)
    assert np.allclose(result.centroid_mm, 1.2 * CENTRE + np.array([5.0, 2.0, 0.0]), atol=0.05)
    unmapped = classify(Registration(PLAN, {FOLLOW_UP: np.eye(4)})).recurrence_volume_cc
    assert result.recurrence_volume_cc == pytest.approx(1.2**3 * unmapped, rel=2e-4)


AMPLITUDE, WAVELENGTH = 1.5, 24.0  # a sinusoidal displacement along x: |grad| < 0.4, invertible


def sinusoid(p):
    out = np.array(p, dtype=np.float64, copy=True)
    out[..., 0] += AMPLITUDE * np.sin(2 * math.pi * p[..., 0] / WAVELENGTH)
    return out


def test_a_smooth_field_scales_the_volume_by_the_integral_of_its_jacobian():
    """Independently of the kernels: the field's x component is piecewise linear in x between grid points (it
    does not vary in y or z), so det J = 1 + (d[i+1] - d[i]) / h on cell i; integrated over the sphere's slices
    (area pi (R^2 - (x - cx)^2)), it gives the mapped volume over the unmapped one."""
    registration = field_registration(sinusoid, FOLLOW_UP, PLAN)
    mapped = classify(registration).recurrence_volume_cc
    unmapped = classify(Registration(PLAN, {FOLLOW_UP: np.eye(4)})).recurrence_volume_cc
    d = AMPLITUDE * np.sin(2 * math.pi * GRID / WAVELENGTH)
    x = np.linspace(CENTRE[0] - RADIUS, CENTRE[0] + RADIUS, 400_001)
    cell = np.clip(np.searchsorted(GRID, x, side="right") - 1, 0, len(GRID) - 2)
    det = 1.0 + (d[cell + 1] - d[cell]) / (GRID[1] - GRID[0])
    area = math.pi * np.clip(RADIUS**2 - (x - CENTRE[0]) ** 2, 0.0, None)
    ratio = np.trapezoid(det * area, x) / np.trapezoid(area, x)
    assert ratio != pytest.approx(1.0, abs=0.01)  # the field does change the volume
    assert mapped / unmapped == pytest.approx(ratio, rel=1e-3)


def test_forward_then_inverse_returns_the_points():
    registration = field_registration(sinusoid, FOLLOW_UP, PLAN)
    backend = resolve_backend("numba")
    points = np.random.default_rng(7).uniform(-20.0, 20.0, size=(5000, 3))
    forward = map_points(Deformation.between(registration, FOLLOW_UP, PLAN), points, backend)
    back = map_points(Deformation.between(registration, PLAN, FOLLOW_UP), forward.points_mm, backend)
    assert np.abs(back.points_mm - points).max() < 0.1 and back.residual_mm < 1e-5
    assert np.allclose(back.jacobian_det * forward.jacobian_det, 1.0, atol=1e-6)


def test_the_field_moves_points_as_simpleitk_does(tmp_path):
    """An oblique field written as an image and read back: isodose's map of test points and ITK's
    DisplacementFieldTransform agree within 1e-3 mm."""
    sitk = pytest.importorskip("SimpleITK")
    from isodose.images import read_displacement_field, write_displacement_field

    rng = np.random.default_rng(3)
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rotation *= np.sign(np.linalg.det(rotation))
    vectors = rng.normal(scale=2.0, size=(9, 10, 11, 3)).astype(np.float32)
    field = DeformableRegistration(PLAN, FOLLOW_UP, vectors, (5.0, -3.0, 2.0), rotation, (2.5, 2.0, 3.0))
    path = write_displacement_field(tmp_path / "warp.nii.gz", field)
    read = read_displacement_field(path, fixed_frame_uid=PLAN, moving_frame_uid=FOLLOW_UP)
    index = rng.uniform(0.5, 7.5, size=(500, 3))
    points = np.asarray(read.grid_origin_mm) + (index * read.grid_spacing_mm) @ np.asarray(read.grid_directions).T
    ours = map_points(Deformation.between(read, PLAN, FOLLOW_UP), points, resolve_backend("numba")).points_mm
    transform = sitk.DisplacementFieldTransform(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))
    theirs = np.array([transform.TransformPoint(tuple(p)) for p in points])
    assert np.abs(ours - theirs).max() < 1e-3


def test_backends_agree_with_the_reference(emulated_gpu):
    registration = field_registration(affine_inverse, PLAN, FOLLOW_UP)
    reference = classify(registration, backend="numpy")
    numba = classify(registration, backend="numba")
    gpu = classify(registration, backend=Backend("cupy (emulated)", emulated_gpu.device, emulated_gpu))
    assert numba.recurrence_volume_cc == pytest.approx(reference.recurrence_volume_cc, rel=1e-6)
    assert gpu.recurrence_volume_cc == pytest.approx(reference.recurrence_volume_cc, rel=1e-5)
    for result in (numba, gpu):
        assert result.inside_isodose_pct == pytest.approx(reference.inside_isodose_pct, abs=1e-3)
        assert np.allclose(result.centroid_mm, reference.centroid_mm, atol=1e-4)


def test_points_that_leave_the_field_count_as_outside_with_a_warning():
    small = DeformableRegistration(
        FOLLOW_UP, PLAN, np.zeros((4, 4, 4, 3), np.float32), (0.0, 0.0, 0.0), np.eye(3), (2.5, 2.5, 2.5)
    )  # covers 0..7.5 mm: part of Vr only
    result = classify(small)
    assert result.recurrence_outside_dose_cc > 0.5
    assert any("map outside the deformation's grid" in w for w in result.warnings)


# --------------------------------------------------------------------------------------------------------
# Reading DICOM Deformable Spatial Registrations
# --------------------------------------------------------------------------------------------------------
def test_a_deformable_registration_round_trips_through_dicom(tmp_path):
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    vectors = np.random.default_rng(0).normal(size=(4, 5, 6, 3)).astype(np.float32)
    pre = rigid_matrix(translation_mm=(1.0, 0.0, 0.0))
    written = DeformableRegistration(
        PLAN, FOLLOW_UP, vectors, (1.0, 2.0, 3.0), rotation, (2.0, 2.5, 3.0), pre_matrix=pre
    )
    path = write_deformable_registration(tmp_path / "REG.dcm", written, patient_id="P1")
    read = read_registration(path)
    assert isinstance(read, DeformableRegistration) and read.kind == "dicom" and read.patient_id == "P1"
    assert (read.registered_frame_uid, read.source_frame_uid) == (PLAN, FOLLOW_UP)
    assert np.array_equal(read.vectors_mm, vectors) and np.allclose(read.grid_directions, rotation)
    assert read.grid_spacing_mm == (2.0, 2.5, 3.0) and np.allclose(read.pre_matrix, pre)
    assert np.allclose(read.post_matrix, np.eye(4))


def damaged(tmp_path, damage) -> Path:
    registration = field_registration(affine_forward, FOLLOW_UP, PLAN)
    path = write_deformable_registration(tmp_path / "REG.dcm", registration)
    ds = dcmread(path)
    damage(ds.DeformableRegistrationSequence[1])
    ds.save_as(path)
    return path


def _vectors(item, values):
    item.DeformableRegistrationGridSequence[0].VectorGridData = np.asarray(values, "<f4").tobytes()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda i: _vectors(i, np.zeros(30)), "VectorGridData holds 30 values; GridDimensions 25 x 25 x 25 need"),
        (lambda i: _vectors(i, np.full(3 * 25**3, np.inf)), "holds infinite values"),
        (lambda i: _vectors(i, [np.nan, 0.0, 0.0] * 25**3), "only partly NaN"),
        (
            lambda i: delattr(i.PreDeformationMatrixRegistrationSequence[0], "FrameOfReferenceTransformationMatrix"),
            "PreDeformationMatrixRegistrationSequence: its FrameOfReferenceTransformationMatrix is missing",
        ),
        (
            lambda i: setattr(i.DeformableRegistrationGridSequence[0], "GridResolution", [2.5, 0.0, 2.5]),
            "GridResolution [2.5, 0.0, 2.5] is not positive",
        ),
        (lambda i: delattr(i, "SourceFrameOfReferenceUID"), "names no SourceFrameOfReferenceUID"),
    ],
)
def test_a_malformed_deformable_registration_is_a_one_line_error_naming_the_item(tmp_path, damage, message):
    path = damaged(tmp_path, damage)
    with pytest.raises(RegistrationError, match=re.escape(message)) as raised:
        read_registration(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)
    assert "deformable registration item 2" in str(raised.value) or "SourceFrame" in message


def test_a_registration_that_does_not_relate_the_cases_frames_is_refused():
    elsewhere = field_registration(affine_forward, FOLLOW_UP, "1.2.3.4")
    with pytest.raises(RegistrationError, match="not the recurrence's frame"):
        classify(elsewhere)


# --------------------------------------------------------------------------------------------------------
# Everywhere: the command line, manifests, folders, the store
# --------------------------------------------------------------------------------------------------------
def write_case(folder: Path, registration: DeformableRegistration | None, *, patient="P1"):
    """A case in two frames: the planning dose, RTSTRUCT and RTPLAN; the follow-up RTSTRUCT holding Vr; and the
    registration, as a Deformable Spatial Registration."""
    folder.mkdir(parents=True, exist_ok=True)
    dose, structures = planning()
    plan_uid = new_uid()
    rd = write_dose(
        dose, folder / "RD.dcm", patient_id=patient, frame_of_reference_uid=PLAN, referenced_plan_uid=plan_uid
    )
    rs = write_structures(structures, folder / "RS.dcm", patient_id=patient, frame_of_reference_uid=PLAN)
    rp = write_plan(
        folder / "RP.dcm",
        prescription_gy=PRESCRIPTION,
        number_of_fractions=30,
        patient_id=patient,
        frame_of_reference_uid=PLAN,
        sop_instance_uid=plan_uid,
    )
    fu = write_structures(follow_up(), folder / "RS.followup.dcm", patient_id=patient, frame_of_reference_uid=FOLLOW_UP)
    reg = write_deformable_registration(folder / "REG.dcm", registration, patient_id=patient) if registration else None
    return rd, rs, rp, fu, reg


def test_classify_takes_a_deformable_reg_or_a_field_image(tmp_path, capsys):
    registration = field_registration(affine_inverse, PLAN, FOLLOW_UP)
    rd, rs, rp, fu, reg = write_case(tmp_path, registration)
    arguments = [
        "classify",
        "--dose",
        rd,
        "--structures",
        rs,
        "--plan",
        rp,
        "--recurrence",
        "Vr",
        "--recurrence-structures",
        fu,
        "--format",
        "json",
    ]
    code, out, err = run(capsys, *arguments, "--registration", reg)
    assert code == 0, err
    record = json.loads(out)
    assert record["registration_kind"] == "dicom" and record["registration_file"] == str(reg)
    expected = cap_share_pct(affine_forward(CENTRE)[1], SCALE * RADIUS, 0.95 * PRESCRIPTION)
    assert record["inside_isodose_pct"] == pytest.approx(expected, abs=0.3)
    pytest.importorskip("SimpleITK")
    from isodose.images import write_displacement_field

    image = write_displacement_field(tmp_path / "warp.mha", registration)
    code, _, err = run(capsys, *arguments, "--registration", image)
    assert code == 2 and "say which image was fixed" in err and err.count("\n") == 1
    code, out, err = run(capsys, *arguments, "--registration", image, "--field-fixed", "planning")
    assert code == 0, err
    from_image = json.loads(out)
    assert from_image["registration_kind"] == "field"
    assert from_image["inside_isodose_pct"] == pytest.approx(record["inside_isodose_pct"], abs=1e-6)
    # Said the wrong way round, the field relates the frames backwards: the share changes, and is not the truth.
    code, out, _ = run(capsys, *arguments, "--registration", image, "--field-fixed", "follow-up")
    assert code == 0 and abs(json.loads(out)["inside_isodose_pct"] - expected) > 1.0


def test_cohorts_map_through_deformations_from_manifests_and_folders(tmp_path, capsys):
    registration = field_registration(affine_inverse, PLAN, FOLLOW_UP)
    folder = tmp_path / "cohort"
    write_case(folder / "p1", registration, patient="P1")
    rd, rs, rp, fu, _ = write_case(folder / "p2", None, patient="P2")
    write_registration(
        folder / "p2" / "REG.rigid.dcm",
        registered_frame_uid=PLAN,
        source_frame_uid=FOLLOW_UP,
        matrix=np.eye(4),
        patient_id="P2",
    )
    out = tmp_path / "r.h5"
    code, _, err = run(
        capsys, "cohort", "run", folder, "--out", out, "--recurrence-roi", "Vr", "--no-progress", "--workers", "1"
    )
    assert code == 0, err
    rows = {r["case_id"]: r for r in csv.DictReader(out.with_suffix(".csv").open())}
    assert rows["P1"]["registration_kind"] == "dicom" and rows["P2"]["registration_kind"] == "rigid"
    assert rows["P1"]["registration_file"].endswith("REG.dcm")
    expected = cap_share_pct(affine_forward(CENTRE)[1], SCALE * RADIUS, 0.95 * PRESCRIPTION)
    assert float(rows["P1"]["inside_isodose_pct"]) == pytest.approx(expected, abs=0.3)
    pytest.importorskip("SimpleITK")
    from isodose.images import write_displacement_field

    image = write_displacement_field(tmp_path / "warp.nii.gz", registration)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,registration,"
        f"registration_fixed\nf1,{rd},{rs},{rp},,Vr,{fu},{image},planning\n"
    )
    code, _, err = run(capsys, "cohort", "run", manifest, "--out", tmp_path / "m.h5", "--no-progress", "--workers", "1")
    assert code == 0, err
    [row] = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert row["registration_kind"] == "field" and float(row["inside_isodose_pct"]) == pytest.approx(expected, abs=0.3)
