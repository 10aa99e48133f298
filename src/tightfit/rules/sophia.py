"""SophiaG (Liu et al. 2023, Sophia: A Scalable Stochastic Second-order Optimizer for
Language Model Pre-training, arXiv 2305.14342), with Liuhong99/Sophia ``sophia.py``
semantics: the step clips m / (ρ·bs·h) elementwise; the Hessian EMA h is refreshed by a
separate call (every k ≈ 10 steps) from gradients of a loss on labels sampled from the
model's own logits (Gauss-Newton-Bartlett estimator).

States: ``exp_avg`` (signed) and ``hessian`` (unsigned), both through the group's codec.
"""

from __future__ import annotations

from .base import Kernels, Rule, StateSpec, check_betas, check_bool, check_nonnegative, check_positive, register_rule

# sophia.py's guard against h = 0 in the denominator.
HESSIAN_FLOOR = 1e-15


def sophiag_scalars(hyper, step, lossy: bool) -> dict:
    """SophiaG's per-step scalars (the tile ``sophiag``'s coefficients, in this order)."""
    beta1 = hyper["betas"][0]
    lr = hyper["lr"]
    return {"decay_factor": 1 - lr * hyper["weight_decay"], "beta1": beta1, "one_minus_beta1": 1 - beta1,
            "rho_bs": hyper["rho"] * hyper["bs"], "lr": lr, "maximize": 1.0 if hyper["maximize"] else 0.0}


def sophiag_update(param, grad, state, *, step, lr, betas, rho, weight_decay, bs, maximize):
    """SophiaG step (the Hessian EMA h is only read here):

        θ ← θ · (1 − η·λ)
        m ← β₁·m + (1 − β₁)·g
        θ ← θ − η · sign(m) · min(|m| / (ρ·bs·h + 1e-15), 1)

    bs = tokens (samples) per optimizer step: the GNB estimate of h uses the gradient
    of the *mean* loss, so ρ·bs·h rescales it to the sum. While h = 0 (before the first
    Hessian refresh) every coordinate clips and the step is η·sign(m).
    Defaults: lr 1e-4, betas (0.965, 0.99), rho 0.04, weight_decay 0.1, bs 5120.
    """
    s = sophiag_scalars({"lr": lr, "betas": betas, "rho": rho, "weight_decay": weight_decay, "bs": bs,
                         "maximize": maximize}, step, False)
    if s["maximize"]:
        grad = -grad
    param = param * s["decay_factor"]
    exp_avg = state["exp_avg"] * s["beta1"] + s["one_minus_beta1"] * grad
    ratio = (exp_avg.abs() / (s["rho_bs"] * state["hessian"] + HESSIAN_FLOOR)).clamp(max=1.0)
    return param - s["lr"] * exp_avg.sign() * ratio, {"exp_avg": exp_avg}


def sophiag_hessian_update(hessian, grad, *, beta2):
    """Hessian EMA refresh from a GNB gradient ĝ (of the mean loss on sampled labels):

        h ← β₂·h + (1 − β₂)·ĝ⊙ĝ
    """
    return hessian * beta2 + (1 - beta2) * (grad * grad)


def _validate(h) -> None:
    check_nonnegative("lr", h["lr"])
    check_betas(h["betas"], 2)
    check_nonnegative("rho", h["rho"])
    check_nonnegative("weight_decay", h["weight_decay"])
    check_positive("bs", h["bs"])
    check_bool("maximize", h["maximize"])


SOPHIAG = register_rule(Rule(
    name="sophiag",
    update=sophiag_update,
    defaults={"lr": 1e-4, "betas": (0.965, 0.99), "rho": 0.04, "weight_decay": 1e-1, "bs": 5120,
              "maximize": False},
    validate=_validate,
    state_specs=lambda shape, hyper: (StateSpec("exp_avg", "signed"), StateSpec("hessian", "unsigned")),
    paper="Liu et al. 2023, Sophia: A Scalable Stochastic Second-order Optimizer for Language Model "
          "Pre-training, arXiv 2305.14342",
    scalars=sophiag_scalars,
    kernels=Kernels(native_tile="sophiag", triton_tile="tightfit.kernels.tiles.sophiag"),
))
