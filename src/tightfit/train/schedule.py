"""Learning-rate schedules: linear warmup, then cosine or linear decay to
``min_ratio`` x the peak lr, as a ``LambdaLR`` (its state_dict resumes exactly)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import TrainInputError


def _cosine(progress: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * progress))


def _linear(progress: float) -> float:
    return 1 - progress


def _constant(progress: float) -> float:
    return 1.0


# name -> decay shape over progress in [0, 1] (1 -> 0 for decaying shapes)
SCHEDULES: dict[str, Callable[[float], float]] = {"cosine": _cosine, "linear": _linear, "constant": _constant}


def lr_factor(name: str, step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * SCHEDULES[name](progress)


def check_schedule(name: str, warmup: int, total: int) -> None:
    """Raise TrainInputError for a schedule that cannot run (before anything is written)."""
    if name not in SCHEDULES:
        raise TrainInputError(f"unknown schedule {name!r} (allowed: {', '.join(SCHEDULES)})")
    if warmup < 0 or warmup > total:
        raise TrainInputError(f"--warmup {warmup} must be between 0 and --steps {total}")


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup: int, total: int,
                    min_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    check_schedule(name, warmup, total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(name, step, warmup, total, min_ratio))
