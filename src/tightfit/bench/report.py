"""Bench results as rows with a fixed schema, written as results.csv / results.json /
results.md and printed as a rich table. Every row carries device, date and versions, so
rows from different machines can be concatenated without losing where they came from."""

from __future__ import annotations

import csv
import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..train.config import TrainConfig
from .presets import BASELINES
from .runner import BenchRun

COLUMNS = ["optimizer", "lr", "final_eval_loss", "eval_loss_ratio", "final_train_loss", "peak_memory_bytes",
           "peak_memory_kind", "rss_peak_bytes", "optimizer_state_bytes", "quantized_states", "step_time_s",
           "tokens_per_s", "trainable_params", "steps", "model", "method", "device", "date", "versions", "error"]

VERSIONED = ("tightfit", "torch", "transformers", "peft", "bitsandbytes")


def device_description(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (cuda)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu}, {torch.get_num_threads()} threads"


def versions() -> str:
    found = []
    for name in VERSIONED:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return "; ".join(found)


def baseline_loss(runs: list[BenchRun]) -> tuple[str | None, float | None]:
    by_name = {r.optim: r for r in runs if r.result is not None and r.result.final_eval_loss is not None}
    for name in BASELINES:
        if name in by_name:
            return name, by_name[name].result.final_eval_loss
    return None, None


def build_rows(runs: list[BenchRun], config: TrainConfig) -> list[dict[str, Any]]:
    _, base = baseline_loss(runs)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    vers = versions()
    rows = []
    for run in runs:
        r = run.result
        row = dict.fromkeys(COLUMNS)
        row.update(optimizer=run.optim, model=config.model, method=config.method, date=date, versions=vers,
                   error=run.error, device=device_description(r.device if r else config.device))
        if r is not None:
            row.update(lr=r.lr, final_eval_loss=r.final_eval_loss,
                       eval_loss_ratio=(r.final_eval_loss / base) if base and r.final_eval_loss is not None else None,
                       final_train_loss=r.train_loss[-1][1] if r.train_loss else None,
                       peak_memory_bytes=r.peak_memory_bytes, peak_memory_kind=r.peak_memory_kind,
                       rss_peak_bytes=r.rss_peak_bytes, optimizer_state_bytes=r.optimizer_state_bytes,
                       quantized_states=r.quantized_states, step_time_s=r.step_time_s, tokens_per_s=r.tokens_per_s,
                       trainable_params=r.trainable_params, steps=r.steps)
        rows.append(row)
    return rows


