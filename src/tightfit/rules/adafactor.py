"""Adafactor (Shazeer & Stern 2018, Adafactor: Adaptive Learning Rates with Sublinear
Memory Cost, arXiv 1804.04235), in the two conventions people actually run.

The two are incompatible (different step size, ε₁ placement, decay, momentum), so each
is its own rule and its own pure function, with its own state names and defaults:

- ``adafactor``    — torch.optim.Adafactor (torch >= 2.5): states ``row_var``,
  ``col_var`` (keepdim shapes) or ``variance``; lr is only a cap on the relative step.
- ``adafactor_hf`` — transformers.Adafactor (the fairseq port): states
  ``exp_avg_sq_row``, ``exp_avg_sq_col`` or ``exp_avg_sq``; relative step by default.

Factored statistics and the full second moment of vectors are ``small`` states (fp32,
never quantized): they are tiny next to the parameter, and Adafactor takes rsqrt of
them, where a quantized value rounded to zero would blow up the update. The optional
first moment ``exp_avg`` is ``signed`` and goes through the group's codec.
"""

from __future__ import annotations

import math

import torch

from .base import (Kernels, Rule, StateSpec, check_bool, check_nonnegative, check_positive, check_unit_interval,
                   register_rule)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.norm(2) / math.sqrt(x.numel())


def _first_moment(update, state, beta1):
    """Optional momentum over the lr-scaled update (transformers' convention)."""
    if beta1 is None:
        return update, {}
    exp_avg = state["exp_avg"] * beta1 + (1 - beta1) * update
    return exp_avg, {"exp_avg": exp_avg}


# --- torch.optim.Adafactor convention -------------------------------------------------

def adafactor_step_scalars(rms_param, *, step, lr, beta2_decay, eps):
    """(ε₁, wₜ, αₜ) of step t (see adafactor_update) from RMS(θ) (a float): ε₁ resolved,
    the new statistic's weight wₜ = t^τ and the step size αₜ = max(ε₂, RMS(θ)) · min(η, 1/√t)."""
    eps1, eps2 = eps
    if eps1 is None:
        eps1 = torch.finfo(torch.float32).eps
    rho = min(lr, 1 / step**0.5)
    return eps1, step**beta2_decay, max(eps2, rms_param) * rho


def factored_lerp(row_var, col_var, row_mean, col_mean, new_weight, eps1):
    """(R, C, max(mean₋₂(R), ε₁)) from the new mean₋₁(g²), mean₋₂(g²) (keepdim shapes,
    as R and C), so that V̂ = R Cᵀ / the last one."""
    row_var = torch.lerp(row_var, row_mean, new_weight)
    col_var = torch.lerp(col_var, col_mean, new_weight)
    return row_var, col_var, row_var.mean(dim=-2, keepdim=True).clamp(min=eps1)


def factored_variance(grad, row_var, col_var, new_weight, eps1):
    """(R, C, max(mean₋₂(R), ε₁)) after ``grad``, so that V̂ = R Cᵀ / the last one."""
    grad_sq = grad * grad
    return factored_lerp(row_var, col_var, grad_sq.mean(dim=-1, keepdim=True), grad_sq.mean(dim=-2, keepdim=True),
                         new_weight, eps1)


