"""Adam and AdamW (Kingma & Ba 2015, arXiv 1412.6980; Loshchilov & Hutter 2019,
arXiv 1711.05101), with torch.optim semantics."""

from __future__ import annotations

import math

import torch

from .base import Kernels, Rule, StateSpec, check_betas, check_bool, check_nonnegative, register_rule

MOMENTS = (StateSpec("exp_avg", "signed"), StateSpec("exp_avg_sq", "unsigned"))
_TORCH_EXTRAS = {"amsgrad": False, "foreach": None, "capturable": False, "differentiable": False, "fused": None}


# The clamp below sits this far above Adam's exact bound, so that float32 rounding of
# exact EMAs (fp32 states) never triggers it; quantized states that break the bound by
# more are held to it.
MOMENT_BOUND_SLACK = 1.01


def adam_moment_bound(beta1: float, beta2: float, step: int) -> float:
    """κₜ with |mₜ| ≤ κₜ·√vₜ for any gradients, when m and v are exact EMAs of them.

    By Cauchy–Schwarz over mₜ = (1−β₁)Σ β₁^(t−i) gᵢ and vₜ = (1−β₂)Σ β₂^(t−i) gᵢ²:

        mₜ² ≤ (1−β₁)²/(1−β₂) · Sₜ · vₜ,   Sₜ = Σ_{k<t} γᵏ,  γ = β₁²/β₂

    (Sₜ ≤ 1/(1−γ) when β₁² < β₂, e.g. ≈ 5.3 for the defaults; Kingma & Ba 2015, §2.1,
    state the same limit on |m̂/√v̂|.) Returned with MOMENT_BOUND_SLACK; inf when there
    is no bound (β₂ = 0, or Sₜ overflows). ``step`` may be a float64 tensor (Rule.scalars).
    """
    if beta2 == 0.0:
        return math.inf
    gamma = beta1 * beta1 / beta2
    if isinstance(step, torch.Tensor):  # overflow gives inf here, which is "no bound"
        series = step.double() if gamma == 1.0 else (1.0 - gamma**step) / (1.0 - gamma)
        return (1.0 - beta1) * (series / (1.0 - beta2)) ** 0.5 * MOMENT_BOUND_SLACK
    if gamma == 1.0:
        series = float(step)
    else:
        try:
            series = (1.0 - gamma**step) / (1.0 - gamma)
        except OverflowError:
            return math.inf
    return (1.0 - beta1) * math.sqrt(series / (1.0 - beta2)) * MOMENT_BOUND_SLACK


def adam_scalars(hyper, step, lossy: bool) -> dict:
    """Adam/AdamW's per-step scalars (the tile ``adam``'s coefficients, in this order).

    decay_factor is 1 − η·λ for decoupled decay (AdamW), coupled_wd is λ for L2 decay
    coupled into the gradient (Adam), each 1 / 0 when unused; step_size = η/(1 − β₁ᵗ),
    bias2_sqrt = √(1 − β₂ᵗ); moment_bound = κₜ for lossy states, else inf (no clamp).
    """
    beta1, beta2 = hyper["betas"]
    lr, weight_decay = hyper["lr"], hyper["weight_decay"]
    coupled = not hyper.get("decoupled_weight_decay", True)  # Adam's default: L2 in the gradient
    return {
        "one_minus_beta1": 1 - beta1,
        "beta2": beta2,
        "one_minus_beta2": 1 - beta2,
        "decay_factor": 1 - lr * (0.0 if coupled else weight_decay),
        "bias2_sqrt": (1 - beta2**step) ** 0.5,
        "eps": hyper["eps"],
        "step_size": lr / (1 - beta1**step),
        "coupled_wd": weight_decay if coupled else 0.0,
        "moment_bound": adam_moment_bound(beta1, beta2, step) if lossy else math.inf,
        "maximize": 1.0 if hyper["maximize"] else 0.0,
    }


def adam_apply(param, grad, state, s):
    """One Adam/AdamW step from ``adam_scalars`` ``s`` (see adamw_update for the math)."""
    if s["maximize"]:
        grad = -grad
    if s["coupled_wd"]:
        grad = grad + s["coupled_wd"] * param
    exp_avg = state["exp_avg"] + s["one_minus_beta1"] * (grad - state["exp_avg"])
    exp_avg_sq = state["exp_avg_sq"] * s["beta2"] + s["one_minus_beta2"] * (grad * grad)
    param = param * s["decay_factor"]
    root = exp_avg_sq.sqrt()
    limited = clamp_moment(exp_avg, root, s["moment_bound"])
    denom = root / s["bias2_sqrt"] + s["eps"]
    param = param - s["step_size"] * (limited / denom)
    return param, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


