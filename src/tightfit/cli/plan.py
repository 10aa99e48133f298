"""Plan the memory of one fine-tuning step before you start: every component (weights,
masters, gradients, optimizer state on device or host, LoRA adapters, activations,
logits/loss, step temporaries, CUDA context), the peak, a verdict for a GPU and the
changes that make it fit (cheapest in speed first), with the largest micro-batch and
sequence length that fit.

MODEL is a bundled hub id or alias (meta-llama/Llama-3.1-8B, llama-3.1-8b, qwen2.5-7b,
smollm2-135m, ...), a local config.json or model folder, or any hub id when the network
allows. --optim takes every tightfit name (tightfit optims), paged_<name>, and peers
torch:adamw torch:adam torch:sgd torch:adafactor bnb:adamw_8bit bnb:paged_adamw_8bit
bnb:adamw_32bit bnb:paged_adamw_32bit bnb:lion_8bit. --simulate also runs one real
training step on fake tensors (no memory, no GPU) under a tracker of live tensor bytes.

examples:
  tightfit plan meta-llama/Llama-3.1-8B --method qlora --optim paged_adamw_8bit --gpu 24GiB
  tightfit plan llama-3.2-1b --optim adamw_8bit --gpu rtx4090 --batch 4 --seq 1024 --checkpointing
  tightfit plan ./my-model/ --method lora --lora-rank 8 --optim bnb:adamw_8bit --gpu A100-80GB
  tightfit plan smollm2-135m --optim adafactor --in-backward --stochastic-rounding --gpu T4
  tightfit plan smollm2-135m --optim adamw_8bit --seq 512 --simulate --format json
"""

from __future__ import annotations

import argparse
import json
import sys

from ..planner.api import METHODS, Plan
from ..planner.units import format_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="bundled hub id or alias, config.json, model folder, or hub id (online)")
    parser.add_argument("--gpu", help="GPU memory (24GiB, 80GB) or name (rtx4090, a100-80gb, h100-80gb, t4, ...)")
    parser.add_argument("--method", default="full", help=f"what trains: {', '.join(METHODS)} (default: full)")
    parser.add_argument("--optim", default="adamw_32bit", help="optimizer name (default: adamw_32bit)")
    parser.add_argument("--batch", type=int, default=1, help="micro-batch size (default: 1)")
    parser.add_argument("--seq", type=int, default=2048, help="sequence length in tokens (default: 2048)")
    parser.add_argument("--lora-rank", type=int, default=16, help="LoRA rank for lora/qlora (default: 16)")
    parser.add_argument("--dtype", default="bf16",
                        help="weight/compute dtype: bf16, fp16, fp32 (default: bf16; 16-bit full FT keeps fp32 masters)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing per block")
    parser.add_argument("--in-backward", action="store_true", help="update inside backward (tightfit optimizers)")
    parser.add_argument("--stochastic-rounding", action="store_true", help="bf16 weights, no fp32 master weights")
    parser.add_argument("--simulate", action="store_true", help="also run one step on fake tensors and report its peak")
    parser.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: table)")


def run(args: argparse.Namespace) -> int:
    from ..planner.api import plan

    try:
        result = plan(args.model, gpu=args.gpu, method=args.method, optim=args.optim, batch=args.batch, seq=args.seq,
                      lora_rank=args.lora_rank, checkpointing=args.checkpointing, in_backward=args.in_backward,
                      stochastic_rounding=args.stochastic_rounding, dtype=args.dtype, simulate=args.simulate)
    except ValueError as exc:
        print(f"tightfit plan: error: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print_table(result)
    return 0


def verdict(result: Plan) -> str:
    need = format_bytes(result.device_total)
    if result.gpu is None:
        return f"needs {need} of device memory (pass --gpu for a verdict)"
    cap = result.gpu["bytes"]
    word = "FITS" if result.fits else "DOES NOT FIT"
    margin = cap - result.device_total
    return (f"{word} on {result.gpu['name']} ({format_bytes(cap)}): needs {need}, "
            f"{'free' if margin >= 0 else 'short by'} {format_bytes(abs(margin))}")


def advice_lines(result: Plan) -> list[str]:
    lines = []
    for row in result.advice:
        settings = ", ".join(f"{k}={v}" for k, v in row.get("settings", {}).items())
        if row["kind"] == "change":
            lines.append(f"- {row['change']} ({settings}): {format_bytes(row['device_total'])}"
                         f"{' fits' if row['fits'] else ''} — {row['speed']}")
        elif row["kind"] == "to_fit":
            counts = {name: row["changes"].count(name) for name in row["changes"]}  # ordered, repeats folded
            steps = " + ".join(f"{name}{f' (x{n})' if n > 1 else ''}" for name, n in counts.items()) or "nothing helps"
            lines.append(f"to fit: {steps} -> {settings} = {format_bytes(row['device_total'])}"
                         f"{'' if row['fits'] else ' (still does not fit)'}")
        else:
            lines.append(f"largest that fit ({row['for']}): micro-batch {row['max_batch']} at this seq, "
                         f"seq {row['max_seq']} at this micro-batch")
    return lines


def print_table(result: Plan) -> None:
    m, s = result.model, result.settings
    title = (f"{m['name']} ({m['params'] / 1e9:.3f}B params, {m['source']}) — {s['method']}, {s['optim']}, "
             f"batch {s['batch']} x seq {s['seq']}, {s['dtype']}"
             + (f", LoRA r={s['lora_rank']}" if s["lora_rank"] else "")
             + (", checkpointing" if s["checkpointing"] else "") + (", in-backward" if s["in_backward"] else "")
             + (", stochastic rounding" if s["stochastic_rounding"] else ""))
    rows = [(c.name, format_bytes(c.device), format_bytes(c.host) if c.host else "-", c.detail)
            for c in result.components]
    kinds = ", ".join(f"{k} {v / 1e6:,.1f}M" for k, v in m["params_by_kind"].items())
    summary = [f"parameters: {kinds}",
               f"peak allocated: {format_bytes(result.peak_allocated)} (at {result.peak_at}); "
               f"persistent {format_bytes(result.persistent)}; host {format_bytes(result.host_total)}",
               "components are sizes; the peak counts what is live at once"]
    if result.simulation:
        sim = result.simulation
        device_peak = sim.get("device_peak_bytes", sim.get("peak_bytes"))
        summary.append(f"simulated step (fake tensors): {sim['skipped']}" if "skipped" in sim else
                       f"simulated step (fake tensors): peak {format_bytes(device_peak)} on the device "
                       f"(analytic / simulated = {sim['analytic_same_implementation'] / device_peak:.3f})")
        summary += [f"  note: {note}" for note in sim.get("notes", [])]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for row in rows:
            print(f"  {row[0]:32s} {row[1]:>12s} {row[2]:>12s}  {row[3]}")
        for line in summary + ["verdict: " + verdict(result)] + advice_lines(result):
            print(line)
        print("assumptions:\n" + "\n".join(f"  - {a}" for a in result.assumptions))
        return
    console = Console()
    table = Table(title=title, title_justify="left")
    for col, justify in (("component", "left"), ("device", "right"), ("host", "right"), ("how", "left")):
        table.add_column(col, justify=justify)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in summary:
        console.print(line, highlight=False)
    console.print(("[bold green]" if result.fits else "[bold red]" if result.fits is False else "[bold]")
                  + "verdict: " + verdict(result), highlight=False)
    for line in advice_lines(result):
        console.print(line, highlight=False, markup=False)
    console.print("assumptions:", highlight=False)
    for a in result.assumptions:
        console.print(f"  - {a}", highlight=False, markup=False)
