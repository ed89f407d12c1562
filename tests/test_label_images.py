"""Structures from label images (isodose.labels): each voxel a box of the image's own geometry, weighted by its
value. References: the closed-form DVH of weighted boxes in a linear field (the voxelised shape, exact), the
smooth sphere the voxels approach as they shrink, the other backends, and files written and read back through
SimpleITK in each format."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from isodose.dispatch import Backend
from isodose.dvh import compute_dvhs
from isodose.errors import StructureError
from isodose.model import LabelMask, Structure, StructureSet
from isodose.phantoms import LinearField, Sphere, mask_truth, shape_truth

from .test_backends_agree import assert_same_dvhs
from .test_dvh_analytic import _compare

pytest.importorskip("SimpleITK")

from isodose.labels import read_label_image, read_label_names, write_label_image  # noqa: E402

FIELD = LinearField(80.0, (0.6, -0.5, 0.62), (0.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def grid():
    return FIELD.grid((-40.0, -40.0, -40.0), (2.5, 2.5, 2.5), (33, 33, 33), "1.2.3")


def rotation(a: float, b: float) -> np.ndarray:
    """An oblique orthonormal direction matrix: ``a`` about z after ``b`` about x."""
    about_z = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return about_z @ about_x


def box_mask(direction=None, fractional=False, seed=1) -> LabelMask:
    weights = np.zeros((12, 14, 16), np.float32)
    rng = np.random.default_rng(seed)
    weights[2:10, 3:11, 2:14] = rng.uniform(0.2, 1.0, (8, 8, 12)) if fractional else 1.0
    axes = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    return LabelMask(weights, (-8.0, -6.0, -9.0), (1.2, 1.0, 1.5), axes)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize(
    ("direction", "fractional"),
    [(np.eye(3), False), (np.eye(3), True), (rotation(0.5, 0.3), False), (rotation(-1.1, 0.7), True)],
    ids=["axial box", "axial fractions", "oblique box", "oblique fractions"],
)
def test_a_label_image_gives_the_exact_dvh_of_its_voxels(grid, backend, direction, fractional):
    """A box of voxels (each weighted 1, or by a fraction) in a linear field, axial and oblique: volume, Dmean,
    Dmin, Dmax, D99 to D1, D0.03cc and V at three doses against the closed form of its weighted voxel boxes."""
    mask = box_mask(direction, fractional)
    [dvh] = compute_dvhs(grid, [Structure("mask", 1, mask=mask)], backend=backend)
    truth = mask_truth(mask, FIELD)
    assert dvh.volume_cc == pytest.approx(mask.volume_cc, rel=1e-9)
    _compare(dvh, truth, volume_rtol=1e-9, dose_atol=0.005)
    assert dvh.dmean_gy == pytest.approx(truth.dmean_gy, abs=1e-6)


def test_every_backend_computes_the_same_dvhs_of_label_images(grid, emulated_gpu):
    masks = [box_mask(), box_mask(rotation(0.5, 0.3), True)]
    structures = [Structure(f"m{k}", k + 1, mask=m) for k, m in enumerate(masks)]
    reference = compute_dvhs(grid, structures, backend="numpy")
    assert_same_dvhs(reference, compute_dvhs(grid, structures, backend="numba"))
    gpu = Backend("cupy (emulated)", emulated_gpu.device, emulated_gpu)
    assert_same_dvhs(reference, compute_dvhs(grid, structures, backend=gpu))


def sphere_mask(sphere: Sphere, voxel_mm: float) -> LabelMask:
    n = int(math.ceil(2 * (sphere.radius_mm + 2) / voxel_mm))
    origin = np.asarray(sphere.centre_mm) - (sphere.radius_mm + 2)
    k, j, i = np.indices((n, n, n)).astype(np.float64)
    x, y, z = (origin[a] + index * voxel_mm for a, index in enumerate((i, j, k)))
    centre = sphere.centre_mm
    inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= sphere.radius_mm**2
    return LabelMask(inside.astype(np.float32), tuple(origin), (voxel_mm,) * 3, np.eye(3))  # type: ignore[arg-type]


def test_a_sphere_mask_approaches_the_sphere_as_its_voxels_shrink(grid):
    """Sphere masks of 1, 0.5 and 0.25 mm voxels against the smooth sphere: the dose metrics' error shrinks, and at
    0.25 mm the volume is within 0.2% and the metrics within 0.01 Gy."""
    sphere = Sphere((1.3, -2.1, 0.7), 15.0)
    truth = shape_truth(sphere, FIELD)
    errors = []
    for voxel in (1.0, 0.5, 0.25):
        [dvh] = compute_dvhs(grid, [Structure("s", 1, mask=sphere_mask(sphere, voxel))], backend="numba")
        errors.append(max(abs(dvh.metric(f"D{p}") - truth.dose_at_percent(p)) for p in (99, 95, 50, 5, 1)))
        volume_error = abs(dvh.volume_cc - truth.volume_mm3 / 1000) / (truth.volume_mm3 / 1000)
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.01 and volume_error < 2e-3
    assert dvh.dmean_gy == pytest.approx(truth.dmean_gy, abs=1e-3)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_a_multi_label_map_reads_back_with_its_geometry_in_every_format(tmp_path, grid, suffix):
    """Labels 1 and 2 of an oblique image, written by SimpleITK and read back: their names from a JSON table, each
    label cropped to its voxels with the origin moved along the image's own axes, and the DVHs of the masks as
    made in memory."""
    direction = rotation(0.4, -0.2)
    values = np.zeros((10, 12, 14), np.uint8)
    values[2:6, 3:9, 2:7] = 1
    values[5:9, 2:5, 8:13] = 2
    path = write_label_image(
        tmp_path / f"rois{suffix}",
        values,
        origin_mm=(-9.0, -7.5, -6.0),
        spacing_mm=(1.1, 1.3, 1.7),
        direction=direction,
    )
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"1": "GTV", "2": "Cord"}))
    rois = read_label_image(path, names=names, frame_of_reference_uid="1.2.3")
    assert rois.names == ["GTV", "Cord"] and rois.frame_of_reference_uid == "1.2.3"
    gtv = rois.get("GTV").mask
    np.testing.assert_allclose(gtv.direction, direction, atol=1e-6)
    assert gtv.weights.shape == (4, 6, 5) and gtv.spacing_mm == pytest.approx((1.1, 1.3, 1.7))
    expected_origin = np.array([-9.0, -7.5, -6.0]) + direction @ (np.array([2, 3, 2]) * [1.1, 1.3, 1.7])
    np.testing.assert_allclose(gtv.origin_mm, expected_origin, atol=1e-5)
    whole = [
        LabelMask((values == k).astype(np.float32), (-9.0, -7.5, -6.0), (1.1, 1.3, 1.7), direction) for k in (1, 2)
    ]
    in_memory = compute_dvhs(grid, [Structure(n, k + 1, mask=m) for k, (n, m) in enumerate(zip(rois.names, whole))])
    assert_same_dvhs(in_memory, compute_dvhs(grid, rois))


def test_binary_and_fractional_maps_take_the_files_name_and_slicer_names_are_read(tmp_path):
    values = np.zeros((5, 6, 7), np.uint8)
    values[1:4, 2:5, 1:6] = 1
    [gtv] = read_label_image(write_label_image(tmp_path / "GTVp.nii.gz", values)).structures
    assert gtv.name == "GTVp" and gtv.mask.volume_cc == pytest.approx(0.045)
    fractions = values * np.float32(0.4)
    [soft] = read_label_image(write_label_image(tmp_path / "prob.seg.nrrd", fractions)).structures
    assert soft.name == "prob" and soft.mask.volume_cc == pytest.approx(0.4 * 0.045, rel=1e-6)
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(values * np.uint8(3))
    image.SetMetaData("Segment0_Name", "Parotid_L")
    image.SetMetaData("Segment0_LabelValue", "3")
    sitk.WriteImage(image, str(tmp_path / "slicer.seg.nrrd"))
    assert read_label_image(tmp_path / "slicer.seg.nrrd").names == ["Parotid_L"]
    csv_names = tmp_path / "names.csv"
    csv_names.write_text("label,name\n3,Parotid_R\n")
    assert read_label_names(csv_names) == {3: "Parotid_R"}
    assert read_label_image(tmp_path / "slicer.seg.nrrd", names=csv_names).names == ["Parotid_R"]


def _bad(tmp_path, name, values, **kwargs):
    return write_label_image(tmp_path / name, values, **kwargs)


@pytest.mark.parametrize(
    ("values", "options", "message"),
    [
        (np.zeros((4, 4, 4), np.uint8), {}, "holds no voxel inside: every voxel is 0"),
        (np.ones((4, 4, 4), np.uint8), {}, "every voxel inside \\(all ones\\)"),
        (np.full((4, 4, 4), 0.5, np.float32) * [1, 1, 1, np.nan], {}, "not finite"),
        (np.full((4, 4, 4), 1.5, np.float32) * [1, 1, 1, 0.5], {}, "with values from 0.75 to 1.5; fractions"),
        (
            np.eye(4, dtype=np.uint8)[None].repeat(4, 0),
            {"labels": [2]},
            "holds no voxel of label 2 \\(its labels: 1\\)",
        ),
        (np.eye(4, dtype=np.uint8)[None].repeat(4, 0), {"names": {1: "A", 5: "B"}}, "no voxel of label 5"),
        (np.full((4, 4, 4), -1, np.int16), {}, "negative label -1"),
    ],
    ids=["empty", "all ones", "not finite", "fraction out of range", "label asked", "label named", "negative"],
)
def test_bad_label_images_are_one_line_errors_naming_the_file(tmp_path, values, options, message):
    path = _bad(tmp_path, "bad.nrrd", values)
    with pytest.raises(StructureError, match=message) as caught:
        read_label_image(path, **options)
    text = str(caught.value)
    assert "bad.nrrd" in text and "\n" not in text


def test_a_sheared_direction_matrix_is_refused(tmp_path):
    """A direction matrix whose axes are not perpendicular unit vectors (MetaImage stores it as given)."""
    values = np.eye(4, dtype=np.uint8)[None].repeat(4, 0)
    path = write_label_image(tmp_path / "sheared.mha", values)
    text = path.read_bytes().replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 0.3 1 0 0 0 1")
    path.write_bytes(text)
    with pytest.raises(StructureError, match="sheared.mha: .*direction matrix is not orthonormal"):
        read_label_image(path)


def test_files_that_are_not_label_images_are_one_line_errors(tmp_path):
    with pytest.raises(StructureError, match="no such label image"):
        read_label_image(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(StructureError, match="junk.nii.gz: cannot be read as an image"):
        read_label_image(tmp_path / "junk.nii.gz")
    (tmp_path / "names.json").write_text("[1, 2]")
    with pytest.raises(StructureError, match="must be a JSON object"):
        read_label_names(tmp_path / "names.json")


def test_the_dvh_command_takes_a_label_image_and_its_names(tmp_path, write_phantom, capsys):
    """``isodose dvh --structures rois.nii.gz --labels names.csv``, as a user types it: the names from the table,
    the numbers of the label image read in Python; a mask outside the dose grid is a warning, and --labels with an
    RTSTRUCT a one-line error."""
    from isodose.cli import main
    from isodose.dicom.read import read_dose

    rd, rs, _ = write_phantom(Sphere((0.0, 0.0, 0.0), 10.0), gradient=(0.6, -0.5, 0.62))
    dose = read_dose(rd)
    values = np.zeros((30, 30, 30), np.uint8)
    values[5:20, 8:22, 4:25] = 1
    values[18:26, 2:9, 10:18] = 2
    values[0, 0, 0] = 3
    path = write_label_image(tmp_path / "rois.nii.gz", values, origin_mm=(-15.0, -15.0, -15.0))
    names = tmp_path / "names.csv"
    names.write_text("label,name\n1,Box\n2,Notch\n3,Corner\n")
    assert main(["dvh", "--dose", str(rd), "--structures", str(path), "--labels", str(names), "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    reference = compute_dvhs(dose, read_label_image(path, names=names))
    assert [s["name"] for s in document["structures"]] == ["Box", "Notch", "Corner"]
    for row, dvh in zip(document["structures"], reference):
        assert row["volume_cc"] == pytest.approx(dvh.volume_cc, abs=1e-6)
        assert row["dmean_gy"] == pytest.approx(dvh.dmean_gy, abs=1e-6)
    far_values = np.zeros((5, 5, 5), np.uint8)
    far_values[1:3, 1:3, 1:3] = 1
    far = write_label_image(tmp_path / "far.nrrd", far_values, origin_mm=(500.0, 0.0, 0.0))
    assert main(["dvh", "--dose", str(rd), "--structures", str(far), "--format", "json"]) == 0
    assert document_warnings(capsys) == ["ROI far lies wholly outside the dose grid"]
    assert main(["dvh", "--dose", str(rd), "--structures", str(rs), "--labels", str(names)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("isodose: error: --labels names the labels of a label image;") and "\n" not in error


def document_warnings(capsys) -> list[str]:
    document = json.loads(capsys.readouterr().out)
    return [w for s in document["structures"] for w in s["warnings"]]


def _box_as_mask_and_contours(corner, voxels, spacing, frame=""):
    """One box recurrence as a label image and as contours (a square on every voxel slice: the same slabs)."""
    from isodose.model import Contour, StructureSet

    nx, ny, nz = voxels
    sx, sy, sz = spacing
    values = np.ones((nz, ny, nx), np.float32)
    values = np.pad(values, 1)
    origin = np.asarray(corner) - np.asarray(spacing) * 0.5  # voxel (1, 1, 1) starts at the corner
    mask = LabelMask(values, tuple(origin), spacing, np.eye(3))
    x0, y0, z0 = corner
    square = np.array([[x0, y0], [x0 + nx * sx, y0], [x0 + nx * sx, y0 + ny * sy], [x0, y0 + ny * sy]])
    contours = tuple(Contour(square, z0 + (k + 0.5) * sz) for k in range(nz))
    as_mask = StructureSet((Structure("Vr", 1, mask=mask, frame_of_reference_uid=frame),), frame)
    as_contours = StructureSet((Structure("Vr", 1, contours, frame),), frame)
    return as_mask, as_contours


@pytest.mark.parametrize("registered", [False, True])
def test_a_recurrence_mask_classifies_as_the_same_recurrence_drawn_as_contours(registered):
    """A box recurrence straddling the 95% isodose, as a mask and as contours on the same slabs: the same class,
    volume and share inside; in the planning frame, and in a follow-up frame through a rigid registration."""
    from isodose.geometry import rigid_matrix
    from isodose.model import Registration
    from isodose.phantoms import example_case
    from isodose.recurrence import classify_recurrence

    dose, structures = example_case()
    shift = np.array([4.0, -3.0, 5.0]) if registered else np.zeros(3)
    corner = np.array([8.0, -6.0, -5.0]) - shift  # in the follow-up frame: the registration moves it by shift
    frame = "1.2.826.0.1.9" if registered else ""
    as_mask, as_contours = _box_as_mask_and_contours(corner, (8, 6, 4), (1.5, 2.0, 2.5), frame)
    registration = (
        Registration(dose.frame_of_reference_uid, {frame: rigid_matrix(translation_mm=tuple(shift))})
        if registered
        else None
    )
    results = [
        classify_recurrence(dose, structures, "Vr", 70.0, recurrence_structures=s, registration=registration)
        for s in (as_mask, as_contours)
    ]
    mask_result, contour_result = results
    assert mask_result.registered is registered
    assert mask_result.class_volume == contour_result.class_volume
    assert mask_result.recurrence_volume_cc == pytest.approx(1.44, rel=1e-9)
    assert mask_result.recurrence_volume_cc == pytest.approx(contour_result.recurrence_volume_cc, rel=1e-6)
    assert 5 < mask_result.inside_isodose_pct < 95
    assert mask_result.inside_isodose_pct == pytest.approx(contour_result.inside_isodose_pct, abs=0.05)
    assert mask_result.centroid_dose_gy == pytest.approx(contour_result.centroid_dose_gy, abs=1e-3)


def test_the_classify_command_takes_the_recurrence_as_a_mask(tmp_path, capsys):
    """``isodose classify --recurrence-mask rois.nrrd --recurrence-label 2``, as a user types it: the record of the
    mask's label as Python gives it, named by --recurrence; and each misuse of the options a one-line error."""
    from isodose.cli import main
    from isodose.dicom.write import write_dose, write_structures
    from isodose.phantoms import example_case
    from isodose.recurrence import classify_recurrence

    dose, structures = example_case()
    rd = write_dose(dose, tmp_path / "RD.dcm", frame_of_reference_uid=structures.frame_of_reference_uid)
    rs = write_structures(structures, tmp_path / "RS.dcm")
    values = np.zeros((12, 12, 16), np.uint8)
    values[2:6, 3:9, 2:10] = 1
    values[6:10, 2:8, 6:14] = 2
    path = write_label_image(tmp_path / "rois.nrrd", values, origin_mm=(2.0, -9.0, -8.0), spacing_mm=(1.5, 2.0, 2.5))
    base = ["classify", "--dose", str(rd), "--structures", str(rs), "--prescription", "70", "--format", "json"]
    assert main([*base, "--recurrence-mask", str(path), "--recurrence-label", "2", "--recurrence", "Vr2"]) == 0
    record = json.loads(capsys.readouterr().out)
    vr = read_label_image(path, labels=[2])
    expected = classify_recurrence(dose, structures, "label 2", 70.0, recurrence_structures=vr)
    assert record["recurrence_roi"] == "Vr2" and record["class_volume"] == expected.class_volume
    assert record["inside_isodose_pct"] == pytest.approx(expected.inside_isodose_pct, abs=1e-4)
    assert record["recurrence_volume_cc"] == pytest.approx(expected.recurrence_volume_cc, abs=1e-3)
    for extra, message in [
        ([], "holds labels 1, 2; say which is the recurrence with --recurrence-label N"),
        (
            ["--recurrence-structures", str(rs)],
            "give the recurrence as --recurrence-structures or as --recurrence-mask",
        ),
        (["--recurrence-label", "7"], "holds no voxel of label 7 (its labels: 1, 2)"),
    ]:
        assert main([*base, "--recurrence-mask", str(path), *extra]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error
    assert main([*base, "--recurrence", "Recurrence", "--recurrence-label", "2"]) == 2
    assert "--recurrence-label picks a label of --recurrence-mask" in capsys.readouterr().err
    assert main(base) == 2
    assert "give the recurrence: --recurrence ROI, or --recurrence-mask FILE" in capsys.readouterr().err


def test_a_cohort_manifest_takes_recurrence_masks_and_label_images_of_planning_structures(tmp_path):
    """Manifest columns: ``recurrence_mask`` and ``recurrence_label`` (the recurrence as a label image, its name
    from recurrence_roi or the label's), and ``labels`` (the names of a label image given as ``structures``, whose
    targets hold the centroid by their voxels); each record as Python classifies the case, and bad rows refused."""
    import csv

    from isodose.cohort.cases import read_manifest
    from isodose.cohort.runner import run_cohort
    from isodose.cohort.store import ResultStore
    from isodose.dicom.write import write_dose, write_structures
    from isodose.errors import ManifestError
    from isodose.phantoms import example_case
    from isodose.recurrence import classify_recurrence

    dose, structures = example_case()
    rd = write_dose(dose, tmp_path / "RD.dcm", frame_of_reference_uid=structures.frame_of_reference_uid)
    write_structures(structures, tmp_path / "RS.dcm")
    values = np.zeros((12, 12, 16), np.uint8)
    values[2:6, 3:9, 2:10] = 1
    values[6:10, 2:8, 6:14] = 2
    write_label_image(tmp_path / "vr.nrrd", values, origin_mm=(2.0, -9.0, -8.0), spacing_mm=(1.5, 2.0, 2.5))
    planning = np.zeros((50, 50, 50), np.uint8)
    planning[5:45, 5:45, 5:45] = 1  # a PTV around the recurrence (labels of one map never overlap)
    planning[40:48, 2:10, 2:10] = 2  # an organ
    write_label_image(tmp_path / "plan.nii.gz", planning, origin_mm=(-25.0, -25.0, -25.0))
    (tmp_path / "names.json").write_text(json.dumps({"1": "PTV", "2": "Cord"}))
    rows = [
        {"case_id": "mask", "dose": rd.name, "structures": "RS.dcm", "recurrence_roi": "", "recurrence_mask": "vr.nrrd",
         "recurrence_label": "2", "labels": ""},
        {"case_id": "labels", "dose": rd.name, "structures": "plan.nii.gz", "recurrence_roi": "Vr",
         "recurrence_mask": "vr.nrrd", "recurrence_label": "2", "labels": "names.json"},
    ]  # fmt: skip
    manifest = tmp_path / "manifest.csv"
    columns = ["case_id", "dose", "structures", "plan", "prescription_gy", "recurrence_roi", "recurrence_structures"]
    columns += ["registration", "recurrence_mask", "recurrence_label", "labels"]
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows([{**row, "prescription_gy": "70"} for row in rows])
    run_cohort(manifest, tmp_path / "out.h5", workers=1, backend="numba")
    records = {e["case_id"]: e for e in ResultStore.open(tmp_path / "out.h5", create=False).cases()}
    assert {k: e["status"] for k, e in records.items()} == {"mask": "ok", "labels": "ok"}
    expected = {
        "mask": classify_recurrence(
            dose, structures, "label 2", 70.0, recurrence_structures=read_label_image(tmp_path / "vr.nrrd", labels=[2])
        ),
        "labels": classify_recurrence(
            dose,
            read_label_image(tmp_path / "plan.nii.gz", names=tmp_path / "names.json"),
            "label 2",
            70.0,
            recurrence_structures=read_label_image(tmp_path / "vr.nrrd", labels=[2]),
        ),
    }
    for case_id, result in expected.items():
        record = records[case_id]["record"]
        assert record["recurrence_roi"] == {"mask": "label 2", "labels": "Vr"}[case_id]
        assert record["class_volume"] == result.class_volume and record["class_centroid"] == result.class_centroid
        assert record["inside_isodose_pct"] == pytest.approx(result.inside_isodose_pct, abs=1e-6)
    assert expected["labels"].centroid_targets == ("PTV",)  # the recurrence's centroid lies in the PTV's voxels
    for change, message in [
        ({"recurrence_structures": "RS.dcm"}, "recurrence_structures or as recurrence_mask, not both"),
        ({"recurrence_mask": "", "recurrence_roi": "Vr"}, "a recurrence_label needs a recurrence_mask"),
        ({"recurrence_label": "two"}, "recurrence_label 'two' is not a label"),
    ]:
        with manifest.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerow({**rows[0], "prescription_gy": "70", **change})
        with pytest.raises(ManifestError, match=message):
            read_manifest(manifest)


def test_contours_and_label_images_sampled_together_give_what_each_gives_alone(grid, emulated_gpu):
    """A structure set mixing contours and label images (one batch holding planes of both kinds): each DVH that of
    its structure alone, on every backend."""
    from isodose.phantoms import contour_shape

    mixed = [
        contour_shape(Sphere((1.0, 2.0, 3.0), 9.0), "sphere", 1, 2.5),
        Structure("box", 2, mask=box_mask(rotation(0.5, 0.3), True)),
        contour_shape(Sphere((-12.0, -5.0, 0.0), 6.0), "small", 3, 2.0),
        Structure("axial", 4, mask=box_mask()),
    ]
    gpu = Backend("cupy (emulated)", emulated_gpu.device, emulated_gpu)
    for backend in ("numpy", "numba", gpu):
        together = compute_dvhs(grid, mixed, backend=backend)
        alone = [compute_dvhs(grid, [s], backend=backend)[0] for s in mixed]
        assert_same_dvhs(alone, together)


def test_a_recurrence_mask_through_a_deformation_and_under_uncertainty_matches_its_contours():
    """The box recurrence as a mask and as contours on the follow-up frame, carried through the deformable tests'
    affine field (stored planning to follow-up), and then with draws of registration uncertainty: the same class,
    volume and share inside, and the same share of in-field draws."""
    from isodose.recurrence import classify_recurrence
    from isodose.uncertainty import Uncertainty

    from .test_deformable import FOLLOW_UP, PRESCRIPTION, affine_inverse, field_registration, planning

    dose, structures = planning()
    as_mask, as_contours = _box_as_mask_and_contours((-2.0, -4.0, -3.0), (8, 6, 4), (1.5, 2.0, 2.5), FOLLOW_UP)
    registration = field_registration(affine_inverse, structures.frame_of_reference_uid, FOLLOW_UP)
    mask_result, contour_result = (
        classify_recurrence(dose, structures, "Vr", PRESCRIPTION, recurrence_structures=s, registration=registration)
        for s in (as_mask, as_contours)
    )
    assert mask_result.registration_kind == "dicom" and mask_result.class_volume == contour_result.class_volume
    # The field scales volumes by 1.2^3: the mask's is exact, the contours' (coarser cells through a deformation)
    # within 0.3%.
    assert mask_result.recurrence_volume_cc == pytest.approx(1.44 * 1.2**3, rel=1e-5)
    assert mask_result.recurrence_volume_cc == pytest.approx(contour_result.recurrence_volume_cc, rel=5e-3)
    assert mask_result.inside_isodose_pct == pytest.approx(contour_result.inside_isodose_pct, abs=0.3)
    assert 5 < mask_result.inside_isodose_pct < 95
    uncertainty = Uncertainty(translation_sd_mm=2.0, draws=200, seed=4)
    mask_draws, contour_draws = (
        classify_recurrence(
            dose, structures, "Vr", PRESCRIPTION, recurrence_structures=s, uncertainty=uncertainty
        ).uncertainty
        for s in (StructureSet(as_mask.structures), StructureSet(as_contours.structures))
    )
    for name, probability in contour_draws.volume_probability_pct.items():
        assert mask_draws.volume_probability_pct[name] == pytest.approx(probability, abs=3.0), name
    assert 0 < contour_draws.volume_probability_pct["marginal"] < 100


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_hot_and_a_cold_voxel_inside_a_mask_are_its_dmax_and_dmin(backend):
    """An axial label image's structure takes the dose grid's points inside its weighted voxels for its Dmin and Dmax,
    as contours do: its samples (at its cells' centres, never on the grid's points here) miss a hot spot at one point
    of the dose grid, and its rows' end corners see its surface alone. A hotter point far outside it is no part of
    it."""
    from isodose.model import DoseGrid

    dose = np.full((21, 21, 21), 5.0, dtype=np.float32)
    dose[10, 10, 10] = 10.0  # the grid point (0, 0, 0): a corner of the mask's voxels, inside one of them
    dose[10, 11, 12] = 1.0  # (4, 2, 0)
    dose[1, 1, 1] = 50.0  # (-18, -18, -18), far outside
    grid = DoseGrid(dose, (-20.0, -20.0, -20.0), (2.0, 2.0, 2.0), "1.2.3.4")
    mask = LabelMask(np.ones((20, 20, 20), np.float32), (-9.5, -9.5, -9.5), (1.0, 1.0, 1.0), np.eye(3))
    structure = Structure("Box", 1, (), frame_of_reference_uid="1.2.3.4", mask=mask)
    [dvh] = compute_dvhs(grid, [structure], backend=backend)
    assert (dvh.dmin_gy, dvh.dmax_gy) == (1.0, 10.0)
    from isodose.voxelize import SamplingOptions

    [sampled] = compute_dvhs(grid, [structure], backend=backend, options=SamplingOptions(extremes="samples"))
    assert 5.0 < sampled.dmax_gy < 9.0 and 1.0 < sampled.dmin_gy < 5.0
