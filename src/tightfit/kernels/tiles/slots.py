"""Reading a rule's scalars inside a Triton tile (see tiles/__init__.py)."""

import triton
import triton.language as tl


@triton.jit
def slot(scalars, index: tl.constexpr):
    """Scalar ``index`` of this tensor's row, float64."""
    return tl.load(scalars + index)


@triton.jit
def coefficient(scalars, index: tl.constexpr):
    """Scalar ``index`` rounded once to float32 (what PyTorch does with a Python float)."""
    return tl.load(scalars + index).to(tl.float32)


@triton.jit
def sign(x):
    """-1, 0 or 1 (NaN: 0, as the comparisons are false; torch.sign gives NaN, which the
    kernels never see: a gradient holding NaN skips the tensor)."""
    return tl.where(x > 0.0, 1.0, tl.where(x < 0.0, -1.0, 0.0))


@triton.jit
def clamp_moment(moment, root, bound):
    """moment held to ±bound·root (rules/adamw.py clamp_moment); bound inf: unchanged, as
    inf·0 = NaN compares false."""
    limit = root * bound
    return tl.where(tl.abs(moment) > limit, tl.where(moment < 0.0, -limit, limit), moment)
