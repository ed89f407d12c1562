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
