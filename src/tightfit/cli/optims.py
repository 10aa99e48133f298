"""List what tightfit can build: update rules, state codecs, and registered optimizer names.

Bytes/param are exact, computed from each codec's nbytes and each rule's state
declarations for one 4096x4096 parameter (quantization blocks and absmax included).
A name whose rule keeps no state at its default settings (SGD at momentum 0) shows 0
and the bytes its codec takes once momentum is on. Piped output is never truncated.

examples:
  tightfit optims
  tightfit optims --format json
  tightfit optims --shape 1024 1024
"""

from __future__ import annotations

import argparse
import json

from ..codecs import CODECS
from ..names import OPTIMIZER_NAMES
from ..rules import RULES
from ..state_bytes import state_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: table)")
    parser.add_argument("--shape", type=int, nargs="+", default=[4096, 4096], metavar="N",
                        help="parameter shape used for bytes/param (default: 4096 4096)")


def collect(shape: tuple[int, ...]) -> dict:
    numel = 1
    for s in shape:
        numel *= s
    codecs = [{"name": name, "description": codec.describe(),
               "bytes_per_param_signed": codec.nbytes(shape, "signed") / numel} for name, codec in CODECS.items()]
    rules = [{"name": name, "states": [f"{s.name} ({s.kind})" for s in rule.state_specs(shape, rule.defaults)],
              "defaults": {k: v for k, v in rule.defaults.items()}, "paper": rule.paper} for name, rule in RULES.items()]
    names = []
    for name, entry in sorted(OPTIMIZER_NAMES.items()):
        rule = entry.cls.rule_for(entry.options)
        hyper = {k: v for k, v in entry.options.items() if k in rule.defaults}
        codec = entry.options.get("state", "fp32")
        row = {"name": name, "builds": entry.describe(), "rule": rule.name, "state": str(codec),
               "state_bytes_per_param": state_bytes(rule, codec, shape, hyper) / numel}
        row.update(stateless_note(rule, codec, shape, hyper, row["state_bytes_per_param"]))
        names.append(row)
    return {"shape": list(shape), "codecs": codecs, "rules": rules, "names": names}


# momentum a stateless-by-default rule is shown with (any value > 0 gives the same bytes)
SHOWN_MOMENTUM = 0.9


def stateless_note(rule, codec, shape, hyper, per_param: float) -> dict:
    """For a name keeping no state at its defaults: why, and its bytes once momentum is on."""
    if per_param != 0 or rule.defaults.get("momentum", None) != 0 or hyper.get("momentum"):
        return {}
    numel = 1
    for s in shape:
        numel *= s
    with_momentum = state_bytes(rule, codec, shape, {**hyper, "momentum": SHOWN_MOMENTUM}) / numel
    return {"state_bytes_per_param_with_momentum": with_momentum,
            "note": f"no state at momentum 0 (the default); {with_momentum:.4f} with momentum > 0"}


def run(args: argparse.Namespace) -> int:
    data = collect(tuple(args.shape))
    if args.format == "json":
        print(json.dumps(data, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or redirected: full names and descriptions, never cut to 80 columns
        console = Console(width=400, soft_wrap=False)
    shape = "x".join(map(str, data["shape"]))
    codecs = Table(title="State codecs", title_justify="left")
    for col in ("codec", "storage", f"bytes/param per state ({shape})"):
        codecs.add_column(col)
    for c in data["codecs"]:
        codecs.add_row(c["name"], c["description"], f"{c['bytes_per_param_signed']:.4f}")
    rules = Table(title="Update rules", title_justify="left")
    for col in ("rule", "states", "paper"):
        rules.add_column(col)
    for r in data["rules"]:
        rules.add_row(r["name"], ", ".join(r["states"]) or "-", r["paper"])
    names = Table(title="Optimizer names (tightfit.create_optimizer / --optim)", title_justify="left")
    for col in ("name", "builds", f"state bytes/param ({shape})"):
        names.add_column(col)
    for n in data["names"]:
        names.add_row(n["name"], n["builds"], f"{n['state_bytes_per_param']:.4f}" + (f"  ({n['note']})" if "note" in n else ""))
    for table in (codecs, rules, names):
        console.print(table)
    return 0
