"""Registry of optimizer names (HF Trainer style: ``adamw_8bit``, ``lion_32bit`` ...).

Names are generated from the registered optimizer classes and codecs, so only
implemented combinations exist. ``create_optimizer(name, params, **kw)`` builds one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .codecs import CODECS
from .optimizer import TightfitOptimizer

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


OPTIMIZER_NAMES: dict[str, OptimizerName] = {}


def register_name(name: str, cls: type[TightfitOptimizer], **options: Any) -> None:
    if name in OPTIMIZER_NAMES:
        raise ValueError(f"optimizer name {name!r} registered twice")
    OPTIMIZER_NAMES[name] = OptimizerName(name, cls, options)


def register_codec_variants(prefix: str, cls: type[TightfitOptimizer]) -> None:
    """``{prefix}_{32bit,bf16,8bit,4bit}`` for every registered codec."""
    for codec in CODECS:
        register_name(f"{prefix}_{CODEC_SUFFIX.get(codec, codec)}", cls, state=codec)


def register_paged_variants() -> None:
    """``paged_{name}`` (states in pinned host memory, ``paged=True``) for every registered
    name not paged yet: ``paged_adamw_8bit``, ``paged_lion_32bit`` ... as in HF Trainer."""
    for name, entry in list(OPTIMIZER_NAMES.items()):
        if not entry.options.get("paged") and f"paged_{name}" not in OPTIMIZER_NAMES:
            register_name(f"paged_{name}", entry.cls, **entry.options, paged=True)


def create_optimizer(name: str, params, **kwargs: Any) -> TightfitOptimizer:
    """Build the optimizer registered as ``name``; keyword arguments override its options."""
    if name not in OPTIMIZER_NAMES:
        raise ValueError(f"unknown optimizer name {name!r}; known: {', '.join(sorted(OPTIMIZER_NAMES))}")
    entry = OPTIMIZER_NAMES[name]
    return entry.cls(params, **{**entry.options, **kwargs})
