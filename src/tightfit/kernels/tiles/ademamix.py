"""AdEMAMix tile (rules/ademamix.py: ademamix_scalars, ademamix_apply)."""

import triton
import triton.language as tl

from .slots import clamp_moment, coefficient


@triton.jit
def update(param, grad, exp_avg, exp_avg_slow, exp_avg_sq, s3, scalars, NSTATES: tl.constexpr):
    """Scalars: 0 β₁, 1 1−β₁, 2 β₂, 3 1−β₂, 4 β₃,ₜ, 5 1−β₃,ₜ, 6 αₜ, 7 1−η·λ, 8 1−β₁ᵗ,
    9 √(1−β₂ᵗ), 10 ε, 11 η, 12 κ of m₁, 13 κ of m₂ (inf: no clamp)."""
    exp_avg = exp_avg * coefficient(scalars, 0) + coefficient(scalars, 1) * grad
    exp_avg_slow = exp_avg_slow * coefficient(scalars, 4) + coefficient(scalars, 5) * grad
    exp_avg_sq = exp_avg_sq * coefficient(scalars, 2) + coefficient(scalars, 3) * (grad * grad)
    root = tl.sqrt_rn(exp_avg_sq)
    fast = clamp_moment(exp_avg, root, coefficient(scalars, 12))
    slow = clamp_moment(exp_avg_slow, root, coefficient(scalars, 13))
    param = param * coefficient(scalars, 7)
    mixed = tl.div_rn(fast, coefficient(scalars, 8)) + coefficient(scalars, 6) * slow
    denom = tl.div_rn(root, coefficient(scalars, 9)) + coefficient(scalars, 10)
    param = param - coefficient(scalars, 11) * tl.div_rn(mixed, denom)
    return param, exp_avg, exp_avg_slow, exp_avg_sq, s3
