"""Lion (Chen et al. 2023, Symbolic Discovery of Optimization Algorithms, arXiv 2302.06675)."""

from __future__ import annotations

from .base import Kernels, Rule, StateSpec, check_betas, check_nonnegative, register_rule


def lion_scalars(hyper, step, lossy: bool) -> dict:
    """Lion's per-step scalars (the tile ``lion``'s coefficients, in this order)."""
    beta1, beta2 = hyper["betas"]
    lr = hyper["lr"]
    return {"beta1": beta1, "one_minus_beta1": 1 - beta1, "beta2": beta2, "one_minus_beta2": 1 - beta2,
            "decay_factor": 1 - lr * hyper["weight_decay"], "lr": lr}


def lion_update(param, grad, state, *, step, lr, betas, weight_decay):
    """Lion: the sign of an interpolated momentum, then the momentum update.

        c ← β₁·m + (1 − β₁)·g
        θ ← θ · (1 − η·λ) − η · sign(c)
        m ← β₂·m + (1 − β₂)·g

    Decay is decoupled and scaled by the scheduled lr. Defaults: lr 1e-4,
    betas (0.9, 0.99), weight_decay 0. Use a 3-10x smaller lr and 3-10x larger
    weight decay than for AdamW.
    """
    s = lion_scalars({"lr": lr, "betas": betas, "weight_decay": weight_decay}, step, False)
    exp_avg = state["exp_avg"]
    direction = (exp_avg * s["beta1"] + s["one_minus_beta1"] * grad).sign()
    param = param * s["decay_factor"] - s["lr"] * direction
    return param, {"exp_avg": exp_avg * s["beta2"] + s["one_minus_beta2"] * grad}


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
    scalars=lion_scalars,
    kernels=Kernels(native_tile="lion", triton_tile="tightfit.kernels.tiles.lion"),
))
