"""The GPU backend's host code over the CUDA kernels compiled for the CPU (emulation.h), for tests."""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np

from isodose.kernels.cupy_gpu import BLOCK, GpuKernels

HERE = Path(__file__).resolve().parent
_SCALARS = {np.dtype(np.int32): ctypes.c_int, np.dtype(np.int64): ctypes.c_longlong,
            np.dtype(np.float64): ctypes.c_double}


def build(out_dir: Path) -> Path | None:
    """Compile the emulated kernels into a shared library; None when there is no C++ compiler."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        return None
    library = out_dir / "isodose_emulated.so"
    subprocess.run([compiler, "-O1", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(library),
                    str(HERE / "emulation.cpp")], check=True, capture_output=True, text=True)
    return library


def emulated_kernels(library: Path) -> GpuKernels:
    lib = ctypes.CDLL(str(library))

    def launch(name: str, n_threads: int, args) -> None:
        converted = []
        for arg in args:
            if isinstance(arg, np.ndarray):
                assert arg.flags.c_contiguous, name
                converted.append(ctypes.c_void_p(arg.ctypes.data))
            else:
                converted.append(_SCALARS[np.asarray(arg).dtype](arg))
        getattr(lib, f"emulate_{name}")(ctypes.c_uint(math.ceil(n_threads / BLOCK)), ctypes.c_uint(BLOCK), *converted)

    return GpuKernels(np, launch, "CUDA kernels emulated on the CPU")
