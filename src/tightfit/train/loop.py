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

from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig, check_resume_config, check_sizes, write_run_config
from .data import PackedData, load_data
from .errors import TrainInputError
from .memory import PeakMemory
from .methods import LoraOptions, get_method
from .model_loading import LoadedModel, context_length, load_model
from .peers import build_optimizer, check_optimizer_name, lr_for, optimizer_state_bytes, quantized_state_summary
from .schedule import build_scheduler


@dataclass
class TrainResult:
    optim: str
    lr: float | None
    steps: int
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss), step from 1
    eval_loss: list[tuple[int, float]] = field(default_factory=list)
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""
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


def prepare_output(config: TrainConfig) -> Path | None:
    """The output folder; never silently reuses one that already holds checkpoints."""
    if config.out is None:
        return None
    out = Path(config.out)
    if config.resume:
        if latest_checkpoint(out) is None:
            raise TrainInputError(f"--resume: no checkpoint in {out}/checkpoints to resume from")
        check_resume_config(out, config)
        return out
    if list_checkpoints(out) or (out / "log.jsonl").exists():
        raise TrainInputError(f"output folder {out} already holds a run; pass --resume to continue it, "
                              f"or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_run_config(out, config)
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: PackedData, batch_size: int, max_batches: int, device) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in data.eval_batches(batch_size, max_batches):
        batch = batch.to(device)
        total += float(model(input_ids=batch, labels=batch).loss) * len(batch)
        count += len(batch)
    model.train()
    return total / count


def _truncate_log(path: Path, step: int) -> None:
    """Keep log records up to ``step``; later ones are redone after a resume."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def load_for(config: TrainConfig) -> LoadedModel:
    """Model + tokenizer for ``config`` (quantized base for QLoRA)."""
    return load_model(config.model, config.seed, get_method(config.method).quantization())


def train(config: TrainConfig, data: PackedData | None = None, loaded: LoadedModel | None = None) -> TrainResult:
    """Run (or resume) one training run. ``data``/``loaded`` let the bench reuse tokenized
    data and skip reloading; a ``loaded`` model is modified in place."""
    check_sizes(config)
    method = get_method(config.method)
    check_optimizer_name(config.optim)
    device = pick_device(config.device)
    out = prepare_output(config)
    loaded = loaded or load_for(config)
    ctx = context_length(loaded.model)
    if ctx is not None and config.seq > ctx:
        raise TrainInputError(f"--seq {config.seq} is longer than the model's context ({ctx} positions); use --seq <= {ctx}")
    if data is None:
        data = load_data(config.data, loaded.tokenizer, config.seq, config.eval_fraction, config.seed, config.data_max_chars)
    torch.manual_seed(config.seed)  # LoRA init and dropout draw from here
    model = method.prepare(loaded.model, LoraOptions(config.lora_r, config.lora_alpha, config.lora_dropout),
                           config.grad_checkpointing)
    if not getattr(model, "is_loaded_in_4bit", False) and not getattr(loaded.model, "is_loaded_in_4bit", False):
        model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(config.optim, params, config.lr, config.weight_decay)
    scheduler = build_scheduler(optimizer, config.schedule, config.warmup, config.steps, config.min_lr_ratio)
    result = TrainResult(config.optim, lr_for(config.optim, config.lr), 0, device=str(device), model_source=loaded.source,
                         out=str(out) if out else None, trainable_params=sum(p.numel() for p in params),
                         total_params=sum(p.numel() for p in model.parameters()))

    start, tokens_seen = 0, 0
    log_path = out / "log.jsonl" if out else None
    if config.resume and out is not None:
        ckpt = latest_checkpoint(out)
        state = load_checkpoint(ckpt, model, optimizer, scheduler)
        start, tokens_seen = state["step"], state["tokens_seen"]
        result.train_loss = [tuple(x) for x in state["train_loss"]]
        result.eval_loss = [tuple(x) for x in state["eval_loss"]]
        _truncate_log(log_path, start)
    stop = min(config.steps, config.max_steps or config.steps)
    memory = PeakMemory(device)
    tokens_per_step = config.batch_size * config.seq * config.grad_accum
    step_times: list[float] = []
    bar = _progress_bar(config, start, stop)
    log = open(log_path, "a") if log_path else None
    try:
        for step in range(start, stop):
            began = time.perf_counter()
            loss_sum = 0.0
            for micro in range(config.grad_accum):
                batch = data.batch(step * config.grad_accum + micro, config.batch_size).to(device)
                loss = model(input_ids=batch, labels=batch).loss
                (loss / config.grad_accum).backward()
                loss_sum += loss.detach().item()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.clip)) if config.clip > 0 else None
            lr_now = optimizer.param_groups[0]["lr"]
            optimizer.step()
            state_bytes = optimizer_state_bytes(optimizer)
            memory.sample(model, state_bytes)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_times.append(time.perf_counter() - began)
            tokens_seen += tokens_per_step
            done = step + 1
            record: dict[str, Any] = {"step": done, "loss": loss_sum / config.grad_accum, "lr": lr_now,
                                      "grad_norm": grad_norm, "tokens": tokens_seen, "step_time_s": step_times[-1],
                                      "tokens_per_s": tokens_per_step / step_times[-1],
                                      "peak_memory_bytes": memory.peak_bytes, "peak_memory_kind": memory.kind}
            result.train_loss.append((done, record["loss"]))
            if done % config.eval_every == 0 or done == config.steps or done == stop:
                record["eval_loss"] = evaluate(model, data, config.batch_size, config.eval_batches, device)
                result.eval_loss.append((done, record["eval_loss"]))
            if log:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}",
                                mem=f"{memory.peak_bytes / 2**20:.0f}MiB" + ("" if memory.cuda else " tracked"))
            if out is not None and config.checkpoints and ((config.save_every and done % config.save_every == 0) or done == stop):
                save_checkpoint(out, done, model, optimizer, scheduler,
                                {"tokens_seen": tokens_seen, "train_loss": result.train_loss,
                                 "eval_loss": result.eval_loss, "saved_at": datetime.now(timezone.utc).isoformat()},
                                config.keep_checkpoints)
    finally:
        if bar is not None:
            bar.close()
        if log:
            log.close()
    result.steps = stop
    result.peak_memory_bytes, result.peak_memory_kind, result.rss_peak_bytes = memory.peak_bytes, memory.kind, memory.peak_rss
    result.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    result.quantized_states = quantized_state_summary(optimizer)
    timed = sorted(step_times[1:] or step_times)  # the first step pays one-time state allocation
    if timed:  # median: robust to other jobs briefly taking the CPU
        result.step_time_s = timed[len(timed) // 2]
        result.tokens_per_s = tokens_per_step / result.step_time_s
    if out is not None and config.save_final and stop == config.steps:
        _save_final(out, model, loaded.tokenizer)
    return result


def _progress_bar(config: TrainConfig, start: int, stop: int):
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=stop, initial=start, desc=config.optim, unit="step", dynamic_ncols=True, leave=True)


def _save_final(out: Path, model: torch.nn.Module, tokenizer) -> None:
    """``<out>/final``: the adapter (LoRA/QLoRA) or the full model, plus the tokenizer."""
    import shutil
    import tempfile

    final = out / "final"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-final-", dir=out))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
