"""Picks the compute backend: the one place in the engine that knows the backends exist.

Order of precedence: an explicit ``backend=`` argument, else the ``ISODOSE_BACKEND`` environment variable,
else ``auto``, which takes CuPy when a CUDA device is usable and a test launch on it gives the reference's
answers, else Numba, else NumPy. Asking for a backend that cannot run here is a
:class:`~isodose.errors.BackendError`, never a crash, and ``auto`` never fails. A one-off command that computes
little (:func:`select_backend_for_work`: ``isodose dvh`` and ``isodose classify``) takes NumPy under ``auto``,
since loading the compiled kernels would cost it more than they save.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BackendError

if TYPE_CHECKING:  # not at run time: the command line imports this module before NumPy is needed
    from .kernels.protocol import Kernels

log = logging.getLogger(__name__)

ENV_VAR = "ISODOSE_BACKEND"
BACKENDS = ("cupy", "numba", "numpy")
CHOICES = ("auto", *BACKENDS)


@dataclass(frozen=True)
class Backend:
    """A usable backend: its name, the device it runs on (for the record) and its kernels, which keep the
    protocol of :class:`isodose.kernels.protocol.Kernels`."""

    name: str
    device: str
    kernels: Kernels


def _load_numpy() -> Backend:
    from .kernels import numpy_ref

    return Backend("numpy", numpy_ref.device_name(), numpy_ref)


def _load_numba() -> Backend:
    try:
        from .kernels import numba_cpu
    except ImportError as exc:  # pragma: no cover - numba is a dependency
        raise BackendError(f"the numba backend is not available: {exc}") from exc
    return Backend("numba", numba_cpu.device_name(), numba_cpu)


def _load_cupy() -> Backend:
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA installation
        raise BackendError(f"the cupy backend needs CuPy, which cannot be imported here ({exc})") from exc
    try:
        usable = bool(cupy.is_available())
    except Exception:  # pragma: no cover - driver errors
        usable = False
    if not usable:
        raise BackendError("the cupy backend needs a CUDA device, and none is usable on this machine")
    try:
        kernels = importlib.import_module("isodose.kernels.cupy_gpu")
    except ImportError as exc:
        raise BackendError(f"the cupy backend is not available in this version of isodose ({exc})") from exc
    return Backend("cupy", _device_after_selftest(kernels, "cupy"), kernels)


def _device_after_selftest(kernels: Kernels, name: str) -> str:
    """The device name, once a small problem has been solved on it as the NumPy reference solves it."""
    from .kernels import selftest

    try:
        device = kernels.device_name()
        selftest.check(kernels)
    except AssertionError as exc:
        raise BackendError(f"the {name} backend disagrees with the reference on its test launch ({exc})") from exc
    except Exception as exc:  # compiler, driver or memory failures
        raise BackendError(f"the {name} backend failed its test launch ({type(exc).__name__}: {exc})") from exc
    return device


_LOADERS = {"numpy": _load_numpy, "numba": _load_numba, "cupy": _load_cupy}

#: The backends that compute on the host: their kernels share the capabilities of :mod:`isodose.kernels.host`.
HOST_BACKENDS = ("numba", "numpy")


def _requested(name: str | None) -> str:
    """The backend asked for: ``name``, else ``$ISODOSE_BACKEND``, else ``auto`` (BackendError for another)."""
    requested = (name or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if requested not in CHOICES:
        source = "backend" if name else ENV_VAR
        raise BackendError(f"{source} must be one of {', '.join(CHOICES)}, not {requested!r}")
    return requested


@functools.cache
def _load(name: str) -> Backend:
    return _LOADERS[name]()


def host_kernels() -> Kernels:
    """The CPU kernels with which this process computes what is computed where cases are read (the doses at a
    structure's contour vertices, say): the compiled ones where it takes compiled host code
    (:func:`isodose.compiled.take_compiled`), NumPy's otherwise. Their interpolation gives the same numbers, bit for
    bit (``tests/test_kernels.py``), so which one a process takes changes no result."""
    from .compiled import take_compiled

    return _load("numba" if take_compiled() else "numpy").kernels


def select_backend(name: str | None = None) -> Backend:
    """The backend to compute with; see the module docstring for the order of precedence.

    Parameters
    ----------
    name : str, optional
        ``auto``, ``numpy``, ``numba`` or ``cupy`` (any case); None takes ``$ISODOSE_BACKEND``, else ``auto``.

    Returns
    -------
    Backend
        Its name, device (for the record) and kernels; loaded once per process.

    Raises
    ------
    BackendError
        For an unknown name, or a backend that cannot run here (``auto`` never fails).

    Examples
    --------
    >>> backend = select_backend("numpy")
    >>> backend.name, backend.device
    ('numpy', 'cpu, 1 thread')
    """
    requested = _requested(name)
    if requested != "auto":
        return _load(requested)
    for candidate in BACKENDS:
        try:
            backend = _load(candidate)
        except BackendError as exc:
            log.debug("auto backend: skipping %s: %s", candidate, exc)
            continue
        log.debug("auto backend: %s on %s", backend.name, backend.device)
        return backend
    raise BackendError("no backend can run on this machine")  # pragma: no cover - numpy always can


#: The module of each compiled backend's kernels: importing it is what loading the backend costs.
_COMPILED_MODULES = {"numba": "isodose.kernels.numba_cpu", "cupy": "isodose.kernels.cupy_gpu"}


#: A one-off computation of at most this many sampled cells takes NumPy when the backend is ``auto`` and no compiled
#: backend is loaded in the process yet (:func:`select_backend_for_work`): loading Numba and its cached kernels costs
#: about half a second on the 2-core machine of the benchmarks, while NumPy's reference samples 100,000 cells in
#: about 0.1 s.
SMALL_WORK_CELLS = 400_000


def select_backend_for_work(name: str | None, cells: int, what: str = "") -> Backend:
    """:func:`select_backend` for a one-off computation of ``cells`` sampled cells (a command's): where it would
    take ``auto``, a computation of at most :data:`SMALL_WORK_CELLS` cells takes NumPy unless Numba's or CuPy's
    kernels are loaded in this process already, since loading them would cost more than the computation saves.
    ``what`` names the computation in the debug log (``summing the doses``, say).

    >>> select_backend_for_work("numpy", 10**9).name
    'numpy'
    """
    requested = _requested(name)
    compiled_loaded = any(module in sys.modules for module in _COMPILED_MODULES.values())
    if requested == "auto" and cells <= SMALL_WORK_CELLS and not compiled_loaded:
        log.debug("auto backend: numpy for %s (%d cells)", what or "a small one-off computation", cells)
        return _load("numpy")
    return select_backend(name)


def loads_compiled_kernels(name: str | None) -> bool:
    """Whether :func:`select_backend` with ``name`` will try to load compiled kernels that this process has not
    loaded yet: ``numba`` or ``cupy`` asked for (by ``name`` or ``$ISODOSE_BACKEND``) and not loaded. ``auto`` may
    not (a one-off command's small computation takes NumPy), and an unknown name is :func:`select_backend`'s error,
    not this one's. A one-off command reads its files meanwhile (:mod:`isodose.cli.readahead`).

    >>> loads_compiled_kernels("numpy")
    False
    """
    try:
        module = _COMPILED_MODULES.get(_requested(name))
    except BackendError:
        return False
    return module is not None and module not in sys.modules


def resolve_backend(backend: str | Backend | None = None) -> Backend:
    """The backend to compute with: the one way engine code turns its ``backend=`` argument into a backend.

    Parameters
    ----------
    backend : str, Backend or None
        A :class:`Backend` (returned as it is), or a name or None for :func:`select_backend`.

    Returns
    -------
    Backend
        The backend.

    Raises
    ------
    BackendError
        As :func:`select_backend`.

    Examples
    --------
    >>> numpy_backend = resolve_backend("numpy")
    >>> resolve_backend(numpy_backend) is numpy_backend
    True
    """
    return backend if isinstance(backend, Backend) else select_backend(backend)


def for_one_command() -> None:
    """Set the process up for one command that ends when it returns (the ``isodose`` command does): Numba's CPU
    target, where the command loads it, is set up for loading cached functions only, and in whole only if
    something compiles, without SciPy's BLAS either way, which no kernel uses (about 150 ms of a one-off command's
    wall time, and 130 to 190 ms more where SciPy is installed; see :mod:`isodose.kernels.numba_target`). The
    worker processes of a local cohort run, which run isodose's work alone, call it too. A program embedding
    isodose does not call it, and keeps Numba's own behaviour. Call it before any thread starts."""
    from .kernels import numba_target

    numba_target.FOR_ONE_COMMAND = True


def cuda_usable() -> bool:
    """Whether CuPy imports and sees a CUDA device (without compiling or testing anything)."""
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:
        return False


def available_backends() -> dict[str, str]:
    """Each backend's device, or the reason it cannot run here.

    Returns
    -------
    dict of str to str
        By backend name (``cupy``, ``numba``, ``numpy``), its device, or ``unavailable: <reason>``.

    Examples
    --------
    >>> available_backends()["numpy"]
    'cpu, 1 thread'
    """
    report = {}
    for candidate in BACKENDS:
        try:
            report[candidate] = _load(candidate).device
        except BackendError as exc:
            report[candidate] = f"unavailable: {exc.problem}"
    return report


def samples_cases_together(backend: str | Backend | None = None) -> bool:
    """Whether ``backend`` (as :func:`resolve_backend` takes it) samples many cases in one launch, as a GPU does
    (its kernels' ``PREFERS_MERGED_REQUESTS``): a cohort run then has workers read and one process compute. Found
    without loading a host backend, whose kernels never do (a process that only hands cases to workers need not
    load Numba); ``auto`` loads CuPy where it would take it.

    >>> samples_cases_together("numba")
    False
    """
    return _capability(backend, lambda kernels: kernels.PREFERS_MERGED_REQUESTS)


def copies_grids(backend: str | Backend | None = None) -> bool:
    """Whether ``backend`` copies the dose grids it samples to where it computes (its kernels' ``COPIES_GRIDS``: a
    GPU), so that a grid is best cut to the part its samples read before it travels; found as
    :func:`samples_cases_together` finds its answer.

    >>> copies_grids("numpy")
    False
    """
    return _capability(backend, lambda kernels: kernels.COPIES_GRIDS)


def _capability(backend: str | Backend | None, capability: Callable[[Any], bool]) -> bool:
    """``capability`` (a flag of the protocol) of ``backend``'s kernels, or of the host kernels' module."""
    if isinstance(backend, Backend):
        return bool(capability(backend.kernels))
    requested = _requested(backend)
    if requested == "auto":
        try:
            return bool(capability(_load("cupy").kernels))
        except BackendError:
            requested = "numpy"  # a host backend: Numba where it loads, else NumPy
    elif requested == "numba" and importlib.util.find_spec("numba") is None:
        raise BackendError("the numba backend is not available: Numba is not installed")
    if requested in HOST_BACKENDS:
        from .kernels import host

        return bool(capability(host))
    return bool(capability(_load(requested).kernels))
