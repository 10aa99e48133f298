"""Compile the native kernel (csrc/) on first use and load it with ctypes.

The sources are split by concern: abi.h (the structs Python fills), dtypes, codecs,
reductions, one header per rule tile in csrc/rules/ and the step driver. build.py
lists rules/*.h into a generated ``tiles.gen.h`` (each tile registers itself by its
file name; Python asks ``tf_rule_tile(name)`` for its id), then compiles every .cpp
into one shared library.

One library per instruction-set level (ISA_LEVELS: ``avx512vbmi``, ``avx512``, ``avx2``,
``portable``), built for the level chosen at load time from this CPU's features
(/proc/cpuinfo), or forced with ``TIGHTFIT_NATIVE_ISA=avx512vbmi|avx512|avx2|portable``
(e.g. to measure the AVX2 path on an AVX-512 machine). The codecs have hand-written vector paths per level (codecs.cpp);
the tiles are auto-vectorized for it. Results are identical across levels.

The library is cached under ``$TIGHTFIT_CACHE`` (default ``~/.cache/tightfit/native``)
named by a hash of every file under csrc/, the flags, the compiler and this CPU's
feature flags. It is written to a temporary file and renamed into place, so concurrent
processes (pytest workers) never load a half-written library. A failed build is
remembered as a reason string; nothing here raises at import time, except for a
TIGHTFIT_NATIVE_ISA that names no level or one this CPU lacks (ValueError).
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

SOURCE_DIR = Path(__file__).with_name("csrc")
# -ffp-contract=off: no fused multiply-add, so the math rounds like the PyTorch rule.
# -fno-math-errno: sqrt without errno checks (vectorizes; results unchanged).
FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC"]
ISA_ENV = "TIGHTFIT_NATIVE_ISA"
# level -> (CPU flags it needs, compiler flags), best first; "portable" is the compiler's
# baseline for the machine (any CPU it runs on).
AVX512_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c")
ISA_LEVELS: dict[str, tuple[tuple[str, ...], list[str]]] = {
    # VBMI (Ice Lake, Zen 4 and later): the 8-bit decode by byte permutes (csrc/quant_vbmi.h)
    "avx512vbmi": ((*AVX512_FLAGS, "avx512vbmi"), ["-march=x86-64-v4", "-mavx512vbmi", "-mprefer-vector-width=512"]),
    "avx512": (AVX512_FLAGS, ["-march=x86-64-v4", "-mprefer-vector-width=512"]),
    "avx2": (("avx2", "fma", "f16c", "bmi2"), ["-march=x86-64-v3"]),
    "portable": ((), []),
}
COMPILERS = ("c++", "g++", "clang++")
ABI_VERSION = 7


def cache_dir() -> Path:
    root = os.environ.get("TIGHTFIT_CACHE")
    return Path(root) / "native" if root else Path.home() / ".cache" / "tightfit" / "native"


def cpu_flags() -> set[str]:
    """This CPU's feature flags (x86: /proc/cpuinfo ``flags``; empty when unknown)."""
    if os.uname().machine not in ("x86_64", "AMD64"):
        return set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_isa(flags: set[str], forced: str | None = None) -> str:
    """The best level whose flags ``flags`` has, or ``forced`` (checked against them)."""
    if forced:
        if forced not in ISA_LEVELS:
            raise ValueError(f"{ISA_ENV}={forced!r} is not a level; allowed: {', '.join(ISA_LEVELS)}")
        missing = [f for f in ISA_LEVELS[forced][0] if f not in flags]
        if missing:
            raise ValueError(f"{ISA_ENV}={forced!r} needs CPU flags this CPU lacks: {', '.join(missing)}")
        return forced
    return runnable_levels(flags)[0]  # "portable" needs nothing


def runnable_levels(flags: set[str] | None = None) -> list[str]:
    """The levels whose CPU flags ``flags`` (default: this CPU's) has, best first."""
    flags = cpu_flags() if flags is None else flags
    return [level for level, (needs, _) in ISA_LEVELS.items() if all(f in flags for f in needs)]


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


