"""Handing a read case from a reading worker to the process that drives a GPU, without piping its dose grid.

A result of a worker process comes back through a pipe and is unpickled by the receiving process: for a
head-and-neck dose grid (about 20 MB) that is some 20 ms of the receiver's CPU per case (measured in
``benchmarks/test_bench_cohort.py``), several times what classifying the case takes it, and in the GPU
arrangement one process receives every case. So the worker puts the arrays of what it sends (pickle protocol 5's
out-of-band buffers of a page or more) into one shared-memory block, and pipes only the rest; the receiver maps the
block and unpickles the arrays in place, without copying them, and removes the block's name at once (the memory
goes when the last array using it does).

The pages of a block are freed by whoever lets go of it last, some 0.3 ms a MB: left to the receiver, that is the
receiver's work, a quarter of its host work a case in the GPU arrangement. So a sender may keep the blocks it sent
open for a while (``hold``): the receiver's dropping a block then only unmaps it, and the sender frees it when it
closes it, later, as newer blocks come. A block the receiver still maps by then is freed by the receiver, as
without holding; nothing depends on the timing but who does the work.

This needs POSIX shared memory in ``/dev/shm`` (Linux). Where there is none, or not room for a block (it is
reserved before it is written, so that a full ``/dev/shm`` is a fallback, not a crash), the value is pickled
whole as before. Blocks are named after the receiving process (``isodose-<pid>-...``): a run removes what is
left of its own when it ends, and of runs whose process no longer exists when it starts.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import mmap
import os
import pickle
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SHM = Path("/dev/shm")
PREFIX = "isodose-"
#: Buffers at least this large (a page) travel through shared memory; smaller ones are pickled with the rest. A
#: planned case's arrays (its sampling plans, its targets' planes: about 0.42 MB of a generated cohort case, in some
#: ten arrays of a page or more) then arrive as views of the block too, rather than copied through the pipe and again
#: out of the pickle: 21 kB through the pipe a case rather than 444 kB.
MIN_SHARED_BYTES = 4096
ALIGN = 64
#: The most bytes of blocks a sending process holds open (see :func:`send`'s ``hold``), and never more than a
#: quarter of what ``/dev/shm`` has free at the time; and the most blocks.
HELD_BYTES = 32 * 2**20
HELD_BLOCKS = 64
_counter = itertools.count()
_refusal_reported = False  # whether this process has warned that shared memory refused a block
_held: collections.deque[tuple[int, int]] = collections.deque()  # (fd, bytes) of blocks held open, oldest first


@dataclass(frozen=True)
class Sent:
    """A value as a worker sends it: ``data`` (pickled, protocol 5) and, when some of its buffers went through
    shared memory, the block's name and each buffer's (offset, size) in it, in the order pickle gave them."""

    data: bytes
    block: str | None = None
    layout: tuple[tuple[int, int], ...] = ()
    #: Why shared memory refused the block, when it did (the value was then pickled whole).
    refused: str = ""


def available() -> bool:
    return sys.platform.startswith("linux") and SHM.is_dir() and os.access(SHM, os.W_OK)


def send(value: object, receiver_pid: int, hold: int = 0) -> Sent:
    """``value`` ready to send to the process ``receiver_pid`` (see the module's text); never raises for want
    of shared memory (it then pickles everything). ``hold``: how many of the blocks it sent this process keeps
    open (no more than :data:`HELD_BYTES` of them), closing the oldest as new ones come, so that it, not the
    receiver, frees them; where shared memory is short, it closes them all and tries once more."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < MIN_SHARED_BYTES:
            return True  # in band
        buffers.append(raw)
        return False

    if not available():
        return Sent(pickle.dumps(value, protocol=5))
    data = pickle.dumps(value, protocol=5, buffer_callback=out_of_band)
    if not buffers:
        return Sent(data)
    layout, size = [], 0
    for raw in buffers:
        layout.append((size, raw.nbytes))
        size += -(-raw.nbytes // ALIGN) * ALIGN
    name = f"{PREFIX}{receiver_pid}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:8]}"
    try:
        try:
            fd = _write_block(SHM / name, size, buffers, layout)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or not _held:
                raise
            release_held()  # room held by this process's blocks sent before: given back, and one more try
            fd = _write_block(SHM / name, size, buffers, layout)
    except OSError as exc:  # no room (or no shared memory after all): send it all through the pipe
        return Sent(pickle.dumps(value, protocol=5), refused=f"{exc.strerror or exc} for {size / 1e6:.1f} MB")
    _hold(fd, size, hold)
    return Sent(data, name, tuple(layout))


def _write_block(path: Path, size: int, buffers: list[memoryview], layout: list[tuple[int, int]]) -> int:
    """The block written, and an open descriptor of it."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)  # tmpfs pages reserved now: ENOSPC here, never SIGBUS on writing
        with mmap.mmap(fd, size) as block:
            for raw, (offset, nbytes) in zip(buffers, layout):
                block[offset : offset + nbytes] = raw.cast("B")
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


def _hold(fd: int, size: int, hold: int) -> None:
    """Keep ``fd`` (a block of ``size`` bytes just sent) open among the last ``hold`` blocks sent, within
    :data:`HELD_BYTES` and :data:`HELD_BLOCKS`; close what falls out."""
    _held.append((fd, size))
    held = sum(nbytes for _, nbytes in _held)
    budget = HELD_BYTES
    if hold:
        try:
            stats = os.statvfs(SHM)
            budget = min(budget, stats.f_bavail * stats.f_frsize // 4)
        except OSError:
            budget = 0
    while _held and (len(_held) > min(hold, HELD_BLOCKS) or held > budget):
        oldest, nbytes = _held.popleft()
        os.close(oldest)
        held -= nbytes


def blocks_to_hold(batch_size: int, senders: int) -> int:
    """How many blocks each of ``senders`` processes holds (``hold``) so that, as a rule, the receiver has let go
    of a block before its sender closes it: the receiver keeps up to two batches of ``batch_size`` cases (one being
    completed, the next staged) and two cases a sender waiting."""
    return min(HELD_BLOCKS, -(-2 * max(1, batch_size) // max(1, senders)) + 2)


def release_held() -> int:
    """Close every block this process holds open (see :func:`send`); returns how many."""
    closed = 0
    while _held:
        os.close(_held.popleft()[0])
        closed += 1
    return closed


if hasattr(os, "register_at_fork"):  # a forked child holds nothing of its parent's: its copies are closed
    os.register_at_fork(after_in_child=release_held)


def receive(sent: Sent | object) -> object:
    """The value a worker sent (anything not a :class:`Sent` is returned as it is). Its large arrays are views
    of the shared block, whose name is removed here: the memory is freed with the last of them. An OSError
    when the block is gone (removed by someone else)."""
    if not isinstance(sent, Sent):
        return sent
    if sent.refused:
        _report_refusal(sent.refused)
    if sent.block is None:
        return pickle.loads(sent.data)
    path = SHM / sent.block
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            # A private (copy-on-write) mapping: the arrays are writable, and writes stay in this process.
            block = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)
    view = memoryview(block)
    return pickle.loads(sent.data, buffers=[view[offset : offset + nbytes] for offset, nbytes in sent.layout])


def _report_refusal(reason: str) -> None:
    """A warning the first time (in this process) a value came whole because shared memory had no room: in a
    container, ``/dev/shm`` is often small (64 MB by default in Docker), and unpickling every dose grid costs the
    receiving process about 1 ms of CPU per MB, which can bound the whole run."""
    global _refusal_reported
    if _refusal_reported:
        log.debug("shared memory refused a block (%s); the value came through the pipe", reason)
        return
    _refusal_reported = True
    log.warning(
        "shared memory (%s) refused a case's dose grid (%s): cases come through the pipe instead, which is "
        "slower; give %s more room (in a container: --shm-size or --ipc=host)",
        SHM,
        reason,
        SHM,
    )


def sweep(receiver_pid: int | None = None) -> int:
    """Remove the blocks left for ``receiver_pid`` (this run's, once it is over), or, without it, those left for
    processes that no longer exist (runs that were killed). Returns how many were removed."""
    if not available():
        return 0
    removed = 0
    for path in SHM.glob(f"{PREFIX}*"):
        owner = path.name[len(PREFIX) :].split("-", 1)[0]
        if not owner.isdigit():
            continue
        if receiver_pid is not None and int(owner) != receiver_pid:
            continue
        if receiver_pid is None and _alive(int(owner)):
            continue
        try:
            path.unlink()
            removed += 1
        except OSError:  # gone meanwhile, or another user's
            continue
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True
