"""Structures from label images: binary masks, multi-label maps and fractional (probability or partial-volume)
maps, as research tools store them (3D Slicer, ITK-SNAP, nnU-Net, TotalSegmentator), read with SimpleITK (the
optional extra ``isodose[images]``).

Each structure of a label image is a :class:`~isodose.model.LabelMask`: every voxel a box of the image's own
geometry (origin, spacing and direction cosines, oblique ones included, in LPS as ITK reads them), weighted by
its value (1 for a binary mask or a label, the fraction for a fractional map). Sampling gives the DVH of that
voxelised shape (see :mod:`isodose.voxelize`).

Kinds, by the voxels' values:

- integers only: each value other than 0 is a label, one structure; a map whose only label is 1 is a binary
  mask;
- other values: a fractional map, one structure, its values in [0, 1].

Names: ``names`` given as a mapping ``{label: name}`` or a file (JSON ``{"1": "GTV", ...}``, or CSV rows
``label,name``); else the format's own (a 3D Slicer ``.seg.nrrd``'s ``SegmentN_Name`` and
``SegmentN_LabelValue``); else the file's stem for a binary or fractional map, ``label N`` for a label of a
multi-label map. An image names no frame of reference: its structures take the one the caller gives (by default
none, which means the dose's).

Formats: whatever SimpleITK reads as a 3-D scalar image: ``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``, ``.nrrd``,
``.nhdr``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from .errors import StructureError
from .images import IMAGE_SUFFIXES
from .model import LabelMask, Structure, StructureSet

#: File names that are label images (by their suffix): the image files SimpleITK reads.
LABEL_SUFFIXES = IMAGE_SUFFIXES
#: How far from orthonormal a direction matrix may be (ITK writes them to about 1e-6).
ORTHONORMAL_TOLERANCE = 1e-4
#: How far outside [0, 1] a fractional map's value may be (rounding of a float image).
FRACTION_TOLERANCE = 1e-6


def is_label_image(path: str | PathLike[str]) -> bool:
    """Whether ``path`` names a label image (by its suffix).

    >>> is_label_image("gtv.nii.gz"), is_label_image("RS.dcm")
    (True, False)
    """
    name = Path(path).name.lower()
    return any(name.endswith(suffix) for suffix in LABEL_SUFFIXES)


def _simpleitk(path: Path):
    try:
        import SimpleITK
    except ImportError as exc:
        raise StructureError("reading a label image needs SimpleITK: pip install 'isodose[images]'", path=path) from exc
    return SimpleITK


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(LABEL_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[:-4] if name.lower().endswith(".seg") else name


def read_label_names(path: str | PathLike[str]) -> dict[int, str]:
    """A label-to-name table from a JSON file (``{"1": "GTV", ...}``) or a CSV file (rows ``label,name``, a
    header row allowed).

    >>> import pathlib, tempfile
    >>> table = pathlib.Path(tempfile.mkdtemp()) / "names.csv"
    >>> _ = table.write_text("label,name\\n1,GTV\\n2,Cord\\n")
    >>> read_label_names(table)
    {1: 'GTV', 2: 'Cord'}
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise StructureError(f"the label names cannot be read ({exc.strerror or exc})", path=path) from exc
    except UnicodeDecodeError:
        raise StructureError("the label names are not a text file (JSON or CSV)", path=path) from None
    pairs: list[tuple[object, object]]
    if path.suffix.lower() == ".json":
        try:
            table = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StructureError(
                f"the label names are not valid JSON ({exc.msg}, line {exc.lineno})", path=path
            ) from exc
        if not isinstance(table, dict):
            raise StructureError('the label names must be a JSON object, {"1": "GTV", ...}', path=path)
        pairs = list(table.items())
    else:
        rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
        if rows and not rows[0][0].strip().lstrip("-").isdigit():
            rows = rows[1:]  # a header
        if any(len(row) < 2 for row in rows):
            raise StructureError("the label names need two columns, label,name", path=path)
        pairs = [(row[0], row[1]) for row in rows]
    names: dict[int, str] = {}
    for label, name in pairs:
        try:
            value = int(str(label).strip())
        except ValueError:
            raise StructureError(f"the label {label!r} is not a whole number", path=path) from None
        if value <= 0 or not str(name).strip():
            raise StructureError(f"label {value}: labels are whole numbers above 0, each with a name", path=path)
        if value in names:
            raise StructureError(f"label {value} is named twice", path=path)
        names[value] = str(name).strip()
    if not names:
        raise StructureError("the label names file names no label", path=path)
    return names


