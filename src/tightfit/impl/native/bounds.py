"""Size checks made before any pointer reaches the native kernel (csrc/).

The kernel indexes every buffer by the parameter's element count and trusts the layout
its codec writes; a state whose buffers were cut otherwise (a crafted state_dict, a
user's edit of ``opt.state``) would make it read or write out of bounds. These checks
refuse such a state with a ValueError instead; they cost a few comparisons per param.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from ...codecs import Encoded, get_codec
from ...codecs.validate import check_buffers
from ...distributed.shards import state_shape


def check_encoded_layout(enc: Encoded) -> None:
    """``enc``'s buffers are exactly those its codec keeps for ``enc.shape``."""
    check_buffers(f"{enc.codec} state of shape {tuple(enc.shape)}", get_codec(enc.codec), enc)


def check_step_inputs(rule, hyper: Mapping[str, Any], params: Sequence[torch.Tensor],
                      states: Sequence[dict[str, Any]]) -> None:
    """Every param's grad and states have the sizes the kernel will index."""
    for param, state in zip(params, states):
        if param.grad is not None and param.grad.shape != param.shape:
            raise ValueError(f"gradient of shape {tuple(param.grad.shape)} for a parameter of shape "
                             f"{tuple(param.shape)}")
        for spec in rule.state_specs(param.shape, hyper):
            enc = state.get(spec.name)
            if not isinstance(enc, Encoded):
                raise ValueError(f"state {spec.name!r} of a parameter of shape {tuple(param.shape)} is "
                                 f"{type(enc).__name__}, expected an encoded state")
            expected = state_shape(spec, param)
            if tuple(enc.shape) != tuple(expected):
                raise ValueError(f"state {spec.name!r} has shape {tuple(enc.shape)}; the parameter of shape "
                                 f"{tuple(param.shape)} needs {tuple(expected)}")
            check_encoded_layout(enc)


def checked_filler(fill: Callable) -> Callable:
    """A TfState filler that first checks the state's buffers against its shape."""
    def checked(slot, enc: Encoded) -> None:
        check_encoded_layout(enc)
        fill(slot, enc)
    return checked
