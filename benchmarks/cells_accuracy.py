"""How far the DVH metrics of the head-and-neck case's 20 ROIs lie from a fine reference (40 cells per dose-voxel
side, 8 scanlines a row), for the default cells and for other caps on a structure's cells. Prints, per setting,
the time of all 20 DVHs (Numba, median of 5), their cells, the largest difference of D98, D95, D50 or D2 and of
Dmean, and the largest relative difference of volume, with the three ROIs that differ most.

    .venv/bin/python benchmarks/cells_accuracy.py
"""

from __future__ import annotations

import statistics
import time

from isodose.dvh import compute_dvhs
from isodose.phantoms import head_neck_case
from isodose.voxelize import SamplingOptions

METRICS = ("D98", "D95", "D50", "D2")
SETTINGS = {
    "default (at most 50,000 cells)": SamplingOptions(),
    "at most 100,000 cells": SamplingOptions(target_cells=100_000, scanline_cells=None),
    "at most 25,000 cells": SamplingOptions(target_cells=25_000),
    "about 100,000 cells each (before)": SamplingOptions(
        target_cells=100_000, scanline_cells=None, voxel_supersampling=200, min_cells=100_000
    ),
}


def main() -> None:
    grid, structures = head_neck_case()
    names = structures.names
    fine = SamplingOptions(supersampling=40, scanlines=8)
    reference = {d.name: d for d in compute_dvhs(grid, structures, names, options=fine, backend="numba")}
    for label, options in SETTINGS.items():
        compute_dvhs(grid, structures, names, options=options, backend="numba")
        seconds = []
        for _ in range(5):
            started = time.perf_counter()
            dvhs = compute_dvhs(grid, structures, names, options=options, backend="numba")
            seconds.append(time.perf_counter() - started)
        by_roi = {d.name: max(abs(d.metric(m) - reference[d.name].metric(m)) for m in METRICS) for d in dvhs}
        mean = max(abs(d.dmean_gy - reference[d.name].dmean_gy) for d in dvhs)
        volume = max(abs(d.volume_cc / reference[d.name].volume_cc - 1.0) for d in dvhs)
        worst = ", ".join(f"{n} {v:.4f}" for n, v in sorted(by_roi.items(), key=lambda item: -item[1])[:3])
        print(
            f"{label}: {1000 * statistics.median(seconds):.0f} ms, {sum(d.cells for d in dvhs):,} cells; "
            f"D-metrics within {max(by_roi.values()):.4f} Gy ({worst}), Dmean within {mean:.4f} Gy, "
            f"volumes within {100 * volume:.3f}%"
        )


if __name__ == "__main__":
    main()
