"""isodose and dicompyler-core side by side, in one run, on the same files.

    .venv/bin/python benchmarks/compare_dicompyler.py [--interpolated] [--nelms PATH] [--repeats N]

dicompyler-core 0.5.6 needs pydicom below 3, so it is installed into an environment of its own
(``.bench/dicompyler``, made on the first run) and driven through ``dicompyler_worker.py``; its example patient
comes from its source distribution on PyPI. Inputs: that patient (10 ROIs), a generated head-and-neck case
(20 ROIs), and the Nelms 2015 set (analytical truth). Per structure it records each engine's time and its
volume, Dmean, D95 and Dmax (and, on the Nelms set, every analytical value); whole processes (interpreter
start, imports, reading, all ROIs) are timed on the example patient. Writes ``benchmarks/results/dicompyler.json``
and the report ``docs/generated/DICOMPYLER.md`` (shown by the docs' comparison page).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench" / "dicompyler"
WORKER = Path(__file__).with_name("dicompyler_worker.py")
RESULTS = Path(__file__).with_name("results")
REPORT = ROOT / "docs" / "generated" / "DICOMPYLER.md"
DICOMPYLER = "dicompyler-core==0.5.6"
ENV_PACKAGES = (DICOMPYLER, "pydicom<3", "scikit-image")
#: dicompyler-core's in-plane interpolation in its "interpolated" mode (a 2.5 mm dose grid split 8 times).
INTERPOLATION_MM = 0.3125
COMPARED = ("volume_cc", "dmean_gy", "D95", "dmax_gy")
NELMS_COLUMNS = {
    "volume": "volume_cc",
    "Dmin": "dmin_gy",
    "Dmax": "dmax_gy",
    "Dmean": "dmean_gy",
    "D99": "D99",
    "D95": "D95",
    "D5": "D5",
    "D1": "D1",
    "D0.03cc": "D0.03cc",
}


@dataclass
class Job:
    id: str
    dataset: str
    rtdose: Path
    rtss: Path
    roi_number: int
    roi_name: str
    truth: dict[str, float] = field(default_factory=dict)
    #: The contour spacing of a Nelms structure ("0.2mm" ...), by which its errors are grouped.
    contour_spacing: str = ""


# --------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------
def dicompyler_python() -> Path:
    """The interpreter of dicompyler-core's own environment, created on first use."""
    env = WORK / "venv"
    python = env / "bin" / "python"
    stamp = env / ".installed"
    if not stamp.is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *ENV_PACKAGES], check=True)
        stamp.write_text("\n".join(ENV_PACKAGES) + "\n")
    return python


def isodose_own_python() -> Path:
    """The interpreter of an environment holding this checkout of isodose and its dependencies alone (no extras,
    not editable), as a user's ``pip install isodose`` would: the whole process is timed there as well as in the
    development environment, whose test and docs extras (SciPy, requests...) lengthen every import. It is made
    anew when ``pyproject.toml`` changes (its dependencies with it); isodose itself is reinstalled on every run,
    so that it is the checkout's (pip builds it from the checkout, which needs the network for its build tools)."""
    env = ROOT / ".bench" / "isodose" / "venv"
    python = env / "bin" / "python"
    stamp = env / ".pyproject"
    wanted = (ROOT / "pyproject.toml").read_text()
    if not (stamp.is_file() and stamp.read_text() == wanted):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True)
        stamp.write_text(wanted)
    else:
        reinstall = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(ROOT)]
        subprocess.run(reinstall, check=True)
    return python


def example_patient(python: Path) -> Path:
    """The example patient of dicompyler-core's source distribution (RTDOSE, RTSTRUCT, RTPLAN)."""
    folder = WORK / "example_data"
    if (folder / "rtss.dcm").is_file():
        return folder
    download = WORK / "sdist"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            DICOMPYLER,
            "-d",
            str(download),
        ],
        check=True,
    )
    [archive] = download.glob("dicompyler*core-0.5.6.tar.gz")
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if "/tests/testdata/example_data/" in member.name and member.isfile():
                source = tar.extractfile(member)
                (folder / Path(member.name).name).write_bytes(source.read())
    return folder


