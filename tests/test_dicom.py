"""Reading DICOM RT: every supported encoding gives the same grid; every unsupported one a clear error."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from isodose.dicom.read import read_dose, read_plan, read_structures
from isodose.dicom.write import write_dose, write_plan, write_structures
from isodose.dvh import compute_dvhs
from isodose.errors import (
    DicomReadError,
    DoseGridError,
    DoseUnitsError,
    FrameOfReferenceError,
    IsodoseError,
    RoiNotFoundError,
    StructureError,
)
from isodose.model import Contour, DoseGrid, Structure
from isodose.phantoms import Cylinder, Shell, Sphere, contour_shape

from .conftest import linear_grid

ORIENTATIONS = ["HFS", "FFS", "HFP", "FFP", (0.0, 1.0, 0.0, 1.0, 0.0, 0.0), (0.0, 0.0, -1.0, 1.0, 0.0, 0.0)]


@pytest.fixture
def random_grid(rng):
    dose = rng.uniform(0, 60, (6, 7, 8)).astype(np.float32)
    return DoseGrid(dose, (-10.0, -20.5, 3.25), (2.0, 2.5, 3.0), "1.2.3")


def _edit(path, **changes):
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path)
    return path


@pytest.mark.parametrize("orientation", ORIENTATIONS, ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["increasing", "decreasing"])
@pytest.mark.parametrize("bits", [16, 32])
def test_orientations_and_frame_orders_read_back_identically(tmp_path, random_grid, orientation, reverse, bits):
    path = write_dose(random_grid, tmp_path / "rd.dcm", orientation=orientation, reverse_frames=reverse, bits=bits)
    grid = read_dose(path)
    assert grid.origin_mm == pytest.approx(random_grid.origin_mm)
    assert grid.spacing_mm == pytest.approx(random_grid.spacing_mm)
    assert grid.frame_of_reference_uid == "1.2.3"
    quantum = 60.0 / (2**bits - 1)
    np.testing.assert_allclose(grid.dose_gy, random_grid.dose_gy, atol=quantum)


@pytest.mark.parametrize("reverse", [False, True])
def test_absolute_frame_offsets(tmp_path, random_grid, reverse):
    path = write_dose(random_grid, tmp_path / "rd.dcm", offsets="absolute", reverse_frames=reverse)
    offsets = [float(v) for v in pydicom.dcmread(path).GridFrameOffsetVector]
    assert offsets[0] != 0.0
    grid = read_dose(path)
    assert grid.origin_mm == pytest.approx(random_grid.origin_mm)
    np.testing.assert_allclose(grid.dose_gy, random_grid.dose_gy, atol=1e-6)


def test_dose_grid_scaling_is_applied(tmp_path, random_grid):
    path = write_dose(random_grid, tmp_path / "rd.dcm", bits=16)
    ds = pydicom.dcmread(path)
    scaling = float(ds.DoseGridScaling)
    assert ds.pixel_array.max() == 65535
    assert read_dose(path).max_gy == pytest.approx(65535 * scaling, rel=1e-6)


def test_dvhs_do_not_depend_on_how_the_dose_was_stored(tmp_path):
    _, grid = linear_grid(gradient=(0.5, -0.8, 0.9))
    structure = contour_shape(Sphere((2.0, -3.0, 1.0), 14.0), "s", 1, 2.0)
    reference = None
    for n, orientation in enumerate(ORIENTATIONS[:4]):
        for reverse in (False, True):
            path = write_dose(grid, tmp_path / f"rd{n}{reverse}.dcm", orientation=orientation, reverse_frames=reverse)
            [dvh] = compute_dvhs(read_dose(path), [structure])
            values = dvh.metrics(["D99", "D50", "D1", "Dmean", "Dmin", "Dmax"])
            if reference is None:
                reference = values
            assert values == pytest.approx(reference, abs=1e-4)


# --- RTDOSE errors ---------------------------------------------------------------------------------------
def test_not_dicom_names_the_file(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("this is not a DICOM file\n" * 20)
    with pytest.raises(DicomReadError, match="notes.dcm.*not a DICOM file"):
        read_dose(path)
    with pytest.raises(DicomReadError, match="no such file"):
        read_dose(tmp_path / "missing.dcm")


def test_truncated_file(tmp_path, random_grid):
    path = write_dose(random_grid, tmp_path / "rd.dcm")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 300])
    with pytest.raises(DicomReadError, match="rd.dcm"):
        read_dose(path)


def _defined_length_structure_set(tmp_path):
    """An RTSTRUCT of three spheres whose sequences have defined lengths, as planning systems write them."""
    from pydicom.filewriter import dcmwrite

    shapes = [contour_shape(Sphere((0, 0, 0), r), f"S{r}", n, 2.0) for n, r in enumerate((5, 8, 12), start=1)]
    path = write_structures(shapes, tmp_path / "rs_undefined.dcm")
    ds = pydicom.dcmread(path)
    for element in ds.iterall():
        if element.VR == "SQ":
            element.is_undefined_length = False
    defined = tmp_path / "rs.dcm"
    dcmwrite(defined, ds, enforce_file_format=True)
    return defined


def test_a_file_cut_inside_a_sequence_of_defined_length_is_truncated(tmp_path):
    """pydicom reads a file that ends inside an element of defined length without an error, keeping the bytes that
    are there: an RTSTRUCT cut inside its RTROIObservationsSequence would lose its ROIs' types, one cut inside its
    ROIContourSequence its last ROIs' contours. Either is a one-line error naming the file and the element."""
    path = _defined_length_structure_set(tmp_path)
    data = path.read_bytes()
    whole = read_structures(path)
    assert len(whole.structures) == 3 and all(s.contours for s in whole.structures)  # as written: read whole
    observations = data.index(b"\x06\x30\x80\x00")  # (3006,0080) RTROIObservationsSequence, explicit VR
    contours = data.index(b"\x06\x30\x39\x00")  # (3006,0039) ROIContourSequence
    for cut, element in ((observations + 40, "RTROIObservationsSequence"), (contours + 500, "ROIContourSequence")):
        cut_short = tmp_path / f"cut{cut}.dcm"
        cut_short.write_bytes(data[:cut])
        with pytest.raises(DicomReadError) as caught:
            read_structures(cut_short)
        message = str(caught.value)
        assert "\n" not in message and f"cut{cut}.dcm" in message, message
        assert f"truncated: the file ends at byte {cut:,}, inside {element}" in message, message


