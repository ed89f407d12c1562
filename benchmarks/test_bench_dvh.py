"""DVHs of all ROIs of a head-and-neck-sized case, on each CPU backend (files already read, kernels
compiled). Run with ``make bench``; compare medians measured side by side in one run."""

from __future__ import annotations

import pytest

from isodose.dispatch import select_backend
from isodose.dvh import compute_dvhs


@pytest.mark.parametrize("backend_name, rounds", [("numba", 10), ("numpy", 3)])
def test_head_and_neck_all_rois(benchmark, head_neck, backend_name, rounds):
    grid, structures = head_neck
    backend = select_backend(backend_name)
    compute_dvhs(grid, structures, backend=backend)  # compile (numba) and warm caches outside the timing
    benchmark.group = "head-and-neck case, 20 ROIs"
    benchmark.extra_info["device"] = backend.device
    dvhs = benchmark.pedantic(compute_dvhs, args=(grid, structures), kwargs={"backend": backend}, rounds=rounds,
                              iterations=1)
    assert len(dvhs) == 20 and all(d.has_dose for d in dvhs)
