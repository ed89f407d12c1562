"""Cases handed from reading workers to the process that drives a GPU: large arrays through shared memory,
nothing left behind, and a plain pickle wherever shared memory is missing or full."""

from __future__ import annotations

import errno
import gc
import logging
import mmap
import multiprocessing
import os
import pickle

import numpy as np
import pytest

from isodose.cohort import handover
from isodose.model import DoseGrid

pytestmark = pytest.mark.skipif(not handover.available(), reason="needs POSIX shared memory in /dev/shm")


def _blocks(pid: int) -> list[str]:
    return sorted(p.name for p in handover.SHM.glob(f"{handover.PREFIX}{pid}-*"))


def _value():
    big = np.arange(600_000, dtype=np.float32).reshape(60, 100, 100)
    grid = DoseGrid(big, (0.0, 1.0, 2.0), (2.5, 2.5, 3.0), "1.2.3", "RD.dcm")
    return {
        "grid": grid,
        "same grid again": grid,
        "small": np.arange(10.0),
        "other": np.ones((700, 100)),
        "text": "kept",
    }


def test_large_arrays_travel_through_one_block_whose_name_goes_on_arrival():
    value = _value()
    sent = handover.send(value, os.getpid())
    assert sent.block is not None and len(sent.layout) == 2  # the grid (once) and "other"; "small" in band
    assert len(sent.data) < 20_000  # the arrays are not in the pickle
    assert _blocks(os.getpid()) == [sent.block]
    got = handover.receive(pickle.loads(pickle.dumps(sent)))  # as through the pool's pipe
    assert _blocks(os.getpid()) == []  # the name is gone; the memory lives with the arrays
    gc.collect()
    assert got["grid"] is got["same grid again"] and got["text"] == "kept"
    np.testing.assert_array_equal(got["grid"].dose_gy, value["grid"].dose_gy)
    np.testing.assert_array_equal(got["other"], value["other"])
    np.testing.assert_array_equal(got["small"], value["small"])
    assert not got["grid"].dose_gy.flags.owndata  # a view of the block, not a copy
    got["grid"].dose_gy[0, 0, 0] = -1.0  # writable, and private to this process
    assert got["grid"].dose_gy[0, 0, 0] == -1.0


def test_arrays_of_a_page_or_more_travel_through_the_block_and_smaller_ones_in_the_pickle():
    """A planned case's arrays are mostly of a few pages (its plans, its targets' planes): they go through the
    block with its dose grid, not through the pipe; an array under a page is not worth a place in the block."""
    value = {"under a page": np.arange(511.0), "a page": np.arange(512.0), "two pages": np.arange(1024.0)}
    sent = handover.send(value, os.getpid())
    assert [size for _, size in sent.layout] == [4096, 8192]
    assert len(sent.data) < 4096 + 1024  # the array under a page, and the pickle's own bytes
    got = handover.receive(pickle.loads(pickle.dumps(sent)))
    for key, array in value.items():
        np.testing.assert_array_equal(got[key], array)

    def in_block(array):  # a view of the shared block's mapping
        base = array
        while isinstance(base, np.ndarray):
            base = base.base
        return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)

    assert [in_block(got[key]) for key in value] == [False, True, True]


