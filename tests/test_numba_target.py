"""Numba's CPU target set up for one command (``isodose.kernels.numba_target``): functions loaded from the cache
without Numba's implementations compute what they compute after Numba's whole set-up, and anything compiled
later in the process gets the whole set-up first."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from isodose.kernels import numba_target

#: The work of one process: DVHs of a head-and-neck-sized phantom, the polygon check, the decimal parser and the
#: point, resampling, summing and displacement kernels, all loaded from Numba's cache (the first process of a test
#: fills the cache where it is empty).
WORK = """
import json, sys
import numpy as np
from isodose import dispatch
if {one_command}:
    dispatch.for_one_command()
from isodose.kernels import numba_target
from isodose.compiled_decimals import parse_decimal_strings
from isodose.compiled_polygons import ring_crosses_itself
from isodose.dvh import compute_dvhs
from isodose.phantoms import head_neck_case
import numba.core.environment as environment
rebuilt = set()
rebuild = environment._rebuild_env
def spy(module, *args):  # the module of each helper's environment that loading rebuilds
    rebuilt.add(module)
    return rebuild(module, *args)
environment._rebuild_env = spy
backend = dispatch.select_backend("numba")
at_set_up = set(sys.modules)
dose, structures = head_neck_case((40, 72, 72), 6.0, 6.0)
dvhs = compute_dvhs(dose, structures, backend=backend)
kernels = backend.kernels
cube = np.arange(27.0).reshape(3, 3, 3)
points = np.array([[0.25, 0.5, 1.75], [1.5, 1.5, 0.5], [2.0, 0.0, 1.0]])
square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
bow_tie = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
print(json.dumps({{
    "dvhs": [[d.name, d.volume_cc] + [d.metric(m) for m in ("Dmin", "Dmean", "D95", "D2cc", "Dmax")] for d in dvhs],
    "trilinear": kernels.trilinear(cube, np.zeros(3), np.ones(3), points).tolist(),
    "course_sum": kernels.course_sum((cube, 2 * cube), (1.0, 1.0), (5, 10), 3.0).tolist(),
    "resample": kernels.resample(cube, np.zeros(3), np.ones(3), np.full(3, 0.5), np.ones(3), (2, 2, 2), np.eye(4))
    .tolist(),
    "moved": kernels.moved_doses(cube, np.zeros(3), np.ones(3), points, np.stack([np.eye(4)] * 3)).tolist(),
    "displaced": [a.tolist() for a in kernels.displace(np.full((3, 3, 3, 3), 0.25), np.eye(4), points)],
    "decimals": parse_decimal_strings(b"1.5\\\\-2.25 \\\\3e2\\\\0.000125").tolist(),
    "rings": [bool(ring_crosses_itself(square)), bool(ring_crosses_itself(bow_tie))],
    "loads_only": numba_target.loads_only(),
    "imported_by_loads": sorted(m for m in rebuilt if m.startswith("numba.") and m not in at_set_up),
    "imported_after_set_up": sorted(m for m in set(sys.modules) - at_set_up if m.startswith(("numba.", "numpy."))),
    "scipy_blas": "scipy.linalg" in sys.modules,
}}))
"""


def _run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_installed_numba_loads_as_this_module_knows():
    """Numba's cache refreshes the target as a dispatcher loads a function, in methods this module finds: a Numba
    where that changed would quietly lose the faster set-up (while still computing right), and this test says so."""
    assert numba_target._loading_codes() is not None


def test_kernels_loaded_for_one_command_compute_as_after_numbas_whole_set_up():
    """The same work, bit for bit, in a process set up as Numba does and in one set up for one command, where
    each function came from the cache (nothing was compiled, so the target was never set up in whole), SciPy's
    BLAS was never imported, and the implementations whose helpers the kernels hold were imported with the
    target's set-up, not as the kernels loaded."""
    whole = _run(WORK.format(one_command=False))  # fills the cache, where it was empty, for the next one
    one_command = _run(WORK.format(one_command=True))
    assert one_command.pop("loads_only") is True
    assert whole.pop("loads_only") is False
    assert one_command.pop("scipy_blas") is False
    assert one_command["imported_by_loads"] == []  # all imported as the target was set up, before any read
    assert one_command.pop("imported_after_set_up") == []  # nor anything else of Numba's or NumPy's
    whole.pop("imported_after_set_up")
    whole.pop("scipy_blas")
    assert one_command == whole
    assert whole["rings"] == [False, True]
    assert len(whole["dvhs"]) == 20 and all(row[1] > 0 for row in whole["dvhs"])