def test_a_file_cut_between_elements_is_an_error_where_it_lacks_what_it_must_hold(tmp_path):
    """A cut that falls between two elements leaves no element short: an RTSTRUCT cut before its ROIContourSequence
    (required; an ROI without contours has an item of its own) would read as ROIs without contours, and a file cut
    inside its header holds no data set at all. Both are one-line errors naming the file, not empty results."""
    path = _defined_length_structure_set(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "rs_cut.dcm"
    cut.write_bytes(data[: data.index(b"\x06\x30\x39\x00")])  # just before (3006,0039) ROIContourSequence
    with pytest.raises(StructureError, match=r"rs_cut\.dcm: ROIContourSequence is missing: the file holds no contours"):
        read_structures(cut)
    cut.write_bytes(data[:200])  # the preamble, DICM and part of the file meta information
    with pytest.raises(DicomReadError, match=r"rs_cut\.dcm: holds no data set after its file meta information"):
        read_structures(cut)


def test_pydicom_truncated_files_are_errors_and_a_deflated_file_is_not(tmp_path):
    from pydicom.data import get_testdata_file

    from isodose.dicom.read import read_dataset

    with pytest.raises(DicomReadError, match=r"rtplan_truncated\.dcm: truncated: .* inside BeamSequence"):
        read_plan(get_testdata_file("rtplan_truncated.dcm"))
    with pytest.raises(DicomReadError, match=r"MR_truncated\.dcm: truncated: .* inside PixelData"):
        read_dataset(get_testdata_file("MR_truncated.dcm"))
    deflated = get_testdata_file("image_dfl.dcm")
    assert read_dataset(deflated).Rows > 0  # its elements lie in the inflated stream, not at their file offsets
    cut = tmp_path / "image_dfl.dcm"
    cut.write_bytes(open(deflated, "rb").read()[:3000])
    with pytest.raises(DicomReadError, match=r"image_dfl\.dcm: unreadable or truncated DICOM"):
        read_dataset(cut)


def test_wrong_modality(tmp_path):
    path = write_structures([contour_shape(Sphere((0, 0, 0), 5), "s", 1, 2.0)], tmp_path / "rs.dcm")
    with pytest.raises(DicomReadError, match="modality is RTSTRUCT, expected RTDOSE"):
        read_dose(path)
    with pytest.raises(DicomReadError, match="expected RTPLAN"):
        read_plan(path)


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"ImageOrientationPatient": [0.9962, 0.0872, 0, -0.0872, 0.9962, 0]}, DoseGridError, "oblique"),
        ({"GridFrameOffsetVector": [0, 3, 6, 9, 13, 16]}, DoseGridError, "not uniform"),
        ({"GridFrameOffsetVector": [0, 3, 6, 3, 12, 15]}, DoseGridError, "monotonic"),
        ({"GridFrameOffsetVector": [7, 10, 13, 16, 19, 22]}, DoseGridError, "neither 0"),
        ({"DoseUnits": "RELATIVE"}, DoseUnitsError, "RELATIVE, not GY"),
        ({"DoseGridScaling": None}, DicomReadError, "DoseGridScaling is missing"),
        ({"PixelSpacing": [0, 2.5]}, DoseGridError, "PixelSpacing must be positive"),
        ({"GridFrameOffsetVector": [0, 3, 6]}, DicomReadError, "GridFrameOffsetVector has 3 values"),
    ],
)
def test_unsupported_dose_grids_are_clear_errors(tmp_path, random_grid, changes, error, message):
    path = _edit(write_dose(random_grid, tmp_path / "rd.dcm"), **changes)
    with pytest.raises(error, match=message) as info:
        read_dose(path)
    assert "rd.dcm" in str(info.value) and "\n" not in str(info.value)


