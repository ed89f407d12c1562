"""DVHs of all ROIs of a head-and-neck-sized case, on each backend (files already read, kernels compiled),
the re-irradiation plan sum of that case, and reading its files. Run with ``make bench``; compare medians
measured side by side in one run."""

from __future__ import annotations

import numpy as np
import pytest

from isodose.dispatch import select_backend
from isodose.dvh import compute_dvhs
from isodose.geometry import rigid_matrix
from isodose.model import DoseGrid, Registration
from isodose.reirradiation import Course, accumulate, accumulated_dvhs
from isodose.voxelize import SamplingOptions


@pytest.mark.parametrize("backend_name, rounds", [("numba", 10), ("numpy", 3)])
def test_head_and_neck_all_rois(benchmark, head_neck, backend_name, rounds):
    grid, structures = head_neck
    backend = select_backend(backend_name)
    compute_dvhs(grid, structures, backend=backend)  # compile (numba) and warm caches outside the timing
    benchmark.group = "head-and-neck case, 20 ROIs"
    benchmark.extra_info["device"] = backend.device
    dvhs = benchmark.pedantic(
        compute_dvhs, args=(grid, structures), kwargs={"backend": backend}, rounds=rounds, iterations=1
    )
    assert len(dvhs) == 20 and all(d.has_dose for d in dvhs)


@pytest.mark.parametrize("what", ["RTDOSE", "RTSTRUCT"])
def test_reading_head_and_neck_files(benchmark, head_neck, tmp_path_factory, what):
    """Reading the case from DICOM (the files in the page cache): its RTDOSE (200 x 200 x 120, 32-bit pixels,
    19 MB), or its RTSTRUCT (20 ROIs) with every ROI's contours."""
    from isodose.dicom.read import read_dose, read_structures
    from isodose.dicom.write import write_dose, write_structures

    grid, structures = head_neck
    folder = tmp_path_factory.mktemp("head-and-neck-files")
    if what == "RTDOSE":
        path, read = write_dose(grid, folder / "rd.dcm"), read_dose
    else:
        path, read = (
            write_structures(structures, folder / "rs.dcm", frame_of_reference_uid=grid.frame_of_reference_uid),
            read_structures,
        )
    read(path)  # the file into the page cache, the readers imported
    benchmark.group = "head-and-neck case, reading its files"
    benchmark.extra_info["file_mb"] = round(path.stat().st_size / 1e6, 1)
    result = benchmark.pedantic(read, args=(path,), rounds=10, iterations=1)
    if what == "RTDOSE":
        assert result.shape == grid.shape
    else:
        assert len(result.structures) == 20


def _second_course(grid: DoseGrid) -> tuple[Course, Registration]:
    """A second course: the planning dose scaled to 30 Gy, in another frame rotated 10 degrees and shifted."""
    matrix = rigid_matrix(10.0, translation_mm=(4.0, -6.0, 2.5))
    scaled = (grid.dose_gy * np.float32(30.0 / grid.max_gy)).astype(np.float32)
    second = DoseGrid(scaled, grid.origin_mm, grid.spacing_mm, "2.25.2")
    return Course(second, 10), Registration(grid.frame_of_reference_uid, {"2.25.2": matrix})


def _plan_sum_dvhs(courses, registration, structures, backend):
    plan_sum = accumulate(courses, registration=registration, backend=backend)
    return accumulated_dvhs(plan_sum, structures, backend=backend)


@pytest.mark.parametrize(
    "backend_name, rounds", [("numba", 5), ("numpy", 2), pytest.param("cupy", 10, marks=pytest.mark.gpu)]
)
def test_head_and_neck_plan_sum(benchmark, head_neck, backend_name, rounds):
    """Re-irradiation of the head-and-neck case: the second course resampled through a registration onto the
    4.8 M voxels of the first, the physical and EQD2 sums (three alpha/beta ratios), and 20 ROIs' DVHs of each."""
    grid, structures = head_neck
    second, registration = _second_course(grid)
    courses = [Course(grid, 35), second]
    backend = select_backend(backend_name)
    _plan_sum_dvhs(courses, registration, structures, backend)
    benchmark.group = "head-and-neck re-irradiation: plan sum, EQD2 and DVHs of 20 ROIs"
    benchmark.extra_info.update(device=backend.device, voxels=int(grid.dose_gy.size))
    results = benchmark.pedantic(
        _plan_sum_dvhs, args=(courses, registration, structures, backend), rounds=rounds, iterations=1
    )
    assert len(results) == 20


#: The head-and-neck case's ROIs under 12 cc (a cochlea, the optic nerves and chiasm, eyes, cord, larynx, GTV).
SMALL_ROIS = ("GTV", "BrainStem", "SpinalCord", "Larynx", "Eye_L", "OpticNerve_L", "Chiasm", "Cochlea_L")
#: The cells rule before cells followed what a structure's metrics need: about 100,000 cells every structure.
RULES = {
    "by need (default)": SamplingOptions(),
    "about 100,000 each": SamplingOptions(
        target_cells=100_000, scanline_cells=None, voxel_supersampling=200, min_cells=100_000
    ),
}


@pytest.mark.parametrize("rule", RULES)
def test_small_structures_by_cells_rule(benchmark, head_neck, rule):
    """The small ROIs of the head-and-neck case under each cells rule (Numba), with their cells and the largest
    difference of D98, D95, D50 and D2 from a fine reference (40 cells per voxel side, 8 scanlines)."""
    grid, structures = head_neck
    backend = select_backend("numba")
    options = RULES[rule]
    reference = compute_dvhs(grid, structures, SMALL_ROIS, options=SamplingOptions(supersampling=40, scanlines=8))
    compute_dvhs(grid, structures, SMALL_ROIS, options=options, backend=backend)
    benchmark.group = "small ROIs of the head-and-neck case, by cells rule"
    dvhs = benchmark.pedantic(
        compute_dvhs,
        args=(grid, structures, SMALL_ROIS),
        kwargs={"options": options, "backend": backend},
        rounds=10,
        iterations=1,
    )
    worst = max(abs(d.metric(m) - r.metric(m)) for d, r in zip(dvhs, reference) for m in ("D98", "D95", "D50", "D2"))
    volume = max(abs(d.volume_cc / r.volume_cc - 1.0) for d, r in zip(dvhs, reference))
    benchmark.extra_info.update(
        device=backend.device,
        cells=int(sum(d.cells for d in dvhs)),
        cells_per_roi={d.name: d.cells for d in dvhs},
        worst_metric_difference_gy=round(worst, 4),
        worst_volume_difference_pct=round(100 * volume, 4),
    )
    assert worst < 0.1 and volume < 1e-3