def adafactor_update(param, grad, state, *, step, lr, beta2_decay, eps, d, weight_decay, beta1, maximize):
    """Adafactor with torch.optim.Adafactor semantics (t = step, τ = beta2_decay):

        ρₜ = min(η, 1/√t)                 η only caps the relative step
        αₜ = max(ε₂, RMS(θ)) · ρₜ          RMS of θ before decay
        wₜ = t^τ                          weight of the new statistic (1 at t = 1)
        θ ← θ · (1 − η·λ)
        matrix (last two dims):  R ← R + wₜ(mean₋₁(g²) − R),  C ← C + wₜ(mean₋₂(g²) − C)
                                 V̂ = R Cᵀ / max(mean₋₂(R), ε₁)
        vector or scalar:        V̂ = V ← V + wₜ(g² − V)
        U = g / √max(V̂, ε₁²)
        Û = U / max(1, RMS(U)/d)
        θ ← θ − αₜ · Û

    ``eps=(None, 1e-3)``: ε₁ None is the machine epsilon of the dtype the math runs in
    — float32 here (torch uses the parameter's dtype because it computes in it).
    Extension: ``beta1`` (default None = torch's behaviour) keeps a first moment
    m ← β₁m + (1 − β₁)·αₜÛ and steps θ ← θ − m, as transformers does.
    Defaults: lr 1e-2, beta2_decay -0.8, eps (None, 1e-3), d 1.0, weight_decay 0.
    """
    if maximize:
        grad = -grad
    eps1, new_weight, alpha = adafactor_step_scalars(float(_rms(param)), step=step, lr=lr,
                                                     beta2_decay=beta2_decay, eps=eps)
    if weight_decay != 0:
        param = param * (1 - lr * weight_decay)
    if grad.dim() > 1:
        row_var, col_var, row_mean = factored_variance(grad, state["row_var"], state["col_var"], new_weight, eps1)
        var_estimate = (row_var @ col_var) / row_mean
        new_states = {"row_var": row_var, "col_var": col_var}
    else:
        var_estimate = torch.lerp(state["variance"], grad * grad, new_weight)
        new_states = {"variance": var_estimate}
    update = var_estimate.clamp(min=eps1 * eps1).rsqrt() * grad
    update = update / max(1.0, float(_rms(update)) / d)
    update, moment = _first_moment(alpha * update, state, beta1)
    return param - update, {**new_states, **moment}


def _check_beta1(value) -> None:
    if value is not None:
        check_unit_interval("beta1", value)


def _check_eps(eps, *, first_may_be_none: bool) -> None:
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(f"invalid eps: {eps!r} (allowed: a tuple (eps1, eps2) of numbers >= 0)")
    if not (first_may_be_none and eps[0] is None):
        check_nonnegative("eps[0]", eps[0])
    check_nonnegative("eps[1]", eps[1])


def _validate_torch(h) -> None:
    check_nonnegative("lr", h["lr"])
    if not isinstance(h["beta2_decay"], (int, float)) or isinstance(h["beta2_decay"], bool) or h["beta2_decay"] > 0:
        raise ValueError(f"invalid beta2_decay: {h['beta2_decay']!r} (allowed: a number <= 0)")
    _check_eps(h["eps"], first_may_be_none=True)
    check_positive("d", h["d"], allow_inf=True)
    if h["d"] < 1:
        raise ValueError(f"invalid d: {h['d']!r} (allowed: a clipping threshold >= 1)")
    check_nonnegative("weight_decay", h["weight_decay"])
    _check_beta1(h["beta1"])
    check_bool("maximize", h["maximize"])


def _factored_specs(row_shape, col_shape, names):
    """States for a param shape: optional exp_avg, then row/col stats (>= 2-D) or a full one."""
    row_name, col_name, full_name = names

    def specs(shape, hyper):
        first = (StateSpec("exp_avg", "signed"),) if hyper["beta1"] is not None else ()
        if len(shape) >= 2:
            return first + (StateSpec(row_name, "small", row_shape), StateSpec(col_name, "small", col_shape))
        return first + (StateSpec(full_name, "small"),)
    return specs


ADAFACTOR = register_rule(Rule(
    name="adafactor",
    update=adafactor_update,
    defaults={"lr": 1e-2, "beta2_decay": -0.8, "eps": (None, 1e-3), "d": 1.0, "weight_decay": 0.0,
              "beta1": None, "maximize": False},
    validate=_validate_torch,
    # torch keeps the reduced dim (size 1) so that R @ C rebuilds the matrix.
    state_specs=_factored_specs(lambda s: (*s[:-1], 1), lambda s: (*s[:-2], 1, s[-1]),
                                ("row_var", "col_var", "variance")),
    elementwise=False,
    paper="Shazeer & Stern 2018, Adafactor: Adaptive Learning Rates with Sublinear Memory Cost, arXiv 1804.04235",
    torch_group_extras={"foreach": None},
    kernels=Kernels(native_tile="adafactor", native_driver="tightfit.impl.native.adafactor",
                    triton_tile="tightfit.kernels.factored_rules.adafactor",
                    triton_driver="tightfit.kernels.factored_step"),
))


