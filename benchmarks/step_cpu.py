"""One optimizer step on CPU: tightfit (native / native_codec / reference) vs torch.optim,
DeepSpeedCPUAdam, torchao's CPU AdamW and bitsandbytes.

A few layers of a Llama-like model (fp32, random grads), every optimizer stepping the
same tensors, rounds interleaved so that load from other processes hits all rows alike;
the median ms/step over rounds after warm-up. Writes benchmarks/results/<out>.csv and
.md (device, threads, date, native ISA level and versions on every row). Peers that are
not installed (or cannot build) are skipped with the reason printed. The native kernel's
instruction-set level can be forced with TIGHTFIT_NATIVE_ISA=avx512vbmi|avx512|avx2|portable,
the thread count with OMP_NUM_THREADS (every row, the peers' OpenMP loops included).

    python benchmarks/step_cpu.py [--layers 2] [--hidden 1024] [--rounds 7] [--skip REGEX] [--out step_cpu]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

import tightfit
from tightfit.impl import select_implementation
from tightfit.impl.native import build

from state_sizes import state_bytes

RESULTS = Path(__file__).with_name("results")
DEEPSPEED_ROW = "DeepSpeedCPUAdam (fp32 states)"


def llama_shapes(hidden: int, intermediate: int, layers: int, vocab: int, kv_heads_ratio: int) -> dict[str, tuple]:
    """Parameter shapes of a Llama-style decoder (untied embedding and lm_head)."""
    kv = hidden // kv_heads_ratio
    shapes = {"embed_tokens": (vocab, hidden), "norm": (hidden,), "lm_head": (vocab, hidden)}
    for i in range(layers):
        shapes |= {f"l{i}.q_proj": (hidden, hidden), f"l{i}.k_proj": (kv, hidden), f"l{i}.v_proj": (kv, hidden),
                   f"l{i}.o_proj": (hidden, hidden), f"l{i}.gate_proj": (intermediate, hidden),
                   f"l{i}.up_proj": (intermediate, hidden), f"l{i}.down_proj": (hidden, intermediate),
                   f"l{i}.input_norm": (hidden,), f"l{i}.post_norm": (hidden,)}
    return shapes


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def chosen_impl(opt: torch.optim.Optimizer) -> str | None:
    """The implementation a tightfit optimizer runs for its first group (None for peers)."""
    if not isinstance(opt, tightfit.TightfitOptimizer):
        return None
    group = opt.param_groups[0]
    params = list(group["params"])
    return select_implementation(group["impl"], opt.rule, params, [opt.state[p] for p in params]).name


def optimizer_rows(lr: float) -> dict[str, tuple[str, callable]]:
    """Row name -> (implementation label, factory over a param list)."""
    rows = {
        "tightfit AdamW fp32": ("native", lambda ps: tightfit.AdamW(ps, lr=lr, state="fp32")),
        "tightfit AdamW 8bit": ("native", lambda ps: tightfit.AdamW(ps, lr=lr, state="8bit")),
        "tightfit AdamW 4bit": ("native", lambda ps: tightfit.AdamW(ps, lr=lr, state="4bit")),
        "tightfit Lion 8bit": ("native", lambda ps: tightfit.Lion(ps, lr=lr, state="8bit")),
        # Adafactor (both conventions) and CAME: row/col sums and the update in kernel
        # passes, the small vectors in PyTorch; SophiaG: fused
        "tightfit Adafactor (no momentum)": ("native", lambda ps: tightfit.Adafactor(ps, lr=1e-2)),
        "tightfit Adafactor 8bit momentum": ("native",
                                             lambda ps: tightfit.Adafactor(ps, lr=1e-2, beta1=0.9, state="8bit")),
        "tightfit Adafactor HF (no momentum)": ("native", lambda ps: tightfit.Adafactor(ps, convention="hf")),
        "tightfit CAME 8bit": ("native", lambda ps: tightfit.CAME(ps, lr=lr, state="8bit")),
        "tightfit SophiaG 8bit": ("native", lambda ps: tightfit.SophiaG(ps, lr=lr, state="8bit")),
        "tightfit AdEMAMix 8bit": ("native", lambda ps: tightfit.AdEMAMix(ps, lr=lr, state="8bit")),
        # Muon on the matrices (Newton–Schulz in PyTorch, C++ codec passes), AdamW on the norms
        "tightfit Muon 8bit (+AdamW 8bit)": ("native_codec", lambda ps: tightfit.Muon(ps, lr=2e-2, state="8bit")),
        "tightfit AdamW 8bit (reference)": ("reference",
                                            lambda ps: tightfit.AdamW(ps, lr=lr, state="8bit", impl="reference")),
        "torch AdamW foreach": ("torch", lambda ps: torch.optim.AdamW(ps, lr=lr, foreach=True)),
        "torch AdamW fused": ("torch", lambda ps: torch.optim.AdamW(ps, lr=lr, fused=True)),
        "torch Adafactor": ("torch", lambda ps: torch.optim.Adafactor(ps, lr=1e-2)),
    }
    try:
        import bitsandbytes as bnb
        rows["bitsandbytes AdamW8bit"] = ("bnb", lambda ps: bnb.optim.AdamW8bit(ps, lr=lr))
        rows["bitsandbytes AdEMAMix8bit"] = ("bnb", lambda ps: bnb.optim.AdEMAMix8bit(ps, lr=lr))
    except ImportError as exc:
        print(f"bitsandbytes row skipped: {exc}")
    rows |= peer_rows(lr)
    return rows


def peer_rows(lr: float) -> dict[str, tuple[str, callable]]:
    """DeepSpeed's and torchao's CPU AdamW, when they import and build here."""
    return deepspeed_rows(lr) | torchao_rows(lr)


def deepspeed_rows(lr: float) -> dict[str, tuple[str, callable]]:
    """DeepSpeedCPUAdam (fp32 states), when deepspeed imports and its CPU Adam builds here."""
    try:  # builds its C++ extension on first use (minutes); cached under ~/.cache/torch_extensions
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        probe = [torch.nn.Parameter(torch.zeros(8))]
        probe[0].grad = torch.zeros(8)
        DeepSpeedCPUAdam(probe, lr=lr).step()
        return {DEEPSPEED_ROW: ("deepspeed", lambda ps: DeepSpeedCPUAdam(ps, lr=lr, adamw_mode=True))}
    except Exception as exc:  # not installed, or its CPU Adam does not build here
        print(f"DeepSpeedCPUAdam row skipped: {type(exc).__name__}: {exc}")
        return {}


def torchao_rows(lr: float) -> dict[str, tuple[str, callable]]:
    try:  # torch.compile'd steps: the warm-up rounds include their compilation
        from torchao.optim import AdamW8bit, _AdamW

        return {"torchao AdamW8bit": ("torchao", lambda ps: AdamW8bit(ps, lr=lr)),
                "torchao AdamW fp32 (_AdamW)": ("torchao", lambda ps: _AdamW(ps, lr=lr))}
    except Exception as exc:
        print(f"torchao rows skipped: {type(exc).__name__}: {exc}")
        return {}


def llama_params(shapes: dict[str, tuple]) -> list[torch.nn.Parameter]:
    """fp32 params of the given shapes with small random grads, seed 0."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes.values()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def time_interleaved(opts: dict[str, torch.optim.Optimizer], rounds: int, warmup: int,
                     after_round: Callable[[int, dict, dict], None] = lambda done, wall, cpu: None
                     ) -> tuple[dict, dict]:
    """Wall and process-CPU milliseconds of each optimizer's step() over ``rounds`` rounds
    after ``warmup`` (name -> list); ``after_round(rounds done, warm-up included, wall, cpu)``
    sees the timings so far. Every
    round steps every optimizer once, in alternating order, so that load from other
    processes hits all rows alike. CPU time over wall time is the parallelism a step used."""
    wall: dict[str, list[float]] = {name: [] for name in opts}
    cpu: dict[str, list[float]] = {name: [] for name in opts}
    for r in range(warmup + rounds):
        order = list(opts) if r % 2 == 0 else list(reversed(opts))  # no row always follows another
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            opts[name].step()
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if r >= warmup:
                wall[name].append(elapsed * 1e3)
                cpu[name].append(elapsed_cpu * 1e3)
        after_round(r + 1, wall, cpu)
    return wall, cpu


