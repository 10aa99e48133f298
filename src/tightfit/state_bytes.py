"""Exact optimizer-state bytes, from the rules' state declarations and the codecs' nbytes.

The shell uses ``codec_for_state`` to pick each state's codec; the CLI and the planner use
``state_bytes`` so that reported bytes are what the optimizer really keeps.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .codecs import Codec, get_codec
from .rules import Rule


def codec_for_state(kind: str, param_numel: int, codec: str | Codec, min_quantized_numel: int) -> Codec:
    """fp32 for ``small`` states and for parameters below ``min_quantized_numel``; else ``codec``."""
    chosen = get_codec(codec)
    if kind == "small" or (chosen.quantized and param_numel < min_quantized_numel):
        return get_codec("fp32")
    return chosen


def state_bytes(rule: Rule, codec: str | Codec, shape: tuple[int, ...], hyper: Mapping[str, Any] | None = None,
                min_quantized_numel: int = 4096) -> int:
    """Bytes of all states ``rule`` keeps for one parameter of ``shape`` (step counters excluded)."""
    shape = torch.Size(shape)
    hyper = {**rule.defaults, **(hyper or {})}
    total = 0
    for spec in rule.state_specs(shape, hyper):
        chosen = codec_for_state(spec.kind, shape.numel(), codec, min_quantized_numel)
        total += chosen.nbytes(spec.shape_for(shape), spec.kind)
    return total