def source_files(root: Path) -> list[Path]:
    """Every file under csrc/, in a fixed order (all of them feed the cache key)."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def tile_names(root: Path) -> list[str]:
    """The rule tiles present: one per csrc/rules/<name>.h."""
    return sorted(p.stem for p in (root / "rules").glob("*.h"))


def tiles_header(root: Path) -> str:
    """tiles.gen.h: includes every tile and lists them for step.cpp's table (id = place)."""
    names = tile_names(root)
    return ("// Generated by impl/native/build.py from csrc/rules/*.h; do not edit.\n#pragma once\n"
            + "".join(f'#include "rules/{n}.h"\n' for n in names)
            + "#define TF_TILES(X) " + " ".join(f"X({n})" for n in names) + "\n")


def source_key(root: Path, flags: list[str], compiler_version: str) -> str:
    digest = hashlib.sha256()
    for path in source_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    for part in (" ".join(flags), compiler_version, _cpu_fingerprint()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:20]


def _build(compiler: str, root: Path, target: Path, flags: list[str]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=target.parent)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(prefix="tightfit-build-") as gen:
            Path(gen, "tiles.gen.h").write_text(tiles_header(root))
            units = [str(p) for p in sorted(root.glob("*.cpp"))]
            out = subprocess.run([compiler, *flags, f"-I{root}", f"-I{gen}", *units, "-o", tmp],
                                 capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"{compiler} failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: readers see the old state or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    from .jobs import TfJob, TfState  # the struct layout must agree with the C side

    lib.tf_abi_version.restype = ctypes.c_int
    lib.tf_isa.restype = ctypes.c_char_p
    lib.tf_job_size.restype = ctypes.c_int
    lib.tf_rule_tile.argtypes = [ctypes.c_char_p]
    lib.tf_rule_tile.restype = ctypes.c_int
    lib.tf_step.argtypes = [ctypes.POINTER(TfJob)]
    lib.tf_step.restype = ctypes.c_int
    lib.tf_step_many.argtypes = [ctypes.POINTER(TfJob), ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int32)]
    lib.tf_step_many.restype = None
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


def isa() -> str:
    """The instruction-set level the kernel is built for in this process."""
    return choose_isa(cpu_flags(), os.environ.get(ISA_ENV) or None)


def load_kernel() -> tuple[ctypes.CDLL | None, str | None]:
    """(library, None) or (None, why it is unavailable), for this process's level (isa())."""
    return load_level(isa())  # a bad TIGHTFIT_NATIVE_ISA raises: it is the user's explicit request


@lru_cache(maxsize=None)
def load_level(level: str) -> tuple[ctypes.CDLL | None, str | None]:
    """The library built for ``level`` (one of ISA_LEVELS); built once per process."""
    compiler = _find_compiler()
    if compiler is None:
        return None, f"no C++ compiler found (tried $CXX and {list(COMPILERS)})"
    try:
        flags = FLAGS + ISA_LEVELS[level][1]
        key = source_key(SOURCE_DIR, flags, _compiler_version(compiler))
        target = cache_dir() / f"step_kernel-{level}-{key}.so"
        if not target.exists():
            _build(compiler, SOURCE_DIR, target, flags)
        lib = _bind(ctypes.CDLL(str(target)))
        if lib.tf_isa().decode() != level:
            raise RuntimeError(f"built for {level!r} but the library reports {lib.tf_isa().decode()!r}")
        return lib, None
    except Exception as exc:  # any failure means "unavailable", never a crash
        return None, f"native CPU kernel unavailable: {type(exc).__name__}: {exc}"


@lru_cache(maxsize=None)
def tile_id(name: str) -> int:
    """The kernel's id of the rule tile ``name`` (csrc/rules/<name>.h), -1 when it has none."""
    lib, why = load_kernel()
    if lib is None:
        raise RuntimeError(why)
    return lib.tf_rule_tile(name.encode())
