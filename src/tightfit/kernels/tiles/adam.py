"""Adam / AdamW tile (rules/adamw.py: adam_scalars, adam_apply)."""

import triton
import triton.language as tl

from .slots import clamp_moment, coefficient


@triton.jit
def update(param, grad, exp_avg, exp_avg_sq, s2, s3, scalars,
           NSTATES: tl.constexpr):
    """Scalars: 0 1−β₁, 1 β₂, 2 1−β₂, 3 1−η·λ, 4 √(1−β₂ᵗ), 5 ε, 6 η/(1−β₁ᵗ), 7 coupled λ,
    8 κₜ (inf: no clamp), 9 maximize."""
    grad = tl.where(coefficient(scalars, 9) != 0.0, -grad, grad)
    coupled = coefficient(scalars, 7)
    grad = tl.where(coupled != 0.0, grad + coupled * param, grad)
    exp_avg = exp_avg + coefficient(scalars, 0) * (grad - exp_avg)
    exp_avg_sq = exp_avg_sq * coefficient(scalars, 1) + coefficient(scalars, 2) * (grad * grad)
    param = param * coefficient(scalars, 3)
    root = tl.sqrt_rn(exp_avg_sq)
    held = clamp_moment(exp_avg, root, coefficient(scalars, 8))  # m held to ±κₜ√v (inf: unchanged)
    denom = tl.div_rn(root, coefficient(scalars, 4)) + coefficient(scalars, 5)
    param = param - coefficient(scalars, 6) * tl.div_rn(held, denom)
    return param, exp_avg, exp_avg_sq, s2, s3