def head_neck_files() -> tuple[Path, Path]:
    from isodose.dicom.write import write_dose, write_structures
    from isodose.phantoms import head_neck_case

    folder = WORK / "head_neck"
    rd, rs = folder / "RD.dcm", folder / "RS.dcm"
    if not rs.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        grid, structures = head_neck_case()
        write_dose(grid, rd, frame_of_reference_uid=grid.frame_of_reference_uid)
        write_structures(structures.structures, rs, frame_of_reference_uid=grid.frame_of_reference_uid)
    return rd, rs


def jobs_for(dataset: str, rtdose: Path, rtss: Path) -> list[Job]:
    from isodose.dicom.read import read_structures

    return [
        Job(f"{dataset}/{s.number}", dataset, rtdose, rtss, s.number, s.name) for s in read_structures(rtss).structures
    ]


def nelms_jobs(root: Path) -> list[Job]:
    from isodose.dicom.read import read_structures
    from isodose.validation import load_nelms

    jobs = []
    for case in load_nelms(root):
        rtss = root / "structures" / f"{case.structure}.dcm"
        [roi] = [s for s in read_structures(rtss).structures if not s.is_empty]
        jobs.append(
            Job(
                f"nelms/{case.structure}/{case.gradient}/{case.voxel_mm}",
                "nelms",
                root / "dose_grids" / f"{case.grid_name}.dcm",
                rtss,
                roi.number,
                case.structure,
                dict(case.analytical),
                case.plane_spacing,
            )
        )
    return jobs


# --------------------------------------------------------------------------------------------------------
# Running each engine
# --------------------------------------------------------------------------------------------------------
def run_dicompyler(python: Path, jobs: list[Job], options: dict | None = None) -> dict[str, dict]:
    payload = [
        {"id": j.id, "rtdose": str(j.rtdose), "rtss": str(j.rtss), "roi": j.roi_number, "options": options or {}}
        for j in jobs
    ]
    with tempfile.TemporaryDirectory() as tmp:
        jobs_file, out_file = Path(tmp) / "jobs.json", Path(tmp) / "out.json"
        jobs_file.write_text(json.dumps(payload))
        subprocess.run([str(python), str(WORKER), str(jobs_file), str(out_file)], check=True)
        return {r["id"]: r for r in json.loads(out_file.read_text())}


def _isodose_values(dvh) -> dict[str, float]:
    values = {"volume_cc": dvh.volume_cc, "dmin_gy": dvh.dmin_gy, "dmean_gy": dvh.dmean_gy, "dmax_gy": dvh.dmax_gy}
    for name in ("D99", "D95", "D5", "D1", "D0.03cc"):
        values[name] = dvh.metric(name) if dvh.has_dose else math.nan
    return values


def run_isodose(jobs: list[Job], repeats: int) -> dict[str, dict]:
    """Per structure, files already read and kernels compiled: the median of ``repeats`` computations."""
    from isodose.dicom.read import read_dose, read_structures
    from isodose.dispatch import select_backend
    from isodose.dvh import compute_dvhs

    backend = select_backend("numba")
    doses, structure_sets, results = {}, {}, {}
    for job in jobs:
        if job.rtdose not in doses:
            doses[job.rtdose] = read_dose(job.rtdose)
        if job.rtss not in structure_sets:
            structure_sets[job.rtss] = read_structures(job.rtss)
        grid, structures = doses[job.rtdose], structure_sets[job.rtss]
        roi = structures.get(job.roi_number)
        times = []
        for _ in range(repeats + 1):  # the first run compiles or loads the kernels
            started = time.perf_counter()
            [dvh] = compute_dvhs(grid, structures, [roi.number], backend=backend)
            times.append(time.perf_counter() - started)
        results[job.id] = {"id": job.id, "seconds": statistics.median(times[1:]), **_isodose_values(dvh)}
    return results


