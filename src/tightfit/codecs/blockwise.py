"""Blockwise quantization with a per-block float32 absmax (Dettmers et al. 2021,
arXiv 2110.02861; 4-bit: Li et al. 2023, arXiv 2309.01507).

The flattened state is cut into blocks of ``block_size``; the last block may be partial.
Each block keeps absmax = max |x| (float32) and one code per element: the index of the
map entry nearest to x / absmax (a block of zeros keeps absmax 0 and decodes to 0).
8-bit codes take a byte each; 4-bit codes are packed two per byte, element 2i in the low
nibble and 2i+1 in the high nibble of byte i.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Codec, Encoded, check_kind, numel_of
from .maps import QuantMap, get_map
from .registry import register_codec


def block_absmax(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """max |x| of each block of the 1-D ``flat`` (last block may be partial)."""
    pad = (-flat.numel()) % block_size
    return F.pad(flat.abs(), (0, pad)).view(-1, block_size).amax(dim=1)


def normalize(flat: torch.Tensor, absmax: torch.Tensor, block_size: int) -> torch.Tensor:
    """x / absmax of its block; blocks with absmax 0 give 0."""
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    return flat / scale.repeat_interleave(block_size)[: flat.numel()]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    if codes.numel() % 2:
        codes = F.pad(codes, (0, 1))
    pairs = codes.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_nibbles(packed: torch.Tensor, numel: int) -> torch.Tensor:
    return torch.stack([packed & 0x0F, packed >> 4], dim=1).view(-1)[:numel]


class BlockwiseCodec(Codec):
    """Blockwise codec over a signed and an unsigned map; ``bits`` is 8 or 4."""

    bits: int
    map_names: dict[str, str]  # kind -> map name

    def quant_map(self, kind: str) -> QuantMap:
        check_kind(kind)
        if kind not in self.map_names:
            raise ValueError(f"codec {self.name!r} stores {sorted(self.map_names)} states, not {kind!r} (those stay fp32)")
        return get_map(self.map_names[kind])

    def encode(self, x: torch.Tensor, kind: str) -> Encoded:
        flat = x.detach().reshape(-1).float()
        absmax = block_absmax(flat, self.block_size)
        codes = self.quant_map(kind).encode_reference(normalize(flat, absmax, self.block_size))
        if self.bits == 4:
            codes = pack_nibbles(codes)
        return Encoded(self.name, kind, x.shape, {"codes": codes, "absmax": absmax})

    def decode(self, enc: Encoded) -> torch.Tensor:
        return self.decode_on(enc, self.quant_map(enc.kind))

    def decode_on(self, enc: Encoded, qmap: QuantMap) -> torch.Tensor:
        """``enc`` decoded as if its codes index ``qmap`` (earlier formats' maps)."""
        n = numel_of(enc.shape)
        codes = enc.buffers["codes"]
        if self.bits == 4:
            codes = unpack_nibbles(codes, n)
        values = qmap.decode(codes)
        scale = enc.buffers["absmax"].repeat_interleave(self.block_size)[:n]
        return (values * scale).view(enc.shape)

    def _slice_buffer(self, key: str, buf: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        if key == "absmax":
            return buf[lo // self.block_size: math.ceil(hi / self.block_size)]
        return buf[lo * self.bits // 8: math.ceil(hi * self.bits / 8)]  # codes (lo is block-aligned: even)

    def nbytes(self, shape, kind: str = "signed") -> int:
        n = numel_of(shape)
        return math.ceil(n * self.bits / 8) + 4 * math.ceil(n / self.block_size)

    def describe(self) -> str:
        return f"{self.name} (block {self.block_size}, maps {self.map_names['signed']} / {self.map_names['unsigned']})"


@register_codec
class Blockwise8Codec(BlockwiseCodec):
    name = "8bit"
    bits = 8
    block_size = 256
    map_names = {"signed": "dynamic8_signed", "unsigned": "dynamic8_squared"}
    # maps of earlier stored formats (state_io converts them on load)
    legacy_map_names = {1: {"signed": "dynamic8_signed", "unsigned": "dynamic8_unsigned"}}


@register_codec
class Blockwise4Codec(BlockwiseCodec):
    name = "4bit"
    bits = 4
    block_size = 128
    map_names = {"signed": "dynamic4_signed", "unsigned": "dynamic4_squared"}
    # maps of earlier stored formats (state_io converts them on load)
    legacy_map_names = {1: {"signed": "dynamic4_signed", "unsigned": "linear4_unsigned"}}
