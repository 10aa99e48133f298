"""Encoded states saved by earlier tightfit versions, converted to the current format.

Format 1 kept 8-bit second moments on the dynamic map; format 2 keeps them on its
squares (maps.py). A codec lists the maps of earlier formats in ``legacy_map_names``;
a state whose map changed is decoded on its old map and encoded again (within the
codec's rounding, as any re-encoding), every other state is read as it is.
"""

from __future__ import annotations

from .base import FORMAT_VERSION, Encoded
from .maps import get_map
from .registry import get_codec

READABLE_FORMATS = (1, FORMAT_VERSION)


def upgrade_encoded(enc: Encoded, stored_format: int) -> Encoded:
    """``enc`` as the current format stores it (``enc`` itself when nothing changed)."""
    if stored_format == FORMAT_VERSION:
        return enc
    if stored_format not in READABLE_FORMATS:
        raise ValueError(f"encoded state format {stored_format!r}; this tightfit reads formats {READABLE_FORMATS}")
    codec = get_codec(enc.codec)
    old = getattr(codec, "legacy_map_names", {}).get(stored_format, {}).get(enc.kind)
    if old is None or old == codec.map_names.get(enc.kind):
        return enc
    return codec.encode(codec.decode_on(enc, get_map(old)).view(enc.shape), enc.kind)
