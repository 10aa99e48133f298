"""Fused Triton kernels: one pass per block does decode -> rule -> encode for many tensors.

Only this package imports triton, and only in ``pieces`` (small @triton.jit pieces),
``fused_kernels`` (the two kernels built from them), ``fused_step`` (the host-side
launcher), and for the factored rules (Adafactor, CAME) ``factored_kernels`` and
``factored_step``; ``impl/triton_impl.py`` imports them on first use.
``rounding`` is pure PyTorch (the reference of the kernels' stochastic rounding).
"""

from __future__ import annotations

import importlib.util


def triton_available() -> bool:
    """True when triton can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None
