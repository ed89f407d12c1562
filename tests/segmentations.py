"""DICOM SEG files for tests: a CT series of empty slices on a chosen grid, and a SEG of masks on it, made with
highdicom as a segmentation tool would write them."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_series(n_slices, rows, cols, origin, spacing, orientation=(1, 0, 0, 0, 1, 0), frame="1.2.3.4", patient="P1"):
    """CT slices of ``rows`` x ``cols`` voxels of ``spacing`` (x, y, z) from ``origin``, along the normal."""
    study, series = generate_uid(), generate_uid()
    row_dir, col_dir = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    out = []
    for k in range(n_slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality = "CT"
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient, "Test^Patient", "", ""
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = (
            "1",
            "20260101",
            "120000",
            "",
            "",
        )
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.FrameOfReferenceUID = frame
        pos = np.array(origin, float) + normal * spacing[2] * k
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing, column spacing
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.zeros((rows, cols), np.int16).tobytes()
        ds.Manufacturer = "isodose"
        out.append(ds)
    return out


def seg_of(series, masks, labels, fractional=False):
    """A SEG of ``masks`` (each ``(slices, rows, columns)``, bool or fractions) on ``series``, named ``labels``."""
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k + 1,
            segment_label=label,
            segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
            segmented_property_type=hd.sr.CodedConcept("27925004", "SCT", "Nodule"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for k, label in enumerate(labels)
    ]
    array = np.stack(masks, axis=-1)  # (slices, rows, cols, segments)
    return hd.seg.Segmentation(
        source_images=series,
        pixel_array=array if fractional else array.astype(np.uint8),
        segmentation_type="FRACTIONAL" if fractional else "BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="isodose",
        manufacturer_model_name="tests",
        software_versions="0",
        device_serial_number="0",
    )
