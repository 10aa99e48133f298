"""Adam and AdamW (Kingma & Ba 2015, arXiv 1412.6980; Loshchilov & Hutter 2019,
arXiv 1711.05101), with torch.optim semantics."""

from __future__ import annotations

from .base import Rule, StateSpec, check_betas, check_bool, check_nonnegative, register_rule

MOMENTS = (StateSpec("exp_avg", "signed"), StateSpec("exp_avg_sq", "unsigned"))
_TORCH_EXTRAS = {"amsgrad": False, "foreach": None, "capturable": False, "differentiable": False, "fused": None}


def adamw_update(param, grad, state, *, step, lr, betas, eps, weight_decay, maximize=False):
    """AdamW, decoupled weight decay scaled by the (scheduled) learning rate:

        θ ← θ · (1 − η·λ)
        m ← β₁·m + (1 − β₁)·g
        v ← β₂·v + (1 − β₂)·g²
        θ ← θ − η/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)

    ε is added after bias-correcting √v, as torch.optim.AdamW does.
    Defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2.
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    exp_avg = state["exp_avg"] + (1 - beta1) * (grad - state["exp_avg"])
    exp_avg_sq = state["exp_avg_sq"] * beta2 + (1 - beta2) * (grad * grad)
    bias1 = 1 - beta1**step
    bias2_sqrt = (1 - beta2**step) ** 0.5
    param = param * (1 - lr * weight_decay)
    denom = exp_avg_sq.sqrt() / bias2_sqrt + eps
    param = param - (lr / bias1) * (exp_avg / denom)
    return param, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


def adam_update(param, grad, state, *, step, lr, betas, eps, weight_decay, maximize=False,
                decoupled_weight_decay=False):
    """Adam with L2 weight decay coupled into the gradient (torch.optim.Adam):

        g ← g + λ·θ, then the AdamW moments and step with no decoupled decay.

    ``decoupled_weight_decay=True`` makes it AdamW. Defaults: lr 1e-3, betas
    (0.9, 0.999), eps 1e-8, weight_decay 0.
    """
    if decoupled_weight_decay:
        return adamw_update(param, grad, state, step=step, lr=lr, betas=betas, eps=eps,
                            weight_decay=weight_decay, maximize=maximize)
    if maximize:
        grad = -grad
    if weight_decay:
        grad = grad + weight_decay * param
    return adamw_update(param, grad, state, step=step, lr=lr, betas=betas, eps=eps, weight_decay=0.0)


def _validate(h) -> None:
    check_nonnegative("lr", h["lr"])
    check_betas(h["betas"], 2)
    check_nonnegative("eps", h["eps"])
    check_nonnegative("weight_decay", h["weight_decay"])
    check_bool("maximize", h["maximize"])
    if "decoupled_weight_decay" in h:
        check_bool("decoupled_weight_decay", h["decoupled_weight_decay"])


ADAMW = register_rule(Rule(
    name="adamw",
    update=adamw_update,
    defaults={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "maximize": False},
    validate=_validate,
    state_specs=lambda shape, hyper: MOMENTS,
    paper="Loshchilov & Hutter 2019, Decoupled Weight Decay Regularization, arXiv 1711.05101",
    torch_group_extras=_TORCH_EXTRAS,
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
))
