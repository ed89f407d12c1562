from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from isodose.dicom.write import write_dose, write_structures
from isodose.dispatch import cuda_usable
from isodose.phantoms import LinearField, contour_shape

NELMS = Path(os.environ.get("ISODOSE_NELMS", Path(__file__).resolve().parents[2] / "shared/validation/nelms2015"))


def pytest_collection_modifyitems(config, items):
    if cuda_usable():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def emulated_gpu(tmp_path_factory):
    """The GPU backend's host code over its CUDA kernels compiled for the CPU (tests/cuda), built once."""
    from .cuda.emulated import build, emulated_kernels

    library = build(tmp_path_factory.mktemp("cuda"))
    if library is None:
        pytest.skip("no C++ compiler to build the emulated kernels")
    return emulated_kernels(library)


@pytest.fixture(scope="session")
def nelms_path() -> Path:
    if not (NELMS / "analytical.csv").is_file():
        pytest.skip(f"Nelms 2015 set not found at {NELMS}")
    return NELMS


@pytest.fixture(scope="session")
def nelms_values(nelms_path):
    """The whole Nelms set computed by isodose on Numba, once per test session."""
    from isodose.validation import run_nelms

    return run_nelms(nelms_path, backend="numba")


@pytest.fixture(scope="session")
def nelms_reference(nelms_path):
    """``reference(case) -> (grid, structures, rois, dvhs)``: a Nelms case read, and its DVHs on the NumPy
    reference, each computed once per test session (several modules compare backends against them)."""
    from isodose.dicom.read import read_dose, read_structures
    from isodose.dvh import compute_dvhs

    cache: dict = {}

    def reference(case):
        key = (case.grid_name, case.structure)
        if key not in cache:
            grid = read_dose(nelms_path / "dose_grids" / f"{case.grid_name}.dcm")
            structures = read_structures(nelms_path / "structures" / f"{case.structure}.dcm")
            rois = [s.name for s in structures.structures if not s.is_empty]
            cache[key] = grid, structures, rois, compute_dvhs(grid, structures, rois, backend="numpy")
        return cache[key]

    return reference


@pytest.fixture(scope="session")
def generated_cohort(tmp_path_factory):
    """``generated_cohort(n_cases, seed) -> manifest``: a synthetic recurrence cohort (DICOM files, manifest.csv
    and truth.csv in one folder), generated once per test session. Shared: a test that changes its files works
    on a copy (:func:`copy_cohort`)."""
    from isodose.cohort.synthetic import generate_cohort

    made: dict[tuple[int, int], Path] = {}

    def make(n_cases: int, seed: int) -> Path:
        if (n_cases, seed) not in made:
            folder = tmp_path_factory.mktemp(f"cohort-{n_cases}-{seed}") / "data"
            made[n_cases, seed] = generate_cohort(folder, n_cases, seed=seed, workers=2)
        return made[n_cases, seed]

    return make


def copy_cohort(manifest: Path, into: Path) -> Path:
    """A copy of a generated cohort's folder at ``into`` (times kept, as ``cp -p``); its manifest."""
    import shutil

    shutil.copytree(manifest.parent, into)
    return into / manifest.name


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20151)


def linear_grid(
    gradient=(0.0, -1.0, 0.0),
    dose_gy=100.0,
    origin=(-40.0, -40.0, -40.0),
    spacing=(2.5, 2.5, 2.5),
    shape=(33, 33, 33),
    frame_uid="1.2.3.4",
):
    field = LinearField(dose_gy, gradient, (0.0, 0.0, 0.0))
    return field, field.grid(origin, spacing, shape, frame_uid)


@pytest.fixture
def write_phantom(tmp_path):
    """Write a shape in a linear field as RTDOSE + RTSTRUCT; returns (dose path, structure path, field)."""

    def write(shape, *, gradient=(0.0, -1.0, 0.0), spacing_mm=2.0, name="Target", dose_kwargs=None, grid=None):
        field, dose_grid = linear_grid(gradient)
        if grid is not None:
            dose_grid = grid
        structure = contour_shape(shape, name, 1, spacing_mm)
        rd = write_dose(dose_grid, tmp_path / "RD.dcm", frame_of_reference_uid="1.2.3.4", **(dose_kwargs or {}))
        rs = write_structures([structure], tmp_path / "RS.dcm", frame_of_reference_uid="1.2.3.4")
        return rd, rs, field

    return write


@pytest.fixture(scope="session")
def dicompyler_example(request):
    """dicompyler-core's example patient (RTDOSE with the planning system's DVHs, RTSTRUCT, RTPLAN of one
    patient), from its source distribution on the package registry, cached between runs; skipped offline."""
    folder = Path(request.config.cache.mkdir("dicompyler-core-0.5.6"))
    wanted = ("rtdose.dcm", "rtss.dcm", "rtplan.dcm")
    if not all((folder / name).is_file() for name in wanted):
        download = folder / "download"
        try:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "--dest",
                    str(download),
                    "dicompyler-core==0.5.6",
                ],
                check=True,
                capture_output=True,
                timeout=180,
            )
            [archive] = download.glob("dicompyler*core-0.5.6.tar.gz")
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    name = Path(member.name).name
                    if "example_data" in member.name and name in wanted:
                        (folder / name).write_bytes(tar.extractfile(member).read())
        except (subprocess.SubprocessError, OSError, ValueError, tarfile.TarError) as exc:
            pytest.skip(f"dicompyler-core's example patient cannot be fetched here ({type(exc).__name__})")
    return {name.split(".")[0]: folder / name for name in wanted}
