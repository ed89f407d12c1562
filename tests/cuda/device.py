"""A stand-in for CuPy's array module, over NumPy, for the emulated GPU backend.

Its arrays (:class:`DeviceArray`) behave as CuPy arrays do where the GPU backend's host code and the engine
could go wrong on a real device without any CPU test noticing:

- NumPy will not take one implicitly (``np.asarray(a)`` raises TypeError, as CuPy does); ``a.get()`` copies
  it to the host. ``float(a)``, ``int(a)`` and ``bool(a)`` of one value are allowed, as in CuPy.
- Arithmetic, comparisons, indexing, ufuncs and NumPy functions on them give device arrays again; mixing in a
  host (NumPy) array is a TypeError, as CuPy refuses it.
- Only :func:`DeviceModule.asarray` (and the creation functions) move data to the device.
"""

from __future__ import annotations

import functools
import time

import numpy as np

IMPLICIT = "a device array does not become a NumPy array implicitly: copy it with .get()"


class DeviceClock:
    """Seconds spent in the emulated device's work: copies to and from it, operations on its arrays, and freeing
    them. A GPU does that work apart from the host (DMA, device kernels; a freed array goes back to CuPy's memory
    pool), so the host-work benchmark leaves it out. Work done inside other device work is counted once."""

    def __init__(self):
        self.seconds = 0.0
        self._depth = 0

    def __call__(self, work):
        @functools.wraps(work)
        def timed(*args, **kwargs):
            if self._depth:
                return work(*args, **kwargs)
            self._depth += 1
            started = time.perf_counter()
            try:
                return work(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self._depth -= 1

        return timed


CLOCK = DeviceClock()


class Traffic:
    """What crosses between host and device, as a GPU would carry it: copies to the device (``asarray`` of host
    data) and to the host (``get``), with their bytes, and synchronisations (every copy to the host, and every
    value read off the device with ``float``, ``int`` or ``bool``, waits for the device's work to finish)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.to_device_bytes = 0
        self.to_device_copies = 0
        self.to_host_bytes = 0
        self.to_host_copies = 0
        self.syncs = 0

    def snapshot(self) -> dict[str, int]:
        return dict(vars(self))


TRAFFIC = Traffic()


def _unwrap(value, where: str):
    """The NumPy data of device arrays inside ``value`` (nested in lists and tuples); host arrays refused."""
    if isinstance(value, DeviceArray):
        return value.data
    if isinstance(value, np.ndarray):
        raise TypeError(f"{where}: a host (NumPy) array where a device array is needed")
    if isinstance(value, list | tuple):
        return type(value)(_unwrap(v, where) for v in value)
    return value


def _wrap(value):
    if isinstance(value, np.ndarray):
        return DeviceArray(value)
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, np.generic):  # CuPy reductions give 0-d arrays, not scalars
        return DeviceArray(np.asarray(value))
    return value


class DeviceArray:
    """An array "on the device" (see the module's text)."""

    __array_priority__ = 100

    def __init__(self, data: np.ndarray):
        self.data = data

    @CLOCK
    def _release(self) -> None:
        del self.data

    def __del__(self):
        # On a GPU a freed array's memory goes back to CuPy's pool at once; a large NumPy array takes a while.
        if "data" in self.__dict__:
            self._release()

    # -- transfers --------------------------------------------------------------------------------------------
    @CLOCK
    def get(self) -> np.ndarray:
        TRAFFIC.to_host_bytes += self.data.nbytes
        TRAFFIC.to_host_copies += 1
        TRAFFIC.syncs += 1
        return self.data.copy()

    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT)

    def __float__(self) -> float:
        TRAFFIC.syncs += 1
        return float(self.data)

    def __int__(self) -> int:
        TRAFFIC.syncs += 1
        return int(self.data)

    def __index__(self) -> int:
        return self.data.__index__()

    def __bool__(self) -> bool:
        TRAFFIC.syncs += 1
        return bool(self.data)

    def __repr__(self) -> str:
        return f"DeviceArray({self.data!r})"

    # -- attributes and methods -------------------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)
    ndim = property(lambda self: self.data.ndim)
    nbytes = property(lambda self: self.data.nbytes)
    flags = property(lambda self: self.data.flags)
    T = property(lambda self: DeviceArray(self.data.T))

    def __len__(self) -> int:
        return len(self.data)

    def __getattr__(self, name):
        # Methods (reshape, astype, sum, max, view, copy, ravel, ...) run on the data and stay on the device.
        method = getattr(self.data, name)
        if not callable(method):
            raise AttributeError(name)

        @CLOCK
        def on_device(*args, **kwargs):
            return _wrap(method(*_unwrap(args, name), **_unwrap(kwargs, name)))

        return on_device

    @CLOCK
    def __getitem__(self, key):
        return _wrap(self.data[_unwrap(key, "indexing")])

    @CLOCK
    def __setitem__(self, key, value) -> None:
        self.data[_unwrap(key, "indexing")] = _unwrap(value, "assignment")

    @CLOCK
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        where = f"numpy.{ufunc.__name__}"
        return _wrap(getattr(ufunc, method)(*_unwrap(inputs, where), **_unwrap(kwargs, where)))

    @CLOCK
    def __array_function__(self, func, types, args, kwargs):
        where = f"numpy.{func.__name__}"
        return _wrap(func(*_unwrap(args, where), **_unwrap(kwargs, where)))


def _operator(name: str):
    @CLOCK
    def apply(self, *others):
        return _wrap(getattr(self.data, name)(*_unwrap(others, name)))

    apply.__name__ = name
    return apply


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "matmul"):
    setattr(DeviceArray, f"__{_name}__", _operator(f"__{_name}__"))
    setattr(DeviceArray, f"__r{_name}__", _operator(f"__r{_name}__"))
