"""When the engine's compiled host code is taken: the Numba functions of :mod:`isodose.compiled_polygons` and
:mod:`isodose.compiled_dvh` (cached on disk), which compute what their NumPy twins compute, bit for bit, quicker.

Where Numba is not loaded yet, small inputs take the NumPy twins, so that a command that computes little with the
NumPy backend never pays Numba's start-up (about half a second). Once Numba is loaded (a compiled backend), or where a
process has said it will ask these questions many times (:func:`prefer_compiled`: the process that drives a GPU in a
cohort run, which loads no compiled kernels), every input takes the compiled code.
"""

from __future__ import annotations

import sys

_prefer_compiled = False


def prefer_compiled() -> None:
    """Take the compiled host code for every input from now on in this process (the first call then loads Numba, if
    nothing has yet): for a process that computes many small things without loading a compiled backend (the one
    driving a GPU in a cohort run), where Numba's start-up (about half a second, once) is soon repaid: a case's
    targets are tested in some 20 us rather than 150. The answers are the same either way."""
    global _prefer_compiled
    _prefer_compiled = True


def take_compiled() -> bool:
    """Whether small inputs take the compiled code too: Numba is imported in this process already (a compiled
    backend, say; then it costs nothing more to load, and is quicker), or :func:`prefer_compiled` was called."""
    return _prefer_compiled or "numba" in sys.modules