def test_single_frame_dose_is_refused(tmp_path):
    grid = DoseGrid(np.ones((1, 4, 4), np.float32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    path = write_dose(grid, tmp_path / "rd.dcm")
    with pytest.raises(DoseGridError, match="at least 2 voxels"):
        read_dose(path)


# --- RTSTRUCT --------------------------------------------------------------------------------------------
def _structure_file(tmp_path):
    structures = [
        contour_shape(Shell((0, 0, 0), 10.0, 5.0), "Shell", 3, 2.0),
        contour_shape(Cylinder((0, 0, 0), 4.0, 8.0), "Cord", 7, 2.0),
        Structure("Empty", 9, ()),
    ]
    return write_structures(structures, tmp_path / "rs.dcm", frame_of_reference_uid="1.2.3")


def test_structures_by_name_and_number(tmp_path):
    rs = read_structures(_structure_file(tmp_path))
    assert rs.names == ["Shell", "Cord", "Empty"]
    assert rs.frame_of_reference_uid == "1.2.3"
    assert rs.get(7).name == "Cord" and rs.get("cord").number == 7
    assert rs.get("Empty").is_empty
    shell = rs.get("Shell")
    zs = [c.z_mm for c in shell.contours]
    assert zs.count(0.0) == 2  # outer ring and hole in one plane
    with pytest.raises(RoiNotFoundError, match="no ROI 'PTV'.*Shell, Cord, Empty"):
        rs.get("PTV")


def test_point_and_open_contours_are_skipped_with_a_warning(tmp_path, caplog):
    path = _structure_file(tmp_path)
    ds = pydicom.dcmread(path)
    sequence = ds.ROIContourSequence[1].ContourSequence
    for kind in ("POINT", "OPEN_PLANAR"):
        item = Dataset()
        item.ContourGeometricType = kind
        item.NumberOfContourPoints = 1 if kind == "POINT" else 2
        item.ContourData = [1.0, 2.0, 0.0] if kind == "POINT" else [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
        sequence.append(item)
    ds.save_as(path)
    with caplog.at_level(logging.WARNING, logger="isodose"):
        rs = read_structures(path)
    assert len(rs.get("Cord").contours) == 5
    assert "POINT contour skipped" in caplog.text and "OPEN_PLANAR contour skipped" in caplog.text


def test_contour_off_its_plane_is_an_error(tmp_path):
    path = _structure_file(tmp_path)
    ds = pydicom.dcmread(path)
    item = ds.ROIContourSequence[1].ContourSequence[0]
    data = [float(v) for v in item.ContourData]
    data[2] += 1.0  # the first point's z
    item.ContourData = data
    ds.save_as(path)
    with pytest.raises(StructureError, match="ROI 'Cord' contour 0: points are not in one axial plane"):
        read_structures(path)


def test_frames_of_reference_must_match(tmp_path):
    _, grid = linear_grid(frame_uid="1.2.3")
    rs = read_structures(_structure_file(tmp_path))
    compute_dvhs(grid, rs, ["Cord"])
    other = DoseGrid(grid.dose_gy, grid.origin_mm, grid.spacing_mm, "9.9.9", "rd.dcm")
    with pytest.raises(FrameOfReferenceError, match="rs.dcm.*differs from the dose's 9.9.9.*drawn on another image"):
        compute_dvhs(other, rs, ["Cord"])


# --- RTPLAN ----------------------------------------------------------------------------------------------
def test_plan_prescription_and_fractions(tmp_path):
    plan = read_plan(write_plan(tmp_path / "rp.dcm", prescription_gy=70.0, number_of_fractions=33))
    assert (plan.prescription_gy, plan.number_of_fractions) == (70.0, 33)
    bare = read_plan(write_plan(tmp_path / "rp2.dcm", prescription_gy=None, number_of_fractions=None))
    assert bare.prescription_gy is None and bare.number_of_fractions is None


def test_a_plan_cut_short_between_its_elements_says_so(tmp_path, caplog):
    """A plan without its FractionGroupSequence, or whose fraction group names beams it does not hold, reads (its
    prescription is before them) with a warning naming the file: a per-beam dose could not be told from it."""
    whole = write_plan(tmp_path / "rp.dcm", prescription_gy=70.0, number_of_fractions=33, number_of_beams=2)
    with caplog.at_level(logging.WARNING, logger="isodose"):
        assert read_plan(whole).beam_numbers == (1, 2)
    assert "cut short" not in caplog.text
    ds = pydicom.dcmread(whole)
    del ds.BeamSequence
    ds.save_as(tmp_path / "no_beams.dcm")
    del ds.FractionGroupSequence
    ds.save_as(tmp_path / "no_groups.dcm")
    for name, message in (
        ("no_beams.dcm", "the plan's fraction group names 2 beam(s), but the plan holds no BeamSequence"),
        ("no_groups.dcm", "the plan has no FractionGroupSequence, so its fractions and beams are unknown"),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="isodose"):
            assert read_plan(tmp_path / name).prescription_gy == 70.0
        assert f"{name}: {message}" in caplog.text


def test_nelms_files_read_as_published(nelms_path):
    grid = read_dose(nelms_path / "dose_grids" / "Linear_SupInf_2mm_Aligned.dcm")
    assert grid.shape == (25, 25, 25) and grid.origin_mm == (-24.0, -24.0, -24.0)
    # 1 Gy/mm along z: the dose rises by 2 Gy per frame where it is above zero.
    assert grid.dose_gy[20, 12, 12] - grid.dose_gy[19, 12, 12] == pytest.approx(2.0, abs=1e-5)
    rs = read_structures(nelms_path / "structures" / "Sphere_10_0.dcm")
    assert [s.is_empty for s in rs.structures] == [True, False]


def test_errors_are_isodose_errors():
    assert issubclass(DicomReadError, IsodoseError) and issubclass(DoseUnitsError, DoseGridError)


def test_contours_need_three_points(tmp_path, caplog):
    degenerate = Structure("Line", 1, (Contour(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]), 0.0),))
    path = write_structures([degenerate], tmp_path / "rs.dcm")
    ds = pydicom.dcmread(path)
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    ds.save_as(path)
    with caplog.at_level(logging.WARNING, logger="isodose"):
        assert read_structures(path).get("Line").is_empty
    assert "enclose no area" in caplog.text


def test_a_dose_grid_too_large_for_memory_is_refused_with_the_figures(tmp_path, random_grid, monkeypatch):
    import isodose.dicom.read as reader

    path = write_dose(random_grid, tmp_path / "rd.dcm")
    monkeypatch.setattr(reader, "_available_memory_bytes", lambda: (2000, "available on this machine"))
    with pytest.raises(
        DoseGridError,
        match=r"rd.dcm: dose grid of 6 x 7 x 8 voxels needs about 5.4 kB to read, "
        r"more than the 2.0 kB of memory available on this machine",
    ):
        read_dose(path)
    monkeypatch.setattr(reader, "_available_memory_bytes", lambda: None)  # cannot be told: read it
    np.testing.assert_allclose(read_dose(path).dose_gy, random_grid.dose_gy, rtol=1e-6)


def _restored(path, syntax=None, signed=False, stored=None, frames_more=0, **changes):
    """An RTDOSE re-stored: in transfer syntax ``syntax`` (its pixels encoded to match), with signed pixels, with
    BitsStored ``stored``, with ``frames_more`` frames of pixel data more (or fewer) than its grid has."""
    from pydicom.uid import ExplicitVRBigEndian, RLELossless

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    bits = int(ds.BitsAllocated)
    if signed:  # halved, and a negative value (which a dose may not hold) where signed=="negative"
        ds.PixelRepresentation = 1
        pixels = (pixels // 2).astype(f"<i{bits // 8}")
        if signed == "negative":
            pixels[1, 2, 3] = -5
    if frames_more > 0:
        pixels = np.concatenate([pixels, pixels[:frames_more]])
    elif frames_more < 0:
        pixels = pixels[:frames_more]
    if stored is not None:
        ds.BitsStored, ds.HighBit = stored, stored - 1
        pixels = pixels % (1 << stored)
    for key, value in changes.items():
        setattr(ds, key, value) if value is not None else delattr(ds, key)
    big = syntax == ExplicitVRBigEndian
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder(">" if big else "<")).tobytes()
    if syntax == RLELossless:
        ds.compress(RLELossless, np.ascontiguousarray(pixels))
    elif syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    if big:
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        ds.save_as(path)
    return path


def _read_both_ways(path, monkeypatch, caplog):
    """read_dose's outcome (the grid's bytes and geometry, or the error) and log, with isodose's reading of
    native pixels and with pydicom's decoding alone; and whether the native reading took the pixels."""
    import isodose.dicom.read as reader

    native = reader._native_pixels
    taken = []

    def spy(*args):
        taken.append(native(*args))
        return taken[-1]

    outcomes = []
    for pixels in (spy, lambda *args: None):
        monkeypatch.setattr(reader, "_native_pixels", pixels)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="isodose"):
            try:
                grid = read_dose(path)
                outcome = (grid.dose_gy.dtype, grid.dose_gy.tobytes(), grid.origin_mm, grid.spacing_mm)
            except IsodoseError as exc:
                outcome = (type(exc), str(exc))
        outcomes.append((outcome, caplog.text))
    return outcomes[0], outcomes[1], bool(taken) and taken[0] is not None


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"], ids=["implicit", "explicit"])
@pytest.mark.parametrize("bits", [16, 32])
@pytest.mark.parametrize("signed", [False, True, "negative"], ids=["unsigned", "signed", "negative"])
def test_native_pixels_are_read_as_pydicom_decodes_them(
    tmp_path, random_grid, monkeypatch, caplog, syntax, bits, signed
):
    """Little-endian pixels of 16 or 32 bits are taken as they lie in the file, without pydicom's decoding: the
    same grid, bit for bit (or, for a negative value, the same error)."""
    path = _restored(write_dose(random_grid, tmp_path / "rd.dcm", bits=bits), syntax=syntax, signed=signed)
    native, decoded, taken = _read_both_ways(path, monkeypatch, caplog)
    assert taken
    assert native == decoded
    if signed == "negative":
        assert native[0][0] is DoseGridError and "negative values" in native[0][1]
    else:
        np.testing.assert_allclose(read_dose(path).dose_gy, random_grid.dose_gy / (2 if signed else 1), atol=0.01)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"syntax": "1.2.840.10008.1.2.2"}, id="big-endian"),
        pytest.param({"syntax": "1.2.840.10008.1.2.5"}, id="RLE"),
        pytest.param({"stored": 12}, id="12-of-16-bits-stored"),
        pytest.param({"frames_more": -1}, id="a-frame-short"),
        pytest.param({"frames_more": 1}, id="a-frame-too-many"),
        pytest.param({"PhotometricInterpretation": None}, id="no-PhotometricInterpretation"),
        pytest.param({"PhotometricInterpretation": "MONOCHROME1"}, id="MONOCHROME1"),
        pytest.param({"PhotometricInterpretation": " MONOCHROME2"}, id="leading-space"),
        pytest.param({"SamplesPerPixel": None}, id="no-SamplesPerPixel"),
        pytest.param({"PixelRepresentation": None}, id="no-PixelRepresentation"),
        pytest.param({"FloatPixelData": np.zeros(6 * 7 * 8, dtype="<f4").tobytes()}, id="float-pixels-beside"),
        pytest.param({"ExtendedOffsetTable": bytes(8), "ExtendedOffsetTableLengths": bytes(8)}, id="offset-table"),
        pytest.param({"signed": True}, id="signed-read-natively"),  # the control
    ],
)
def test_other_pixels_are_left_to_pydicom(tmp_path, random_grid, monkeypatch, caplog, change):
    """Whatever isodose would not read exactly as pydicom does (another encoding, bits not all stored, a length
    not the grid's, an element missing or unusual) is decoded by pydicom: the same grid, or the same error and log,
    either way."""
    path = _restored(write_dose(random_grid, tmp_path / "rd.dcm", bits=16), **change)
    native, decoded, taken = _read_both_ways(path, monkeypatch, caplog)
    assert taken == (change.get("signed") is True)
    assert native == decoded


