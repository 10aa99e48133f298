"""Host side of the factored rules' step (Adafactor, transformers' Adafactor, CAME).

``factored_step`` steps params sharing parameter dtype, gradient dtype and first-moment
codec in five launches (seven for CAME) over all of them (factored_kernels.py for the
passes). As in fused_step, the tables hold addresses and sizes only; every value --
step counts, lr when it is a tensor, non-finite flags, RMS(θ), RMS(U), the statistics --
stays on the device.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from ..codecs import get_codec
from ..rules import Rule
from . import factored_kernels as K
from . import fused_kernels
from .fused_step import (ELEMENTS_PER_PROGRAM, KERNEL_CODECS, TL_DTYPES, codec_block, element_programs,
                         host_to_device, make_hyper_table, padded_map_tables, program_table, search_levels)

TILE_ROWS, TILE_COLS = 8, 128  # stats tiles: rows reduce to TILE_ROWS sums, columns to TILE_COLS
STAT_SPAN = 1024  # statistic entries per finish program


@dataclass(frozen=True)
class FactoredRule:
    """How a factored rule maps onto the kernels: selector, hyperparameter slots
    (factored_kernels.SLOT_*), and its state names."""

    selector: int
    slots: Callable[[Mapping[str, Any]], dict[int, float]]
    second_moment: tuple[str, str, str]  # row, column, full (vectors)
    instability: tuple[str, str] | None = None  # CAME's residual row, column

    def has_momentum(self, hyper: Mapping[str, Any]) -> bool:
        return self.instability is not None or hyper.get("beta1") is not None


def binding_of(rule: Rule) -> FactoredRule:
    """The rule's FactoredRule (``BINDING`` of its Kernels.triton_tile module, factored_rules/)."""
    return importlib.import_module(rule.kernels.triton_tile).BINDING


