"""The cases of a cohort: from a manifest, or sorted out of a folder of DICOM exports.

Manifest: a CSV with a header and one row per case, columns
``case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,registration``; paths are
relative to the manifest's folder; ``plan``, ``prescription_gy``, ``recurrence_structures`` and
``registration`` may be empty, and one of ``plan`` and ``prescription_gy`` must be given (when both are, the
manifest's prescription wins).

Folder: every DICOM file under it is read (headers only) and sorted by patient and frame of reference. Each
frame of reference holding an RTDOSE is a planning frame, hence a case, with the RTSTRUCT and RTPLAN of the
same frame. The recurrence ROI is taken from the planning RTSTRUCT, or from a segmentation (SEG: its segments
are structures too) of the planning frame beside it, or else from an RTSTRUCT or SEG of another frame of the
same patient together with a spatial registration (REG) relating the two frames. A case that cannot
be assembled unambiguously is kept, with the reason, so that the run records it as failed.

Re-irradiated patients in a folder (``second_courses=True``): a patient with two planning frames is one case
of two courses. The earlier course (by the date of its RTPLAN, else of its RTDOSE) is the first: its frame is
the case's planning frame, assembled as above. The later frame gives the second course's RTDOSE and RTPLAN
(for its fractions), and a REG relating the two frames maps it. Without that option, each planning frame is a
case of its own, and a warning names the patients concerned.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..dicom.read import FileHeader, read_header
from ..errors import ManifestError
from ..provenance import PARTIAL_SUMMATION_TYPES

log = logging.getLogger(__name__)

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
#: The columns a manifest must have (``recurrence_roi`` too, unless it gives the recurrence as ``recurrence_mask``);
#: the others of :data:`MANIFEST_COLUMNS` may be left out, as if empty.
REQUIRED_MANIFEST_COLUMNS = ("case_id", "dose", "structures")
#: Keys of a case's record that isodose writes itself: a manifest's own column (a covariate) may not take them.
RESERVED_RECORD_KEYS = frozenset(
    {
        "recurrence_roi",
        "recurrence_registered",
        "registration_kind",
        "registration_file",
        "registration_residual_mm",
        "prescription_gy",
        "isodose_gy",
        "recurrence_volume_cc",
        "recurrence_outside_dose_cc",
        "inside_isodose_pct",
        "centroid_x_mm",
        "centroid_y_mm",
        "centroid_z_mm",
        "centroid_dose_gy",
        "centroid_targets",
        "backend",
        "device",
        "warnings",
        "status",
        "error",
        "V95%",
        "D95",
        "D98",
        "D100",
        "Dmean",
        "Dmax",
        "uncertainty_draws",
    }
)


def is_result_key(name: str) -> bool:
    """Whether ``name`` is, or could be, a key isodose writes into a case's record: its own keys, a metric
    (``D95``, ``V20Gy``, ``D2cc``...), a target metric (``ROI:METRIC``), or a key of draws and classes."""
    from ..dvh import parse_metric
    from ..errors import IsodoseError

    if name in RESERVED_RECORD_KEYS or ":" in name or name.startswith(("p_", "se_", "class_", "course")):
        return True
    if name.endswith(("_p2_5", "_p50", "_p97_5")) or name.startswith("risk_"):
        return True
    try:
        parse_metric(name)
    except (IsodoseError, ValueError):
        return False
    return True


#: Optional columns for re-irradiated cases: the first course's fractions (else read from its plan), and the
#: second course's RTDOSE, fractions (or plan) and the registration of its frame to the first's.
SECOND_COURSE_COLUMNS = ("fractions", "second_dose", "second_fractions", "second_plan", "second_registration")


@dataclass(frozen=True)
class Case:
    case_id: str
    dose: Path | None
    structures: Path | None
    recurrence_roi: str
    plan: Path | None = None
    prescription_gy: float | None = None
    recurrence_structures: Path | None = None
    registration: Path | None = None
    fractions: int | None = None
    second_dose: Path | None = None
    second_fractions: int | None = None
    second_plan: Path | None = None
    second_registration: Path | None = None
    #: For a displacement field image as ``registration``: which image was fixed (``planning`` or ``follow-up``).
    registration_fixed: str | None = None
    #: The recurrence as a label image (in place of ``recurrence_structures``), and its label in a multi-label map.
    recurrence_mask: Path | None = None
    recurrence_label: int | None = None
    #: The names of the labels of ``structures`` when that is a label image (a JSON or CSV table).
    labels: Path | None = None
    #: Further RTDOSE files summed with ``dose``: the other beams (or fractions) of its plan.
    extra_doses: tuple[Path, ...] = ()
    #: Why the case could not be assembled (folder input); the run records it as a failed case.
    problem: str = ""
    #: The manifest's other columns for this case (clinical covariates: T stage, age, centre...), ``(name, value)``
    #: pairs as written; they go into the case's record.
    covariates: tuple[tuple[str, str], ...] = ()
    files: tuple[Path, ...] = field(default=(), compare=False)


#: The fields of a case that name its input files.
INPUT_FILES = (
    "dose",
    "structures",
    "plan",
    "recurrence_structures",
    "registration",
    "second_dose",
    "second_plan",
    "second_registration",
    "recurrence_mask",
    "labels",
)
#: Files whose items are structures: RTSTRUCT (contours) and SEG (segments, as label images).
STRUCTURE_MODALITIES = ("RTSTRUCT", "SEG")
#: Optional columns for label images: the recurrence as a mask (and its label), the names of a label image's labels.
LABEL_COLUMNS = ("recurrence_mask", "recurrence_label", "labels")
#: Fields of a case that its fingerprint holds only when set (added since stores were first written: a store of
#: cases without them resumes as it was).
_FINGERPRINT_IF_SET = ("recurrence_label",)


def input_fingerprint(case: Case) -> dict:
    """What a case's result depends on besides the run's settings: its values (ROI, prescription, fractions)
    and, for each input file, its size and modification time, so that a file edited or replaced since gives
    other values (a copy that keeps the times, as a moved cohort does, gives the same). Stored with each
    result: a resumed run computes again a finished case whose inputs differ. JSON values only."""
    values = {
        f.name: getattr(case, f.name)
        for f in fields(Case)
        if f.name not in INPUT_FILES
        and f.name not in ("case_id", "files", "extra_doses", "covariates")
        and not (f.name in _FINGERPRINT_IF_SET and getattr(case, f.name) is None)
    }
    if case.covariates:  # a covariate corrected since is stored anew (its case computed again)
        values["covariates"] = dict(case.covariates)
    files: dict[str, list[int] | None] = {}
    named = [(name, getattr(case, name)) for name in INPUT_FILES]
    named += [(f"extra_dose_{k + 1}", path) for k, path in enumerate(case.extra_doses)]
    for name, path in named:
        if path is not None:
            try:
                status = os.stat(path)
                files[name] = [status.st_size, status.st_mtime_ns]
            except OSError:
                files[name] = None
    return {"values": values, "files": files}


def _fractions(row: dict[str, str], column: str, path: Path, where: str) -> int | None:
    text = row.get(column, "")
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ManifestError(f"{column} {text!r} is not a whole number of fractions", path=path, obj=where)
    return int(text)


def _looks_like_dicom(path: Path) -> bool:
    """A DICOM file without the preamble (common in RT exports) still names its modality."""
    header = read_header(path)
    return header is not None


def read_manifest(path: str | Path) -> list[Case]:
    """The cases of a cohort's manifest (see the module docstring)."""
    path = Path(path)
    text = manifest_text(path)
    try:
        return _manifest_cases(csv.DictReader(io.StringIO(text, newline="")), path)
    except csv.Error as exc:
        raise ManifestError(f"is not a readable CSV ({exc})", path=path) from exc