def _float_dose(path, values):
    """Re-store an RTDOSE's pixels as FloatPixelData (32-bit floats), as some systems write them."""
    ds = pydicom.dcmread(path)
    if "PixelData" in ds:
        del ds.PixelData
    for keyword in ("BitsStored", "HighBit", "PixelRepresentation"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.BitsAllocated = 32
    ds.FloatPixelData = np.ascontiguousarray(values, dtype=np.float32).tobytes()
    ds.DoseGridScaling = 1
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    "value, message",
    [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-0.5, r"negative values \(down to -0.5 Gy\)")],
)
def test_non_finite_or_negative_dose_is_refused(tmp_path, random_grid, value, message):
    stored = np.ones((6, 7, 8), dtype=np.float32)
    stored[2, 3, 4] = value
    path = _float_dose(write_dose(random_grid, tmp_path / "rd.dcm"), stored)
    with pytest.raises(DoseGridError, match=message):
        read_dose(path)
    stored[2, 3, 4] = 2.0
    np.testing.assert_array_equal(read_dose(_float_dose(path, stored)).dose_gy, stored)


@pytest.mark.parametrize(
    "scaling, message",
    [
        ("inf", "DoseGridScaling holds non-finite values"),
        ("nan", "DoseGridScaling holds non-finite values"),
        ("-1", "DoseGridScaling must be positive"),
    ],
)
def test_non_finite_or_negative_scaling_is_refused(tmp_path, random_grid, scaling, message):
    path = _edit(write_dose(random_grid, tmp_path / "rd.dcm"), DoseGridScaling=scaling)
    with pytest.raises(IsodoseError, match=message):
        read_dose(path)


def test_negative_pixel_spacing_is_refused(tmp_path, random_grid):
    path = _edit(write_dose(random_grid, tmp_path / "rd.dcm"), PixelSpacing=[-2.5, 2.0])
    with pytest.raises(DoseGridError, match="PixelSpacing must be positive"):
        read_dose(path)


