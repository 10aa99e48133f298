"""AdEMAMix (Pagliardini, Ablin & Grangier 2024, The AdEMAMix Optimizer: Better, Faster,
Older, arXiv 2409.03137), with bitsandbytes' ``AdEMAMix`` semantics: Adam plus a slow EMA
of the gradient mixed into the numerator, with optional warm-up schedulers for its weight
α and its rate β₃.

States: ``exp_avg`` (fast EMA, signed), ``exp_avg_slow`` (slow EMA, signed) and
``exp_avg_sq`` (second moment, unsigned), all through the group's codec.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from .adamw import adam_moment_bound, clamp_moment
from .base import Kernels, Rule, StateSpec, _number, check_betas, check_nonnegative, register_rule

STATES = (StateSpec("exp_avg", "signed"), StateSpec("exp_avg_slow", "signed"), StateSpec("exp_avg_sq", "unsigned"))

# The largest float32: a moment bound that overflows is held here, so that a second
# moment stored as 0 still zeroes its first moments (0·κ = 0) instead of leaving them
# unbounded (0·inf = NaN, which compares false and clamps nothing).
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _at_most(value, cap: float):
    """min(value, cap) for a Python number or a tensor (the Triton path's float64 steps)."""
    return value.clamp(max=cap) if isinstance(value, torch.Tensor) else min(value, cap)


def scheduled_alpha(alpha: float, t_alpha, step):
    """αₜ = min(t·α / T_α, α): linear warm-up of the slow EMA's weight (None: α)."""
    return alpha if t_alpha is None else _at_most(step * alpha / t_alpha, alpha)


def scheduled_beta3(beta1: float, beta3: float, t_beta3, step):
    """β₃,ₜ = min(exp(ln β₁ · ln β₃ / ((1 − s)·ln β₃ + s·ln β₁)), β₃), s = t / T_β₃ (None: β₃).

    The half-life 1/ln β₃,ₜ moves linearly from β₁'s to β₃'s over T_β₃ steps, so the slow
    EMA starts as fast as the fast one. Written as β₁^(ln β₃ / D), the same number as
    bitsandbytes' exp(ln β₁ · ln β₃ / D), with only arithmetic on the step.
    """
    if t_beta3 is None:
        return beta3
    ln_beta1, ln_beta3 = math.log(beta1), math.log(beta3)
    scale = step / t_beta3
    return _at_most(beta1 ** (ln_beta3 / ((1 - scale) * ln_beta3 + scale * ln_beta1)), beta3)


def ema_moment_bound(beta: float, beta2: float, step, weight_scale: float = 1.0):
    """κ with |m| ≤ κ·√v when m is an EMA of g at rate β (or at any rates ≤ β whose new-value
    weights are at most ``weight_scale``·(1 − β)) and v the exact EMA of g² at β₂.

    Cauchy–Schwarz as in rules/adamw.py's adam_moment_bound (whose κ this scales): with
    wᵢ ≤ s·(1 − β)·β^(t−i) the bound grows by s. For the slow EMA γ = β₃²/β₂ > 1 (β₃ = 0.9999,
    β₂ = 0.999): the bound is true but grows with t, as the exact ratio |m₂|/√v can once
    gradients fade (m₂ forgets 10x slower than v). Held at FLOAT32_MAX where it overflows;
    inf when β₂ = 0 (no bound). ``step`` may be a tensor.
    """
    bound = adam_moment_bound(beta, beta2, step)
    return bound if beta2 == 0.0 else _at_most(weight_scale * bound, FLOAT32_MAX)


def ademamix_scalars(hyper: Mapping[str, Any], step, lossy: bool) -> dict[str, Any]:
    """Everything of step t that is the same for every element, in the ABI order of
    AdEMAMix's tiles: beta1, one_minus_beta1, beta2, one_minus_beta2, beta3 (β₃,ₜ),
    one_minus_beta3, alpha (αₜ), decay_factor (1 − η·λ), bias1 (1 − β₁ᵗ), bias2_sqrt
    (√(1 − β₂ᵗ)), eps, lr, fast_bound (κ of m₁), slow_bound (κ of m₂); the bounds are inf
    when no state is lossy."""
    beta1, beta2, beta3 = hyper["betas"]
    lr = hyper["lr"]
    beta3_t = scheduled_beta3(beta1, beta3, hyper["t_beta3"], step)
    if lossy:
        # The scheduled β₃,ₜ never exceeds β₃ and grows with t, so each new-value weight
        # 1 − β₃,ᵢ is at most that of step 1: the constant-β₃ bound scaled by the ratio holds.
        first = scheduled_beta3(beta1, beta3, hyper["t_beta3"], 1)
        fast_bound = ema_moment_bound(beta1, beta2, step)
        slow_bound = ema_moment_bound(beta3, beta2, step, (1.0 - first) / (1.0 - beta3))
    else:
        fast_bound = slow_bound = math.inf
    return dict(
        beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
        beta3=beta3_t, one_minus_beta3=1.0 - beta3_t, alpha=scheduled_alpha(hyper["alpha"], hyper["t_alpha"], step),
        decay_factor=1.0 - lr * hyper["weight_decay"], bias1=1.0 - beta1**step, bias2_sqrt=(1.0 - beta2**step) ** 0.5,
        eps=hyper["eps"], lr=lr, fast_bound=fast_bound, slow_bound=slow_bound,
    )


def ademamix_apply(param, grad, state, s):
    """One AdEMAMix step from ``ademamix_scalars`` ``s`` (see ademamix_update for the math)."""
    fast = state["exp_avg"] * s["beta1"] + s["one_minus_beta1"] * grad
    slow = state["exp_avg_slow"] * s["beta3"] + s["one_minus_beta3"] * grad
    second = state["exp_avg_sq"] * s["beta2"] + s["one_minus_beta2"] * (grad * grad)
    root = second.sqrt()
    # lossy states: held to their bounds (inf, fp32 states: unchanged); a root of 0 zeroes them
    fast_used, slow_used = clamp_moment(fast, root, s["fast_bound"]), clamp_moment(slow, root, s["slow_bound"])
    param = param * s["decay_factor"]
    mixed = fast_used / s["bias1"] + s["alpha"] * slow_used
    param = param - s["lr"] * (mixed / (root / s["bias2_sqrt"] + s["eps"]))
    return param, {"exp_avg": fast, "exp_avg_slow": slow, "exp_avg_sq": second}


def ademamix_update(param, grad, state, *, step, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay,
                    lossy_states=False):
    """AdEMAMix, decoupled weight decay scaled by the (scheduled) learning rate:

        αₜ = min(t·α/T_α, α)                                  (α when T_α is None)
        β₃,ₜ = min(exp(ln β₁·ln β₃ / ((1−s)·ln β₃ + s·ln β₁)), β₃),  s = t/T_β₃   (β₃ when None)
        m₁ ← β₁·m₁ + (1 − β₁)·g            fast EMA
        m₂ ← β₃,ₜ·m₂ + (1 − β₃,ₜ)·g         slow EMA (no bias correction)
        v  ← β₂·v + (1 − β₂)·g²
        θ ← θ · (1 − η·λ)
        θ ← θ − η · (m₁/(1 − β₁ᵗ) + αₜ·m₂) / (√v / √(1 − β₂ᵗ) + ε)

    ``lossy_states`` (a state is in a lossy codec: bf16, 8/4-bit) holds m₁ and m₂ to the
    bounds exact EMAs obey (ema_moment_bound), as AdamW holds its m: a second moment
    rounded to 0 next to first moments that are not would otherwise step η·(…)/ε. The slow
    EMA needs it most: it outlives v by 10x, so quantization rounds v of a faded coordinate
    to 0 while m₂ still holds a value. fp32 states are never clamped (equal to
    bitsandbytes' AdEMAMix); the stored moments are not clamped.
    Defaults: lr 1e-3, betas (0.9, 0.999, 0.9999), alpha 5, t_alpha None, t_beta3 None,
    eps 1e-8, weight_decay 1e-2.
    """
    hyper = {"lr": lr, "betas": betas, "alpha": alpha, "t_alpha": t_alpha, "t_beta3": t_beta3, "eps": eps,
             "weight_decay": weight_decay}
    return ademamix_apply(param, grad, state, ademamix_scalars(hyper, step, lossy_states))


def _check_schedule_length(name: str, value: Any) -> None:
    if value is None:
        return
    v = _number(name, value)
    if not 0.0 < v < math.inf:
        raise ValueError(f"invalid {name}: {value!r} (allowed: None (no warm-up) or a number of steps > 0)")


def _validate(h) -> None:
    check_nonnegative("lr", h["lr"])
    check_betas(h["betas"], 3)
    check_nonnegative("alpha", h["alpha"])
    _check_schedule_length("t_alpha", h["t_alpha"])
    _check_schedule_length("t_beta3", h["t_beta3"])
    check_nonnegative("eps", h["eps"])
    check_nonnegative("weight_decay", h["weight_decay"])
    if h["t_beta3"] is not None and min(h["betas"][0], h["betas"][2]) <= 0.0:
        raise ValueError(f"invalid betas: {h['betas']!r} with t_beta3={h['t_beta3']!r} (allowed: betas[0] > 0 and "
                         "betas[2] > 0; the beta3 warm-up interpolates their logarithms)")


ADEMAMIX = register_rule(Rule(
    name="ademamix",
    update=ademamix_update,
    defaults={"lr": 1e-3, "betas": (0.9, 0.999, 0.9999), "alpha": 5.0, "t_alpha": None, "t_beta3": None,
              "eps": 1e-8, "weight_decay": 1e-2},
    validate=_validate,
    state_specs=lambda shape, hyper: STATES,
    paper="Pagliardini, Ablin & Grangier 2024, The AdEMAMix Optimizer: Better, Faster, Older, arXiv 2409.03137",
    guards_lossy_states=True,
    scalars=ademamix_scalars,
    kernels=Kernels(native_tile="ademamix", triton_tile="tightfit.kernels.tiles.ademamix"),
))
