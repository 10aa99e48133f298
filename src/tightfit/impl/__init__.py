"""Implementations of one optimizer step (see base.py), registered by name in registry.py.

Importing the package registers them all: the reference (runs everywhere), the native CPU
kernel and its codec-only variant, and the Triton kernels (imported lazily on first use).
"""

from __future__ import annotations

from . import native, reference, triton_impl  # each registers itself in registry.py
from .registry import AUTO_ORDER, IMPLEMENTATIONS, implementation_names, register_implementation, select_implementation

__all__ = ["AUTO_ORDER", "IMPLEMENTATIONS", "implementation_names", "native", "reference", "register_implementation",
           "select_implementation", "triton_impl"]
