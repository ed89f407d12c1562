"""The GPU backend's host code over the CUDA kernels compiled for the CPU (emulation.h), for tests. Its
arrays are device.py's stand-ins for CuPy arrays, which NumPy will not take implicitly.

Every launch is checked against the kernel's parameter list in the CUDA source, as CuPy would need it: the
same number of arguments, each array of the parameter's element type, each scalar a NumPy scalar of the
parameter's exact type. On a GPU a 64-bit scalar given for an ``int`` parameter shifts every later argument;
on the CPU the calling convention hides it, so without this check the emulation could not catch it.
"""

from __future__ import annotations

import ctypes
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from isodose.kernels.cupy_gpu import BLOCK, SOURCE, GpuKernels, variant_build

from .device import DeviceArray, xp

HERE = Path(__file__).resolve().parent
_SCALARS = {
    np.dtype(np.int32): ctypes.c_int,
    np.dtype(np.int64): ctypes.c_longlong,
    np.dtype(np.float64): ctypes.c_double,
}
#: C types of kernel parameters (qualifiers removed) and the NumPy type an argument must have.
_PARAMETER_TYPES = {
    "float": np.float32,
    "double": np.float64,
    "int": np.int32,
    "long long": np.int64,
    "i64": np.int64,
    "u64": np.uint64,
    "unsigned long long": np.uint64,
}


def kernel_parameters(source: str) -> dict[str, list[tuple[str, np.dtype, bool]]]:
    """``{kernel: [(parameter, dtype, is_pointer), ...]}`` for each ``extern "C" __global__`` kernel."""
    kernels = {}
    for match in re.finditer(r'extern "C" __global__ void (?:[A-Z_]+ )?(\w+)\((.*?)\)\s*\{', source, re.S):
        parameters = []
        for declaration in match.group(2).split(","):
            words = declaration.replace("__restrict__", " ").replace("const", " ").replace("*", " * ").split()
            name, pointer = words[-1], "*" in words
            c_type = " ".join(word for word in words[:-1] if word != "*")
            if c_type not in _PARAMETER_TYPES:
                raise ValueError(f"{match.group(1)}: parameter {name} has a type ({c_type}) the check does not know")
            parameters.append((name, np.dtype(_PARAMETER_TYPES[c_type]), pointer))
        kernels[match.group(1)] = parameters
    return kernels


def check_arguments(name: str, parameters: list[tuple[str, np.dtype, bool]], args) -> None:
    """Raise TypeError unless ``args`` match the kernel's ``parameters`` exactly (see the module's text)."""
    if len(args) != len(parameters):
        raise TypeError(f"{name}: {len(args)} arguments for {len(parameters)} parameters")
    for arg, (parameter, dtype, pointer) in zip(args, parameters):
        if pointer and not (isinstance(arg, DeviceArray) and arg.dtype == dtype):
            raise TypeError(f"{name}: {parameter} needs a device array of {dtype}, got {_describe(arg)}")
        if not pointer and not (isinstance(arg, np.generic) and arg.dtype == dtype):
            raise TypeError(f"{name}: {parameter} needs a NumPy {dtype} scalar, got {_describe(arg)}")


def _describe(arg) -> str:
    if isinstance(arg, (np.ndarray, np.generic, DeviceArray)):
        return f"{type(arg).__name__} of {arg.dtype}"
    return type(arg).__name__


def build(out_dir: Path, variants: tuple[str, ...] = ()) -> Path | None:
    """Compile the emulated kernels, with ``variants`` of cell_histograms_kernel (see ``cupy_gpu.VARIANTS``), into a
    shared library; None when there is no C++ compiler."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        return None
    options, _ = variant_build(variants)
    library = out_dir / ("isodose_emulated" + "".join(f"_{v}" for v in variants) + ".so")
    subprocess.run(
        [
            compiler,
            "-O1",
            "-std=c++17",
            "-shared",
            "-fPIC",
            "-Wall",
            "-Werror",
            *options,
            "-o",
            str(library),
            str(HERE / "emulation.cpp"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return library


def emulated_kernels(library: Path, variants: tuple[str, ...] = ()) -> GpuKernels:
    """The GPU backend over ``library`` (built by :func:`build` with the same ``variants``)."""
    lib = ctypes.CDLL(str(library))
    signatures = kernel_parameters(SOURCE.read_text())
    _, blocks = variant_build(variants)

    def launch(name: str, n_threads: int, args) -> None:
        check_arguments(name, signatures[name], args)
        converted = []
        for arg in args:
            if isinstance(arg, DeviceArray):
                assert arg.flags.c_contiguous, name
                converted.append(ctypes.c_void_p(arg.data.ctypes.data))
            else:
                converted.append(_SCALARS[np.asarray(arg).dtype](arg))
        block = blocks.get(name, BLOCK)
        getattr(lib, f"emulate_{name}")(ctypes.c_uint(math.ceil(n_threads / block)), ctypes.c_uint(block), *converted)

    variant = f" (variants {', '.join(variants)})" if variants else ""
    return GpuKernels(xp, launch, "CUDA kernels emulated on the CPU" + variant)
