"""One exception family for everything a user can get wrong.

Every message names the file (when there is one), the object inside it (an ROI, a tag, a frame) and the
problem, so that the command line can print it as a single line.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike


class IsodoseError(Exception):
    """Base class of every error isodose raises on purpose.

    ``str(error)`` is ``"<file>: <object>: <problem>"``, leaving out the parts that are unknown.

    Parameters
    ----------
    problem : str
        What is wrong, in words a user can act on.
    path : str or path, optional
        The file concerned.
    obj : str, optional
        The object inside it: an ROI, a tag, a line, a registration item.

    Attributes
    ----------
    warnings : tuple of str
        What was logged as warnings for the same piece of work before it failed, where a batch keeps them (see
        :func:`isodose.recurrence.classify_recurrences`).

    Examples
    --------
    >>> error = IsodoseError("has no contours", path="RS.dcm", obj="ROI 'GTV'")
    >>> str(error)
    "RS.dcm: ROI 'GTV': has no contours"
    >>> error.path, error.obj, error.problem
    ('RS.dcm', "ROI 'GTV'", 'has no contours')
    """

    warnings: tuple[str, ...] = ()

    def __init__(self, problem: str, *, path: str | PathLike[str] | None = None, obj: str | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.obj = obj
        super().__init__(": ".join(part for part in (self.path, self.obj, problem) if part))


class DicomReadError(IsodoseError):
    """A file that is not DICOM, is truncated, has the wrong modality or lacks a required tag."""


class DoseGridError(IsodoseError):
    """A dose grid whose geometry or values isodose cannot use without guessing."""


class DoseUnitsError(DoseGridError):
    """Dose that is not in Gy (for example RELATIVE), which must not be mistaken for Gy."""


class StructureError(IsodoseError):
    """A structure set, ROI or contour that cannot be turned into a volume."""


class RoiNotFoundError(StructureError):
    """An ROI asked for by name or number that the structure set does not hold."""


class FrameOfReferenceError(IsodoseError):
    """Dose and structures (or two datasets) that live in different frames of reference."""


class RegistrationError(IsodoseError):
    """A spatial registration that is missing, not rigid, or does not relate the frames at hand."""


class PlanError(IsodoseError):
    """An RT plan from which a required value (prescription, fractions) cannot be read."""


class MetricError(IsodoseError):
    """A metric string outside the grammar, or one that needs a value that is missing."""


class BackendError(IsodoseError):
    """A compute backend that was asked for but cannot run on this machine."""


class ValidationDataError(IsodoseError):
    """Reference data (such as the Nelms set) that is missing or malformed."""


class InputMismatchError(IsodoseError):
    """Files of one case that say they do not belong together (another patient, another plan), or a dose that
    stands for part of a course where the whole course is needed."""


class OutputError(IsodoseError):
    """An output file or folder that cannot be written (missing, in the way, not writable)."""


class AccumulationError(IsodoseError):
    """Courses that cannot be converted or added: fractions, alpha/beta, grids or frames."""


class ManifestError(IsodoseError):
    """A manifest or input folder that cannot describe a cohort."""


class StoreError(IsodoseError):
    """A results store that cannot be opened, resumed or written."""


class DistributedError(IsodoseError):
    """Dask is missing, or its scheduler cannot be reached."""


class _Collector(logging.Handler):
    """The warnings logged by one thread: cases computed at once in other threads of the process (a Dask worker's,
    or a tool's) log through the same logger, and their warnings are theirs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Collect the warnings isodose logs inside the block in this thread (they are still logged), to keep them
    with a result."""
    collector = _Collector()
    logger = logging.getLogger("isodose")
    logger.addHandler(collector)
    _case_work.collecting = getattr(_case_work, "collecting", 0) + 1
    try:
        yield collector.messages
    finally:
        _case_work.collecting -= 1
        logger.removeHandler(collector)


_case_work = threading.local()


@contextmanager
def off_the_terminal() -> Iterator[None]:
    """Cases' work, in this thread: the warnings it keeps with each case's result (:func:`collect_warnings`) are
    not shown on the terminal by the command (:func:`shown_on_terminal`), wherever the case is computed: in a
    worker process, whose logging reaches no terminal, or in the command's own process (one worker, or the one
    driving a GPU). The command says how many cases have warnings instead."""
    depth = getattr(_case_work, "depth", 0)
    _case_work.depth = depth + 1
    try:
        yield
    finally:
        _case_work.depth = depth


def shown_on_terminal(record: logging.LogRecord) -> bool:
    """Whether the command shows ``record`` on the terminal: not a warning (or worse) that cases' work logged
    (:func:`off_the_terminal`) where :func:`collect_warnings` keeps it with a result; everything else, debugging
    output and warnings no case keeps among them, is shown (a logging filter runs in the thread that logs)."""
    kept = getattr(_case_work, "depth", 0) > 0 and getattr(_case_work, "collecting", 0) > 0
    return not (kept and record.levelno >= logging.WARNING)
