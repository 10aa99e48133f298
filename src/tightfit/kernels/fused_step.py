"""Host side of the fused step: tables, hyperparameters and the two launches per bucket.

``fused_step`` steps params that share parameter dtype, gradient dtype and state codec
with one finite-check launch and one update launch, however many params there are. The
tables it builds hold addresses and sizes only (known on the host); everything that
depends on values -- lr when it is a tensor, step counts, non-finite flags -- stays on
the device, so nothing synchronises with the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import torch
import triton.language as tl

from ..codecs import get_codec
from ..codecs.maps import get_map
from ..rules import get_rule
from . import fused_kernels, pieces

ELEMENTS_PER_PROGRAM = 1024  # ROWS * BLOCK: few programs under the interpreter, full tiles on a GPU
HYPER_SLOTS = 8

TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@dataclass(frozen=True)
class KernelRule:
    """How a rule maps onto the kernels: its selector and its float64 slots 1..7
    (slot 0 is lr); see the rule pieces in pieces.py for the slot meanings."""

    selector: int
    slots: Callable[[Mapping[str, Any]], dict[int, float]]


def _adam_slots(h, coupled: bool) -> dict[int, float]:
    decay = 5 if coupled else 4
    return {1: h["betas"][0], 2: h["betas"][1], 3: h["eps"], decay: h["weight_decay"], 6: h["maximize"]}


KERNEL_RULES: dict[str, KernelRule] = {
    "adamw": KernelRule(pieces.RULE_ADAM.value, lambda h: _adam_slots(h, coupled=False)),
    "adam": KernelRule(pieces.RULE_ADAM.value,
                       lambda h: _adam_slots(h, coupled=not h.get("decoupled_weight_decay", False))),
    "lion": KernelRule(pieces.RULE_LION.value, lambda h: {1: h["betas"][0], 2: h["betas"][1], 4: h["weight_decay"]}),
    "sgd": KernelRule(pieces.RULE_SGD.value, lambda h: {1: h["momentum"], 2: h["dampening"], 5: h["weight_decay"],
                                                        6: h["maximize"], 7: h["nesterov"]}),
    "sophiag": KernelRule(pieces.RULE_SOPHIAG.value, lambda h: {1: h["betas"][0], 3: h["rho"] * h["bs"],
                                                                4: h["weight_decay"], 6: h["maximize"]}),
}


@dataclass(frozen=True)
class KernelCodec:
    selector: int
    value_dtype: Any  # tl dtype of the "values" buffer (unquantized codecs)
    lanes: int  # 2: two codes per byte
    bits: int  # map bits (0: unquantized)


KERNEL_CODECS: dict[str, KernelCodec] = {
    "fp32": KernelCodec(pieces.CODEC_FP32.value, tl.float32, 1, 0),
    "bf16": KernelCodec(pieces.CODEC_BF16.value, tl.bfloat16, 1, 0),
    "8bit": KernelCodec(pieces.CODEC_8BIT.value, tl.float32, 1, 8),
    "4bit": KernelCodec(pieces.CODEC_4BIT.value, tl.float32, 2, 4),
}


def codec_block(codec_name: str) -> int:
    """Elements per tile row: the codec's quantization block, 256 for unquantized codecs."""
    return get_codec(codec_name).block_size or 256


