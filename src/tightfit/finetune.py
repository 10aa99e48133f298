"""``FineTune``: one fine-tuning run's memory-relevant settings, shared by ``tightfit plan``,
``tightfit train``, ``tightfit bench`` and the Python API (``tightfit.planner.plan``,
``tightfit.train.TrainConfig``, which extends it with the training-only knobs).

Every field has one command-line flag, the same in every command (``FLAGS``; older
spellings stay accepted as aliases). Precision modes (``PRECISIONS``):

* ``fp32``: fp32 weights and compute.
* ``bf16``: bf16 weights and compute; 16-bit trainable weights get fp32 master copies
  that the optimizer steps (LoRA: the base is bf16, the adapters keep ``adapter_dtype``).
* ``bf16-autocast``: fp32 weights under bf16 autocast (Hugging Face ``bf16=True`` on an
  fp32 model): fp32 gradients and state, bf16 activations and weight casts.
* ``bf16-sr``: pure bf16 weights updated with stochastic rounding, no masters.

On a CPU every mode computes in fp32 (bf16 math there is ~25x slower); ``effective``
says what a device runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METHODS = ("full", "lora", "qlora")
# mode -> (weight dtype, compute dtype, fp32 masters for 16-bit trainables, stochastic rounding)
PRECISIONS: dict[str, tuple[str, str, bool, bool]] = {
    "fp32": ("fp32", "fp32", False, False),
    "bf16": ("bf16", "bf16", True, False),
    "bf16-autocast": ("fp32", "bf16", False, False),
    "bf16-sr": ("bf16", "bf16", False, True),
}
LOSSES = ("full", "chunked")
ADAPTER_DTYPES = ("fp32", "bf16")
LORA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_TARGET_SETS = {"all-linear": LORA_LINEARS, "attention": LORA_LINEARS[:4], "qv": ("q_proj", "v_proj")}
# tokens per chunk of the chunked cross-entropy (train/loss.py): logits of one chunk live at
# once (512 x a 128k vocabulary: ~0.9 GB with the fp32 log-softmax and gradients), while a
# 512-row lm_head matmul still runs near full speed
LOSS_CHUNK_TOKENS = 512


@dataclass
class FineTune:
    model: str = "llama-tiny"
    method: str = "full"
    optim: str = "adamw_32bit"
    paged_budget: str | None = None  # page optimizer state to host, keeping up to this much on the device
    precision: str = "bf16"
    in_backward: bool = False
    checkpointing: bool = False
    offload_activations: bool = False
    loss: str = "full"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"
    adapter_dtype: str = "fp32"
    batch_size: int = 8
    seq: int = 128
    grad_accum: int = 1

    def finetune(self) -> "FineTune":
        """The fine-tune part of this object (a TrainConfig is one)."""
        return FineTune(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FineTune)})


FINETUNE_FIELDS = tuple(f.name for f in dataclasses.fields(FineTune))
# field -> legacy name accepted when reading a saved run_config.json
LEGACY_KEYS = {"grad_checkpointing": "checkpointing"}


def _choice(flag: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {flag.lstrip('-')} {value!r} (allowed: {', '.join(map(str, allowed))})")


def lora_target_modules(text: str) -> tuple[str, ...]:
    """Module names of ``--lora-targets``: a named set or a comma list of linears."""
    if text in LORA_TARGET_SETS:
        return LORA_TARGET_SETS[text]
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [n for n in names if n not in LORA_LINEARS]
    if not names or bad:
        raise ValueError(f"--lora-targets {text!r}: unknown {', '.join(bad) or 'empty list'} (allowed: "
                         f"{', '.join(LORA_TARGET_SETS)}, or a comma list of {', '.join(LORA_LINEARS)})")
    return names


def check_finetune(ft: FineTune) -> None:
    """ValueError naming the bad value and what is allowed."""
    _choice("--method", ft.method, METHODS)
    _choice("--precision", ft.precision, tuple(PRECISIONS))
    _choice("--loss", ft.loss, LOSSES)
    _choice("--adapter-dtype", ft.adapter_dtype, ADAPTER_DTYPES)
    for name in ("batch_size", "seq", "grad_accum", "lora_r"):
        value = getattr(ft, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value!r} must be >= 1 (an integer)")
    if ft.method != "full":
        lora_target_modules(ft.lora_targets)
        if ft.lora_alpha <= 0:
            raise ValueError(f"--lora-alpha {ft.lora_alpha} must be > 0")
    if ft.paged_budget is not None:
        from .placement.sizes import parse_size

        parse_size(ft.paged_budget)
        if ":" in ft.optim:
            raise ValueError(f"--paged-budget needs a tightfit optimizer (got {ft.optim!r}; bnb/torch peers page "
                             "all or nothing: use bnb:paged_*)")
    if ft.in_backward and ":" in ft.optim:
        raise ValueError(f"--in-backward needs a tightfit optimizer (got {ft.optim!r}; allowed: tightfit names, "
                         "e.g. adamw_8bit)")
    if ft.precision == "bf16-sr" and ":" in ft.optim:
        raise ValueError(f"--precision bf16-sr needs a tightfit optimizer (stochastic rounding), got {ft.optim!r}")
    if is_offloaded(ft.optim):
        if ft.precision == "bf16-sr":
            raise ValueError(f"--optim {ft.optim} with --precision bf16-sr: offload keeps fp32 master weights on the "
                             "host, so there is nothing to round stochastically (allowed: --precision bf16 or fp32)")
        if ft.paged_budget is not None:
            raise ValueError(f"--paged-budget with --optim {ft.optim}: offload already keeps the whole optimizer "
                             "state in host memory (allowed: one of the two)")
    if ft.in_backward and has_masters(ft):
        raise ValueError("--in-backward with --precision bf16 (fp32 master weights) is not supported: the update "
                         "runs on the masters after backward; use --precision bf16-sr, bf16-autocast or fp32")


def is_offloaded(optim: str) -> bool:
    """True for a tightfit name that offloads (``offload_<name>``: placement/offload.py)."""
    from .names import OPTIMIZER_NAMES

    entry = OPTIMIZER_NAMES.get(optim)
    return entry is not None and bool(entry.options.get("offload"))


def has_masters(ft: FineTune) -> bool:
    """True when 16-bit trainables get fp32 master copies on the device (bf16 full FT, or bf16
    adapters), unless the optimizer offloads: it keeps its own fp32 masters on the host."""
    return (PRECISIONS[ft.precision][2] and (ft.method == "full" or ft.adapter_dtype == "bf16")
            and not is_offloaded(ft.optim))


def effective(ft: FineTune, device: str) -> FineTune:
    """What runs on ``device`` ("cuda" or "cpu"): on a CPU every precision computes in fp32."""
    if device == "cpu" and ft.precision != "fp32":
        return dataclasses.replace(ft, precision="fp32", adapter_dtype="fp32")
    return ft


def from_dict(data: dict[str, Any], base: FineTune | None = None) -> FineTune:
    """A FineTune from a dict such as a run_config.json: known keys only (legacy names mapped)."""
    data = {LEGACY_KEYS.get(k, k): v for k, v in data.items()}
    known = {k: v for k, v in data.items() if k in FINETUNE_FIELDS}
    return dataclasses.replace(base or FineTune(), **known)


def from_run_config(path: str | Path) -> FineTune:
    """The FineTune of a ``tightfit train`` output folder or its run_config.json.

    A run saved before these fields existed ran fp32 (train computed in fp32 then)."""
    path = Path(path)
    if path.is_dir():
        path = path / "run_config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read run config {str(path)!r}: {err}") from None
    if not isinstance(data, dict) or "model" not in data:
        raise ValueError(f"{str(path)!r} is not a tightfit run_config.json (no 'model' key)")
    return from_dict(data, FineTune(precision="fp32") if "precision" not in data else None)


# ---------------------------------------------------------------- flags, one per field
# field -> (type, help, aliases); bool fields are flags
FLAGS: dict[str, tuple[Any, str, tuple[str, ...]]] = {
    "method": (str, "full | lora | qlora", ()),
    "paged_budget": (str, "page optimizer state to host memory, keeping up to SIZE on the device (0 = page all; "
                          "tightfit optimizers)", ()),
    "precision": (str, "fp32 | bf16 (bf16 weights + fp32 masters) | bf16-autocast (fp32 weights, bf16 autocast) | "
                       "bf16-sr (pure bf16, stochastic rounding); a CPU computes in fp32", ("--dtype",)),
    "in_backward": (bool, "update each parameter inside backward as its gradient is ready (tightfit optimizers)", ()),
    "checkpointing": (bool, "activation (gradient) checkpointing per block (always on for qlora in train)",
                      ("--grad-checkpointing",)),
    "offload_activations": (bool, "keep saved activations in host memory (torch.autograd.graph.save_on_cpu)", ()),
    "loss": (str, f"full | chunked (cross-entropy over {LOSS_CHUNK_TOKENS}-token chunks, logits recomputed)", ()),
    "lora_r": (int, "LoRA rank", ("--lora-rank",)),
    "lora_alpha": (int, "LoRA alpha", ()),
    "lora_dropout": (float, "LoRA dropout", ()),
    "lora_targets": (str, "all-linear | attention | qv | comma list of q_proj,k_proj,v_proj,o_proj,gate_proj,"
                          "up_proj,down_proj", ()),
    "adapter_dtype": (str, "LoRA adapter dtype: fp32 | bf16", ()),
    "batch_size": (int, "sequences per micro-batch", ("--batch",)),
    "seq": (int, "tokens per sequence", ()),
    "grad_accum": (int, "micro-batches per optimizer step", ()),
}


def _stochastic_rounding_action():
    class Action(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            namespace.precision = "bf16-sr"
    return Action


def add_finetune_arguments(group, defaults: FineTune, *, suppress: bool) -> None:
    """One flag per FLAGS field on ``group``; ``suppress``: absent flags stay absent
    (argparse.SUPPRESS), so a preset or a saved run supplies them."""
    for name, (kind, help_text, aliases) in FLAGS.items():
        flag = "--" + name.replace("_", "-")
        default = argparse.SUPPRESS if suppress else getattr(defaults, name)
        if kind is bool:
            group.add_argument(flag, *aliases, dest=name, action="store_true", default=default, help=help_text)
        else:
            group.add_argument(flag, *aliases, dest=name, type=kind, default=default,
                               metavar=name.split("_")[-1].upper(), help=f"{help_text} [{getattr(defaults, name)}]")
    group.add_argument("--stochastic-rounding", nargs=0, action=_stochastic_rounding_action(),
                       default=argparse.SUPPRESS, help="shorthand for --precision bf16-sr")


def given_finetune(args: argparse.Namespace) -> dict[str, Any]:
    """The FineTune fields present on ``args``."""
    return {name: getattr(args, name) for name in FINETUNE_FIELDS if hasattr(args, name)}


def to_flags(changes: dict[str, Any]) -> list[str]:
    """Command-line flags that set ``changes`` (FineTune fields), for advice lines."""
    out: list[str] = []
    for name, value in changes.items():
        flag = "--" + name.replace("_", "-")
        if name == "optim":
            out += ["--optim", str(value)]
        elif FLAGS.get(name, (None,))[0] is bool:
            if value:
                out.append(flag)
        elif name in FLAGS:
            out += [flag, str(value)]
        else:
            raise ValueError(f"no flag for setting {name!r}")
    return out
