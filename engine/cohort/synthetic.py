"""A synthetic cohort of head-and-neck recurrences whose classes are known by construction.

Each case has a body, GTV, PTV70 and nodal PTV60s, CTV60, CTV54, brainstem, spinal cord and parotids, an
IMRT-like dose (70 Gy to PTV70, 60 Gy to the nodal PTVs, 54 Gy to CTV54, steep fall-off) and a recurrence
drawn as an ellipsoid of random size and orientation, placed by its intended class: inside the high-dose
volume (in-field), across the 95% isodose (marginal) or away from it (out-field), in proportions like those
of published nasopharyngeal series. A fraction of recurrences is drawn on a follow-up frame of reference,
moved by a random rigid transform, with a DICOM spatial registration back to the planning frame.

The truth of each case is computed independently of the engine, on the analytic shapes and dose: the share
of the recurrence above the 95% isodose by Monte Carlo, and the dose and target membership of its centre. A
case is redrawn until its truth lies clear of the class thresholds, so that a correct engine must get every
class right.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..model import Contour, Structure, xyz
from ..phantoms import Ellipsoid, EllipticCylinder, ImrtDose, OrientedEllipsoid, contour_ellipses

PRESCRIPTION_GY = 70.0
FRACTIONS = 33
ISODOSE_GY = 0.95 * PRESCRIPTION_GY
GRID_SHAPE_ZYX = (56, 72, 64)
SPACING_MM = 3.0
PLANE_SPACING_MM = 3.0
RECURRENCE_ROI = "Recurrence"
CLASS_MIX = (("in-field", 0.80), ("marginal", 0.10), ("out-field", 0.10))
#: The share of Vr inside the isodose that each intended class must show (clear of the 20% and 95% lines).
INSIDE_RANGES = {"in-field": (99.5, 100.0), "marginal": (30.0, 80.0), "out-field": (0.0, 5.0)}
MANIFEST_COLUMNS = (
    "case_id",
    "dose",
    "structures",
    "plan",
    "prescription_gy",
    "recurrence_roi",
    "recurrence_structures",
    "registration",
)
TRUTH_COLUMNS = (
    "case_id",
    "intended_class",
    "true_inside_pct",
    "true_class_volume",
    "true_centroid_dose_gy",
    "true_centroid_targets",
    "true_class_centroid",
    "registered",
)


@dataclass(frozen=True)
class CaseTruth:
    case_id: str
    intended_class: str
    true_inside_pct: float
    true_class_volume: str
    true_centroid_dose_gy: float
    true_centroid_targets: str
    true_class_centroid: str
    registered: bool


def _rotation(rng: np.random.Generator, max_angle_rad: float = math.pi) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-max_angle_rad, max_angle_rad)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def _anatomy(rng: np.random.Generator) -> tuple[dict[str, Ellipsoid], EllipticCylinder]:
    gtv_centre = (rng.uniform(-8, 8), rng.uniform(-25, -10), rng.uniform(0, 20))
    gtv_axes = tuple(rng.uniform(14, 24, 3))
    left = (rng.uniform(35, 45), rng.uniform(0, 15), rng.uniform(-30, -10))
    right = (-rng.uniform(35, 45), rng.uniform(0, 15), rng.uniform(-30, -10))
    shapes = {
        "GTV": Ellipsoid(gtv_centre, gtv_axes),
        "PTV70": Ellipsoid(gtv_centre, tuple(a + 5 for a in gtv_axes)),
        "CTV60": Ellipsoid(gtv_centre, tuple(a + 10 for a in gtv_axes)),
        "PTV60_L": Ellipsoid(left, tuple(rng.uniform([11, 11, 22], [15, 15, 30]))),
        "PTV60_R": Ellipsoid(right, tuple(rng.uniform([11, 11, 22], [15, 15, 30]))),
        "CTV54": Ellipsoid((0.0, rng.uniform(-5, 5), rng.uniform(-10, 0)), (52.0, 42.0, 55.0)),
        "BrainStem": Ellipsoid((0.0, 30.0, 50.0), (10.0, 10.0, 18.0)),
        "SpinalCord": Ellipsoid((0.0, 42.0, -20.0), (5.0, 5.0, 40.0)),
        "Parotid_L": Ellipsoid((42.0, 15.0, 20.0), (12.0, 14.0, 18.0)),
        "Parotid_R": Ellipsoid((-42.0, 15.0, 20.0), (12.0, 14.0, 18.0)),
    }
    body = EllipticCylinder((0.0, 0.0, 0.0), (rng.uniform(66, 74), rng.uniform(80, 90)), 150.0)
    return shapes, body


TARGET_TYPES = {"GTV": "GTV", "PTV70": "PTV", "CTV60": "CTV", "PTV60_L": "PTV", "PTV60_R": "PTV", "CTV54": "CTV"}


def _dose_model(shapes: dict[str, Ellipsoid], body: EllipticCylinder) -> ImrtDose:
    def grown(name: str) -> Ellipsoid:
        return Ellipsoid(shapes[name].centre_mm, xyz(a + 3 for a in shapes[name].semi_axes_mm))

    return ImrtDose(
        (
            (shapes["PTV70"], 70.0),
            (grown("CTV60"), 60.0),
            (shapes["PTV60_L"], 60.0),
            (shapes["PTV60_R"], 60.0),
            (grown("CTV54"), 54.0),
        ),
        body,
    )


def _place_recurrence(rng, intended: str, shapes, body, dose: ImrtDose):
    """Draw Vr until its truth lies in the intended class's range, clear of every threshold."""
    ptv = shapes["PTV70"]
    for _ in range(500):
        axes = tuple(rng.uniform(6.0, 14.0, 3))
        rotation = _rotation(rng)
        if intended == "in-field":
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            centre = np.asarray(shapes["GTV"].centre_mm) + direction * rng.uniform(0, 0.5) * np.asarray(
                shapes["GTV"].semi_axes_mm
            )
        elif intended == "marginal":
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            to_surface = 1.0 / math.sqrt(float(np.sum((direction / np.asarray(ptv.semi_axes_mm)) ** 2)))
            centre = np.asarray(ptv.centre_mm) + direction * (to_surface + rng.uniform(-2.0, 3.0))
        else:
            centre = np.array([rng.uniform(-60, 60), rng.uniform(-70, 70), rng.uniform(-60, 60)])
        vr = OrientedEllipsoid(xyz(centre), axes, rotation)
        if body.normalised_radius(*vr.sample(rng, 200).T).max() > 0.97:
            continue  # keep Vr inside the body, away from its surface
        points = vr.sample(rng, 6000)
        inside_pct = 100.0 * float(np.mean(dose(*points.T) >= ISODOSE_GY))
        lo, hi = INSIDE_RANGES[intended]
        if not lo <= inside_pct <= hi:
            continue
        centre_dose = float(dose(*centre))
        if abs(centre_dose - ISODOSE_GY) < 2.0:
            continue
        margins = [
            abs(float(s.normalised_radius(*centre)) - 1.0) * float(np.mean(s.semi_axes_mm))
            for name, s in shapes.items()
            if name in TARGET_TYPES
        ]
        if min(margins) < 2.0:
            continue  # the centre is clear of every target's surface
        return vr, inside_pct, centre_dose
    raise RuntimeError(f"could not place a {intended} recurrence")  # pragma: no cover - geometry allows it


