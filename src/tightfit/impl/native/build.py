"""Compile step_kernel.cpp on first use and load it with ctypes.

The shared library is cached under ``$TIGHTFIT_CACHE`` (default
``~/.cache/tightfit/native``) named by a hash of the source, the flags, the compiler
and this CPU's feature flags (``-march=native`` code must not run on another CPU).
It is written to a temporary file and renamed into place, so concurrent processes
(pytest workers) never load a half-written library. A failed build is remembered as
a reason string; nothing here raises at import time.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

SOURCE = Path(__file__).with_name("step_kernel.cpp")
# -ffp-contract=off: no fused multiply-add, so the math rounds like the PyTorch rule.
# -fno-math-errno: sqrt without errno checks (vectorizes; results unchanged).
FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-math-errno",
         "-std=c++17", "-shared", "-fPIC"]
COMPILERS = ("c++", "g++", "clang++")
ABI_VERSION = 5


def cache_dir() -> Path:
    root = os.environ.get("TIGHTFIT_CACHE")
    return Path(root) / "native" if root else Path.home() / ".cache" / "tightfit" / "native"


def _cpu_fingerprint() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return os.uname().machine


def _compiler_version(compiler: str) -> str:
    out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else compiler


def _find_compiler() -> str | None:
    env = os.environ.get("CXX")
    for name in ((env,) if env else ()) + COMPILERS:
        if shutil.which(name):
            return name
    return None


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=target.parent)
    os.close(fd)
    try:
        out = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp],
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"{compiler} failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: readers see the old state or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    from .jobs import TfJob, TfState  # the struct layout must agree with the C side

    lib.tf_abi_version.restype = ctypes.c_int
    lib.tf_job_size.restype = ctypes.c_int
    lib.tf_step.argtypes = [ctypes.POINTER(TfJob)]
    lib.tf_step.restype = ctypes.c_int
    lib.tf_adafactor_sumsq.argtypes = [ctypes.POINTER(TfJob)]
    lib.tf_adafactor_sumsq.restype = ctypes.c_double
    lib.tf_factored_stats.argtypes = [ctypes.POINTER(TfJob), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.tf_factored_stats.restype = ctypes.c_int
    lib.tf_factored_sumsq.argtypes = [ctypes.POINTER(TfJob)]
    lib.tf_factored_sumsq.restype = ctypes.c_double
    lib.tf_came_instability.argtypes = [ctypes.POINTER(TfJob), ctypes.c_void_p, ctypes.c_void_p]
    lib.tf_came_instability.restype = None
    for codec_pass in (lib.tf_decode, lib.tf_encode):
        codec_pass.argtypes = [ctypes.POINTER(TfState), ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
        codec_pass.restype = None
    if lib.tf_abi_version() != ABI_VERSION or lib.tf_job_size() != ctypes.sizeof(TfJob):
        raise RuntimeError(f"kernel ABI mismatch (version {lib.tf_abi_version()}, job size "
                           f"{lib.tf_job_size()} vs {ctypes.sizeof(TfJob)})")
    return lib


@lru_cache(maxsize=None)
def load_kernel() -> tuple[ctypes.CDLL | None, str | None]:
    """(library, None) or (None, why it is unavailable). Built once per process."""
    compiler = _find_compiler()
    if compiler is None:
        return None, f"no C++ compiler found (tried $CXX and {list(COMPILERS)})"
    try:
        source = SOURCE.read_bytes()
        key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(),
                                         _compiler_version(compiler).encode(),
                                         _cpu_fingerprint().encode()])).hexdigest()[:20]
        target = cache_dir() / f"step_kernel-{key}.so"
        if not target.exists():
            _build(compiler, target)
        return _bind(ctypes.CDLL(str(target))), None
    except Exception as exc:  # any failure means "unavailable", never a crash
        return None, f"native CPU kernel unavailable: {type(exc).__name__}: {exc}"