def adamw_update(param, grad, state, *, step, lr, betas, eps, weight_decay, maximize=False, lossy_states=False):
    """AdamW, decoupled weight decay scaled by the (scheduled) learning rate:

        θ ← θ · (1 − η·λ)
        m ← β₁·m + (1 − β₁)·g
        v ← β₂·v + (1 − β₂)·g²
        m̃ ← clamp(m, −κₜ√v, κₜ√v)   lossy states only (κₜ: adam_moment_bound)
        θ ← θ − η/(1 − β₁ᵗ) · m̃ / (√v / √(1 − β₂ᵗ) + ε)

    ε is added after bias-correcting √v, as torch.optim.AdamW does. ``lossy_states``
    (the implementation sets it when a state is stored in a lossy codec: bf16, 8/4-bit)
    holds m to Adam's own bound, so quantized moments never step further than fp32 Adam
    could: a second moment rounded to 0 next to a first moment that is not would
    otherwise step η·m/ε (the zero-point problem, Li et al. 2023, arXiv 2309.01507). The
    bound assumes constant betas; exact fp32 moments need no guard and are never clamped
    (schedules that cycle β₁, such as OneCycleLR, stay equal to torch.optim.AdamW). The
    stored m is not clamped.
    Defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2.
    """
    hyper = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "maximize": maximize}
    return adam_apply(param, grad, state, adam_scalars(hyper, step, lossy_states))


def clamp_moment(moment, root, bound: float):
    """moment held to [−bound·root, bound·root] (bound inf: unchanged)."""
    if bound == math.inf:
        return moment
    limit = root * bound
    return torch.where(moment.abs() > limit, limit.copysign(moment), moment)


def adam_update(param, grad, state, *, step, lr, betas, eps, weight_decay, maximize=False,
                decoupled_weight_decay=False, lossy_states=False):
    """Adam with L2 weight decay coupled into the gradient (torch.optim.Adam):

        g ← g + λ·θ, then the AdamW moments and step with no decoupled decay.

    ``decoupled_weight_decay=True`` makes it AdamW. Defaults: lr 1e-3, betas
    (0.9, 0.999), eps 1e-8, weight_decay 0.
    """
    hyper = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "maximize": maximize,
             "decoupled_weight_decay": decoupled_weight_decay}
    return adam_apply(param, grad, state, adam_scalars(hyper, step, lossy_states))


def _validate(h) -> None:
    check_nonnegative("lr", h["lr"])
    check_betas(h["betas"], 2)
    check_nonnegative("eps", h["eps"])
    check_nonnegative("weight_decay", h["weight_decay"])
    check_bool("maximize", h["maximize"])
    if "decoupled_weight_decay" in h:
        check_bool("decoupled_weight_decay", h["decoupled_weight_decay"])


# Adam and AdamW share one tile (coupled_wd / decay_factor tell them apart).
ADAM_KERNELS = Kernels(native_tile="adam", triton_tile="tightfit.kernels.tiles.adam")

ADAMW = register_rule(Rule(
    name="adamw",
    update=adamw_update,
    defaults={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "maximize": False},
    validate=_validate,
    state_specs=lambda shape, hyper: MOMENTS,
    paper="Loshchilov & Hutter 2019, Decoupled Weight Decay Regularization, arXiv 1711.05101",
    torch_group_extras=_TORCH_EXTRAS,
    guards_lossy_states=True,
    scalars=adam_scalars,
    kernels=ADAM_KERNELS,
))

ADAM = register_rule(Rule(
    name="adam",
    update=adam_update,
    defaults={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "maximize": False,
              "decoupled_weight_decay": False},
    validate=_validate,
    state_specs=lambda shape, hyper: MOMENTS,
    paper="Kingma & Ba 2015, Adam: A Method for Stochastic Optimization, arXiv 1412.6980",
    torch_group_extras=_TORCH_EXTRAS,
    guards_lossy_states=True,
    scalars=adam_scalars,
    kernels=ADAM_KERNELS,
))