def _class_of_centroid(centre_dose: float, in_target: bool) -> str:
    if centre_dose >= ISODOSE_GY:
        return "in-field"
    return "marginal" if in_target else "out-field"


def _vr_structure(vr: OrientedEllipsoid, number: int) -> Structure:
    lo, hi = vr.z_range
    planes = PLANE_SPACING_MM * np.arange(math.ceil(lo / PLANE_SPACING_MM), math.floor(hi / PLANE_SPACING_MM) + 1)
    contours = []
    for z in planes:
        ring = vr.section(float(z), 48)
        if ring is not None:
            contours.append(Contour(ring, float(z)))
    if not contours:  # a thin recurrence between two planes: contour it at its centre
        centre_ring = vr.section(vr.centre_mm[2], 48)
        assert centre_ring is not None  # a plane through the centre cuts the ellipsoid
        contours.append(Contour(centre_ring, float(vr.centre_mm[2])))
    return Structure(RECURRENCE_ROI, number, tuple(contours), interpreted_type="GTV")


def generate_case(
    out_dir: Path, index: int, seed: int, intended: str, registered: bool, with_plan: bool
) -> tuple[dict[str, str], CaseTruth]:
    """Write one case's DICOM files under ``out_dir/cases/<case_id>`` and return its manifest row and truth."""

    from ..dicom.write import new_uid, write_dose, write_plan, write_registration, write_structures

    rng = np.random.default_rng([seed, index])
    case_id = f"NPC{index + 1:04d}"
    shapes, body = _anatomy(rng)
    dose_model = _dose_model(shapes, body)
    vr, inside_pct, centre_dose = _place_recurrence(rng, intended, shapes, body, dose_model)
    holding = [name for name, s in shapes.items() if name in TARGET_TYPES and s.normalised_radius(*vr.centre_mm) <= 1]

    frame = new_uid()
    study = new_uid()
    nz, ny, nx = GRID_SHAPE_ZYX
    origin = (-SPACING_MM * (nx - 1) / 2, -SPACING_MM * (ny - 1) / 2, -SPACING_MM * (nz - 1) / 2)
    grid = dose_model.grid(origin, (SPACING_MM,) * 3, GRID_SHAPE_ZYX, frame)
    lo, hi = body.z_range
    planes = np.arange(lo, hi + 1e-9, PLANE_SPACING_MM)
    structures = [contour_ellipses(body, "BODY", 1, planes, n_vertices=128)]
    for number, (name, shape) in enumerate(shapes.items(), start=2):
        s = contour_ellipses(shape, name, number, planes, n_vertices=64)
        structures.append(Structure(s.name, s.number, s.contours, interpreted_type=TARGET_TYPES.get(name, "ORGAN")))

    folder = out_dir / "cases" / case_id
    folder.mkdir(parents=True, exist_ok=True)
    row = dict.fromkeys(MANIFEST_COLUMNS, "")
    row.update(case_id=case_id, recurrence_roi=RECURRENCE_ROI)
    plan_uid = new_uid() if with_plan else None  # the dose references its plan, as planning systems write
    row["dose"] = str(
        write_dose(
            grid,
            folder / "RD.dcm",
            bits=16,
            patient_id=case_id,
            study_uid=study,
            frame_of_reference_uid=frame,
            referenced_plan_uid=plan_uid,
        ).relative_to(out_dir)
    )
    if registered:
        # The recurrence was drawn on follow-up imaging: its own frame, related by a rigid transform.
        follow_frame, follow_study = new_uid(), new_uid()
        matrix = np.eye(4)  # follow-up -> planning
        matrix[:3, :3] = _rotation(rng, math.radians(4.0))
        matrix[:3, 3] = rng.uniform(-20, 20, 3)
        inverse_rotation = matrix[:3, :3].T
        vr_follow = OrientedEllipsoid(
            xyz(inverse_rotation @ (np.asarray(vr.centre_mm) - matrix[:3, 3])),
            vr.semi_axes_mm,
            inverse_rotation @ vr.rotation,
        )
        row["recurrence_structures"] = str(
            write_structures(
                [_vr_structure(vr_follow, 1)],
                folder / "RS_followup.dcm",
                patient_id=case_id,
                study_uid=follow_study,
                frame_of_reference_uid=follow_frame,
            ).relative_to(out_dir)
        )
        row["registration"] = str(
            write_registration(
                folder / "REG.dcm",
                registered_frame_uid=frame,
                source_frame_uid=follow_frame,
                matrix=matrix,
                patient_id=case_id,
                study_uid=follow_study,
            ).relative_to(out_dir)
        )
    else:
        structures.append(_vr_structure(vr, len(structures) + 1))
    row["structures"] = str(
        write_structures(
            structures, folder / "RS.dcm", patient_id=case_id, study_uid=study, frame_of_reference_uid=frame
        ).relative_to(out_dir)
    )
    if with_plan:
        row["plan"] = str(
            write_plan(
                folder / "RP.dcm",
                prescription_gy=PRESCRIPTION_GY,
                number_of_fractions=FRACTIONS,
                patient_id=case_id,
                study_uid=study,
                frame_of_reference_uid=frame,
                target_name="PTV70",
                sop_instance_uid=plan_uid,
            ).relative_to(out_dir)
        )
    else:
        row["prescription_gy"] = f"{PRESCRIPTION_GY:g}"
    truth = CaseTruth(
        case_id=case_id,
        intended_class=intended,
        true_inside_pct=round(inside_pct, 2),
        true_class_volume="in-field" if inside_pct >= 95 else ("marginal" if inside_pct >= 20 else "out-field"),
        true_centroid_dose_gy=round(centre_dose, 3),
        true_centroid_targets=";".join(holding),
        true_class_centroid=_class_of_centroid(centre_dose, bool(holding)),
        registered=registered,
    )
    return row, truth


