"""What a placement is, and the default one: states live on the parameter's device.

A placement decides where a param group's encoded states live between steps and how a
step reaches them. The shell asks it four things: where to build a new or loaded state
(``home``), to move states where they belong (``settle``), where a state is now
(``location``, for memory reports), and to run a step over params and states (``run``);
and tells it when it is replaced (``take_over``) or dropped (``close``).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

from ..codecs import Encoded, encoded_states

StepFn = Callable[[list[torch.Tensor], list[dict[str, Any]]], None]
LOCATIONS = ("device", "host")
COUNTERS = ("step", "nonfinite_skips")  # per-param counters: they live where the step runs


def counters_on(state: dict[str, Any], device: torch.device) -> None:
    """Move ``state``'s counters to ``device`` (offload steps on the host, the others on the param's device)."""
    for name in COUNTERS:
        value = state.get(name)
        if isinstance(value, torch.Tensor) and value.device != device:
            state[name] = value.to(device)


def moved(enc: Encoded, device: torch.device) -> Encoded:
    """A copy of ``enc`` in fresh, separate buffers on ``device``."""
    buffers = {k: torch.empty_like(b, device=device).copy_(b) for k, b in enc.buffers.items()}
    return Encoded(enc.codec, enc.kind, enc.shape, buffers)


class Placement:
    """Base class; one instance per param group (the shell caches it)."""

    name: ClassVar[str]

    def home(self, param: torch.Tensor) -> torch.device:
        """Device on which a new (or loaded) state of ``param`` is built."""
        return param.device

    def settle(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        """Move ``state``'s encoded states to where this placement keeps them."""
        raise NotImplementedError

    def location(self, param: torch.Tensor, state: dict[str, Any]) -> str:
        """One of LOCATIONS: where ``state``'s encoded states are now."""
        return "device"

    def run(self, params: list[torch.Tensor], states: list[dict[str, Any]], step_fn: StepFn) -> None:
        """Call ``step_fn`` on params with their states reachable on the params' device."""
        step_fn(params, states)

    def host_ready(self) -> None:
        """Block until host copies of states are current (before the host reads them)."""

    def stream_buffer_bytes(self, params: list[torch.Tensor], states: list[dict[str, Any]]) -> int:
        """Device bytes a step borrows to stream paged states (0: nothing paged)."""
        return 0

    def offload_bytes(self, params: list[torch.Tensor]) -> tuple[int, int, int]:
        """(master weight bytes, grad transfer buffer bytes, params) kept in host memory by offload."""
        return 0, 0, 0

    def take_over(self, old: "Placement") -> None:
        """This placement replaces ``old`` for the same group (its options changed)."""
        old.close()

    def close(self) -> None:
        """The optimizer dropped this placement: release what it holds outside itself (hooks)."""

    def grads_changed(self) -> None:
        """Grads were changed in place without a new ``_version`` (GradScaler's unscale)."""


class DevicePlacement(Placement):
    """States live on the parameter's device; a step uses them where they are."""

    name = "device"

    def settle(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        for name, enc in encoded_states(state).items():
            if enc.device != param.device:  # e.g. the group was paged before
                state[name] = moved(enc, param.device)
        counters_on(state, param.device)  # e.g. the group was offloaded before
