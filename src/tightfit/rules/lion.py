"""Lion (Chen et al. 2023, Symbolic Discovery of Optimization Algorithms, arXiv 2302.06675)."""

from __future__ import annotations

from .base import Rule, StateSpec, check_betas, check_nonnegative, register_rule


def lion_update(param, grad, state, *, step, lr, betas, weight_decay):
    """Lion: the sign of an interpolated momentum, then the momentum update.

        c ← β₁·m + (1 − β₁)·g
        θ ← θ · (1 − η·λ) − η · sign(c)
        m ← β₂·m + (1 − β₂)·g

    Decay is decoupled and scaled by the scheduled lr. Defaults: lr 1e-4,
    betas (0.9, 0.99), weight_decay 0. Use a 3-10x smaller lr and 3-10x larger
    weight decay than for AdamW.
    """
    beta1, beta2 = betas
    exp_avg = state["exp_avg"]
    direction = (exp_avg * beta1 + (1 - beta1) * grad).sign()
    param = param * (1 - lr * weight_decay) - lr * direction
    return param, {"exp_avg": exp_avg * beta2 + (1 - beta2) * grad}


def _validate(h) -> None:
    check_nonnegative("lr", h["lr"])
    check_betas(h["betas"], 2)
    check_nonnegative("weight_decay", h["weight_decay"])


LION = register_rule(Rule(
    name="lion",
    update=lion_update,
    defaults={"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0},
    validate=_validate,
    state_specs=lambda shape, hyper: (StateSpec("exp_avg", "signed"),),
    paper="Chen et al. 2023, Symbolic Discovery of Optimization Algorithms, arXiv 2302.06675",
))
