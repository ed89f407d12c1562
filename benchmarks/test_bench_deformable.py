"""Classifying a 5 cc recurrence through a deformable registration beside the same classification through a rigid
one, on Numba, measured side by side in one run (the head-and-neck-sized case; the deformation a smooth field on
a 2.5 mm grid covering its whole dose grid, stored as planning systems export it: registered in the planning
frame, so that every sample of Vr is mapped by the inverse). Run with ``make bench``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from isodose.dispatch import select_backend
from isodose.geometry import rigid_matrix
from isodose.model import DeformableRegistration, Registration, StructureSet
from isodose.phantoms import Sphere, contour_shape
from isodose.recurrence import classify_recurrence

FOLLOW_UP = "1.2.826.0.1.3680043.8.498.77"
RADIUS_MM = (5000.0 * 3 / (4 * math.pi)) ** (1 / 3)  # 5 cc


@pytest.fixture(scope="module")
def mapped_case(head_neck):
    grid, structures = head_neck
    planning_frame = grid.frame_of_reference_uid or "1.2.3"
    if not grid.frame_of_reference_uid:
        grid = type(grid)(**{**grid.__dict__, "frame_of_reference_uid": planning_frame})
        structures = StructureSet(structures.structures, planning_frame)
    ptv = structures.get("PTV70")
    centre = np.mean(np.concatenate([c.points_mm for c in ptv.contours]), axis=0)
    z = float(np.mean([c.z_mm for c in ptv.contours]))
    vr = contour_shape(Sphere((float(centre[0]) + 8.0, float(centre[1]), z), RADIUS_MM), "Vr", 1, 2.0)
    follow_up = StructureSet((vr,), FOLLOW_UP)
    rigid = Registration(planning_frame, {FOLLOW_UP: rigid_matrix(translation_mm=(1.0, -1.5, 0.5))})
    # A smooth field of the same shift plus 2 mm waves, on the dose grid's extent at 2.5 mm, planning -> follow-up.
    nz, ny, nx = grid.shape
    axes = [grid.origin_mm[a] + grid.spacing_mm[a] * np.arange(n) for a, n in enumerate((nx, ny, nz))]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    vectors = np.empty((nz, ny, nx, 3), np.float32)
    vectors[..., 0] = -1.0 + 2.0 * np.sin(2 * math.pi * yy / 80.0)
    vectors[..., 1] = 1.5 + 2.0 * np.sin(2 * math.pi * zz / 90.0)
    vectors[..., 2] = -0.5 + 2.0 * np.sin(2 * math.pi * xx / 70.0)
    deformable = DeformableRegistration(
        planning_frame, FOLLOW_UP, vectors, grid.origin_mm, np.eye(3), tuple(grid.spacing_mm)
    )
    return grid, structures, follow_up, {"rigid": rigid, "deformable": deformable}


@pytest.mark.parametrize("kind", ["rigid", "deformable"])
def test_a_5cc_recurrence_through_a_registration(benchmark, mapped_case, kind):
    grid, structures, follow_up, registrations = mapped_case
    backend = select_backend("numba")

    def classify():
        return classify_recurrence(
            grid,
            structures,
            "Vr",
            70.0,
            recurrence_structures=follow_up,
            registration=registrations[kind],
            backend=backend,
        )

    classify()  # compile and warm caches outside the timing
    benchmark.group = "a 5 cc Vr mapped onto the head-and-neck case (Numba)"
    result = benchmark.pedantic(classify, rounds=7, iterations=1)
    assert result.recurrence_volume_cc == pytest.approx(5.0, rel=0.05)
    benchmark.extra_info.update(
        registration=kind, recurrence_volume_cc=round(result.recurrence_volume_cc, 3), device=backend.device
    )
