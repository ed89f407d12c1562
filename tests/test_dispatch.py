from __future__ import annotations

import pytest

from isodose.dispatch import ENV_VAR, available_backends, cuda_usable, select_backend
from isodose.errors import BackendError


def test_explicit_choice_beats_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "numpy")
    assert select_backend().name == "numpy"
    assert select_backend("numba").name == "numba"
    monkeypatch.setenv(ENV_VAR, "auto")
    assert select_backend().name in ("cupy", "numba")


def test_auto_never_fails_and_names_its_device(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    backend = select_backend()
    assert backend.name == ("cupy" if cuda_usable() else "numba")
    assert backend.device
    report = available_backends()
    assert set(report) == {"cupy", "numba", "numpy"}


def test_unknown_backend_is_an_error(monkeypatch):
    with pytest.raises(BackendError, match="must be one of auto, cupy, numba, numpy"):
        select_backend("fortran")
    monkeypatch.setenv(ENV_VAR, "gpu")
    with pytest.raises(BackendError, match=ENV_VAR):
        select_backend()


@pytest.mark.skipif(cuda_usable(), reason="this machine has a usable GPU")
def test_cupy_without_a_gpu_is_a_clear_error():
    with pytest.raises(BackendError, match="cupy backend"):
        select_backend("cupy")


def test_kernel_modules_share_their_signatures():
    import inspect

    from isodose.kernels import numba_cpu, numpy_ref

    for name in ("trilinear", "polygon_coverage", "accumulate_histogram", "cell_histograms"):
        reference = inspect.signature(getattr(numpy_ref, name))
        assert inspect.signature(getattr(numba_cpu, name)).parameters.keys() == reference.parameters.keys(), name


def test_a_small_one_off_computation_takes_numpy_until_a_compiled_backend_is_loaded():
    """``select_backend_for_work``: in a fresh process, ``auto`` with little work is NumPy (loading Numba would cost
    more than it saves) and with much work is what ``auto`` picks; a named backend, or ``$ISODOSE_BACKEND``, is kept;
    once Numba's kernels are loaded, small work takes them too."""
    import subprocess
    import sys

    code = """
import os, sys
from isodose.dispatch import SMALL_WORK_CELLS, select_backend, select_backend_for_work
small = select_backend_for_work(None, 1000).name
named = select_backend_for_work("numba", 1000).name
os.environ["ISODOSE_BACKEND"] = "numba"
from_env = select_backend_for_work(None, 1000).name
del os.environ["ISODOSE_BACKEND"]
large = select_backend_for_work("auto", SMALL_WORK_CELLS + 1).name
after = select_backend_for_work(None, 1000).name
print(small, named, from_env, large, after, select_backend().name)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    small, named, from_env, large, after, auto = done.stdout.split()
    assert (small, named, from_env) == ("numpy", "numba", "numba")
    assert large == after == auto  # what auto picks here (numba where it runs)


@pytest.mark.parametrize("one_command", [True, False])
def test_a_command_sets_numba_up_without_scipy_blas_and_scipy_still_works(one_command):
    """``for_one_command`` (the ``isodose`` command's): Numba's CPU target is set up without importing SciPy's
    BLAS, the kernels compute as before, and SciPy's BLAS and statistics import and work afterwards. Without it
    (a program embedding isodose), Numba keeps its own behaviour and imports SciPy's BLAS."""
    import subprocess
    import sys

    pytest.importorskip("scipy")
    code = f"""
import sys
import numpy as np
from isodose import dispatch
if {one_command}:
    dispatch.for_one_command()
kernels = dispatch.select_backend("numba").kernels
blas_at_set_up = "scipy.linalg" in sys.modules
values = kernels.trilinear(np.arange(8.0).reshape(2, 2, 2), np.zeros(3), np.ones(3), np.array([[0.5, 0.5, 0.5]]))
assert abs(float(values[0]) - 3.5) < 1e-12, values
import scipy.linalg.cython_blas
from scipy import linalg, stats
assert abs(linalg.det(np.eye(3) * 2.0) - 8.0) < 1e-12
assert stats.kruskal([1, 2, 3], [4, 5, 6]).pvalue < 0.1
print(blas_at_set_up)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(not one_command), done.stderr


def _scipy_blas_after_a_kernel() -> bool:
    """In a cohort worker: whether SciPy's BLAS is imported once a compiled kernel has run."""
    import sys

    import numpy as np

    from isodose import dispatch

    dispatch.select_backend("numba").kernels.trilinear(
        np.arange(8.0).reshape(2, 2, 2), np.zeros(3), np.ones(3), np.array([[0.5, 0.5, 0.5]])
    )
    return "scipy.linalg" in sys.modules


def test_cohort_workers_set_numba_up_as_the_command_does():
    """A local cohort run's worker processes run isodose's work alone, and set Numba up without SciPy's BLAS, as the
    ``isodose`` command does (``for_one_command``)."""
    import logging
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from isodose.cohort.local import _init_worker

    pytest.importorskip("scipy")
    with ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(1, logging.WARNING)
    ) as pool:
        assert pool.submit(_scipy_blas_after_a_kernel).result() is False


def test_whether_a_backend_samples_cases_together_is_found_without_loading_a_host_backend():
    """``samples_cases_together``: False for the host backends, named or picked by ``auto`` on a machine without a
    usable GPU, without Numba loaded (a cohort run's process that hands cases to workers never computes); a cohort
    run with workers leaves Numba unloaded in that process; bad names are the usual errors."""
    import subprocess
    import sys

    if cuda_usable():
        pytest.skip("auto takes the GPU here")
    code = """
import sys
from isodose.dispatch import samples_cases_together
from isodose.cohort.cases import Case
from isodose.cohort.local import ProcessPool
from isodose.cohort.runner import _arrangement
from isodose.cohort.settings import RunSettings
todo = [Case(str(k), None, None, "Vr") for k in range(3)]
arrangement = _arrangement(todo, RunSettings(), 2, None, None, 32, None)
print(samples_cases_together(), samples_cases_together("numba"), samples_cases_together("numpy"))
print(type(arrangement.executor) is ProcessPool, arrangement.hands_over, "numba" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False", "False", "True", "False", "False"]


def test_samples_cases_together_follows_the_backends_kernels(monkeypatch):
    from isodose import dispatch
    from isodose.kernels import numpy_ref

    class Merging:
        PREFERS_MERGED_REQUESTS = True

    gpu_like = dispatch.Backend("cupy", "a device", Merging)  # type: ignore[arg-type]
    assert dispatch.samples_cases_together(gpu_like) is True
    assert dispatch.samples_cases_together(dispatch.Backend("numpy", "cpu", numpy_ref)) is False
    monkeypatch.setattr(dispatch, "_load", lambda name: gpu_like if name == "cupy" else pytest.fail(name))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert dispatch.samples_cases_together() is True  # auto takes the GPU where one loads
    assert dispatch.samples_cases_together("cupy") is True
    with pytest.raises(BackendError, match="must be one of"):
        dispatch.samples_cases_together("fortran")


def test_the_host_backends_share_the_host_capabilities():
    """``samples_cases_together`` answers for the host backends from ``kernels/host.py`` without loading them: each
    one's kernels must say the same."""
    import importlib

    from isodose import dispatch
    from isodose.kernels import host

    modules = {"numba": "isodose.kernels.numba_cpu", "numpy": "isodose.kernels.numpy_ref"}
    assert set(dispatch.HOST_BACKENDS) == set(modules)
    for name in dispatch.HOST_BACKENDS:
        kernels = importlib.import_module(modules[name])
        assert kernels.PREFERS_MERGED_REQUESTS == host.PREFERS_MERGED_REQUESTS, name
        assert kernels.COPIES_GRIDS == host.COPIES_GRIDS, name
