"""Bytes of an optimizer's state, for any optimizer a benchmark compares.

tightfit reports its exact codec bytes; for torch, bitsandbytes and torchao the unique
tensors in ``opt.state`` are counted (step counters excluded): storages shared between
params (bnb's quantization maps) once, tensor subclasses (torchao's quantized states)
through their inner tensors.
"""

from __future__ import annotations

import torch


def tensor_bytes(value) -> int:
    """Bytes of a tensor, tensor subclasses (torchao quantized states) through their inner tensors."""
    if hasattr(value, "__tensor_flatten__"):
        names, _ = value.__tensor_flatten__()
        return sum(tensor_bytes(getattr(value, name)) for name in names)
    return value.numel() * value.element_size()


def _identity(value: torch.Tensor):
    """What makes two state tensors the same memory: the storage, or the wrapper object."""
    if hasattr(value, "__tensor_flatten__"):
        return ("object", id(value))
    return ("storage", value.untyped_storage().data_ptr())


def state_bytes(opt: torch.optim.Optimizer) -> int:
    if hasattr(opt, "state_nbytes"):
        return opt.state_nbytes()
    seen, total = set(), 0
    for state in opt.state.values():
        for key, value in state.items():
            if key == "step" or not isinstance(value, torch.Tensor):
                continue
            identity = _identity(value)
            if identity not in seen:
                seen.add(identity)
                total += tensor_bytes(value)
    return total
