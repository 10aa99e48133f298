"""Kernels of the factored rules -- Adafactor (torch and transformers conventions) and
CAME -- for many tensors per launch (triton 3.6 language).

A factored rule reduces across its tensor twice before any element can be updated: the
row and column means of g² (the factored second moment) and RMS(U) of the whole update
(clipping); CAME reduces once more (row/column means of its instability). So a step is
a few launches over all tensors of a bucket, each a single pass, with every reduction
left on the device in a per-tensor fp32 scratch (atomic adds), and no host sync:

    finite check  (fused_kernels.finite_check_kernel: flag + step snapshot)
    stats(G²)     row/col sums of S = g² (+ε₁), and Σθ² for RMS(θ)        2-D tiles
    finish(G²)    EMA of the row/col statistics -> state; Σ rows per matrix
    rms           Σ U² of the unclipped update                            flat tiles
    stats(INST)   CAME only: row/col sums of (û − m)² + ε₂                 2-D tiles
    finish(INST)  CAME only: EMA of the instability statistics -> state
    apply         û, momentum through its codec, θ; step / skip counters   codec tiles

Tensor table (int64, COLUMNS per tensor): columns 0-6 as in fused_kernels (param, grad,
step, nonfinite_skips, numel, seed, salt), 7-8 the first moment's codes/values and
absmax (0 without one), then batches B, rows R, columns C (a param of shape
[..., R, C] is B matrices; a vector or scalar is one 1 x numel "matrix"), factored
(0: full second moment, read as the column statistic), and the addresses of the row
and column statistics, of CAME's residual statistics, and of the tensor's scratch.
Scratch layout: [Σθ², ΣU², -, -, row sums B·R, column sums B·C, residual row sums B·R,
residual column sums B·C, Σ new rows per matrix B, Σ new residual rows B].

Statistics are summed in another order than torch's mean (tiles, then atomics), so the
results equal the reference to float32 rounding (about 1e-7 relative), not bit for bit.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import tile_io
from .fused_kernels import _address, _store_param, _store_state, locate
from .tile_io import CODEC_4BIT, CODEC_8BIT

# Rule selectors (FACTORED_RULES in factored_step.py).
RULE_ADAFACTOR: tl.constexpr = tl.constexpr(0)  # torch.optim.Adafactor convention
RULE_ADAFACTOR_HF: tl.constexpr = tl.constexpr(1)  # transformers.Adafactor convention
RULE_CAME: tl.constexpr = tl.constexpr(2)

# What a stats/finish launch reduces.
SOURCE_GRAD_SQ: tl.constexpr = tl.constexpr(0)
SOURCE_INSTABILITY: tl.constexpr = tl.constexpr(1)

COLUMNS: tl.constexpr = tl.constexpr(18)
SCRATCH_HEAD = 4  # Σθ², ΣU², two spare words

# Hyperparameter slots (float64 table), shared meaning across the three rules.
SLOT_LR, SLOT_EPS1, SLOT_EPS2, SLOT_DECAY, SLOT_CLIP, SLOT_WEIGHT_DECAY, SLOT_BETA1, SLOT_MAXIMIZE = range(8)
SLOT_RELATIVE_STEP, SLOT_WARMUP_INIT, SLOT_SCALE_PARAMETER, SLOT_BETA2, SLOT_BETA3 = range(8, 13)
HYPER_SLOTS = 16


# --- where things are ------------------------------------------------------------------

@triton.jit
def _geometry(row):
    """(B, R, C, factored) of a tensor row."""
    return tl.load(row + 9), tl.load(row + 10), tl.load(row + 11), tl.load(row + 12)


@triton.jit
def _scratch_offsets(B, R, C):
    """Offsets (in floats) of row sums, column sums, residual rows/cols and the per-matrix row totals."""
    sq_row = B * 0 + 4
    sq_col = sq_row + B * R
    res_row = sq_col + B * C
    res_col = res_row + B * R
    sq_total = res_col + B * C
    res_total = sq_total + B
    return sq_row, sq_col, res_row, res_col, sq_total, res_total


@triton.jit
def _spread(flag, like):
    """A scalar condition as a block shaped like ``like`` (the interpreter rejects masks
    combining a scalar and a block)."""
    return (like * 0 + flag.to(like.dtype)) != 0


@triton.jit
def _hyper(hyper_ptr, slot: tl.constexpr):
    return tl.load(hyper_ptr + slot)


@triton.jit
def rsqrt_rn(x):
    """1/√x rounded like torch's CPU rsqrt (IEEE sqrt, then IEEE division)."""
    return tl.div_rn(1.0, tl.sqrt_rn(x))


