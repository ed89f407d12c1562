"""Output paths, checked before any work starts: a result that cannot be written is refused at once, in one line
naming the path, never after the computing (nor with a traceback from the writer)."""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path

from .errors import OutputError


def output_file(path: str | PathLike[str], option: str = "") -> Path:
    """``path`` as a file to write: its folder must exist and take writes, and the path must not be a folder.

    Parameters
    ----------
    path : str or path
        The file to write (it may exist: it is replaced).
    option : str
        The option that named it, for the message (``--dvh-out``, say).

    Returns
    -------
    Path
        The path.

    Raises
    ------
    OutputError
        For a folder, a missing folder, a file in the way of the folder, or a folder that refuses writes.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> output_file(f"{folder}/curves.csv").name
    'curves.csv'
    >>> output_file(f"{folder}/missing/curves.csv", "--dvh-out")
    Traceback (most recent call last):
    ...
    isodose.errors.OutputError: .../missing/curves.csv: --dvh-out: the folder .../missing does not exist; ...
    """
    path = Path(path)
    obj = option or None
    if path.is_dir():
        raise OutputError("is a folder; give a file name", path=path, obj=obj)
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder", path=path, obj=obj)
    if not folder.exists():
        raise OutputError(f"the folder {folder} does not exist; create it first", path=path, obj=obj)
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError("cannot be written (permission denied)", path=path, obj=obj)
    return path


def output_folder(path: str | PathLike[str], option: str = "") -> Path:
    """``path`` as a folder to write files into, created when missing (with its parents).

    Parameters
    ----------
    path : str or path
        The folder.
    option : str
        The option that named it, for the message.

    Returns
    -------
    Path
        The folder, existing.

    Raises
    ------
    OutputError
        For a file in the way, or a folder that cannot be created.

    Examples
    --------
    >>> import tempfile
    >>> output_folder(tempfile.mkdtemp() + "/out/phantom").is_dir()
    True
    """
    path = Path(path)
    obj = option or None
    if path.exists() and not path.is_dir():
        raise OutputError("is a file, not a folder", path=path, obj=obj)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot be created ({exc.strerror or exc})", path=path, obj=obj) from exc
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def private_temporary(path: str | PathLike[str]) -> Path:
    """A new, empty file beside ``path`` (``NAME.XXXXXXXX.tmp``) to write and then rename over it: of a name no one
    can foresee and created by this process alone (O_EXCL), so that a symbolic link planted in the output folder
    cannot make a run write over another file; with the permissions a file made plainly would have.

    >>> import tempfile
    >>> tmp = private_temporary(f"{tempfile.mkdtemp()}/results.h5")
    >>> tmp.name.startswith("results.h5.") and tmp.name.endswith(".tmp"), tmp.stat().st_size
    (True, 0)
    """
    import tempfile

    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(name)
