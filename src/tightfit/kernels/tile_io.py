"""Small @triton.jit pieces the fused kernels are built from: codecs and rounding.

Every piece works on a tile of float32 values; the fused kernel (fused_kernels.py) picks
codec pieces with ``tl.constexpr`` selectors and takes the rule's tile (kernels/tiles/)
as a compile-time argument. Written in the triton 3.6 language. Division uses the IEEE
round-to-nearest form (``div_rn``) so the kernels round like the PyTorch reference.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Codec selectors (see KERNEL_CODECS in fused_step.py).
CODEC_FP32: tl.constexpr = tl.constexpr(0)
CODEC_BF16: tl.constexpr = tl.constexpr(1)
CODEC_8BIT: tl.constexpr = tl.constexpr(2)
CODEC_4BIT: tl.constexpr = tl.constexpr(3)


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
