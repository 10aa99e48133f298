"""The native CPU implementation: one fused C++ pass per parameter (step_kernel.cpp).

Elementwise rules (AdamW, Adam, Lion, SGD, SophiaG) are one call per parameter;
Adafactor is driven from adafactor.py (three kernel passes, the first the same as CAME's),
CAME from came.py (four kernel passes, the small vectors in between in PyTorch),
Adafactor's HF convention from adafactor_hf.py (three passes, the same first two as CAME).

Per tile of 1024 elements it loads param and grad, decodes the states, applies the
rule, stores the param and re-encodes the states, all in L1-resident float buffers,
with OpenMP over tiles (``torch.get_num_threads()`` threads). A parameter whose
gradient holds NaN/Inf is found by a first pass over the gradient and skipped
entirely: param and states untouched, ``nonfinite_skips`` += 1, ``step`` unchanged.

The kernel is compiled on first use (build.py); without a compiler, ``impl="auto"``
falls back to the reference and ``impl="native"`` raises with the reason.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch

from ...codecs import Encoded
from ...rules import Rule
from ..registry import register_implementation
from ..base import Implementation, plain_hyper
from . import adafactor, adafactor_hf, came
from .bounds import check_step_inputs
from .build import load_kernel
from .codec_passes import NativeCodecImplementation
from .jobs import CODEC_FILLERS, DTYPE_IDS, MAX_STATES, RULE_CALLS, make_job


def _tensor_problem(what: str, t: torch.Tensor) -> str | None:
    if t.device.type != "cpu":
        return f"{what} is on {t.device}, native runs on CPU tensors only"
    if t.dtype not in DTYPE_IDS:
        return f"{what} has dtype {t.dtype}; native supports {sorted(map(str, DTYPE_IDS))}"
    if not t.is_contiguous():
        return f"{what} of shape {tuple(t.shape)} is not contiguous"
    return None


def _state_problem(name: str, enc: Encoded) -> str | None:
    if enc.codec not in CODEC_FILLERS:
        return f"state {name!r} uses codec {enc.codec!r}; native supports {sorted(CODEC_FILLERS)}"
    dtypes, _ = CODEC_FILLERS[enc.codec]
    for key, dtype in dtypes.items():
        buf = enc.buffers.get(key)
        if buf is None or buf.dtype != dtype or buf.device.type != "cpu" or not buf.is_contiguous():
            return f"state {name!r} buffer {key!r} is not a contiguous CPU {dtype} tensor"
    return None


class FactoredStep(NamedTuple):
    """A rule whose step is a per-parameter Python driver around the kernel passes."""

    step: Callable[..., None]
    kernel_states: tuple[str, ...]  # the states the kernel streams; the rest (statistics) it gets as arrays


FACTORED_STEPS = {
    "adafactor": FactoredStep(adafactor.adafactor_param_step, adafactor.KERNEL_STATES),
    "adafactor_hf": FactoredStep(adafactor_hf.adafactor_hf_param_step, adafactor_hf.KERNEL_STATES),
    "came": FactoredStep(came.came_param_step, came.KERNEL_STATES),
}


class NativeCpuImplementation(Implementation):
    name = "native"

    def unavailable_reason(self, rule: Rule, params: Sequence[torch.Tensor],
                           states: Sequence[dict[str, Any]], rounding=None) -> str | None:
        if rounding is not None and any(p.dtype == torch.bfloat16 for p in params):
            return "stochastic rounding of bf16 params is not in the fused native kernel (native_codec has it)"
        if rule.name not in RULE_CALLS and rule.name not in FACTORED_STEPS:
            return (f"rule {rule.name!r} has no native kernel "
                    f"(native supports {sorted(RULE_CALLS) + sorted(FACTORED_STEPS)})")
        for i, (param, state) in enumerate(zip(params, states)):
            problem = _tensor_problem(f"param {i}", param)
            if problem is None and param.grad is not None:
                problem = _tensor_problem(f"grad of param {i}", param.grad)
                if problem is None and param.grad.shape != param.shape:
                    problem = f"grad of param {i} has shape {tuple(param.grad.shape)} != {tuple(param.shape)}"
            if problem is None and not (state["step"].dtype == torch.float32 and state["step"].device.type == "cpu"
                                        and state["nonfinite_skips"].dtype == torch.int64):
                problem = f"param {i}: step / nonfinite_skips counters are not CPU float32 / int64"
            encoded = [(k, v) for k, v in state.items() if isinstance(v, Encoded)]
            if rule.name in FACTORED_STEPS:  # statistics reach the kernel as plain arrays
                encoded = [(k, v) for k, v in encoded if k in FACTORED_STEPS[rule.name].kernel_states]
            if problem is None and len(encoded) > MAX_STATES:
                problem = f"param {i} has {len(encoded)} states; native handles at most {MAX_STATES}"
            for name, enc in encoded:
                problem = problem or _state_problem(name, enc)
            if problem is not None:
                return problem
        _, why = load_kernel()  # last: compiles once if needed
        return why

    def step_group(self, rule: Rule, hyper: Mapping[str, Any], params: Sequence[torch.Tensor],
                   states: Sequence[dict[str, Any]], rounding=None) -> None:
        lib, why = load_kernel()
        if lib is None:
            raise RuntimeError(why)
        hyper = plain_hyper(hyper)
        check_step_inputs(rule, hyper, params, states)  # sizes the kernel indexes: refused before any C call
        n_threads = torch.get_num_threads()
        if rule.name in FACTORED_STEPS:
            for param, state in zip(params, states):
                FACTORED_STEPS[rule.name].step(lib, rule, hyper, param, state, n_threads)
            return
        make_call = RULE_CALLS[rule.name]
        for param, state in zip(params, states):
            names = [spec.name for spec in rule.state_specs(param.shape, hyper)]
            lossy = rule.lossy_guard(state[n].codec for n in names)
            call = make_call(hyper, int(state["step"].item()) + 1, lossy)
            job = make_job(call, param.detach(), param.grad, [state[n] for n in names],
                           state["step"], state["nonfinite_skips"], n_threads)
            lib.tf_step(job)


# impl="auto" on CPU tries the fused kernel, then native_codec, then the reference (registry.AUTO_ORDER).
NATIVE_CODEC = register_implementation(NativeCodecImplementation())
NATIVE = register_implementation(NativeCpuImplementation())
