"""The native CPU implementation: one fused C++ pass per parameter (csrc/).

A rule runs here when it names a tile (``rule.kernels.native_tile``: csrc/rules/<name>.h).
Elementwise rules (AdamW, Adam, Lion, SGD, SophiaG) are one call per parameter with the
rule's ``scalars`` as the tile's coefficients; rules that reduce over the tensor name a
driver module (``rule.kernels.native_driver``, imported on first use) whose ``param_step``
runs several kernel passes: adafactor.py (three, the first the same as CAME's), came.py
(four, the small vectors in between in PyTorch), adafactor_hf.py (three, the same first two
as CAME).

Per tile of 1024 elements it loads param and grad, decodes the states, applies the
rule, stores the param and re-encodes the states, all in L1-resident float buffers,
with OpenMP over the tiles of all the group's parameters at once (``tf_step_many``,
``torch.get_num_threads()`` threads). A parameter whose gradient holds NaN/Inf is found
by a first pass over the gradients and skipped entirely: param and states untouched,
``nonfinite_skips`` += 1, ``step`` unchanged.

The kernel is compiled on first use (build.py); without a compiler, ``impl="auto"``
falls back to the reference and ``impl="native"`` raises with the reason.
"""

from __future__ import annotations

import ctypes
import importlib
from typing import Any, Mapping, Sequence

import torch

from ...codecs import Encoded
from ...rules import Rule
from ..registry import register_implementation
from ..base import Implementation, plain_hyper
from .bounds import check_step_inputs
from .build import load_kernel, tile_id
from .codec_passes import NativeCodecImplementation
from .jobs import CODEC_FILLERS, DTYPE_IDS, MAX_STATES, TfJob, make_job


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


def driver(rule: Rule):
    """The module driving a factored rule's passes (``param_step``, ``KERNEL_STATES``), or None."""
    path = rule.kernels.native_driver
    return importlib.import_module(path) if path else None


def kernel_states(rule: Rule, state: dict[str, Any]) -> list[tuple[str, Encoded]]:
    """The encoded states the kernel streams (a driver's statistics reach it as plain arrays)."""
    encoded = [(k, v) for k, v in state.items() if isinstance(v, Encoded)]
    module = driver(rule)
    return encoded if module is None else [(k, v) for k, v in encoded if k in module.KERNEL_STATES]


class NativeCpuImplementation(Implementation):
    name = "native"

    def unavailable_reason(self, rule: Rule, params: Sequence[torch.Tensor],
                           states: Sequence[dict[str, Any]], rounding=None) -> str | None:
        if rounding is not None and any(p.dtype == torch.bfloat16 for p in params):
            return "stochastic rounding of bf16 params is not in the fused native kernel (native_codec has it)"
        if not rule.has_native:
            return f"rule {rule.name!r} has no native tile (Rule.kernels.native_tile)"
        if rule.kernels.native_driver is None and rule.scalars is None:
            return f"rule {rule.name!r} names native tile {rule.kernels.native_tile!r} but has no scalars"
        for i, (param, state) in enumerate(zip(params, states)):
            problem = _tensor_problem(f"param {i}", param)
            if problem is None and param.grad is not None:
                problem = _tensor_problem(f"grad of param {i}", param.grad)
                if problem is None and param.grad.shape != param.shape:
                    problem = f"grad of param {i} has shape {tuple(param.grad.shape)} != {tuple(param.shape)}"
            if problem is None and not (state["step"].dtype == torch.float32 and state["step"].device.type == "cpu"
                                        and state["nonfinite_skips"].dtype == torch.int64):
                problem = f"param {i}: step / nonfinite_skips counters are not CPU float32 / int64"
            encoded = kernel_states(rule, state)
            if problem is None and len(encoded) > MAX_STATES:
                problem = f"param {i} has {len(encoded)} states; native handles at most {MAX_STATES}"
            for name, enc in encoded:
                problem = problem or _state_problem(name, enc)
            if problem is not None:
                return problem
        _, why = load_kernel()  # last: compiles once if needed
        if why is None and tile_id(rule.kernels.native_tile) < 0:
            return (f"rule {rule.name!r} names native tile {rule.kernels.native_tile!r}, which the kernel lacks "
                    f"(no csrc/rules/{rule.kernels.native_tile}.h)")
        return why

    def step_group(self, rule: Rule, hyper: Mapping[str, Any], params: Sequence[torch.Tensor],
                   states: Sequence[dict[str, Any]], rounding=None) -> None:
        lib, why = load_kernel()
        if lib is None:
            raise RuntimeError(why)
        hyper = plain_hyper(hyper)
        check_step_inputs(rule, hyper, params, states)  # sizes the kernel indexes: refused before any C call
        n_threads = torch.get_num_threads()
        module = driver(rule)
        if module is not None:
            for param, state in zip(params, states):
                module.param_step(lib, rule, hyper, param, state, n_threads)
            return
        jobs = (TfJob * len(params))()
        for slot, (param, state) in enumerate(zip(params, states)):
            names = rule.state_names(param.shape, hyper)
            lossy = rule.lossy_guard(state[n].codec for n in names)
            coeffs = list(rule.scalars(hyper, int(state["step"].item()) + 1, lossy).values())
            jobs[slot] = make_job(rule, coeffs, param.detach(), param.grad, [state[n] for n in names],
                                  state["step"], state["nonfinite_skips"], n_threads)
        results = (ctypes.c_int32 * len(params))()
        lib.tf_step_many(jobs, len(params), n_threads, results)  # all params' tiles in one parallel loop
        if -1 in results:  # unavailable_reason checked the tile: not reached unless the library is stale
            raise RuntimeError(f"native kernel refused rule {rule.name!r} (tile {rule.kernels.native_tile!r})")


# impl="auto" on CPU tries the fused kernel, then native_codec, then the reference (registry.AUTO_ORDER).
NATIVE_CODEC = register_implementation(NativeCodecImplementation())
NATIVE = register_implementation(NativeCpuImplementation())