@lru_cache(maxsize=None)
def map_tables(map_name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, midpoints padded with +inf to a power of two) on ``device``."""
    qmap = get_map(map_name)
    size = 1 << max(1, math.ceil(math.log2(qmap.size)))
    padded = torch.full((size,), float("inf"), dtype=torch.float32)
    padded[: qmap.size - 1] = qmap.midpoints
    return qmap.values.to(device), padded.to(device)


def host_to_device(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small table on ``device`` without a host sync: a pageable host-to-device copy
    waits for the stream to drain, a pinned non_blocking one does not (the caching host
    allocator keeps the pinned buffer alive until the copy is done)."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def make_hyper_table(slots: Mapping[int, float], lr, size: int, device: torch.device) -> torch.Tensor:
    """float64 hyperparameter table: slot 0 is lr, ``slots`` fill the others. A tensor lr
    is copied on the device (no .item())."""
    values = [0.0] * size
    values[0] = 0.0 if isinstance(lr, torch.Tensor) else float(lr)
    for slot, value in slots.items():
        values[slot] = float(value)
    table = host_to_device(values, torch.float64, device)
    if isinstance(lr, torch.Tensor):
        table[:1].copy_(lr.detach().reshape(1), non_blocking=True)
    return table


def search_levels(tensor_count: int) -> int:
    """Binary-search depth over the first_program table (changes only at powers of two)."""
    return max(1, tensor_count.bit_length())


@lru_cache(maxsize=128)
def program_table(programs: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, int]:
    """(first program of each tensor padded with int64 max, total programs) for tensors
    taking ``programs`` programs each (at least one: a tensor with no work still counts
    its step), cached on the device: it depends on sizes only, so steady-state steps
    copy nothing for it."""
    starts, total = [], 0
    for count in programs:
        starts.append(total)
        total += max(1, count)
    starts += [torch.iinfo(torch.int64).max] * ((1 << search_levels(len(programs))) - len(programs))
    return torch.tensor(starts, dtype=torch.int64).to(device), total


def element_programs(numels: Sequence[int]) -> tuple[int, ...]:
    """Programs per tensor when each covers ELEMENTS_PER_PROGRAM elements."""
    return tuple(-(-n // ELEMENTS_PER_PROGRAM) for n in numels)


def update_constexprs(rule_name: str, nstates: int, codec_name: str, param_dtype: torch.dtype,
                      grad_dtype: torch.dtype, stochastic_rounding: bool, tensor_count: int) -> dict[str, Any]:
    """Compile-time parameters of the update kernel: selectors, dtypes, tile layout and the
    search depth (log2 of the tensor count) only -- never a hyperparameter or a step."""
    kernel_codec = KERNEL_CODECS[codec_name]
    block = codec_block(codec_name)
    return dict(RULE=KERNEL_RULES[rule_name].selector, NSTATES=nstates, CODEC=kernel_codec.selector,
                VALUE_DTYPE=kernel_codec.value_dtype, PARAM_DTYPE=TL_DTYPES[param_dtype],
                GRAD_DTYPE=TL_DTYPES[grad_dtype], STOCHASTIC=stochastic_rounding,
                ROWS=ELEMENTS_PER_PROGRAM // block, BLOCK=block, LANES=kernel_codec.lanes, BITS=kernel_codec.bits,
                COLUMNS=fused_kernels.FIXED_COLUMNS + 2 * nstates, SEARCH_LEVELS=search_levels(tensor_count))


def fused_step(rule_name: str, hyper: Mapping[str, Any], params: Sequence[torch.Tensor],
               states: Sequence[dict[str, Any]], state_names: Sequence[str], codec_name: str, *,
               stochastic_rounding: bool = False, seed: int = 0, salts: Sequence[int] | None = None) -> None:
    """One optimizer step for ``params`` (same dtype, same codec for every state) in two launches.

    ``state_names`` orders the rule's states as the kernels expect them (first, second).
    Stochastic rounding (bf16 params only) uses Philox key (seed, salt of the param) and
    counter (element, step); see rounding.py.
    """
    kernel_rule = KERNEL_RULES[rule_name]
    kernel_codec = KERNEL_CODECS[codec_name]
    device = params[0].device
    param_dtype = params[0].dtype
    if stochastic_rounding and param_dtype != torch.bfloat16:
        raise ValueError(f"stochastic_rounding applies to bfloat16 params, not {param_dtype}")
    grads = [p.grad if p.grad.is_contiguous() else p.grad.contiguous() for p in params]
    salts = list(range(len(params))) if salts is None else list(salts)

    tensor_rows: list[int] = []
    for param, grad, state, salt in zip(params, grads, states, salts):
        tensor_rows += (param.data_ptr(), grad.data_ptr(), state["step"].data_ptr(),
                        state["nonfinite_skips"].data_ptr(), param.numel(), seed, salt)
        for name in state_names:
            buffers = state[name].buffers
            tensor_rows += (buffers["values"].data_ptr(), 0) if "values" in buffers else \
                (buffers["codes"].data_ptr(), buffers["absmax"].data_ptr())
    first_program, total_programs = program_table(element_programs([p.numel() for p in params]), device)
    tensors = host_to_device(tensor_rows, torch.int64, device)
    slots = kernel_rule.slots(hyper)
    if kernel_rule.selector == pieces.RULE_ADAM.value:  # slot 7: lossy states (Rule.update_extras)
        slots[7] = float(get_rule(rule_name).lossy_guard([codec_name]))
    hyper_table = make_hyper_table(slots, hyper["lr"], HYPER_SLOTS, device)
    scratch = torch.zeros(2 * len(params), dtype=torch.int32, device=device)
    nonfinite, step_snapshot = scratch[: len(params)], scratch[len(params):].view(torch.float32)

    maps = []
    for name in state_names:
        if kernel_codec.bits:
            maps += map_tables(get_codec(codec_name).map_names[states[0][name].kind], device)
        else:
            maps += (hyper_table, hyper_table)  # unused by unquantized codecs
    maps += [hyper_table] * (4 - len(maps))

    constexprs = update_constexprs(rule_name, len(state_names), codec_name, param_dtype, grads[0].dtype,
                                   stochastic_rounding, len(params))
    grid = (total_programs,)
    fused_kernels.finite_check_kernel[grid](
        first_program, tensors, nonfinite, step_snapshot, GRAD_DTYPE=constexprs["GRAD_DTYPE"],
        GRAD_LIMIT=get_rule(rule_name).grad_limit, COLUMNS=constexprs["COLUMNS"], SPAN=ELEMENTS_PER_PROGRAM,
        SEARCH_LEVELS=constexprs["SEARCH_LEVELS"])
    fused_kernels.fused_update_kernel[grid](first_program, tensors, hyper_table, nonfinite, step_snapshot, *maps,
                                            **constexprs)