def _fmt(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if column.endswith("_bytes"):
        return f"{value / 2**20:.2f}"
    if column in ("eval_loss_ratio", "final_eval_loss", "final_train_loss"):
        return f"{value:.4f}"
    if column == "tokens_per_s":
        return f"{value:.0f}"
    if column == "step_time_s":
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# column -> short header for the markdown and printed tables
HEADERS = {"optimizer": "optimizer", "lr": "lr", "final_eval_loss": "held-out loss", "eval_loss_ratio": "ratio",
           "final_train_loss": "train loss", "peak_memory_bytes": "peak MiB", "optimizer_state_bytes": "state MiB",
           "quantized_states": "quantized", "step_time_s": "s/step", "tokens_per_s": "tok/s"}


TABLE_COLUMNS = ["optimizer", "lr", "final_eval_loss", "eval_loss_ratio", "final_train_loss", "peak_memory_bytes",
                 "optimizer_state_bytes", "quantized_states", "step_time_s", "tokens_per_s"]


def write_results(out: Path, rows: list[dict[str, Any]], runs: list[BenchRun], config: TrainConfig,
                  skipped: list[str], preset: str | None, stem: str = "results", wall_s: float | None = None,
                  command: str | None = None) -> list[Path]:
    base_name, _ = baseline_loss(runs)
    data = next(({"tokens": r.result.data_tokens, "seq": config.seq, "train_blocks": r.result.train_blocks,
                  "eval_blocks": r.result.eval_blocks, "eval_blocks_scored": r.result.eval_blocks_scored,
                  "epochs": r.result.epochs} for r in runs if r.result is not None), None)
    source = next((r.result.model_source for r in runs if r.result is not None), None)
    meta = {"preset": preset, "command": command, "config": config.to_dict(), "baseline": base_name, "data": data,
            "model_source": source,
            "skipped_not_registered": skipped,
            "wall_s": wall_s, "device": rows[0]["device"] if rows else None, "date": rows[0]["date"] if rows else None,
            "versions": versions()}
    curves = {r.optim: {"train_loss": r.result.train_loss, "eval_loss": r.result.eval_loss}
              for r in runs if r.result is not None}
    paths = [out / f"{stem}.csv", out / f"{stem}.json", out / f"{stem}.md"]
    with open(paths[0], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    paths[1].write_text(json.dumps({"meta": meta, "rows": rows, "curves": curves}, indent=2))
    paths[2].write_text(markdown(rows, meta))
    return paths


def data_name(config: dict[str, Any]) -> str:
    from pathlib import PurePath

    return ", ".join(PurePath(d).name or d for d in config["data"])


def bench_title(config: dict[str, Any], preset: str | None) -> str:
    """'llama-tiny / full on notes.txt' -- the data really used, the preset only when it supplied it."""
    from .presets import PRESETS

    title = f"{config['model']} / {config['method']} on {data_name(config)}"
    if preset in PRESETS and PRESETS[preset].config.to_dict()["data"] == config["data"]:
        title += f" (preset {preset})"
    return title


def held_out_line(data: dict[str, Any] | None, c: dict[str, Any]) -> str:
    """What the held-out loss is computed on, from the data the runs actually saw."""
    if not data:
        return "held-out: -"
    every = max(2, round(1 / c["eval_fraction"]))
    return (f"data: {data['tokens']:,} tokens -> {data['train_blocks']:,} training blocks of {data['seq']} "
            f"({data['epochs']:.2f} epochs); held-out: {data['eval_blocks_scored']} blocks of {data['seq']} tokens "
            f"(of {data['eval_blocks']} held out: every {every}th block, never trained on, the same for every "
            f"optimizer)")


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    c = meta["config"]
    lines = [f"# tightfit bench: {bench_title(c, meta['preset'])}", ""]
    if meta.get("command"):
        lines.append(f"- command: `{meta['command']}`")
    lines += [f"- model `{c['model']}`, method `{c['method']}`, data `{','.join(c['data'])}`, "
              f"{c['steps']} steps x {c['batch_size']}x{c['seq']} tokens (accum {c['grad_accum']}), "
              f"AdamW-equivalent lr {c['lr']} ({c['schedule']}, warmup {c['warmup']}), seed {c['seed']}",
              f"- model source: {meta.get('model_source') or '-'}",
              f"- {held_out_line(meta.get('data'), c)}; ratio = final held-out loss / {meta['baseline'] or 'n/a'}",
              f"- peak MiB: {rows[0]['peak_memory_kind'] if rows else '-'} "
              "(cpu_tracked_params_grads_state = parameters + gradients + optimizer state, exact; "
              "cuda_max_allocated = torch.cuda.max_memory_allocated); state MiB = optimizer state (exact); "
              "s/step = median step time (CPU shared with other jobs: noisy)",
              f"- quantized: parameters whose optimizer states are stored 8/4-bit "
              "(tensors below min_quantized_numel=4096 keep fp32 states)",
              f"- device: {meta['device']}; date: {meta['date']}; {meta['versions']}"]
    if meta.get("wall_s") is not None:
        lines.append(f"- wall time (all optimizers, incl. loading): {meta['wall_s']:.1f} s")
    if meta["skipped_not_registered"]:
        lines.append(f"- skipped (not registered in this build): {', '.join(meta['skipped_not_registered'])}")
    lines += ["", "| " + " | ".join([HEADERS[c] for c in TABLE_COLUMNS] + ["device", "date"]) + " |",
              "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    for row in rows:
        cells = [_fmt(row[col], col) for col in TABLE_COLUMNS] + [row["device"], row["date"]]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [f"- {row['optimizer']}: {row['error']}" for row in rows if row["error"]]
    if errors:
        lines += ["", "Failed:", *errors]
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in TABLE_COLUMNS:
        table.add_column(HEADERS[col], justify="left" if col in ("optimizer", "quantized_states") else "right")
    for row in rows:
        table.add_row(*[_fmt(row[col], col) for col in TABLE_COLUMNS])
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 140))
    console.print(table)
    for row in rows:
        if row["error"]:
            console.print(f"[red]{row['optimizer']}: {row['error']}[/red]")
