"""Command-line options shared by ``tightfit train`` and ``tightfit bench``: one option
per ``TrainConfig`` field — the fine-tune fields through ``tightfit.finetune.FLAGS``
(the same flags as ``tightfit plan``), the training-only ones here. Options not given
stay absent (argparse.SUPPRESS), so a preset or a resumed run's saved settings supply
them instead of argparse defaults."""

from __future__ import annotations

import argparse
from typing import Any

from ..finetune import FLAGS, add_finetune_arguments
from ..train.config import TrainConfig

# field -> (type, help); bool fields are flags
OPTIONS: dict[str, tuple[Any, str]] = {
    "model": (str, "bundled config (llama-tiny, llama-micro), smollm2-135m, a .gguf file, a model folder, or a hub id"),
    "data": (str, "comma list of text/JSONL files, folders, or corpus names (shakespeare)"),
    "data_max_chars": (int, "read only the first N characters of each file"),
    "steps": (int, "optimizer steps (the schedule's length)"),
    "max_steps": (int, "stop after this many steps; continue later with --resume"),
    "lr": (float, "AdamW-equivalent peak lr (Lion gets lr/3, torch-convention Adafactor its own relative step)"),
    "weight_decay": (float, "decoupled weight decay"),
    "schedule": (str, "cosine | linear | constant (after linear warmup)"),
    "warmup": (int, "warmup steps"),
    "min_lr_ratio": (float, "final lr as a fraction of the peak"),
    "clip": (float, "max gradient norm (0 = off)"),
    "seed": (int, "seed for init, data order and LoRA init"),
    "eval_fraction": (float, "fraction of blocks held out (every k-th block)"),
    "eval_every": (int, "held-out evaluation every N steps (and at the end)"),
    "eval_batches": (int, "held-out batches per evaluation"),
    "save_every": (int, "checkpoint every N steps (0 = only at the end)"),
    "keep_checkpoints": (int, "checkpoints kept (oldest deleted)"),
    "device": (str, "auto | cpu | cuda"),
}


def add_config_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig, skip: tuple[str, ...] = (),
                         title: str = "run settings (defaults in brackets)") -> None:
    group = parser.add_argument_group(title)
    for name, (kind, help_text) in OPTIONS.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        if kind is bool:
            group.add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS, help=help_text)
        else:
            shown = ",".join(default) if isinstance(default, list) else default
            group.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, metavar=name.split("_")[-1].upper(),
                               help=f"{help_text} [{shown}]")
    add_finetune_arguments(parser.add_argument_group("fine-tune settings (the same flags as tightfit plan)"),
                           defaults, suppress=True)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch (default: torch's choice). On a CPU shared with other jobs, "
                             "1 thread can be several times faster than 2 (no waiting at thread barriers)")


def apply_threads(args: argparse.Namespace) -> None:
    from ..train.errors import TrainInputError

    if args.threads is None:
        return
    if args.threads < 1:
        raise TrainInputError(f"--threads {args.threads} must be >= 1")
    import torch

    torch.set_num_threads(args.threads)


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given on the command line."""
    given = {name: getattr(args, name) for name in (*OPTIONS, *FLAGS) if hasattr(args, name)}
    if "data" in given:
        given["data"] = [part for part in given["data"].split(",") if part]
    return given
