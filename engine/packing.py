"""Pickling an object's small arrays as one buffer.

A planned case is handed from a reading worker to the process driving a GPU as a pickle (see
:mod:`isodose.cohort.handover`), and a sampling plan or a target's planes hold a few dozen small arrays each: some
80 a case. NumPy rebuilds each pickled array on its own, a couple of microseconds apiece, which made up half of
receiving a case. :func:`reduce_packed` (an object's ``__reduce__``) packs an object's arrays of up to
:data:`PACKED_MAX_BYTES` into one buffer, and :func:`unpack` makes them views of it again: the same values,
dtypes and shapes, writable where the buffer is (as NumPy's own unpickled arrays are).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Arrays up to this size are packed; a larger one is pickled as it is (copying it into the pack would cost more
#: than it saves).
PACKED_MAX_BYTES = 256 * 1024
#: Each packed array starts at a multiple of this many bytes.
ALIGN = 16


def _packable(value: object) -> bool:
    return (
        type(value) is np.ndarray
        and value.dtype.kind in "biufc"
        and not value.dtype.hasobject
        and value.nbytes <= PACKED_MAX_BYTES
    )


def reduce_packed(obj: object) -> tuple:
    """What ``obj.__reduce__`` returns for an object whose state is its ``__dict__``: its packable arrays in one
    buffer, the rest of its attributes as they are."""
    state = dict(vars(obj))
    layout = []
    placed: dict[int, int] = {}  # id of an array -> its offset: an array held twice is packed once
    size = 0
    for name, value in state.items():
        if _packable(value):
            if id(value) not in placed:
                placed[id(value)] = size
                size += -(-value.nbytes // ALIGN) * ALIGN
            layout.append((name, value.dtype.str, value.shape, placed[id(value)]))
    buffer = np.zeros(size, dtype=np.uint8)
    for name, _, _, offset in layout:
        value = np.ascontiguousarray(state.pop(name)).reshape(-1).view(np.uint8)
        buffer[offset : offset + value.nbytes] = value
    return unpack, (type(obj), state, buffer, tuple(layout))


def unpack(cls: type, state: dict, buffer: np.ndarray, layout: tuple) -> object:
    """The object :func:`reduce_packed` packed: its arrays views of ``buffer``."""
    obj: Any = object.__new__(cls)
    made: dict[int, np.ndarray] = {}  # offset -> array: an array held twice comes back as one
    for name, dtype, shape, offset in layout:
        count = math.prod(shape)
        if offset in made and made[offset].dtype.str == dtype and made[offset].shape == shape:
            state[name] = made[offset]
        elif count:
            array = np.frombuffer(buffer, dtype, count, offset)
            state[name] = made[offset] = array if len(shape) == 1 else array.reshape(shape)
        else:
            state[name] = np.empty(shape, dtype=dtype)
    obj.__dict__.update(state)
    return obj
