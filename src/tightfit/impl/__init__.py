"""Implementation registry and the one function that chooses among them."""

from __future__ import annotations

from .base import Implementation
from .reference import ReferenceImplementation

IMPLEMENTATIONS: dict[str, Implementation] = {}
# Preference order per device type for impl="auto"; the reference runs everywhere.
AUTO_ORDER: dict[str, list[str]] = {"cpu": ["reference"], "cuda": ["reference"]}


def register_implementation(impl: Implementation, *, auto_on: tuple[str, ...] = ()) -> Implementation:
    """Register ``impl``; it is tried first by impl="auto" on the given device types."""
    IMPLEMENTATIONS[impl.name] = impl
    for device_type in auto_on:
        order = AUTO_ORDER.setdefault(device_type, ["reference"])
        order.insert(0, impl.name)
    return impl


register_implementation(ReferenceImplementation())


def implementation_names() -> list[str]:
    return ["auto", *IMPLEMENTATIONS]


def select_implementation(requested: str, rule, params, states, rounding=None) -> Implementation:
    """The implementation to run; an explicit choice that cannot run raises ValueError."""
    if requested == "auto":
        device_type = params[0].device.type
        for name in AUTO_ORDER.get(device_type, ["reference"]):
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
from . import native  # noqa: E402,F401  (registers impl "native")
from . import triton_impl  # noqa: E402,F401  (registers impl "triton")
