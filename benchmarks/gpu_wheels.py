"""The wheels a GPU run carries to the device, and what one device call may carry.

The device's image (Python 3.12, x86-64, torch 2.11, transformers, peft) lacks the peers
the GPU benchmarks and tests compare against, and it reaches no package index: they
travel as wheels in ``.whl/`` (git-ignored), installed there by ``gpu_all.sh``. A call
carries at most 64 MiB: the working tree plus carried paths.

    python3 benchmarks/gpu_wheels.py fetch [--dest .whl]   # download, check, report sizes
    python3 benchmarks/gpu_wheels.py check [--dest .whl]   # check what is there, report sizes
"""

from __future__ import annotations

import argparse
import email.parser
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging import tags
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 64 * 2**20  # the working tree plus carried paths, per device call

# One pinned version each: two versions of a name in .whl/ stop the whole install.
PINS = {"bitsandbytes": "0.50.2", "torchao": "0.18.0", "lion-pytorch": "0.2.5", "came-pytorch": "0.1.3"}

PYTHON = "3.12"
# manylinux_2_N for N up to 28: the image's own torch wheel is manylinux_2_28, so its glibc
# is at least 2.28; pip matches each platform tag exactly, so every N is listed.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(17, 29)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
# Every tag pip on the image would accept, in packaging's own order.
SUPPORTED = frozenset(list(tags.cpython_tags((3, 12), abis=["cp312"], platforms=PLATFORMS))
                      + list(tags.compatible_tags((3, 12), "cp312", platforms=PLATFORMS)))

# What the image already holds (the device tool's KINDS.md package list), so a wheel's
# requirement on it needs no wheel of its own.
ON_IMAGE = {"torch", "numpy", "packaging", "typing-extensions", "setuptools", "einops", "safetensors", "psutil",
            "pyyaml", "transformers", "peft", "accelerate", "triton", "filelock", "sympy", "networkx", "jinja2",
            "fsspec", "huggingface-hub", "tqdm", "scipy"}
MARKER_ENV = {"python_version": PYTHON, "python_full_version": f"{PYTHON}.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def pip_download_command(dest: Path) -> list[str]:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               PYTHON, "--implementation", "cp", "--abi", "cp312", "-d", str(dest)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    return command + [f"{name}=={version}" for name, version in PINS.items()]


def requirements(wheel: Path) -> list[str]:
    """Distribution names the wheel needs on the image (extras and other platforms left out)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.parser.Parser().parsestr(archive.read(metadata).decode())
    needed = []
    for line in message.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is None or Marker(str(requirement.marker)).evaluate(MARKER_ENV):
            needed.append(canonicalize_name(requirement.name))
    return needed


def problems(wheels: list[Path]) -> list[str]:
    """Everything that would stop or spoil the install on the device; empty when none."""
    found: dict[str, list[str]] = {}
    errors = []
    for wheel in wheels:
        name, version, _, wheel_tags = parse_wheel_filename(wheel.name)
        found.setdefault(name, []).append(str(version))
        if not wheel_tags & SUPPORTED:
            errors.append(f"{wheel.name}: no tag installs on CPython {PYTHON} x86-64 (tags: "
                          f"{', '.join(sorted(map(str, wheel_tags)))})")
        for needed in requirements(wheel):
            if needed not in ON_IMAGE and needed not in {canonicalize_name(n) for n in PINS}:
                errors.append(f"{wheel.name} requires {needed}, which is neither on the image nor fetched")
    for name, version in PINS.items():
        versions = found.get(canonicalize_name(name), [])
        if versions != [version]:
            errors.append(f"{name}: want exactly {version}, found {versions or 'none'}")
    errors += [f"unexpected wheel {name} {v}" for name, v in found.items() if name not in
               {canonicalize_name(n) for n in PINS}]
    return errors


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what a device call sends: tracked plus untracked, not ignored, files."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, check=True).stdout.decode().split("\0")
    return sum((root / name).stat().st_size for name in listing if name and (root / name).is_file())


def size_report(wheels: list[Path], tree: int, limit: int = LIMIT_BYTES) -> tuple[str, bool]:
    """A table of the wheel sizes, the tree and their sum against ``limit``; and whether it fits."""
    mib = 2**20
    lines = [f"  {w.name:76s} {w.stat().st_size / mib:7.2f} MiB" for w in sorted(wheels)]
    wheel_total = sum(w.stat().st_size for w in wheels)
    total = wheel_total + tree
    fits = total <= limit
    lines += [f"  {'wheels':76s} {wheel_total / mib:7.2f} MiB",
              f"  {'working tree (tracked + untracked, not ignored)':76s} {tree / mib:7.2f} MiB",
              f"  {'total carried by one device call':76s} {total / mib:7.2f} MiB of {limit / mib:.0f} MiB"
              + ("" if fits else f"  OVER by {(total - limit) / mib:.2f} MiB")]
    return "\n".join(lines), fits


def fetch(dest: Path) -> list[str]:
    """Download the pinned wheels into a fresh folder, check them, then replace ``dest``'s wheels."""
    staging = Path(tempfile.mkdtemp(prefix=".whl-", dir=dest.parent))
    try:
        done = subprocess.run(pip_download_command(staging))
        if done.returncode:
            return [f"pip download failed (exit {done.returncode}); {dest} left as it was"]
        found = problems(sorted(staging.glob("*.whl")))
        if found:
            return found + [f"{dest} left as it was"]
        dest.mkdir(exist_ok=True)
        for old in dest.glob("*.whl"):
            old.unlink()
        for wheel in staging.glob("*.whl"):
            shutil.move(str(wheel), dest / wheel.name)
        return []
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("fetch", "check"))
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl")
    args = parser.parse_args(argv)
    dest = args.dest.resolve()
    errors = fetch(dest) if args.action == "fetch" else []
    wheels = sorted(dest.glob("*.whl"))
    if not errors:
        errors = problems(wheels)
    report, fits = size_report(wheels, tree_bytes())
    print(report)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if not fits:
        print("error: too large for one device call: carry fewer wheels", file=sys.stderr)
    return 1 if errors or not fits else 0


if __name__ == "__main__":
    sys.exit(main())
