"""Readers of RTDOSE (its DVH Sequence too), RTSTRUCT, RTPLAN and spatial registrations (REG), and of the headers
that folder discovery sorts files by: validate, then return plain model objects. Before a dose grid is decoded, the
memory it needs is checked against what the process may have (the system's, its control group's and its
address-space limit).

This package is the only place that touches pydicom. Every problem is an :class:`~isodose.errors.IsodoseError`
naming the file, the object and the problem.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import sys
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..errors import (
    DicomReadError,
    DoseGridError,
    DoseUnitsError,
    IsodoseError,
    PlanError,
    RegistrationError,
    StructureError,
)
from ..geometry import PLANE_TOLERANCE_MM, check_rigid
from ..model import (
    DVH_TYPES,
    DVH_VOLUME_UNITS,
    RELATIVE_FRACTION_MAX,
    Contour,
    DeformableRegistration,
    DoseGrid,
    DoseReference,
    Plan,
    Registration,
    ReportedDVH,
    Structure,
    StructureSet,
)

log = logging.getLogger(__name__)

PathType = str | PathLike[str]
T = TypeVar("T")

#: Direction cosines closer than this to a unit axis count as axis-aligned.
ORIENTATION_TOLERANCE = 1e-4
#: RTDOSE values longer than this (the pixels) are read only after the memory they need has been checked.
DEFERRED_BYTES = 1 << 20
#: Reading a dose grid needs about this many bytes per voxel beside the stored pixels: the dose in float32,
#: and its copy re-ordered to (z, y, x).
READ_BYTES_PER_VOXEL = 8


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _system_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """What this process's control group (a container's, a job's) still allows: its limit less its use."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "0" and parts[1] == "":  # cgroup v2
            folder = "/sys/fs/cgroup" + parts[2].rstrip("/")
            limit, used = _read_int(folder + "/memory.max"), _read_int(folder + "/memory.current")
            if limit is not None:
                return max(0, limit - (used or 0))
    limit = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v1
    if limit is not None and limit < 1 << 60:
        return max(0, limit - (_read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes") or 0))
    return None


def _address_space_available() -> int | None:
    """What RLIMIT_AS (``ulimit -v``) still allows this process: the limit less its address space now."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    size = 0
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    size = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(0, soft - size)


def _available_memory_bytes() -> tuple[int, str] | None:
    """The memory this process can have now without swapping, and what bounds it: the system's (MemAvailable),
    its control group's limit, or its address-space limit (RLIMIT_AS), whichever is least; None where none can be
    told."""
    bounds = [
        (value, name)
        for value, name in (
            (_system_available(), "available on this machine"),
            (_cgroup_available(), "left under this process's cgroup memory limit"),
            (_address_space_available(), "left under this process's address-space limit (ulimit -v)"),
        )
        if value is not None
    ]
    return min(bounds) if bounds else None


def _size(n_bytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


def _check_memory(frames: int, rows: int, columns: int, bits: int, path: PathType) -> None:
    """Refuse, with the figures, a dose grid that cannot be read into the memory available now."""
    voxels = frames * rows * columns
    needed = voxels * (max(bits, 8) // 8 * 2 + READ_BYTES_PER_VOXEL)  # the stored pixels, decoded, then the dose
    bound = _available_memory_bytes()
    if bound is not None and needed > bound[0]:
        available, what = bound
        raise DoseGridError(
            f"dose grid of {frames} x {rows} x {columns} voxels needs about {_size(needed)} to read, more than the "
            f"{_size(available)} of memory {what}",
            path=path,
        )


#: Frame spacings may differ by this fraction of the mean spacing (rounding in the file).
FRAME_SPACING_TOLERANCE = 1e-3


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Held while warnings are caught: the warnings module's filters are one per process, so two threads reading at
#: once would each catch the other's warnings, or restore the other's filters.
_WARNINGS_LOCK = threading.RLock()


@contextlib.contextmanager
def _caught_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """The warnings raised inside the block, caught (not shown) into the list it gives."""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _log_warnings(path: PathType, caught: list[warnings.WarningMessage]) -> None:
    for message in dict.fromkeys(_one_line(str(w.message)) for w in caught):
        log.warning("%s: %s", path, message)


@contextlib.contextmanager
def pydicom_warnings(path: PathType) -> Iterator[None]:
    """Catch the warnings raised inside the block (pydicom's, about values that break the standard) and log each
    once, naming the file, through isodose's logger: so that they reach the result they concern, not stderr."""
    with _caught_warnings() as caught:
        try:
            yield
        finally:  # logged however the block ends: the warnings may explain a failure
            _log_warnings(path, caught)


def _reader(read: Callable[..., T]) -> Callable[..., T]:
    """A reader whose every failure is an :class:`IsodoseError` naming the file, and whose pydicom warnings are
    logged as isodose's (see :func:`pydicom_warnings`).

    pydicom converts most elements when they are first used, so a damaged element (a bad value
    representation, a length that does not match its type) raises from deep inside pydicom, of whatever type,
    at the moment the reader looks at it. Those become one-line :class:`DicomReadError`s.
    """

    @functools.wraps(read)
    def guarded(path: PathType, *args, **kwargs) -> T:
        with pydicom_warnings(path):
            try:
                return read(path, *args, **kwargs)
            except (IsodoseError, MemoryError):
                raise
            except Exception as exc:
                raise DicomReadError(
                    f"malformed DICOM ({type(exc).__name__}: {_one_line(str(exc))})", path=path
                ) from exc

    return guarded


def read_dataset(
    path: PathType, modality: str | None = None, *, stop_before_pixels: bool = False, defer_size: int | None = None
):
    """Read one DICOM file, checking its modality. Not DICOM, unreadable or truncated files are errors.
    Values longer than ``defer_size`` bytes are read from the file when first used."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not os.path.exists(path):
        raise DicomReadError("no such file", path=path)
    if os.path.isdir(path):
        raise DicomReadError("is a folder, not a DICOM file", path=path)
    if not os.path.isfile(path):  # a FIFO or a device would be read without end
        raise DicomReadError("is not a regular file (a pipe or a device?), not a DICOM file", path=path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, defer_size=defer_size)
    except InvalidDicomError:
        try:  # files without the 128-byte preamble are common in RT exports
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels, defer_size=defer_size)
        except Exception as exc:
            raise DicomReadError(f"not a DICOM file ({exc})", path=path) from exc
        if "SOPClassUID" not in ds and "Modality" not in ds:
            raise DicomReadError("not a DICOM file", path=path) from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError, zlib.error) as exc:
        raise DicomReadError(f"unreadable or truncated DICOM ({type(exc).__name__}: {exc})", path=path) from exc
    _check_not_cut_short(ds, path)
    if not len(ds):
        raise DicomReadError(
            "holds no data set after its file meta information (a file cut short? copy it again)", path=path
        )
    if modality is not None:
        found = str(ds.get("Modality", "") or "")
        if found != modality:
            raise DicomReadError(f"modality is {found or 'missing'}, expected {modality}", path=path)
    return ds


def _check_not_cut_short(ds, path: PathType) -> None:
    """A file that ends inside an element's value is an error. pydicom reads such a file without one where the
    element has a defined length: it takes the bytes that are there (a sequence then loses its last items, an
    RTSTRUCT its RTROIObservationsSequence, and with it the types of its ROIs)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return  # read from the inflated stream, not the file: a cut there is zlib's error, raised while reading
    size = os.path.getsize(path)
    for tag in ds._dict:  # the elements as read, before any is converted
        element = ds._dict[tag]
        if not isinstance(element, RawDataElement) or element.length == UNDEFINED_LENGTH:
            continue
        end = element.value_tell + element.length
        if end > size:
            from pydicom.datadict import keyword_for_tag

            name = keyword_for_tag(tag) or "an element"
            raise DicomReadError(
                f"truncated: the file ends at byte {size:,}, inside {name} {tag} (its value needs up to byte "
                f"{end:,}); copy the file again",
                path=path,
            )


#: The length DICOM gives an element whose value ends with a delimiter.
UNDEFINED_LENGTH = 0xFFFFFFFF


def _text(ds, keyword: str) -> str:
    """A text element, stripped; "" when missing or empty."""
    return str(ds.get(keyword, "") or "").strip()


def _required(ds, keyword: str, path: PathType, obj: str | None = None):
    try:
        value = ds.get(keyword)
    except Exception as exc:  # a malformed value that pydicom cannot decode
        raise DicomReadError(f"tag {keyword} cannot be decoded ({exc})", path=path, obj=obj) from exc
    empty_sequence = hasattr(value, "__len__") and not isinstance(value, str) and len(value) == 0
    if value is None or empty_sequence or value == "":
        raise DicomReadError(f"required tag {keyword} is missing", path=path, obj=obj)
    return value


def _floats(value, keyword: str, count: int | None, path: PathType, obj: str | None = None) -> np.ndarray:
    items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        values = np.array([float(v) for v in items])
    except (TypeError, ValueError) as exc:
        raise DicomReadError(f"{keyword} is not numeric ({value!r})", path=path, obj=obj) from exc
    if count is not None and len(values) != count:
        raise DicomReadError(f"{keyword} has {len(values)} values, expected {count}", path=path, obj=obj)
    if not np.all(np.isfinite(values)):
        raise DicomReadError(f"{keyword} holds non-finite values", path=path, obj=obj)
    return values


def _axis_of(direction: np.ndarray, name: str, path: PathType) -> tuple[int, int]:
    """(patient axis, sign) of a direction cosine vector that must be a signed unit axis."""
    axis = int(np.argmax(np.abs(direction)))
    sign = 1 if direction[axis] > 0 else -1
    expected = np.zeros(3)
    expected[axis] = sign
    if np.max(np.abs(direction - expected)) > ORIENTATION_TOLERANCE:
        raise DoseGridError(
            f"ImageOrientationPatient {name} direction {np.round(direction, 6).tolist()} is oblique; only "
            "axis-aligned dose grids are supported",
            path=path,
        )
    return axis, sign


# --------------------------------------------------------------------------------------------------------
# RTDOSE
# --------------------------------------------------------------------------------------------------------


#: Transfer syntaxes whose pixel data lies in the file as it is used: native (uncompressed) little endian.
NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _native_pixels(ds, frames: int, rows: int, columns: int) -> np.ndarray | None:
    """An RTDOSE's pixels as they lie in its file, without pydicom's decoding (which copies them, and for a
    head-and-neck grid takes several times as long as reading them), where that gives exactly what pydicom would:
    native little-endian integers of 16 or 32 bits, every bit stored, one sample of MONOCHROME2, and exactly the
    bytes the grid needs. None for anything else, which pydicom decodes (with its warnings and errors)."""
    try:  # any doubt (a damaged element among these, say) is pydicom's to settle
        meta = getattr(ds, "file_meta", None)
        syntax = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
        if syntax not in NATIVE_LITTLE_ENDIAN or "PixelData" not in ds:
            return None
        # Float pixels beside the integer ones (which pydicom refuses) or an offset table (meant for encapsulated
        # data, which pydicom checks) are pydicom's to judge.
        if any(keyword in ds for keyword in ("FloatPixelData", "DoubleFloatPixelData", "ExtendedOffsetTable")):
            return None
        bits = ds.get("BitsAllocated")
        representation = ds.get("PixelRepresentation")
        if (
            bits not in (16, 32)
            or ds.get("BitsStored") != bits
            or representation not in (0, 1)
            or ds.get("SamplesPerPixel") != 1
            or ds.get("PhotometricInterpretation") != "MONOCHROME2"  # as pydicom takes it: no leading space
            or not (0 < rows <= 0xFFFF and 0 < columns <= 0xFFFF)  # as US values hold them
        ):
            return None
        data = ds.PixelData
    except Exception:
        return None
    if not isinstance(data, bytes) or len(data) != frames * rows * columns * (bits // 8):
        return None
    kind = "i" if representation == 1 else "u"
    return np.frombuffer(data, dtype=f"<{kind}{bits // 8}").reshape(frames, rows, columns)


@_reader
def read_dose(
    path: PathType, relative_reference_gy: float | None = None, *, warn_unused_reference: bool = False
) -> DoseGrid:
    """Read an RTDOSE file into a :class:`DoseGrid` in Gy, re-ordered so that indices increase along x, y
    and z.

    Handles DoseGridScaling, 16- and 32-bit pixels, relative or absolute GridFrameOffsetVector in either
    direction and any axis-aligned orientation (HFS, HFP, FFS, FFP, and the rest).

    GridFrameOffsetVector is relative to the first frame, or, with the identity orientation, absolute z, as the
    standard allows (PS3.3 C.8.8.3.2). Files that give absolute z with another orientation whose slice normal
    lies along z (feet-first or prone), a departure from the standard that is nevertheless unambiguous, are read
    with a warning; only what cannot be told apart is refused.

    Parameters
    ----------
    path : str or path
        The RTDOSE file.
    relative_reference_gy : float, optional
        For DoseUnits RELATIVE: the dose (Gy) of 100%. Relative values whose maximum is at most 2 are read as
        fractions (1.0 = 100%), larger ones as percentages, with a warning saying which. Without it, RELATIVE
        dose is refused.
    warn_unused_reference : bool
        Warn when ``relative_reference_gy`` is given for a dose in Gy, which does not use it (a command given one
        file; a cohort's setting, for its relative doses, is silently not used by the others).

    Returns
    -------
    DoseGrid
        The dose in Gy, its frame of reference, its file as ``source``, and the file's PatientID,
        SOPInstanceUID, referenced RTPLAN, DoseSummationType and DoseType.

    Raises
    ------
    DicomReadError
        For a file that is not DICOM, is damaged, is not an RTDOSE or lacks a required tag.
    DoseGridError
        For an oblique grid, non-uniform frame spacing, or non-finite or negative dose.
    DoseUnitsError
        For dose not in Gy (RELATIVE).

    Examples
    --------
    >>> import tempfile
    >>> from isodose.dicom.write import write_example_case
    >>> rd, rs, rp = write_example_case(tempfile.mkdtemp())
    >>> dose = read_dose(rd)
    >>> dose.shape, dose.spacing_mm, round(dose.max_gy, 1)
    ((21, 21, 21), (3.0, 3.0, 3.0), 100.0)
    """
    ds = read_dataset(path, "RTDOSE", defer_size=DEFERRED_BYTES)  # pixels: once their memory is known
    units = _dose_units(ds, path, relative_reference_gy, warn_unused_reference)
    header = _grid_header(ds, path)
    dose = _dose_values(ds, path, header, units, relative_reference_gy)
    dose, origin, spacing = _in_zyx_order(dose, header, path)
    return DoseGrid(
        dose_gy=dose,
        origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
        source=str(path),
        patient_id=_text(ds, "PatientID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        referenced_plan_uid=_referenced_plan(ds),
        summation_type=_text(ds, "DoseSummationType").upper(),
        dose_type=_text(ds, "DoseType").upper(),
        referenced_beam_numbers=_referenced_beams(ds),
    )


def _dose_units(ds, path: PathType, relative_reference_gy: float | None, warn_unused_reference: bool) -> str:
    """The RTDOSE's DoseUnits, ``GY`` or ``RELATIVE`` (refused without the dose of 100%, ``relative_reference_gy``);
    anything else refused."""
    units = str(_required(ds, "DoseUnits", path)).strip().upper()
    if units == "RELATIVE" and relative_reference_gy is None:
        raise DoseUnitsError(
            "DoseUnits is RELATIVE, not GY; give the dose of 100% to read it (on the command line "
            "--relative-dose-reference-gy GY)",
            path=path,
        )
    if units not in ("GY", "RELATIVE"):
        raise DoseUnitsError(
            f"DoseUnits is {units}, not GY; isodose computes absolute dose metrics and will not read "
            f"{units} dose as Gy",
            path=path,
        )
    if relative_reference_gy is not None and not (math.isfinite(relative_reference_gy) and relative_reference_gy > 0):
        raise DoseUnitsError(
            f"the reference dose of relative dose must be a positive dose in Gy, not {relative_reference_gy}",
            path=path,
        )
    if units == "GY" and relative_reference_gy is not None and warn_unused_reference:
        log.warning(
            "%s: DoseUnits is GY: the reference dose of relative dose (%g Gy) is not used", path, relative_reference_gy
        )
    return units


@dataclass(frozen=True)
class _GridHeader:
    """What an RTDOSE says of its grid, checked: its frames, rows and columns, their spacing and place."""

    frames: int
    rows: int
    columns: int
    pixel_spacing: np.ndarray
    position: np.ndarray
    orientation: np.ndarray
    scaling: float
    offsets: np.ndarray


def _grid_header(ds, path: PathType) -> _GridHeader:
    rows = int(_required(ds, "Rows", path))
    columns = int(_required(ds, "Columns", path))
    pixel_spacing = _floats(_required(ds, "PixelSpacing", path), "PixelSpacing", 2, path)
    position = _floats(_required(ds, "ImagePositionPatient", path), "ImagePositionPatient", 3, path)
    orientation = _floats(_required(ds, "ImageOrientationPatient", path), "ImageOrientationPatient", 6, path)
    scaling = _floats(_required(ds, "DoseGridScaling", path), "DoseGridScaling", 1, path)[0]
    if not scaling > 0:
        raise DoseGridError(f"DoseGridScaling must be positive, not {scaling}", path=path)
    if np.any(pixel_spacing <= 0):
        raise DoseGridError(f"PixelSpacing must be positive, not {pixel_spacing.tolist()}", path=path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomReadError("the RTDOSE holds no pixel data", path=path)

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames < 2 or rows < 2 or columns < 2:
        raise DoseGridError(
            f"dose grid of {frames} x {rows} x {columns} voxels; a 3D grid of at least 2 voxels along each "
            "axis is needed",
            path=path,
        )
    offsets = _floats(_required(ds, "GridFrameOffsetVector", path), "GridFrameOffsetVector", frames, path)
    return _GridHeader(frames, rows, columns, pixel_spacing, position, orientation, scaling, offsets)


def _dose_values(
    ds, path: PathType, header: _GridHeader, units: str, relative_reference_gy: float | None
) -> np.ndarray:
    """The dose (Gy, float32) in the file's (frame, row, column) order: its pixels decoded (once their memory is
    known to be there) and scaled, checked finite and not negative, and a relative dose scaled to Gy."""
    frames, rows, columns = header.frames, header.rows, header.columns
    _check_memory(frames, rows, columns, int(ds.get("BitsAllocated", 32) or 32), path)

    pixels = _native_pixels(ds, frames, rows, columns)
    if pixels is None:
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            raise DicomReadError(f"pixel data cannot be decoded ({type(exc).__name__}: {exc})", path=path) from exc
    expected_shape = (frames, rows, columns)
    if pixels.shape != expected_shape:
        raise DicomReadError(f"pixel data has shape {pixels.shape}, expected {expected_shape}", path=path)
    dose = np.empty(pixels.shape, dtype=np.float32)
    in_float64 = np.empty(pixels.shape[1:], dtype=np.float64)
    for frame in range(frames):  # in float64 frame by frame, kept in float32: no whole float64 copy
        np.multiply(pixels[frame], header.scaling, out=in_float64, dtype=np.float64)
        dose[frame] = in_float64
    del pixels
    lowest, highest = float(dose.min()), float(dose.max())  # NaN anywhere makes both NaN
    if not (math.isfinite(lowest) and math.isfinite(highest)):
        raise DoseGridError("dose holds NaN or infinite values", path=path)
    if lowest < 0:
        raise DoseGridError(f"dose holds negative values (down to {lowest:.4g} Gy)", path=path)
    if units == "RELATIVE":
        assert relative_reference_gy is not None
        top = highest  # the maximum, before the reference scales it
        fraction = top <= RELATIVE_FRACTION_MAX
        dose *= np.float32(relative_reference_gy if fraction else relative_reference_gy / 100.0)
        log.warning(
            "%s: DoseUnits is RELATIVE: read as %s of %g Gy (its maximum is %.4g, so %s is taken as 100%%)",
            path,
            "a fraction" if fraction else "a percentage",
            relative_reference_gy,
            top,
            "1.0" if fraction else "100",
        )
    return dose


def _in_zyx_order(dose: np.ndarray, header: _GridHeader, path: PathType) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dose re-ordered so that its indices increase along z, y and x, with its origin and spacing (mm, x y z):
    the file's axes found from its orientation, and its frames' positions from GridFrameOffsetVector."""
    orientation, position, offsets = header.orientation, header.position, header.offsets
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    row_axis = _axis_of(row_dir, "row", path)
    col_axis = _axis_of(col_dir, "column", path)
    normal_axis = _axis_of(normal, "normal", path)
    if len({row_axis[0], col_axis[0], normal_axis[0]}) != 3:
        raise DoseGridError("ImageOrientationPatient row and column directions are parallel", path=path)
    frame_step = _frame_step(offsets, position, orientation, normal_axis, path)

    # Array axes (frame, row, column) and, for each, the patient axis, direction sign and spacing.
    array_axes = [
        (normal_axis[0], normal_axis[1] * (1 if frame_step > 0 else -1), abs(frame_step)),
        (col_axis[0], col_axis[1], float(header.pixel_spacing[0])),  # between rows: along the column direction
        (row_axis[0], row_axis[1], float(header.pixel_spacing[1])),  # between columns: along the row direction
    ]
    origin = np.array(position, dtype=np.float64)
    spacing = np.zeros(3)
    for a, (patient_axis, sign, step) in enumerate(array_axes):
        spacing[patient_axis] = step
        if sign < 0:
            dose = np.flip(dose, axis=a)
            origin[patient_axis] -= step * (dose.shape[a] - 1)
    # Put the array in (z, y, x) order: array axis for patient axis 2 first, then 1, then 0.
    order = [next(a for a, (axis, _, _) in enumerate(array_axes) if axis == target) for target in (2, 1, 0)]
    return np.ascontiguousarray(np.transpose(dose, order)), origin, spacing


def _frame_step(
    offsets: np.ndarray, position: np.ndarray, orientation: np.ndarray, normal_axis: tuple[int, int], path: PathType
) -> float:
    """The step (mm) between frames along the slice normal, from GridFrameOffsetVector, which must be uniform."""
    # Frame positions along the normal: relative offsets (first value 0) or, for the identity orientation,
    # absolute patient z (first value equal to ImagePositionPatient z). See DICOM PS3.3 C.8.8.3.2. Absolute z with
    # a slice normal along -z (feet-first, prone) is outside the standard but unambiguous: z runs against the
    # normal there.
    identity = np.allclose(orientation, [1, 0, 0, 0, 1, 0], atol=ORIENTATION_TOLERANCE)
    absolute = abs(offsets[0] - position[2]) < 1e-3
    if abs(offsets[0]) < 1e-6:
        along_normal = offsets
    elif absolute and identity:
        along_normal = offsets - offsets[0]
    elif absolute and normal_axis[0] == 2:
        along_normal = (offsets - offsets[0]) * normal_axis[1]
        log.warning(
            "%s: GridFrameOffsetVector holds absolute z positions (it starts at ImagePositionPatient z, %g) with "
            "ImageOrientationPatient %s, where the standard allows only offsets relative to the first frame; read "
            "as absolute z, the slice normal pointing %s",
            path,
            position[2],
            np.round(orientation, 6).tolist(),
            "+z" if normal_axis[1] > 0 else "-z",
        )
    else:
        raise DoseGridError(
            f"GridFrameOffsetVector starts at {offsets[0]:g}, neither 0 (relative) nor ImagePositionPatient z "
            f"{position[2]:g} (absolute z, which needs a slice normal along z)",
            path=path,
        )
    steps = np.diff(along_normal)
    frame_step = float(np.mean(steps))
    if np.any(steps == 0) or not (np.all(steps > 0) or np.all(steps < 0)):
        raise DoseGridError("GridFrameOffsetVector is not strictly monotonic", path=path)
    if np.max(np.abs(steps - frame_step)) > FRAME_SPACING_TOLERANCE * abs(frame_step):
        raise DoseGridError(
            f"GridFrameOffsetVector spacing is not uniform ({steps.min():g} to {steps.max():g} mm); "
            "non-uniform dose grids are not supported",
            path=path,
        )
    return frame_step


def _beam_numbers(sequence) -> tuple[int, ...]:
    """The ReferencedBeamNumber of each item of a ReferencedBeamSequence (those that are whole numbers)."""
    numbers = []
    for item in sequence or []:
        try:
            numbers.append(int(item.get("ReferencedBeamNumber")))
        except (TypeError, ValueError):
            continue
    return tuple(numbers)


def _referenced_beams(ds) -> tuple[int, ...]:
    """The beams an RTDOSE is of: ReferencedRTPlanSequence > ReferencedFractionGroupSequence >
    ReferencedBeamSequence (a per-beam dose names its beam)."""
    plans = ds.get("ReferencedRTPlanSequence") or []
    groups = (plans[0].get("ReferencedFractionGroupSequence") or []) if plans else []
    return _beam_numbers(groups[0].get("ReferencedBeamSequence")) if groups else ()


def _referenced_plan(ds) -> str:
    """The SOPInstanceUID of the RTPLAN an RTDOSE references ("" when it names none)."""
    plans = ds.get("ReferencedRTPlanSequence") or []
    return str(plans[0].get("ReferencedSOPInstanceUID", "") or "").strip() if plans else ""


# --------------------------------------------------------------------------------------------------------
# The planning system's DVHs (RT DVH module, PS3.3 C.8.8.4)
# --------------------------------------------------------------------------------------------------------
class _SkippedItem(Exception):
    """A DVH Sequence item that cannot be read: skipped, with a warning naming it."""


def _item_number(item, keyword: str, default: float | None = None) -> float:
    value = item.get(keyword)
    if value is None or value == "":
        if default is None:
            raise _SkippedItem(f"{keyword} is missing")
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _SkippedItem(f"{keyword} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise _SkippedItem(f"{keyword} is not finite")
    return number


def _dvh_data(item) -> np.ndarray:
    """An item's DVH Data as numbers. The text of the element is parsed at once, as pydicom would convert (and
    validate) each of its tens of thousands of decimal strings one by one, most of an audit's time; an element
    read as VR UN (an explicit-VR file's DS over 64 kB) is that same text."""
    if "DVHData" not in item:
        raise _SkippedItem("DVHData is missing or empty")
    element = item.get_item("DVHData")
    value = element.value
    try:
        if isinstance(value, bytes | bytearray):
            text = bytes(value).decode("ascii").strip(" \0")
            parts: Sequence = text.split("\\") if text else []
        elif isinstance(value, str | int | float):
            parts = [value]
        else:
            parts = list(value or [])
        values = np.array([float(v) for v in parts] if not isinstance(value, bytes | bytearray) else parts, np.float64)
    except (TypeError, ValueError, UnicodeDecodeError):
        raise _SkippedItem("DVHData is not numeric") from None
    if not len(values):
        raise _SkippedItem("DVHData is missing or empty")
    return values


def _one_of(item, keyword: str, allowed: Sequence[str], roi: int) -> str:
    """A coded string of a DVH item, upper case, that must be one of ``allowed``."""
    value = _text(item, keyword).upper()
    if not value:
        raise _SkippedItem(f"{keyword} is missing", roi)
    if value not in allowed:
        raise _SkippedItem(f"{keyword} {value} is not one of {', '.join(allowed)}", roi)
    return value


def _reported_dvh(item, k: int, path: PathType, normalization: float, structure_set: str) -> ReportedDVH:
    """One DVH Sequence item, checked (a :class:`_SkippedItem` says why it cannot be used)."""
    rois = item.get("DVHReferencedROISequence") or []
    included = [r for r in rois if str(r.get("DVHROIContributionType", "INCLUDED") or "INCLUDED").upper() == "INCLUDED"]
    if len(rois) != 1 or len(included) != 1:
        raise _SkippedItem(
            f"refers to {len(rois)} ROIs ({len(included)} included): only the DVH of one ROI can be compared"
            if rois
            else "has no DVHReferencedROISequence"
        )
    roi_number = included[0].get("ReferencedROINumber")
    try:
        roi = int(roi_number)
    except (TypeError, ValueError):
        raise _SkippedItem(f"ReferencedROINumber {roi_number!r} is not a number") from None
    dvh_type = _one_of(item, "DVHType", DVH_TYPES, roi)
    dose_units = _one_of(item, "DoseUnits", ("GY", "RELATIVE"), roi)
    dose_type = _text(item, "DoseType").upper()
    if dose_type == "ERROR":
        raise _SkippedItem("DoseType is ERROR (a dose difference, not a dose)", roi)
    volume_units = _one_of(item, "DVHVolumeUnits", DVH_VOLUME_UNITS, roi)
    if volume_units == "PER_U" and dvh_type != "NATURAL":
        raise _SkippedItem(f"DVHVolumeUnits PER_U belongs to NATURAL DVHs, not {dvh_type}", roi)
    try:
        scaling = _item_number(item, "DVHDoseScaling", 1.0)
        if not scaling > 0:
            raise _SkippedItem(f"DVHDoseScaling {scaling:g} is not positive")
        values = _dvh_data(item)
        if len(values) % 2:
            raise _SkippedItem(f"DVHData holds {len(values)} numbers, not pairs of bin width and volume")
        bins = int(_item_number(item, "DVHNumberOfBins", len(values) // 2))
        if bins != len(values) // 2:
            raise _SkippedItem(f"DVHNumberOfBins is {bins}, but DVHData holds {len(values) // 2} bins")
        widths, volumes = values[0::2], values[1::2]
        if not np.all(np.isfinite(values)):
            raise _SkippedItem("DVHData holds values that are not finite")
        if not np.all(widths > 0):
            raise _SkippedItem("DVHData holds dose bin widths that are not positive")
        noise = 1e-9 * max(float(volumes.max()), 0.0)  # planning systems write -3e-13 for an empty bin
        if np.any(volumes < -noise):
            raise _SkippedItem("DVHData holds negative volumes")
        volumes = np.clip(volumes, 0.0, None)
        if dvh_type == "CUMULATIVE" and np.any(np.diff(volumes) > 1e-6 * max(float(volumes.max()), 1e-12)):
            raise _SkippedItem("its CUMULATIVE volumes rise with dose")
        statistics = [
            _item_number(item, keyword, math.nan) for keyword in ("DVHMinimumDose", "DVHMeanDose", "DVHMaximumDose")
        ]
    except _SkippedItem as exc:
        raise _SkippedItem(str(exc), roi) from None
    return ReportedDVH(
        roi_number=roi,
        item=k,
        dvh_type=dvh_type,
        dose_units=dose_units,
        dose_type=dose_type,
        volume_units=volume_units,
        dose_scaling=scaling,
        bin_widths=widths,
        values=volumes,
        minimum_dose=statistics[0],
        mean_dose=statistics[1],
        maximum_dose=statistics[2],
        normalization_dose=normalization,
        source=str(path),
        referenced_structure_set_uid=structure_set,
    )


@_reader
def read_reported_dvhs(path: PathType) -> list[ReportedDVH]:
    """The planning system's DVHs of an RTDOSE file: each item of its DVH Sequence that can be used, as written
    (the pixels are not read).

    An item that cannot be used (a DVH of several ROIs, DoseType ERROR, a unit outside the standard, DVH Data
    that does not hold pairs of positive bin widths and volumes, a cumulative curve that rises) is skipped with a
    warning naming the file, the item and its ROI.

    Raises
    ------
    DicomReadError
        For a file that is not an RTDOSE, or one with no DVH Sequence.
    """
    ds = read_dataset(path, "RTDOSE", stop_before_pixels=True)
    sequence = ds.get("DVHSequence")
    if not sequence:
        raise DicomReadError("holds no DVH Sequence: the planning system exported no DVHs with this dose", path=path)
    normalization = math.nan
    if ds.get("DVHNormalizationDoseValue") not in (None, ""):
        try:
            normalization = float(ds.DVHNormalizationDoseValue)
        except (TypeError, ValueError):
            log.warning("%s: DVHNormalizationDoseValue %r is not a number; ignored", path, ds.DVHNormalizationDoseValue)
    referenced = ds.get("ReferencedStructureSetSequence") or []
    structure_set = str(referenced[0].get("ReferencedSOPInstanceUID", "") or "").strip() if referenced else ""
    out = []
    for k, item in enumerate(sequence, start=1):
        try:
            out.append(_reported_dvh(item, k, path, normalization, structure_set))
        except _SkippedItem as exc:
            roi = f" (ROI {exc.args[1]})" if len(exc.args) > 1 else ""
            log.warning("%s: DVH item %d%s: %s; skipped", path, k, roi, exc.args[0])
    return out


# --------------------------------------------------------------------------------------------------------
# RTSTRUCT
# --------------------------------------------------------------------------------------------------------
#: ContourData of at least this many bytes is parsed by compiled code where Numba is loaded already.
COMPILED_DECIMALS_MIN_BYTES = 64


def _compiled_decimals(raw: bytes) -> np.ndarray | None:
    """A DS element's values parsed by compiled code (:mod:`isodose.compiled_decimals`: the same values as Python's,
    bit for bit, about 20 times quicker) where Numba is loaded already; None where not, or where a value is outside
    its exact fast path."""
    if len(raw) < COMPILED_DECIMALS_MIN_BYTES or "numba" not in sys.modules:
        return None
    from ..compiled_decimals import parse_decimal_strings

    return parse_decimal_strings(raw)


def _contour_values(raw: bytes, path: PathType, obj: str) -> np.ndarray:
    """ContourData's values from the bytes of the element's value."""
    if not raw:
        raise DicomReadError("required tag ContourData is missing", path=path, obj=obj)
    values = _compiled_decimals(raw)
    if values is not None:
        return values  # finite: the compiled parser takes no NaN, infinity or exponent that overflows
    try:
        values = np.array(raw.split(b"\\"), dtype=np.float64)
    except ValueError as exc:
        raise DicomReadError(f"ContourData is not numeric ({exc})", path=path, obj=obj) from exc
    if not np.all(np.isfinite(values)):
        raise DicomReadError("ContourData holds non-finite values", path=path, obj=obj)
    return values


def _contour_data(item, path: PathType, obj: str) -> np.ndarray:
    """ContourData as floats, parsed from the element's bytes when pydicom has not converted it yet (a
    structure set holds hundreds of thousands of coordinates, and converting each one by one is slow)."""
    from pydicom.dataelem import RawDataElement

    element = item.get_item("ContourData") if "ContourData" in item else None
    if element is None or element.value in (None, b"", ""):
        raise DicomReadError("required tag ContourData is missing", path=path, obj=obj)
    if isinstance(element, RawDataElement) and isinstance(element.value, bytes):
        return _contour_values(element.value, path, obj)
    return _floats(element.value, "ContourData", None, path, obj)


#: The tags of an ROI's ContourSequence, and of a contour's ContourGeometricType and ContourData.
_CONTOUR_SEQUENCE, _CONTOUR_GEOMETRIC_TYPE, _CONTOUR_DATA = 0x30060040, 0x30060042, 0x30060050


def _code_string(raw: bytes) -> str | None:
    """A code string (ContourGeometricType) read from its bytes, upper case: ASCII padded with spaces (or a NUL);
    None where they are not ASCII (then as pydicom reads them)."""
    try:
        return raw.decode("ascii").strip(" \x00").upper()
    except UnicodeDecodeError:
        return None


def _geometric_type(item) -> str:
    """A contour's ContourGeometricType, upper case ("" when missing): from the element's bytes where pydicom has not
    converted them yet (a code string is ASCII, padded with spaces), else as pydicom gives it."""
    from pydicom.dataelem import RawDataElement

    element = item.get_item(_CONTOUR_GEOMETRIC_TYPE) if _CONTOUR_GEOMETRIC_TYPE in item else None
    if element is None:
        return ""
    value = element.value
    if isinstance(element, RawDataElement) and isinstance(value, bytes):
        kind = _code_string(value)
        if kind is not None:
            return kind
    return str(item.get("ContourGeometricType", "") or "").strip().upper()


def _walked_sequence(
    container, tag: int, vrs: list[dict[int, bytes]] | None = None
) -> list[dict[int, bytes | None]] | None:
    """The items of the sequence ``tag`` of a dataset or item, walked from the element's bytes
    (:mod:`isodose.dicom.items`) where pydicom has not parsed it yet: each item's elements by tag, as the bytes of
    their values (and their VRs into ``vrs``, where given). [] where the sequence is absent or parsed and empty;
    None where pydicom has parsed it, or where the encoding is one the walker leaves to pydicom."""
    from pydicom.dataelem import RawDataElement

    from .items import sequence_items

    if tag not in container:
        return []
    element = container.get_item(tag)
    if not isinstance(element, RawDataElement):
        # Parsed by pydicom already (a sequence of undefined length is parsed as the file is read): only an empty
        # one is taken here; the items of any other are read as pydicom gave them.
        return [] if not element.value else None
    if element.VR not in (None, "SQ") or not isinstance(element.value, bytes) or not element.is_little_endian:
        return None  # bytes pydicom would not read as a sequence (VR OB, say), or big endian: as pydicom reads them
    return sequence_items(element.value, element.is_implicit_VR, vrs)


def _contours_from_bytes(roi_item) -> list[tuple[str, bytes]] | None:
    """Each contour of an ROIContourSequence item as (ContourGeometricType, the bytes of ContourData), its
    ContourSequence walked from the element's bytes (:func:`_walked_sequence`), where pydicom has not parsed it
    yet: as :func:`_geometric_type` and :func:`_contour_data` read them from pydicom's items, without building one.
    None where pydicom has parsed it, or where the encoding is one the walker leaves to pydicom."""
    items = _walked_sequence(roi_item, _CONTOUR_SEQUENCE)
    if items is None:
        return None
    contours = []
    for item in items:
        raw_kind, data = item.get(_CONTOUR_GEOMETRIC_TYPE, b""), item.get(_CONTOUR_DATA, b"")
        if raw_kind is None or data is None:  # of undefined length: not what these elements are
            return None
        kind = _code_string(raw_kind)
        if kind is None:
            return None  # not ASCII: as pydicom reads it
        contours.append((kind, data))
    return contours


def _plain_contours(walked: list[tuple[str, bytes]]) -> list[Contour] | None:
    """An ROI's contours (walked from the bytes of its ContourSequence) all at once, their ContourData parsed in one
    compiled call, where every one is a CLOSED_PLANAR polygon of at least three points in one axial plane and every
    value is within the compiled parser's exact path: the contours :func:`_contour` gives one by one, bit for bit
    (each contour's points are a view of one array of the ROI's). None otherwise, or where Numba is not loaded: then
    they are read one by one, with their warnings and errors."""
    if not walked:
        return []
    datas = [data for kind, data in walked if kind == "CLOSED_PLANAR" and data]
    if len(datas) < len(walked):
        return None
    counts = np.array([data.count(b"\\") + 1 for data in datas])
    if np.any(counts % 3) or np.any(counts < 9):
        return None
    # The parser reads each value alike wherever it stands (spaces around it, no empty value), so joined they are
    # the values each contour's own bytes give, as many as the counts say.
    values = _compiled_decimals(b"\\".join(datas))
    if values is None:
        return None
    points = values.reshape(-1, 3)
    bounds = np.concatenate([[0], np.cumsum(counts // 3)])
    z = points[:, 2]  # strided, as in _contour, so that each plane's sum adds in the same order
    spread = np.maximum.reduceat(z, bounds[:-1]) - np.minimum.reduceat(z, bounds[:-1])
    if np.any(spread > PLANE_TOLERANCE_MM):
        return None
    xy = np.ascontiguousarray(points[:, :2])
    ends = bounds.tolist()
    return [Contour(points_mm=xy[a:b], z_mm=float(z[a:b].sum()) / (b - a)) for a, b in zip(ends[:-1], ends[1:])]


def _roi_contours(roi_item, path: PathType, roi: str) -> list[Contour]:
    """The contours of one ROIContourSequence item: all at once where they are plain (:func:`_plain_contours`); else
    one by one (:func:`_contour`), from the bytes of its ContourSequence (:func:`_contours_from_bytes`) or, where
    the walker leaves them to pydicom, from pydicom's items. Either way the same contours, warnings and errors."""
    walked = _contours_from_bytes(roi_item)
    if walked is None:
        found = [
            _contour(_geometric_type(item), functools.partial(_contour_data, item, path), path, roi, index)
            for index, item in enumerate(roi_item.get("ContourSequence") or [])
        ]
    else:
        at_once = _plain_contours(walked)
        if at_once is not None:
            return at_once
        found = [
            _contour(kind, functools.partial(_contour_values, data, path), path, roi, index)
            for index, (kind, data) in enumerate(walked)
        ]
    return [contour for contour in found if contour is not None]


def _contour(kind: str, values: Callable[[str], np.ndarray], path: PathType, roi: str, index: int) -> Contour | None:
    """One contour of ``roi`` from its ContourGeometricType and ``values(obj)``, its ContourData as floats."""
    obj = f"ROI {roi!r} contour {index}"
    if kind != "CLOSED_PLANAR":
        log.warning(
            "%s: %s: %s contour skipped (only CLOSED_PLANAR contours enclose a volume)", path, obj, kind or "untyped"
        )
        return None
    data = values(obj)
    if len(data) % 3:
        raise StructureError(f"ContourData has {len(data)} values, not a multiple of 3", path=path, obj=obj)
    points = data.reshape(-1, 3)
    if len(points) < 3:
        log.warning("%s: %s: %d point(s) enclose no area; skipped", path, obj, len(points))
        return None
    z = points[:, 2]
    if z.max() - z.min() > PLANE_TOLERANCE_MM:
        raise StructureError(
            f"points are not in one axial plane (z from {z.min():g} to {z.max():g} mm)", path=path, obj=obj
        )
    return Contour(points_mm=np.ascontiguousarray(points[:, :2]), z_mm=float(z.sum()) / len(z))  # z.mean(), quicker


#: StructureSetROISequence and RTROIObservationsSequence, and the elements read from their items.
_STRUCTURE_SET_ROI_SEQUENCE, _RT_ROI_OBSERVATIONS_SEQUENCE = 0x30060020, 0x30060080
_ROI_NUMBER, _REFERENCED_FRAME_OF_REFERENCE_UID, _ROI_NAME = 0x30060022, 0x30060024, 0x30060026
_REFERENCED_ROI_NUMBER, _RT_ROI_INTERPRETED_TYPE = 0x30060084, 0x300600A4
#: The values taken from an item's bytes: those pydicom reads without a warning and converts to the same value,
#: each of its VR (or UN, or implicit), its bytes (padding included) no longer than the VR allows: an IS of at most
#: 12 bytes, within a 32-bit signed integer; a UI of at most 64, its components without leading zeros; a CS of
#: capitals, digits, spaces and underscores, at most 16; an LO of at most 64 bytes of printable ASCII and no
#: backslash (one value).
_PLAIN_IS = re.compile(r" *[+-]?[0-9]+ *")
_PLAIN_UI = re.compile(r"((0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*)?")
_PLAIN_CS = re.compile(r"[A-Z0-9 _]*")
_PLAIN_LO = re.compile(r"[^\\]*")
#: By VR: the most bytes a value may have, and the pattern its text matches.
_PLAIN = {b"IS": (12, _PLAIN_IS), b"UI": (64, _PLAIN_UI), b"CS": (16, _PLAIN_CS), b"LO": (64, _PLAIN_LO)}


def _plain_ascii(raw: bytes | None) -> str | None:
    """An element's bytes as printable ASCII text, its NUL padding dropped; None for anything else."""
    if raw is None:
        return None
    body = raw.rstrip(b"\x00")
    if not body.isascii():
        return None
    text = body.decode("ascii")
    return text if text.isprintable() else None


def _plain_value(item: dict, vrs: dict, tag: int, vr: bytes, default: bytes | None = None) -> str | None:
    """The text of element ``tag`` of a walked item where it is a plain value of ``vr`` (see :data:`_PLAIN`):
    written with that VR (or UN, or in implicit VR), no longer than the VR allows, of the VR's characters; None
    otherwise. ``default`` stands for an element the item does not hold."""
    raw = item[tag] if tag in item else default
    if raw is None or vrs.get(tag, vr) not in (vr, b"UN", b""):
        return None
    longest, pattern = _PLAIN[vr]
    text = _plain_ascii(raw)
    if len(raw) > longest or text is None or not pattern.fullmatch(text):
        return None
    if vr == b"IS" and text.strip() and not -(2**31) <= int(text) < 2**31:
        return None
    return text


def _roi_table_from_bytes(ds) -> tuple[list[tuple[int, str, str]], dict[int, str]] | None:
    """Each ROI's (number, name, ReferencedFrameOfReferenceUID) from StructureSetROISequence and each
    RTROIInterpretedType by ROI number from RTROIObservationsSequence, read from the bytes of their items where
    every value is plain (see :data:`_PLAIN`): the values the reader takes from pydicom's items, without building one
    per ROI. None where an ROI is not defined so, or anything is not plain: they are then read through pydicom, with
    its warnings and the reader's errors."""
    definition_vrs: list[dict[int, bytes]] = []
    observation_vrs: list[dict[int, bytes]] = []
    definitions = _walked_sequence(ds, _STRUCTURE_SET_ROI_SEQUENCE, definition_vrs)
    observations = _walked_sequence(ds, _RT_ROI_OBSERVATIONS_SEQUENCE, observation_vrs)
    if not definitions or observations is None:
        return None
    rois = []
    for item, vrs in zip(definitions, definition_vrs):
        number = _plain_value(item, vrs, _ROI_NUMBER, b"IS")
        name = _plain_value(item, vrs, _ROI_NAME, b"LO", b"")
        frame = _plain_value(item, vrs, _REFERENCED_FRAME_OF_REFERENCE_UID, b"UI", b"")
        if not number or not number.strip() or name is None or frame is None:
            return None
        rois.append((int(number), name.strip() or f"ROI {int(number)}", frame.strip()))
    interpreted: dict[int, str] = {}
    for item, vrs in zip(observations, observation_vrs):
        if _REFERENCED_ROI_NUMBER not in item:
            continue
        number = _plain_value(item, vrs, _REFERENCED_ROI_NUMBER, b"IS")
        kind = _plain_value(item, vrs, _RT_ROI_INTERPRETED_TYPE, b"CS", b"")
        if number is None or kind is None:
            return None
        if number.strip():
            interpreted[int(number)] = kind.strip()
    return rois, interpreted


def _roi_table(ds, path: PathType) -> tuple[list[tuple[int, str, str]], dict[int, str]]:
    """Each ROI's (number, name, ReferencedFrameOfReferenceUID), and each RTROIInterpretedType (upper case) by ROI
    number: from the items' bytes where they are plain (:func:`_roi_table_from_bytes`), else from pydicom's."""
    table = _roi_table_from_bytes(ds)
    if table is not None:
        return table
    roi_items = ds.get("StructureSetROISequence") or []
    if not roi_items:
        raise StructureError("StructureSetROISequence is missing or empty", path=path)
    rois = []
    for item in roi_items:
        number = int(_required(item, "ROINumber", path, "StructureSetROISequence item"))
        name = str(item.get("ROIName", "") or f"ROI {number}").strip()
        rois.append((number, name, str(item.get("ReferencedFrameOfReferenceUID", "") or "")))
    interpreted: dict[int, str] = {}
    for item in ds.get("RTROIObservationsSequence") or []:
        number = item.get("ReferencedROINumber")
        if number not in (None, ""):
            interpreted[int(number)] = str(item.get("RTROIInterpretedType", "") or "").strip().upper()
    return rois, interpreted


@_reader
def read_structures(path: PathType, rois: Callable[[str, str], bool] | None = None) -> StructureSet:
    """Read an RTSTRUCT: every ROI by name and number, with its CLOSED_PLANAR contours.

    POINT and OPEN contours are skipped with a warning; ROIs without contours are kept, empty.

    Parameters
    ----------
    path : str or path
        The RTSTRUCT file.
    rois : callable, optional
        ``rois(name, interpreted_type)`` says which ROIs' contours to read (a cohort's case reads only those its
        classification uses: the others are listed, by name and number, without contours, and their contours are
        neither parsed nor checked). All of them by default.

    Returns
    -------
    StructureSet
        The ROIs (name, number, contours in mm, RTROIInterpretedType), their frame of reference and patient.

    Raises
    ------
    DicomReadError
        For a file that is not DICOM, is damaged or is not an RTSTRUCT.
    StructureError
        For a contour off its plane, or a structure set without ROIs.

    Examples
    --------
    >>> import tempfile
    >>> from isodose.dicom.write import write_example_case
    >>> rd, rs, rp = write_example_case(tempfile.mkdtemp())
    >>> structures = read_structures(rs)
    >>> structures.names, structures.get("PTV").interpreted_type
    (['PTV', 'Cord', 'Recurrence'], 'PTV')
    """
    ds = read_dataset(path, "RTSTRUCT")
    defined, interpreted = _roi_table(ds, path)
    if "ROIContourSequence" not in ds:  # required (type 1): ROIs without contours have items of their own
        raise StructureError(
            "ROIContourSequence is missing: the file holds no contours (a file cut short before them?)", path=path
        )
    names: dict[int, str] = {}
    frames: dict[int, str] = {}
    for number, name, frame in defined:
        if number in names:  # their contours could not be told apart: merged, one would become a hole in the other
            raise StructureError(
                f"ROIs {names[number]!r} and {name!r} share ROINumber {number}: each ROI needs a number of its own "
                "(their contours cannot be told apart)",
                path=path,
            )
        names[number] = name
        frames[number] = frame
    contours: dict[int, list[Contour]] = {number: [] for number in names}
    for item in ds.get("ROIContourSequence") or []:
        number = int(_required(item, "ReferencedROINumber", path, "ROIContourSequence item"))
        if number not in names:
            raise StructureError(f"ROIContourSequence refers to ROI number {number}, which is not defined", path=path)
        if rois is not None and not rois(names[number], interpreted.get(number, "")):
            continue  # not asked for: its contours stay unparsed
        contours[number] += _roi_contours(item, path, names[number])
    frame_uid = ""
    referenced = ds.get("ReferencedFrameOfReferenceSequence") or []
    if referenced:
        frame_uid = str(referenced[0].get("FrameOfReferenceUID", "") or "")
    structures = tuple(
        Structure(
            name=names[n],
            number=n,
            contours=tuple(contours[n]),
            frame_of_reference_uid=frames[n] or frame_uid,
            source=str(path),
            interpreted_type=interpreted.get(n, ""),
        )
        for n in names
    )
    if not frame_uid:
        frame_uid = next((s.frame_of_reference_uid for s in structures if s.frame_of_reference_uid), "")
    return StructureSet(
        structures=structures,
        frame_of_reference_uid=frame_uid,
        source=str(path),
        patient_id=str(ds.get("PatientID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
    )


# --------------------------------------------------------------------------------------------------------
# RTPLAN
# --------------------------------------------------------------------------------------------------------
@_reader
def read_plan(path: PathType) -> Plan:
    """Read the prescription and the number of fractions planned from an RTPLAN, where present.

    Parameters
    ----------
    path : str or path
        The RTPLAN file.

    Returns
    -------
    Plan
        ``prescription_gy``: the highest TargetPrescriptionDose of the dose references (Gy), or None;
        ``number_of_fractions``: NumberOfFractionsPlanned of the first fraction group, or None.

    Raises
    ------
    DicomReadError
        For a file that is not DICOM, is damaged or is not an RTPLAN.
    PlanError
        For a prescription that is not a positive dose.

    Examples
    --------
    >>> import tempfile
    >>> from isodose.dicom.write import write_example_case
    >>> rd, rs, rp = write_example_case(tempfile.mkdtemp())
    >>> plan = read_plan(rp)
    >>> plan.prescription_gy, plan.number_of_fractions
    (70.0, 35)
    """
    ds = read_dataset(path, "RTPLAN", stop_before_pixels=True)
    references = []
    for item in ds.get("DoseReferenceSequence") or []:
        dose = item.get("TargetPrescriptionDose")
        value = None
        if dose not in (None, ""):
            value = float(dose)
            if not (math.isfinite(value) and value > 0):
                raise PlanError(f"TargetPrescriptionDose {dose!r} is not a positive dose", path=path)
        references.append(
            DoseReference(
                description=str(item.get("DoseReferenceDescription", "") or ""),
                reference_type=str(item.get("DoseReferenceType", "") or ""),
                prescription_gy=value,
            )
        )
    fractions = beams = None
    groups = ds.get("FractionGroupSequence") or []
    if not groups:
        log.warning(
            "%s: the plan has no FractionGroupSequence, so its fractions and beams are unknown (a plan cut short?): "
            "a per-beam or per-fraction dose cannot be told from the plan's whole",
            path,
        )
    if groups and groups[0].get("NumberOfFractionsPlanned") not in (None, ""):
        fractions = int(groups[0].NumberOfFractionsPlanned)
        if fractions < 1:
            raise PlanError(f"NumberOfFractionsPlanned is {fractions}", path=path)
    if groups and groups[0].get("NumberOfBeams") not in (None, ""):
        beams = int(groups[0].NumberOfBeams)
        if beams > 0 and not (ds.get("BeamSequence") or ds.get("IonBeamSequence")):
            log.warning(
                "%s: the plan's fraction group names %d beam(s), but the plan holds no BeamSequence (a plan cut "
                "short?)",
                path,
                beams,
            )
    beam_numbers = _beam_numbers(groups[0].get("ReferencedBeamSequence") if groups else None)
    doses = [r.prescription_gy for r in references if r.prescription_gy is not None]
    if len(set(doses)) > 1:
        log.warning(
            "%s: %d target prescriptions (%s Gy): the highest, %g Gy, is taken as the plan's prescription",
            path,
            len(doses),
            ", ".join(f"{d:g}" for d in doses),
            max(doses),
        )
    return Plan(
        prescription_gy=max(doses) if doses else None,
        number_of_fractions=fractions,
        dose_references=tuple(references),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
        source=str(path),
        patient_id=_text(ds, "PatientID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        number_of_beams=beams,
        beam_numbers=beam_numbers,
    )


# --------------------------------------------------------------------------------------------------------
# Spatial registration
# --------------------------------------------------------------------------------------------------------
DEFORMABLE_REGISTRATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.3"


@_reader
def read_registration(path: PathType) -> Registration | DeformableRegistration:
    """Read a DICOM Spatial Registration or Deformable Spatial Registration (modality REG).

    Parameters
    ----------
    path : str or path
        The REG file.

    Returns
    -------
    Registration or DeformableRegistration
        A Spatial Registration: for each source frame of reference, the rigid matrix mapping its points into the
        registration's own (registered) frame. A Deformable Spatial Registration: its deformation (see
        :func:`read_deformable_registration`).

    Raises
    ------
    DicomReadError
        For a file that is not DICOM, is damaged or is not a REG.
    RegistrationError
        For a scaled or affine spatial registration, or a malformed matrix or deformation.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from isodose.dicom.write import write_registration
    >>> from isodose.geometry import rigid_matrix
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "REG.dcm"
    >>> shift = rigid_matrix(translation_mm=(1.0, 2.0, 3.0))
    >>> _ = write_registration(path, registered_frame_uid="1.2.3", source_frame_uid="4.5.6", matrix=shift)
    >>> registration = read_registration(path)
    >>> registration.frame_of_reference_uid, registration.matrices["4.5.6"][:3, 3].tolist()
    ('1.2.3', [1.0, 2.0, 3.0])
    """
    ds = read_dataset(path, "REG", stop_before_pixels=True)
    if str(ds.get("SOPClassUID", "")) == DEFORMABLE_REGISTRATION_STORAGE or "DeformableRegistrationSequence" in ds:
        return _deformable(ds, path)
    registered = str(_required(ds, "FrameOfReferenceUID", path))
    matrices: dict[str, np.ndarray] = {}
    items = ds.get("RegistrationSequence") or []
    if not items:
        raise RegistrationError("RegistrationSequence is missing or empty", path=path)
    for index, item in enumerate(items):
        obj = f"registration item {index}"
        source = str(item.get("FrameOfReferenceUID", "") or "")
        if not source:
            raise RegistrationError("names no FrameOfReferenceUID", path=path, obj=obj)
        registrations = item.get("MatrixRegistrationSequence") or []
        if len(registrations) != 1:
            raise RegistrationError(f"has {len(registrations)} matrix registrations, expected 1", path=path, obj=obj)
        steps = registrations[0].get("MatrixSequence") or []
        if len(steps) != 1:
            raise RegistrationError(
                f"has {len(steps)} matrices; a single matrix per registration is supported", path=path, obj=obj
            )
        kind = str(steps[0].get("FrameOfReferenceTransformationMatrixType", "") or "").strip().upper()
        if kind != "RIGID":
            raise RegistrationError(f"matrix type is {kind or 'missing'}, not RIGID", path=path, obj=obj)
        values = _floats(
            _required(steps[0], "FrameOfReferenceTransformationMatrix", path, obj),
            "FrameOfReferenceTransformationMatrix",
            16,
            path,
            obj,
        )
        try:
            matrices[source] = check_rigid(values.reshape(4, 4), "the matrix")
        except RegistrationError as exc:
            raise RegistrationError(exc.problem, path=path, obj=obj) from None
    return Registration(
        frame_of_reference_uid=registered, matrices=matrices, source=str(path), patient_id=_text(ds, "PatientID")
    )


#: Matrix types a deformable registration's pre- and post-deformation matrices may have.
_AFFINE_TYPES = ("RIGID", "RIGID_SCALE", "AFFINE")


def _registration_matrix(item, keyword: str, path: PathType, obj: str) -> np.ndarray:
    """The 4x4 of a Pre/Post Deformation Matrix Registration Sequence (identity where the item gives none)."""
    if keyword not in item:
        return np.eye(4)
    sequence = item.get(keyword) or []
    where = f"{obj}, {keyword}"
    if len(sequence) != 1:
        raise RegistrationError(f"holds {len(sequence)} items, expected 1", path=path, obj=where)
    kind = _text(sequence[0], "FrameOfReferenceTransformationMatrixType").upper()
    if kind and kind not in _AFFINE_TYPES:
        raise RegistrationError(f"matrix type {kind} is not one of {', '.join(_AFFINE_TYPES)}", path=path, obj=where)
    if "FrameOfReferenceTransformationMatrix" not in sequence[0]:
        raise RegistrationError("its FrameOfReferenceTransformationMatrix is missing", path=path, obj=where)
    values = _floats(
        sequence[0].FrameOfReferenceTransformationMatrix, "FrameOfReferenceTransformationMatrix", 16, path, where
    )
    matrix = values.reshape(4, 4)
    if np.max(np.abs(matrix[3] - [0.0, 0.0, 0.0, 1.0])) > 1e-6 or abs(np.linalg.det(matrix[:3, :3])) < 1e-9:
        raise RegistrationError("is not an invertible affine matrix (last row 0 0 0 1)", path=path, obj=where)
    return matrix


def _deformable(ds, path: PathType) -> DeformableRegistration:
    """A Deformable Spatial Registration (PS3.3 C.20.3): its one deformation grid, checked."""
    registered = str(_required(ds, "FrameOfReferenceUID", path))
    items = ds.get("DeformableRegistrationSequence") or []
    if not items:
        raise RegistrationError("DeformableRegistrationSequence is missing or empty", path=path)
    with_grid = [(k, item) for k, item in enumerate(items, start=1) if item.get("DeformableRegistrationGridSequence")]
    if len(with_grid) != 1:
        raise RegistrationError(
            f"holds {len(with_grid)} deformation grids (DeformableRegistrationGridSequence); one is supported",
            path=path,
        )
    k, item = with_grid[0]
    obj = f"deformable registration item {k}"
    source = _text(item, "SourceFrameOfReferenceUID")
    if not source:
        raise RegistrationError("names no SourceFrameOfReferenceUID", path=path, obj=obj)
    pre = _registration_matrix(item, "PreDeformationMatrixRegistrationSequence", path, obj)
    post = _registration_matrix(item, "PostDeformationMatrixRegistrationSequence", path, obj)
    grids = item.DeformableRegistrationGridSequence
    if len(grids) != 1:
        raise RegistrationError(f"DeformableRegistrationGridSequence holds {len(grids)} items, expected 1", path=path)
    grid = grids[0]
    where = f"{obj}, its grid"
    origin = _floats(_required(grid, "ImagePositionPatient", path, where), "ImagePositionPatient", 3, path, where)
    orientation = _floats(
        _required(grid, "ImageOrientationPatient", path, where), "ImageOrientationPatient", 6, path, where
    )
    row, column = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-4 or abs(np.linalg.norm(column) - 1) > 1e-4 or abs(row @ column) > 1e-4:
        raise RegistrationError("ImageOrientationPatient is not two orthogonal unit vectors", path=path, obj=where)
    dimensions = _floats(_required(grid, "GridDimensions", path, where), "GridDimensions", 3, path, where)
    if np.any(dimensions < 1) or np.any(dimensions != np.round(dimensions)):
        raise RegistrationError(f"GridDimensions {dimensions.tolist()} are not whole numbers of at least 1", path=path)
    resolution = _floats(_required(grid, "GridResolution", path, where), "GridResolution", 3, path, where)
    if np.any(resolution <= 0):
        raise RegistrationError(f"GridResolution {resolution.tolist()} is not positive", path=path, obj=where)
    nx, ny, nz = (int(v) for v in dimensions)
    data = _required(grid, "VectorGridData", path, where)
    raw = bytes(data) if isinstance(data, bytes | bytearray) else np.asarray(data, dtype="<f4").tobytes()
    if len(raw) != 12 * nx * ny * nz:
        raise RegistrationError(
            f"VectorGridData holds {len(raw) // 4} values; GridDimensions {nx} x {ny} x {nz} need {3 * nx * ny * nz}",
            path=path,
            obj=where,
        )
    vectors = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(nz, ny, nx, 3)
    undefined = np.isnan(vectors)
    if np.isinf(vectors).any() or (undefined.any(axis=-1) != undefined.all(axis=-1)).any():
        raise RegistrationError(
            "VectorGridData holds infinite values, or vectors only partly NaN (a whole NaN vector marks an undefined "
            "point)",
            path=path,
            obj=where,
        )
    if undefined.any():
        log.warning(
            "%s: %d of the deformation's %d grid points are undefined (NaN): points mapped near them count as outside",
            path,
            int(undefined.all(axis=-1).sum()),
            nx * ny * nz,
        )
    return DeformableRegistration(
        registered_frame_uid=registered,
        source_frame_uid=source,
        vectors_mm=vectors,
        grid_origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        grid_directions=np.column_stack([row, column, np.cross(row, column)]),
        grid_spacing_mm=(float(resolution[0]), float(resolution[1]), float(resolution[2])),
        pre_matrix=pre,
        post_matrix=post,
        source=str(path),
        patient_id=_text(ds, "PatientID"),
        kind="dicom",
    )


# --------------------------------------------------------------------------------------------------------
# Headers, for folder discovery
# --------------------------------------------------------------------------------------------------------
#: Dates that order the courses of a patient, first found first: (date, time) keywords.
_DATE_TAGS = (
    ("RTPlanDate", "RTPlanTime"),
    ("ContentDate", "ContentTime"),
    ("InstanceCreationDate", "InstanceCreationTime"),
    ("StudyDate", "StudyTime"),
)
_HEADER_TAGS = [
    "Modality",
    "PatientID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "SOPInstanceUID",
    "DoseSummationType",
    "DoseType",
    "ReferencedRTPlanSequence",
    "StructureSetROISequence",
    "SegmentSequence",
    "ReferencedFrameOfReferenceSequence",
    "RegistrationSequence",
    "DeformableRegistrationSequence",
    "DoseReferenceSequence",
    "ReferencedStructureSetSequence",
    "DVHSequence",
    *(keyword for pair in _DATE_TAGS for keyword in pair),
]


@dataclass
class FileHeader:
    """What folder discovery needs of an RT file's header, to sort the files of a folder into cases."""

    path: Path
    modality: str
    patient: str
    frame: str
    sop: str
    summation: str = ""
    referenced_plan: str = ""
    rois: tuple[str, ...] = ()
    registered_frames: tuple[str, ...] = ()
    date: str = ""  # YYYYMMDDHHMMSS... of the first dated pair of _DATE_TAGS, for ordering courses
    dose_type: str = ""
    #: A REG that is a Deformable Spatial Registration.
    deformable: bool = False
    #: An RTDOSE that carries the planning system's DVHs (a DVH Sequence), and the RTSTRUCT they refer to.
    has_dvhs: bool = False
    referenced_structure_set: str = ""


def read_modality(path: Path) -> str:
    """A DICOM file's Modality, reading no further into the file than that element (it comes early, in group 0008:
    a structure set's contours are not parsed); "" for a file that is not DICOM, cannot be read or names none."""
    from pydicom.filereader import read_partial
    from pydicom.tag import Tag

    after = Tag("Modality") + 1
    try:  # pydicom's warnings are left to the reader that follows, which reads these elements again
        with _WARNINGS_LOCK, warnings.catch_warnings(), open(path, "rb") as handle:
            warnings.simplefilter("ignore")
            ds = read_partial(handle, stop_when=lambda tag, vr, length: tag >= after, force=True)
            return str(ds.get("Modality", "") or "").strip()
    except Exception:  # not DICOM, damaged, unreadable: the reader that follows says why
        return ""


def read_header(path: Path) -> FileHeader | None:
    """The header of an RT file, or None for a file that is not one (or cannot be read: warned about, since a
    case missing that file then fails with the reason). pydicom's warnings about an RT file are logged as
    isodose's, naming it; those about any other file (a CT image's odd values, a text file read as DICOM) concern
    no case, and are dropped."""
    with _caught_warnings() as caught:
        header = _read_header(path)
    if header is not None:
        _log_warnings(path, caught)
    return header


def _read_header(path: Path) -> FileHeader | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except InvalidDicomError:  # no preamble, common in RT exports: an RT file only if it names its modality
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=True)
            if "Modality" not in ds:
                return None
    except Exception as exc:  # damaged: pydicom raises many kinds
        if isinstance(exc, InvalidDicomError) or _is_not_dicom(path):
            return None
        log.warning("%s: skipped, unreadable DICOM (%s: %s)", path, type(exc).__name__, exc)
        return None
    try:
        return _header_of(ds, path)
    except Exception as exc:  # a damaged element raises when pydicom first converts it
        log.warning("%s: skipped, malformed DICOM header (%s: %s)", path, type(exc).__name__, exc)
        return None


def _is_not_dicom(path: Path) -> bool:
    """Whether a file that pydicom could not read at all lacks the DICOM preamble (any other file, say)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] != b"DICM"
    except OSError:
        return False


def _header_of(ds, path: Path) -> FileHeader | None:
    modality = str(ds.get("Modality", "") or "")
    if modality not in ("RTDOSE", "RTSTRUCT", "RTPLAN", "REG", "SEG"):
        return None
    frame = str(ds.get("FrameOfReferenceUID", "") or "")
    if modality == "RTSTRUCT" and not frame:
        referenced = ds.get("ReferencedFrameOfReferenceSequence") or []
        frame = str(referenced[0].get("FrameOfReferenceUID", "")) if referenced else ""
    header = FileHeader(path, modality, str(ds.get("PatientID", "") or ""), frame, str(ds.get("SOPInstanceUID", "")))
    for date, time in _DATE_TAGS:
        day = str(ds.get(date, "") or "").strip()
        if day:
            header.date = day + str(ds.get(time, "") or "").strip().replace(":", "")
            break
    if modality == "RTDOSE":
        header.summation = str(ds.get("DoseSummationType", "") or "").strip().upper()
        header.dose_type = str(ds.get("DoseType", "") or "").strip().upper()
        header.referenced_plan = _referenced_plan(ds)
        header.has_dvhs = bool(ds.get("DVHSequence"))
        referenced = ds.get("ReferencedStructureSetSequence") or []
        header.referenced_structure_set = (
            str(referenced[0].get("ReferencedSOPInstanceUID", "") or "").strip() if referenced else ""
        )
    elif modality == "RTSTRUCT":
        header.rois = tuple(str(r.get("ROIName", "")).strip() for r in ds.get("StructureSetROISequence") or [])
    elif modality == "SEG":  # a segmentation's segments are structures, as an RTSTRUCT's ROIs
        header.rois = tuple(str(r.get("SegmentLabel", "")).strip() for r in ds.get("SegmentSequence") or [])
    elif modality == "REG":
        header.registered_frames = tuple(
            str(r.get("FrameOfReferenceUID", "")) for r in ds.get("RegistrationSequence") or []
        ) + tuple(str(r.get("SourceFrameOfReferenceUID", "")) for r in ds.get("DeformableRegistrationSequence") or [])
        header.deformable = "DeformableRegistrationSequence" in ds
    return header