def test_without_room_or_without_shared_memory_the_value_is_pickled_whole(monkeypatch, caplog):
    value = _value()

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    monkeypatch.setattr(handover, "_refusal_reported", False)
    sent = handover.send(value, os.getpid())
    assert sent.block is None and _blocks(os.getpid()) == []  # the refused block is not left behind
    assert sent.refused.startswith("No space left on device for ")
    with caplog.at_level(logging.WARNING, logger="isodose"):
        np.testing.assert_array_equal(handover.receive(sent)["grid"].dose_gy, value["grid"].dose_gy)
        handover.receive(handover.send(value, os.getpid()))
    # Said once, where the cases arrive, with what to do about it.
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "refused a case's dose grid (No space left on device for " in warning and "--shm-size" in warning
    monkeypatch.undo()
    small = handover.send({"case_id": "p1", "status": "error"}, os.getpid())  # an error entry: no block needed
    assert small.block is None and handover.receive(small) == {"case_id": "p1", "status": "error"}
    monkeypatch.setattr(handover, "available", lambda: False)
    sent = handover.send(value, os.getpid())
    assert sent.block is None
    np.testing.assert_array_equal(handover.receive(sent)["other"], value["other"])


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_sender_holds_its_last_blocks_open_so_that_it_frees_them_not_the_receiver(monkeypatch):
    """With ``hold``, the sender keeps the descriptors of its last blocks (within HELD_BYTES), closing the oldest
    as new ones come: while it holds a block, the receiver's letting go of it frees no pages (unmapping only), and
    the values arrive the same whether the sender still holds their block or not."""
    handover.release_held()
    value = _value()
    first = handover.send(value, os.getpid(), hold=2)
    [(first_fd, _)] = handover._held
    sent = [first] + [handover.send(value, os.getpid(), hold=2) for _ in range(2)]
    held = [fd for fd, _ in handover._held]
    assert len(held) == 2 and all(_is_open(fd) for fd in held)
    assert first_fd not in held and not _is_open(first_fd)  # the oldest closed as a newer one came
    for s in sent:
        assert s.block is not None
        got = handover.receive(s)
        np.testing.assert_array_equal(got["grid"].dose_gy, value["grid"].dose_gy)
    size = os.fstat(held[-1]).st_size  # the last block, its name gone: alive through the descriptor held
    assert size >= value["grid"].dose_gy.nbytes and os.fstat(held[-1]).st_nlink == 0
    assert handover.release_held() == 2 and not handover._held and not any(_is_open(fd) for fd in held)
    # Without hold nothing stays open; within HELD_BYTES only what fits.
    handover.receive(handover.send(value, os.getpid()))
    assert not handover._held
    monkeypatch.setattr(handover, "HELD_BYTES", int(1.5 * size))
    for _ in range(3):
        handover.receive(handover.send(value, os.getpid(), hold=5))
    assert len(handover._held) == 1
    # Never more than a quarter of what /dev/shm has free, nor more than HELD_BLOCKS blocks.
    free = os.statvfs(handover.SHM)
    monkeypatch.setattr(
        os, "statvfs", lambda path: os.statvfs_result((*free[:4], 4 * size // free.f_frsize, *free[5:]))
    )
    handover.receive(handover.send(value, os.getpid(), hold=5))
    assert len(handover._held) == 0
    monkeypatch.undo()
    monkeypatch.setattr(handover, "HELD_BLOCKS", 2)
    for _ in range(4):
        handover.receive(handover.send({"small": np.ones(2000)}, os.getpid(), hold=5))
    assert len(handover._held) == 2
    assert handover.release_held() == 2
    monkeypatch.undo()
    handover.receive(handover.send(value, os.getpid(), hold=5))
    # Short of room, the blocks held are given back first, and the block is written after all.
    calls = []
    fallocate = os.posix_fallocate

    def full_once(fd, offset, length):
        calls.append(len(handover._held))
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        fallocate(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", full_once)
    again = handover.send(value, os.getpid(), hold=5)
    assert calls == [1, 0] and again.block is not None and not again.refused
    np.testing.assert_array_equal(handover.receive(again)["other"], value["other"])
    assert handover.release_held() == 1
    assert handover.blocks_to_hold(32, 2) == 34 and handover.blocks_to_hold(32, 15) == 7
    assert handover.blocks_to_hold(500, 2) == handover.HELD_BLOCKS
    # A forked child closes its copies of the descriptors held (the parent keeps its own).
    handover.receive(handover.send(value, os.getpid(), hold=2))
    [(fd, _)] = handover._held
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's)
        os._exit(0 if not handover._held and not _is_open(fd) else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and _is_open(fd)
    assert handover.release_held() == 1


def test_a_block_gone_before_arrival_is_an_error_and_blocks_left_behind_are_swept():
    sent = handover.send(_value(), os.getpid())
    (handover.SHM / sent.block).unlink()  # removed by someone else
    with pytest.raises(FileNotFoundError):
        handover.receive(sent)
    ended = multiprocessing.get_context("spawn").Process(target=int)
    ended.start()
    ended.join()
    for pid in (os.getpid(), ended.pid):
        (handover.SHM / f"{handover.PREFIX}{pid}-1-2-abc").write_bytes(b"left")
    assert handover.sweep() == 1  # only the run that no longer exists
    assert _blocks(ended.pid) == [] and len(_blocks(os.getpid())) == 1
    assert handover.sweep(os.getpid()) == 1 and _blocks(os.getpid()) == []


def head_and_neck_sized_case(seed: int, through_shared_memory: bool, receiver_pid: int):
    """What a reading worker sends for a case with a head-and-neck-sized dose grid (200 x 200 x 120 voxels,
    float32): as it is, or through :func:`handover.send` (the benchmarks time the receiving side)."""
    dose = np.random.default_rng(seed).uniform(0.0, 70.0, (120, 200, 200)).astype(np.float32)
    value = {"dose": DoseGrid(dose, (-250.0, -250.0, -150.0), (2.5, 2.5, 2.5), "1.2.3", f"RD{seed}.dcm")}
    return handover.send(value, receiver_pid) if through_shared_memory else value
