"""Compile CUDA source to PTX with NVRTC through ctypes (the NVRTC wheels; no GPU, no CuPy).

Two wheels carry NVRTC: CUDA 12's ``nvidia-cuda-nvrtc-cu12`` (``nvidia/cuda_nvrtc/lib/libnvrtc.so.12``) and CUDA
13's ``nvidia-cuda-nvrtc`` 13 (``nvidia/cu13/lib/libnvrtc.so.13``). Each ``libnvrtc`` loads its
``libnvrtc-builtins`` at compile time; loaded by path, it finds it only when that library is already loaded
with RTLD_GLOBAL, so it is loaded first.
"""

from __future__ import annotations

import ctypes
import re
import sys
from pathlib import Path

#: Where each CUDA major version's wheel puts its libraries, under a ``nvidia`` folder of sys.path.
LAYOUTS = {12: "cuda_nvrtc/lib", 13: "cu13/lib"}


def nvrtc_libraries() -> dict[int, Path]:
    """``{CUDA major version: path of libnvrtc}`` for each NVRTC wheel installed."""
    found: dict[int, Path] = {}
    for entry in sys.path:
        for major, layout in LAYOUTS.items():
            library = Path(entry or ".") / "nvidia" / layout / f"libnvrtc.so.{major}"
            if major not in found and library.is_file():
                found[major] = library
    return found


def load_nvrtc(major: int | None = None):
    """The NVRTC library of CUDA ``major`` (the newest installed when None), or None where it is not installed."""
    libraries = nvrtc_libraries()
    if not libraries:
        return None
    major = max(libraries) if major is None else major
    if major not in libraries:
        return None
    library = libraries[major]
    builtins = sorted(
        (
            p
            for p in library.parent.glob(f"libnvrtc-builtins.so.{major}*")
            if re.fullmatch(rf"libnvrtc-builtins\.so\.{major}(\.\d+)*", p.name)
        ),
        key=lambda p: p.name,
    )
    for builtin in builtins[-1:]:
        ctypes.CDLL(str(builtin), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(str(library))


def compile_to_ptx(nvrtc, source: str, arch: str = "compute_80", extra: tuple[str, ...] = ()) -> tuple[bool, str]:
    """(compiled, log) for ``source``, with ``extra`` options (``-D...``) after the architecture and standard."""
    program = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"isodose.cu", 0, None, None) != 0:
        return False, "nvrtcCreateProgram failed"
    given = [f"--gpu-architecture={arch}", "-std=c++17", *extra]
    options = (ctypes.c_char_p * len(given))(*(o.encode() for o in given))
    result = nvrtc.nvrtcCompileProgram(program, len(given), options)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(max(size.value, 1))
    nvrtc.nvrtcGetProgramLog(program, log)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    return result == 0, log.value.decode(errors="replace").strip("\x00").strip()
