"""Streaming one paged parameter in pieces, so that no slot must hold a whole parameter.

Without this a slot holds at least the largest paged parameter's states: a 128k x 4096
embedding under 8-bit AdamW would need three ~1 GiB slots. Elementwise rules (AdamW,
Adam, Lion, SGD, SophiaG) update every element from its own values only, so a
parameter can be stepped as block-aligned element ranges [lo, hi), each with the slice
of its states (``Codec.slice``: views, no copies), like independent small parameters.

What must stay per parameter:
- the non-finite skip: a NaN/Inf (or |g| over the limit) anywhere in the gradient is spread to the whole
  gradient on the device (one ``masked_fill_``, no host sync), so every piece skips;
- the counters: each piece steps a private copy of ``step`` / ``nonfinite_skips``
  (all pieces must see the same step number); one copy is written back afterwards.
Stochastic rounding keys its random bits by the whole parameter's element index, so
parameters with it are not split.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..codecs import Encoded, get_codec
from ..impl.base import grad_usable_flag
from ..rules.base import GRAD_LIMIT_ELEMENTWISE
from .streaming import PagedParam, PagedPiece, buffer_layout

SPLIT_ALIGN = 256  # elements per piece: a multiple of every blockwise codec's block (256, 128)


def piece_elements(nbytes: int, numel: int, chunk_bytes: int) -> int:
    """Elements per piece so that a piece's states take about ``chunk_bytes``."""
    per_element = nbytes / max(1, numel)
    return max(SPLIT_ALIGN, int(chunk_bytes / per_element) // SPLIT_ALIGN * SPLIT_ALIGN)


def split_sizes(nbytes: int, chunk_bytes: int) -> list[int]:
    """Approximate piece sizes of a member of ``nbytes`` (the planner's estimate)."""
    if nbytes <= chunk_bytes:
        return [nbytes]
    count = math.ceil(nbytes / chunk_bytes)
    return [math.ceil(nbytes / count)] * count


def split_member(member: PagedParam, chunk_bytes: int) -> tuple[list[PagedPiece], Callable[[], None]]:
    """The member's pieces and the function that writes their counters back (call it
    after the pieces' updates have been issued)."""
    param, state = member.param, member.state
    numel = param.numel()
    span = piece_elements(member.nbytes, numel, chunk_bytes)
    flat = param.detach().view(-1)
    grad = param.grad.view(-1)
    # all pieces skip, or none (pieces exist only under elementwise rules: their limit)
    grad.masked_fill_(~grad_usable_flag(grad, GRAD_LIMIT_ELEMENTWISE), float("nan"))
    encoded = [(name, enc) for name, enc in state.items() if isinstance(enc, Encoded)]
    pieces = []
    for lo in range(0, numel, span):
        hi = min(numel, lo + span)
        slices = [(name, get_codec(enc.codec).slice(enc, lo, hi)) for name, enc in encoded]
        layout, nbytes = buffer_layout(slices)
        piece_state: dict[str, Any] = {"step": state["step"].clone(), "nonfinite_skips": state["nonfinite_skips"].clone(),
                                       **dict(slices)}
        piece_param = flat[lo:hi]
        piece_param.grad = grad[lo:hi]
        pieces.append(PagedPiece(piece_param, piece_state, layout, nbytes))

    def write_back() -> None:
        state["step"].copy_(pieces[0].state["step"])
        state["nonfinite_skips"].copy_(pieces[0].state["nonfinite_skips"])
    return pieces, write_back
