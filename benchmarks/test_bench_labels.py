"""DVHs of structures given as a label image against the same structures as contours, on the Numba backend, side by
side: a 512 x 512 x 200 label map (0.98 mm voxels, 2.5 mm slices, as a head-and-neck CT) holding 20 spheres of 5 to
40 mm radius, each also contoured on the map's slices; the head-and-neck case's dose grid. Reading the map from a
NIfTI file is timed too. Run with ``make bench``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from isodose.dispatch import select_backend
from isodose.dvh import compute_dvhs
from isodose.model import StructureSet
from isodose.phantoms import Sphere, contour_shape

SHAPE = (200, 512, 512)  # slices, rows, columns
SPACING = (0.98, 0.98, 2.5)  # x, y, z (mm)
N_LABELS = 20


def _spheres(grid) -> list[Sphere]:
    """20 disjoint spheres of 5 to 40 mm inside the dose grid, centred on slices."""
    rng = np.random.default_rng(7)
    low = np.asarray(grid.origin_mm) + 45.0
    high = np.asarray(grid.origin_mm) + np.asarray(grid.spacing_mm) * (np.array(grid.dose_gy.shape[::-1]) - 1) - 45.0
    spheres: list[Sphere] = []
    radii = np.linspace(40.0, 5.0, N_LABELS)
    while len(spheres) < N_LABELS:
        radius = float(radii[len(spheres)])
        centre = rng.uniform(low, high)
        centre[2] = round(centre[2] / SPACING[2]) * SPACING[2]
        if all(np.linalg.norm(centre - np.asarray(s.centre_mm)) > radius + s.radius_mm + 2 for s in spheres):
            spheres.append(Sphere(tuple(float(v) for v in centre), radius))
    return spheres


@pytest.fixture(scope="module")
def label_case(head_neck, tmp_path_factory):
    grid, _ = head_neck
    spheres = _spheres(grid)
    origin = np.asarray(grid.origin_mm) + np.asarray(grid.spacing_mm) * (np.array(grid.dose_gy.shape[::-1]) - 1) / 2
    origin = origin - np.asarray(SPACING) * (np.array(SHAPE[::-1]) - 1) / 2
    origin[2] = round(origin[2] / SPACING[2]) * SPACING[2]  # slices on the spheres' planes
    values = np.zeros(SHAPE, np.uint8)
    for label, sphere in enumerate(spheres, start=1):
        centre = np.asarray(sphere.centre_mm)
        lo = np.maximum(np.floor((centre - sphere.radius_mm - origin) / SPACING).astype(int), 0)
        hi = np.minimum(np.ceil((centre + sphere.radius_mm - origin) / SPACING).astype(int) + 1, SHAPE[::-1])
        k, j, i = np.meshgrid(*(np.arange(lo[a], hi[a]) for a in (2, 1, 0)), indexing="ij")
        x, y, z = (origin[a] + index * SPACING[a] for a, index in enumerate((i, j, k)))
        inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= sphere.radius_mm**2
        values[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]][inside] = label
    from isodose.labels import write_label_image

    path = write_label_image(
        tmp_path_factory.mktemp("labels") / "rois.nii.gz", values, origin_mm=origin, spacing_mm=SPACING
    )
    offset = float(origin[2] % SPACING[2])
    contours = StructureSet(
        tuple(contour_shape(s, f"label {n}", n, SPACING[2], offset_mm=offset) for n, s in enumerate(spheres, 1)),
        grid.frame_of_reference_uid,
    )
    return grid, path, contours


def test_label_image_read(benchmark, label_case):
    from isodose.labels import read_label_image

    _, path, _ = label_case
    benchmark.group = "label image 512 x 512 x 200, 20 labels"
    structures = benchmark.pedantic(read_label_image, args=(path,), rounds=3, iterations=1)
    assert len(structures.structures) == N_LABELS


@pytest.mark.parametrize("given_as", ["contours", "label image"])
def test_dvhs_of_a_label_image_beside_the_same_structures_as_contours(benchmark, label_case, given_as):
    from isodose.labels import read_label_image

    grid, path, contours = label_case
    structures = contours if given_as == "contours" else read_label_image(path)
    backend = select_backend("numba")
    compute_dvhs(grid, structures, backend=backend)  # compile and warm caches outside the timing
    benchmark.group = "DVHs of 20 structures: contours against a 512 x 512 x 200 label image (numba)"
    benchmark.extra_info.update(given_as=given_as, device=backend.device)
    dvhs = benchmark.pedantic(
        compute_dvhs, args=(grid, structures), kwargs={"backend": backend}, rounds=5, iterations=1
    )
    assert len(dvhs) == N_LABELS and all(d.has_dose for d in dvhs)
    volumes = [d.volume_cc for d in dvhs]
    expected = [4 / 3 * math.pi * r**3 / 1000 for r in np.linspace(40.0, 5.0, N_LABELS)]
    np.testing.assert_allclose(volumes, expected, rtol=0.1)  # the 5 mm sphere on 2.5 mm planes: 6% short
