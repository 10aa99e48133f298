"""GPU memory sizes (total device memory as the vendor lists it) and ``--gpu`` parsing."""

from __future__ import annotations

import re

from .units import parse_size

GiB = 2**30
# name (lower case, as typed) -> (display name, bytes); datasheet capacities.
GPUS: dict[str, tuple[str, int]] = {
    "t4": ("NVIDIA T4", 16 * GiB),
    "v100": ("NVIDIA V100 32GB", 32 * GiB),
    "rtx3090": ("RTX 3090", 24 * GiB),
    "rtx4090": ("RTX 4090", 24 * GiB),
    "rtx5090": ("RTX 5090", 32 * GiB),
    "a10g": ("NVIDIA A10G", 24 * GiB),
    "l4": ("NVIDIA L4", 24 * GiB),
    "l40s": ("NVIDIA L40S", 48 * GiB),
    "a6000": ("RTX A6000", 48 * GiB),
    "a100-40gb": ("A100 40GB", 40 * GiB),
    "a100-80gb": ("A100 80GB", 80 * GiB),
    "h100-80gb": ("H100 80GB", 80 * GiB),
    "h200": ("H200", 141 * GiB),
}
ALIASES = {"3090": "rtx3090", "4090": "rtx4090", "5090": "rtx5090", "a100": "a100-80gb", "h100": "h100-80gb",
           "rtx-3090": "rtx3090", "rtx-4090": "rtx4090"}


def gpu_size(text: str) -> int:
    """Bytes of a ``--gpu`` size. GPU memory is sold in binary units, so a bare number and
    the vendors' "GB" both mean GiB (an "80GB" A100 has 80 GiB); explicit GiB/MiB/B units
    are exact."""
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(gb?)?\s*$", text, re.IGNORECASE)
    if match:
        return int(float(match.group(1)) * GiB)
    return parse_size(text)


def resolve_gpu(text: str) -> tuple[str, int]:
    """(display name, bytes) for a GPU name or a size; ValueError naming what is allowed."""
    key = text.strip().lower().replace(" ", "").replace("_", "-")
    key = ALIASES.get(key, key)
    if key in GPUS:
        return GPUS[key]
    try:
        size = gpu_size(text)
    except ValueError:
        size = 0
    if size <= 0:
        raise ValueError(f"invalid --gpu {text!r} (allowed: a size such as 24, 24GiB or 80GB (GB on a GPU is GiB), "
                         f"or one of: {', '.join(sorted(GPUS))})") from None
    return f"{size / GiB:g} GiB" if size % (2**20) == 0 else f"{size} B", size
