"""A one-off command's files read in a helper process while the command loads its compiled kernels.

Loading Numba's kernels (importing Numba, setting up its CPU target) or CuPy's takes a one-off command about half a
second, and reading its files (importing pydicom, parsing them) most of the rest; in one process the one waits for
the other. Where the command asks for compiled kernels (:func:`isodose.dispatch.loads_compiled_kernels`:
``--backend numba`` or ``cupy``) and the process can fork at no risk (Linux, one thread), :func:`reading` forks a
helper (NumPy imported first, as both need it) that reads the files in their order while the command loads the
kernels. Once it has made them all (or met an error), the helper sends back, for each read, its value (pickled) and
the log records it made, or the :class:`~isodose.errors.IsodoseError` it raised (a pipe holds little: sent one by
one, each would wait for the command to take it before the next read began). The large buffers of the values (a
dose grid's voxels) go through a file in memory that both processes share (:func:`_spill_file`), which the
command maps rather than copies: only the rest travels through the pipe; the command logs those records as its
own, at the point where it would have read the file itself, so that its warnings are shown and kept with the results
as before, and raises the error there. Anything else (the helper failing in another way, killed, a value that cannot
be pickled, or no helper to be had) falls back to reading in the command's own process. Elsewhere, for inputs larger
than :data:`MAX_BYTES`, or with ``ISODOSE_READ_AHEAD=0``, each read is simply made when the command asks for it.

What the command does meanwhile that may fail (loading a backend that cannot run here) is held back by
:meth:`Reads.meanwhile` until the point where the command did it before, so that a user meets the errors in the same
order either way. Only the ``isodose`` logger's records travel: another library's output while reading (Python's
last-resort handler, a C library's) is printed by the helper as it comes.
"""

from __future__ import annotations

import logging
import mmap
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO, TypeVar

from ..errors import IsodoseError

#: Set to 0 (or false, no, off) to read in the command's own process.
ENV_VAR = "ISODOSE_READ_AHEAD"
#: Inputs larger than this together are read in the command's own process: the helper's pickled copy of what it read
#: and the command's own would double the memory they take, for a gain that reading so much makes small.
MAX_BYTES = 256 * 2**20
OFF = ("0", "false", "no", "off")
#: Buffers of a value this large or larger go through the shared file rather than the pipe (see :func:`_spill_file`).
SPILL_BYTES = 64 * 2**10
#: Where each buffer starts in the shared file: a multiple of this (NumPy's arrays are then aligned as it likes).
SPILL_ALIGNMENT = 64

log = logging.getLogger(__name__)
T = TypeVar("T")


def possible() -> bool:
    """Whether this process can fork a reading helper at no risk: on Linux (a fork elsewhere may break system
    libraries), with one thread (none of a library's either: a lock another thread held would stay held in the
    helper), with SIGCHLD not ignored (the helper is then reaped by the system, and cannot be waited for), and not
    turned off by ``ISODOSE_READ_AHEAD=0``."""
    if not sys.platform.startswith("linux") or os.environ.get(ENV_VAR, "1").strip().lower() in OFF:
        return False
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


#: OpenBLAS's thread count (read once, as it loads) while NumPy is imported before the fork (:func:`_numpy_first`).
BLAS_THREADS_VAR = "OPENBLAS_NUM_THREADS"


def _numpy_first() -> None:
    """NumPy imported before the helper is forked, where it is not yet: the command and the helper both need it, and
    imported once it is not imported twice at the same time (about 80 ms of the helper's way to its first read on the
    2-core machine of the benchmarks, which then ends before the command needs the files). OpenBLAS, NumPy's BLAS in
    its wheels, starts its threads as it loads, and a process with threads is not forked (:func:`possible`): it is
    loaded with :data:`BLAS_THREADS_VAR` at 1, whatever the environment says, so that it starts none, and the
    environment is then left as it was (OpenBLAS keeps one thread for the rest of the command, whose arithmetic that
    BLAS does is on 3 x 3 and 4 x 4 matrices, which threads do not speed up). Where NumPy starts threads all the same
    (another BLAS that starts them as it loads), no helper is forked and the command reads its files itself."""
    if "numpy" in sys.modules:
        return
    before = os.environ.get(BLAS_THREADS_VAR)
    os.environ[BLAS_THREADS_VAR] = "1"
    try:
        import numpy  # noqa: F401
    finally:
        if before is None:
            del os.environ[BLAS_THREADS_VAR]
        else:
            os.environ[BLAS_THREADS_VAR] = before


