"""State codecs: how an elementwise optimizer state is stored (see codecs/base.py)."""

from .base import FORMAT_VERSION, STATE_KINDS, Codec, Encoded
from .registry import CODECS, get_codec, register_codec
from . import plain, blockwise  # noqa: F401  (register the built-in codecs)

__all__ = ["CODECS", "Codec", "Encoded", "FORMAT_VERSION", "STATE_KINDS", "get_codec", "register_codec"]
