"""Unquantized codecs: fp32 (exact) and bf16 (8 significant bits, round to nearest)."""

from __future__ import annotations

import torch

from .base import Codec, Encoded, check_kind, numel_of
from .registry import register_codec


class _CastCodec(Codec):
    dtype: torch.dtype

    def encode(self, x: torch.Tensor, kind: str) -> Encoded:
        check_kind(kind)
        return Encoded(self.name, kind, x.shape, {"values": x.to(self.dtype, copy=True)})

    def decode(self, enc: Encoded) -> torch.Tensor:
        return enc.buffers["values"].float()

    def store(self, enc: Encoded, x: torch.Tensor) -> None:
        enc.buffers["values"].copy_(x)

    def nbytes(self, shape, kind: str = "signed") -> int:
        return numel_of(shape) * torch.empty((), dtype=self.dtype).element_size()


@register_codec
class Fp32Codec(_CastCodec):
    name = "fp32"
    dtype = torch.float32
    quantized = False


@register_codec
class Bf16Codec(_CastCodec):
    name = "bf16"
    dtype = torch.bfloat16
