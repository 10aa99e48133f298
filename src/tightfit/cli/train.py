"""Fine-tune a causal LM with any tightfit optimizer, or a peer (torch:adamw, bnb:adamw_8bit, ...).

Writes <out>/log.jsonl (one record per step), atomic checkpoints in <out>/checkpoints
(trainable weights, optimizer, scheduler, RNG, data position) and <out>/final (adapter
for lora/qlora, full model otherwise). --resume continues an interrupted run exactly.
Progress shows loss, tokens/s and peak memory (CUDA max allocated; on CPU the exact
bytes of parameters + gradients + optimizer state, marked "tracked").

examples:
  tightfit train --out runs/tiny                                   # llama-tiny on Shakespeare, full FT
  tightfit train --model smollm2-135m --method lora --optim adamw_8bit --steps 200 --out runs/lora
  tightfit train --model ./my-model --method qlora --data notes.jsonl --seq 512 --out runs/q
  tightfit train --optim torch:adamw --data book.txt,extra/ --out runs/peer
  tightfit train --out runs/lora --resume                          # continue where it stopped
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..train.config import TrainConfig
from ..train.errors import TrainInputError
from ..train.loop import train
from ..train.peers import PEERS
from .train_args import add_config_arguments, add_threads_argument, apply_threads, given_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optim", default=argparse.SUPPRESS,
                        help="tightfit name (tightfit optims) or peer torch:adamw|torch:adam|torch:sgd|torch:adafactor|"
                             "bnb:adamw_8bit|bnb:paged_adamw_8bit|bnb:adamw_32bit|bnb:paged_adamw_32bit|bnb:lion_8bit "
                             "[adamw_32bit]")
    parser.add_argument("--out", required=True, help="output folder (refused if it already holds a run, unless --resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_argument(parser)
    parser.add_argument("--format", choices=["table", "json"], default="table", help="summary format (default: table)")
    add_config_arguments(parser, TrainConfig())


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = given_settings(args)
    if hasattr(args, "optim"):
        given["optim"] = args.optim
    base = TrainConfig()
    saved = Path(args.out) / "run_config.json"
    if args.resume and saved.exists():  # resume: the saved run's settings (minus its stop), then what was given
        base = TrainConfig.from_saved(json.loads(saved.read_text())).replace(max_steps=None)
    return base.replace(**given, out=args.out, resume=args.resume, progress=not args.quiet)


def run(args: argparse.Namespace) -> int:
    config = None
    try:
        apply_threads(args)
        config = config_from_args(args)
        result = train(config)
    except TrainInputError as err:
        print(f"tightfit train: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 -- a peer library failing here (bnb without CUDA ...) gets one line
        if config is None or config.optim not in PEERS:
            raise  # tightfit's own failures keep their traceback
        print(f"tightfit train: error: optimizer {config.optim} failed on this machine: "
              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
        return 1
    summary = {k: v for k, v in result.to_dict().items() if k not in ("train_loss", "eval_loss")}
    summary["final_train_loss"] = result.train_loss[-1][1] if result.train_loss else None
    if args.format == "json":
        print(json.dumps(summary, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tightfit train: {config.model} / {config.method} / {config.optim}")
    table.add_column("")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
    return 0
