"""Registry of optimizer names (HF Trainer style: ``adamw_8bit``, ``lion_32bit`` ...).

Names are generated once, from one table of preset families (``FAMILIES``) and the
registered codecs, so only implemented combinations exist. ``create_optimizer(name,
params, **kw)`` builds one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .codecs import CODECS
from .optimizer import TightfitOptimizer
from .optimizers import SGD, Adam, AdamW, Lion
from .optimizers_factored import CAME, Adafactor, SophiaG
from .optimizers_ademamix_muon import AdEMAMix, Muon

# How a codec shows up in a name (HF uses 32bit / 8bit; we add bf16 and 4bit).
CODEC_SUFFIX = {"fp32": "32bit", "bf16": "bf16", "8bit": "8bit", "4bit": "4bit"}


@dataclass(frozen=True)
class OptimizerName:
    name: str
    cls: type[TightfitOptimizer]
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.cls.__name__}({opts})"


@dataclass(frozen=True)
class Family:
    """One row of the catalog: ``{prefix}_{32bit,bf16,8bit,4bit}`` (one name per registered
    codec, with ``options`` plus ``state=<codec>``), and the bare ``prefix`` with
    ``bare_options`` when that is not None."""

    prefix: str
    cls: type[TightfitOptimizer]
    options: dict[str, Any] = field(default_factory=dict)
    bare_options: dict[str, Any] | None = None


# The one list of optimizer names: a new preset is one row here. adafactor / adafactor_hf
# alone have no first moment; their codec names add beta1 0.9 momentum in that codec.
FAMILIES: tuple[Family, ...] = (
    Family("adamw", AdamW),
    Family("adam", Adam),
    Family("lion", Lion),
    Family("sgd", SGD),
    Family("adafactor", Adafactor, {"convention": "torch", "beta1": 0.9}, bare_options={"convention": "torch"}),
    Family("adafactor_hf", Adafactor, {"convention": "hf", "beta1": 0.9}, bare_options={"convention": "hf"}),
    Family("came", CAME, bare_options={}),
    Family("sophiag", SophiaG, bare_options={}),
    Family("ademamix", AdEMAMix, bare_options={}),  # HF Trainer: ademamix, ademamix_8bit, paged_ademamix_*
    Family("muon", Muon, bare_options={}),
)
PAGED_PREFIX = "paged_"
OFFLOAD_PREFIX = "offload_"  # master weights, states and the step on the host (placement/offload.py)


def _add(names: dict[str, OptimizerName], name: str, cls: type[TightfitOptimizer], options: dict[str, Any]) -> None:
    if name in names:
        raise ValueError(f"optimizer name {name!r} registered twice")
    names[name] = OptimizerName(name, cls, options)


def catalog(families: tuple[Family, ...] = FAMILIES, codecs=tuple(CODECS)) -> dict[str, OptimizerName]:
    """Every name of ``families``: codec variants and bare names, then ``paged_<name>`` (states
    in pinned host memory, ``paged=True``, as HF Trainer's ``paged_adamw_8bit``) and
    ``offload_<name>`` (``offload=True``: fp32 master weights, states and the step on the host) for each."""
    names: dict[str, OptimizerName] = {}
    for family in families:
        if family.bare_options is not None:
            _add(names, family.prefix, family.cls, dict(family.bare_options))
        for codec in codecs:
            _add(names, f"{family.prefix}_{CODEC_SUFFIX.get(codec, codec)}", family.cls, {**family.options, "state": codec})
    for name, entry in list(names.items()):
        _add(names, PAGED_PREFIX + name, entry.cls, {**entry.options, "paged": True})
        _add(names, OFFLOAD_PREFIX + name, entry.cls, {**entry.options, "offload": True})
    return names


OPTIMIZER_NAMES: dict[str, OptimizerName] = catalog()


def register_name(name: str, cls: type[TightfitOptimizer], **options: Any) -> None:
    """Add one name of your own (tightfit's own are the rows of ``FAMILIES``)."""
    _add(OPTIMIZER_NAMES, name, cls, options)


def create_optimizer(name: str, params, **kwargs: Any) -> TightfitOptimizer:
    """Build the optimizer registered as ``name``; keyword arguments override its options."""
    if name not in OPTIMIZER_NAMES:
        raise ValueError(f"unknown optimizer name {name!r}; known: {', '.join(sorted(OPTIMIZER_NAMES))}")
    entry = OPTIMIZER_NAMES[name]
    return entry.cls(params, **{**entry.options, **kwargs})