@triton.jit
def real_power_fp64(base, exponent):
    """base ** exponent for a float64 base > 0 and any real exponent (t^τ, t^decay_rate), as
    exp(exponent·log base); kernels/tile_io.py's power_fp64 takes integer exponents only."""
    return tl.exp(exponent * tl.log(base))


# --- per-rule scalars ------------------------------------------------------------------

@triton.jit
def statistic_ema(RULE: tl.constexpr, SOURCE: tl.constexpr, old, mean, hyper_ptr, step):
    """The new statistic from the old one and this step's mean.

    torch convention: torch.lerp(old, mean, t^τ) (torch's two-branch formula);
    transformers/CAME: β·old + (1 − β)·mean with β = 1 − t^decay_rate, β₂ or β₃.
    """
    if RULE == RULE_ADAFACTOR:
        weight = real_power_fp64(step, _hyper(hyper_ptr, 3)).to(tl.float32)
        new = tl.where(weight < 0.5, old + weight * (mean - old), mean - (mean - old) * (1.0 - weight))
    else:
        if RULE == RULE_ADAFACTOR_HF:
            beta = 1.0 - real_power_fp64(step, _hyper(hyper_ptr, 3))
        elif SOURCE == SOURCE_GRAD_SQ:
            beta = _hyper(hyper_ptr, 11)
        else:
            beta = _hyper(hyper_ptr, 12)
        new = old * beta.to(tl.float32) + (1.0 - beta).to(tl.float32) * mean
    return new


@triton.jit
def rms_fp32(sum_of_squares, numel):
    """‖x‖ / √n in float32, as the reference's ``x.norm(2) / math.sqrt(x.numel())``."""
    return tl.div_rn(tl.sqrt_rn(sum_of_squares), tl.sqrt(numel.to(tl.float64)).to(tl.float32))


@triton.jit
def clip_divisor(RULE: tl.constexpr, sum_sq_update, numel, hyper_ptr):
    """max(1, RMS(U)/d): float64 then float32 in the torch convention (Python floats
    there), float32 throughout in the others (tensor ops there)."""
    rms = rms_fp32(sum_sq_update, numel)
    if RULE == RULE_ADAFACTOR:
        divisor = tl.maximum(rms.to(tl.float64) / _hyper(hyper_ptr, 4), 1.0).to(tl.float32)
    else:
        divisor = tl.maximum(tl.div_rn(rms, _hyper(hyper_ptr, 4).to(tl.float32)), 1.0)
    return divisor


@triton.jit
def step_size(RULE: tl.constexpr, sum_sq_param, numel, hyper_ptr, step):
    """αₜ in float64 (rules/adafactor.py): max(ε₂, RMS(θ))·ρₜ, ρₜ per convention (CAME
    steps by lr and does not call this)."""
    lr = _hyper(hyper_ptr, 0)
    inv_sqrt_step = 1.0 / tl.sqrt(step)
    scaled = tl.maximum(_hyper(hyper_ptr, 2), rms_fp32(sum_sq_param, numel).to(tl.float64))
    if RULE == RULE_ADAFACTOR:
        alpha = scaled * tl.minimum(lr, inv_sqrt_step)
    else:
        relative = tl.minimum(tl.where(_hyper(hyper_ptr, 9) != 0.0, 1e-6 * step, 1e-2), inv_sqrt_step)
        rho = tl.where(_hyper(hyper_ptr, 8) != 0.0, relative, lr)
        alpha = tl.where(_hyper(hyper_ptr, 10) != 0.0, scaled * rho, rho)
    return alpha


# --- per-element pieces ----------------------------------------------------------------

@triton.jit
def _position(elem, R, C):
    """(global row b·R + r, global column b·C + c, matrix b) of flat element ``elem``."""
    global_row = elem // C
    batch = global_row // R
    return global_row, batch * C + elem % C, batch


