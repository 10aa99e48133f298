"""Lion tile (rules/lion.py: lion_scalars, lion_update)."""

import triton
import triton.language as tl

from .slots import coefficient, sign


@triton.jit
def update(param, grad, exp_avg, s1, s2, s3, scalars, NSTATES: tl.constexpr):
    """Scalars: 0 β₁, 1 1−β₁, 2 β₂, 3 1−β₂, 4 1−η·λ, 5 η."""
    direction = sign(exp_avg * coefficient(scalars, 0) + coefficient(scalars, 1) * grad)
    param = param * coefficient(scalars, 4) - coefficient(scalars, 5) * direction
    exp_avg = exp_avg * coefficient(scalars, 2) + coefficient(scalars, 3) * grad
    return param, exp_avg, s1, s2, s3