def isodose_all_rois_seconds(rtdose: Path, rtss: Path, repeats: int) -> float:
    """All ROIs of a case in one call (files read, kernels compiled): the median of ``repeats``."""
    from isodose.dicom.read import read_dose, read_structures
    from isodose.dvh import compute_dvhs

    grid, structures = read_dose(rtdose), read_structures(rtss)
    compute_dvhs(grid, structures, backend="numba")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        compute_dvhs(grid, structures, backend="numba")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def process_seconds(commands: dict[str, list[str]], repeats: int, env: dict[str, dict[str, str]]) -> dict[str, float]:
    """Median wall time of each of ``commands`` (with ``env[name]`` added to its environment, where given) over
    ``repeats`` rounds, after one unmeasured round (which brings their files into the page cache). Each round runs
    every command once, in turn, so that a machine whose speed drifts during the run slows them alike and their
    ratios hold."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(repeats + 1):
        for name, command in commands.items():
            environment = {**os.environ, **env.get(name, {})}
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
            if round_:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


# --------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------
def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _structure_table(jobs: list[Job], iso: dict, dc: dict) -> list[str]:
    lines = [
        "| ROI | isodose ms | dicompyler ms | ratio | volume cc (iso / dc) | Dmean Gy | D95 Gy | Dmax Gy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for job in jobs:
        a, b = iso[job.id], dc[job.id]
        if "error" in b:
            lines.append(f"| {job.roi_name} | {a['seconds'] * 1e3:.1f} | error: {b['error']} | | | | | |")
            continue
        ratio = b["seconds"] / a["seconds"] if a["seconds"] > 0 else math.nan
        cells = [f"{_fmt(a[k], 2)} / {_fmt(b[k], 2)}" for k in COMPARED]
        lines.append(
            f"| {job.roi_name} | {a['seconds'] * 1e3:.1f} | {b['seconds'] * 1e3:.0f} | {ratio:.0f}x | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _nelms_summary(jobs: list[Job], iso: dict, dc: dict) -> list[str]:
    """Errors against the analytical values, in % of each, by contour spacing, for both engines."""
    rows: dict[str, dict[str, list[float]]] = {}
    for job in jobs:
        spacing = job.contour_spacing
        for engine, results in (("isodose", iso), ("dicompyler-core", dc)):
            result = results[job.id]
            errors = rows.setdefault(spacing, {}).setdefault(engine, [])
            for name, column in NELMS_COLUMNS.items():
                truth = job.truth[name]
                value = result.get(column, math.nan) if "error" not in result else math.nan
                errors.append(100.0 * (value - truth) / truth if math.isfinite(value) else math.inf)
    lines = [
        "| contour spacing | engine | values | over 3% | over 2% | over 1% | median abs error % | max abs error % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    totals: dict[str, list[float]] = {}
    for spacing in sorted(rows, key=lambda s: float(s.rstrip("m"))):
        for engine, errors in rows[spacing].items():
            totals.setdefault(engine, []).extend(errors)
            lines.append(_nelms_row(spacing, engine, errors))
    for engine, errors in totals.items():
        lines.append(_nelms_row("all", engine, errors))
    return lines


def _nelms_row(label: str, engine: str, errors: list[float]) -> str:
    absolute = [abs(e) for e in errors]
    finite = [e for e in absolute if math.isfinite(e)]
    over = [sum(e > t for e in absolute) for t in (3, 2, 1)]
    median = statistics.median(finite) if finite else math.nan
    worst = max(finite) if finite else math.nan
    return (
        f"| {label} | {engine} | {len(errors)} | {over[0]} | {over[1]} | {over[2]} | {_fmt(median, 2)} | "
        f"{_fmt(worst, 2)} |"
    )


def write_report(data: dict, jobs: list[Job]) -> None:
    iso, dc = data["isodose"], data["dicompyler"]
    by_dataset: dict[str, list[Job]] = {}
    for job in jobs:
        by_dataset.setdefault(job.dataset, []).append(job)
    totals = data["totals"]
    lines = [
        "# isodose and dicompyler-core, side by side",
        "",
        f"Measured {data['date']} on {data['machine']}; Python {data['python']}, isodose {data['isodose_version']} "
        f"(Numba {data['numba']}, pydicom {data['pydicom']}), {DICOMPYLER} (pydicom {data['dicompyler_pydicom']}, "
        f"its own environment). Command: `{data['command']}`. Machines are shared and noisy: ratios are of "
        "medians measured in the same run.",
        "",
        "isodose times are its computation per structure with the files already read and the kernels compiled "
        f"(median of {data['repeats']} runs, default settings, Numba). dicompyler-core times are `get_dvh` per "
        "structure at its default settings, which include reading the two files.",
        "",
        "## Example patient (dicompyler-core's test data, 10 ROIs)",
        "",
        "| measure | isodose | dicompyler-core | ratio |",
        "|---|---|---|---|",
        f"| all ROIs, computing (isodose: files read, kernels compiled) | {totals['isodose_compute_s']:.3f} s | "
        f"{totals['dicompyler_default_s']:.2f} s | "
        f"{totals['dicompyler_default_s'] / totals['isodose_compute_s']:.0f}x |",
    ]
    if totals.get("dicompyler_interpolated_s"):
        lines.append(
            f"| all ROIs, dicompyler-core interpolated at {INTERPOLATION_MM} mm in-plane | "
            f"{totals['isodose_compute_s']:.3f} s | {totals['dicompyler_interpolated_s']:.1f} s | "
            f"{totals['dicompyler_interpolated_s'] / totals['isodose_compute_s']:.0f}x |"
        )
    lines += [
        f"| whole process: interpreter, imports, reading, all ROIs (median of {data['process_repeats']} rounds after a "
        "warm-up round, each process once in each, in turn) | "
        f"{totals['isodose_process_s']:.2f} s | {totals['dicompyler_process_s']:.2f} s | "
        f"{totals['dicompyler_process_s'] / totals['isodose_process_s']:.1f}x |",
    ]
    if totals.get("isodose_own_env_process_s"):
        lines.append(
            "| same, isodose in an environment of its own dependencies alone (as dicompyler-core is) | "
            f"{totals['isodose_own_env_process_s']:.2f} s | {totals['dicompyler_process_s']:.2f} s | "
            f"{totals['dicompyler_process_s'] / totals['isodose_own_env_process_s']:.1f}x |"
        )
    if totals.get("isodose_own_env_read_here_process_s"):
        lines.append(
            "| same, with the files read in isodose's own process (`ISODOSE_READ_AHEAD=0`) rather than beside the "
            f"kernels' loading | {totals['isodose_own_env_read_here_process_s']:.2f} s | "
            f"{totals['dicompyler_process_s']:.2f} s | "
            f"{totals['dicompyler_process_s'] / totals['isodose_own_env_read_here_process_s']:.1f}x |"
        )
    lines += [
        "",
        f"isodose process: `{data['isodose_process_command']}` (in the development environment, with the test and "
        "docs extras, and in `.bench/isodose`, where `pip install .` put isodose and its dependencies alone); "
        "dicompyler-core process: the worker's `--all` mode.",
        "",
    ]
    lines += _structure_table(by_dataset["example"], iso, dc)
    if "interpolated" in data:
        lines += [
            "",
            f"dicompyler-core interpolated ({INTERPOLATION_MM} mm in-plane) per structure:",
            "",
            *_structure_table(by_dataset["example"], iso, data["interpolated"]),
        ]
    lines += ["", "## Generated head-and-neck case (20 ROIs, 200 x 200 x 120 voxels of 2.5 mm)", ""]
    lines += _structure_table(by_dataset["head_neck"], iso, dc)
    if "nelms" in by_dataset:
        lines += [
            "",
            "## Nelms 2015 set: errors against the analytical values",
            "",
            "Volume, Dmin, Dmax, Dmean, D99, D95, D5, D1 and D0.03cc of every structure and dose grid of "
            "the set; an error of a value an engine could not compute counts as infinite.",
            "",
        ]
        lines += _nelms_summary(by_dataset["nelms"], iso, dc)
        nelms_iso = sum(iso[j.id]["seconds"] for j in by_dataset["nelms"])
        nelms_dc = sum(dc[j.id].get("seconds", 0.0) for j in by_dataset["nelms"])
        lines += ["", f"Time over the set: isodose {nelms_iso:.2f} s, dicompyler-core {nelms_dc:.1f} s."]
    REPORT.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--interpolated",
        action="store_true",
        help=f"also run dicompyler-core with in-plane interpolation at {INTERPOLATION_MM} mm (minutes)",
    )
    parser.add_argument("--nelms", type=Path, default=ROOT.parent / "shared" / "validation" / "nelms2015")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--process-repeats", type=int, default=11)
    args = parser.parse_args()

    import numba
    import numpy
    import pydicom

    import isodose

    python = dicompyler_python()
    example = example_patient(python)
    rd, rs = head_neck_files()
    jobs = jobs_for("example", example / "rtdose.dcm", example / "rtss.dcm") + jobs_for("head_neck", rd, rs)
    if (args.nelms / "analytical.csv").is_file():
        jobs += nelms_jobs(args.nelms)
    print(f"{len(jobs)} structures; isodose...", file=sys.stderr)
    iso = run_isodose(jobs, args.repeats)
    print("dicompyler-core...", file=sys.stderr)
    dc = run_dicompyler(python, jobs)
    example_jobs = [j for j in jobs if j.dataset == "example"]
    isodose_cli = [
        str(Path(sys.executable).with_name("isodose")),
        "dvh",
        "--dose",
        str(example / "rtdose.dcm"),
        "--structures",
        str(example / "rtss.dcm"),
        "--backend",
        "numba",
        "--format",
        "json",
    ]
    own_python = isodose_own_python()
    own_cli = [str(own_python.with_name("isodose")), *isodose_cli[1:]]
    dicompyler_pydicom = subprocess.run(
        [str(python), "-c", "import pydicom; print(pydicom.__version__)"], check=True, capture_output=True, text=True
    ).stdout.strip()
    print("whole processes...", file=sys.stderr)
    dicompyler_cli = [str(python), str(WORKER), "--all", str(example / "rtdose.dcm"), str(example / "rtss.dcm")]
    # the files read in isodose's own process too, as before it read them beside loading the kernels
    commands = {"isodose": isodose_cli, "isodose_own_env": own_cli, "read_here": own_cli}
    commands["dicompyler"] = dicompyler_cli
    processes = process_seconds(commands, args.process_repeats, {"read_here": {"ISODOSE_READ_AHEAD": "0"}})
    data = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "isodose_version": isodose.__version__,
        "numba": numba.__version__,
        "numpy": numpy.__version__,
        "pydicom": pydicom.__version__,
        "dicompyler_pydicom": dicompyler_pydicom,
        "command": "python benchmarks/compare_dicompyler.py" + (" --interpolated" if args.interpolated else ""),
        "repeats": args.repeats,
        "process_repeats": args.process_repeats,
        "isodose_process_command": "isodose dvh --dose rtdose.dcm --structures rtss.dcm --backend numba --format json",
        "isodose": iso,
        "dicompyler": dc,
        "totals": {
            "isodose_compute_s": isodose_all_rois_seconds(example / "rtdose.dcm", example / "rtss.dcm", args.repeats),
            "dicompyler_default_s": sum(dc[j.id].get("seconds", 0.0) for j in example_jobs),
            "isodose_process_s": processes["isodose"],
            "isodose_own_env_process_s": processes["isodose_own_env"],
            "isodose_own_env_read_here_process_s": processes["read_here"],
            "dicompyler_process_s": processes["dicompyler"],
        },
        "jobs": [
            {
                "id": j.id,
                "dataset": j.dataset,
                "roi": j.roi_name,
                "contour_spacing": j.contour_spacing,
                "truth": j.truth,
            }
            for j in jobs
        ],
    }
    if args.interpolated:
        print("dicompyler-core interpolated...", file=sys.stderr)
        data["interpolated"] = run_dicompyler(python, example_jobs, {"interpolation_resolution": INTERPOLATION_MM})
        data["totals"]["dicompyler_interpolated_s"] = sum(r.get("seconds", 0.0) for r in data["interpolated"].values())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dicompyler.json").write_text(json.dumps(data, indent=1, default=float))
    write_report(data, jobs)
    print(REPORT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
