"""Issue 19's CPU step on the GPU machine's host cores: a gpu_all.sh phase.

step_cpu.py's one optimizer step over 88.1M parameters in Llama-shaped fp32 tensors, on
the many-core host a GPU offloads to rather than the 2-core development machine: tightfit
AdamW fp32 / 8-bit / 4-bit (native kernel) against the fp32 reference, DeepSpeedCPUAdam
when it imports and builds, else torch AdamW fused (the `reference` column names which),
with torch AdamW fused always and bitsandbytes AdamW8bit in the full run. Measured at all
the host's threads (torch.get_num_threads(); os.cpu_count() and the CPUs this process may
use recorded beside it) and at one thread, for the scaling picture. The thread count is
set with torch.set_num_threads before each set of rows: the native kernel passes
torch.get_num_threads() to its OpenMP loops, and torch and the peers share torch's OpenMP
runtime; the `cpu_per_wall` column (process CPU time over wall time) shows the parallelism
each step really used.

Every optimizer takes one untimed step first (the native kernel compiles on first use,
peers build or fail there: a failing row says why), then warm-up and timed rounds
interleaved as in step_cpu.py. step_cpu_host.csv and .md are rewritten after every round,
so a phase cut short by its budget keeps what it measured (the `rounds` column).

    python benchmarks/step_cpu_host.py [--results DIR] [--quick] [--dry-run] [--rounds 7] [--warmup 2]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

import tightfit
from tightfit.impl.native import build

from gpu_run import version_of
from result_tables import RESULTS, write_results
from state_sizes import state_bytes
from step_cpu import (DEEPSPEED_ROW, check_labels, cpu_model, deepspeed_rows, llama_params, llama_shapes,
                      minimum_traffic, time_interleaved)

LR = 1e-5
TORCH_FUSED = "torch AdamW fused"
BNB_ROW = "bitsandbytes AdamW8bit"
PEERS = ("deepspeed", "bnb")  # implementation labels of rows that are not ours or torch's
SHAPES = {"full": dict(hidden=1024, intermediate=2816, layers=2, vocab=32000),  # step_cpu.py's 88.1M
          "dry": dict(hidden=64, intermediate=128, layers=1, vocab=256)}
FIELDS = ["optimizer", "impl", "threads", "status", "ms_per_step", "min_ms", "max_ms", "rounds", "reference",
          "x_reference", "x_torch_fused", "x_one_thread", "bnb8bit_over_this", "cpu_per_wall", "gb_per_s",
          "state_bytes_per_param", "params", "tensors", "device", "cpu_count", "usable_cpus", "host_threads",
          "native_isa", "date", "torch", "tightfit", "bitsandbytes", "deepspeed"]


def host_rows(with_bnb: bool) -> dict[str, tuple[str, Callable]]:
    """Row name -> (implementation label, factory over a param list); the targets' rows first."""
    rows = {
        "tightfit AdamW 8bit": ("native", lambda ps: tightfit.AdamW(ps, lr=LR, state="8bit", impl="native")),
        "tightfit AdamW 4bit": ("native", lambda ps: tightfit.AdamW(ps, lr=LR, state="4bit", impl="native")),
        "tightfit AdamW fp32": ("native", lambda ps: tightfit.AdamW(ps, lr=LR, state="fp32", impl="native")),
        TORCH_FUSED: ("torch", lambda ps: torch.optim.AdamW(ps, lr=LR, fused=True)),
        **deepspeed_rows(LR),
    }
    if with_bnb:  # ~1 s a step on few threads: the full run only
        try:
            import bitsandbytes as bnb
            rows[BNB_ROW] = ("bnb", lambda ps: bnb.optim.AdamW8bit(ps, lr=LR))
        except ImportError as exc:
            print(f"{BNB_ROW} row skipped: {exc}")
    return rows


def thread_counts(host_threads: int) -> list[int]:
    """All the host's threads first (what the targets read), then one."""
    return list(dict.fromkeys([host_threads, 1]))


def reference_row(measured: set[str]) -> str:
    """The fp32 step the targets compare against: DeepSpeedCPUAdam when it ran, else torch fused."""
    return DEEPSPEED_ROW if DEEPSPEED_ROW in measured else TORCH_FUSED


