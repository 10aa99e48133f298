"""Placement: where a param group's encoded states live between steps (docs/architecture.md).

``paged`` and ``offload`` (param-group keys) pick it: by default ``DevicePlacement``
(states on the param's device); ``paged`` True or a byte budget -> ``PagedPlacement``
(pinned host memory, streamed through device buffers; the budget keeps some states on the
device); ``offload=True`` -> ``OffloadPlacement`` (fp32 master weights and states in host
memory, the step on the CPU, grads and weights copied during backward and step).
"""

from __future__ import annotations

from typing import Callable

import torch

from .device import LOCATIONS, DevicePlacement, Placement
from .offload import OffloadPlacement
from .paged import PagedPlacement
from .sizes import ALLOWED as PAGED_ALLOWED, device_budget, parse_size
from .streams import STREAM_LAYERS, CudaStreams, StreamLayer, stream_layer_for


def make_placement(paged: bool | str | int, params: list[torch.Tensor], state_bytes: Callable[[torch.Tensor], int],
                   warn: Callable[[str], None], splittable: bool = False, offload: bool = False) -> Placement:
    """The placement for a group with options ``paged`` and ``offload`` (ValueError naming what
    is allowed); ``splittable``: the group's params may stream in pieces (elementwise rule)."""
    if offload:
        return OffloadPlacement(params, warn)
    budget = device_budget(paged)
    return DevicePlacement() if budget is None else PagedPlacement(budget, params, state_bytes, warn, splittable)


__all__ = ["LOCATIONS", "PAGED_ALLOWED", "STREAM_LAYERS", "CudaStreams", "DevicePlacement", "OffloadPlacement",
           "PagedPlacement", "Placement", "StreamLayer", "device_budget", "make_placement", "parse_size",
           "stream_layer_for"]