def manifest_text(path: Path) -> str:
    """A manifest's text, read as UTF-8: a DICOM file, or a file of another encoding, is refused naming it."""
    if path.exists() and not path.is_file() and not path.is_dir():  # a FIFO or a device would be read without end
        raise ManifestError("is not a regular file (a pipe or a device?), not a manifest", path=path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot be read ({exc.strerror})", path=path) from exc
    not_a_manifest = "is a DICOM file, not a manifest: give a manifest CSV, or the folder of a cohort's DICOM exports"
    if data[128:132] == b"DICM":
        raise ManifestError(not_a_manifest, path=path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if _looks_like_dicom(path):
            raise ManifestError(not_a_manifest, path=path) from exc
        raise ManifestError(
            f"is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); save it as a UTF-8 CSV",
            path=path,
        ) from exc
    return text


def _manifest_cases(reader: csv.DictReader, path: Path) -> list[Case]:
    header = [h.strip() for h in reader.fieldnames or []]
    required = [*REQUIRED_MANIFEST_COLUMNS, *(() if "recurrence_mask" in header else ("recurrence_roi",))]
    missing = [c for c in required if c not in header]
    if missing:
        raise ManifestError(
            f"missing column(s) {', '.join(missing)}; a manifest has {','.join(MANIFEST_COLUMNS)} (case_id, dose, "
            "structures and recurrence_roi at least; the others may be left out)",
            path=path,
        )
    base = path.parent
    known = {*MANIFEST_COLUMNS, *SECOND_COURSE_COLUMNS, *LABEL_COLUMNS, "registration_fixed"}
    covariates = [h for h in header if h and h not in known]
    for name in covariates:
        if is_result_key(name):
            raise ManifestError(
                f"column {name!r} would be read as one of isodose's results; rename it (a clinical covariate's column "
                "needs a name of its own, without ':')",
                path=path,
            )
    repeated = sorted({name for name in covariates if covariates.count(name) > 1})
    if repeated:
        raise ManifestError(f"the column {repeated[0]!r} repeats", path=path)
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for line, raw in enumerate(reader, start=2):
        extra = raw.pop(None, None)  # fields beyond the header's: a trailing comma, as spreadsheets write, is harmless
        if extra and any(str(v).strip() for v in extra):
            raise ManifestError(
                f"has {len(header) + len(extra)} fields where the header has {len(header)}",
                path=path,
                obj=f"line {line}",
            )
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        if not any(row.values()):
            continue
        for column in MANIFEST_COLUMNS:  # a column left out is empty in every row
            row.setdefault(column, "")
        obj = f"line {line}"
        case_id = row["case_id"]
        if not case_id:
            raise ManifestError("case_id is empty", path=path, obj=obj)
        if case_id in seen:
            raise ManifestError(f"case_id {case_id!r} repeats line {seen[case_id]}", path=path, obj=obj)
        seen[case_id] = line
        mask = row.get("recurrence_mask", "")
        for column in ("dose", "structures") if mask else ("dose", "structures", "recurrence_roi"):
            if not row[column]:
                raise ManifestError(f"{column} is empty", path=path, obj=f"{obj} ({case_id})")
        if mask and row["recurrence_structures"]:
            raise ManifestError(
                "give the recurrence as recurrence_structures or as recurrence_mask, not both",
                path=path,
                obj=f"{obj} ({case_id})",
            )
        label_text = row.get("recurrence_label", "")
        if label_text and not mask:
            raise ManifestError("a recurrence_label needs a recurrence_mask", path=path, obj=f"{obj} ({case_id})")
        if label_text and not (label_text.isdigit() and int(label_text) > 0):
            raise ManifestError(
                f"recurrence_label {label_text!r} is not a label (a whole number above 0)",
                path=path,
                obj=f"{obj} ({case_id})",
            )
        prescription = None
        if row["prescription_gy"]:
            try:
                prescription = float(row["prescription_gy"])
            except ValueError:
                prescription = math.nan
            if not (math.isfinite(prescription) and prescription > 0):
                raise ManifestError(
                    f"prescription_gy {row['prescription_gy']!r} is not a positive dose",
                    path=path,
                    obj=f"{obj} ({case_id})",
                )
        problem = "" if prescription is not None or row["plan"] else "the manifest gives no plan and no prescription_gy"
        if row["registration"] and not (row["recurrence_structures"] or mask):
            raise ManifestError(
                "a registration needs recurrence_structures (or a recurrence_mask)", path=path, obj=f"{obj} ({case_id})"
            )
        fixed = row.get("registration_fixed", "") or None
        if fixed is not None and fixed not in ("planning", "follow-up"):
            raise ManifestError(
                f"registration_fixed {fixed!r} is not planning or follow-up", path=path, obj=f"{obj} ({case_id})"
            )

        def resolve(value: str) -> Path | None:
            return (base / value) if value else None

        doses = [d.strip() for d in row["dose"].split(";") if d.strip()]  # a plan's beams: summed
        where = f"{obj} ({case_id})"
        second = {column: row.get(column, "") for column in SECOND_COURSE_COLUMNS}
        if second["second_dose"] and not (second["second_fractions"] or second["second_plan"]):
            raise ManifestError(
                "a second_dose needs second_fractions or a second_plan", path=path, obj=f"{obj} ({case_id})"
            )
        if not second["second_dose"] and any(second[c] for c in SECOND_COURSE_COLUMNS[2:]):
            raise ManifestError(
                "second_fractions, second_plan and second_registration need a second_dose",
                path=path,
                obj=f"{obj} ({case_id})",
            )
        cases.append(
            Case(
                case_id=case_id,
                dose=resolve(doses[0]),
                extra_doses=tuple(base / d for d in doses[1:]),
                structures=resolve(row["structures"]),
                recurrence_roi=row["recurrence_roi"],
                plan=resolve(row["plan"]),
                prescription_gy=prescription,
                recurrence_structures=resolve(row["recurrence_structures"]),
                registration=resolve(row["registration"]),
                registration_fixed=fixed,
                recurrence_mask=resolve(mask),
                recurrence_label=int(label_text) if label_text else None,
                labels=resolve(row.get("labels", "")),
                fractions=_fractions(row, "fractions", path, where),
                second_dose=resolve(second["second_dose"]),
                second_fractions=_fractions(row, "second_fractions", path, where),
                second_plan=resolve(second["second_plan"]),
                second_registration=resolve(second["second_registration"]),
                problem=problem,
                covariates=tuple((name, row.get(name, "")) for name in covariates),
            )
        )
    if not cases:
        raise ManifestError("holds no cases", path=path)
    return cases


# --------------------------------------------------------------------------------------------------------
# Folder discovery
# --------------------------------------------------------------------------------------------------------
_Header = FileHeader


def _has_roi(header: _Header, roi: str) -> bool:
    return any(name == roi or name.casefold() == roi.casefold() for name in header.rois)


def files_under(folder: Path) -> list[Path]:
    """The regular files under ``folder``, sorted, hidden files left out. Symbolic links to folders are followed
    (patients linked into a cohort's folder are part of it), each real folder once, so that a link loop ends."""
    seen: set[tuple[int, int]] = set()
    found: list[Path] = []
    for root, folders, names in os.walk(folder, followlinks=True):
        status = os.stat(root)
        if (status.st_dev, status.st_ino) in seen:  # reached again through a link: a loop, or a second link
            folders[:] = []
            continue
        seen.add((status.st_dev, status.st_ino))
        folders.sort()
        for name in names:
            path = Path(root) / name
            if not name.startswith(".") and path.is_file():
                found.append(path)
    return sorted(found)


def _files_found(n_files: int, headers: list[_Header]) -> str:
    """What a folder holds, as discovery sees it: its files, the RT files among them by modality, and the others
    (images, other DICOM, files that are not DICOM), which it leaves out."""
    if not n_files:
        return "no files"
    counts = Counter(h.modality for h in headers)
    rt = ", ".join(f"{counts[m]} {m}" for m in ("RTDOSE", "RTSTRUCT", "RTPLAN", "REG", "SEG") if counts[m])
    others = n_files - len(headers)
    return f"{n_files} file(s): {rt or 'none of them RT'}" + (
        f"; {others} other file(s) (images, other DICOM, not DICOM) left out" if others and rt else ""
    )


def discover_cases(
    folder: str | Path, recurrence_roi: str, prescription_gy: float | None = None, second_courses: bool = False
) -> list[Case]:
    """Sort the DICOM files under ``folder`` into cases (see the module docstring); with ``second_courses``, a
    patient with two planning frames is one re-irradiated case."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError("is not a folder", path=folder)
    files = files_under(folder)
    headers = []
    for path in files:
        header = read_header(path)
        if header is None:
            log.debug("%s: left out: not an RT file (DICOM RTDOSE, RTSTRUCT, RTPLAN, REG or SEG)", path)
        else:
            headers.append(header)
    found = _files_found(len(files), headers)
    if not any(h.modality == "RTDOSE" for h in headers):
        raise ManifestError(f"holds no RTDOSE file, so no case ({found})", path=folder)
    log.info("%s: %s", folder, found)
    by_patient: dict[str, list[_Header]] = defaultdict(list)
    for h in headers:
        by_patient[h.patient].append(h)
    cases = []
    several = []
    for patient, items in sorted(by_patient.items()):
        planning_frames = sorted({h.frame for h in items if h.modality == "RTDOSE"})
        if second_courses and len(planning_frames) > 1:
            cases.append(
                _assemble_two_courses(patient or "unnamed", planning_frames, items, recurrence_roi, prescription_gy)
            )
            continue
        if len(planning_frames) > 1:
            several.append(patient or "unnamed")
        for n, frame in enumerate(planning_frames):
            case_id = patient or "unnamed"
            if len(planning_frames) > 1:
                case_id = f"{case_id}_{n + 1}"
            cases.append(_assemble(case_id, frame, items, recurrence_roi, prescription_gy))
    cases = unique_case_ids(cases, folder)
    if several:
        log.warning(
            "%s: %d patient(s) with several planning frames, each frame a case of its own (%s); for "
            "re-irradiated patients, ask for second courses (--second-courses)",
            folder,
            len(several),
            ", ".join(several[:5]),
        )
    return cases


def _pick(candidates: list[_Header], what: str, frame: str) -> tuple[_Header | None, str]:
    if len(candidates) == 1:
        return candidates[0], ""
    if not candidates:
        return None, f"no {what} in frame of reference {frame}"
    names = ", ".join(h.path.name for h in candidates)
    return None, f"{len(candidates)} {what} files in frame of reference {frame} ({names}); use a manifest"


def _dose_and_plans(in_frame: list[_Header], frame: str) -> tuple[list[_Header], str, list[_Header]]:
    """The frame's RTDOSE files (one whole plan's dose; or, where the frame holds only per-beam doses of one plan,
    every beam's, to be summed), why there are none, and the frame's RTPLAN files (the one the dose references,
    when it does and is there)."""
    doses = [h for h in in_frame if h.modality == "RTDOSE"]
    whole = [h for h in doses if h.summation not in PARTIAL_SUMMATION_TYPES]
    if whole:
        if len(whole) > 1:
            whole = [h for h in whole if h.summation == "PLAN"] or whole
        dose, problem = _pick(whole, "RTDOSE", frame)
        chosen = [dose] if dose is not None else []
    else:
        beams = [h for h in doses if h.summation == "BEAM"]
        by_plan = {h.referenced_plan for h in beams}
        if beams and len(by_plan) == 1:
            chosen, problem = sorted(beams, key=lambda h: str(h.path)), ""
        elif beams:
            chosen, problem = (
                [],
                (
                    f"per-beam RTDOSE files of {len(by_plan)} plans in frame of reference {frame} "
                    "and no plan dose; use a manifest"
                ),
            )
        else:
            kinds = ", ".join(sorted({h.summation for h in doses}))
            chosen, problem = (
                [],
                (
                    f"only partial RTDOSE files ({kinds}) in frame of reference {frame}, no plan "
                    "dose; use a manifest (the dose column takes several files, separated by ;)"
                ),
            )
    plans = [h for h in in_frame if h.modality == "RTPLAN"]
    referenced = {h.referenced_plan for h in chosen if h.referenced_plan}
    if len(referenced) == 1 and len(plans) > 1:
        plans = [h for h in plans if h.sop in referenced] or plans
    return chosen, problem, plans


def _registrations(items: list[_Header], frame: str, other: str) -> list[_Header]:
    """The REG files relating two frames: where both a rigid and one deformable registration relate them, the
    deformable one (it maps the anatomy as it changed)."""
    found = [h for h in items if h.modality == "REG" and {frame, other} <= set(h.registered_frames) | {h.frame}]
    deformable = [h for h in found if h.deformable]
    return deformable if len(deformable) == 1 else found


def _assemble(case_id: str, frame: str, items: list[_Header], roi: str, prescription_gy: float | None) -> Case:
    in_frame = [h for h in items if h.frame == frame]
    doses, problem, plans = _dose_and_plans(in_frame, frame)
    plan = plans[0] if len(plans) == 1 else None
    if plan is None and prescription_gy is None and not problem:
        problem = (
            f"{len(plans)} RTPLAN files in frame of reference {frame}; give --prescription"
            if plans
            else f"no RTPLAN in frame of reference {frame}; give --prescription"
        )
    structure_sets = [h for h in in_frame if h.modality in STRUCTURE_MODALITIES]
    holding = [h for h in structure_sets if _has_roi(h, roi)]
    contoured = [h for h in structure_sets if h.modality == "RTSTRUCT"]
    recurrence_structures: _Header | None = None
    registration: _Header | None = None
    structures: _Header | None
    if len(holding) == 1 and holding[0].modality == "SEG" and len(contoured) == 1:
        # The recurrence segmented (SEG) on the planning frame beside the planning contours: both are read.
        structures, structure_problem, recurrence_structures = contoured[0], "", holding[0]
    else:
        structures, structure_problem = _pick(holding or structure_sets, "RTSTRUCT", frame)
    problem = problem or structure_problem
    if not holding and not problem:
        follow_up = [h for h in items if h.modality in STRUCTURE_MODALITIES and h.frame != frame and _has_roi(h, roi)]
        if not follow_up:
            problem = f"no ROI named {roi!r} in any structure set of patient {items[0].patient!r}"
        elif len(follow_up) > 1:
            problem = f"{len(follow_up)} structure sets hold ROI {roi!r}; use a manifest"
        else:
            recurrence_structures = follow_up[0]
            registration, problem = _pick(
                _registrations(items, frame, recurrence_structures.frame),
                "REG relating it to " + recurrence_structures.frame,
                frame,
            )
    return Case(
        case_id=case_id,
        dose=doses[0].path if doses else None,
        extra_doses=tuple(h.path for h in doses[1:]),
        structures=structures.path if structures else None,
        recurrence_roi=roi,
        plan=plan.path if plan else None,
        prescription_gy=prescription_gy if plan is None else None,  # a case's own plan gives its prescription
        recurrence_structures=recurrence_structures.path if recurrence_structures else None,
        registration=registration.path if registration else None,
        problem=problem,
    )


def _course_date(frame: str, items: list[_Header]) -> str:
    """When a frame's course was planned: its RTPLAN's date, else its RTDOSE's; "" when neither is dated."""
    for modality in ("RTPLAN", "RTDOSE"):
        dates = [h.date for h in items if h.frame == frame and h.modality == modality and h.date]
        if dates:
            return min(dates)
    return ""


def _assemble_two_courses(
    case_id: str, frames: list[str], items: list[_Header], roi: str, prescription_gy: float | None
) -> Case:
    """A re-irradiated patient's case: the earlier planning frame is the first course (see the module
    docstring), the later one the second."""
    if len(frames) > 2:
        return Case(
            case_id,
            None,
            None,
            roi,
            problem=f"{len(frames)} planning frames of reference, where a "
            "re-irradiated patient has two; use a manifest",
        )
    dated = sorted((_course_date(frame, items), frame) for frame in frames)
    if not dated[0][0] or dated[0][0] == dated[1][0]:
        return Case(
            case_id,
            None,
            None,
            roi,
            problem=f"cannot tell which of frames {frames[0]} and {frames[1]} "
            "was treated first (no or equal RTPLAN and RTDOSE dates); use a manifest",
        )
    first, second = dated[0][1], dated[1][1]
    case = _assemble(case_id, first, items, roi, prescription_gy)
    doses, problem, plans = _dose_and_plans([h for h in items if h.frame == second], second)
    if not problem and len(doses) > 1:
        problem = f"the second course (frame of reference {second}) has per-beam doses only; give its plan dose"
    if not problem and len(plans) != 1:
        problem = (
            f"{len(plans)} RTPLAN files in frame of reference {second} for the second course's fractions; "
            "use a manifest"
        )
    registration, registration_problem = _pick(
        _registrations(items, first, second), "REG relating it to " + first, second
    )
    return replace(
        case,
        second_dose=doses[0].path if doses else None,
        second_plan=plans[0].path if len(plans) == 1 else None,
        second_registration=registration.path if registration else None,
        problem=case.problem or problem or registration_problem,
    )


def load_cases(
    source: str | Path,
    recurrence_roi: str = "Recurrence",
    prescription_gy: float | None = None,
    second_courses: bool = False,
) -> list[Case]:
    """The cases of a manifest (a file) or of a folder of DICOM exports (see :func:`discover_cases` for
    ``second_courses``). Their paths are absolute, so that the errors and warnings stored with their results name
    their files wherever the store is read from."""
    source = Path(os.path.abspath(source))  # ".." folded, links kept as given
    if source.is_dir():
        return discover_cases(source, recurrence_roi, prescription_gy, second_courses)
    if not source.exists():
        raise ManifestError("no such manifest or folder", path=source)
    if second_courses:
        raise ManifestError(
            "second courses are found in folders; a manifest gives them in its second_dose, "
            "second_fractions, second_plan and second_registration columns",
            path=source,
        )
    return read_manifest(source)


# --------------------------------------------------------------------------------------------------------
# The cases of an audit of planning-system DVHs: one per RTDOSE that carries them
# --------------------------------------------------------------------------------------------------------
#: The columns of an audit's manifest; ``plan`` and ``prescription_gy`` may be there too (and may be empty). A
#: cohort's manifest serves as well: its other columns are not used.
AUDIT_MANIFEST_COLUMNS = ("case_id", "dose", "structures")


def read_audit_manifest(path: str | Path) -> list[Case]:
    """The cases of an audit's manifest: ``case_id,dose,structures`` and optionally ``plan`` and
    ``prescription_gy`` (paths relative to the manifest's folder)."""
    path = Path(path)
    text = manifest_text(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in AUDIT_MANIFEST_COLUMNS if c not in header]
        if missing:
            raise ManifestError(
                f"missing column(s) {', '.join(missing)}; an audit's manifest has {','.join(AUDIT_MANIFEST_COLUMNS)} "
                "and optionally plan and prescription_gy",
                path=path,
            )
        cases: list[Case] = []
        seen: dict[str, int] = {}
        for line, raw in enumerate(reader, start=2):
            extra = raw.pop(None, None)
            if extra and any(str(v).strip() for v in extra):
                raise ManifestError(
                    f"has {len(header) + len(extra)} fields where the header has {len(header)}",
                    path=path,
                    obj=f"line {line}",
                )
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            if not any(row.values()):
                continue
            where = f"line {line}"
            case_id = row["case_id"]
            if not case_id:
                raise ManifestError("case_id is empty", path=path, obj=where)
            if case_id in seen:
                raise ManifestError(f"case_id {case_id!r} repeats line {seen[case_id]}", path=path, obj=where)
            seen[case_id] = line
            for column in AUDIT_MANIFEST_COLUMNS[1:]:
                if not row[column]:
                    raise ManifestError(f"{column} is empty", path=path, obj=f"{where} ({case_id})")
            prescription = None
            if row.get("prescription_gy"):
                try:
                    prescription = float(row["prescription_gy"])
                except ValueError:
                    prescription = math.nan
                if not (math.isfinite(prescription) and prescription > 0):
                    raise ManifestError(
                        f"prescription_gy {row['prescription_gy']!r} is not a positive dose",
                        path=path,
                        obj=f"{where} ({case_id})",
                    )
            cases.append(
                Case(
                    case_id=case_id,
                    dose=path.parent / row["dose"],
                    structures=path.parent / row["structures"],
                    recurrence_roi="",
                    plan=path.parent / row["plan"] if row.get("plan") else None,
                    prescription_gy=prescription,
                )
            )
    except csv.Error as exc:
        raise ManifestError(f"is not a readable CSV ({exc})", path=path) from exc
    if not cases:
        raise ManifestError("holds no cases", path=path)
    return cases


def discover_audit_cases(folder: str | Path) -> list[Case]:
    """One case per RTDOSE under ``folder`` that carries a DVH Sequence, with the RTSTRUCT its DVHs refer to (by
    its SOPInstanceUID; else the one structure set of its patient and frame of reference) and the RTPLAN it
    references (else the one plan of its frame; none is needed). A dose whose structure set cannot be told is a
    case that fails with the reason."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError("is not a folder", path=folder)
    headers = [h for p in files_under(folder) for h in [read_header(p)] if h is not None]
    doses = [h for h in headers if h.modality == "RTDOSE" and h.has_dvhs]
    without = sum(h.modality == "RTDOSE" and not h.has_dvhs for h in headers)
    if without and doses:
        log.warning("%s: %d RTDOSE file(s) hold no DVH Sequence and are not audited", folder, without)
    if not doses:
        raise ManifestError(
            "holds no RTDOSE with a DVH Sequence (the planning system's DVHs), so nothing to audit", path=folder
        )
    by_sop = {h.sop: h for h in headers if h.sop}
    per_patient: dict[str, int] = defaultdict(int)
    for dose in doses:
        per_patient[dose.patient] += 1
    numbered: dict[str, int] = defaultdict(int)
    cases = []
    for dose in doses:
        patient = dose.patient or "unnamed"
        numbered[dose.patient] += 1
        case_id = patient if per_patient[dose.patient] == 1 else f"{patient}_{numbered[dose.patient]}"
        problem = ""
        same_frame = [h for h in headers if h.patient == dose.patient and h.frame == dose.frame]
        referenced = by_sop.get(dose.referenced_structure_set)
        if referenced is not None and referenced.modality == "RTSTRUCT":
            structures: _Header | None = referenced
        else:
            structures, problem = _pick([h for h in same_frame if h.modality == "RTSTRUCT"], "RTSTRUCT", dose.frame)
            if dose.referenced_structure_set and problem:
                problem = (
                    f"the RTSTRUCT its DVHs refer to ({dose.referenced_structure_set}) is not in the folder; {problem}"
                )
        plan = by_sop.get(dose.referenced_plan)
        if plan is None or plan.modality != "RTPLAN":
            plans = [h for h in same_frame if h.modality == "RTPLAN"]
            plan = plans[0] if len(plans) == 1 else None
        cases.append(
            Case(
                case_id=case_id,
                dose=dose.path,
                structures=structures.path if structures else None,
                recurrence_roi="",
                plan=plan.path if plan else None,
                problem=problem,
            )
        )
    return unique_case_ids(cases, folder)


def unique_case_ids(cases: list[Case], folder: Path) -> list[Case]:
    """The cases with ids made unique: a patient ``P`` with two planning frames gives ``P_1`` and ``P_2``, and a
    patient whose ID is ``P_1`` would clash with the first; a later case whose id is taken gets ``-2`` (``-3``...)
    after it, with a warning naming it, so that no result replaces another's."""
    given = {c.case_id for c in cases}
    taken: set[str] = set()
    renamed = []
    out = []
    for case in cases:
        case_id = case.case_id
        if case_id in taken:
            k = 2
            while f"{case.case_id}-{k}" in taken or f"{case.case_id}-{k}" in given:
                k += 1
            case_id = f"{case.case_id}-{k}"
            renamed.append(f"{case.case_id} -> {case_id} ({case.dose.name if case.dose else 'no RTDOSE'})")
            case = replace(case, case_id=case_id)
        taken.add(case_id)
        out.append(case)
    if renamed:
        log.warning(
            "%s: %d case id(s) were taken by another case and renamed: %s", folder, len(renamed), "; ".join(renamed)
        )
    return out


def load_audit_cases(source: str | Path) -> list[Case]:
    """The cases of an audit: of a manifest (a file), or of a folder of DICOM exports."""
    source = Path(source)
    if source.is_dir():
        return discover_audit_cases(source)
    if not source.exists():
        raise ManifestError("no such manifest or folder", path=source)
    return read_audit_manifest(source)
