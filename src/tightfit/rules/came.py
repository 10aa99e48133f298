"""CAME (Luo et al. 2023, CAME: Confidence-guided Adaptive Memory Efficient Optimization,
arXiv 2307.02047), with the semantics of ``came-pytorch`` 0.1.3.

States: ``exp_avg`` (signed, through the group's codec); for matrices the factored
second moment ``exp_avg_sq_row``/``exp_avg_sq_col`` and factored instability
``exp_avg_res_row``/``exp_avg_res_col``; for vectors and scalars a full ``exp_avg_sq``.
All but ``exp_avg`` are ``small`` (fp32): they are rsqrt-ed, and tiny next to the param.
"""

from __future__ import annotations

from .adafactor import factored_ema, factored_rsqrt, scaled_by_second_moment
from .base import Kernels, Rule, StateSpec, check_betas, check_nonnegative, check_positive, register_rule


def came_update(param, grad, state, *, step, lr, eps, clip_threshold, betas, weight_decay):
    """CAME: Adafactor's factored, clipped update, then momentum scaled by confidence:

        S = g² + ε₁
        matrix:  r ← β₂r + (1 − β₂)·mean₋₁(S),  c ← β₂c + (1 − β₂)·mean₋₂(S)
                 u = g · (r/mean(r))^-½ ⊗ c^-½
        vector:  v ← β₂v + (1 − β₂)·S,  u = g/√v
        û = u / max(1, RMS(u)/clip_threshold)
        m ← β₁m + (1 − β₁)·û
        matrix:  U = (û − m)² + ε₂                            instability
                 R ← β₃R + (1 − β₃)·mean₋₁(U),  C ← β₃C + (1 − β₃)·mean₋₂(U)
                 Δ = m · (R/mean(R))^-½ ⊗ C^-½                 m/√S, S = R Cᵀ/mean(R)
        vector:  Δ = m                                        (no confidence term)
        θ ← θ − η·λ·θ − η·Δ

    Constant β₂ (no bias correction, no relative step, no parameter scaling).
    Defaults: lr required, eps (1e-30, 1e-16), clip_threshold 1.0,
    betas (0.9, 0.999, 0.9999), weight_decay 0.
    """
    beta1, beta2, beta3 = betas
    eps1, eps2 = eps
    update, new_states = scaled_by_second_moment(grad, state, beta2, eps1, clip_threshold)
    exp_avg = state["exp_avg"] * beta1 + (1 - beta1) * update
    if grad.dim() > 1:
        instability = (update - exp_avg) ** 2 + eps2
        res_row, res_col = factored_ema(state["exp_avg_res_row"], state["exp_avg_res_col"],
                                        instability.mean(dim=-1), instability.mean(dim=-2), beta3)
        direction = factored_rsqrt(res_row, res_col) * exp_avg
        new_states.update(exp_avg_res_row=res_row, exp_avg_res_col=res_col)
    else:
        direction = exp_avg
    if weight_decay != 0:
        param = param - (weight_decay * lr) * param
    return param - lr * direction, {"exp_avg": exp_avg, **new_states}


def _validate(h) -> None:
    if h["lr"] is None:
        raise ValueError("CAME needs an explicit lr (got lr=None; allowed: a number >= 0, "
                         "typically 0.5-0.9x the AdamW lr)")
    check_nonnegative("lr", h["lr"])
    eps = h["eps"]
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(f"invalid eps: {eps!r} (allowed: a tuple (eps1, eps2) of numbers >= 0)")
    check_nonnegative("eps[0]", eps[0])
    check_nonnegative("eps[1]", eps[1])
    check_positive("clip_threshold", h["clip_threshold"], allow_inf=True)
    check_betas(h["betas"], 3)
    check_nonnegative("weight_decay", h["weight_decay"])


def _row(shape):
    return shape[:-1]


def _col(shape):
    return (*shape[:-2], shape[-1])


def _state_specs(shape, hyper):
    if len(shape) >= 2:
        return (StateSpec("exp_avg", "signed"),
                StateSpec("exp_avg_sq_row", "small", _row), StateSpec("exp_avg_sq_col", "small", _col),
                StateSpec("exp_avg_res_row", "small", _row), StateSpec("exp_avg_res_col", "small", _col))
    return StateSpec("exp_avg", "signed"), StateSpec("exp_avg_sq", "small")


CAME = register_rule(Rule(
    name="came",
    update=came_update,
    defaults={"lr": None, "eps": (1e-30, 1e-16), "clip_threshold": 1.0, "betas": (0.9, 0.999, 0.9999),
              "weight_decay": 0.0},
    validate=_validate,
    state_specs=_state_specs,
    elementwise=False,
    paper="Luo et al. 2023, CAME: Confidence-guided Adaptive Memory Efficient Optimization, arXiv 2307.02047",
    kernels=Kernels(native_tile="came", native_driver="tightfit.impl.native.came",
                    triton_tile="tightfit.kernels.factored_rules.came",
                    triton_driver="tightfit.kernels.factored_step"),
))
