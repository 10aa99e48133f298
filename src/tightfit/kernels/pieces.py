"""Small @triton.jit pieces the fused step is built from: codecs, rules, rounding.

Every piece works on a tile of float32 values; the fused kernel (fused_kernels.py) picks
pieces with ``tl.constexpr`` selectors. Written in the triton 3.6 language. Division
and square root use the IEEE round-to-nearest forms (``div_rn``, ``sqrt_rn``) so the
kernels round like the PyTorch reference; hyperparameters arrive as float64 and are
combined in float64, then rounded once to float32 -- what the reference does with
Python floats.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..rules.adamw import MOMENT_BOUND_SLACK as _SLACK

MOMENT_BOUND_SLACK: tl.constexpr = tl.constexpr(_SLACK)

# Codec selectors (see KERNEL_CODECS in fused_step.py).
CODEC_FP32: tl.constexpr = tl.constexpr(0)
CODEC_BF16: tl.constexpr = tl.constexpr(1)
CODEC_8BIT: tl.constexpr = tl.constexpr(2)
CODEC_4BIT: tl.constexpr = tl.constexpr(3)

# Rule selectors (see KERNEL_RULES in fused_step.py).
RULE_ADAM: tl.constexpr = tl.constexpr(0)
RULE_LION: tl.constexpr = tl.constexpr(1)
RULE_SGD: tl.constexpr = tl.constexpr(2)
RULE_SOPHIAG: tl.constexpr = tl.constexpr(3)


# --- scalars ------------------------------------------------------------------------

@triton.jit
def power_fp64(base, exponent):
    """base ** exponent for a float64 base and a non-negative integer exponent < 2^31.

    Binary exponentiation with multiplies only: exact enough for bias corrections and
    free of the fp64 transcendental functions some backends lack.
    """
    result = base * 0.0 + 1.0
    square = base
    remaining = exponent
    for _ in tl.static_range(31):
        result = tl.where((remaining & 1) != 0, result * square, result)
        square = square * square
        remaining = remaining >> 1
    return result


@triton.jit
def hyper(hyper_ptr, slot: tl.constexpr):
    """Hyperparameter ``slot`` of the launch's float64 table."""
    return tl.load(hyper_ptr + slot)


# --- codecs -------------------------------------------------------------------------

