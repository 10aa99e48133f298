"""A Python that lacks some installed packages, as the GPU image lacks the peers.

Every entry of this interpreter's site-packages except the hidden distributions (their
modules and dist-info) is linked into a shadow folder, and a child Python starts without
the site module (``-S``) and adds only that folder: to it the hidden packages are not
installed at all (``import`` fails, ``importlib.util.find_spec`` and metadata find nothing).
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# import name -> distribution name, the packages the GPU image lacks or may lack
GPU_IMAGE_MAY_LACK = {"lion_pytorch": "lion_pytorch", "came_pytorch": "came_pytorch", "bitsandbytes": "bitsandbytes",
                      "torchao": "torchao", "peft": "peft"}


def _hidden(entry: Path, names: set[str]) -> bool:
    stem = entry.name.split("-")[0] if entry.name.endswith((".dist-info", ".egg-info")) else entry.name
    return stem.removesuffix(".py").lower().replace("-", "_") in names


def shadow_site(folder: Path, hide: set[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for site_dir in site.getsitepackages() + [site.getusersitepackages()]:
        if not Path(site_dir).is_dir():
            continue
        for entry in Path(site_dir).iterdir():
            link = folder / entry.name
            if not _hidden(entry, hide) and not link.exists():
                link.symlink_to(entry)
    return folder


def run_python_without(hide: set[str], code: str, folder: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python (cwd: the repo root, this worktree's src first on the
    path) where the ``hide`` packages are not installed."""
    shadow = shadow_site(folder, hide)
    prelude = f"import site, sys; site.addsitedir({str(shadow)!r}); sys.argv = ['-c']\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-S", "-c", prelude + code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