def test_rois_without_contours_or_outside_the_grid_are_reported_with_a_warning(caplog):
    _, grid = linear_grid(gradient=(1.0, 0.0, 0.0))
    inside = contour_shape(Sphere((0.0, 0.0, 0.0), 8.0), "Inside", 1, 2.0)
    far = contour_shape(Sphere((900.0, 0.0, 0.0), 8.0), "Far", 2, 2.0)
    empty = Structure("Empty", 3, (), grid.frame_of_reference_uid)
    edge = contour_shape(Sphere((40.0, 0.0, 0.0), 8.0), "Edge", 4, 2.0)  # the grid ends at x = 40 mm
    with caplog.at_level(logging.WARNING):
        dvhs = {d.name: d for d in compute_dvhs(grid, [inside, far, empty, edge], backend="numba")}
    assert "ROI Edge: " in caplog.text and "cc lie outside the dose grid" in caplog.text
    assert dvhs["Edge"].has_dose and 0.4 < dvhs["Edge"].volume_outside_dose_cc / dvhs["Edge"].volume_cc < 0.6
    assert "ROI Far lies wholly outside the dose grid" in caplog.text
    assert "ROI Empty has no contours" in caplog.text
    assert dvhs["Inside"].has_dose and dvhs["Inside"].volume_cc > 2
    assert not dvhs["Far"].has_dose and dvhs["Far"].volume_outside_dose_cc == pytest.approx(dvhs["Far"].volume_cc)
    assert math.isnan(dvhs["Far"].dmean_gy) and math.isnan(dvhs["Far"].metric("D95"))
    assert dvhs["Empty"].volume_cc == 0 and not dvhs["Empty"].has_dose


# ContourData parsed by compiled code (isodose.compiled_decimals) where Numba is loaded: Python's values, bit for bit.
def _python_values(raw: bytes):
    try:
        return np.array([float(v) for v in raw.split(b"\\")])
    except ValueError:
        return None


def _same_bits(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.int64), b.view(np.int64))


_DS_FORMATS = ["{:.1f}", "{:.4f}", "{:.6g}", "{:.15g}", "{:.16g}", "{!r}", "{:e}", "{:.3E}", "{:+.2f}", " {:.5f} "]


@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.floats(-1e4, 1e4, allow_nan=False),
                st.floats(allow_nan=False, allow_infinity=False),
                st.integers(-(10**17), 10**17).map(float),
            ),
            st.sampled_from(_DS_FORMATS),
        ),
        min_size=1,
        max_size=40,
    )
)
@settings(max_examples=400, deadline=None)
def test_compiled_decimals_give_pythons_values_bit_for_bit(values):
    from isodose.compiled_decimals import parse_decimal_strings

    raw = "\\".join(fmt.format(v) for v, fmt in values).encode()
    parsed = parse_decimal_strings(raw)
    if parsed is not None:  # None: outside the exact fast path, parsed by Python instead
        assert _same_bits(parsed, _python_values(raw)), raw


@pytest.mark.parametrize(
    "raw",
    [
        b"1.5\\-2\\3e2",
        b" -0 \\+0.000\\1.\\.5\\1E+05\\2.5e-3 ",
        b"-123.4567\\0.1\\0.2\\0.3\\00012.50\\123456789012345",
        b"1e22\\-1e-22\\4.94e-3",
    ],
)
def test_compiled_decimals_take_what_ds_holds(raw):
    from isodose.compiled_decimals import parse_decimal_strings

    parsed = parse_decimal_strings(raw)
    assert parsed is not None and _same_bits(parsed, _python_values(raw))


@pytest.mark.parametrize(
    "raw",
    [b"nan", b"inf", b"1e23", b"1234567890123456", b"1\\\\2", b"1 5", b"1e", b"-", b".", b"1_0", b"\t1"]
    + [b"1.5\x00", b""],
)
def test_compiled_decimals_leave_anything_else_to_python(raw):
    from isodose.compiled_decimals import parse_decimal_strings

    assert parse_decimal_strings(raw) is None


def test_structures_read_the_same_with_compiled_decimals_or_without(monkeypatch, nelms_path):
    """A real structure set (the Nelms set's, as published) and a generated one read to the same coordinates, bit for
    bit, whether ContourData goes through the compiled parser or Python's; a damaged value is the same error."""
    import numba  # noqa: F401  (loaded: the compiled parser is taken)

    import isodose.compiled_decimals as compiled_decimals
    import isodose.dicom.read as reader

    calls = []
    parse = compiled_decimals.parse_decimal_strings
    monkeypatch.setattr(compiled_decimals, "parse_decimal_strings", lambda raw: calls.append(raw) or parse(raw))
    files = [nelms_path / "structures" / "Sphere_10_0.dcm", nelms_path / "structures" / "Cylinder_10_0.dcm"]

    def coordinates(path):
        return [c.points_mm for s in read_structures(path).structures for c in s.contours]

    compiled = {path: coordinates(path) for path in files}
    assert sum(len(c) for c in compiled.values()) > 10 and len(calls) > 10
    monkeypatch.setattr(reader, "COMPILED_DECIMALS_MIN_BYTES", 10**12)
    for path in files:
        assert all(_same_bits(a, b) for a, b in zip(compiled[path], coordinates(path), strict=True))


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize(
    ("bad", "message"), [(b"12.5x", "ContourData is not numeric"), (b"nan  ", "ContourData holds non-finite values")]
)
def test_damaged_contour_data_is_one_error_either_way(tmp_path, monkeypatch, compiled, bad, message):
    import numba  # noqa: F401  (loaded: the compiled parser is taken unless turned off)

    import isodose.dicom.read as reader

    path = _structure_file(tmp_path)
    ds = pydicom.dcmread(path)
    item = ds.ROIContourSequence[1].ContourSequence[0]
    values = [f"{float(v):.4f}" for v in item.ContourData]
    values[4] = "99999"  # a marker of five characters, replaced in the file's bytes below
    item.ContourData = values
    ds.save_as(path)
    data = path.read_bytes()
    assert data.count(b"\\99999\\") == 1
    path.write_bytes(data.replace(b"\\99999\\", b"\\" + bad + b"\\"))
    if not compiled:
        monkeypatch.setattr(reader, "COMPILED_DECIMALS_MIN_BYTES", 10**12)
    with pytest.raises(DicomReadError, match=f"ROI 'Cord' contour 0: {message}"):
        read_structures(path)