@triton.jit
def decode_values(values_ptr, elem, mask):
    """Unquantized state (fp32 or bf16 buffer, same layout as the parameter)."""
    return tl.load(values_ptr + elem, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def decode_code(map_values_ptr, code, absmax_rows):
    """map[code] * absmax of the code's block (absmax_rows: [rows, 1])."""
    return tl.load(map_values_ptr + code.to(tl.int32)) * absmax_rows


@triton.jit
def block_absmax(x0, mask0, x1, mask1, TWO_LANES: tl.constexpr):
    """max |x| per row of the tile (both lanes for packed codecs), masked lanes excluded."""
    amax = tl.max(tl.where(mask0, tl.abs(x0), 0.0), axis=1)
    if TWO_LANES:
        amax = tl.maximum(amax, tl.max(tl.where(mask1, tl.abs(x1), 0.0), axis=1))
    return amax


@triton.jit
def nearest_code(x, absmax_rows, midpoints_ptr, BITS: tl.constexpr):
    """Index of the map entry nearest to x / absmax (ties to the lower entry).

    Branchless binary search counting midpoints < x; ``midpoints_ptr`` holds the
    2^BITS - 1 midpoints of the sorted map padded with +inf to 2^BITS entries.
    """
    scale = tl.where(absmax_rows > 0.0, absmax_rows, 1.0)
    normalized = tl.div_rn(x, scale)
    position = tl.zeros(x.shape, dtype=tl.int32)
    for level in tl.static_range(BITS):
        # stride 2^(BITS-1-level); inlined: a named constexpr cannot be reassigned per iteration
        midpoint = tl.load(midpoints_ptr + position + ((1 << (BITS - 1 - level)) - 1))
        position = tl.where(midpoint < normalized, position + (1 << (BITS - 1 - level)), position)
    return position


# --- rules --------------------------------------------------------------------------
# Each returns (param, state0, state1) as float32 tiles; unused states pass through.
# ``step`` is the float64 step count this update makes (1 at the first update).

@triton.jit
def adam_moment_bound(beta1, beta2, step_int, step):
    """rules.adamw.adam_moment_bound in float64: κₜ with |m| ≤ κₜ√v for exact moments."""
    gamma = beta1 * beta1 / tl.where(beta2 == 0.0, 1.0, beta2)
    series = tl.where(gamma == 1.0, step, (1.0 - power_fp64(gamma, step_int)) / (1.0 - gamma))
    bound = (1.0 - beta1) * tl.sqrt(series / (1.0 - beta2)) * MOMENT_BOUND_SLACK
    return tl.where(beta2 == 0.0, float("inf"), bound)


@triton.jit
def adam_update(param, grad, exp_avg, exp_avg_sq, hyper_ptr, step):
    """Adam/AdamW (rules/adamw.py). Slots: 0 lr, 1 beta1, 2 beta2, 3 eps,
    4 decoupled weight decay, 5 coupled (L2) weight decay, 6 maximize (0/1),
    7 lossy states (0/1: hold m to Adam's bound)."""
    lr = hyper(hyper_ptr, 0)
    beta1 = hyper(hyper_ptr, 1)
    beta2 = hyper(hyper_ptr, 2)
    step_int = step.to(tl.int32)
    grad = tl.where(hyper(hyper_ptr, 6) != 0.0, -grad, grad)
    grad = grad + hyper(hyper_ptr, 5).to(tl.float32) * param
    exp_avg = exp_avg + (1.0 - beta1).to(tl.float32) * (grad - exp_avg)
    exp_avg_sq = exp_avg_sq * beta2.to(tl.float32) + (1.0 - beta2).to(tl.float32) * (grad * grad)
    bias1 = 1.0 - power_fp64(beta1, step_int)
    bias2_sqrt = tl.sqrt(1.0 - power_fp64(beta2, step_int))  # float64: IEEE sqrt
    param = param * (1.0 - lr * hyper(hyper_ptr, 4)).to(tl.float32)
    root = tl.sqrt_rn(exp_avg_sq)
    # m held to ±κₜ√v (rules/adamw.py clamp_moment); κₜ inf: inf*0 = NaN compares false
    bound = tl.where(hyper(hyper_ptr, 7) != 0.0, adam_moment_bound(beta1, beta2, step_int, step), float("inf"))
    limit = root * bound.to(tl.float32)
    held = tl.where(tl.abs(exp_avg) > limit, tl.where(exp_avg < 0.0, -limit, limit), exp_avg)
    denom = tl.div_rn(root, bias2_sqrt.to(tl.float32)) + hyper(hyper_ptr, 3).to(tl.float32)
    param = param - (lr / bias1).to(tl.float32) * tl.div_rn(held, denom)
    return param, exp_avg, exp_avg_sq


@triton.jit
def lion_update(param, grad, exp_avg, unused, hyper_ptr, step):
    """Lion (rules/lion.py). Slots: 0 lr, 1 beta1, 2 beta2, 4 weight decay."""
    lr = hyper(hyper_ptr, 0)
    beta1 = hyper(hyper_ptr, 1)
    beta2 = hyper(hyper_ptr, 2)
    mixed = exp_avg * beta1.to(tl.float32) + (1.0 - beta1).to(tl.float32) * grad
    direction = tl.where(mixed > 0.0, 1.0, tl.where(mixed < 0.0, -1.0, 0.0))
    param = param * (1.0 - lr * hyper(hyper_ptr, 4)).to(tl.float32) - lr.to(tl.float32) * direction
    exp_avg = exp_avg * beta2.to(tl.float32) + (1.0 - beta2).to(tl.float32) * grad
    return param, exp_avg, unused


@triton.jit
def sgd_update(param, grad, momentum_buffer, unused, hyper_ptr, step, HAS_MOMENTUM: tl.constexpr):
    """SGD (rules/sgd.py). Slots: 0 lr, 1 momentum, 2 dampening, 5 weight decay (L2),
    6 maximize (0/1), 7 nesterov (0/1)."""
    lr = hyper(hyper_ptr, 0)
    momentum = hyper(hyper_ptr, 1)
    grad = tl.where(hyper(hyper_ptr, 6) != 0.0, -grad, grad)
    grad = grad + hyper(hyper_ptr, 5).to(tl.float32) * param
    direction = grad
    if HAS_MOMENTUM:
        decayed = momentum_buffer * momentum.to(tl.float32) + (1.0 - hyper(hyper_ptr, 2)).to(tl.float32) * grad
        momentum_buffer = tl.where(step == 1.0, grad, decayed)
        nesterov_direction = grad + momentum.to(tl.float32) * momentum_buffer
        direction = tl.where(hyper(hyper_ptr, 7) != 0.0, nesterov_direction, momentum_buffer)
    param = param - lr.to(tl.float32) * direction
    return param, momentum_buffer, unused


@triton.jit
def sophiag_update(param, grad, exp_avg, hessian, hyper_ptr, step):
    """SophiaG (rules/sophia.py); the Hessian EMA is only read. Slots: 0 lr, 1 beta1,
    3 rho*bs, 4 weight decay, 6 maximize (0/1)."""
    lr = hyper(hyper_ptr, 0)
    beta1 = hyper(hyper_ptr, 1)
    grad = tl.where(hyper(hyper_ptr, 6) != 0.0, -grad, grad)
    param = param * (1.0 - lr * hyper(hyper_ptr, 4)).to(tl.float32)
    exp_avg = exp_avg * beta1.to(tl.float32) + (1.0 - beta1).to(tl.float32) * grad
    ratio = tl.div_rn(tl.abs(exp_avg), hessian * hyper(hyper_ptr, 3).to(tl.float32) + 1e-15)
    ratio = tl.where(ratio > 1.0, 1.0, ratio)  # clamp(max=1); NaN stays NaN
    direction = tl.where(exp_avg > 0.0, 1.0, tl.where(exp_avg < 0.0, -1.0, 0.0))
    param = param - (lr.to(tl.float32) * direction) * ratio
    return param, exp_avg, hessian


@triton.jit
def rule_update(RULE: tl.constexpr, NSTATES: tl.constexpr, param, grad, state0, state1, hyper_ptr, step):
    if RULE == RULE_ADAM:
        param, state0, state1 = adam_update(param, grad, state0, state1, hyper_ptr, step)
    elif RULE == RULE_LION:
        param, state0, state1 = lion_update(param, grad, state0, state1, hyper_ptr, step)
    elif RULE == RULE_SOPHIAG:
        param, state0, state1 = sophiag_update(param, grad, state0, state1, hyper_ptr, step)
    else:
        param, state0, state1 = sgd_update(param, grad, state0, state1, hyper_ptr, step, NSTATES > 0)
    return param, state0, state1


# --- parameter store ----------------------------------------------------------------

@triton.jit
def philox_word0(c0, c1, k0, k1):
    """First word of Philox4x32-10 for counter (c0, c1, 0, 0) and key (k0, k1), uint32.

    Written out (not tl.randint) so every triton version draws the same numbers as
    rounding.philox4x32.
    """
    c2 = c0 * 0
    c3 = c0 * 0
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0


@triton.jit
def bf16_bits(value, noise):
    """int16 bit pattern of bfloat16(value) after adding ``noise`` (< 2^16) to the float32
    bits and truncating; NaN becomes torch's quiet NaN 0x7FC0 (adding could carry into
    the sign)."""
    bits = value.to(tl.uint32, bitcast=True)
    rounded = tl.where(value != value, 0x7FC0, (bits + noise) >> 16)
    return rounded.to(tl.uint16).to(tl.int16, bitcast=True)


@triton.jit
def nearest_bf16_bits(value):
    """Round to nearest even, written out: the interpreter's float32 -> bfloat16 cast
    truncates (triton 3.9), a GPU's rounds to nearest; this is the same on both."""
    bits = value.to(tl.uint32, bitcast=True)
    return bf16_bits(value, 0x7FFF + ((bits >> 16) & 1))


@triton.jit
def stochastic_bf16_bits(value, elem, step, seed, salt):
    """int16 bit pattern of ``value`` rounded stochastically to bfloat16 (rounding.py)."""
    counter = elem.to(tl.uint32)
    step_word = (counter * 0) + step.to(tl.uint32)
    noise = philox_word0(counter, step_word, seed.to(tl.uint32), salt.to(tl.uint32)) & 0xFFFF
    return bf16_bits(value, noise)
