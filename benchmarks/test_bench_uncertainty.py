"""1,000 draws of registration uncertainty for a 5 cc recurrence on the head-and-neck-sized case, beside the same
classification without them, on each CPU backend (the GPU's in test_bench_gpu.py), side by side in one run.
Run with ``make bench``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from isodose.dispatch import select_backend
from isodose.model import StructureSet
from isodose.phantoms import Sphere, contour_shape
from isodose.recurrence import classify_recurrence
from isodose.uncertainty import Uncertainty

RADIUS_MM = (5000.0 * 3 / (4 * math.pi)) ** (1 / 3)  # 5 cc
DRAWS = 1000


@pytest.fixture(scope="module")
def vr_case(head_neck):
    grid, structures = head_neck
    ptv = structures.get("PTV70")
    points = np.concatenate([c.points_mm for c in ptv.contours])
    edge = float(points[:, 0].max())  # Vr across the PTV's edge: its class depends on millimetres
    z = float(np.mean([c.z_mm for c in ptv.contours]))
    centre_y = float(points[:, 1].mean())
    vr = contour_shape(Sphere((edge, centre_y, z), RADIUS_MM), "Vr", 99, 2.0)
    return grid, StructureSet((*structures.structures, vr), structures.frame_of_reference_uid)


@pytest.mark.parametrize(("backend_name", "draws"), [("numba", 0), ("numba", DRAWS), ("numpy", 0), ("numpy", DRAWS)])
def test_draws_of_a_5cc_recurrence(benchmark, vr_case, backend_name, draws):
    grid, structures = vr_case
    backend = select_backend(backend_name)
    uncertainty = Uncertainty(translation_sd_mm=2.0, rotation_sd_deg=1.0, draws=draws, seed=0) if draws else None

    def classify():
        return classify_recurrence(grid, structures, "Vr", 70.0, uncertainty=uncertainty, backend=backend)

    classify()  # compile and warm caches outside the timing
    benchmark.group = f"a 5 cc Vr with and without {DRAWS} draws of registration uncertainty"
    result = benchmark.pedantic(classify, rounds=5 if backend_name == "numba" else 2, iterations=1)
    benchmark.extra_info.update(backend=backend_name, draws=draws, device=backend.device)
    if draws:
        p = result.uncertainty.volume_probability_pct
        benchmark.extra_info.update(p_in_field_pct=p["in-field"], p_marginal_pct=p["marginal"])
