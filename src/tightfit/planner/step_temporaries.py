"""Temporaries of one optimizer step, measured on the optimizer's own code.

The step updates one parameter (tightfit's reference implementation) or one fused call
(torch ``fused=True``) at a time, so its working set is proportional to the parameter
being updated. ``step_bytes_per_element(spec, dtype)`` steps a 64 x 256 sample of the
dtype the optimizer steps (fp32 masters/adapters, or bf16 params without masters; above
``min_quantized_numel``, so quantizing codecs quantize) under the live-bytes tracker,
after one step that creates the state, and returns the peak of new storages per
element; the planner multiplies it by the largest trainable tensor. Fused Triton kernels
on a GPU allocate less: this is an upper bound for them.

tightfit (and bnb, planned as their tightfit equivalents) run ``reference_param_step``
directly on codec-made states — the exact code ``TightfitOptimizer.step`` runs with
``impl="reference"``, without constructing a ``torch.optim.Optimizer`` (whose first
construction imports torch._dynamo, ~1.5 s). torch peers run the torch optimizer.
"""

from __future__ import annotations

import torch

from .tracker import LiveBytesTracker

SAMPLE_SHAPE = (64, 256)


def fused_on_gpu(spec) -> bool:
    """True when the optimizer's GPU step is one fused kernel (tightfit Triton, bnb CUDA):
    such a step updates in registers and allocates only small tables, no full-size
    temporaries. tightfit's elementwise rules with a Triton tile (Rule.kernels) are; the
    factored rules' kernels keep statistics in scratch and are planned as the reference."""
    if spec.source == "bnb":
        return True
    rule = spec.rule
    return spec.source == "tightfit" and rule.has_triton and rule.kernels.triton_driver is None


_CACHE: dict[tuple[str, torch.dtype], float] = {}


def _state_tensors(value):
    """Tensors inside a state dict (tightfit keeps ``Encoded`` values with ``buffers``)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _state_tensors(v)
    elif hasattr(value, "buffers") and isinstance(value.buffers, dict):
        yield from _state_tensors(value.buffers)


def _reference_stepper(spec, param: torch.Tensor):
    """(step function, state) running tightfit's reference step for ``spec`` on ``param``."""
    from ..impl.reference import reference_param_step
    from ..state_bytes import codec_for_state

    rule = spec.rule
    hyper = {**rule.defaults, **spec.hyper}
    if hyper.get("lr", 0) is None and not hyper.get("relative_step", False):
        hyper["lr"] = 1e-4  # rules without a default lr (CAME); the value does not change memory
    codec = spec.codec_for(param.dtype)
    state = {"step": torch.zeros(()), "nonfinite_skips": torch.zeros((), dtype=torch.int64)}
    for st in rule.state_specs(param.shape, hyper):
        chosen = codec_for_state(st.kind, param.numel(), codec, spec.min_quantized_numel)
        state[st.name] = chosen.zeros(st.shape_for(param.shape), st.kind, param.device)
    with_grad = torch.no_grad()
    return (lambda: (with_grad.__enter__(), reference_param_step(rule, hyper, param, state),
                     with_grad.__exit__(None, None, None))), state


def _measure(spec, dtype: torch.dtype) -> float:
    param = torch.nn.Parameter(torch.randn(SAMPLE_SHAPE, dtype=dtype))
    if spec.source == "torch":
        optimizer = spec.build([param])
        step, state = optimizer.step, lambda: optimizer.state[param]
    else:
        step, made = _reference_stepper(spec, param)
        state = lambda: made  # noqa: E731
    param.grad = torch.randn(SAMPLE_SHAPE, dtype=dtype)
    step()  # creates the state
    param.grad = torch.randn(SAMPLE_SHAPE, dtype=dtype)
    tracker = LiveBytesTracker()
    tracker.track([param, param.grad, *_state_tensors(state())])  # existing: not temporaries
    with tracker:
        base = tracker.current
        step()
    return (tracker.peak - base) / param.numel()


def step_bytes_per_element(spec, dtype: torch.dtype = torch.float32) -> float:
    """Peak bytes of new tensors per element of the parameter being stepped."""
    key = (spec.name, dtype)
    if key not in _CACHE:
        _CACHE[key] = _measure(spec, dtype)
    return _CACHE[key]
