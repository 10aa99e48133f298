"""Plan the memory of one fine-tuning step before you start: every component (weights,
masters, gradients, optimizer state on device or host, LoRA adapters, activations,
logits/loss, step temporaries, CUDA context), the peak, a verdict for a GPU and the
changes that make it fit (cheapest in speed first), with the largest micro-batch and
sequence length that fit. Each change is printed as the flags that make it: `plan` and
`tightfit train` take the same flags.

MODEL is a bundled hub id or alias (meta-llama/Llama-3.1-8B, llama-3.1-8b, qwen2.5-7b,
smollm2-135m, ...), a local config.json or model folder, any hub id when the network
allows, or a `tightfit train` run: its run_config.json or output folder (flags given
here override the run's). --optim takes every tightfit name (tightfit optims),
paged_<name>, and peers torch:adamw torch:adam torch:sgd torch:adafactor bnb:adamw_8bit
bnb:paged_adamw_8bit bnb:adamw_32bit bnb:paged_adamw_32bit bnb:lion_8bit. The plan is
for a GPU step unless --device cpu. --simulate also runs one real training step on fake
tensors (no memory, no GPU) under a tracker of live tensor bytes and reports how the
analytic plan of that CPU step compares.

exit status: 0 the plan fits (or no --gpu was given), 3 it does not fit on --gpu,
2 bad input.

examples:
  tightfit plan meta-llama/Llama-3.1-8B --method qlora --optim paged_adamw_8bit --gpu 24
  tightfit plan llama-3.2-1b --optim adamw_8bit --gpu rtx4090 --batch-size 4 --seq 1024 --checkpointing
  tightfit plan ./my-model/ --method lora --lora-r 8 --lora-targets qv --optim bnb:adamw_8bit --gpu A100-80GB
  tightfit plan llama-3.1-8b --optim adamw_8bit --precision bf16-sr --in-backward --loss chunked --gpu 24
  tightfit plan runs/my-run/run_config.json --gpu 24GiB
  tightfit plan smollm2-135m --optim adamw_8bit --seq 512 --simulate --format json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..finetune import FineTune, add_finetune_arguments, effective, from_run_config, given_finetune, to_flags
from ..planner.api import DEVICES, PLAN_DEFAULTS, Plan
from ..planner.units import format_bytes

EXIT_DOES_NOT_FIT = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="bundled hub id or alias, config.json, model folder, hub id (online), or a "
                                      "tightfit train run_config.json / output folder")
    parser.add_argument("--gpu", help="GPU memory (24 = 24GiB; GB on a GPU means GiB) or name (rtx4090, a100-80gb, "
                                      "h100-80gb, t4, ...)")
    parser.add_argument("--device", choices=DEVICES, default="cuda",
                        help="plan a GPU step (cuda: fused kernels, CUDA context; default) or a CPU step")
    parser.add_argument("--optim", default=argparse.SUPPRESS, help=f"optimizer name [{PLAN_DEFAULTS.optim}]")
    add_finetune_arguments(parser.add_argument_group("fine-tune settings (the same flags as tightfit train)"),
                           PLAN_DEFAULTS, suppress=True)
    parser.add_argument("--simulate", action="store_true", help="also run one step on fake tensors and report its peak")
    parser.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: table)")


def run_config_path(spec: str) -> Path | None:
    """The run_config.json ``spec`` names (the file or a train output folder), else None."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "run_config.json").is_file() and not (path / "config.json").is_file():
        return path / "run_config.json"
    return path if path.is_file() and path.name == "run_config.json" else None


def finetune_from_args(args: argparse.Namespace) -> FineTune:
    saved = run_config_path(args.model)
    base = from_run_config(saved) if saved else PLAN_DEFAULTS.finetune()
    given = given_finetune(args)
    given.pop("model")  # the positional MODEL: a model, or the run whose model is planned
    if hasattr(args, "optim"):
        given["optim"] = args.optim
    return dataclasses.replace(base, **given, model=base.model if saved else args.model)


