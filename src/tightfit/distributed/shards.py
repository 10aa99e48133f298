"""How a sharded (DTensor) parameter's optimizer states are laid out.

An elementwise state (its shape is the param's: moments, Sophia's Hessian EMA, a 1-D
param's Adafactor variance) lives on the param's local shard, so state memory shrinks
with the world size. A reduced statistic (Adafactor/CAME row and column factors) has a
shape of its own; it is tiny and kept whole, identical on every rank. The codec is
chosen from the whole parameter's numel, so sharding never changes which states are
quantized. Blockwise blocks start at each shard's first element: when a shard's numel
is a multiple of the block size (any Llama matrix: rows x 4096) the blocks are the ones
a single process would use; otherwise they differ and 8/4-bit results agree within the
codec's error, not bit for bit.
"""

from __future__ import annotations

import torch

from ..dtensor import (DTensor, Replicate, is_dtensor, is_elementwise, local_tensor,  # noqa: F401  (re-exported)
                       state_shape)
from ..rules import StateSpec

def as_dtensor(value: torch.Tensor, spec: StateSpec, param) -> torch.Tensor:
    """A state's local value as a DTensor: laid out like the param, or replicated."""
    if is_elementwise(spec):
        return DTensor.from_local(value, param.device_mesh, param.placements, run_check=False,
                                  shape=param.shape, stride=param.stride())
    return DTensor.from_local(value, param.device_mesh, [Replicate()] * param.device_mesh.ndim, run_check=False)


def to_local_value(value: torch.Tensor, spec: StateSpec, param) -> torch.Tensor:
    """Back from a DTensor rule result to what this rank stores."""
    if not is_dtensor(value):
        return value
    if is_elementwise(spec):
        return value.redistribute(param.device_mesh, param.placements).to_local()
    return value.full_tensor()
