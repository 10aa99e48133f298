"""``tightfit`` entry point: a registry of subcommands, each with examples in its --help.

Every error a user can cause ends in one line naming the value and what to do, with a
non-zero exit code; ``--debug`` shows the traceback instead. Third-party chatter that
says nothing about the user's run (progress bars of weight loading, deprecation notices
aimed at library authors, optional-kernel hints) is silenced unless ``--debug``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable

# name -> (module path, help); each module defines add_arguments(parser) and run(args) -> int
COMMANDS: dict[str, tuple[str, str]] = {
    "optims": ("tightfit.cli.optims", "list update rules, state codecs and optimizer names with state bytes/param"),
    "plan": ("tightfit.cli.plan", "plan the memory of a fine-tuning step: components, peak, verdict, what to change"),
    "train": ("tightfit.cli.train", "fine-tune a causal LM (full, LoRA, QLoRA) with any tightfit optimizer; resumable"),
    "bench": ("tightfit.cli.bench", "train the same run under several optimizers; plots and result tables"),
    "generate": ("tightfit.cli.generate", "generate text with a fine-tuned model or adapter (a train --out folder)"),
}

EXIT_INTERRUPTED = 130  # the shell's code for a process ended by SIGINT

# A negative number such as -1e-4: argparse only takes -1 and -0.5 as values, not exponents.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tightfit")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    import importlib

    parser = argparse.ArgumentParser(prog="tightfit", description="Memory-efficient optimizers for fine-tuning.")
    parser.add_argument("--version", action="version", version=f"tightfit {version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and third-party warnings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners = {}
    for name, (module_path, help_text) in COMMANDS.items():
        module = importlib.import_module(module_path)
        cmd = sub.add_parser(name, help=help_text, description=module.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show tracebacks and third-party warnings")
        module.add_arguments(cmd)
        runners[name] = module.run
    return parser, runners


def join_negative_values(argv: list[str]) -> list[str]:
    """``--lr -1e-4`` -> ``--lr=-1e-4`` so the value reaches the option's own check."""
    out: list[str] = []
    for token in argv:
        prev = out[-1] if out else ""
        if NEGATIVE_NUMBER.match(token) and prev.startswith("--") and "=" not in prev:
            out[-1] = f"{prev}={token}"
        else:
            out.append(token)
    return out


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"tightfit: warning: {str(message).splitlines()[0]}", file=sys.stderr, flush=True)


def quiet_third_party() -> None:
    """Before transformers/bitsandbytes load: no weight-loading progress bars, no advisory
    logging, no FutureWarnings meant for library authors, one-line warnings."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # optional-kernel hints ("pip install kernels", torchao's CUDA-only .so files) and torch.compile
    # deprecations that torchao triggers on import (transformers imports it to list quantizers)
    for name in ("bitsandbytes", "torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|accelerate)(\.|$)")
    warnings.showwarning = one_line_warning


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def describe_os_error(err: OSError) -> str:
    where = f" {err.filename}" if err.filename else ""
    return f"cannot use{where}: {err.strerror or first_line(err)}"


def main(argv: list[str] | None = None) -> int:
    argv = join_negative_values(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in argv
    if not debug:
        quiet_third_party()
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    prefix = f"tightfit {args.command}"
    try:
        return runners[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\n{prefix}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:
        if debug:
            raise
        print(f"{prefix}: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 -- one line for the user; --debug shows where
        if debug:
            raise
        print(f"{prefix}: error: {type(err).__name__}: {first_line(err)} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
