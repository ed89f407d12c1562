"""isodose: a dose-volume engine for radiotherapy research.

Read DICOM RT, compute analytically accurate DVHs and their metrics on NumPy, Numba or CuPy kernels.

>>> import isodose
>>> dose = isodose.read_dose("RD.dcm")  # doctest: +SKIP
>>> structures = isodose.read_structures("RS.dcm")  # doctest: +SKIP
>>> [dvh] = isodose.compute_dvhs(dose, structures, ["PTV70"])  # doctest: +SKIP
>>> dvh.metrics(["D95", "V95%"], prescription_gy=70.0)  # doctest: +SKIP

Names are imported on first use, so that ``import isodose`` (and the command line) start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DoseGrid": "model",
    "Structure": "model",
    "StructureSet": "model",
    "Contour": "model",
    "Plan": "model",
    "read_dose": "dicom.read",
    "read_structures": "dicom.read",
    "read_plan": "dicom.read",
    "read_registration": "dicom.read",
    "Registration": "model",
    "classify_recurrence": "recurrence",
    "Criteria": "recurrence",
    "compute_dvhs": "dvh",
    "DVH": "dvh",
    "Metric": "dvh",
    "parse_metric": "dvh",
    "SamplingOptions": "voxelize",
    "select_backend": "dispatch",
    "available_backends": "dispatch",
    "IsodoseError": "errors",
    "Course": "reirradiation",
    "accumulated_dvhs": "reirradiation",
    "eqd2": "reirradiation",
    "bed": "reirradiation",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'isodose' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
