"""The training loop behind ``tightfit train`` and ``tightfit bench``.

Our own ~150-line loop rather than ``transformers.Trainer``: resume must reproduce an
uninterrupted run bit for bit, which needs control of the exact batch order (a pure
function of seed and batch index), of what a checkpoint holds (tightfit state_dicts,
RNG, data position) and of when memory is sampled; the bench also runs the same loop
many times in one process. The Trainer drop-in is shown in ``train/hf.py``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, check_sizes
from .data import IGNORE_INDEX, PackedData, check_trainable, data_summary_lines, load_data, summarize_data
from .errors import TrainInputError, note
from .memory import PeakMemory
from .methods import get_method
from .model_loading import LoadedModel, context_length, is_random_init, load_model
from .peers import check_optimizer_name, lr_for, optimizer_state_bytes, quantized_state_summary
from .plan_check import compare, predict
from .run_folder import check_output, create_output, save_final
from .schedule import build_scheduler
from .step import StepRunner, build_runner, compute_dtype, prepare_model


@dataclass
class TrainResult:
    optim: str
    lr: float | None
    steps: int
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss), step from 1
    eval_loss: list[tuple[int, float]] = field(default_factory=list)
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""
    predicted_peak_bytes: int = 0  # tightfit plan's prediction of peak_memory_bytes (same kind)
    rss_peak_bytes: int = 0
    optimizer_state_bytes: int = 0
    quantized_states: str = "-"
    step_time_s: float = 0.0
    tokens_per_s: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    device: str = ""
    model_source: str = ""
    out: str | None = None
    data_tokens: int = 0
    train_blocks: int = 0
    eval_blocks: int = 0
    eval_blocks_scored: int = 0
    epochs: float = 0.0

    @property
    def final_eval_loss(self) -> float | None:
        return self.eval_loss[-1][1] if self.eval_loss else None

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return {**dataclasses.asdict(self), "final_eval_loss": self.final_eval_loss}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainInputError("--device cuda: no CUDA device available (allowed here: cpu, auto)")
    if name not in ("cpu", "cuda"):
        raise TrainInputError(f"--device {name!r} (allowed: auto, cpu, cuda)")
    return torch.device(name)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: PackedData, batch_size: int, max_batches: int, device) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch, labels in data.eval_batches(batch_size, max_batches):
        if not bool((labels[:, 1:] != IGNORE_INDEX).any()):
            continue  # nothing to score in these blocks (prompts only)
        batch, labels = batch.to(device), labels.to(device)
        total += float(model(input_ids=batch, labels=labels).loss) * len(batch)
        count += len(batch)
    if count == 0:
        raise TrainInputError("the held-out blocks hold no trained tokens (prompts only); "
                              "raise --eval-fraction or add responses")
    model.train()
    return total / count


def _truncate_log(path: Path, step: int) -> None:
    """Keep log records up to ``step``; later ones are redone after a resume."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if record["step"] <= step:
            kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def load_for(config: TrainConfig) -> LoadedModel:
    """Model + tokenizer for ``config`` (quantized base for QLoRA)."""
    quantization = get_method(config.method).quantization(compute_dtype(config, pick_device(config.device)))
    return load_model(config.model, config.seed, quantization)


@dataclass
class Session:
    """Everything one run holds between steps."""

    config: TrainConfig
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    data: PackedData
    device: torch.device
    out: Path | None
    tokenizer: Any
    result: TrainResult
    memory: PeakMemory
    runner: StepRunner
    resume_from: Path | None = None
    tokens_seen: int = 0
    step_times: list[float] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> int:
        return self.config.batch_size * self.config.seq * self.config.grad_accum