def test_what_is_compiled_after_loading_gets_the_whole_set_up_first():
    """After the kernels were loaded for one command, a function compiled in the process (one that Numba's
    implementations of dictionaries of strings and of ``np.correlate`` compile) compiles and computes as usual;
    the target is then set up in whole, still without SciPy's BLAS."""
    code = (
        WORK.format(one_command=True)
        + """
import numba
from numba import typed, types

@numba.njit
def correlated(a, b):
    named = typed.Dict.empty(types.unicode_type, types.float64)
    named["first"] = np.correlate(a, b)[0]
    return named["first"]

a, b = np.arange(5.0), np.array([1.0, 0.5, 0.25])
print(json.dumps([numba_target.loads_only(), correlated(a, b), float(np.correlate(a, b)[0]),
                  numba_target.loads_only(), "scipy.linalg" in sys.modules]))
"""
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    before, compiled, expected, after, scipy_blas = json.loads(done.stdout.splitlines()[-1])
    assert before is True and after is False
    assert compiled == pytest.approx(expected, abs=1e-12)
    assert scipy_blas is False


def test_a_numba_that_loads_otherwise_gets_the_whole_set_up_at_once():
    """Where Numba's cache does not load as this module knows, the command's target is set up in whole at once
    (still without SciPy's BLAS), as Numba does on its first call."""
    code = """
import sys
from isodose import dispatch
dispatch.for_one_command()
from isodose.kernels import numba_target
numba_target._loading_codes = lambda: None
backend = dispatch.select_backend("numba")
print(numba_target.loads_only(), "scipy.linalg" in sys.modules, "numba.np.npyimpl" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True"]


def test_a_program_embedding_isodose_keeps_numbas_own_set_up():
    """Without ``for_one_command`` the target is set up in whole when the kernels are imported."""
    code = """
from isodose import dispatch
from isodose.kernels import numba_target
dispatch.select_backend("numba")
print(numba_target.loads_only())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]


def test_this_process_keeps_numbas_own_set_up():
    """The test process embeds isodose: its target was set up in whole."""
    from isodose import dispatch

    dispatch.select_backend("numba").kernels.trilinear(np.ones((2, 2, 2)), np.zeros(3), np.ones(3), np.zeros((1, 3)))
    assert numba_target.loads_only() is False


def test_a_cached_ufunc_loaded_after_the_kernels_gets_the_whole_set_up(tmp_path):
    """A ``vectorize`` ufunc that Numba's cache loads builds its wrapper with the lowering registries: loaded after
    the kernels in a process set up for one command, it gets the whole set-up first, and computes as usual; so do
    the kernels after it."""
    (tmp_path / "ufuncs.py").write_text(
        "from numba import vectorize\n\n\n@vectorize(cache=True)\ndef scaled(x, n):\n    return x * n + 0.5\n"
    )
    fill = "import numpy as np, ufuncs; print(ufuncs.scaled(np.arange(3.0), 2).tolist())"
    code = """
import json, sys
import numpy as np
from isodose import dispatch
dispatch.for_one_command()
from isodose.kernels import numba_target
kernels = dispatch.select_backend("numba").kernels
cube = np.arange(8.0).reshape(2, 2, 2)
before = kernels.trilinear(cube, np.zeros(3), np.ones(3), np.array([[0.5, 0.5, 0.5]])).tolist()
loaded = numba_target.loads_only()
import ufuncs
scaled = ufuncs.scaled(np.arange(3.0), 2).tolist()
after = kernels.trilinear(cube, np.zeros(3), np.ones(3), np.array([[0.25, 0.5, 0.5]])).tolist()
print(json.dumps([before, loaded, scaled, numba_target.loads_only(), after]))
"""
    for script in (fill, code):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    before, loaded, scaled, loads_only, after = json.loads(done.stdout.splitlines()[-1])
    assert before == [3.5] and after == [3.25] and loaded is True  # the dose 4z + 2y + x
    assert scaled == [0.5, 2.5, 4.5] and loads_only is False


def test_a_numba_whose_modules_moved_gets_the_whole_set_up_at_once():
    """Where a module that loading needs cannot be imported (a later Numba laid out otherwise), the command's target
    is set up in whole at once, and the kernels and the compiled host code load and compute as usual."""
    code = """
import numpy as np
from isodose import dispatch
dispatch.for_one_command()
from isodose.kernels import numba_target
numba_target._HELD_BY_KERNELS += ("numba.np.not_a_module_of_numbas",)
backend = dispatch.select_backend("numba")
from isodose.compiled_polygons import ring_crosses_itself
cube = np.arange(8.0).reshape(2, 2, 2)
values = backend.kernels.trilinear(cube, np.zeros(3), np.ones(3), np.array([[0.5, 0.5, 0.5]]))
square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
print(backend.name, numba_target.loads_only(), values.tolist(), bool(ring_crosses_itself(square)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["numba", "False", "[3.5]", "False"]