def _small(inputs: Sequence[str | os.PathLike[str] | None]) -> bool:
    """Whether the files ``inputs`` (None for none) hold at most :data:`MAX_BYTES` together (a file that cannot be
    looked at counts for nothing: its reader says what is wrong with it)."""
    total = 0
    for path in inputs:
        if path is not None:
            try:
                total += os.path.getsize(path)
            except OSError:
                pass
    return total <= MAX_BYTES


class _Records(logging.Handler):
    """The helper's log records, kept to be sent rather than shown."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg = record.getMessage()  # formatted here: the arguments need not pickle
        record.args = None
        record.exc_info = None
        record.exc_text = None
        self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        taken, self.records = self.records, []
        return taken


def _spill_file() -> int | None:
    """A file in memory (``memfd_create``) that the helper, forked after it is made, writes its values' large
    buffers into, and the command maps (copy on write: what the command changes stays its own), so that a dose grid
    is neither copied through the pipe nor unpickled; None where the system has none to give (the values then
    travel whole through the pipe)."""
    create = getattr(os, "memfd_create", None)
    if create is None:
        return None
    try:
        return create("isodose-read-ahead", getattr(os, "MFD_CLOEXEC", 0))
    except OSError:
        return None


class _Spill:
    """The helper's side of the shared file: pickle's ``buffer_callback``, which writes each large contiguous buffer
    at the file's end and keeps where (its offset and length), and keeps the rest in the pickle."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.end = 0
        self.spans: list[tuple[int, int]] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        if self.fd is None:
            return True
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: pickled in the message
            return True
        if raw.nbytes < SPILL_BYTES:
            return True
        offset = -(-self.end // SPILL_ALIGNMENT) * SPILL_ALIGNMENT
        written = 0
        while written < raw.nbytes:
            written += os.pwrite(self.fd, raw[written:], offset + written)
        self.spans.append((offset, raw.nbytes))
        self.end = offset + raw.nbytes
        return False

    def message(self, value: Any) -> bytes:
        """``value`` pickled with its large buffers written to the shared file: the pickle and where they are."""
        self.spans = []
        payload = pickle.dumps(value, protocol=5, buffer_callback=self)
        return pickle.dumps((payload, self.spans), protocol=pickle.HIGHEST_PROTOCOL)


def _unspilled(message: tuple[bytes, list[tuple[int, int]]], fd: int | None) -> Any:
    """A message of the helper's unpickled, its large buffers mapped from the shared file ``fd``."""
    payload, spans = message
    if not spans:
        return pickle.loads(payload)
    if fd is None:
        raise ValueError("a message refers to a shared file that is not there")
    start = min(offset for offset, _ in spans) // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
    end = max(offset + length for offset, length in spans)
    # Its own pages only: what an earlier message's values were is not kept alive with this one's.
    view = memoryview(mmap.mmap(fd, end - start, access=mmap.ACCESS_COPY, offset=start))
    return pickle.loads(payload, buffers=[view[offset - start : offset - start + length] for offset, length in spans])


def _help(reads: Sequence[Callable[[], Any]], out: BinaryIO, spill: int | None = None) -> None:
    """The helper's work: each read in order, until one does not give a value, and then their outcomes sent (a
    pipe holds little: sending each at once would wait for the command to take it before the next read), their
    large buffers written to the shared file ``spill`` (where there is one) as they are pickled."""
    records = _Records()
    logger = logging.getLogger("isodose")
    logger.handlers[:] = [records]
    logger.propagate = False
    spilled = _Spill(spill)
    messages = []
    for read in reads:
        try:
            outcome: tuple[str, Any] = ("value", read())
        except IsodoseError as exc:
            outcome = ("error", exc)
        except Exception as exc:
            outcome = ("failed", f"{type(exc).__name__}: {exc}")
        try:
            message = spilled.message((outcome, records.take()))
        except Exception as exc:  # a value or an error that does not pickle: the command reads it itself
            message = spilled.message((("failed", f"not sent: {exc}"), []))
        messages.append(message)
        if outcome[0] != "value":
            break
    for message in messages:
        out.write(message)
    out.flush()


class Reads:
    """The reads of :func:`reading`, each made once, in order, by :meth:`next`."""

    def __init__(self, reads: Sequence[Callable[[], Any]]) -> None:
        self._reads = list(reads)
        self._next = 0
        self._helper: int | None = None  # the helper's process id while it runs
        self._pipe: BinaryIO | None = None
        self._spill: int | None = None  # the file in memory the helper writes large buffers to
        #: Whether a helper was started to read them.
        self.ahead = False

    def _start(self) -> None:
        for stream in (sys.stdout, sys.stderr):  # nothing buffered here is written twice
            stream.flush()
        try:
            read_end, write_end = os.pipe()
        except OSError as exc:  # no file descriptors left: read here
            log.debug("no reading helper (%s): reading here", exc)
            return
        spill = _spill_file()
        try:
            pid = os.fork()
        except OSError as exc:  # no processes or memory left: read here
            for fd in (read_end, write_end, spill):
                if fd is not None:
                    os.close(fd)
            log.debug("no reading helper (%s): reading here", exc)
            return
        if pid == 0:  # the helper
            status = 0
            try:
                os.close(read_end)
                if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
                    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends it at once; the command says so
                with os.fdopen(write_end, "wb") as out:
                    _help(self._reads, out, spill)
            except BaseException:
                status = 1
            finally:
                os._exit(status)  # no exit handlers of the command's, no buffers of its flushed twice
        os.close(write_end)
        self._helper = pid
        self.ahead = True
        self._pipe = os.fdopen(read_end, "rb")
        self._spill = spill
        log.debug("reading %d input(s) in helper process %d while the kernels load", len(self._reads), pid)

    def _stop(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if self._spill is not None:  # what was mapped from it stays
            os.close(self._spill)
            self._spill = None
        if self._helper is not None:
            try:
                os.kill(self._helper, signal.SIGKILL)
                os.waitpid(self._helper, 0)
            except (ProcessLookupError, ChildProcessError):  # reaped already (by the system, if SIGCHLD was ignored)
                pass
            self._helper = None  # later reads are made here

    def meanwhile(self, work: Callable[[], T]) -> Callable[[], T]:
        """A callable that gives ``work``'s value, or raises the IsodoseError it raised, where the command calls it:
        at the point where the command did that work before reading ahead, so that errors come in the same order.
        Where a helper reads, ``work`` is done at once (loading the kernels while the helper reads), else when the
        callable is called."""
        if not self.ahead:
            return work
        try:
            value = work()
        except IsodoseError as exc:
            error = exc

            def raise_it() -> T:
                raise error

            return raise_it
        return lambda: value

    def next(self) -> Any:
        """The next read's value, or its error raised, with the log records its reading made logged here."""
        index = self._next
        if index >= len(self._reads):
            raise IndexError("every read was made")
        self._next += 1
        if self._pipe is not None:
            try:
                (kind, payload), records = _unspilled(pickle.load(self._pipe), self._spill)
            except Exception as exc:  # the helper died or was killed: read here
                log.debug("reading helper gave nothing for read %d (%s): reading here", index, exc)
                self._stop()
            else:
                if kind == "failed":  # read here, where the failure shows as it would (records not doubled)
                    log.debug("reading helper failed on read %d (%s): reading here", index, payload)
                    self._stop()
                else:
                    here = threading.current_thread()
                    for record in records:
                        record.process, record.thread, record.threadName = os.getpid(), here.ident, here.name
                        logging.getLogger(record.name).handle(record)
                    if kind == "error":
                        self._stop()
                        raise payload
                    return payload
        return self._reads[index]()


@contextmanager
def reading(
    reads: Sequence[Callable[[], Any]], *, ahead: bool, inputs: Sequence[str | os.PathLike[str] | None] = ()
) -> Iterator[Reads]:
    """The command's ``reads`` (callables without arguments, each returning what it read), given back in order by
    the :class:`Reads` yielded. With ``ahead`` (and :func:`possible`, and the files ``inputs`` they read small
    enough), NumPy is imported (:func:`_numpy_first`) and a helper process starts making them at once, while the
    block goes on (loading the kernels); otherwise each is made when asked for. The helper is stopped when the block
    ends, whatever is left unread."""
    reads_ = Reads(reads)
    try:
        if ahead and reads and _small(inputs):
            if possible():  # NumPy is imported before the fork only where there will be one
                _numpy_first()
                if possible():  # still one thread
                    reads_._start()
                else:
                    log.debug("NumPy started threads as it loaded: no reading helper, reading here")
        yield reads_
    finally:
        reads_._stop()