# A ContourSequence walked from its bytes (isodose.dicom.items) where pydicom has not parsed it: the contours pydicom's
# items give, in every encoding the walker takes, and pydicom's own reading of any other.
def _encoded_contour_set(tmp_path, transfer_syntax, undefined_items: bool, undefined_nested: bool):
    """The generated structure set, with a POINT contour added and each contour item holding a ContourImageSequence,
    saved in ``transfer_syntax`` with its contour items and their nested sequences of defined or undefined length
    (each ContourSequence of defined length, so that pydicom leaves its bytes unparsed until asked)."""
    path = _structure_file(tmp_path)
    ds = pydicom.dcmread(path)
    point = Dataset()
    point.ContourGeometricType = "POINT"
    point.NumberOfContourPoints = 1
    point.ContourData = [1.0, 2.0, 0.0]
    ds.ROIContourSequence[1].ContourSequence.append(point)
    for roi in ds.ROIContourSequence:
        roi["ContourSequence"].is_undefined_length = False
        for item in roi.ContourSequence:
            image = Dataset()
            image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            image.ReferencedSOPInstanceUID = "1.2.3.4"
            item.ContourImageSequence = [image]
            item["ContourImageSequence"].is_undefined_length = undefined_nested
            item.is_undefined_length_sequence_item = undefined_items
            image.is_undefined_length_sequence_item = undefined_nested
    _write_in(ds, path, transfer_syntax)
    return path


def _write_in(ds, path, transfer_syntax) -> None:
    """``ds`` written to ``path`` in ``transfer_syntax``, whatever the one it was read in."""
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    pydicom.dcmwrite(
        path,
        ds,
        implicit_vr=transfer_syntax.is_implicit_VR,
        little_endian=transfer_syntax.is_little_endian,
        force_encoding=True,
    )


@pytest.mark.parametrize(
    "transfer_syntax",
    [pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ExplicitVRBigEndian],
    ids=["implicit", "explicit", "big-endian"],
)
@pytest.mark.parametrize("undefined_items", [False, True], ids=["items-defined", "items-undefined"])
@pytest.mark.parametrize("undefined_nested", [False, True], ids=["nested-defined", "nested-undefined"])
def test_contour_sequences_walked_from_their_bytes_read_as_pydicoms_items(
    tmp_path, monkeypatch, caplog, transfer_syntax, undefined_items, undefined_nested
):
    import numba  # noqa: F401  (loaded: an ROI of plain contours is parsed in one compiled call)

    import isodose.dicom.read as reader

    path = _encoded_contour_set(tmp_path, transfer_syntax, undefined_items, undefined_nested)
    walk, at_once = reader._contours_from_bytes, reader._plain_contours
    walked, plain = [], []
    monkeypatch.setattr(reader, "_contours_from_bytes", lambda item: walked.append(walk(item)) or walked[-1])
    monkeypatch.setattr(reader, "_plain_contours", lambda contours: plain.append(at_once(contours)) or plain[-1])
    with caplog.at_level(logging.WARNING, logger="isodose"):
        fast = read_structures(path)
    fast_log, _ = caplog.text, caplog.clear()
    monkeypatch.setattr(reader, "_contours_from_bytes", lambda item: None)
    with caplog.at_level(logging.WARNING, logger="isodose"):
        slow = read_structures(path)
    little_endian = transfer_syntax != pydicom.uid.ExplicitVRBigEndian
    assert len(walked) == 3 and all((w is not None) == little_endian for w in walked)
    # Shell's contours at once; Cord's, which hold a POINT contour, one by one; Empty has none.
    at_once_counts = [len(slow.get("Shell").contours), None, 0] if little_endian else []
    assert [None if p is None else len(p) for p in plain] == at_once_counts
    assert fast_log == caplog.text and fast_log.count("POINT contour skipped") == 1
    assert fast.names == slow.names == ["Shell", "Cord", "Empty"]
    for a, b in zip(fast.structures, slow.structures, strict=True):
        assert len(a.contours) == len(b.contours) > 0 or a.name == "Empty"
        for c, d in zip(a.contours, b.contours, strict=True):
            assert c.z_mm == d.z_mm and _same_bits(c.points_mm, d.points_mm)


def _element(tag: int, vr: bytes, value: bytes, implicit: bool = False, length: int | None = None) -> bytes:
    """One element, little endian: explicit VR (a short VR's 2-byte length, a long one's 4-byte) or implicit."""
    import struct

    size = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<I", size) + value
    if vr in (b"SQ", b"OB", b"UN", b"UT"):
        return head + vr + b"\0\0" + struct.pack("<I", size) + value
    return head + vr + struct.pack("<H", size) + value


def _item(content: bytes, length: int | None = None) -> bytes:
    import struct

    return struct.pack("<HHI", 0xFFFE, 0xE000, len(content) if length is None else length) + content


_UNDEFINED = 0xFFFFFFFF
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _contour_item(implicit: bool, *extra: bytes) -> bytes:
    kind = _element(0x30060042, b"CS", b"CLOSED_PLANAR ", implicit)
    data = _element(0x30060050, b"DS", b"0\\0\\0\\1\\0\\0\\0\\1\\0 ", implicit)
    return b"".join(extra) + kind + data


def _image_sequence(implicit: bool, content: bytes) -> bytes:
    """A ContourImageSequence of undefined length holding one item of undefined length with ``content``."""
    return _element(0x30060016, b"SQ", _item(content, _UNDEFINED) + _ITEM_END + _SEQUENCE_END, implicit, _UNDEFINED)


def _nested(implicit: bool, depth: int) -> bytes:
    """Sequences of undefined length nested ``depth`` deep (private, so that implicit VR reads them as sequences)."""
    inner = b""
    for _ in range(depth):
        inner = _element(0x00091010, b"SQ", _item(inner, _UNDEFINED) + _ITEM_END + _SEQUENCE_END, implicit, _UNDEFINED)
    return inner


def _nested_overrun(implicit: bool) -> bytes:
    """A ContourImageSequence of undefined length whose item, of defined length, holds an element running past it
    (pydicom reads such an element whole)."""
    header = _image_sequence(implicit, b"")[:-24]
    return header + _item(_uid(implicit)[:8], 8) + _SEQUENCE_END