def build_session(config: TrainConfig, data: PackedData | None, loaded: LoadedModel | None) -> Session:
    """Validate, load the model and data, apply the method, build optimizer and schedule."""
    check_sizes(config)
    method = get_method(config.method)
    check_optimizer_name(config.optim)
    device = pick_device(config.device)
    out, resume_from = check_output(config)
    announce = data is None  # a standalone run says what it found; the bench says it once for all runs
    loaded = loaded or load_for(config)
    ctx = context_length(loaded.model)
    if ctx is not None and config.seq > ctx:
        raise TrainInputError(f"--seq {config.seq} is longer than the model's context ({ctx} positions); use --seq <= {ctx}")
    if data is None:
        data = load_data(config.data, loaded.tokenizer, config.seq, config.eval_fraction, config.seed, config.data_max_chars)
    check_trainable(data, config.batch_size, config.eval_batches)
    summary = summarize_data(data, config.steps, config.batch_size, config.grad_accum, config.eval_batches)
    if announce:
        for line in [f"model: {loaded.source}", *data_summary_lines(summary, config.steps)]:
            note(line)
        if method.adapters and is_random_init(config.model):
            note(f"warning: --method {config.method} on {config.model}, a random-init model: adapters on untrained "
                 f"weights learn little; use --method full, or a pretrained model (smollm2-135m, a folder, a hub id)")
    create_output(config, out, {"model": config.model, "model_source": loaded.source, "data": summary})
    prediction, said = predict(config, loaded.model, device)
    torch.manual_seed(config.seed)  # LoRA init and dropout draw from here
    model = prepare_model(config, loaded.model, device)
    if not getattr(loaded.model, "is_loaded_in_4bit", False):  # bitsandbytes placed the 4-bit base already
        model.to(device)
    model.train()
    runner = build_runner(config, model, device)
    params, optimizer = runner.params, runner.optimizer
    scheduler = build_scheduler(optimizer, config.schedule, config.warmup, config.steps, config.min_lr_ratio)
    result = TrainResult(config.optim, lr_for(config.optim, config.lr), 0, device=str(device), model_source=loaded.source,
                         out=str(out) if out else None, trainable_params=sum(p.numel() for p in params),
                         total_params=sum(p.numel() for p in model.parameters()), data_tokens=summary["tokens"],
                         train_blocks=summary["train_blocks"], eval_blocks=summary["eval_blocks"],
                         eval_blocks_scored=summary["eval_blocks_scored"],
                         epochs=summary["epochs"], predicted_peak_bytes=prediction.bytes if prediction else 0)
    if config.progress:
        for line in [*runner.notes, said]:
            note(line)
    return Session(config, model, params, optimizer, scheduler, data, device, out, loaded.tokenizer, result,
                   PeakMemory(device), runner, resume_from)


def restore(session: Session) -> int:
    """Load the chosen checkpoint into ``session``; returns the step to continue from
    (0 when the run had none: it restarts, and its log starts over)."""
    ckpt = session.resume_from
    if ckpt is None:
        _truncate_log(session.out / "log.jsonl", 0)
        return 0
    state = load_checkpoint(ckpt, session.model, session.optimizer, session.scheduler)
    session.tokens_seen = state["tokens_seen"]
    session.result.train_loss = [tuple(x) for x in state["train_loss"]]
    session.result.eval_loss = [tuple(x) for x in state["eval_loss"]]
    _truncate_log(session.out / "log.jsonl", state["step"])
    return state["step"]


def train_step(s: Session, step: int) -> dict[str, Any]:
    """One optimizer step (``grad_accum`` micro-batches, clipping, schedule); its log record."""
    config, began = s.config, time.perf_counter()
    loss_sum = 0.0
    for micro in range(config.grad_accum):
        batch, labels = s.data.labeled_batch(step * config.grad_accum + micro, config.batch_size)
        if not bool((labels[:, 1:] != IGNORE_INDEX).any()):
            continue  # a micro-batch of prompt tokens only: no loss, no gradient
        loss = s.runner.loss(batch.to(s.device), labels.to(s.device))
        s.runner.backward(loss / config.grad_accum)
        loss_sum += loss.detach().item()
    lr_now = s.optimizer.param_groups[0]["lr"]
    grad_norm = s.runner.step()
    s.memory.sample(s.model, optimizer_state_bytes(s.optimizer))  # the high point: grads and new state alive
    s.scheduler.step()
    s.runner.zero_grad()
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    s.step_times.append(time.perf_counter() - began)
    s.tokens_seen += s.tokens_per_step
    record = {"step": step + 1, "loss": loss_sum / config.grad_accum, "lr": lr_now, "grad_norm": grad_norm,
              "tokens": s.tokens_seen, "step_time_s": s.step_times[-1],
              "tokens_per_s": s.tokens_per_step / s.step_times[-1],
              "peak_memory_bytes": s.memory.peak_bytes, "peak_memory_kind": s.memory.kind}
    s.result.train_loss.append((step + 1, record["loss"]))
    return record


