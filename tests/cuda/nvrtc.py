"""Compile CUDA source to PTX with NVRTC through ctypes (the nvidia-cuda-nvrtc wheel; no GPU, no CuPy)."""

from __future__ import annotations

import ctypes
import importlib.util
import os


def load_nvrtc():
    """The NVRTC library, or None where it is not installed."""
    try:
        spec = importlib.util.find_spec("nvidia.cuda_nvrtc")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    lib_dir = os.path.join(list(spec.submodule_search_locations)[0], "lib")
    names = sorted(n for n in os.listdir(lib_dir) if n.startswith("libnvrtc.so")) if os.path.isdir(lib_dir) else []
    return ctypes.CDLL(os.path.join(lib_dir, names[0])) if names else None


def compile_to_ptx(nvrtc, source: str, arch: str = "compute_80") -> tuple[bool, str]:
    """(compiled, log) for ``source``."""
    program = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"isodose.cu", 0, None, None) != 0:
        return False, "nvrtcCreateProgram failed"
    options = (ctypes.c_char_p * 2)(f"--gpu-architecture={arch}".encode(), b"-std=c++17")
    result = nvrtc.nvrtcCompileProgram(program, 2, options)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(max(size.value, 1))
    nvrtc.nvrtcGetProgramLog(program, log)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    return result == 0, log.value.decode(errors="replace").strip("\x00").strip()
