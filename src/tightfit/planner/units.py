"""Byte sizes: parse "24GiB", "80GB", "16G", "1.5TiB" and format bytes as GiB/MiB."""

from __future__ import annotations

import re

# Binary units (GiB) and decimal ones (GB); a bare "G" is taken as GiB, like GPU marketing.
UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20, "mb": 10**6,
         "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes in ``text``; ValueError naming the value and the allowed forms."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in UNITS:
        raise ValueError(f"invalid size {text!r} (allowed: a number with a unit such as 24GiB, 80GB, 16G, 512MiB)")
    return int(float(match.group(1)) * UNITS[unit])


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"
