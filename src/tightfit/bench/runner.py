"""Run one ``TrainConfig`` per optimizer with the same seed, data order and initial
weights (each run rebuilds the model from the same seed or the same cached weights and
reads the same tokenized blocks), collecting a ``TrainResult`` or the one-line error."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..names import OPTIMIZER_NAMES
from ..train.config import TrainConfig
from ..train.data import check_trainable, data_summary_lines, load_data, summarize_data
from ..train.errors import TrainInputError
from ..train.loop import TrainResult, load_for, train
from ..peers import PEERS
from ..train.peers import check_optimizer_name
from .presets import DEFAULT_OPTIMS


@dataclass
class BenchRun:
    optim: str
    result: TrainResult | None
    error: str | None
    wall_s: float


def resolve_optims(requested: list[str] | None) -> tuple[list[str], list[str]]:
    """(optimizers to run, default ones skipped because this build does not register them).
    An explicit list must name only known optimizers."""
    if requested is None:
        run = [n for n in DEFAULT_OPTIMS if n in OPTIMIZER_NAMES or n in PEERS]
        return run, [n for n in DEFAULT_OPTIMS if n not in run]
    if not requested:
        raise TrainInputError("--optims is empty (give a comma list, e.g. adamw_32bit,adamw_8bit,torch:adamw)")
    for name in requested:
        check_optimizer_name(name)
    if len(set(requested)) != len(requested):
        raise TrainInputError(f"--optims lists an optimizer twice: {','.join(requested)}")
    return list(requested), []


def run_folder_name(optim: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", optim)


def prepare_results_folder(out: Path) -> None:
    """Never mix with (or overwrite) an earlier bench's results."""
    if out.exists() and any(out.iterdir()):
        raise TrainInputError(f"results folder {out} already exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def run_bench(config: TrainConfig, optims: list[str], out: Path, log=print) -> list[BenchRun]:
    """Train ``config`` once per optimizer; a failing optimizer is recorded, not fatal."""
    first = load_for(config)
    data = load_data(config.data, first.tokenizer, config.seq, config.eval_fraction, config.seed, config.data_max_chars)
    check_trainable(data, config.batch_size, config.eval_batches)
    summary = summarize_data(data, config.steps, config.batch_size, config.grad_accum, config.eval_batches)
    for line in [f"model: {first.source}", *data_summary_lines(summary, config.steps)]:
        log(line)
    runs: list[BenchRun] = []
    for index, optim in enumerate(optims):
        loaded = first if index == 0 else load_for(config)
        began = time.perf_counter()
        try:
            result = train(config.replace(optim=optim, out=str(out / "runs" / run_folder_name(optim))),
                           data=data, loaded=loaded)
            runs.append(BenchRun(optim, result, None, time.perf_counter() - began))
        except TrainInputError:
            raise
        except Exception as err:  # noqa: BLE001 -- a peer that cannot run here (e.g. bnb without CUDA) is a result
            message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log(f"{optim}: failed: {message}")
            runs.append(BenchRun(optim, None, message, time.perf_counter() - began))
    return runs
