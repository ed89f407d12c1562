"""Displacement field images of research registration tools (plastimatch, elastix, ANTs, ITK itself), read and
written with SimpleITK (the optional extra ``isodose[images]``).

A displacement field image in ITK's convention holds, at each voxel of the fixed image's grid, the vector ``d(x)``
such that ``T(x) = x + d(x)`` carries the fixed point ``x`` to the moving image's point. ITK reads geometry and
vectors in LPS, DICOM's patient coordinates, whatever the file's own convention (a NIfTI file is RAS on disk:
ITK turns it to LPS as it reads it), so the field is used as SimpleITK gives it. Which image was fixed and which
moving cannot be told from the file: the caller says it, by giving the frames of reference of both.

Formats: whatever SimpleITK reads as a 3-D image of 3-component vectors: ``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``,
``.nrrd``, ``.nhdr``.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

from .errors import IsodoseError, RegistrationError
from .model import DeformableRegistration

#: The suffixes of the image files SimpleITK reads here: displacement fields, and label images (``labels``).
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
#: File names that are displacement field images rather than DICOM.
FIELD_SUFFIXES = IMAGE_SUFFIXES


def is_field_image(path: str | PathLike[str]) -> bool:
    """Whether ``path`` names a displacement field image (by its suffix).

    >>> is_field_image("warp.nii.gz"), is_field_image("REG.dcm")
    (True, False)
    """
    name = Path(path).name.lower()
    return any(name.endswith(suffix) for suffix in FIELD_SUFFIXES)


def _simpleitk():
    try:
        import SimpleITK
    except ImportError as exc:
        raise RegistrationError(
            "reading a displacement field image needs SimpleITK: pip install 'isodose[images]'"
        ) from exc
    return SimpleITK


def read_image(sitk, path: Path, error: type[IsodoseError], what: str, components: int, expected: str):
    """The 3-D image of ``components`` values per voxel at ``path``, read with ``sitk`` (SimpleITK); else an
    ``error`` naming the file: no such file (``what`` it should be), one SimpleITK cannot read, or another shape
    (``expected`` says which)."""
    if not path.is_file():
        raise error(f"no such {what}", path=path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise error(f"cannot be read as an image ({first})", path=path) from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != components:
        raise error(
            f"is a {image.GetDimension()}-D image of {image.GetNumberOfComponentsPerPixel()} component(s) per voxel; "
            f"{expected}",
            path=path,
        )
    return image


def read_displacement_field(
    path: str | PathLike[str], *, fixed_frame_uid: str, moving_frame_uid: str, patient_id: str = ""
) -> DeformableRegistration:
    """A displacement field image as a :class:`~isodose.model.DeformableRegistration` from the fixed image's frame
    (registered) to the moving image's (source).

    Parameters
    ----------
    path : str or path
        The image (see the module docstring for the formats).
    fixed_frame_uid, moving_frame_uid : str
        The frames of reference of the fixed and the moving images: the case's planning frame and follow-up frame,
        in the order the registration was run.
    patient_id : str
        The patient the field belongs to, where known (an image names none).

    Returns
    -------
    DeformableRegistration
        ``kind`` ``field``, both matrices the identity.

    Raises
    ------
    RegistrationError
        For a file SimpleITK cannot read, an image that is not 3-D with 3-component vectors, or vectors that are
        not finite; and when SimpleITK is not installed.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> vectors = np.zeros((2, 3, 4, 3), np.float32)
    >>> vectors[..., 1] = -1.5
    >>> field = DeformableRegistration("plan", "follow-up", vectors, (0.0, 0.0, 0.0), np.eye(3), (2.0, 2.0, 3.0))
    >>> path = write_displacement_field(pathlib.Path(tempfile.mkdtemp()) / "warp.nii.gz", field)
    >>> back = read_displacement_field(path, fixed_frame_uid="plan", moving_frame_uid="follow-up")
    >>> back.grid_shape, back.grid_spacing_mm, float(back.vectors_mm[0, 0, 0, 1])
    ((2, 3, 4), (2.0, 2.0, 3.0), -1.5)
    """
    sitk = _simpleitk()
    path = Path(path)
    image = read_image(
        sitk,
        path,
        RegistrationError,
        "displacement field image",
        3,
        "a displacement field is 3-D with 3 components",
    )
    vectors = sitk.GetArrayFromImage(image).astype(np.float32)  # (nz, ny, nx, 3), as ITK holds it: LPS, mm
    if not np.all(np.isfinite(vectors)):
        raise RegistrationError("holds vectors that are not finite", path=path)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = image.GetOrigin()
    spacing = image.GetSpacing()
    return DeformableRegistration(
        registered_frame_uid=fixed_frame_uid,
        source_frame_uid=moving_frame_uid,
        vectors_mm=np.ascontiguousarray(vectors),
        grid_origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        grid_directions=direction,
        grid_spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        source=str(path),
        patient_id=patient_id,
        kind="field",
    )


def write_displacement_field(path: str | PathLike[str], registration: DeformableRegistration) -> Path:
    """Write the deformation of ``registration`` (its matrices must be the identity) as a displacement field image in
    ITK's convention, on its grid (for tests, and to hand a DICOM deformation to ITK tools)."""
    sitk = _simpleitk()
    if not (np.allclose(registration.pre_matrix, np.eye(4)) and np.allclose(registration.post_matrix, np.eye(4))):
        raise RegistrationError("a displacement field image holds no matrices: this registration has some")
    image = sitk.GetImageFromArray(np.asarray(registration.vectors_mm, dtype=np.float64), isVector=True)
    image.SetOrigin(tuple(float(v) for v in registration.grid_origin_mm))
    image.SetSpacing(tuple(float(v) for v in registration.grid_spacing_mm))
    image.SetDirection(tuple(float(v) for v in np.asarray(registration.grid_directions, dtype=np.float64).ravel()))
    path = Path(path)
    sitk.WriteImage(image, str(path))
    return path


#: Which image was fixed when a displacement field was computed: the planning CT, or the follow-up image.
FIXED_ROLES = ("planning", "follow-up")


def read_case_registration(
    path: str | PathLike[str],
    *,
    planning_frame_uid: str,
    follow_up_frame_uid: str,
    field_fixed: str | None = None,
    patient_id: str = "",
):
    """The registration of a case from its file: a DICOM REG (rigid or deformable), or a displacement field image,
    whose fixed image ``field_fixed`` says (``planning`` or ``follow-up``: an image cannot say which).

    Returns
    -------
    Registration or DeformableRegistration

    Raises
    ------
    RegistrationError
        For a field image without ``field_fixed``, or an unknown role; and what the readers raise.
    """
    if is_field_image(path):
        if field_fixed not in FIXED_ROLES:
            raise RegistrationError(
                "is a displacement field image: say which image was fixed when it was computed "
                f"(--field-fixed {' or '.join(FIXED_ROLES)}; a manifest's registration_fixed column)",
                path=path,
            )
        frames = (planning_frame_uid, follow_up_frame_uid)
        fixed, moving = frames if field_fixed == "planning" else frames[::-1]
        return read_displacement_field(path, fixed_frame_uid=fixed, moving_frame_uid=moving, patient_id=patient_id)
    if field_fixed is not None:
        raise RegistrationError(
            "is a DICOM registration, which names its own frames: --field-fixed is for images", path=path
        )
    from .dicom.read import read_registration

    return read_registration(path)
