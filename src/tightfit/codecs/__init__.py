"""State codecs: how an elementwise optimizer state is stored (see codecs/base.py)."""

from .base import FORMAT_VERSION, STATE_KINDS, Codec, Encoded, encoded_states
from .registry import CODECS, decode_encoded, get_codec, register_codec, store_encoded
from . import plain, blockwise  # noqa: F401  (register the built-in codecs)

__all__ = ["CODECS", "Codec", "Encoded", "FORMAT_VERSION", "STATE_KINDS", "decode_encoded", "encoded_states", "get_codec",
           "register_codec", "store_encoded"]
