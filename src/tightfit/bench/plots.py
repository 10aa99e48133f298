"""``loss.png`` (train and held-out loss, one line per optimizer) and ``memory.png``
(peak memory and optimizer-state bytes per optimizer), drawn with matplotlib's Agg
backend so they render without a display."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .runner import BenchRun


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_loss(runs: list[BenchRun], path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        if run.result is None:
            continue
        steps, losses = zip(*run.result.train_loss) if run.result.train_loss else ((), ())
        window = max(1, len(losses) // 20)
        ax_train.plot(steps, _smooth(list(losses), window), label=run.optim)
        if run.result.eval_loss:
            e_steps, e_losses = zip(*run.result.eval_loss)
            ax_eval.plot(e_steps, e_losses, marker="o", label=run.optim)
    ax_train.set(title="train loss (running mean)", xlabel="step", ylabel="loss")
    ax_eval.set(title="held-out loss", xlabel="step", ylabel="loss")
    for ax in (ax_train, ax_eval):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_memory(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    plt = _pyplot()
    ok = [r for r in rows if r["error"] is None]
    names = [r["optimizer"] for r in ok]
    fig, (ax_peak, ax_state) = plt.subplots(1, 2, figsize=(12, 4.5))
    kind = ok[0]["peak_memory_kind"] if ok else ""
    ax_peak.barh(names, [r["peak_memory_bytes"] / 2**20 for r in ok], color="tab:blue")
    ax_peak.set(title=f"peak memory ({kind})", xlabel="MiB")
    ax_state.barh(names, [r["optimizer_state_bytes"] / 2**20 for r in ok], color="tab:orange")
    ax_state.set(title="optimizer state", xlabel="MiB")
    for ax in (ax_peak, ax_state):
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
