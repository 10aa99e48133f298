"""The real ``tightfit`` console script, run with this tree's sources first on the path."""

import os
import shutil
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def script() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m tightfit``."""
    found = Path(sys.executable).parent / "tightfit"
    if found.exists():
        return [str(found)]
    which = shutil.which("tightfit")
    return [which] if which else [sys.executable, "-m", "tightfit"]


def script_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
