"""``TrainConfig``: every knob of a training run, shared by ``tightfit train`` and the bench.

It extends ``tightfit.finetune.FineTune`` (model, method, optimizer, precision, LoRA,
loss, checkpointing, offloading, micro-batch, sequence, accumulation: what ``tightfit
plan`` plans) with the training-only knobs (data, schedule, evaluation, checkpoints).
Fields in ``RESUME_FREE`` may change between a run and its ``--resume``; any other
difference would break resume-exactness, so resuming with one is refused.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..finetune import FineTune, check_finetune, from_dict
from .errors import TrainInputError


@dataclass
class TrainConfig(FineTune):
    data: list[str] = field(default_factory=lambda: ["shakespeare"])
    data_max_chars: int | None = None  # per file; None = whole files
    out: str | None = None
    steps: int = 100  # the schedule's length
    max_steps: int | None = None  # stop after this many steps (continue later with resume)
    lr: float = 1e-3  # AdamW-equivalent peak lr (see peers.LR_RULES)
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: int = 10
    min_lr_ratio: float = 0.1
    clip: float = 1.0  # max grad norm; 0 = off
    seed: int = 0
    eval_fraction: float = 0.02
    eval_every: int = 50
    eval_batches: int = 8
    save_every: int = 50  # 0 = only the last step's checkpoint
    checkpoints: bool = True  # False: no checkpoints at all (bench runs)
    keep_checkpoints: int = 2
    save_final: bool = True
    device: str = "auto"
    resume: bool = False
    progress: bool = True

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> "TrainConfig":
        """A config from a saved run_config.json (older runs: legacy names mapped, and the
        fp32 precision they ran with)."""
        fine = from_dict(data, FineTune(precision="fp32") if "precision" not in data else None)
        rest = {k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(cls)}}
        return cls(**{**rest, **fine.__dict__})


RESUME_FREE = {"out", "max_steps", "resume", "progress", "save_every", "keep_checkpoints", "checkpoints", "device"}


def check_sizes(config: TrainConfig) -> None:
    try:
        check_finetune(config)
    except ValueError as err:
        raise TrainInputError(str(err)) from None
    for name in ("seq", "batch_size", "grad_accum", "steps", "eval_batches"):
        value = getattr(config, name)
        if value < 1:
            raise TrainInputError(f"--{name.replace('_', '-')} {value} must be >= 1")
    if config.max_steps is not None and config.max_steps < 1:
        raise TrainInputError(f"--max-steps {config.max_steps} must be >= 1")
    if config.lr <= 0:
        raise TrainInputError(f"--lr {config.lr} must be > 0")
    if config.clip < 0:
        raise TrainInputError(f"--clip {config.clip} must be >= 0 (0 = off)")
    if config.method in ("lora", "qlora") and (config.lora_r < 1 or config.lora_alpha <= 0):
        raise TrainInputError(f"--lora-r {config.lora_r} must be >= 1 and --lora-alpha {config.lora_alpha} > 0")
    if not 0 <= config.lora_dropout < 1:
        raise TrainInputError(f"--lora-dropout {config.lora_dropout} must be in [0, 1)")


def write_run_config(out: Path, config: TrainConfig) -> None:
    (out / "run_config.json").write_text(json.dumps(config.to_dict(), indent=2))


def check_resume_config(out: Path, config: TrainConfig) -> None:
    """Refuse to resume with settings that would change the result."""
    path = out / "run_config.json"
    if not path.exists():
        raise TrainInputError(f"--resume: {out} has no run_config.json (not a tightfit train output folder)")
    saved = TrainConfig.from_saved(json.loads(path.read_text())).to_dict()
    now = config.to_dict()
    changed = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in now if k not in RESUME_FREE and saved.get(k) != now[k]]
    if changed:
        raise TrainInputError(f"--resume with different settings than the run in {out}: {'; '.join(changed)}")
