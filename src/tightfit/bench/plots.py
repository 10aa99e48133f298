"""``loss.png`` (train and held-out loss, one line per optimizer) and ``memory.png``
(peak memory and optimizer-state bytes per optimizer), drawn with matplotlib's Agg
backend so they render without a display.

Made to read at a glance: runs whose curves are identical (``paged_adamw_8bit`` on a CPU
is ``adamw_8bit``) are drawn dashed over their twin and labelled "= twin", every line has
its own style, bars carry their values, and a size axis turns logarithmic when the sizes
span more than a decade (a 0.05 MiB bar next to a 6 MiB one stays visible).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .runner import BenchRun

# peak_memory_kind -> what the number measures, for a title
MEMORY_KINDS = {"cpu_tracked_params_grads_state": "params + grads + optimizer state (CPU, exact)",
                "cuda_max_allocated": "CUDA max allocated"}
LINESTYLES = ["-", "--", "-.", ":"]
LOG_SCALE_SPAN = 10.0  # largest / smallest positive value above which a size axis is logarithmic


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


def same_curves(runs: list[BenchRun]) -> dict[str, str]:
    """optimizer -> the earlier optimizer whose train and held-out curves it repeats exactly."""
    seen: dict[tuple, str] = {}
    twins = {}
    for run in runs:
        if run.result is None:
            continue
        key = (tuple(run.result.train_loss), tuple(run.result.eval_loss))
        if key in seen:
            twins[run.optim] = seen[key]
        else:
            seen[key] = run.optim
    return twins


def plot_loss(runs: list[BenchRun], path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(12, 4.8))
    twins = same_curves(runs)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, run in enumerate(r for r in runs if r.result is not None):
        twin = twins.get(run.optim)
        label = f"{run.optim} (= {twin})" if twin else run.optim
        # a twin is dashed and on top, so the line it hides shows through its gaps
        style = dict(color=colors[index % len(colors)], linestyle="--" if twin else LINESTYLES[index % len(LINESTYLES)],
                     linewidth=1.4 if twin else 1.8, zorder=3 if twin else 2, label=label)
        steps, losses = zip(*run.result.train_loss) if run.result.train_loss else ((), ())
        window = max(1, len(losses) // 20)
        ax_train.plot(steps, _smooth(list(losses), window), **style)
        if run.result.eval_loss:
            e_steps, e_losses = zip(*run.result.eval_loss)
            ax_eval.plot(e_steps, e_losses, marker="ox^sdv<>"[index % 8], markersize=5, **style)
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


def format_mib(mib: float) -> str:
    """A bar's label in the axis unit: '1,234 MiB', '1.51 MiB', '0.0965 MiB' (3 significant digits)."""
    if mib >= 100:
        return f"{mib:,.0f} MiB"
    return f"{mib:.3g} MiB"


def use_log_scale(values: list[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) > 1 and max(positive) / min(positive) > LOG_SCALE_SPAN


def _bars(ax, names: list[str], mib: list[float], color: str, title: str) -> None:
    log = use_log_scale(mib)
    bars = ax.barh(names, [v if v > 0 or not log else float("nan") for v in mib], color=color)
    ax.bar_label(bars, labels=[format_mib(v) if v > 0 else "0 (no state)" for v in mib], padding=3, fontsize=8)
    if log:
        ax.set_xscale("log")
        positive = [v for v in mib if v > 0]
        ax.set_xlim(min(positive) / 2, max(positive) * 6)  # room for the labels
    else:
        ax.set_xlim(0, max(mib + [1e-9]) * 1.3)
    ax.set(title=title + (" (log scale)" if log else ""), xlabel="MiB")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)


def plot_memory(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    plt = _pyplot()
    ok = [r for r in rows if r["error"] is None]
    names = [r["optimizer"] for r in ok]
    fig, (ax_peak, ax_state) = plt.subplots(1, 2, figsize=(12, 0.9 + 0.45 * max(len(ok), 3)))
    kind = ok[0]["peak_memory_kind"] if ok else ""
    _bars(ax_peak, names, [r["peak_memory_bytes"] / 2**20 for r in ok], "tab:blue",
          f"peak memory: {MEMORY_KINDS.get(kind, kind)}")
    _bars(ax_state, names, [r["optimizer_state_bytes"] / 2**20 for r in ok], "tab:orange", "optimizer state")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
