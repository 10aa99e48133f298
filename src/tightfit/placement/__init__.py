"""Placement: where a param group's encoded states live between steps (docs/architecture.md).

``paged`` (a param-group key) picks it: False -> ``DevicePlacement`` (states on the
param's device), True or a byte budget -> ``PagedPlacement`` (pinned host memory,
streamed through device buffers; the budget keeps some states on the device).
"""

from __future__ import annotations

from typing import Callable

import torch

from .device import LOCATIONS, DevicePlacement, Placement
from .paged import PagedPlacement
from .sizes import ALLOWED as PAGED_ALLOWED, device_budget, parse_size
from .streams import STREAM_LAYERS, CudaStreams, StreamLayer, stream_layer_for


def make_placement(paged: bool | str | int, params: list[torch.Tensor], state_bytes: Callable[[torch.Tensor], int],
                   warn: Callable[[str], None], splittable: bool = False) -> Placement:
    """The placement for a group with option ``paged`` (ValueError naming what is allowed);
    ``splittable``: the group's params may stream in pieces (elementwise rule)."""
    budget = device_budget(paged)
    return DevicePlacement() if budget is None else PagedPlacement(budget, params, state_bytes, warn, splittable)


__all__ = ["LOCATIONS", "PAGED_ALLOWED", "STREAM_LAYERS", "CudaStreams", "DevicePlacement", "PagedPlacement",
           "Placement", "StreamLayer", "device_budget", "make_placement", "parse_size", "stream_layer_for"]