@dataclass(frozen=True)
class Geometry:
    """A param as B matrices of R x C (a vector or scalar: one 1 x numel, not factored)."""

    batches: int
    rows: int
    cols: int
    factored: bool

    @classmethod
    def of(cls, shape: torch.Size) -> "Geometry":
        if len(shape) >= 2:
            return cls(math.prod(shape[:-2]), max(1, shape[-2]), max(1, shape[-1]), True)
        return cls(1, 1, max(1, math.prod(shape)), False)

    @property
    def row_entries(self) -> int:
        return self.batches * self.rows if self.factored else 0

    @property
    def col_entries(self) -> int:
        return self.batches * self.cols

    @property
    def scratch_floats(self) -> int:
        """Matches factored_kernels._scratch_offsets."""
        return K.SCRATCH_HEAD + 2 * self.batches * (self.rows + self.cols + 1)

    def stats_tiles(self) -> int:
        return self.batches * -(-self.rows // TILE_ROWS) * -(-self.cols // TILE_COLS)


def small_state_problem(rule: Rule, shape: torch.Size, state: Mapping[str, Any], device: torch.device) -> str | None:
    """Why this param's statistics cannot be read by the kernels (None: they can)."""
    rule = binding_of(rule)
    names = rule.second_moment[:2] if len(shape) >= 2 else rule.second_moment[2:]
    if rule.instability is not None and len(shape) >= 2:
        names += rule.instability
    for name in names:
        enc = state.get(name)
        values = None if enc is None else enc.buffers.get("values")
        if values is None or values.dtype != torch.float32 or values.device != device or not values.is_contiguous():
            return f"statistic {name!r} is not a contiguous float32 tensor on {device}"
    return None


def _pointers(rule: FactoredRule, geometry: Geometry, state: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """Addresses of (row, column, residual row, residual column) statistics; unused ones
    point at the column statistic (never read: the kernels mask them)."""
    def address(name):
        return state[name].buffers["values"].data_ptr()
    if not geometry.factored:
        full = address(rule.second_moment[2])
        return full, full, full, full
    row, col = address(rule.second_moment[0]), address(rule.second_moment[1])
    if rule.instability is None:
        return row, col, col, col
    return row, col, address(rule.instability[0]), address(rule.instability[1])


def factored_step(update_rule: Rule, hyper: Mapping[str, Any], params: Sequence[torch.Tensor],
                  states: Sequence[dict[str, Any]], codec_name: str, *, stochastic_rounding: bool = False,
                  seed: int = 0, salts: Sequence[int] | None = None) -> None:
    """One step of ``params`` (same param dtype, grad dtype and first-moment codec;
    ``codec_name`` is ignored without a first moment)."""
    rule = binding_of(update_rule)
    device, param_dtype = params[0].device, params[0].dtype
    if stochastic_rounding and param_dtype != torch.bfloat16:
        raise ValueError(f"stochastic_rounding applies to bfloat16 params, not {param_dtype}")
    momentum = rule.has_momentum(hyper)
    codec_name = codec_name if momentum else "fp32"
    kernel_codec = KERNEL_CODECS[codec_name]
    grads = [p.grad if p.grad.is_contiguous() else p.grad.contiguous() for p in params]
    salts = list(range(len(params))) if salts is None else list(salts)
    geometries = [Geometry.of(p.shape) for p in params]

    scratch_starts = [0]
    for geometry in geometries:
        scratch_starts.append(scratch_starts[-1] + geometry.scratch_floats)
    scratch = torch.zeros(scratch_starts[-1], dtype=torch.float32, device=device)
    flags = torch.zeros(2 * len(params), dtype=torch.int32, device=device)
    nonfinite, step_snapshot = flags[: len(params)], flags[len(params):].view(torch.float32)

    rows: list[int] = []
    for param, grad, state, salt, geometry, start in zip(params, grads, states, salts, geometries, scratch_starts):
        rows += (param.data_ptr(), grad.data_ptr(), state["step"].data_ptr(), state["nonfinite_skips"].data_ptr(),
                 param.numel(), seed, salt)
        if momentum:
            buffers = state["exp_avg"].buffers
            rows += (buffers["values"].data_ptr(), 0) if "values" in buffers else \
                (buffers["codes"].data_ptr(), buffers["absmax"].data_ptr())
        else:
            rows += (0, 0)
        rows += (geometry.batches, geometry.rows, geometry.cols, int(geometry.factored),
                 *_pointers(rule, geometry, state), scratch.data_ptr() + 4 * start)
    tensors = host_to_device(rows, torch.int64, device)
    hyper_table = make_hyper_table(rule.slots(hyper), hyper["lr"] or 0.0, K.HYPER_SLOTS, device)
    if kernel_codec.bits:
        map_values, midpoints = padded_map_tables(get_codec(codec_name).map_names[states[0]["exp_avg"].kind], device)
    else:
        map_values = midpoints = hyper_table  # unused by unquantized codecs

    levels = search_levels(len(params))
    element_table, element_grid = program_table(element_programs([p.numel() for p in params]), device)
    stats_table, stats_grid = program_table(tuple(g.stats_tiles() for g in geometries), device)
    codec_args = dict(CODEC=kernel_codec.selector, VALUE_DTYPE=kernel_codec.value_dtype, BLOCK=codec_block(codec_name))
    dtypes = dict(PARAM_DTYPE=TL_DTYPES[param_dtype], GRAD_DTYPE=TL_DTYPES[grads[0].dtype])

    def stats_and_finish(source, entries) -> None:
        K.factored_stats_kernel[(stats_grid,)](
            stats_table, tensors, hyper_table, nonfinite, step_snapshot, map_values, RULE=rule.selector,
            SOURCE=source, TILE_ROWS=TILE_ROWS, TILE_COLS=TILE_COLS, SEARCH_LEVELS=levels, **codec_args, **dtypes)
        finish_table, finish_grid = program_table(tuple(-(-n // STAT_SPAN) for n in entries), device)
        K.factored_finish_kernel[(finish_grid,)](finish_table, tensors, hyper_table, nonfinite, step_snapshot,
                                                 RULE=rule.selector, SOURCE=source, SPAN=STAT_SPAN,
                                                 SEARCH_LEVELS=levels)

    fused_kernels.finite_check_kernel[(element_grid,)](
        element_table, tensors, nonfinite, step_snapshot, GRAD_DTYPE=dtypes["GRAD_DTYPE"],
        GRAD_LIMIT=update_rule.grad_limit, COLUMNS=K.COLUMNS.value,
        SPAN=ELEMENTS_PER_PROGRAM, SEARCH_LEVELS=levels)
    stats_and_finish(K.SOURCE_GRAD_SQ.value, [g.row_entries + g.col_entries for g in geometries])
    K.factored_rms_kernel[(element_grid,)](element_table, tensors, hyper_table, nonfinite, RULE=rule.selector,
                                           GRAD_DTYPE=dtypes["GRAD_DTYPE"], SPAN=ELEMENTS_PER_PROGRAM,
                                           SEARCH_LEVELS=levels)
    if rule.instability is not None:
        stats_and_finish(K.SOURCE_INSTABILITY.value,
                         [g.row_entries + g.col_entries if g.factored else 0 for g in geometries])
    block = codec_block(codec_name)
    K.factored_apply_kernel[(element_grid,)](
        element_table, tensors, hyper_table, nonfinite, step_snapshot, map_values, midpoints, RULE=rule.selector,
        HAS_MOMENTUM=momentum, STOCHASTIC=stochastic_rounding, ROWS=ELEMENTS_PER_PROGRAM // block,
        LANES=kernel_codec.lanes, BITS=kernel_codec.bits, SEARCH_LEVELS=levels, **codec_args, **dtypes)