for _name in ("lt", "le", "eq", "ne", "gt", "ge", "neg", "pos", "abs", "invert"):
    setattr(DeviceArray, f"__{_name}__", _operator(f"__{_name}__"))
DeviceArray.__hash__ = None  # an array, as in NumPy and CuPy


class DeviceModule:
    """The functions of CuPy's module that the GPU backend uses, with :class:`DeviceArray` as ``ndarray``."""

    ndarray = DeviceArray

    @staticmethod
    @CLOCK
    def asarray(array, dtype=None) -> DeviceArray:
        """To the device (a copy of host data), or a device array as ``dtype``."""
        if isinstance(array, DeviceArray):
            return array if dtype is None or array.dtype == dtype else array.astype(dtype)
        data = np.array(array, dtype=dtype)
        TRAFFIC.to_device_bytes += data.nbytes
        TRAFFIC.to_device_copies += 1
        return DeviceArray(data)

    @staticmethod
    @CLOCK
    def ascontiguousarray(array, dtype=None) -> DeviceArray:
        if not isinstance(array, DeviceArray):
            raise TypeError(f"ascontiguousarray: needs a device array, got {type(array).__name__}")
        return DeviceArray(np.ascontiguousarray(array.data, dtype=dtype))

    @staticmethod
    @CLOCK
    def zeros(shape, dtype=float) -> DeviceArray:
        return DeviceArray(np.zeros(shape, dtype=dtype))

    @staticmethod
    @CLOCK
    def empty(shape, dtype=float) -> DeviceArray:
        # Not zeros (nor NaN, which kernels write on purpose): an element a kernel leaves unwritten shows up.
        dtype = np.dtype(dtype)
        return DeviceArray(np.full(shape, -np.finfo(dtype).max if dtype.kind == "f" else -12345, dtype=dtype))

    @staticmethod
    @CLOCK
    def concatenate(arrays, axis=0) -> DeviceArray:
        return DeviceArray(np.concatenate(_unwrap(list(arrays), "concatenate"), axis=axis))

    @staticmethod
    @CLOCK
    def cumsum(array, axis=None) -> DeviceArray:
        return DeviceArray(np.cumsum(_unwrap(array, "cumsum"), axis=axis))

    @staticmethod
    @CLOCK
    def arange(*args, dtype=None) -> DeviceArray:
        return DeviceArray(np.arange(*args, dtype=dtype))

    @staticmethod
    @CLOCK
    def where(condition, x, y) -> DeviceArray:
        """As CuPy's: device arrays and scalars (a host array is refused)."""
        return DeviceArray(np.where(*_unwrap((condition, x, y), "where")))


xp = DeviceModule()
