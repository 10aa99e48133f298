"""SGD tile (rules/sgd.py: sgd_scalars, sgd_update); NSTATES 0: no momentum buffer."""

import triton
import triton.language as tl

from .slots import coefficient


@triton.jit
def update(param, grad, momentum_buffer, s1, s2, s3, scalars, NSTATES: tl.constexpr):
    """Scalars: 0 η, 1 μ, 2 1−τ, 3 λ (L2), 4 maximize, 5 nesterov, 6 first step."""
    grad = tl.where(coefficient(scalars, 4) != 0.0, -grad, grad)
    weight_decay = coefficient(scalars, 3)
    grad = tl.where(weight_decay != 0.0, grad + weight_decay * param, grad)
    direction = grad
    if NSTATES > 0:
        momentum = coefficient(scalars, 1)
        decayed = momentum_buffer * momentum + coefficient(scalars, 2) * grad
        momentum_buffer = tl.where(coefficient(scalars, 6) != 0.0, grad, decayed)
        direction = tl.where(coefficient(scalars, 5) != 0.0, grad + momentum * momentum_buffer, momentum_buffer)
    param = param - coefficient(scalars, 0) * direction
    return param, momentum_buffer, s1, s2, s3
