"""``tightfit`` entry point: a registry of subcommands, each with examples in its --help."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

# name -> (module path, help); each module defines add_arguments(parser) and run(args) -> int
COMMANDS: dict[str, tuple[str, str]] = {
    "optims": ("tightfit.cli.optims", "list update rules, state codecs and optimizer names with state bytes/param"),
    "plan": ("tightfit.cli.plan", "plan the memory of a fine-tuning step: components, peak, verdict, what to change"),
    "train": ("tightfit.cli.train", "fine-tune a causal LM (full, LoRA, QLoRA) with any tightfit optimizer; resumable"),
    "bench": ("tightfit.cli.bench", "train the same run under several optimizers; plots and result tables"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    import importlib

    parser = argparse.ArgumentParser(prog="tightfit", description="Memory-efficient optimizers for fine-tuning.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners = {}
    for name, (module_path, help_text) in COMMANDS.items():
        module = importlib.import_module(module_path)
        cmd = sub.add_parser(name, help=help_text, description=module.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(cmd)
        runners[name] = module.run
    return parser, runners


def main(argv: list[str] | None = None) -> int:
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return runners[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
