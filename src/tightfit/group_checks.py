"""Checks of one param group that the shell makes for every rule: shell options, parameter
dtypes, and finite hyperparameters. Each raises ValueError naming the bad value and what
is allowed; the rule's own ``validate`` checks ranges (rules/)."""

from __future__ import annotations

import math
from typing import Any

import torch

from .codecs import get_codec
from .impl import implementation_names
from .placement import device_budget
from .rules import Rule

# The math runs in float32 and the result is written back in the param's dtype: exact for
# these. A float64 param would be rounded to float32 every step (silently losing updates
# smaller than its float32 ulp), so it is refused rather than trained wrongly.
PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_param_dtypes(params: list[torch.Tensor]) -> None:
    for p in params:
        if p.dtype not in PARAM_DTYPES:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in PARAM_DTYPES)
            hint = " (cast the model with .float() or .bfloat16())" if p.is_floating_point() else ""
            raise ValueError(f"parameter of shape {tuple(p.shape)} has dtype {str(p.dtype).removeprefix('torch.')}, "
                             f"which tightfit cannot optimize exactly (allowed: {allowed}){hint}")


def _numbers(value: Any) -> list[float]:
    """The numbers inside a hyperparameter value (a number, a one-element tensor, or a
    tuple/list of them); None and bools hold none."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return [float(value)]
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in _numbers(v)]
    return []


def check_finite_hyperparameters(rule: Rule, group: dict[str, Any]) -> None:
    """inf or NaN in any hyperparameter turns params into inf/NaN on the first step."""
    for key in rule.defaults:
        if any(not math.isfinite(x) for x in _numbers(group.get(key))):
            raise ValueError(f"invalid {key}: {group[key]!r} (allowed: finite numbers; inf and NaN would make "
                             "the params non-finite)")


def check_shell_options(group: dict[str, Any]) -> None:
    get_codec(group["state"])  # raises ValueError naming the allowed codecs
    mqn = group["min_quantized_numel"]
    if isinstance(mqn, bool) or not isinstance(mqn, int) or mqn < 0:
        raise ValueError(f"invalid min_quantized_numel: {mqn!r} (allowed: an int >= 0)")
    if not isinstance(group["stochastic_rounding"], bool):
        raise ValueError(f"invalid stochastic_rounding: {group['stochastic_rounding']!r} (allowed: True or False)")
    seed = group["rounding_seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"invalid rounding_seed: {seed!r} (allowed: an int in [0, 2**32))")
    if group["impl"] not in implementation_names():
        raise ValueError(f"unknown impl {group['impl']!r}; allowed: {implementation_names()}")
    device_budget(group["paged"])  # raises ValueError naming what is allowed
    check_offload(group)


def check_offload(group: dict[str, Any]) -> None:
    offload = group.get("offload", False)
    if not isinstance(offload, bool):
        raise ValueError(f"invalid offload: {offload!r} (allowed: True or False)")
    if offload and group["paged"] is not False:
        raise ValueError(f"offload=True with paged={group['paged']!r}: offload already keeps every state in host "
                         "memory and steps it there (allowed: offload=True with paged=False, or offload=False)")
    if offload and group["stochastic_rounding"]:
        raise ValueError("offload=True with stochastic_rounding=True: offload keeps an fp32 master copy of the "
                         "weights, so there is nothing to round stochastically (allowed: one of the two)")


def validate_group(rule: Rule, group: dict[str, Any]) -> None:
    check_finite_hyperparameters(rule, group)
    rule.validate(group)
    check_shell_options(group)
    check_param_dtypes(group["params"])
    if rule.check_param is not None:
        for p in group["params"]:
            rule.check_param(p.shape)
