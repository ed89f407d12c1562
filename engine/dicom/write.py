"""Writers of RTDOSE, RTSTRUCT and RTPLAN for synthetic phantoms and demo cohorts.

They write what the readers must handle: any axis-aligned orientation, relative or absolute frame offsets
in either direction, 16- or 32-bit pixels. They are not meant to round-trip clinical data.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import IsodoseError
from ..model import DeformableRegistration, DoseGrid, ReportedDVH, Structure, StructureSet

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
SPATIAL_REGISTRATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.1"

#: Patient positions and the ImageOrientationPatient a planning system writes for them.
ORIENTATIONS = {
    "HFS": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "FFS": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "HFP": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "FFP": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
}


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > 16:
        text = f"{value:.9e}"
    return text


def _precise_ds(value: float) -> str:
    """A decimal string of at most 16 characters, with 10 significant digits (DVH data, where volumes of a few
    mm3 matter)."""
    text = f"{value:.10g}"
    return "0" if text == "-0" else text


def _decimal_strings(values: np.ndarray, precise: bool = False) -> bytes:
    """A multi-valued DS element's bytes (backslash-separated, even length), written without pydicom
    converting and validating every number: contours hold hundreds of thousands of them."""
    text = "\\".join((_precise_ds if precise else _ds)(float(v)) for v in values)
    if len(text) % 2:
        text += " "
    return text.encode("ascii")


def _raw_decimal_element(keyword: str, values: np.ndarray, precise: bool = False):
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    data = _decimal_strings(values, precise)
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword} is not a DICOM keyword")
    return RawDataElement(Tag(tag), "DS", len(data), data, 0, False, True, True, False)


def new_uid() -> str:
    """A new DICOM UID (for frames of reference, studies and plans of generated cases)."""
    from pydicom.uid import generate_uid

    return str(generate_uid())


def _base_dataset(
    path: str | PathLike[str],
    sop_class: str,
    modality: str,
    patient_id: str,
    study_uid: str | None,
    frame_of_reference_uid: str,
    sop_instance_uid: str | None = None,
    implicit_vr: bool = False,
):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid) if sop_instance_uid else generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    now = _dt.datetime.now()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.Manufacturer = "isodose"
    return ds


def _save(ds, path: str | PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dose(
    grid: DoseGrid,
    path: str | PathLike[str],
    *,
    orientation: str | Sequence[float] = "HFS",
    offsets: str = "relative",
    reverse_frames: bool = False,
    bits: int = 32,
    patient_id: str = "PHANTOM",
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    dose_units: str = "GY",
    summation_type: str = "PLAN",
    dose_type: str = "PHYSICAL",
    referenced_plan_uid: str | None = None,
    sop_instance_uid: str | None = None,
    relative_scale_gy: float | None = None,
    dvhs: Sequence[ReportedDVH] = (),
    referenced_structure_set_uid: str | None = None,
    dvh_normalization_gy: float | None = None,
    referenced_beam_number: int | None = None,
) -> Path:
    """Write ``grid`` as an RTDOSE.

    ``orientation`` is a patient position (HFS, FFS, HFP, FFP) or any axis-aligned ImageOrientationPatient;
    ``offsets`` is "relative" (first value 0) or "absolute" (patient z: the standard's form for the identity
    orientation; for other orientations whose slice normal lies along z, the departure some systems make);
    ``reverse_frames`` stores the frames against the normal, so that the offsets decrease. ``summation_type``,
    ``dose_type`` and ``referenced_plan_uid`` fill DoseSummationType, DoseType and ReferencedRTPlanSequence;
    with ``dose_units`` RELATIVE, ``relative_scale_gy`` is the dose of relative value 1.0 (the grid is divided by
    it). ``dvhs`` are written as the DVH Sequence (each item's values as they are: its type, units, scaling, bin
    widths, volumes and statistics), referring to the ROIs of the RTSTRUCT ``referenced_structure_set_uid``, with
    DVHNormalizationDoseValue ``dvh_normalization_gy`` for relative ones. ``referenced_beam_number`` names the
    beam of a per-beam dose (in the plan reference's ReferencedFractionGroupSequence).
    """
    from pydicom.uid import generate_uid

    iop = np.array(ORIENTATIONS[orientation] if isinstance(orientation, str) else orientation, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir) * (-1.0 if reverse_frames else 1.0)
    if offsets not in ("relative", "absolute"):
        raise IsodoseError(f"offsets must be 'relative' or 'absolute', not {offsets!r}")
    if offsets == "absolute" and abs(abs(normal[2]) - 1.0) > 1e-9:
        raise IsodoseError("absolute GridFrameOffsetVector needs a slice normal along z")
    if bits not in (16, 32):
        raise IsodoseError(f"bits must be 16 or 32, not {bits}")

    # File axes (frame, row, column) run along (normal, column direction, row direction).
    dose = grid.dose_gy.astype(np.float64)
    if relative_scale_gy is not None:
        dose = dose / relative_scale_gy
    file_axes = []
    for direction in (normal, col_dir, row_dir):
        patient_axis = int(np.argmax(np.abs(direction)))
        file_axes.append((patient_axis, 1 if direction[patient_axis] > 0 else -1))
    dose = np.transpose(dose, [2 - axis for axis, _ in file_axes])
    position = np.zeros(3)
    for a, (axis, sign) in enumerate(file_axes):
        n = grid.dose_gy.shape[2 - axis]
        if sign < 0:
            dose = np.flip(dose, axis=a)
            position[axis] = grid.origin_mm[axis] + grid.spacing_mm[axis] * (n - 1)
        else:
            position[axis] = grid.origin_mm[axis]
    frames, rows, columns = dose.shape
    frame_step = grid.spacing_mm[file_axes[0][0]]
    relative = frame_step * np.arange(frames) * (-1.0 if reverse_frames else 1.0)
    # Absolute offsets are the frames' z: along the normal, which may point to -z.
    frame_offsets = (
        position[2] + relative * np.sign(np.cross(row_dir, col_dir)[2]) if offsets == "absolute" else relative
    )

    top = float(dose.max())
    levels = 2**bits - 1
    scaling = top / levels if top > 0 else 1.0
    pixels = np.rint(dose / scaling).astype(np.uint16 if bits == 16 else np.uint32)

    ds = _base_dataset(
        path,
        RT_DOSE_STORAGE,
        "RTDOSE",
        patient_id,
        study_uid,
        frame_of_reference_uid or grid.frame_of_reference_uid or generate_uid(),
        sop_instance_uid,
        implicit_vr=bool(dvhs),  # DVH Data of thousands of bins outgrows explicit VR's 64 kB for a DS
    )
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.Rows = rows
    ds.Columns = columns
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x3004000C
    ds.PixelSpacing = [_ds(grid.spacing_mm[file_axes[1][0]]), _ds(grid.spacing_mm[file_axes[2][0]])]
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in iop]
    ds.SliceThickness = _ds(frame_step)
    ds.GridFrameOffsetVector = [_ds(v) for v in frame_offsets]
    ds.DoseGridScaling = f"{scaling:.9e}"
    ds.DoseUnits = dose_units
    ds.DoseType = dose_type
    ds.DoseSummationType = summation_type
    if referenced_plan_uid:
        from pydicom.dataset import Dataset

        reference = Dataset()
        reference.ReferencedSOPClassUID = RT_PLAN_STORAGE
        reference.ReferencedSOPInstanceUID = referenced_plan_uid
        if referenced_beam_number is not None:
            group, beam = Dataset(), Dataset()
            beam.ReferencedBeamNumber = referenced_beam_number
            group.ReferencedFractionGroupNumber = 1
            group.ReferencedBeamSequence = [beam]
            reference.ReferencedFractionGroupSequence = [group]
        ds.ReferencedRTPlanSequence = [reference]
    if referenced_structure_set_uid:
        from pydicom.dataset import Dataset

        structure_set = Dataset()
        structure_set.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
        structure_set.ReferencedSOPInstanceUID = referenced_structure_set_uid
        ds.ReferencedStructureSetSequence = [structure_set]
    if dvh_normalization_gy is not None:
        ds.DVHNormalizationDoseValue = _precise_ds(dvh_normalization_gy)
    if dvhs:
        ds.DVHSequence = [_dvh_item(dvh) for dvh in dvhs]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return _save(ds, path)


def add_dvh_sequence(
    path: str | PathLike[str], dvhs: Sequence[ReportedDVH], referenced_structure_set_uid: str | None = None
) -> Path:
    """Give the RTDOSE at ``path`` a DVH Sequence holding ``dvhs`` (replacing any it had), referring to the ROIs of
    the RTSTRUCT ``referenced_structure_set_uid``; the file is rewritten in implicit VR (DVH Data outgrows explicit
    VR's 64 kB for a DS)."""
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian

    ds = pydicom.dcmread(path)
    ds.DVHSequence = [_dvh_item(dvh) for dvh in dvhs]
    if referenced_structure_set_uid:
        from pydicom.dataset import Dataset

        structure_set = Dataset()
        structure_set.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
        structure_set.ReferencedSOPInstanceUID = referenced_structure_set_uid
        ds.ReferencedStructureSetSequence = [structure_set]
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return _save(ds, path)


def _dvh_item(dvh: ReportedDVH):
    """One item of the DVH Sequence (RT DVH module), with the values of ``dvh`` as they are."""
    import math

    from pydicom.dataset import Dataset

    item = Dataset()
    roi = Dataset()
    roi.ReferencedROINumber = dvh.roi_number
    roi.DVHROIContributionType = "INCLUDED"
    item.DVHReferencedROISequence = [roi]
    item.DVHType = dvh.dvh_type
    item.DoseUnits = dvh.dose_units
    item.DoseType = dvh.dose_type
    item.DVHDoseScaling = _precise_ds(dvh.dose_scaling)
    item.DVHVolumeUnits = dvh.volume_units
    item.DVHNumberOfBins = len(dvh.values)
    data = np.empty(2 * len(dvh.values))
    data[0::2] = dvh.bin_widths
    data[1::2] = dvh.values
    raw = _raw_decimal_element("DVHData", data, precise=True)
    item[raw.tag] = raw
    item.set_original_encoding(False, True, item._character_set)
    for keyword, value in (
        ("DVHMinimumDose", dvh.minimum_dose),
        ("DVHMeanDose", dvh.mean_dose),
        ("DVHMaximumDose", dvh.maximum_dose),
    ):
        if math.isfinite(value):
            setattr(item, keyword, _precise_ds(value))
    return item


def write_structures(
    structures: StructureSet | Sequence[Structure],
    path: str | PathLike[str],
    *,
    patient_id: str = "PHANTOM",
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    interpreted_types: dict[str, str] | None = None,
    sop_instance_uid: str | None = None,
) -> Path:
    """Write structures as an RTSTRUCT with one CLOSED_PLANAR contour item per ring."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    items = structures.structures if isinstance(structures, StructureSet) else tuple(structures)
    frame_uid = (
        frame_of_reference_uid
        or (structures.frame_of_reference_uid if isinstance(structures, StructureSet) else "")
        or generate_uid()
    )
    ds = _base_dataset(path, RT_STRUCTURE_SET_STORAGE, "RTSTRUCT", patient_id, study_uid, frame_uid, sop_instance_uid)
    ds.StructureSetLabel = "isodose"
    ds.StructureSetDate = ds.StudyDate
    ds.StructureSetTime = ds.StudyTime
    referenced = Dataset()
    referenced.FrameOfReferenceUID = frame_uid
    ds.ReferencedFrameOfReferenceSequence = [referenced]
    roi_items, contour_items, observations = [], [], []
    for index, structure in enumerate(items):
        roi = Dataset()
        roi.ROINumber = structure.number
        roi.ReferencedFrameOfReferenceUID = frame_uid
        roi.ROIName = structure.name
        roi.ROIGenerationAlgorithm = "MANUAL"
        roi_items.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = structure.number
        roi_contour.ROIDisplayColor = [(97 * index) % 256, (53 * index + 80) % 256, (151 * index + 40) % 256]
        sequence = []
        for contour in structure.contours:
            item = Dataset()
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(contour.points_mm)
            points = np.column_stack([contour.points_mm, np.full(len(contour.points_mm), contour.z_mm)])
            raw = _raw_decimal_element("ContourData", points.ravel())
            item[raw.tag] = raw
            # Declared in the file's own encoding, the raw bytes are written as they are, not re-encoded.
            item.set_original_encoding(False, True, item._character_set)
            sequence.append(item)
        roi_contour.ContourSequence = sequence
        contour_items.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = structure.number
        observation.ReferencedROINumber = structure.number
        observation.RTROIInterpretedType = (
            (interpreted_types or {}).get(structure.name) or structure.interpreted_type or _type_by_name(structure.name)
        )
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = roi_items
    ds.ROIContourSequence = contour_items
    ds.RTROIObservationsSequence = observations
    return _save(ds, path)


def _type_by_name(name: str) -> str:
    """The RTROIInterpretedType a planning system gives an ROI of this name: GTV, CTV, PTV by the name's prefix,
    else ORGAN."""
    prefix = name.strip().upper()[:3]
    return prefix if prefix in ("GTV", "CTV", "PTV", "ITV") else "ORGAN"


def write_plan(
    path: str | PathLike[str],
    *,
    prescription_gy: float | None,
    number_of_fractions: int | None,
    patient_id: str = "PHANTOM",
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    target_name: str = "PTV",
    sop_instance_uid: str | None = None,
    number_of_beams: int = 0,
) -> Path:
    """Write a minimal RTPLAN holding a prescription (target dose reference) and the fractions planned."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = _base_dataset(
        path,
        RT_PLAN_STORAGE,
        "RTPLAN",
        patient_id,
        study_uid,
        frame_of_reference_uid or generate_uid(),
        sop_instance_uid,
    )
    ds.RTPlanLabel = "isodose"
    ds.RTPlanGeometry = "PATIENT"
    if prescription_gy is not None:
        reference = Dataset()
        reference.DoseReferenceNumber = 1
        reference.DoseReferenceStructureType = "VOLUME"
        reference.DoseReferenceDescription = target_name
        reference.DoseReferenceType = "TARGET"
        reference.TargetPrescriptionDose = _ds(prescription_gy)
        ds.DoseReferenceSequence = [reference]
    if number_of_fractions is not None:
        group = Dataset()
        group.FractionGroupNumber = 1
        group.NumberOfFractionsPlanned = number_of_fractions
        group.NumberOfBeams = number_of_beams
        group.NumberOfBrachyApplicationSetups = 0
        if number_of_beams:
            beams = []
            for number in range(1, number_of_beams + 1):
                beam = Dataset()
                beam.ReferencedBeamNumber = number
                beams.append(beam)
            group.ReferencedBeamSequence = beams
            described = []
            for number in range(1, number_of_beams + 1):
                beam = Dataset()
                beam.BeamNumber = number
                beam.BeamName = f"Beam {number}"
                beam.BeamType = "DYNAMIC"
                beam.RadiationType = "PHOTON"
                beam.TreatmentDeliveryType = "TREATMENT"
                described.append(beam)
            ds.BeamSequence = described
        ds.FractionGroupSequence = [group]
    return _save(ds, path)


def write_registration(
    path: str | PathLike[str],
    *,
    registered_frame_uid: str,
    source_frame_uid: str,
    matrix: np.ndarray,
    patient_id: str = "PHANTOM",
    study_uid: str | None = None,
    matrix_type: str = "RIGID",
) -> Path:
    """Write a Spatial Registration whose ``matrix`` maps points of ``source_frame_uid`` into
    ``registered_frame_uid`` (the registration's own frame), with the identity item for the latter."""
    from pydicom.dataset import Dataset

    ds = _base_dataset(path, SPATIAL_REGISTRATION_STORAGE, "REG", patient_id, study_uid, registered_frame_uid)
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.InstanceNumber = 1
    ds.ContentLabel = "REGISTRATION"
    items = []
    for frame, m in ((registered_frame_uid, np.eye(4)), (source_frame_uid, np.asarray(matrix, dtype=float))):
        step = Dataset()
        step.FrameOfReferenceTransformationMatrixType = matrix_type
        step.FrameOfReferenceTransformationMatrix = [f"{v:.10g}"[:16] for v in m.ravel()]
        registration = Dataset()
        registration.MatrixSequence = [step]
        item = Dataset()
        item.FrameOfReferenceUID = frame
        item.MatrixRegistrationSequence = [registration]
        items.append(item)
    ds.RegistrationSequence = items
    return _save(ds, path)


DEFORMABLE_REGISTRATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.3"


def write_deformable_registration(
    path: str | PathLike[str],
    registration: DeformableRegistration,
    *,
    patient_id: str = "PHANTOM",
    study_uid: str | None = None,
) -> Path:
    """Write ``registration`` as a Deformable Spatial Registration: its registered frame the file's frame of
    reference, an item of the identity for that frame, and an item for its source frame holding the matrices and
    the deformation grid (float32 vectors, x fastest)."""
    from pydicom.dataset import Dataset

    ds = _base_dataset(
        path, DEFORMABLE_REGISTRATION_STORAGE, "REG", patient_id, study_uid, registration.registered_frame_uid
    )
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.InstanceNumber = 1
    ds.ContentLabel = "DEFORMABLE"

    def matrix_item(matrix: np.ndarray):
        item = Dataset()
        item.FrameOfReferenceTransformationMatrixType = "AFFINE"
        item.FrameOfReferenceTransformationMatrix = [_precise_ds(v) for v in np.asarray(matrix, dtype=float).ravel()]
        return item

    own = Dataset()
    own.SourceFrameOfReferenceUID = registration.registered_frame_uid
    own.RegistrationTypeCodeSequence = []
    deformable = Dataset()
    deformable.SourceFrameOfReferenceUID = registration.source_frame_uid
    deformable.RegistrationTypeCodeSequence = []
    deformable.PreDeformationMatrixRegistrationSequence = [matrix_item(registration.pre_matrix)]
    deformable.PostDeformationMatrixRegistrationSequence = [matrix_item(registration.post_matrix)]
    grid = Dataset()
    directions = np.asarray(registration.grid_directions, dtype=float)
    grid.ImagePositionPatient = [_precise_ds(v) for v in registration.grid_origin_mm]
    grid.ImageOrientationPatient = [_precise_ds(v) for v in (*directions[:, 0], *directions[:, 1])]
    nz, ny, nx = registration.grid_shape
    grid.GridDimensions = [nx, ny, nz]
    grid.GridResolution = [float(v) for v in registration.grid_spacing_mm]
    grid.VectorGridData = np.ascontiguousarray(registration.vectors_mm, dtype="<f4").tobytes()
    deformable.DeformableRegistrationGridSequence = [grid]
    ds.DeformableRegistrationSequence = [own, deformable]
    return _save(ds, path)


def write_example_case(folder: str | PathLike[str], *, with_dvhs: bool = False) -> tuple[Path, Path, Path]:
    """Write :func:`isodose.phantoms.example_case` as DICOM: an RTDOSE, an RTSTRUCT and an RTPLAN (70 Gy in
    35 fractions) of one patient and frame of reference, for examples and doctests.

    Parameters
    ----------
    folder : str or path
        An existing folder; ``RD.example.dcm``, ``RS.example.dcm`` and ``RP.example.dcm`` are written into it.
    with_dvhs : bool
        Give the RTDOSE a DVH Sequence holding the closed-form DVH of each ROI (cumulative, cc, 0.01 Gy bins;
        :func:`isodose.phantoms.reported_dvh`), as a planning system exports its own.

    Returns
    -------
    tuple of Path
        The RTDOSE, RTSTRUCT and RTPLAN files.

    Examples
    --------
    >>> import tempfile
    >>> rd, rs, rp = write_example_case(tempfile.mkdtemp())
    >>> rd.name, rs.name, rp.name
    ('RD.example.dcm', 'RS.example.dcm', 'RP.example.dcm')
    """
    from pydicom.uid import generate_uid

    from ..phantoms import example_case

    folder = Path(folder)
    grid, structures = example_case()
    frame = grid.frame_of_reference_uid
    plan_uid = generate_uid()
    plan = write_plan(
        folder / "RP.example.dcm",
        prescription_gy=70.0,
        number_of_fractions=35,
        frame_of_reference_uid=frame,
        target_name="PTV",
        sop_instance_uid=plan_uid,
    )
    structure_set_uid = generate_uid()
    rois = write_structures(
        structures,
        folder / "RS.example.dcm",
        frame_of_reference_uid=frame,
        interpreted_types={s.name: s.interpreted_type for s in structures.structures},
        sop_instance_uid=structure_set_uid,
    )
    dvhs = []
    if with_dvhs:
        from ..phantoms import example_truths, reported_dvh

        numbers = {s.name: s.number for s in structures.structures}
        dvhs = [reported_dvh(truth, numbers[name]) for name, truth in example_truths().items()]
    dose = write_dose(
        grid,
        folder / "RD.example.dcm",
        frame_of_reference_uid=frame,
        referenced_plan_uid=plan_uid,
        dvhs=dvhs,
        referenced_structure_set_uid=structure_set_uid if with_dvhs else None,
    )
    return dose, rois, plan
