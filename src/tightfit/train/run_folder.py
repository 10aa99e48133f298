"""The output folder of ``tightfit train``: what a run may write where, and where a
resumed run continues from.

- A new run never reuses a folder that holds a run (it names the ``--resume`` command)
  nor one whose ``final/`` it did not write; an ``--out`` that cannot be written is refused
  before anything loads.
- ``--resume`` continues from the newest intact checkpoint (damaged ones are set aside),
  restarts at step 0 when the run stopped before its first checkpoint, and says so when
  the run has already finished (its ``final/`` is left untouched).
- ``final/`` is written under a temporary name and renamed into place, with
  ``FINAL_FILE`` recording what ``tightfit generate`` needs; only a ``final/`` holding that
  file is ever replaced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint import choose_checkpoint, clean_temporary, latest_checkpoint, list_checkpoints
from .config import TrainConfig, check_resume_config, write_run_config
from .errors import NothingToDo, TrainInputError, note
from .model_loading import FINAL_FILE
from .schedule import check_schedule

RUN_INFO_FILE = "run_info.json"  # in <out>: where the model came from, what data the run saw


def resume_command(out: Path) -> str:
    import shlex

    return f"tightfit train --out {shlex.quote(str(out))} --resume"


def check_writable(out: Path) -> None:
    """Refuse an --out that cannot become a writable folder, before anything loads."""
    if out.exists() and not out.is_dir():
        raise TrainInputError(f"--out {out} is a file, not a folder; choose a folder path")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise TrainInputError(f"--out {out}: {parent} is a file, not a folder; choose another --out")
    import tempfile

    try:  # a probe, removed at once: catches read-only mounts, permissions, /proc, ... before anything loads
        os.rmdir(tempfile.mkdtemp(prefix=".tightfit-probe-", dir=parent))
    except OSError as err:
        raise TrainInputError(f"cannot write --out {out}: {err.strerror or err} in {parent}; choose another --out") from None


def check_fresh_output(out: Path) -> None:
    """A new run never reuses a folder holding a run, nor replaces a final/ it did not write."""
    if (out / "run_config.json").exists() or (out / "log.jsonl").exists() or list_checkpoints(out):
        latest = latest_checkpoint(out)
        where = f"latest checkpoint: {latest.name}" if latest else "no checkpoint yet: --resume restarts it from step 0"
        raise TrainInputError(f"output folder {out} already holds a run ({where}); continue it with "
                              f"`{resume_command(out)}`, or choose another --out")
    if (out / "final").exists():
        raise TrainInputError(f"{out / 'final'} already exists and was not written by a run in {out}; this run "
                              f"would save its model there: move it away or choose another --out")


def check_resume_point(out: Path, config: TrainConfig) -> Path | None:
    """The checkpoint to continue from (None: restart at step 0); NothingToDo when the run is done."""
    check_resume_config(out, config)
    clean_temporary(out)
    ckpt = choose_checkpoint(out, warn=lambda line: note(f"warning: {line}"))
    if ckpt is None:
        note(f"no complete checkpoint in {out / 'checkpoints'}: restarting the run from step 0")
        return None
    step = json.loads((ckpt / "state.json").read_text())["step"]
    stop = min(config.steps, config.max_steps or config.steps)
    if step >= config.steps and (out / "final" / FINAL_FILE).exists():
        raise NothingToDo(f"the run in {out} already finished (step {step} of {config.steps}); its model is in "
                          f"{out / 'final'} (unchanged). Try it: tightfit generate {out}")
    if step >= stop and step < config.steps:
        raise NothingToDo(f"the run in {out} is at step {step} already (--max-steps {config.max_steps}); "
                          f"resume with a larger --max-steps, or without it to finish all {config.steps} steps")
    note(f"resuming from {ckpt} (step {step} of {config.steps})")
    return ckpt


def check_output(config: TrainConfig) -> tuple[Path | None, Path | None]:
    """(output folder, checkpoint to resume from); never silently reuses or deletes what it did not write."""
    check_schedule(config.schedule, config.warmup, config.steps)
    if config.out is None:
        return None, None
    out = Path(config.out)
    check_writable(out)
    if config.resume:
        if not (out / "run_config.json").exists():
            raise TrainInputError(f"--resume: {out} has no run_config.json (not a tightfit train output folder)")
        return out, check_resume_point(out, config)
    check_fresh_output(out)
    return out, None


def create_output(config: TrainConfig, out: Path | None, info: dict[str, Any]) -> None:
    """Create the folder once model and data loaded fine (a bad input leaves nothing behind)."""
    if out is None:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not config.resume:
            write_run_config(out, config)
        (out / RUN_INFO_FILE).write_text(json.dumps(info, indent=2))
    except OSError as err:
        raise TrainInputError(f"cannot write --out {out}: {err.strerror or err}; choose another --out") from None


def save_final(out: Path, model: torch.nn.Module, tokenizer, record: dict[str, Any]) -> None:
    """``<out>/final``: the adapter (LoRA/QLoRA) or the full model, plus the tokenizer and
    ``FINAL_FILE``. Replaces only a final/ this code wrote (one with ``FINAL_FILE``)."""
    import shutil
    import tempfile

    final = out / "final"
    if final.exists() and not (final / FINAL_FILE).exists():
        raise TrainInputError(f"{final} exists and was not written by tightfit; not replacing it (move it away "
                              f"and run `{resume_command(out)}` to save the model)")
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-final-", dir=out))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / FINAL_FILE).write_text(json.dumps(record, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