def _uid(implicit: bool) -> bytes:
    return _element(0x00081155, b"UI", b"1.2.3.4\0", implicit)


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize(
    ("make", "items"),
    [
        (lambda v: _item(_contour_item(v)), 1),
        (lambda v: _item(_contour_item(v)) * 3, 3),
        (lambda v: b"", 0),
        (lambda v: _item(_contour_item(v), _UNDEFINED) + _ITEM_END, 1),  # an item of undefined length
        (lambda v: _item(_contour_item(v, _image_sequence(v, _uid(v)))), 1),  # a nested sequence of undefined length
        (lambda v: _item(_contour_item(v, _nested(v, 8))), 1),
        (lambda v: _item(_contour_item(v)) + _SEQUENCE_END, 1),  # a sequence delimiter kept with the value
        (lambda v: _item(_contour_item(v)) + b"\0\0\0\0", None),  # bytes between items
        (lambda v: _item(_contour_item(v))[:-3], None),  # truncated
        (lambda v: _item(_contour_item(v, _element(0x30060042, b"CS", b"POINT ", v))), None),  # an element twice
        (lambda v: _item(_contour_item(v), length=len(_contour_item(v)) - 4), None),  # ContourData runs past its item
        (lambda v: _element(0x30060042, b"CS", b"AB", v), None),  # an element where an item belongs
        (lambda v: _item(_contour_item(v) + _ITEM_END), None),  # an item delimiter in an item of defined length
        (lambda v: _item(_contour_item(v, _nested_overrun(v))), None),
        (lambda v: _item(_contour_item(v, _element(0x00080005, b"CS", b"ISO_IR 999", v))), None),  # a character set
        (lambda v: _item(_contour_item(v), _UNDEFINED) + _ITEM_END[:4] + b"OB\0\0", None),  # a delimiter of length
        (lambda v: _item(_contour_item(v, _nested(v, 40))), None),  # nested too deep
        (lambda v: _item(_contour_item(v, _nested(v, 2000))), None),  # far too deep: still no exception
    ],
    ids=[
        "one",
        "three",
        "empty",
        "undefined-item",
        "nested",
        "nested-8",
        "delimiter",
        "between",
        "truncated",
        "twice",
        "overrun",
        "no-item",
        "stray",
        "nested-overrun",
        "character-set",
        "delimiter-length",
        "deep",
        "very-deep",
    ],
)
def test_the_contour_walker_takes_only_plain_encodings(make, items, implicit):
    from isodose.dicom.items import sequence_items

    walked = sequence_items(make(implicit), implicit_vr=implicit)
    if items is None:
        assert walked is None
    else:
        assert walked is not None and len(walked) == items
        assert all(item[0x30060042] == b"CLOSED_PLANAR " and item[0x30060050].startswith(b"0\\0") for item in walked)


@pytest.mark.parametrize(
    ("raw", "implicit"),
    [
        (_item(_element(0x30060046, b"IS", _item(b"", _UNDEFINED) + _ITEM_END, True, _UNDEFINED)), True),
        (_item(_element(0x30060046, b"UT", _item(b"", _UNDEFINED) + _ITEM_END, False, _UNDEFINED)), False),
        (_item(_element(0x00091010, b"UN", b"1234", True, _UNDEFINED)), True),  # private, but not items
        (_item(_contour_item(False, _element(0x00080005, b"CS", b"ISO_IR 100"))), False),
    ],
    ids=["public-not-a-sequence", "explicit-not-sq-or-un", "private-not-items", "character-set"],
)
def test_the_contour_walker_leaves_undefined_lengths_pydicom_reads_otherwise(raw, implicit):
    """Elements of undefined length that pydicom reads up to a delimiter rather than as a sequence, and a Specific
    Character Set (which pydicom converts, with a warning where it is unknown), are left to pydicom."""
    from isodose.dicom.items import sequence_items

    assert sequence_items(raw, implicit_vr=implicit) is None


def test_a_contour_sequence_pydicom_would_not_read_as_one_is_read_as_before(tmp_path, monkeypatch):
    """A ContourSequence written with VR OB (pydicom keeps its bytes as bytes) reads as it did before the walker: the
    same outcome either way, here an error."""
    import isodose.dicom.read as reader

    path = _structure_file(tmp_path)
    data = path.read_bytes()
    tag = b"\x06\x30\x40\x00SQ"
    assert data.count(tag) == 3  # each ROI's, the empty one's too
    path.write_bytes(data.replace(tag, b"\x06\x30\x40\x00OB"))

    def outcome():
        try:
            return [len(s.contours) for s in read_structures(path).structures]
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    walked = outcome()
    monkeypatch.setattr(reader, "_contours_from_bytes", lambda item: None)
    assert walked == outcome() and "malformed DICOM" in walked


@given(st.binary(max_size=200), st.booleans(), st.integers(0, 199), st.binary(min_size=1, max_size=4))
@settings(max_examples=300, deadline=None)
def test_the_contour_walker_never_raises_on_damaged_bytes(noise, implicit, at, patch):
    """Whatever the bytes (noise, or a plain encoding with some of its bytes overwritten), the walker gives items or
    None (pydicom then reads the sequence), never an exception of its own."""
    from isodose.dicom.items import sequence_items

    plain = _contour_item(implicit)
    for raw in (
        noise,
        _item(plain) * 2,
        _item(plain, _UNDEFINED) + _item(plain),
        _item(_contour_item(implicit, _nested(implicit, 3))),
    ):
        damaged = raw[:at] + patch + raw[at + len(patch) :]
        for candidate in (raw, damaged):
            walked = sequence_items(candidate, implicit_vr=implicit)
            assert walked is None or all(isinstance(item, dict) for item in walked)


def _roi_table_file(tmp_path, transfer_syntax, change=None):
    """A structure set whose ROI sequences are of defined length (so that pydicom leaves their bytes unparsed
    until asked), ``change(ds)`` made to it first."""
    path = _structure_file(tmp_path)
    ds = pydicom.dcmread(path)
    ds.RTROIObservationsSequence[0].RTROIInterpretedType = "ORGAN"
    ds.StructureSetROISequence[1].ROIName = " Cord "
    ds.StructureSetROISequence[2].ROIName = ""
    ds.StructureSetROISequence[2].ReferencedFrameOfReferenceUID = "1.2.3.4"
    if change is not None:
        with warnings.catch_warnings():  # pydicom's, about the odd values some changes make on purpose
            warnings.simplefilter("ignore")
            change(ds)
    for keyword in ("StructureSetROISequence", "RTROIObservationsSequence"):
        if keyword in ds:
            ds[keyword].is_undefined_length = False
            for item in ds[keyword].value:
                item.is_undefined_length_sequence_item = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _write_in(ds, path, transfer_syntax)
    return path