def _format_names(image) -> dict[int, str]:
    """The labels' names a file holds itself (3D Slicer's segmentation NRRD), else none."""
    names: dict[int, str] = {}
    keys = set(image.GetMetaDataKeys())
    k = 0
    while f"Segment{k}_Name" in keys:
        value_key = f"Segment{k}_LabelValue"
        try:
            label = int(image.GetMetaData(value_key)) if value_key in keys else k + 1
        except ValueError:
            label = k + 1
        names[label] = image.GetMetaData(f"Segment{k}_Name").strip()
        k += 1
    return names


def read_label_image(
    path: str | PathLike[str],
    *,
    names: Mapping[int, str] | str | PathLike[str] | None = None,
    labels: Sequence[int] | None = None,
    frame_of_reference_uid: str = "",
) -> StructureSet:
    """The structures of a label image (see the module docstring).

    Parameters
    ----------
    path : str or path
        The image.
    names : mapping or path, optional
        ``{label: name}``, or a file of them (:func:`read_label_names`).
    labels : sequence of int, optional
        The labels to keep (each must be in the image); by default every label.
    frame_of_reference_uid : str
        The frame of reference its structures are in (by default none: the dose's).

    Raises
    ------
    StructureError
        One line naming the file, for: a file SimpleITK cannot read; an image that is not 3-D and scalar; values
        that are not finite, or a fractional map's outside [0, 1]; a direction matrix that is not orthonormal; an
        image without any voxel inside, or a binary mask with every voxel inside; a label asked for, or named, that
        the image does not hold; and when SimpleITK is not installed.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> labels = np.zeros((4, 5, 6), np.uint8)
    >>> labels[1:3, 1:4, 1:3], labels[1:3, 1:4, 4:6] = 1, 2
    >>> path = write_label_image(pathlib.Path(tempfile.mkdtemp()) / "rois.nrrd", labels, spacing_mm=(1.0, 1.0, 2.0))
    >>> rois = read_label_image(path, names={1: "GTV", 2: "Cord"})
    >>> rois.names, round(rois.get("GTV").mask.volume_cc, 3)
    (['GTV', 'Cord'], 0.024)
    """
    from .images import read_image

    path = Path(path)
    sitk = _simpleitk(path)
    image = read_image(sitk, path, StructureError, "label image", 1, "a label image is 3-D with one value per voxel")
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=ORTHONORMAL_TOLERANCE):
        raise StructureError(
            "its direction matrix is not orthonormal (its axes are not perpendicular unit vectors): "
            "a sheared image cannot be taken as boxes",
            path=path,
        )
    values = sitk.GetArrayFromImage(image)  # (nz, ny, nx)
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise StructureError("holds values that are not finite", path=path)
    table = _names_table(names, path) if names is not None else _format_names(image)
    origin = tuple(float(v) for v in image.GetOrigin())
    spacing = tuple(float(v) for v in image.GetSpacing())

    def mask(weights: np.ndarray) -> LabelMask:
        """The structure's voxels cropped to the box of those inside, before they become float32 weights (a label
        of a large map is a small part of it)."""
        inside = weights > 0
        box = tuple(
            slice(int(held[0]), int(held[-1]) + 1)
            for axis in range(3)
            for held in [np.flatnonzero(np.any(inside, axis=tuple(a for a in range(3) if a != axis)))]
        )
        corner = np.array([box[2].start, box[1].start, box[0].start], dtype=np.float64) * np.asarray(spacing)
        shifted = np.asarray(origin) + direction @ corner
        cropped = LabelMask(
            np.ascontiguousarray(weights[box], dtype=np.float32),
            (float(shifted[0]), float(shifted[1]), float(shifted[2])),
            spacing,  # type: ignore[arg-type]
            direction,
        )
        return cropped.with_increasing_axes()

    integral = values.dtype.kind in "iub" or bool(np.all(values == np.round(values)))
    structures: list[Structure] = []
    if not integral:  # a fractional map
        low, high = float(values.min()), float(values.max())
        if low < -FRACTION_TOLERANCE or high > 1 + FRACTION_TOLERANCE:
            raise StructureError(
                f"is a fractional map (its values are not whole numbers) with values from {low:g} to {high:g}; "
                "fractions lie in [0, 1]",
                path=path,
            )
        if labels is not None and list(labels) != [1]:
            raise StructureError("is a fractional map, one structure: label 1 is all it holds", path=path)
        weights = np.clip(values, 0.0, 1.0)
        if not np.any(weights > 0):
            raise StructureError("holds no voxel inside: every fraction is 0", path=path)
        structures.append(_structure(table.get(1, _stem(path)), 1, mask(weights), path, frame_of_reference_uid))
    else:
        present = sorted(int(v) for v in np.unique(values) if v != 0)
        if any(v < 0 for v in present):
            raise StructureError(f"holds the negative label {present[0]}; labels are above 0", path=path)
        if not present:
            raise StructureError("holds no voxel inside: every voxel is 0", path=path)
        if present == [1] and bool(np.all(values == 1)):
            raise StructureError(
                "is a mask with every voxel inside (all ones): it covers the whole image, not a structure", path=path
            )
        wanted = list(labels) if labels is not None else present
        missing = [label for label in wanted if label not in present]
        if names is not None and labels is None:
            missing += [label for label in table if label not in present]
        if missing:
            raise StructureError(
                f"holds no voxel of label {missing[0]} (its labels: {', '.join(map(str, present))})", path=path
            )
        for label in wanted:
            default = _stem(path) if present == [1] else f"label {label}"
            structures.append(
                _structure(table.get(label, default), label, mask(values == label), path, frame_of_reference_uid)
            )
    return StructureSet(tuple(structures), frame_of_reference_uid, str(path))


