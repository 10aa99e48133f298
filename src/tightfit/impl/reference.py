"""The reference implementation: decode -> rule -> encode in plain PyTorch, per parameter.

It runs on every device and is the specification every faster path is tested against.
It reads a flag per parameter (finite gradient or not) back to the host; faster paths
avoid that.
"""

from __future__ import annotations

import torch

from ..codecs import get_codec
from .base import Implementation, encoded_states, plain_hyper


def reference_param_step(rule, hyper, param: torch.Tensor, state: dict) -> None:
    grad = param.grad
    if not bool(torch.isfinite(grad).all()):
        state["nonfinite_skips"] += 1  # skip: parameter and states stay as they were
        return
    step = int(state["step"].item()) + 1
    stored = encoded_states(state)
    decoded = {name: get_codec(enc.codec).decode(enc) for name, enc in stored.items()}
    new_param, new_states = rule.update(param.detach().float(), grad.float(), decoded, step=step, **hyper)
    param.copy_(new_param)
    for name, value in new_states.items():
        get_codec(stored[name].codec).store(stored[name], value)
    state["step"] += 1


class ReferenceImplementation(Implementation):
    name = "reference"

    def step_group(self, rule, hyper, params, states) -> None:
        hyper = plain_hyper(hyper)
        for param, state in zip(params, states):
            reference_param_step(rule, hyper, param, state)
