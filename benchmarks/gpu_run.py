"""What every GPU benchmark script shares: its command line, the CUDA check, run facts."""

from __future__ import annotations

import argparse
import datetime
import importlib
import sys
from typing import Callable

import torch


def version_of(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except Exception as error:  # not installed, or broken: the row says so
        return f"unavailable ({type(error).__name__})"


def parse_args(doc: str, argv, *, steps: int, warmup: int,
               add_arguments: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """The script's own arguments plus --steps, --warmup and --only (name substrings)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--only", nargs="*", help="substrings of the optimizer names to run")
    return parser.parse_args(argv)


def cuda_missing(script: str, why: str) -> bool:
    """True (after saying why on stderr) when there is no CUDA GPU to measure on."""
    if torch.cuda.is_available():
        return False
    print(f"{script} needs a CUDA GPU (torch.cuda.is_available() is False): {why}", file=sys.stderr)
    return True


def selected(name: str, only: list[str] | None) -> bool:
    return not only or any(s.lower() in name.lower() for s in only)


def run_facts(modules: list[str], **extra) -> dict:
    """Device, date and versions for every row of a result table."""
    facts = {**extra, "device": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
             "torch": torch.__version__}
    facts.update({module: version_of(module) for module in modules})
    return facts
