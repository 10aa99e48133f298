"""Implementation "native_codec": the rule in PyTorch, the 8/4-bit codec passes in C++.

Steps the fused kernel does not take (non-contiguous params, stochastic rounding of
bf16 params; the native drivers of the factored rules also step stacks of matrices with
these codec passes) spend most of a reference step in the blockwise encode
(``torch.bucketize``) and decode (a gather), not in their math. Here those two passes run
in csrc/codecs.cpp (``tf_decode`` / ``tf_encode``, the same code the fused kernel uses
per tile), so the results equal the reference bit for bit while the step is several
times faster. fp32/bf16 states keep their PyTorch codec (a copy is already fast).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ...codecs import Encoded, decode_encoded, store_encoded
from ...rules import Rule
from ..base import Implementation, encoded_states, plain_hyper
from ..reference import reference_param_step, rounding_keys
from .build import load_kernel
from .jobs import CODEC_FILLERS, TfState

NATIVE_CODECS = ("8bit", "4bit")


def _state_struct(enc: Encoded) -> TfState:
    st = TfState()
    CODEC_FILLERS[enc.codec][1](st, enc)
    return st


def native_decode(enc: Encoded) -> torch.Tensor:
    if enc.codec not in NATIVE_CODECS:
        return decode_encoded(enc)
    lib, why = load_kernel()
    if lib is None:
        raise RuntimeError(why)
    out = torch.empty(enc.shape, dtype=torch.float32)
    lib.tf_decode(_state_struct(enc), out.numel(), out.data_ptr(), torch.get_num_threads())
    return out


def native_store(enc: Encoded, value: torch.Tensor) -> None:
    if enc.codec not in NATIVE_CODECS:
        return store_encoded(enc, value)
    lib, why = load_kernel()
    if lib is None:
        raise RuntimeError(why)
    x = value.detach().to(torch.float32).contiguous()
    lib.tf_encode(_state_struct(enc), x.numel(), x.data_ptr(), torch.get_num_threads())


class NativeCodecImplementation(Implementation):
    name = "native_codec"

    def unavailable_reason(self, rule: Rule, params: Sequence[torch.Tensor],
                           states: Sequence[dict[str, Any]], rounding=None) -> str | None:
        for i, (param, state) in enumerate(zip(params, states)):
            if param.device.type != "cpu":
                return f"param {i} is on {param.device}; native_codec runs on CPU tensors only"
            for name, enc in encoded_states(state).items():
                if enc.codec not in NATIVE_CODECS:
                    continue
                dtypes, _ = CODEC_FILLERS[enc.codec]
                for key, dtype in dtypes.items():
                    buf = enc.buffers[key]
                    if buf.dtype != dtype or buf.device.type != "cpu" or not buf.is_contiguous():
                        return f"state {name!r} buffer {key!r} is not a contiguous CPU {dtype} tensor"
        _, why = load_kernel()
        return why

    def step_group(self, rule, hyper, params, states, rounding=None) -> None:
        hyper = plain_hyper(hyper)
        for param, state, key in zip(params, states, rounding_keys(rounding, len(params))):
            reference_param_step(rule, hyper, param, state, decode=native_decode, store=native_store,
                                 rounding_key=key)