def first_steps(rows: dict, params: list[torch.nn.Parameter]) -> tuple[dict, dict[str, str]]:
    """Each optimizer built and stepped once, untimed (kernel compilation, peers' builds, state
    allocation); a row that fails here is left out with its reason."""
    opts, failed = {}, {}
    for name, (_, make) in rows.items():
        try:
            opts[name] = make(params)
            opts[name].step()
        except Exception as error:  # a peer that cannot run here: the row says why, the others go on
            failed[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
            opts.pop(name, None)
            print(f"{name}: {failed[name]}", flush=True)
    check_labels({n: r for n, r in rows.items() if n in opts}, opts)
    return opts, failed


def measured_rows(timings: dict[int, tuple[dict, dict]], opts: dict, rows: dict, numel: int) -> list[dict]:
    """The table rows from the timings so far (threads -> (wall, cpu), each name -> ms per
    round); a name with no timed round yet has no row. Ratios are against rows at the same
    thread count; x_one_thread is the speed-up over the same row at one thread."""
    one_thread = {name: statistics.median(ts) for name, ts in timings.get(1, ({}, {}))[0].items() if ts}
    out = []
    for threads, (wall, cpu) in timings.items():
        med = {name: statistics.median(ts) for name, ts in wall.items() if ts}
        reference = reference_row(set(med))
        for name, ms in med.items():
            states = state_bytes(opts[name])
            out.append({
                "optimizer": name, "impl": rows[name][0], "threads": threads, "status": "ok",
                "ms_per_step": round(ms, 2), "min_ms": round(min(wall[name]), 2), "max_ms": round(max(wall[name]), 2),
                "rounds": len(wall[name]), "reference": reference,
                "x_reference": round(ms / med[reference], 3) if reference in med else "",
                "x_torch_fused": round(ms / med[TORCH_FUSED], 3) if TORCH_FUSED in med else "",
                "x_one_thread": round(one_thread[name] / ms, 2) if name in one_thread else "",
                "bnb8bit_over_this": round(med[BNB_ROW] / ms, 1) if BNB_ROW in med else "",
                "cpu_per_wall": round(sum(cpu[name]) / sum(wall[name]), 2),
                "gb_per_s": round(minimum_traffic(states, numel) / ms / 1e6, 1),
                "state_bytes_per_param": round(states / numel, 3)})
    return out


def facts(params: list[torch.nn.Parameter], host_threads: int) -> dict:
    """Device, date and versions for every row."""
    return {"params": sum(p.numel() for p in params), "tensors": len(params), "device": cpu_model(),
            "cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "host_threads": host_threads,
            "native_isa": build.isa(), "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            **{m: version_of(m) for m in ("tightfit", "bitsandbytes", "deepspeed")}}


def dry_run(results: Path) -> int:
    """Tiny tensors, one thread: every row built and stepped once, nothing timed."""
    torch.set_num_threads(1)
    params = llama_params(llama_shapes(**SHAPES["dry"], kv_heads_ratio=4))
    rows = host_rows(with_bnb=True)
    opts, failed = first_steps(rows, params)
    table = [{"optimizer": name, "impl": impl, "threads": 1,
              "status": failed.get(name, "dry run: built and stepped on cpu")} for name, (impl, _) in rows.items()]
    write_results("step_cpu_host", FIELDS, table, facts(params, 1), results)
    ours_failed = [name for name in failed if rows[name][0] not in PEERS]
    return 1 if ours_failed else 0  # a peer may be missing or broken here; our own rows must run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"folder for the result tables [{RESULTS}]")
    parser.add_argument("--quick", action="store_true", help="3 timed rounds after 1 warm-up, no bitsandbytes row")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny tensors: build and step every row once, time nothing")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per thread count [7; quick 3]")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds per thread count [2; quick 1]")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else 3 if args.quick else 7
    warmup = args.warmup if args.warmup is not None else 1 if args.quick else 2
    if rounds < 1 or warmup < 0:
        parser.error(f"--rounds {rounds} must be >= 1 and --warmup {warmup} >= 0")
    if args.dry_run:
        return dry_run(args.results)

    host_threads = torch.get_num_threads()
    params = llama_params(llama_shapes(**SHAPES["full"], kv_heads_ratio=4))
    numel = sum(p.numel() for p in params)
    common = facts(params, host_threads)
    print(f"{numel / 1e6:.1f}M params, {common['device']}, {os.cpu_count()} CPUs, torch threads {host_threads}, "
          f"native ISA {common['native_isa']}", flush=True)
    rows = host_rows(with_bnb=not args.quick)
    opts, failed = first_steps(rows, params)
    skipped = [{"optimizer": n, "impl": rows[n][0], "status": why} for n, why in failed.items()]
    timings: dict[int, tuple[dict, dict]] = {}

    def write(quiet: bool = True) -> None:
        write_results("step_cpu_host", FIELDS, measured_rows(timings, opts, rows, numel) + skipped, common,
                      args.results, quiet=quiet)

    def after_round(threads: int, done: int, wall: dict, cpu: dict) -> None:
        timings[threads] = (wall, cpu)  # the lists grow in place: every finished round is written
        if done > warmup:
            write()

    for threads in thread_counts(host_threads):
        torch.set_num_threads(threads)
        live = {name: opt for name, opt in opts.items() if threads == host_threads or name != BNB_ROW}
        wall, _ = time_interleaved(live, rounds, warmup, functools.partial(after_round, threads))
        print(f"{threads} threads: " + ", ".join(f"{n} {statistics.median(t):.1f} ms" for n, t in wall.items()),
              flush=True)
    torch.set_num_threads(host_threads)
    write(quiet=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
