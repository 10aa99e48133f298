"""The reference implementation: decode -> rule -> encode in plain PyTorch, per parameter.

It runs on every device and is the specification every faster path is tested against.
It reads a flag per parameter (usable gradient or not: no NaN/Inf, no element at or
above the rule's ``grad_limit``) back to the host; faster paths avoid that.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..codecs import Encoded, decode_encoded, encoded_states, store_encoded
from ..kernels.rounding import stochastic_round_to_bf16  # pure PyTorch (no triton)
from .registry import register_implementation
from .base import Implementation, StochasticRounding, grad_usable, plain_hyper


def rounding_keys(rounding: StochasticRounding | None, count: int) -> list[tuple[int, int] | None]:
    """(seed, salt) per param, or None per param for round-to-nearest."""
    if rounding is None:
        return [None] * count
    return [(rounding.seed, salt) for salt in rounding.salts]


def write_param(param: torch.Tensor, new_param: torch.Tensor, step: int,
                rounding_key: tuple[int, int] | None) -> None:
    """Write the rule's float32 result into ``param``; ``rounding_key`` (seed, salt): a bf16
    param is written with stochastic rounding."""
    if rounding_key is not None and param.dtype == torch.bfloat16:
        seed, salt = rounding_key
        new_param = stochastic_round_to_bf16(new_param, seed=seed, salt=salt, step=step)
    param.copy_(new_param)


def reference_param_step(rule, hyper, param: torch.Tensor, state: dict,
                         decode: Callable[[Encoded], torch.Tensor] = decode_encoded,
                         store: Callable[[Encoded, torch.Tensor], None] = store_encoded,
                         rounding_key: tuple[int, int] | None = None,
                         write: Callable[[torch.Tensor, torch.Tensor, int, tuple[int, int] | None], None] = write_param,
                         grad_checked: bool = False) -> None:
    """decode -> rule -> encode for one parameter; ``decode``/``store`` may be swapped
    for faster codec passes that give identical results (impl "native_codec"), and
    ``decode``/``store``/``write`` for DTensor params (distributed/step.py, which checks
    the gradient across ranks first: ``grad_checked``).
    ``rounding_key`` (seed, salt): write a bf16 param with stochastic rounding."""
    grad = param.grad
    if not grad_checked and not grad_usable(grad, rule.grad_limit):
        state["nonfinite_skips"] += 1  # skip: parameter and states stay as they were
        return
    step = int(state["step"].item()) + 1
    stored = encoded_states(state)
    decoded = {name: decode(enc) for name, enc in stored.items()}
    extras = rule.update_extras(enc.codec for enc in stored.values())
    new_param, new_states = rule.update(param.detach().float(), grad.float(), decoded, step=step, **hyper, **extras)
    write(param, new_param, step, rounding_key)
    for name, value in new_states.items():
        store(stored[name], value)
    state["step"] += 1


class ReferenceImplementation(Implementation):
    name = "reference"

    def step_group(self, rule, hyper, params, states, rounding=None) -> None:
        hyper = plain_hyper(hyper)
        for param, state, key in zip(params, states, rounding_keys(rounding, len(params))):
            reference_param_step(rule, hyper, param, state, rounding_key=key)


register_implementation(ReferenceImplementation())
