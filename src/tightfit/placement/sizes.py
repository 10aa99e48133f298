"""The ``paged`` option: False, True, or how many bytes of state may stay on the device.

``paged=True`` pages every state (a device budget of 0 bytes); ``paged="4GiB"`` keeps
states on the device up to 4 GiB and pages the rest; ``paged=False`` pages nothing.
"""

from __future__ import annotations

import re

# Decimal units as disk and network vendors use them, binary units as memory does.
UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]+)\s*$")
ALLOWED = ("False, True, a byte count (int >= 0), or a size string like '512MiB', '4GiB', '1.5GB' "
           "(units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")


def parse_size(value: str | int) -> int:
    """Bytes in ``value``: an int >= 0 or a string such as "512MiB" / "1.5GB"."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"invalid size {value!r}; allowed: {ALLOWED}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value!r}: negative; allowed: {ALLOWED}")
        return value
    match = _SIZE.match(value)
    if match is None or match.group(2).upper() not in UNITS:
        raise ValueError(f"invalid size {value!r}; allowed: {ALLOWED}")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def device_budget(paged: bool | str | int) -> int | None:
    """None when nothing is paged, else the bytes of state that may stay on the device."""
    if paged is False:
        return None
    if paged is True:
        return 0
    try:
        return parse_size(paged)
    except ValueError:
        raise ValueError(f"invalid paged={paged!r}; allowed: {ALLOWED}") from None