def run(args: argparse.Namespace) -> int:
    from ..planner.api import plan

    try:
        ft = finetune_from_args(args)
        if args.device == "cpu":  # what tightfit train runs on a CPU (fp32)
            ft = effective(ft, "cpu")
        result = plan(ft, gpu=args.gpu, device=args.device, simulate=args.simulate)
    except ValueError as exc:
        print(f"tightfit plan: error: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print_table(result)
    return EXIT_DOES_NOT_FIT if result.fits is False else 0


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
        flags = " ".join(to_flags(row.get("settings", {})))
        if row["kind"] == "change":
            lines.append(f"- {row['change']} ({flags}): {format_bytes(row['device_total'])}"
                         f"{' fits' if row['fits'] else ''} — {row['speed']}")
        elif row["kind"] == "to_fit":
            counts = {name: row["changes"].count(name) for name in row["changes"]}  # ordered, repeats folded
            steps = " + ".join(f"{name}{f' (x{n})' if n > 1 else ''}" for name, n in counts.items()) or "nothing helps"
            lines.append(f"to fit: {steps} -> {flags} = {format_bytes(row['device_total'])}"
                         f"{'' if row['fits'] else ' (still does not fit)'}")
        else:
            lines.append(f"largest that fit ({row['for']}): --batch-size {row['max_batch']} at this seq, "
                         f"--seq {row['max_seq']} at this micro-batch")
    return lines


def title_of(result: Plan) -> str:
    m, s = result.model, result.settings
    switches = [name for name, on in (("checkpointing", s["checkpointing"]), ("in-backward", s["in_backward"]),
                                      ("activations offloaded", s["offload_activations"]),
                                      (f"{s['loss']} loss", True)) if on]
    lora = (f", LoRA r={s['lora_r']} alpha={s['lora_alpha']} on {s['lora_targets']} ({s['adapter_dtype']})"
            if s["lora_r"] else "")
    return (f"{m['name']} ({m['params'] / 1e9:.3f}B params, {m['source']}) — {s['method']}, {s['optim']}"
            + (f" (device budget {s['paged_budget']})" if s["paged_budget"] else "")
            + f", batch {s['batch_size']} x seq {s['seq']} (accum {s['grad_accum']}), {s['precision']}"
            + f" on {'a GPU' if result.device == 'cuda' else 'a CPU'}{lora}, " + ", ".join(switches))


def print_table(result: Plan) -> None:
    m = result.model
    title = title_of(result)
    rows = [(c.name, format_bytes(c.device), format_bytes(c.host) if c.host else "-", c.detail)
            for c in result.components]
    kinds = ", ".join(f"{k} {v / 1e6:,.1f}M" for k, v in m["params_by_kind"].items())
    extra = result.device_total - result.peak_allocated
    summary = [f"parameters: {kinds}",
               f"peak: {format_bytes(result.device_total)} on the device (at {result.peak_at}; "
               + (f"tensors {format_bytes(result.peak_allocated)} + context and slack {format_bytes(extra)}; "
                  if extra else "")
               + f"persistent {format_bytes(result.persistent)}); host {format_bytes(result.host_total)}"
               + (f"; CUDA managed {format_bytes(result.managed)}" if result.managed else ""),
               "components are sizes; the peak counts what is live at once"]
    if result.managed:
        shown = result.device_total + result.managed
        if result.gpu:  # the driver keeps managed pages on the GPU only while it has room
            shown = min(shown, max(result.gpu["bytes"], result.device_total))
        summary.append(f"nvidia-smi may show up to {format_bytes(shown)}: the managed state stays on the GPU while "
                       "it has room (torch.cuda.max_memory_allocated does not count it)")
    if result.simulation:
        sim = result.simulation
        summary.append(f"simulation: {sim['skipped']}" if "skipped" in sim else
                       "simulation check (one CPU step on fake tensors): analytic / simulated = "
                       f"{sim['analytic_same_step'] / sim['peak_bytes']:.3f}")
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
