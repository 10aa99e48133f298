"""Fine-tune a causal LM with any tightfit optimizer, or a peer (torch:adamw, bnb:adamw_8bit, ...).

Writes <out>/log.jsonl (one record per step), atomic checkpoints in <out>/checkpoints
(trainable weights, optimizer, scheduler, RNG, data position) and <out>/final (adapter
for lora/qlora, full model otherwise). --resume continues an interrupted run exactly.
Progress shows loss, tokens/s and peak memory (CUDA max allocated; on CPU the exact
bytes of parameters + gradients + optimizer state, marked "tracked"). Before training it
says what data it found (tokens, blocks, epochs, held-out size). Ctrl-C stops with the
exact --resume command; a run stopped before its first checkpoint resumes from step 0; a
damaged newest checkpoint falls back to the previous one. Try the result with
`tightfit generate <out>`.

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

from ..train.checkpoint import list_checkpoints
from ..train.config import TrainConfig
from ..train.errors import NothingToDo, TrainInputError, note
from ..train.loop import train
from ..peers import PEERS
from ..train.run_folder import resume_command
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
    config = base.replace(**given, out=args.out, resume=args.resume, progress=not args.quiet)
    return clamp_default_warmup(config, warmup_given="warmup" in given or args.resume)


def clamp_default_warmup(config: TrainConfig, warmup_given: bool) -> TrainConfig:
    """The default warmup (10) longer than a short run: warm up over the whole run instead
    (an explicit --warmup larger than --steps stays an error)."""
    if warmup_given or config.warmup <= config.steps:
        return config
    note(f"the default --warmup {config.warmup} is longer than --steps {config.steps}: using --warmup {config.steps}")
    return config.replace(warmup=config.steps)


def interrupted_message(out: Path) -> str:
    """Where an interrupted run stands, and the command that continues it."""
    if not (out / "run_config.json").exists():
        return "interrupted before the run started (nothing written)"
    at = ""
    lines = (out / "log.jsonl").read_text().splitlines() if (out / "log.jsonl").exists() else []
    for line in reversed(lines):  # the last whole record (the kill may have cut the very last line)
        try:
            at = f" at step {json.loads(line)['step']}"
            break
        except (ValueError, KeyError, TypeError):
            continue
    found = list_checkpoints(out)
    if not found:
        return f"interrupted{at}, before the first checkpoint; restart it with: {resume_command(out)}"
    return (f"interrupted{at}; latest checkpoint: {found[-1]} (step {int(found[-1].name.split('-')[1])}); "
            f"continue with: {resume_command(out)}")


def run(args: argparse.Namespace) -> int:
    config = None
    try:
        apply_threads(args)
        config = config_from_args(args)
        result = train(config)
    except TrainInputError as err:
        print(f"tightfit train: error: {err}", file=sys.stderr)
        return 2
    except NothingToDo as done:
        note(str(done))
        return 0
    except KeyboardInterrupt:
        print(f"\ntightfit train: {interrupted_message(Path(args.out))}", file=sys.stderr)
        return 130
    except OSError as err:  # disk full, folder removed mid-run ...: the file, and how to continue
        from .main import describe_os_error

        if getattr(args, "debug", False):
            raise
        hint = f"; once fixed, continue with: {resume_command(Path(args.out))}" \
            if (Path(args.out) / "run_config.json").exists() else ""
        print(f"tightfit train: error: {describe_os_error(err)}{hint}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 -- a peer library failing here (bnb without CUDA ...) gets one line
        if config is None or config.optim not in PEERS:
            raise  # the entry point prints one line (the traceback with --debug)
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