@triton.jit
def factored_rsqrt(RULE: tl.constexpr, row_ptr, col_ptr, total_ptr, global_row, global_col, batch, R,
                   factored, eps1, mask):
    """V̂^-½ per element from the row/col statistics (column statistic = V when not factored).

    torch:  (max(R_i C_j / max(mean R, ε₁), ε₁²))^-½   transformers/CAME: (R_i/mean R)^-½ · C_j^-½
    """
    is_factored = _spread(factored != 0, global_row)
    col = tl.load(col_ptr + global_col, mask=mask, other=1.0)
    row = tl.load(row_ptr + global_row, mask=mask & is_factored, other=1.0)
    # (+ 0·row: block-shaped even where ``batch`` is one scalar for the whole tile)
    row_mean = tl.div_rn(tl.load(total_ptr + batch + 0 * global_row, mask=mask & is_factored, other=1.0),
                         R.to(tl.float32))
    if RULE == RULE_ADAFACTOR:
        eps1_32 = eps1.to(tl.float32)
        estimate = tl.where(is_factored, tl.div_rn(row * col, tl.maximum(row_mean, eps1_32)), col)
        result = rsqrt_rn(tl.maximum(estimate, (eps1 * eps1).to(tl.float32)))
    else:
        row_factor = tl.where(is_factored, rsqrt_rn(tl.div_rn(row, row_mean)), 1.0)
        result = tl.where(is_factored, row_factor * rsqrt_rn(col), rsqrt_rn(col))
    return result


