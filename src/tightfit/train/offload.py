"""Activation offloading (``--offload-activations``): tensors autograd saves for backward
are copied to pinned host memory as they are saved and copied back when backward needs
them, like ``torch.autograd.graph.save_on_cpu`` but leaving parameters (and tensors
already on the host) where they are: copying every weight the forward saves would move
the model through PCIe twice a step and hold a second copy of it on the host.
"""

from __future__ import annotations

import contextlib

import torch


def moves_to_host(tensor: torch.Tensor) -> bool:
    """Saved tensors that go to the host: on an accelerator, and not a parameter (or a view of one)."""
    return tensor.device.type != "cpu" and not isinstance(tensor, torch.nn.Parameter) and \
        not isinstance(tensor._base, torch.nn.Parameter)


def _pack(tensor: torch.Tensor):
    if not moves_to_host(tensor):
        return tensor
    host = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout,
                       pin_memory=tensor.device.type == "cuda")
    host.copy_(tensor, non_blocking=True)
    return tensor.device, host


def _unpack(packed):
    if isinstance(packed, torch.Tensor):
        return packed
    device, host = packed
    return host.to(device, non_blocking=True)


def offload_activations(enabled: bool, device: torch.device):
    """The context to run forward and loss under: offloading on a GPU, nothing otherwise
    (on a CPU the activations already are in host memory)."""
    if not enabled or device.type == "cpu":
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(lambda t: _pack(t), _unpack)