def _plan(n_cases: int, seed: int, registered_fraction: float) -> Iterator[tuple[int, str, bool, bool]]:
    rng = np.random.default_rng([seed, 2**31 - 1])
    names = [c for c, _ in CLASS_MIX]
    counts = [round(share * n_cases) for _, share in CLASS_MIX]
    counts[0] = n_cases - sum(counts[1:])
    classes = np.repeat(names, counts)
    rng.shuffle(classes)
    registered = rng.random(n_cases) < registered_fraction
    with_plan = rng.random(n_cases) >= 0.15
    for i in range(n_cases):
        yield i, str(classes[i]), bool(registered[i]), bool(with_plan[i])


def _generate_one(args) -> tuple[dict[str, str], CaseTruth]:
    out_dir, index, seed, intended, registered, with_plan = args
    return generate_case(Path(out_dir), index, seed, intended, registered, with_plan)


def generate_cohort(
    out_dir: str | Path, n_cases: int, *, seed: int = 2024, workers: int = 1, registered_fraction: float = 0.3
) -> Path:
    """Write ``n_cases`` cases as DICOM under ``out_dir``, with ``manifest.csv`` and ``truth.csv``; returns the
    manifest's path. The same seed gives the same cohort."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out_dir), i, seed, c, r, p) for i, c, r, p in _plan(n_cases, seed, registered_fraction)]
    if workers > 1:
        # Spawned, not forked: this process may already run threads (Numba's), which a fork can deadlock.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_generate_one, jobs, chunksize=4))
    else:
        results = [_generate_one(job) for job in jobs]
    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(row for row, _ in results)
    with (out_dir / "truth.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(asdict(truth) for _, truth in results)
    return manifest


def _with_dvhs(args) -> None:
    """One case's RTDOSE given the DVH Sequence a planning system would write: isodose's own DVH of every ROI of
    its planning structure set (0.01 Gy bins)."""
    from ..dicom.read import read_dose, read_structures
    from ..dicom.write import add_dvh_sequence
    from ..dvh import compute_dvhs

    dose_path, structures_path, backend = args
    structures = read_structures(structures_path)
    dvhs = compute_dvhs(read_dose(dose_path), structures, backend=backend)
    add_dvh_sequence(dose_path, [d.to_reported() for d in dvhs if d.has_dose], structures.sop_instance_uid)


def generate_audit_archive(out_dir: str | Path, n_cases: int, *, seed: int = 2024, workers: int = 1) -> Path:
    """An archive to audit: ``n_cases`` generated cases (see :func:`generate_cohort`) whose RTDOSE files carry the
    DVHs of their planning ROIs in a DVH Sequence, as a planning system exports them (here isodose's own, so that
    an audit of the archive agrees). Returns the archive's folder; its ``manifest.csv`` serves a cohort run."""
    manifest = generate_cohort(out_dir, n_cases, seed=seed, workers=workers)
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    jobs = [(str(manifest.parent / r["dose"]), str(manifest.parent / r["structures"]), "numba") for r in rows]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_with_dvhs, jobs, chunksize=4))
    else:
        for job in jobs:
            _with_dvhs(job)
    return manifest.parent


def read_truth(path: str | Path) -> dict[str, dict[str, str]]:
    with Path(path).open(newline="") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}
