"""Numba's CPU target, set up once per process before the first compiled function is called.

Numba sets up its CPU target on the first call of any compiled function, cached or not (its ``refresh``): it
imports its implementations of Python and NumPy (about 80 modules) and registers each of them with its typing and
lowering contexts. Only compiling needs them: a function loaded from the disk cache is machine code already, which
needs Numba's runtime and the symbols its code calls, not the implementations it was compiled from. On the 2-core
machine of the benchmarks the set-up is 150 to 160 ms of a one-off command's wall time, about a quarter of it; and
among those implementations ``numba.np.arraymath`` imports SciPy's BLAS (``scipy.linalg.cython_blas``, and with it
all of ``scipy.linalg``) only to see whether its ``np.correlate`` and ``np.convolve`` may call BLAS, another 130 to
190 ms where SciPy is installed.

:func:`set_up` prepares the target. Where :data:`FOR_ONE_COMMAND` is true (the ``isodose`` command and a local
cohort run's worker processes set it, before any thread starts; a program embedding isodose keeps Numba's own
behaviour), it does so in two steps:

- **loading a jitted function from the cache** (the refresh that Numba's cache asks for as a dispatcher loads one)
  needs only what :func:`_for_loading` does once, as the target is set up, while a one-off command's helper reads
  its files: start Numba's runtime, register the symbols that loaded code may call, and import the modules whose
  compiled helpers the kernels hold and ``numpy.ma`` (see there);
- **anything else** (Numba's compiler asks for a refresh before it compiles, its lowering when it meets a function
  it has no definition of, and a ``vectorize`` ufunc that its cache loads builds its wrapper with the lowering
  registries) first gets the target set up as Numba does, with SciPy's BLAS declined where it is not imported yet
  and no other thread runs, so that Numba's ``np.correlate`` and ``np.convolve`` of floats compiled later in the
  process take their own loop rather than BLAS (SciPy, and ``scipy.linalg.cython_blas`` itself, import as usual
  after).

Which refresh is which is told by its callers: ``numba.core.caching.Cache.load_overload`` called by
``numba.core.dispatcher.Dispatcher.compile``. A Numba that has either no longer, or whose modules that
:func:`_for_loading` imports cannot be imported, gets the whole set-up at once, as before. Whatever the set-up, the
functions called compute the same: the tests load the kernels in processes of both kinds and compare what they
compute, and load a cached ufunc after the kernels (``tests/test_numba_target.py``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
from typing import Any

#: Whether :func:`set_up` sets the target up in two steps, loading and compiling (see the module docstring).
FOR_ONE_COMMAND = False

_BLAS_MODULE = "scipy.linalg.cython_blas"

log = logging.getLogger(__name__)


@functools.cache
def set_up() -> None:
    """Set Numba's CPU target up (once per process): where :data:`FOR_ONE_COMMAND` is true and Numba's cache
    loads its functions as this module knows, for loading first and for compiling when something compiles;
    otherwise at once, as Numba does on its first call.

    It holds Numba's compiler lock, as Numba does when it sets the target up itself: a thread loading a compiled
    function meanwhile waits for it."""
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.registry import cpu_target

    context = cpu_target.target_context
    with global_compiler_lock:
        loading = _loading_codes() if FOR_ONE_COMMAND else None
        if loading is not None:
            try:
                _for_loading(context)
            except ImportError as exc:  # a Numba laid out otherwise: Numba's own set-up
                log.debug("Numba's target set up in whole: %s", exc)
                loading = None
        if loading is None:
            _full_refresh(context, decline_blas=FOR_ONE_COMMAND)
        else:
            context.refresh = functools.partial(_refresh, context, loading)


def loads_only() -> bool:
    """Whether this process's CPU target is still set up for loading cached functions only (nothing compiled)."""
    from numba.core.registry import cpu_target

    return isinstance(cpu_target.target_context.__dict__.get("refresh"), functools.partial)


def _loading_codes() -> tuple[Any, Any] | None:
    """The code of the method with which Numba's cache loads a function (refreshing the target first) and of the
    dispatcher's method that calls it, or None where Numba has them no longer."""
    try:
        from numba.core.caching import Cache
        from numba.core.dispatcher import Dispatcher
    except ImportError:  # pragma: no cover - a Numba laid out otherwise
        return None
    load = getattr(getattr(Cache, "load_overload", None), "__code__", None)
    compile_ = getattr(getattr(Dispatcher, "compile", None), "__code__", None)
    if load is None or compile_ is None or "refresh" not in load.co_names or "load_overload" not in compile_.co_names:
        return None
    return load, compile_


def _refresh(context, loading: tuple[Any, Any], *args, **kwargs) -> None:
    """The target's refresh in a process set up in two steps: nothing more where a dispatcher loads a function
    from the cache (:func:`_for_loading` was done as the target was set up), the whole set-up (once; the method is
    then Numba's own again) when anything else asks."""
    caller = sys._getframe(1)
    if caller.f_code is loading[0] and caller.f_back is not None and caller.f_back.f_code is loading[1]:
        return
    del context.refresh  # the class's method from now on
    _full_refresh(context, decline_blas=True)


#: Numba's implementations whose compiled helpers isodose's kernels hold (array creation and indexing, builtins,
#: reductions, sorting): loading a kernel imports each, to rebuild the helper's environment.
_HELD_BY_KERNELS = (
    "numba.cpython.builtins",
    "numba.np.numpy_support",
    "numba.np.arrayobj",
    "numba.np.arraymath",
    "numba.misc.quicksort",
)


@functools.cache
def _for_loading(context) -> None:
    """What functions loaded from the cache need of the target: Numba's runtime (its allocator, which loaded
    code calls), the symbols that Numba's implementations register with LLVM as they are imported
    (``numba.cpython.hashing``'s hash secret is the one), and the implementations whose helpers the kernels hold
    (:data:`_HELD_BY_KERNELS`), imported with SciPy's BLAS declined as in the whole set-up (``numba.np.arraymath``
    asks for it); and ``numpy.ma``, which Numba imports to type the first array a compiled function is called with
    (``np.ma``, 17 ms). The context already holds the C helpers and math functions, and a parallel function starts
    Numba's threads itself as it is loaded. Done when the target is set up, before the command's inputs are read
    in (a reading helper reads them meanwhile), rather than on the first load, after."""
    import importlib

    from numba.core.runtime import rtsys
    from numba.cpython import hashing  # noqa: F401

    rtsys.initialize(context)
    with _blas_declined():
        for name in _HELD_BY_KERNELS:
            importlib.import_module(name)
    importlib.import_module("numpy.ma")  # Numba's typeof asks whether an array is a masked one, on the first call


def _full_refresh(context, decline_blas: bool) -> None:
    """Numba's own set-up of the target, with SciPy's BLAS declined where ``decline_blas`` is true."""
    if not decline_blas:
        context.refresh()
        return
    with _blas_declined():
        context.refresh()


@contextlib.contextmanager
def _blas_declined():
    """SciPy's BLAS declined meanwhile where it is not imported yet and no other thread runs (the import is
    declined for the whole process, so that another thread importing SciPy then would fail)."""
    decline = _BLAS_MODULE not in sys.modules and threading.active_count() == 1
    if decline:
        sys.modules[_BLAS_MODULE] = None  # type: ignore[assignment]  # an import of it raises ImportError
    try:
        yield
    finally:
        if decline and sys.modules.get(_BLAS_MODULE, ...) is None:
            del sys.modules[_BLAS_MODULE]
