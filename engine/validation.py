"""Validation against the public Nelms 2015 analytical DVH set.

Each row of ``analytical.csv`` names a structure file, a dose grid (gradient direction and voxel size)
and the analytical volume, Dmin, Dmax, Dmean, D99, D95, D5, D1 and D0.03cc. :func:`run_nelms` computes the
same values with isodose and reports the error of each against the analytical value, in % of it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .dispatch import Backend, resolve_backend
from .dvh import DVH, compute_dvhs
from .errors import ValidationDataError
from .model import DoseGrid
from .voxelize import SamplingOptions

#: (name in the report, column of analytical.csv, scale from the CSV's unit to isodose's)
NELMS_METRICS = (
    ("volume", "volume_cc", 1.0),
    ("Dmin", "Dmin_cGy", 0.01),
    ("Dmax", "Dmax_cGy", 0.01),
    ("Dmean", "Dmean_cGy", 0.01),
    ("D99", "D99_cGy", 0.01),
    ("D95", "D95_cGy", 0.01),
    ("D5", "D5_cGy", 0.01),
    ("D1", "D1_cGy", 0.01),
    ("D0.03cc", "D0.03cc_cGy", 0.01),
)
GRADIENT_GRIDS = {"Y(SI)": "SupInf", "Z(AP)": "AntPost"}


@dataclass(frozen=True, eq=False)
class NelmsCase:
    structure: str
    plane_spacing: str
    gradient: str
    voxel_mm: str
    analytical: dict[str, float]

    @property
    def grid_name(self) -> str:
        return f"Linear_{GRADIENT_GRIDS[self.gradient]}_{self.voxel_mm}mm_Aligned"


@dataclass(frozen=True)
class NelmsValue:
    case: NelmsCase
    metric: str
    isodose: float
    analytical: float

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.isodose - self.analytical) / self.analytical


def load_nelms(root: str | Path) -> list[NelmsCase]:
    """The rows of ``analytical.csv`` whose dose grid is in the set (the 0.4x0.2x0.4 mm rows are not)."""
    root = Path(root)
    table = root / "analytical.csv"
    if not root.is_dir():
        raise ValidationDataError("no such folder (the Nelms 2015 set's folder, holding analytical.csv)", path=root)
    if not table.is_file():
        raise ValidationDataError("analytical.csv not found; is this the Nelms 2015 folder?", path=root)
    cases = []
    with table.open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            voxel = row.get("dose_voxel_mm", "").strip()
            if "x" in voxel:
                continue
            gradient = row.get("gradient_direction", "").strip()
            if gradient not in GRADIENT_GRIDS:
                raise ValidationDataError(f"line {line}: unknown gradient_direction {gradient!r}", path=table)
            try:
                values = {name: float(row[column]) * scale for name, column, scale in NELMS_METRICS}
            except (KeyError, ValueError) as exc:
                raise ValidationDataError(f"line {line}: missing or non-numeric value ({exc})", path=table) from exc
            cases.append(NelmsCase(row["structure"].strip(), row["ct_slice_spacing"].strip(), gradient, voxel, values))
    if not cases:
        raise ValidationDataError("no rows with an available dose grid", path=table)
    return cases


def _measure(dvh: DVH, metric: str) -> float:
    return dvh.volume_cc if metric == "volume" else dvh.metric(metric)


def run_nelms(
    root: str | Path, *, backend: str | Backend | None = None, options: SamplingOptions | None = None
) -> list[NelmsValue]:
    """Compute every available analytical value of the set with isodose."""
    from .dicom.read import read_dose, read_structures

    root = Path(root)
    chosen = resolve_backend(backend)
    grids: dict[str, DoseGrid] = {}
    results = []
    for case in load_nelms(root):
        grid_path = root / "dose_grids" / f"{case.grid_name}.dcm"
        structure_path = root / "structures" / f"{case.structure}.dcm"
        if case.grid_name not in grids:
            grids[case.grid_name] = read_dose(grid_path)
        structures = read_structures(structure_path)
        # The file's ROI holding contours is the test object (a marker point sits beside it).
        candidates = [s for s in structures.structures if not s.is_empty]
        if len(candidates) != 1:
            matching = [s for s in candidates if s.name.casefold() == case.structure.casefold()]
            if len(matching) != 1:
                raise ValidationDataError(f"cannot tell which ROI is {case.structure}", path=structure_path)
            candidates = matching
        [dvh] = compute_dvhs(grids[case.grid_name], structures, [candidates[0].name], backend=chosen, options=options)
        for name, _, _ in NELMS_METRICS:
            results.append(NelmsValue(case, name, _measure(dvh, name), case.analytical[name]))
    return results


@dataclass(frozen=True)
class NelmsSummary:
    values: int
    over_3pct: int
    over_2pct: int
    over_1pct: int
    max_abs_error_pct: float

    @classmethod
    def of(cls, values: Iterable[NelmsValue]) -> NelmsSummary:
        errors = [abs(float(v.error_pct)) for v in values]
        return cls(
            values=len(errors),
            over_3pct=int(sum(e > 3.0 for e in errors)),
            over_2pct=int(sum(e > 2.0 for e in errors)),
            over_1pct=int(sum(e > 1.0 for e in errors)),
            max_abs_error_pct=float(max(errors)) if errors else math.nan,
        )
