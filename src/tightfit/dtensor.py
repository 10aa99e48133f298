"""Whether a tensor is a DTensor, and the local tensor a rank updates: what code outside
distributed/ (placements, the shell) needs to know, without importing distributed/."""

from __future__ import annotations

import torch

try:  # torch >= 2.5 exposes DTensor publicly
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor, Replicate = None, None


def is_dtensor(t: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local_tensor(param: torch.Tensor) -> torch.Tensor:
    """The tensor this rank updates: a DTensor's local shard (an alias), else the param."""
    return param._local_tensor if is_dtensor(param) else param
