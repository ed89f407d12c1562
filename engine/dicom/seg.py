"""DICOM Segmentation objects (SEG) as structures, read with highdicom (the optional extra ``isodose[seg]``).

Each segment is a structure whose voxels are a :class:`~isodose.model.LabelMask` on the segmentation's own grid
(its planes' positions and orientation, oblique ones included): weights 0 or 1 for a BINARY segmentation, the
fractions (probability or occupancy, rescaled to [0, 1]) for a FRACTIONAL one. Its name is the segment's
SegmentLabel, its number the SegmentNumber, and its frame of reference the SEG's, which must be named: a SEG
whose frame is unknown cannot be placed on the planning CT.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import StructureError
from ..model import LabelMask, Structure, StructureSet, xyz
from .read import pydicom_warnings


def _highdicom(path: Path):
    try:
        import highdicom
    except ImportError as exc:
        raise StructureError("reading a DICOM SEG needs highdicom: pip install 'isodose[seg]'", path=path) from exc
    return highdicom


def read_segmentation(path: str | PathLike[str]) -> StructureSet:
    """The segments of a DICOM SEG as structures (see the module docstring).

    Raises
    ------
    StructureError
        One line naming the file, for: a file that is not a readable SEG; a SEG naming no frame of reference; one
        whose planes do not make a regular grid; a segment with no voxel inside; and when highdicom is not
        installed.
    """
    path = Path(path)
    highdicom = _highdicom(path)
    if not path.is_file():
        raise StructureError("no such segmentation file", path=path)
    with pydicom_warnings(path):
        try:
            seg = highdicom.seg.segread(path)
        except Exception as exc:  # not a SEG, or damaged: pydicom and highdicom raise many kinds
            raise StructureError(f"cannot be read as a DICOM SEG ({type(exc).__name__}: {exc})", path=path) from exc
    frame = str(getattr(seg, "FrameOfReferenceUID", "") or "").strip()
    if not frame:
        raise StructureError(
            "names no frame of reference (FrameOfReferenceUID), so its segments cannot be placed on the planning CT",
            path=path,
        )
    fractional = str(seg.segmentation_type.value).upper() == "FRACTIONAL"
    structures = []
    for number in seg.segment_numbers:
        try:
            volume = seg.get_volume(segment_numbers=[number], combine_segments=False, dtype=np.float32)
        except (ValueError, RuntimeError) as exc:
            raise StructureError(f"segment {number}: its frames do not make a regular grid ({exc})", path=path) from exc
        weights = np.asarray(volume.array, dtype=np.float32)
        weights = weights.reshape(weights.shape[:3])  # (slices, rows, columns), one segment's channel
        if not fractional:
            weights = (weights > 0).astype(np.float32)
        label = str(seg.get_segment_description(number).segment_label or f"segment {number}").strip()
        if not np.any(weights > 0):
            raise StructureError(f"segment {number} ({label}) holds no voxel inside", path=path)
        # highdicom's array axes: slices, rows, columns; a LabelMask's: z, y, x with x the columns' direction.
        axes = np.asarray(volume.direction, dtype=np.float64)
        spacing = np.asarray(volume.spacing, dtype=np.float64)
        mask = LabelMask(
            np.ascontiguousarray(weights),
            xyz(volume.position),
            xyz(spacing[::-1]),
            np.ascontiguousarray(axes[:, ::-1]),
        )
        structures.append(
            Structure(label, int(number), (), frame, str(path), mask=mask.cropped().with_increasing_axes())
        )
    patient = str(getattr(seg, "PatientID", "") or "")
    study = str(getattr(seg, "StudyInstanceUID", "") or "")
    return StructureSet(tuple(structures), frame, str(path), patient, study)
