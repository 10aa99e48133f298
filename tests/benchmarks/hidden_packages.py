"""A Python that lacks some installed packages, as the GPU image lacks the peers.

A virtual environment without system site-packages gets, through one .pth line, a shadow
folder that links every entry of this interpreter's site-packages except the hidden
distributions (modules and dist-info). To it and to every Python it starts (scripts use
``sys.executable``; ``python3`` is its own on PATH) the hidden packages are not installed:
``import`` fails, and ``importlib.util.find_spec`` and the metadata find nothing.
"""

from __future__ import annotations

import os
import site
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# import names of the packages the GPU image lacks or may lack
GPU_IMAGE_MAY_LACK = ("lion_pytorch", "came_pytorch", "bitsandbytes", "torchao", "peft")


def _hidden(entry: Path, names: set[str]) -> bool:
    stem = entry.name.split("-")[0] if entry.name.endswith((".dist-info", ".egg-info")) else entry.name
    return stem.removesuffix(".py").lower().replace("-", "_") in names


def environment_without(hide: set[str], folder: Path) -> dict[str, str]:
    """Environment variables under which ``python3`` is a Python lacking ``hide``."""
    shadow = folder / "shadow"
    shadow.mkdir(parents=True)
    for site_dir in site.getsitepackages() + [site.getusersitepackages()]:
        if Path(site_dir).is_dir():
            for entry in Path(site_dir).iterdir():
                if not _hidden(entry, hide) and not (shadow / entry.name).exists():
                    (shadow / entry.name).symlink_to(entry)
    env_dir = folder / "venv"
    venv.create(env_dir, system_site_packages=False, with_pip=False, symlinks=True)
    (site_packages,) = env_dir.glob("lib/python*/site-packages")
    (site_packages / "shadow.pth").write_text(f"import site; site.addsitedir({str(shadow)!r})\n")
    return {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT / "src"), "VIRTUAL_ENV": str(env_dir)}


def run_without(command: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``command`` from the repo root under an ``environment_without(...)``."""
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
