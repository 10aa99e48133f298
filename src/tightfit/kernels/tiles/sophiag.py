"""SophiaG tile (rules/sophia.py: sophiag_scalars, sophiag_update); the Hessian EMA is only read."""

import triton
import triton.language as tl

from ...rules.sophia import HESSIAN_FLOOR as _FLOOR
from .slots import coefficient, sign

HESSIAN_FLOOR: tl.constexpr = tl.constexpr(_FLOOR)


@triton.jit
def update(param, grad, exp_avg, hessian, s2, s3, scalars, NSTATES: tl.constexpr):
    """Scalars: 0 1−η·λ, 1 β₁, 2 1−β₁, 3 ρ·bs, 4 η, 5 maximize."""
    grad = tl.where(coefficient(scalars, 5) != 0.0, -grad, grad)
    param = param * coefficient(scalars, 0)
    exp_avg = exp_avg * coefficient(scalars, 1) + coefficient(scalars, 2) * grad
    ratio = tl.div_rn(tl.abs(exp_avg), hessian * coefficient(scalars, 3) + HESSIAN_FLOOR)
    ratio = tl.where(ratio > 1.0, 1.0, ratio)  # clamp(max=1); NaN stays NaN
    param = param - (coefficient(scalars, 4) * sign(exp_avg)) * ratio
    return param, exp_avg, hessian, s2, s3
