"""Fused Triton kernels: one pass per block does decode -> rule -> encode for many tensors.

Only this package imports triton: ``tiles/`` (one @triton.jit tile per elementwise rule),
``tile_io`` (codec decode/encode and rounding pieces), ``fused_kernels`` (the two kernels
built from them, the rule's tile a compile-time argument), ``fused_step`` (the host-side
launcher), and for the factored rules (Adafactor, CAME) ``factored_kernels``,
``factored_rules/`` (each rule's binding) and ``factored_step``; ``impl/triton_impl.py``
imports them on first use.
``rounding`` is pure PyTorch (the reference of the kernels' stochastic rounding).
"""

from __future__ import annotations

import importlib.util


def triton_available() -> bool:
    """True when triton can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None
