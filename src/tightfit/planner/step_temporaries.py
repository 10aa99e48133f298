"""Temporaries of one optimizer step, measured on the optimizer itself.

The step updates one parameter (tightfit's reference implementation) or one fused call
(torch ``fused=True``) at a time, so its working set is proportional to the parameter
being updated. ``step_bytes_per_element(spec)`` runs the real optimizer on a 64 x 256
fp32 sample (above ``min_quantized_numel``, so quantizing codecs quantize) under the
live-bytes tracker, after one step that creates the state, and returns the peak of new
storages per element; the planner multiplies it by the largest trainable tensor. Fused
Triton kernels on a GPU allocate less: this is an upper bound for them.
"""

from __future__ import annotations

import torch

from .tracker import LiveBytesTracker

SAMPLE_SHAPE = (64, 256)


_CACHE: dict[str, float] = {}


def _state_tensors(value):
    """Tensors inside a state dict (tightfit keeps ``Encoded`` values with ``buffers``)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _state_tensors(v)
    elif hasattr(value, "buffers") and isinstance(value.buffers, dict):
        yield from _state_tensors(value.buffers)


def _measure(spec) -> float:
    param = torch.nn.Parameter(torch.randn(SAMPLE_SHAPE))
    optimizer = spec.build([param])
    param.grad = torch.randn(SAMPLE_SHAPE)
    optimizer.step()  # creates the state
    param.grad = torch.randn(SAMPLE_SHAPE)
    tracker = LiveBytesTracker()
    tracker.track([param, param.grad, *_state_tensors(optimizer.state[param])])  # existing: not temporaries
    with tracker:
        base = tracker.current
        optimizer.step()
    return (tracker.peak - base) / param.numel()


def step_bytes_per_element(spec) -> float:
    """Peak bytes of new tensors per element of the parameter being stepped."""
    if spec.name not in _CACHE:
        _CACHE[spec.name] = _measure(spec)
    return _CACHE[spec.name]
