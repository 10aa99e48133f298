"""Host side of the fused step: tables, hyperparameters and the two launches per bucket.

``fused_step`` steps params that share parameter dtype, gradient dtype and state codec
with one finite-check launch and one update launch, however many params there are. The
tables it builds hold addresses and sizes only (known on the host); everything that
depends on values -- lr when it is a tensor, step counts, non-finite flags -- stays on
the device, so nothing synchronises with the host.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import torch
import triton.language as tl

from ..codecs import get_codec
from ..codecs.maps import get_map
from ..rules import Rule
from . import fused_kernels, tile_io

ELEMENTS_PER_PROGRAM = 1024  # ROWS * BLOCK: few programs under the interpreter, full tiles on a GPU
MAX_STATES = 4  # the update kernel's state slots (fused_kernels.fused_update_kernel)

TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def rule_tile(rule: Rule):
    """The rule's @triton.jit tile ``update`` (Kernels.triton_tile, kernels/tiles/)."""
    return importlib.import_module(rule.kernels.triton_tile).update


def scalars_table(rule: Rule, hyper: Mapping[str, Any], steps: Sequence[torch.Tensor], lossy: bool,
                  device: torch.device) -> torch.Tensor:
    """[T, S] float64: ``rule.scalars`` of each tensor's coming step, computed on the device.

    ``steps`` are the tensors' step counters (0-d, on the device); the rule's scalars
    function runs on a float64 tensor of them, so a tensor lr and the step counts never
    cross to the host.
    """
    step = torch.stack(list(steps)).to(torch.float64) + 1.0
    values = rule.scalars(hyper, step, lossy)
    columns = [v.to(device=device, dtype=torch.float64).expand(step.shape) if isinstance(v, torch.Tensor)
               else torch.full(step.shape, float(v), dtype=torch.float64, device=device) for v in values.values()]
    return torch.stack(columns, dim=1).contiguous()


@dataclass(frozen=True)
class KernelCodec:
    selector: int
    value_dtype: Any  # tl dtype of the "values" buffer (unquantized codecs)
    lanes: int  # 2: two codes per byte
    bits: int  # map bits (0: unquantized)


KERNEL_CODECS: dict[str, KernelCodec] = {
    "fp32": KernelCodec(tile_io.CODEC_FP32.value, tl.float32, 1, 0),
    "bf16": KernelCodec(tile_io.CODEC_BF16.value, tl.bfloat16, 1, 0),
    "8bit": KernelCodec(tile_io.CODEC_8BIT.value, tl.float32, 1, 8),
    "4bit": KernelCodec(tile_io.CODEC_4BIT.value, tl.float32, 2, 4),
}


def codec_block(codec_name: str) -> int:
    """Elements per tile row: the codec's quantization block, 256 for unquantized codecs."""
    return get_codec(codec_name).block_size or 256


@lru_cache(maxsize=None)
def padded_map_tables(map_name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
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


def update_constexprs(rule: Rule, slots: int, nstates: int, codec_name: str, param_dtype: torch.dtype,
                      grad_dtype: torch.dtype, stochastic_rounding: bool, tensor_count: int) -> dict[str, Any]:
    """Compile-time parameters of the update kernel: the rule's tile and its number of
    scalars, selectors, dtypes, tile layout and the search depth (log2 of the tensor count)
    only -- never a hyperparameter or a step."""
    kernel_codec = KERNEL_CODECS[codec_name]
    block = codec_block(codec_name)
    return dict(TILE=rule_tile(rule), SLOTS=slots, NSTATES=nstates, CODEC=kernel_codec.selector,
                VALUE_DTYPE=kernel_codec.value_dtype, PARAM_DTYPE=TL_DTYPES[param_dtype],
                GRAD_DTYPE=TL_DTYPES[grad_dtype], STOCHASTIC=stochastic_rounding,
                ROWS=ELEMENTS_PER_PROGRAM // block, BLOCK=block, LANES=kernel_codec.lanes, BITS=kernel_codec.bits,
                COLUMNS=fused_kernels.FIXED_COLUMNS + 2 * nstates, SEARCH_LEVELS=search_levels(tensor_count))


def fused_step(rule: Rule, hyper: Mapping[str, Any], params: Sequence[torch.Tensor],
               states: Sequence[dict[str, Any]], state_names: Sequence[str], codec_name: str, *,
               stochastic_rounding: bool = False, seed: int = 0, salts: Sequence[int] | None = None) -> None:
    """One optimizer step for ``params`` (same dtype, same codec for every state) in two launches.

    ``state_names`` orders the rule's states as its tile expects them (``state_specs``).
    Stochastic rounding (bf16 params only) uses Philox key (seed, salt of the param) and
    counter (element, step); see rounding.py.
    """
    if len(state_names) > MAX_STATES:
        raise ValueError(f"rule {rule.name!r} keeps {len(state_names)} states; the fused kernel holds {MAX_STATES}")
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
    scalars = scalars_table(rule, hyper, [state["step"] for state in states], rule.lossy_guard([codec_name]),
                            device)
    scratch = torch.zeros(2 * len(params), dtype=torch.int32, device=device)
    nonfinite, step_snapshot = scratch[: len(params)], scratch[len(params):].view(torch.float32)

    map_addresses = [0] * (2 * MAX_STATES)
    if kernel_codec.bits:
        for index, name in enumerate(state_names):
            values, midpoints = padded_map_tables(get_codec(codec_name).map_names[states[0][name].kind], device)
            map_addresses[2 * index: 2 * index + 2] = values.data_ptr(), midpoints.data_ptr()
    maps = host_to_device(map_addresses, torch.int64, device)

    constexprs = update_constexprs(rule, scalars.shape[1], len(state_names), codec_name, param_dtype, grads[0].dtype,
                                   stochastic_rounding, len(params))
    grid = (total_programs,)
    fused_kernels.finite_check_kernel[grid](
        first_program, tensors, nonfinite, step_snapshot, GRAD_DTYPE=constexprs["GRAD_DTYPE"],
        GRAD_LIMIT=rule.grad_limit, COLUMNS=constexprs["COLUMNS"], SPAN=ELEMENTS_PER_PROGRAM,
        SEARCH_LEVELS=constexprs["SEARCH_LEVELS"])
    fused_kernels.fused_update_kernel[grid](first_program, tensors, scalars, nonfinite, step_snapshot, maps,
                                            **constexprs)
