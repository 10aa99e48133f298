"""The two kernels of a fused multi-tensor step (triton 3.6 language).

A launch covers many tensors that share parameter dtype and state codec.
``first_program`` is an int64 table: the first program of each tensor (a running sum
of ceil(numel / SPAN)), padded with int64 max to 2^SEARCH_LEVELS entries; a program
finds its tensor by binary search, so the table has one entry per tensor, not per
program (a Llama-8B step runs ~8M programs). ``tensors`` is an int64 table
[T, COLUMNS] (COLUMNS = 7 + 2 * NSTATES, NSTATES ≤ 4) with one row per tensor: addresses of param,
grad, step, nonfinite_skips, then numel, rounding seed, rounding salt, then per state
the address of its values/codes buffer and of its absmax (0 for unquantized codecs).

A program covers a tile of ROWS codec blocks of BLOCK elements. Packed 4-bit codecs
split the tile into two lanes (even and odd elements: the low and high nibbles of the
same bytes), so no reshape is needed to pack.

Pass 1 (``finite_check_kernel``) flags tensors whose gradient holds NaN/Inf or an
element at or above the rule's ``GRAD_LIMIT`` (rules/base.py: squares must not overflow) and
snapshots their step counters; pass 2 (``fused_update_kernel``) reads the flag, so a
flagged tensor is left untouched, and the first program of each tensor bumps its step
(or its skip count). No value crosses back to the host.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import tile_io
from .tile_io import CODEC_4BIT, CODEC_8BIT

FIXED_COLUMNS = 7  # param, grad, step, nonfinite_skips, numel, seed, salt
_STATE_COLUMN0: tl.constexpr = tl.constexpr(FIXED_COLUMNS)


@triton.jit
def _address(row, column, DTYPE: tl.constexpr):
    return tl.load(row + column).to(tl.pointer_type(DTYPE))


@triton.jit
def locate(first_program, SEARCH_LEVELS: tl.constexpr, SPAN: tl.constexpr):
    """(tensor, first element) of this program: the last tensor whose first program <= pid."""
    pid = tl.program_id(0).to(tl.int64)
    tensor = pid * 0
    for level in tl.static_range(SEARCH_LEVELS):
        candidate = tensor + (1 << (SEARCH_LEVELS - 1 - level))
        tensor = tl.where(tl.load(first_program + candidate) <= pid, candidate, tensor)
    return tensor, (pid - tl.load(first_program + tensor)) * SPAN


@triton.jit
def finite_check_kernel(first_program, tensors, nonfinite, step_snapshot, GRAD_DTYPE: tl.constexpr,
                        GRAD_LIMIT: tl.constexpr, COLUMNS: tl.constexpr, SPAN: tl.constexpr,
                        SEARCH_LEVELS: tl.constexpr):
    tensor, start = locate(first_program, SEARCH_LEVELS, SPAN)
    row = tensors + tensor * COLUMNS
    numel = tl.load(row + 4)
    elem = start + tl.arange(0, SPAN)
    grad = tl.load(_address(row, 1, GRAD_DTYPE) + elem, mask=elem < numel, other=0.0).to(tl.float32)
    usable = tl.abs(grad) < GRAD_LIMIT  # NaN compares false; inf is over any limit
    bad = tl.sum((~usable).to(tl.int32), axis=0)
    tl.atomic_max(nonfinite + tensor, tl.minimum(bad, 1))
    step = tl.load(_address(row, 2, tl.float32))
    tl.store(step_snapshot + tensor, step, mask=start == 0)


@triton.jit
def _store_values(row, column, elem, value, mask, DTYPE: tl.constexpr):
    """Store float32 ``value`` as DTYPE at the address in ``column`` (bf16: round to nearest even)."""
    if DTYPE == tl.bfloat16:
        tl.store(_address(row, column, tl.int16) + elem, tile_io.nearest_bf16_bits(value), mask=mask)
    else:
        tl.store(_address(row, column, DTYPE) + elem, value.to(DTYPE), mask=mask)


@triton.jit
def _decode_lane(CODEC: tl.constexpr, values_ptr, codes_ptr, map_values, elem, byte, mask, absmax_rows,
                 NIBBLE: tl.constexpr):
    if CODEC == CODEC_8BIT:
        state = tile_io.decode_code(map_values, tl.load(codes_ptr + elem, mask=mask, other=0), absmax_rows)
    elif CODEC == CODEC_4BIT:
        packed = tl.load(codes_ptr + byte, mask=mask, other=0)
        state = tile_io.decode_code(map_values, (packed >> (4 * NIBBLE)) & 0xF, absmax_rows)
    else:
        state = tile_io.decode_values(values_ptr, elem, mask)
    # Lanes past numel decode map[0] * absmax; zero them so the rule sees 0 there, not garbage.
    return tl.where(mask, state, 0.0)


@triton.jit
def _load_state(CODEC: tl.constexpr, VALUE_DTYPE: tl.constexpr, row, INDEX: tl.constexpr, map_values,
                elem0, elem1, byte, mask0, block, block_mask, LANES: tl.constexpr):
    """Decoded float32 state INDEX for both lanes (lane 1 is lane 0 unless LANES == 2)."""
    column: tl.constexpr = _STATE_COLUMN0 + 2 * INDEX
    absmax_rows = tl.zeros(block.shape, tl.float32)[:, None]
    if CODEC == CODEC_8BIT or CODEC == CODEC_4BIT:
        absmax_rows = tl.load(_address(row, column + 1, tl.float32) + block, mask=block_mask, other=0.0)[:, None]
    values_ptr = _address(row, column, VALUE_DTYPE)
    codes_ptr = _address(row, column, tl.uint8)
    lane0 = _decode_lane(CODEC, values_ptr, codes_ptr, map_values, elem0, byte, mask0, absmax_rows, 0)
    lane1 = lane0
    if LANES == 2:
        lane1 = _decode_lane(CODEC, values_ptr, codes_ptr, map_values, elem1, byte, mask0, absmax_rows, 1)
    return lane0, lane1


@triton.jit
def _store_state(CODEC: tl.constexpr, VALUE_DTYPE: tl.constexpr, row, INDEX: tl.constexpr, midpoints,
                 lane0, lane1, elem0, byte, mask0, mask1, block, block_mask, LANES: tl.constexpr,
                 BITS: tl.constexpr):
    """Encode and store state INDEX: new absmax per block, nearest codes, nibble packing."""
    column: tl.constexpr = _STATE_COLUMN0 + 2 * INDEX
    if CODEC == CODEC_8BIT or CODEC == CODEC_4BIT:
        absmax = tile_io.block_absmax(lane0, mask0, lane1, mask1, LANES == 2)
        tl.store(_address(row, column + 1, tl.float32) + block, absmax, mask=block_mask)
        code0 = tile_io.nearest_code(lane0, absmax[:, None], midpoints, BITS)
        codes_ptr = _address(row, column, tl.uint8)
        if CODEC == CODEC_8BIT:
            tl.store(codes_ptr + elem0, code0.to(tl.uint8), mask=mask0)
        else:
            # An odd element past numel packs as code 0, like codecs.blockwise.pack_nibbles.
            code1 = tl.where(mask1, tile_io.nearest_code(lane1, absmax[:, None], midpoints, BITS), 0)
            tl.store(codes_ptr + byte, (code0 | (code1 << 4)).to(tl.uint8), mask=mask0)
    else:
        _store_values(row, column, elem0, lane0, mask0, VALUE_DTYPE)


@triton.jit
def _store_param(row, elem, mask, value, step, seed, salt, PARAM_DTYPE: tl.constexpr,
                 STOCHASTIC: tl.constexpr):
    if STOCHASTIC:
        bits = tile_io.stochastic_bf16_bits(value, elem, step, seed, salt)
        tl.store(_address(row, 0, tl.int16) + elem, bits, mask=mask)
    else:
        _store_values(row, 0, elem, value, mask, PARAM_DTYPE)


@triton.jit
def _load_states(CODEC: tl.constexpr, VALUE_DTYPE: tl.constexpr, row, maps, NSTATES: tl.constexpr,
                 elem0, elem1, byte, mask0, block, block_mask, LANES: tl.constexpr, zero):
    """The NSTATES (≤ 4) decoded states, both lanes each; absent ones are zeros."""
    a0, a1, b0, b1, c0, c1, d0, d1 = zero, zero, zero, zero, zero, zero, zero, zero
    if NSTATES > 0:
        a0, a1 = _load_state(CODEC, VALUE_DTYPE, row, 0, _address(maps, 0, tl.float32), elem0, elem1,
                                 byte, mask0, block, block_mask, LANES)
    if NSTATES > 1:
        b0, b1 = _load_state(CODEC, VALUE_DTYPE, row, 1, _address(maps, 2, tl.float32), elem0, elem1,
                                 byte, mask0, block, block_mask, LANES)
    if NSTATES > 2:
        c0, c1 = _load_state(CODEC, VALUE_DTYPE, row, 2, _address(maps, 4, tl.float32), elem0, elem1,
                                 byte, mask0, block, block_mask, LANES)
    if NSTATES > 3:
        d0, d1 = _load_state(CODEC, VALUE_DTYPE, row, 3, _address(maps, 6, tl.float32), elem0, elem1,
                                 byte, mask0, block, block_mask, LANES)
    return a0, a1, b0, b1, c0, c1, d0, d1


@triton.jit
def _store_states(CODEC: tl.constexpr, VALUE_DTYPE: tl.constexpr, row, maps, NSTATES: tl.constexpr,
                  a0, a1, b0, b1, c0, c1, d0, d1, elem0, byte, mask0, mask1, block, block_mask,
                  LANES: tl.constexpr, BITS: tl.constexpr):
    if NSTATES > 0:
        _store_state(CODEC, VALUE_DTYPE, row, 0, _address(maps, 1, tl.float32), a0, a1, elem0, byte,
                     mask0, mask1, block, block_mask, LANES, BITS)
    if NSTATES > 1:
        _store_state(CODEC, VALUE_DTYPE, row, 1, _address(maps, 3, tl.float32), b0, b1, elem0, byte,
                     mask0, mask1, block, block_mask, LANES, BITS)
    if NSTATES > 2:
        _store_state(CODEC, VALUE_DTYPE, row, 2, _address(maps, 5, tl.float32), c0, c1, elem0, byte,
                     mask0, mask1, block, block_mask, LANES, BITS)
    if NSTATES > 3:
        _store_state(CODEC, VALUE_DTYPE, row, 3, _address(maps, 7, tl.float32), d0, d1, elem0, byte,
                     mask0, mask1, block, block_mask, LANES, BITS)


@triton.jit
def fused_update_kernel(first_program, tensors, scalars, nonfinite, step_snapshot, maps,
                        TILE: tl.constexpr, SLOTS: tl.constexpr, NSTATES: tl.constexpr, CODEC: tl.constexpr,
                        VALUE_DTYPE: tl.constexpr, PARAM_DTYPE: tl.constexpr, GRAD_DTYPE: tl.constexpr,
                        STOCHASTIC: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                        LANES: tl.constexpr, BITS: tl.constexpr, COLUMNS: tl.constexpr,
                        SEARCH_LEVELS: tl.constexpr):
    """``TILE`` is the rule's tile (kernels/tiles/); ``scalars`` its [T, SLOTS] float64 table
    (Rule.scalars per tensor); ``maps`` an int64 table of 8 addresses: per state, its map's
    values and padded midpoints (unquantized codecs: unused)."""
    tensor, start = locate(first_program, SEARCH_LEVELS, ROWS * BLOCK)
    row = tensors + tensor * COLUMNS
    numel = tl.load(row + 4)
    flagged = tl.load(nonfinite + tensor)  # 1: the gradient holds NaN/Inf
    old_step = tl.load(step_snapshot + tensor)
    step = old_step.to(tl.float64) + 1.0
    # A flagged tensor gets all-false masks (its buffers stay untouched).
    live_numel = tl.where(flagged == 0, numel, 0)

    rows = tl.arange(0, ROWS)
    block = start // BLOCK + rows
    elem0 = start + rows[:, None] * BLOCK + tl.arange(0, BLOCK // LANES)[None, :] * LANES
    elem1 = elem0 + 1
    byte = elem0 // 2
    mask0 = elem0 < live_numel
    mask1 = elem1 < live_numel
    block_mask = block * BLOCK < live_numel

    param_ptr = _address(row, 0, PARAM_DTYPE)
    grad_ptr = _address(row, 1, GRAD_DTYPE)
    param0 = tl.load(param_ptr + elem0, mask=mask0, other=0.0).to(tl.float32)
    grad0 = tl.load(grad_ptr + elem0, mask=mask0, other=0.0).to(tl.float32)
    param1 = param0
    grad1 = grad0
    if LANES == 2:
        param1 = tl.load(param_ptr + elem1, mask=mask1, other=0.0).to(tl.float32)
        grad1 = tl.load(grad_ptr + elem1, mask=mask1, other=0.0).to(tl.float32)

    zero = tl.zeros(param0.shape, tl.float32)
    a0, a1, b0, b1, c0, c1, d0, d1 = _load_states(CODEC, VALUE_DTYPE, row, maps, NSTATES, elem0, elem1, byte,
                                                  mask0, block, block_mask, LANES, zero)
    own = scalars + tensor * SLOTS
    param0, a0, b0, c0, d0 = TILE(param0, grad0, a0, b0, c0, d0, own, NSTATES)
    if LANES == 2:
        param1, a1, b1, c1, d1 = TILE(param1, grad1, a1, b1, c1, d1, own, NSTATES)

    seed = tl.load(row + 5)
    salt = tl.load(row + 6)
    _store_param(row, elem0, mask0, param0, step, seed, salt, PARAM_DTYPE, STOCHASTIC)
    if LANES == 2:
        _store_param(row, elem1, mask1, param1, step, seed, salt, PARAM_DTYPE, STOCHASTIC)
    _store_states(CODEC, VALUE_DTYPE, row, maps, NSTATES, a0, a1, b0, b1, c0, c1, d0, d1, elem0, byte, mask0, mask1,
                  block, block_mask, LANES, BITS)

    # Bookkeeping by the tensor's first program; the others read the snapshot, not the counter.
    first_program = start == 0
    tl.store(_address(row, 2, tl.float32), tl.where(flagged == 0, step.to(tl.float32), old_step),
             mask=first_program)
    skips_ptr = _address(row, 3, tl.int64)
    tl.store(skips_ptr, tl.load(skips_ptr) + flagged.to(tl.int64), mask=first_program)