# --- transformers.Adafactor convention ------------------------------------------------

def factored_ema(row, col, row_mean, col_mean, beta):
    """(β·R + (1 − β)·row_mean, β·C + (1 − β)·col_mean): EMAs of a matrix's row means
    (mean₋₁) and column means (mean₋₂), as both the second moment and CAME's instability keep."""
    return row * beta + (1 - beta) * row_mean, col * beta + (1 - beta) * col_mean


def factored_rsqrt_factors(row: torch.Tensor, col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """((R/mean R)^-½ with a trailing unit dim, C^-½ with a unit dim before the last):
    the two factors whose product is factored_rsqrt(R, C)."""
    row_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
    return row_factor, col.unsqueeze(-2).rsqrt()


def factored_rsqrt(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """V̂^-½ for V̂ = R Cᵀ / mean(R), as (R/mean R)^-½ ⊗ C^-½ (fairseq's arithmetic).

    ``row`` has the param shape without its last dim, ``col`` without its second last.
    """
    row_factor, col_factor = factored_rsqrt_factors(row, col)
    return row_factor * col_factor


def rms_clip_divisor(rms: torch.Tensor, clip_threshold: float) -> torch.Tensor:
    """max(1, RMS(u)/d) as a float32 tensor: the clipped update is û = u / this."""
    return (rms / clip_threshold).clamp(min=1.0)


def scaled_by_second_moment(grad, state, beta2, eps1, clip_threshold):
    """HF-style Adafactor/CAME preconditioning, shared by both rules:

        v ← β₂·v + (1 − β₂)·(g² + ε₁)   factored as row/col means for ≥2-D (V̂ = R Cᵀ / mean R)
        u ← g / √v̂,  then  u ← u / max(1, RMS(u) / d)

    Returns the clipped update and the new ``exp_avg_sq_row/col`` (or ``exp_avg_sq``) states.
    """
    grad_sq = grad * grad + eps1
    if grad.dim() > 1:
        row, col = factored_ema(state["exp_avg_sq_row"], state["exp_avg_sq_col"], grad_sq.mean(dim=-1),
                                grad_sq.mean(dim=-2), beta2)
        update = factored_rsqrt(row, col) * grad
        new_states = {"exp_avg_sq_row": row, "exp_avg_sq_col": col}
    else:
        exp_avg_sq = state["exp_avg_sq"] * beta2 + (1 - beta2) * grad_sq
        update = exp_avg_sq.rsqrt() * grad
        new_states = {"exp_avg_sq": exp_avg_sq}
    return update / rms_clip_divisor(_rms(update), clip_threshold), new_states


def adafactor_hf_step_scalars(rms_param, *, step, lr, eps, decay_rate, scale_parameter, relative_step, warmup_init):
    """(αₜ, β̂₂ₜ) of step t (see adafactor_hf_update) from RMS(θ) (a float; None without
    scale_parameter)."""
    if relative_step:
        rho = min(1e-6 * step if warmup_init else 1e-2, 1.0 / math.sqrt(step))
    else:
        rho = lr
    alpha = max(eps[1], rms_param) * rho if scale_parameter else rho
    return alpha, 1.0 - math.pow(step, decay_rate)


def adafactor_hf_update(param, grad, state, *, step, lr, eps, clip_threshold, decay_rate, beta1, weight_decay,
                        scale_parameter, relative_step, warmup_init):
    """Adafactor with transformers.Adafactor semantics (t = step):

        ρₜ = min(1e-6·t if warmup_init else 1e-2, 1/√t)   if relative_step, else η
        αₜ = max(ε₂, RMS(θ)) · ρₜ   if scale_parameter, else ρₜ
        β̂₂ₜ = 1 − t^decay_rate                              (0 at t = 1)
        S = g² + ε₁
        matrix (last two dims):  R ← β̂₂ₜR + (1 − β̂₂ₜ)·mean₋₁(S),  C ← β̂₂ₜC + (1 − β̂₂ₜ)·mean₋₂(S)
                                 U = g · (R/mean(R))^-½ ⊗ C^-½
        vector or scalar:        V ← β̂₂ₜV + (1 − β̂₂ₜ)·S,  U = g / √V
        Û = U / max(1, RMS(U)/clip_threshold)
        u = αₜ·Û;  with beta1: m ← β₁m + (1 − β₁)·u, u = m
        θ ← θ − λ·αₜ·θ − u

    Defaults: lr None, eps (1e-30, 1e-3), clip_threshold 1.0, decay_rate -0.8,
    beta1 None, weight_decay 0, scale_parameter True, relative_step True,
    warmup_init False.
    """
    eps1 = eps[0]
    alpha, beta2t = adafactor_hf_step_scalars(float(_rms(param)) if scale_parameter else None, step=step, lr=lr,
                                              eps=eps, decay_rate=decay_rate, scale_parameter=scale_parameter,
                                              relative_step=relative_step, warmup_init=warmup_init)
    update, new_states = scaled_by_second_moment(grad, state, beta2t, eps1, clip_threshold)
    update, moment = _first_moment(alpha * update, state, beta1)
    if weight_decay != 0:
        param = param - (weight_decay * alpha) * param
    return param - update, {**new_states, **moment}


def _validate_hf(h) -> None:
    if h["lr"] is not None:
        check_nonnegative("lr", h["lr"])
    if h["relative_step"] and h["lr"] is not None:
        raise ValueError(f"lr={h['lr']!r} with relative_step=True: the relative step replaces lr "
                         "(allowed: lr=None, or relative_step=False with a number lr)")
    if not h["relative_step"] and h["lr"] is None:
        raise ValueError("lr=None with relative_step=False (allowed: a number lr >= 0, or relative_step=True)")
    if h["warmup_init"] and not h["relative_step"]:
        raise ValueError("warmup_init=True needs relative_step=True (allowed: warmup_init=False)")
    _check_eps(h["eps"], first_may_be_none=False)
    check_positive("clip_threshold", h["clip_threshold"], allow_inf=True)
    if not isinstance(h["decay_rate"], (int, float)) or isinstance(h["decay_rate"], bool) or h["decay_rate"] > 0:
        raise ValueError(f"invalid decay_rate: {h['decay_rate']!r} (allowed: a number <= 0)")
    _check_beta1(h["beta1"])
    check_nonnegative("weight_decay", h["weight_decay"])
    for key in ("scale_parameter", "relative_step", "warmup_init"):
        check_bool(key, h[key])


ADAFACTOR_HF = register_rule(Rule(
    name="adafactor_hf",
    update=adafactor_hf_update,
    defaults={"lr": None, "eps": (1e-30, 1e-3), "clip_threshold": 1.0, "decay_rate": -0.8, "beta1": None,
              "weight_decay": 0.0, "scale_parameter": True, "relative_step": True, "warmup_init": False},
    validate=_validate_hf,
    state_specs=_factored_specs(lambda s: s[:-1], lambda s: (*s[:-2], s[-1]),
                                ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq")),
    elementwise=False,
    paper="Shazeer & Stern 2018, arXiv 1804.04235; transformers.Adafactor (fairseq port)",
    kernels=Kernels(native_tile="adafactor_hf", native_driver="tightfit.impl.native.adafactor_hf",
                    triton_tile="tightfit.kernels.factored_rules.adafactor_hf",
                    triton_driver="tightfit.kernels.factored_step"),
))
