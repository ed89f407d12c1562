"""Numba's CPU target, set up once per process before the first compiled function is called.

Numba sets up its CPU target on the first call of any compiled function, cached or not: it imports its
implementations of Python and NumPy, and among them ``numba.np.arraymath``, which imports SciPy's BLAS
(``scipy.linalg.cython_blas``, and with it all of ``scipy.linalg``) only to see whether its ``np.correlate`` and
``np.convolve`` may call BLAS. Where SciPy is installed that import is most of the set-up: 130 to 190 ms of a
one-off command's wall time on the 2-core machine of the benchmarks, for kernels that use no BLAS.

:func:`set_up` sets the target up at once, and where :data:`WITHOUT_SCIPY_BLAS` is true (the ``isodose`` command
and a local cohort run's worker processes set it, before any thread starts; a program embedding isodose keeps
Numba's own behaviour) it does so with that one import declined, so that Numba's ``np.correlate`` and
``np.convolve`` of floats compiled later in the process take their own loop rather than BLAS. Nothing else changes:
SciPy, and ``scipy.linalg.cython_blas`` itself, import as usual after.
"""

from __future__ import annotations

import functools
import sys
import threading

#: Whether :func:`set_up` declines SciPy's BLAS while Numba sets up its target (see the module docstring).
WITHOUT_SCIPY_BLAS = False

_BLAS_MODULE = "scipy.linalg.cython_blas"


@functools.cache
def set_up() -> None:
    """Set Numba's CPU target up now (once per process), without SciPy's BLAS where :data:`WITHOUT_SCIPY_BLAS`
    is true, SciPy's BLAS is not imported yet and no other thread runs (the import is declined for the whole
    process while the target is set up, so that another thread importing SciPy then would fail).

    It holds Numba's compiler lock, as Numba does when it sets the target up itself: a thread loading a compiled
    function meanwhile waits for it."""
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.registry import cpu_target

    with global_compiler_lock:
        decline = WITHOUT_SCIPY_BLAS and _BLAS_MODULE not in sys.modules and threading.active_count() == 1
        if decline:
            sys.modules[_BLAS_MODULE] = None  # type: ignore[assignment]  # an import of it raises ImportError
        try:
            cpu_target.target_context.refresh()
        finally:
            if decline and sys.modules.get(_BLAS_MODULE, ...) is None:
                del sys.modules[_BLAS_MODULE]
