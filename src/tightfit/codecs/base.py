"""What a state codec is: how one elementwise optimizer state is stored between steps.

A codec turns a float32 tensor into an ``Encoded`` value and back, and knows the exact
bytes it keeps. ``kind`` says which statistic is stored: ``"signed"`` (first moments,
may be negative) or ``"unsigned"`` (second moments, never negative) or ``"small"`` (factored statistics,
kept fp32); quantizing codecs pick their map by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

STATE_KINDS = ("signed", "unsigned", "small")  # small: fp32 only (see rules/base.py)
# Bump when the stored layout or meaning of any codec changes. 2: 8-bit and 4-bit second
# moments on squared dynamic maps (format 1: the 8-bit dynamic map and the 4-bit linear
# map; converted on load, codecs/upgrade.py).
FORMAT_VERSION = 2


@dataclass(eq=False)
class Encoded:
    """One encoded state tensor: the codec that made it, the logical shape and its buffers.

    ``buffers`` are plain tensors (e.g. ``{"codes": uint8, "absmax": float32}``) so that
    state_dicts stay loadable with ``torch.load(weights_only=True)``.
    """

    codec: str
    kind: str
    shape: torch.Size
    buffers: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers.values())

    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers.values())).device


class Codec:
    """Base class: subclasses set ``name`` and implement the four methods below."""

    name: ClassVar[str]
    block_size: ClassVar[int | None] = None
    quantized: ClassVar[bool] = True  # False: fp32, exempt from min_quantized_numel

    def zeros(self, shape: torch.Size, kind: str, device: torch.device) -> Encoded:
        return self.encode(torch.zeros(shape, dtype=torch.float32, device=device), kind)

    def encode(self, x: torch.Tensor, kind: str) -> Encoded:
        """Encode float32 ``x`` into new buffers."""
        raise NotImplementedError

    def decode(self, enc: Encoded) -> torch.Tensor:
        """float32 tensor of ``enc.shape``."""
        raise NotImplementedError

    def store(self, enc: Encoded, x: torch.Tensor) -> None:
        """Re-encode ``x`` into ``enc``'s existing buffers (no new allocation kept)."""
        fresh = self.encode(x, enc.kind)
        for key, buf in enc.buffers.items():
            buf.copy_(fresh.buffers[key])

    def slice(self, enc: Encoded, lo: int, hi: int) -> Encoded:
        """Elements [lo, hi) of the flattened state as views of ``enc``'s buffers (no copy);
        ``lo`` must be a multiple of ``block_size`` (any lo for unblocked codecs)."""
        if self.block_size and lo % self.block_size:
            raise ValueError(f"slice start {lo} is not a multiple of codec {self.name!r}'s block {self.block_size}")
        return Encoded(self.name, enc.kind, torch.Size([hi - lo]),
                       {key: self._slice_buffer(key, buf, lo, hi) for key, buf in enc.buffers.items()})

    def _slice_buffer(self, key: str, buf: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return buf.view(-1)[lo:hi]  # one value per element

    def nbytes(self, shape: torch.Size | tuple[int, ...], kind: str = "signed") -> int:
        """Exact bytes one state of this shape keeps, all buffers included."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<codec {self.name}>"


def encoded_states(state: Mapping[str, Any]) -> dict[str, Encoded]:
    """The encoded states of a per-parameter state dict (not ``step`` and other counters)."""
    return {k: v for k, v in state.items() if isinstance(v, Encoded)}


def check_kind(kind: str) -> None:
    if kind not in STATE_KINDS:
        raise ValueError(f"state kind {kind!r} is not one of {STATE_KINDS}")


def numel_of(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
