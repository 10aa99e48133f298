"""Codec registry: names -> codec instances; feeds the shell, the CLI and the test matrix."""

from __future__ import annotations

import torch

from .base import Codec, Encoded

CODECS: dict[str, Codec] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    if cls.name in CODECS:
        raise ValueError(f"codec {cls.name!r} registered twice")
    CODECS[cls.name] = cls()
    return cls


def get_codec(codec: str | Codec) -> Codec:
    """The codec named ``codec`` (or ``codec`` itself if it is already a Codec)."""
    if isinstance(codec, Codec):
        return codec
    if not isinstance(codec, str) or codec not in CODECS:
        raise ValueError(f"unknown state codec {codec!r}; allowed: {sorted(CODECS)} or a tightfit Codec object")
    return CODECS[codec]


def decode_encoded(enc: Encoded) -> torch.Tensor:
    """``enc`` as a float32 tensor, by the codec that made it."""
    return get_codec(enc.codec).decode(enc)


def store_encoded(enc: Encoded, value: torch.Tensor) -> None:
    """Write ``value`` into ``enc``'s buffers in place, by the codec that made it."""
    get_codec(enc.codec).store(enc, value)
