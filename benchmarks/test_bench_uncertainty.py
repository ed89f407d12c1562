"""1,000 draws of registration uncertainty for a 5 cc recurrence on the head-and-neck-sized case, beside the same
classification without them, on each backend (the GPU's where one is usable: those rows are marked gpu), side by
side in one run; and the draws of 16 such cases in one call. Run with ``make bench`` (``make gpu-check`` on a GPU).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from isodose.dispatch import select_backend
from isodose.model import StructureSet
from isodose.phantoms import Sphere, contour_shape
from isodose.recurrence import RecurrenceCase, classify_recurrence, classify_recurrences
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


GPU = pytest.mark.gpu
CASES = 16


@pytest.mark.parametrize(
    ("backend_name", "draws"),
    [
        ("numba", 0),
        ("numba", DRAWS),
        ("numpy", 0),
        ("numpy", DRAWS),
        pytest.param("cupy", 0, marks=GPU),
        pytest.param("cupy", DRAWS, marks=GPU),
    ],
)
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


@pytest.mark.parametrize("backend_name", ["numba", pytest.param("cupy", marks=GPU)])
def test_draws_of_16_cases_in_one_call(benchmark, vr_case, backend_name):
    grid, structures = vr_case
    backend = select_backend(backend_name)
    uncertainty = Uncertainty(translation_sd_mm=2.0, rotation_sd_deg=1.0, draws=DRAWS, seed=0)
    cases = [
        RecurrenceCase(grid, structures, "Vr", 70.0, uncertainty=uncertainty, uncertainty_key=f"case{k}")
        for k in range(CASES)
    ]

    def classify():
        return classify_recurrences(cases, backend=backend)

    classify()
    benchmark.group = f"{CASES} cases of a 5 cc Vr with {DRAWS} draws each, in one call"
    results = benchmark.pedantic(classify, rounds=3, iterations=1)
    assert all(r.uncertainty is not None for r in results)
    benchmark.extra_info.update(backend=backend_name, draws=DRAWS * CASES, device=backend.device)
