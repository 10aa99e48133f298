"""Checks of an encoded state that comes from outside (a state_dict, a user's edit).

Each codec family writes buffers of known dtypes and lengths for a shape; ``buffer_layout``
says which. A state is accepted only if every buffer has exactly that dtype and length,
is a plain strided tensor, and its values can be what the codec writes (finite scales and
values, non-negative for second moments). The native kernel indexes buffers by the
parameter's element count, so these checks are what keeps any input from making it read
or write past a buffer.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .base import STATE_KINDS, Codec, Encoded, numel_of
from .blockwise import BlockwiseCodec
from .plain import _CastCodec

# buffer name -> (dtype, shape) for a state of this shape
Layout = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def _cast_layout(codec: _CastCodec, shape: tuple[int, ...], kind: str) -> Layout:
    return {"values": (codec.dtype, tuple(shape))}  # decode returns the buffer as is: it keeps the shape


def _blockwise_layout(codec: BlockwiseCodec, shape: tuple[int, ...], kind: str) -> Layout:
    n = numel_of(shape)
    return {"codes": (torch.uint8, (math.ceil(n * codec.bits / 8),)),
            "absmax": (torch.float32, (math.ceil(n / codec.block_size),))}


# Codec family -> its layout; looked up along the codec class's MRO.
LAYOUTS: dict[type, Callable[[Any, tuple[int, ...], str], Layout]] = {
    _CastCodec: _cast_layout,
    BlockwiseCodec: _blockwise_layout,
}


def buffer_layout(codec: Codec, shape, kind: str) -> Layout | None:
    """Exact buffers ``codec`` keeps for ``shape`` (None: a codec family without a layout here)."""
    for cls in type(codec).__mro__:
        if cls in LAYOUTS:
            return LAYOUTS[cls](codec, tuple(int(s) for s in shape), kind)
    return None


def check_buffers(where: str, codec: Codec, enc: Encoded) -> None:
    """Dtype, shape and layout of every buffer of ``enc`` (ValueError naming what differs)."""
    layout = buffer_layout(codec, enc.shape, enc.kind)
    for key, buf in enc.buffers.items():
        if not isinstance(buf, torch.Tensor):
            raise ValueError(f"{where}: buffer {key!r} is a {type(buf).__name__}, expected a tensor")
        if buf.layout != torch.strided or buf.is_meta or buf.is_quantized:
            raise ValueError(f"{where}: buffer {key!r} is a {buf.layout} tensor on {buf.device}; expected a dense tensor")
    if layout is None:  # a codec registered elsewhere: only its total size is known
        expected = codec.nbytes(enc.shape, enc.kind)
        if enc.nbytes != expected:
            raise ValueError(f"{where}: {enc.nbytes} bytes stored, codec {codec.name!r} expects {expected} "
                             f"for shape {tuple(enc.shape)}")
        return
    if set(enc.buffers) != set(layout):
        raise ValueError(f"{where}: buffers {sorted(enc.buffers)}, codec {codec.name!r} keeps {sorted(layout)}")
    for key, (dtype, shape) in layout.items():
        buf = enc.buffers[key]
        if buf.dtype != dtype or tuple(buf.shape) != shape:
            raise ValueError(f"{where}: buffer {key!r} is {str(buf.dtype).removeprefix('torch.')} of shape "
                             f"{tuple(buf.shape)}; codec {codec.name!r} stores {str(dtype).removeprefix('torch.')} "
                             f"of shape {shape} for a state of shape {tuple(enc.shape)}")


def check_values(where: str, enc: Encoded) -> None:
    """Scales and values a codec can have written: finite, and >= 0 where they must be."""
    for key, buf in enc.buffers.items():
        if not buf.is_floating_point():
            continue  # codes: every bit pattern is a valid index into the codec's map
        if not bool(torch.isfinite(buf).all()):
            raise ValueError(f"{where}: buffer {key!r} holds NaN or Inf (allowed: finite values)")
        if (key == "absmax" or enc.kind == "unsigned") and bool((buf < 0).any()):
            raise ValueError(f"{where}: buffer {key!r} holds negative values (allowed: values >= 0 for "
                             f"{'a block scale' if key == 'absmax' else 'an unsigned state'})")


def check_encoded(where: str, codec: Codec, enc: Encoded) -> None:
    if enc.kind not in STATE_KINDS:
        raise ValueError(f"{where}: kind {enc.kind!r} (allowed: {list(STATE_KINDS)})")
    maps = getattr(codec, "map_names", None)
    if maps is not None and enc.kind not in maps:
        raise ValueError(f"{where}: codec {codec.name!r} stores {sorted(maps)} states, not {enc.kind!r}")
    check_buffers(where, codec, enc)
    check_values(where, enc)
