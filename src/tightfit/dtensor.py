"""Whether a tensor is a DTensor, the local tensor a rank updates and the shape of a state
on this rank: what code outside distributed/ (placements, the shell, state_dicts) needs to
know, without importing distributed/ (whose checkpoint module imports state_io)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .rules import StateSpec

try:  # torch >= 2.5 exposes DTensor publicly
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor, Replicate = None, None


def is_dtensor(t: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local_tensor(param: torch.Tensor) -> torch.Tensor:
    """The tensor this rank updates: a DTensor's local shard (an alias), else the param."""
    return param._local_tensor if is_dtensor(param) else param


def is_elementwise(spec: StateSpec) -> bool:
    """A state shaped like its param (moments), not a reduced statistic of its own shape."""
    return spec.shape is None


def state_shape(spec: StateSpec, param: torch.Tensor) -> torch.Size:
    """Shape of one state on this rank: a DTensor param's elementwise states cover its local shard."""
    if is_dtensor(param) and is_elementwise(spec):
        return local_tensor(param).shape
    return spec.shape_for(param.shape)