def save(s: Session, done: int) -> None:
    save_checkpoint(s.out, done, s.model, s.optimizer, s.scheduler,
                    {"tokens_seen": s.tokens_seen, "train_loss": s.result.train_loss, "eval_loss": s.result.eval_loss,
                     "saved_at": datetime.now(timezone.utc).isoformat()}, s.config.keep_checkpoints)


def summarize(s: Session, stop: int) -> TrainResult:
    r = s.result
    r.steps = stop
    r.peak_memory_bytes, r.peak_memory_kind, r.rss_peak_bytes = s.memory.peak_bytes, s.memory.kind, s.memory.peak_rss
    r.optimizer_state_bytes = optimizer_state_bytes(s.optimizer)
    r.quantized_states = quantized_state_summary(s.optimizer)
    timed = sorted(s.step_times[1:] or s.step_times)  # the first step pays one-time state allocation
    if timed:  # median: robust to other jobs briefly taking the CPU
        r.step_time_s = timed[len(timed) // 2]
        r.tokens_per_s = s.tokens_per_step / r.step_time_s
    return r


def train(config: TrainConfig, data: PackedData | None = None, loaded: LoadedModel | None = None) -> TrainResult:
    """Run (or resume) one training run. ``data``/``loaded`` let the bench reuse tokenized
    data and skip reloading; a ``loaded`` model is modified in place."""
    s = build_session(config, data, loaded)
    start = restore(s) if config.resume and s.out is not None else 0
    stop = min(config.steps, config.max_steps or config.steps)
    bar = _progress_bar(config, start, stop)
    log = open(s.out / "log.jsonl", "a") if s.out else None
    try:
        for step in range(start, stop):
            record = train_step(s, step)
            done = step + 1
            if done % config.eval_every == 0 or done == stop:
                record["eval_loss"] = evaluate(s.model, s.data, config.batch_size, config.eval_batches, s.device)
                s.result.eval_loss.append((done, record["eval_loss"]))
            if log:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}",
                                mem=f"{s.memory.peak_bytes / 2**20:.0f}MiB" + ("" if s.memory.cuda else " tracked"))
            if s.out is not None and config.checkpoints and (done == stop or (config.save_every and done % config.save_every == 0)):
                save(s, done)
    finally:
        if bar is not None:
            bar.close()
        if log:
            log.close()
    if s.out is not None and config.save_final and stop == config.steps:
        save_final(s.out, s.model, s.tokenizer, final_record(config, s, stop))
    result = summarize(s, stop)
    if config.progress:
        note(compare(prediction_of(s), result.peak_memory_bytes))
    return result


def prediction_of(s: Session):
    from .plan_check import Prediction

    bytes_ = s.result.predicted_peak_bytes
    return Prediction(bytes_, s.memory.kind, 0) if bytes_ else None


def final_record(config: TrainConfig, s: Session, step: int) -> dict[str, Any]:
    """What ``tightfit generate`` needs to rebuild the model: the base (for adapters) and tokenizer."""
    base = Path(config.model).expanduser()
    return {"model": str(base.resolve()) if base.exists() else config.model, "method": config.method,
            "seed": config.seed, "model_source": s.result.model_source, "step": step,
            "tokenizer": getattr(s.tokenizer, "name", "")}


def _progress_bar(config: TrainConfig, start: int, stop: int):
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=stop, initial=start, desc=config.optim, unit="step", dynamic_ncols=True, leave=True)
