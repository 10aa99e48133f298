"""Atomic, resumable checkpoints.

A checkpoint folder ``<out>/checkpoints/step-00000040`` holds the trainable tensors (the
adapter for LoRA/QLoRA, every parameter for full fine-tuning), the optimizer and
scheduler state_dicts, the RNG states (python, numpy, torch, cuda) and ``state.json``
(step, micro-batch position, tokens seen). It is written under a temporary name in the
same folder and renamed into place, so a kill mid-write never leaves a checkpoint that
looks complete; ``latest_checkpoint`` ignores temporary folders and ``clean_temporary``
removes those a kill left behind. ``state.json`` is written last and holds the SHA-256
of every other file, so a truncated, zero-filled or bit-flipped file is detected on
resume: ``choose_checkpoint`` then moves the damaged folder aside (``damaged-step-*``,
nothing deleted) and falls back to the previous complete checkpoint.

Files are written and read with ``torch.save``/``torch.load(weights_only=False)``: they
are this run's own files, and third-party optimizer state_dicts (bitsandbytes) hold
Python objects that ``weights_only`` refuses.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEP_DIR = re.compile(r"^step-(\d{8})$")
TEMPORARY = (".tmp-step-", ".tmp-final-")  # prefixes of folders being written (ours only)
TENSOR_FILES = ("trainable.pt", "optimizer.pt", "scheduler.pt", "rng.pt")


def checkpoints_dir(out: Path) -> Path:
    return out / "checkpoints"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, step: int, model: torch.nn.Module, optimizer, scheduler,
                    progress: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep``."""
    root = checkpoints_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:08d}-", dir=root))
    try:
        torch.save(trainable_state(model), tmp / "trainable.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        checksums = {name: sha256(tmp / name) for name in TENSOR_FILES}
        (tmp / "state.json").write_text(json.dumps({"step": step, **progress, "sha256": checksums}, indent=2))
        if final.exists():  # a previous attempt reached this step: replace it as one rename
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out: Path) -> list[Path]:
    root = checkpoints_dir(out)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / "state.json").exists())


def latest_checkpoint(out: Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def damage(folder: Path) -> str | None:
    """Why checkpoint ``folder`` cannot be trusted, or None when it is complete and intact."""
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as err:
        return f"state.json unreadable ({type(err).__name__})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return "state.json has no step"
    for name in TENSOR_FILES:
        if not (folder / name).is_file():
            return f"{name} missing"
    for name, expected in state.get("sha256", {}).items():  # checkpoints of older versions carry none
        if sha256(folder / name) != expected:
            return f"{name} does not match its checksum"
    return None


def choose_checkpoint(out: Path, warn=None) -> Path | None:
    """The newest intact checkpoint; damaged newer ones are renamed ``damaged-step-*`` (kept
    for inspection, out of the way of pruning and of later saves) with a ``warn`` line each."""
    for folder in reversed(list_checkpoints(out)):
        reason = damage(folder)
        if reason is None:
            return folder
        aside = folder.with_name(f"damaged-{folder.name}")
        if aside.exists():
            shutil.rmtree(aside)  # an older damaged copy of the same step, itself set aside by us
        os.replace(folder, aside)
        if warn is not None:
            warn(f"checkpoint {folder.name} is damaged ({reason}); moved to {aside.name}, "
                 f"falling back to the previous one")
    return None


def clean_temporary(out: Path) -> list[Path]:
    """Remove the half-written folders of saves a kill interrupted (ours: ``.tmp-step-*`` in
    checkpoints/, ``.tmp-final-*`` in ``out``); returns what was removed."""
    removed = []
    for root in (out, checkpoints_dir(out)):
        if not root.is_dir():
            continue
        for path in root.iterdir():
            if path.is_dir() and path.name.startswith(TEMPORARY):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore everything saved by ``save_checkpoint``; returns ``state.json``."""
    params = dict(model.named_parameters())
    saved = torch.load(folder / "trainable.pt", weights_only=True)
    missing = sorted(set(saved) - set(params))
    if missing:
        raise ValueError(f"checkpoint {folder} has tensors this model lacks, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(folder / "rng.pt", weights_only=False))
    return json.loads((folder / "state.json").read_text())