def check_labels(rows: dict[str, tuple[str, callable]], opts: dict[str, torch.optim.Optimizer]) -> None:
    """The implementation label of every row must name what really ran."""
    for name, (impl, _) in rows.items():
        ran = chosen_impl(opts[name])
        if ran is not None and ran != impl:
            raise SystemExit(f"row {name!r} is labelled {impl!r} but ran {ran!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (each steps every optimizer once)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--skip", default=None, help="regex: rows whose name matches are not run")
    ap.add_argument("--out", default="step_cpu", help="results file name (without .md / .csv)")
    args = ap.parse_args()

    shapes = llama_shapes(args.hidden, args.intermediate, args.layers, args.vocab, kv_heads_ratio=4)
    params = llama_params(shapes)
    numel = sum(p.numel() for p in params)
    print(f"{len(params)} tensors, {numel / 1e6:.1f}M params, {torch.get_num_threads()} threads, {cpu_model()}, "
          f"native ISA {build.isa()}")

    rows = optimizer_rows(lr=1e-5)
    if args.skip:
        rows = {name: row for name, row in rows.items() if not re.search(args.skip, name)}
    opts = {name: make(params) for name, (_, make) in rows.items()}
    times, _ = time_interleaved(opts, args.rounds, args.warmup,
                                lambda done, *_: print(f"round {done}/{args.warmup + args.rounds} done"))
    check_labels(rows, opts)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    fused, bnb_ms = med["torch AdamW fused"], med.get("bitsandbytes AdamW8bit")
    ds_ms = med.get(DEEPSPEED_ROW)
    try:
        import bitsandbytes
        bnb_version = bitsandbytes.__version__
    except ImportError:
        bnb_version = "absent"
    meta = {"device": f"{os.cpu_count()}-core CPU, {cpu_model()}", "threads": torch.get_num_threads(),
            "date": datetime.date.today().isoformat(), "native_isa": build.isa(),
            "torch": torch.__version__, "bitsandbytes": bnb_version, "params": numel, "tensors": len(params),
            "rounds": args.rounds}
    records = []
    for name, (impl, _) in rows.items():
        records.append({"optimizer": name, "impl": impl, "ms_per_step": round(med[name], 2),
                        "min_ms": round(min(times[name]), 2), "max_ms": round(max(times[name]), 2),
                        "x_torch_fused": round(med[name] / fused, 2),
                        # best-vs-best ratio: on a shared CPU the minima are least disturbed by other load
                        "x_torch_fused_min": round(min(times[name]) / min(times["torch AdamW fused"]), 2),
                        "x_deepspeed": round(med[name] / ds_ms, 2) if ds_ms else "",
                        "bnb8bit_over_this": round(bnb_ms / med[name], 1) if bnb_ms else "",
                        "state_bytes_per_param": round(state_bytes(opts[name]) / numel, 3),
                        "gb_per_s": round(minimum_traffic(state_bytes(opts[name]), numel) / med[name] / 1e6, 1),
                        **meta})
    write(records, args)


