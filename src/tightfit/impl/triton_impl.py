"""The triton implementation: fused decode -> rule -> encode kernels, many params per launch.

Params of a group are bucketed by (device, param dtype, grad dtype, state codec); each bucket
takes two launches for elementwise rules (kernels/fused_step.py) and five (Adafactor) or
seven (CAME) for the factored rules (kernels/factored_step.py), so the launch count does
not grow with the number of params. Runs on CUDA tensors, and on CPU tensors under the triton interpreter
(``TRITON_INTERPRET=1``, for tests). triton is imported on the first step only.
"""

from __future__ import annotations

import importlib
import os
from collections import defaultdict

import torch

from ..kernels import triton_available
from .base import Implementation, encoded_states
from .registry import register_implementation

PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _kernel_codecs():
    from ..kernels.fused_step import KERNEL_CODECS  # imports triton
    return KERNEL_CODECS


def _driver(rule):
    """The module driving a factored rule's kernels (Kernels.triton_driver); imports triton."""
    return importlib.import_module(rule.kernels.triton_driver)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _state_codec(state) -> str | None:
    """The one codec of a param's coded states (None: none); ValueError if they differ.
    "small" states (factored statistics) are always fp32 and read separately."""
    codecs = {enc.codec for enc in encoded_states(state).values() if enc.kind != "small"}
    if len(codecs) > 1:
        raise ValueError(f"states use different codecs {sorted(codecs)}")
    return next(iter(codecs), None)


class TritonImplementation(Implementation):
    name = "triton"

    def unavailable_reason(self, rule, params, states, rounding=None) -> str | None:
        if not triton_available():
            return "triton is not installed (pip install triton)"
        for param in params:
            if param.device.type == "cpu" and not _interpreting():
                return "params are on the CPU; triton runs on CUDA (or on CPU with TRITON_INTERPRET=1)"
            if param.device.type not in ("cuda", "cpu"):
                return f"triton kernels do not run on {param.device.type} tensors"
            if param.dtype not in PARAM_DTYPES:
                return f"param dtype {param.dtype} is not one of {PARAM_DTYPES}"
            if not param.is_contiguous() or type(param) not in (torch.nn.Parameter, torch.Tensor):
                return "params must be plain contiguous tensors (not views or tensor subclasses)"
        if not rule.has_triton:
            return f"rule {rule.name!r} has no Triton tile (Rule.kernels names none)"
        codecs = _kernel_codecs()
        for param, state in zip(params, states):
            try:
                codec = _state_codec(state)
            except ValueError as error:
                return str(error)
            if codec is not None and codec not in codecs:
                return f"no fused kernel for codec {codec!r} (kernels exist for {sorted(codecs)})"
            if rule.kernels.triton_driver is not None:
                problem = _driver(rule).small_state_problem(rule, param.shape, state, param.device)
                if problem is not None:
                    return problem
        return None

    def step_group(self, rule, hyper, params, states, rounding=None) -> None:
        from ..kernels.fused_step import fused_step  # imports triton

        stochastic = rounding is not None
        seed = rounding.seed if rounding is not None else 0
        salts = rounding.salts if rounding is not None else tuple(range(len(params)))
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for index, (param, state) in enumerate(zip(params, states)):
            codec = _state_codec(state) or "fp32"
            buckets[(param.device, param.dtype, param.grad.dtype, codec)].append(index)
        for (_, param_dtype, _, codec), members in buckets.items():
            member_params, member_states = [params[i] for i in members], [states[i] for i in members]
            options = dict(stochastic_rounding=stochastic and param_dtype == torch.bfloat16, seed=seed,
                           salts=[salts[i] for i in members])
            if rule.kernels.triton_driver is not None:
                _driver(rule).factored_step(rule, hyper, member_params, member_states, codec, **options)
            else:
                state_names = rule.state_names(params[0].shape, hyper)
                fused_step(rule, hyper, member_params, member_states, state_names, codec, **options)


register_implementation(TritonImplementation())