@triton.jit
def gather_state(CODEC: tl.constexpr, VALUE_DTYPE: tl.constexpr, row, map_values, elem, mask,
                 BLOCK: tl.constexpr):
    """Decoded first moment at arbitrary elements (2-D tiles do not align with codec blocks)."""
    if CODEC == CODEC_8BIT or CODEC == CODEC_4BIT:
        absmax = tl.load(_address(row, 8, tl.float32) + elem // BLOCK, mask=mask, other=0.0)
        codes = _address(row, 7, tl.uint8)
        if CODEC == CODEC_8BIT:
            code = tl.load(codes + elem, mask=mask, other=0)
        else:
            packed = tl.load(codes + elem // 2, mask=mask, other=0).to(tl.int32)
            code = (packed >> (4 * (elem % 2)).to(tl.int32)) & 0xF
        state = tile_io.decode_code(map_values, code, absmax)
    else:
        state = tile_io.decode_values(_address(row, 7, VALUE_DTYPE), elem, mask)
    return tl.where(mask, state, 0.0)


@triton.jit
def clipped_update(RULE: tl.constexpr, grad, precondition, divisor):
    """Û = U / max(1, RMS(U)/d), U = V̂^-½ · g."""
    return tl.div_rn(precondition * grad, divisor)


@triton.jit
def came_moment(update, exp_avg, hyper_ptr):
    """m ← β₁m + (1 − β₁)û (CAME's first moment of the clipped update)."""
    beta1 = _hyper(hyper_ptr, 6)
    return exp_avg * beta1.to(tl.float32) + (1.0 - beta1).to(tl.float32) * update


# --- launches --------------------------------------------------------------------------

@triton.jit
def factored_stats_kernel(first_program, tensors, hyper_ptr, nonfinite, step_snapshot, map_values,
                          RULE: tl.constexpr, SOURCE: tl.constexpr, CODEC: tl.constexpr, VALUE_DTYPE: tl.constexpr,
                          PARAM_DTYPE: tl.constexpr, GRAD_DTYPE: tl.constexpr, TILE_ROWS: tl.constexpr,
                          TILE_COLS: tl.constexpr, BLOCK: tl.constexpr, SEARCH_LEVELS: tl.constexpr):
    """Row and column sums of S = g² + ε₁ (SOURCE_GRAD_SQ; ε₁ only outside the torch
    convention) or of CAME's (û − m)² + ε₂ (SOURCE_INSTABILITY, matrices only) over a
    TILE_ROWS x TILE_COLS tile of one matrix, added into the scratch sums."""
    tensor, tile = locate(first_program, SEARCH_LEVELS, 1)
    row = tensors + tensor * COLUMNS
    B, R, C, factored = _geometry(row)
    numel = tl.load(row + 4)
    scratch = _address(row, 17, tl.float32)
    sq_row, sq_col, res_row, res_col, sq_total, res_total = _scratch_offsets(B, R, C)
    tiles_c = tl.cdiv(C, TILE_COLS)
    tiles_per_matrix = tl.cdiv(R, TILE_ROWS) * tiles_c
    batch = tile // tiles_per_matrix
    rows = (tile % tiles_per_matrix) // tiles_c * TILE_ROWS + tl.arange(0, TILE_ROWS)
    cols = (tile % tiles_c) * TILE_COLS + tl.arange(0, TILE_COLS)
    live = tl.load(nonfinite + tensor) == 0
    if SOURCE == SOURCE_INSTABILITY:
        live = live & (factored != 0)
    row_mask = _spread(live, rows) & (rows < R)
    col_mask = _spread(live, cols) & (cols < C)
    elem = batch * R * C + rows[:, None] * C + cols[None, :]
    mask = row_mask[:, None] & col_mask[None, :] & (elem < numel)
    grad = tl.load(_address(row, 1, GRAD_DTYPE) + elem, mask=mask, other=0.0).to(tl.float32)

    if SOURCE == SOURCE_GRAD_SQ:
        eps_add = 0.0
        if RULE != RULE_ADAFACTOR:
            eps_add = _hyper(hyper_ptr, 1).to(tl.float32)
        value = grad * grad + eps_add
        param = tl.load(_address(row, 0, PARAM_DTYPE) + elem, mask=mask, other=0.0).to(tl.float32)
        tl.atomic_add(scratch, tl.sum(tl.sum(param * param, axis=1), axis=0), mask=live)
        row_sums, col_sums = sq_row, sq_col
    else:
        global_row = batch * R + rows[:, None]
        global_col = batch * C + cols[None, :]
        precondition = factored_rsqrt(RULE, _address(row, 13, tl.float32), _address(row, 14, tl.float32),
                                      scratch + sq_total, global_row, global_col, batch, R, factored,
                                      _hyper(hyper_ptr, 1), mask)
        divisor = clip_divisor(RULE, tl.load(scratch + 1), numel, hyper_ptr)
        update = clipped_update(RULE, grad, precondition, divisor)
        exp_avg = came_moment(update, gather_state(CODEC, VALUE_DTYPE, row, map_values, elem, mask, BLOCK),
                              hyper_ptr)
        value = (update - exp_avg) * (update - exp_avg) + _hyper(hyper_ptr, 2).to(tl.float32)
        row_sums, col_sums = res_row, res_col
    value = tl.where(mask, value, 0.0)
    tl.atomic_add(scratch + row_sums + batch * R + rows, tl.sum(value, axis=1), mask=row_mask)
    tl.atomic_add(scratch + col_sums + batch * C + cols, tl.sum(value, axis=0), mask=col_mask)


@triton.jit
def factored_finish_kernel(first_program, tensors, hyper_ptr, nonfinite, step_snapshot, RULE: tl.constexpr,
                           SOURCE: tl.constexpr, SPAN: tl.constexpr, SEARCH_LEVELS: tl.constexpr):
    """New statistics = EMA(old, sums / count) for the B·R row and B·C column entries of
    a tensor (only the B·C "column" entries, i.e. the full V, when not factored); the
    new rows are also summed per matrix, for mean(R)."""
    tensor, start = locate(first_program, SEARCH_LEVELS, SPAN)
    row = tensors + tensor * COLUMNS
    B, R, C, factored = _geometry(row)
    scratch = _address(row, 17, tl.float32)
    sq_row, sq_col, res_row, res_col, sq_total, res_total = _scratch_offsets(B, R, C)
    if SOURCE == SOURCE_GRAD_SQ:
        row_sums, col_sums, totals = sq_row, sq_col, sq_total
        row_state, col_state = _address(row, 13, tl.float32), _address(row, 14, tl.float32)
    else:
        row_sums, col_sums, totals = res_row, res_col, res_total
        row_state, col_state = _address(row, 15, tl.float32), _address(row, 16, tl.float32)
    live = tl.load(nonfinite + tensor) == 0
    if SOURCE == SOURCE_INSTABILITY:
        live = live & (factored != 0)
    row_count = tl.where(factored != 0, B * R, 0)
    k = start + tl.arange(0, SPAN)
    step = tl.load(step_snapshot + tensor).to(tl.float64) + 1.0

    row_mask = _spread(live, k) & (k < row_count)
    old_rows = tl.load(row_state + k, mask=row_mask, other=0.0)
    mean_rows = tl.div_rn(tl.load(scratch + row_sums + k, mask=row_mask, other=0.0), C.to(tl.float32))
    new_rows = statistic_ema(RULE, SOURCE, old_rows, mean_rows, hyper_ptr, step)
    tl.store(row_state + k, new_rows, mask=row_mask)
    # Σ new rows per matrix: one atomic for this span's first matrix, per-element for the rest.
    matrix = k // R
    first_matrix = start // R
    same = row_mask & (matrix == first_matrix)
    tl.atomic_add(scratch + totals + first_matrix, tl.sum(tl.where(same, new_rows, 0.0), axis=0),
                  mask=live & (start < row_count))
    tl.atomic_add(scratch + totals + matrix, new_rows, mask=row_mask & (matrix != first_matrix))

    j = k - row_count
    col_mask = _spread(live, k) & (k >= row_count) & (j < B * C)
    old_cols = tl.load(col_state + j, mask=col_mask, other=0.0)
    mean_cols = tl.div_rn(tl.load(scratch + col_sums + j, mask=col_mask, other=0.0), R.to(tl.float32))
    tl.store(col_state + j, statistic_ema(RULE, SOURCE, old_cols, mean_cols, hyper_ptr, step), mask=col_mask)


@triton.jit
def factored_rms_kernel(first_program, tensors, hyper_ptr, nonfinite, RULE: tl.constexpr,
                        GRAD_DTYPE: tl.constexpr, SPAN: tl.constexpr, SEARCH_LEVELS: tl.constexpr):
    """Σ U² of the unclipped update U = V̂^-½·g (for RMS(U) clipping)."""
    tensor, start = locate(first_program, SEARCH_LEVELS, SPAN)
    row = tensors + tensor * COLUMNS
    B, R, C, factored = _geometry(row)
    numel = tl.load(row + 4)
    scratch = _address(row, 17, tl.float32)
    sq_row, sq_col, res_row, res_col, sq_total, res_total = _scratch_offsets(B, R, C)
    live = tl.load(nonfinite + tensor) == 0
    elem = start + tl.arange(0, SPAN)
    mask = _spread(live, elem) & (elem < numel)
    grad = tl.load(_address(row, 1, GRAD_DTYPE) + elem, mask=mask, other=0.0).to(tl.float32)
    global_row, global_col, batch = _position(elem, R, C)
    precondition = factored_rsqrt(RULE, _address(row, 13, tl.float32), _address(row, 14, tl.float32),
                                  scratch + sq_total, global_row, global_col, batch, R, factored,
                                  _hyper(hyper_ptr, 1), mask)
    update = tl.where(mask, precondition * grad, 0.0)
    tl.atomic_add(scratch + 1, tl.sum(update * update, axis=0), mask=live)


@triton.jit
def _lane_step(RULE: tl.constexpr, HAS_MOMENTUM: tl.constexpr, row, scratch, hyper_ptr, elem, mask, param, grad,
               exp_avg, B, R, C, factored, divisor, alpha):
    """(new param, new first moment) of one lane of an apply tile (rules/adafactor.py, came.py)."""
    sq_row, sq_col, res_row, res_col, sq_total, res_total = _scratch_offsets(B, R, C)
    if RULE == RULE_ADAFACTOR:
        grad = tl.where(_hyper(hyper_ptr, 7) != 0.0, -grad, grad)
    global_row, global_col, batch = _position(elem, R, C)
    eps1 = _hyper(hyper_ptr, 1)
    precondition = factored_rsqrt(RULE, _address(row, 13, tl.float32), _address(row, 14, tl.float32),
                                  scratch + sq_total, global_row, global_col, batch, R, factored, eps1, mask)
    update = clipped_update(RULE, grad, precondition, divisor)
    lr = _hyper(hyper_ptr, 0)
    weight_decay = _hyper(hyper_ptr, 5)
    if RULE == RULE_CAME:
        exp_avg = came_moment(update, exp_avg, hyper_ptr)
        confidence = factored_rsqrt(RULE, _address(row, 15, tl.float32), _address(row, 16, tl.float32),
                                    scratch + res_total, global_row, global_col, batch, R, factored, eps1,
                                    mask & _spread(factored != 0, elem))
        direction = tl.where(factored != 0, exp_avg * confidence, exp_avg)
        param = param - (weight_decay * lr).to(tl.float32) * param
        param = param - lr.to(tl.float32) * direction
    else:
        update = alpha.to(tl.float32) * update
        if HAS_MOMENTUM:
            beta1 = _hyper(hyper_ptr, 6)
            exp_avg = exp_avg * beta1.to(tl.float32) + (1.0 - beta1).to(tl.float32) * update
            update = exp_avg
        if RULE == RULE_ADAFACTOR:
            param = param * (1.0 - lr * weight_decay).to(tl.float32)
        else:
            param = param - (weight_decay * alpha).to(tl.float32) * param
        param = param - update
    return param, exp_avg


@triton.jit
def _apply_lane(RULE: tl.constexpr, HAS_MOMENTUM: tl.constexpr, CODEC: tl.constexpr, VALUE_DTYPE: tl.constexpr,
                PARAM_DTYPE: tl.constexpr, GRAD_DTYPE: tl.constexpr, STOCHASTIC: tl.constexpr, BLOCK: tl.constexpr,
                row, scratch, hyper_ptr, map_values, elem, mask, B, R, C, factored, divisor, alpha, step):
    """Load, step and store the param of one lane; returns the lane's new first moment."""
    param = tl.load(_address(row, 0, PARAM_DTYPE) + elem, mask=mask, other=0.0).to(tl.float32)
    grad = tl.load(_address(row, 1, GRAD_DTYPE) + elem, mask=mask, other=0.0).to(tl.float32)
    exp_avg = tl.zeros(param.shape, tl.float32)
    if HAS_MOMENTUM:
        exp_avg = gather_state(CODEC, VALUE_DTYPE, row, map_values, elem, mask, BLOCK)
    param, exp_avg = _lane_step(RULE, HAS_MOMENTUM, row, scratch, hyper_ptr, elem, mask, param, grad, exp_avg,
                                B, R, C, factored, divisor, alpha)
    _store_param(row, elem, mask, param, step, tl.load(row + 5), tl.load(row + 6), PARAM_DTYPE, STOCHASTIC)
    return tl.where(mask, exp_avg, 0.0)


@triton.jit
def factored_apply_kernel(first_program, tensors, hyper_ptr, nonfinite, step_snapshot, map_values, midpoints,
                          RULE: tl.constexpr, HAS_MOMENTUM: tl.constexpr, CODEC: tl.constexpr,
                          VALUE_DTYPE: tl.constexpr, PARAM_DTYPE: tl.constexpr, GRAD_DTYPE: tl.constexpr,
                          STOCHASTIC: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr, LANES: tl.constexpr,
                          BITS: tl.constexpr, SEARCH_LEVELS: tl.constexpr):
    """θ and the first moment (through its codec) over ROWS codec blocks, then the counters.

    The tile is laid out as in fused_update_kernel (codec blocks as rows, two lanes for
    packed 4-bit codes) so each block's absmax and codes are written by one program."""
    tensor, start = locate(first_program, SEARCH_LEVELS, ROWS * BLOCK)
    row = tensors + tensor * COLUMNS
    B, R, C, factored = _geometry(row)
    numel = tl.load(row + 4)
    scratch = _address(row, 17, tl.float32)
    flagged = tl.load(nonfinite + tensor)
    old_step = tl.load(step_snapshot + tensor)
    step = old_step.to(tl.float64) + 1.0
    live_numel = tl.where(flagged == 0, numel, 0)
    divisor = clip_divisor(RULE, tl.load(scratch + 1), numel, hyper_ptr)
    alpha = _hyper(hyper_ptr, 0)  # unused by CAME, which steps by lr
    if RULE != RULE_CAME:
        alpha = step_size(RULE, tl.load(scratch), numel, hyper_ptr, step)

    rows = tl.arange(0, ROWS)
    block = start // BLOCK + rows
    elem0 = start + rows[:, None] * BLOCK + tl.arange(0, BLOCK // LANES)[None, :] * LANES
    elem1 = elem0 + 1
    mask0 = elem0 < live_numel
    mask1 = elem1 < live_numel
    block_mask = block * BLOCK < live_numel

    exp_avg0 = _apply_lane(RULE, HAS_MOMENTUM, CODEC, VALUE_DTYPE, PARAM_DTYPE, GRAD_DTYPE, STOCHASTIC, BLOCK, row,
                           scratch, hyper_ptr, map_values, elem0, mask0, B, R, C, factored, divisor, alpha, step)
    exp_avg1 = exp_avg0
    if LANES == 2:
        exp_avg1 = _apply_lane(RULE, HAS_MOMENTUM, CODEC, VALUE_DTYPE, PARAM_DTYPE, GRAD_DTYPE, STOCHASTIC, BLOCK,
                               row, scratch, hyper_ptr, map_values, elem1, mask1, B, R, C, factored, divisor, alpha,
                               step)
    if HAS_MOMENTUM:
        _store_state(CODEC, VALUE_DTYPE, row, 0, midpoints, exp_avg0, exp_avg1, elem0, elem0 // 2, mask0, mask1, block, block_mask, LANES, BITS)

    first = start == 0
    tl.store(_address(row, 2, tl.float32), tl.where(flagged == 0, step.to(tl.float32), old_step), mask=first)
    skips_ptr = _address(row, 3, tl.int64)
    tl.store(skips_ptr, tl.load(skips_ptr) + flagged.to(tl.int64), mask=first)