def minimum_traffic(state_total: int, numel: int) -> int:
    """Bytes an elementwise step must move at least: fp32 param read and written, grad read,
    every state read and written. ms/step against it says who runs at memory speed (the
    peers' fp32 steps) and who is bound by instructions; tightfit's second read of the
    grad (the NaN/Inf guard) is not counted."""
    return numel * 12 + 2 * state_total


def write(records: list[dict], args) -> None:
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / f"{args.out}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    cols = ["optimizer", "impl", "ms_per_step", "min_ms", "max_ms", "x_torch_fused", "x_torch_fused_min",
            "x_deepspeed", "bnb8bit_over_this", "state_bytes_per_param", "gb_per_s", "native_isa", "device", "date"]
    m = records[0]
    lines = [f"# One optimizer step on CPU ({m['params'] / 1e6:.1f}M params in {m['tensors']} Llama-shaped fp32 "
             f"tensors: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab})", "",
             f"Device: {m['device']}, {m['threads']} threads; date {m['date']}; native ISA level {m['native_isa']}; "
             f"torch {m['torch']}, bitsandbytes {m['bitsandbytes']}; median of {m['rounds']} interleaved rounds "
             "after warm-up. gb_per_s: the step's minimum traffic (fp32 param read and written, grad read, "
             "states read and written) over its median time.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in records]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
