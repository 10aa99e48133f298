"""The implementation registry and the one function that chooses among them.

A leaf module: implementations import ``register_implementation`` from here (never from
the package, which imports them), so the registry has no import cycle.
"""

from __future__ import annotations

from .base import Implementation

IMPLEMENTATIONS: dict[str, Implementation] = {}
# impl="auto": the implementations tried in order per device type, first usable wins
# (fastest first); the reference runs everywhere and closes every list.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("native", "native_codec", "reference"),
    "cuda": ("triton", "reference"),
}


def register_implementation(impl: Implementation) -> Implementation:
    if impl.name in IMPLEMENTATIONS:
        raise ValueError(f"implementation {impl.name!r} registered twice")
    IMPLEMENTATIONS[impl.name] = impl
    return impl


def implementation_names() -> list[str]:
    return ["auto", *IMPLEMENTATIONS]


def _auto_order(device_type: str) -> list[str]:
    return [name for name in AUTO_ORDER.get(device_type, ("reference",)) if name in IMPLEMENTATIONS]


def select_implementation(requested: str, rule, params, states, rounding=None) -> Implementation:
    """The implementation to run; an explicit choice that cannot run raises ValueError."""
    if requested == "auto":
        for name in _auto_order(params[0].device.type):
            impl = IMPLEMENTATIONS[name]
            if impl.unavailable_reason(rule, params, states, rounding) is None:
                return impl
        return IMPLEMENTATIONS["reference"]
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"unknown impl {requested!r}; allowed: {implementation_names()}")
    impl = IMPLEMENTATIONS[requested]
    reason = impl.unavailable_reason(rule, params, states, rounding)
    if reason is not None:
        usable = [n for n, i in IMPLEMENTATIONS.items() if i.unavailable_reason(rule, params, states, rounding) is None]
        raise ValueError(f"impl={requested!r} cannot run here: {reason}; usable now: {['auto', *usable]}")
    return impl
