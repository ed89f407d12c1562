"""isodose: a dose-volume engine for radiotherapy research.

Read DICOM RT, compute analytically accurate DVHs and their metrics on NumPy, Numba or CuPy kernels, classify
recurrences after radiotherapy and run whole cohorts.

>>> import isodose
>>> dose = isodose.read_dose("RD.dcm")  # doctest: +SKIP
>>> structures = isodose.read_structures("RS.dcm")  # doctest: +SKIP
>>> [dvh] = isodose.compute_dvhs(dose, structures, ["PTV70"])  # doctest: +SKIP
>>> dvh.metrics(["D95", "V95%"], prescription_gy=70.0)  # doctest: +SKIP

The public API is what ``__all__`` lists. Names are imported on first use, so that ``import isodose`` (and the
command line) start fast; type checkers see them through the imports under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

#: The one version source (pyproject.toml reads it); bumped when the store's or the journal's format changes.
__version__ = "0.2.0"

# A library never prints: a host application that configures no logging hears nothing from isodose.
logging.getLogger("isodose").addHandler(logging.NullHandler())

_EXPORTS = {
    "Contour": "model",
    "DeformableRegistration": "model",
    "DoseGrid": "model",
    "Plan": "model",
    "Registration": "model",
    "Structure": "model",
    "StructureSet": "model",
    "read_displacement_field": "images",
    "read_dose": "dicom.read",
    "read_plan": "dicom.read",
    "read_registration": "dicom.read",
    "read_structures": "dicom.read",
    "DVH": "dvh",
    "Metric": "dvh",
    "compute_dvhs": "dvh",
    "parse_metric": "dvh",
    "SamplingOptions": "voxelize",
    "Criteria": "recurrence",
    "RecurrenceCase": "recurrence",
    "RecurrenceResult": "recurrence",
    "classify_recurrence": "recurrence",
    "classify_recurrences": "recurrence",
    "Course": "reirradiation",
    "PlanSum": "reirradiation",
    "accumulate": "reirradiation",
    "accumulated_dvhs": "reirradiation",
    "bed": "reirradiation",
    "eqd2": "reirradiation",
    "rigid_matrix": "geometry",
    "available_backends": "dispatch",
    "resolve_backend": "dispatch",
    "select_backend": "dispatch",
    "IsodoseError": "errors",
    "ResultStore": "cohort.store",
    "RunSettings": "cohort.settings",
    "run_cohort": "cohort.runner",
    "AuditResult": "audit",
    "audit_dvhs": "audit",
    "audit_files": "audit",
    "read_dose_dvhs": "audit",
    "DVHComparison": "dvh",
    "PlanningSystemDVH": "dvh",
    "Tolerance": "dvh",
    "AuditSettings": "cohort.audit",
    "run_audit": "cohort.audit",
    "Uncertainty": "uncertainty",
    "UncertaintyResult": "uncertainty",
    "CohortUncertainty": "uncertainty",
    "cohort_uncertainty": "uncertainty",
}

__all__ = [
    "AuditResult",
    "AuditSettings",
    "CohortUncertainty",
    "Contour",
    "Course",
    "Criteria",
    "DVH",
    "DVHComparison",
    "DeformableRegistration",
    "DoseGrid",
    "IsodoseError",
    "Metric",
    "Plan",
    "PlanSum",
    "PlanningSystemDVH",
    "RecurrenceCase",
    "RecurrenceResult",
    "Registration",
    "ResultStore",
    "RunSettings",
    "SamplingOptions",
    "Structure",
    "StructureSet",
    "Tolerance",
    "Uncertainty",
    "UncertaintyResult",
    "accumulate",
    "accumulated_dvhs",
    "audit_dvhs",
    "audit_files",
    "available_backends",
    "bed",
    "classify_recurrence",
    "classify_recurrences",
    "cohort_uncertainty",
    "compute_dvhs",
    "eqd2",
    "parse_metric",
    "read_displacement_field",
    "read_dose",
    "read_dose_dvhs",
    "read_plan",
    "read_registration",
    "read_structures",
    "resolve_backend",
    "rigid_matrix",
    "run_audit",
    "run_cohort",
    "select_backend",
    "__version__",
]

if TYPE_CHECKING:
    from .audit import AuditResult, audit_dvhs, audit_files, read_dose_dvhs
    from .cohort.audit import AuditSettings, run_audit
    from .cohort.runner import run_cohort
    from .cohort.settings import RunSettings
    from .cohort.store import ResultStore
    from .dicom.read import read_dose, read_plan, read_registration, read_structures
    from .dispatch import available_backends, resolve_backend, select_backend
    from .dvh import DVH, DVHComparison, Metric, PlanningSystemDVH, Tolerance, compute_dvhs, parse_metric
    from .errors import IsodoseError
    from .geometry import rigid_matrix
    from .images import read_displacement_field
    from .model import Contour, DeformableRegistration, DoseGrid, Plan, Registration, Structure, StructureSet
    from .recurrence import Criteria, RecurrenceCase, RecurrenceResult, classify_recurrence, classify_recurrences
    from .reirradiation import Course, PlanSum, accumulate, accumulated_dvhs, bed, eqd2
    from .uncertainty import CohortUncertainty, Uncertainty, UncertaintyResult, cohort_uncertainty
    from .voxelize import SamplingOptions


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'isodose' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