def _names_table(names: Mapping[int, str] | str | PathLike[str], path: Path) -> dict[int, str]:
    if isinstance(names, Mapping):
        return {int(k): str(v) for k, v in names.items()}
    return read_label_names(names)


def _structure(name: str, label: int, mask: LabelMask, path: Path, frame: str) -> Structure:
    return Structure(name, label, (), frame, str(path), mask=mask)


def write_label_image(
    path: str | PathLike[str],
    values: np.ndarray,
    *,
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    direction: np.ndarray | None = None,
) -> Path:
    """Write ``values`` (``(nz, ny, nx)``: labels, or fractions as floats) as a label image with that geometry (for
    tests and examples)."""
    path = Path(path)
    sitk = _simpleitk(path)
    image = sitk.GetImageFromArray(np.asarray(values))
    image.SetOrigin(tuple(float(v) for v in origin_mm))
    image.SetSpacing(tuple(float(v) for v in spacing_mm))
    matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    image.SetDirection(tuple(float(v) for v in matrix.ravel()))
    sitk.WriteImage(image, str(path), True)
    return path


#: The frame of reference a recurrence mask is given when a displacement field image maps it (an image names none).
MASK_FRAME = "the recurrence mask's frame"


def read_structure_file(path: str | PathLike[str], names: str | PathLike[str] | None = None, rois=None) -> StructureSet:
    """The structures of a file: an RTSTRUCT (``rois`` says which ROIs' contours to read: see
    :func:`isodose.dicom.read.read_structures`), a DICOM SEG (:func:`isodose.dicom.seg.read_segmentation`), or a
    label image (by its suffix) named by ``names``."""
    if is_label_image(path):
        return read_label_image(path, names=names)
    if names:
        raise StructureError(
            "is not a label image (.nii, .nii.gz, .nrrd, .mha): label names are for a label image's labels", path=path
        )
    from .dicom.read import read_modality, read_structures

    if Path(path).is_file() and read_modality(Path(path)) == "SEG":
        from .dicom.seg import read_segmentation

        return read_segmentation(path)
    return read_structures(path, rois)


def read_recurrence_mask(
    path: str | PathLike[str],
    label: int | None,
    name: str | None,
    registration,
    dose_frame: str,
    label_option: str = "its label",
) -> tuple[StructureSet, str]:
    """The recurrence as a label image: ``(its structure set, its ROI's name)``, ``name`` if given, else the label's;
    ``label`` picks one label of a multi-label map (``label_option`` says where the user names it, for the error).

    Its frame is the dose's without a ``registration``; else the registration's frame other than the dose's (an
    image names none), :data:`MASK_FRAME` for a displacement field image read with that follow-up frame."""
    from dataclasses import replace

    from .model import DeformableRegistration, Registration

    frame = ""
    if isinstance(registration, DeformableRegistration):
        frames = {registration.registered_frame_uid, registration.source_frame_uid} - {dose_frame}
        frame = frames.pop() if len(frames) == 1 else MASK_FRAME
    elif isinstance(registration, Registration):
        others = sorted({registration.frame_of_reference_uid, *registration.matrices} - {dose_frame})
        if len(others) != 1:
            raise StructureError(
                f"the registration relates {len(others)} frames besides the dose's, so the frame of this recurrence "
                "mask (an image names none) cannot be told",
                path=path,
            )
        frame = others[0]
    masks = read_label_image(path, labels=[label] if label is not None else None, frame_of_reference_uid=frame)
    if len(masks.structures) > 1:
        labels = ", ".join(str(s.number) for s in masks.structures)
        raise StructureError(f"holds labels {labels}; say which is the recurrence with {label_option}", path=path)
    [vr] = masks.structures
    if name:
        vr = replace(vr, name=name)
    return StructureSet((vr,), frame, masks.source), vr.name