def _observation_without_a_number(ds):
    item = Dataset()
    item.ObservationNumber = 99
    item.RTROIInterpretedType = "AVOIDANCE"
    ds.RTROIObservationsSequence.append(item)


def _charset(ds, name):
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StructureSetROISequence[0].ROIName = name


ROI_TABLE_CHANGES = {
    "plain": (None, True),
    "an observation without an ROI number": (_observation_without_a_number, True),
    "a NUL-padded frame of reference": (
        lambda ds: ds.StructureSetROISequence[0].__setitem__(
            0x30060024, pydicom.DataElement(0x30060024, "UI", "1.2.3\x00")
        ),
        True,
    ),
    "a name outside ASCII": (lambda ds: _charset(ds, "Tumör"), False),
    "a name of two values": (lambda ds: setattr(ds.StructureSetROISequence[0], "ROIName", ["Shell", "Outer"]), False),
    "an ROI number with a decimal point": (
        lambda ds: ds.StructureSetROISequence[0].__setitem__(0x30060022, pydicom.DataElement(0x30060022, "IS", "3.0")),
        False,
    ),
    "an interpreted type in lower case": (
        lambda ds: ds.RTROIObservationsSequence[1].__setitem__(
            0x300600A4, pydicom.DataElement(0x300600A4, "CS", "ptv")
        ),
        False,
    ),
    "no observations": (lambda ds: delattr(ds, "RTROIObservationsSequence"), True),
    "a name of 65 characters": (lambda ds: setattr(ds.StructureSetROISequence[0], "ROIName", "N" * 65), False),
    "an ROI number of 13 characters": (
        lambda ds: ds.StructureSetROISequence[0].__setitem__(
            0x30060022, pydicom.DataElement(0x30060022, "IS", "0000000000003")
        ),
        False,
    ),
    "an ROI number beyond 32 bits": (
        lambda ds: ds.StructureSetROISequence[0].__setitem__(
            0x30060022, pydicom.DataElement(0x30060022, "IS", "4294967299")
        ),
        False,
    ),
    "a frame of reference with a leading zero": (
        lambda ds: setattr(ds.StructureSetROISequence[0], "ReferencedFrameOfReferenceUID", "1.02.3"),
        False,
    ),
    "an ROI number written as US": (
        lambda ds: ds.StructureSetROISequence[0].__setitem__(0x30060022, pydicom.DataElement(0x30060022, "US", 12593)),
        "implicit",  # where its bytes are read as the dictionary's VR says, by pydicom too
    ),
    "an ROI name written as OB": (
        lambda ds: ds.StructureSetROISequence[1].__setitem__(
            0x30060026, pydicom.DataElement(0x30060026, "OB", b"PTV ")
        ),
        "implicit",  # where its bytes are read as the dictionary's VR says, by pydicom too
    ),
}


def _read_or_error(path):
    """The structures read from ``path``, or the error their reading raised, as text."""
    try:
        return read_structures(path)
    except IsodoseError as exc:
        return str(exc)


@pytest.mark.parametrize(
    "transfer_syntax",
    [pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ExplicitVRBigEndian],
    ids=["implicit", "explicit", "big-endian"],
)
@pytest.mark.parametrize("change", list(ROI_TABLE_CHANGES))
def test_roi_tables_read_from_their_bytes_as_from_pydicoms_items(
    tmp_path, monkeypatch, caplog, transfer_syntax, change
):
    """Each ROI's number, name, frame of reference and interpreted type, read from the bytes of the ROI sequences'
    items where every value is plain: the same as from pydicom's items, with the same warnings; anything else
    (another character set, a name of two values, a value pydicom warns about, big endian) read through pydicom."""
    import isodose.dicom.read as reader

    edit, plain = ROI_TABLE_CHANGES[change]
    path = _roi_table_file(tmp_path, transfer_syntax, edit)
    from_bytes = reader._roi_table_from_bytes
    taken: list = []
    monkeypatch.setattr(reader, "_roi_table_from_bytes", lambda ds: taken.append(from_bytes(ds)) or taken[-1])
    caplog.clear()  # pydicom's warnings as the file was made
    with caplog.at_level(logging.WARNING):
        fast = _read_or_error(path)
    fast_log, _ = caplog.text, caplog.clear()
    monkeypatch.setattr(reader, "_roi_table_from_bytes", lambda ds: None)
    with caplog.at_level(logging.WARNING):
        slow = _read_or_error(path)
    little_endian = transfer_syntax != pydicom.uid.ExplicitVRBigEndian
    plain = plain is True or (plain == "implicit" and transfer_syntax.is_implicit_VR)
    assert (taken[0] is not None) == (plain and little_endian)
    assert fast_log == caplog.text
    if isinstance(slow, str):  # an error either way, the same one
        assert fast == slow
        return
    described = [(s.number, s.name, s.frame_of_reference_uid, s.interpreted_type) for s in fast.structures]
    assert described == [(s.number, s.name, s.frame_of_reference_uid, s.interpreted_type) for s in slow.structures]
    assert [len(s.contours) for s in fast.structures] == [len(s.contours) for s in slow.structures]
    if change == "plain":
        assert [row[1:3] for row in described] == [("Shell", "1.2.3"), ("Cord", "1.2.3"), ("ROI 9", "1.2.3.4")]
        assert "ORGAN" in [row[3] for row in described]


def test_a_structure_set_without_roi_definitions_is_the_same_error(tmp_path):
    path = _roi_table_file(
        tmp_path, pydicom.uid.ExplicitVRLittleEndian, lambda ds: delattr(ds, "StructureSetROISequence")
    )
    with pytest.raises(StructureError, match="StructureSetROISequence is missing or empty"):
        read_structures(path)
