"""SGD with momentum, dampening and Nesterov, with torch.optim.SGD semantics
(Sutskever et al. 2013, On the importance of initialization and momentum in deep learning)."""

from __future__ import annotations

from .base import Kernels, Rule, StateSpec, check_bool, check_nonnegative, check_unit_interval, register_rule


def sgd_scalars(hyper, step, lossy: bool) -> dict:
    """SGD's per-step scalars (the tile ``sgd``'s coefficients, in this order); momentum ≠ 0
    means the rule keeps a momentum buffer, weight_decay ≠ 0 that L2 decay applies."""
    return {"lr": hyper["lr"], "momentum": hyper["momentum"], "one_minus_dampening": 1 - hyper["dampening"],
            "weight_decay": hyper["weight_decay"], "maximize": 1.0 if hyper["maximize"] else 0.0,
            "nesterov": 1.0 if hyper["nesterov"] else 0.0, "first_step": (step == 1) * 1.0}


def sgd_update(param, grad, state, *, step, lr, momentum, dampening, weight_decay, nesterov, maximize):
    """SGD with coupled L2 decay and a momentum buffer b:

        g ← g + λ·θ
        b ← g                      at the first step
        b ← μ·b + (1 − τ)·g        afterwards
        g ← g + μ·b  (nesterov)  or  g ← b
        θ ← θ − η·g

    η stays outside the buffer (torch convention). Defaults: lr 1e-3, momentum 0,
    dampening 0, weight_decay 0, nesterov False. momentum 0 keeps no state.
    """
    s = sgd_scalars({"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                     "nesterov": nesterov, "maximize": maximize}, step, False)
    if s["maximize"]:
        grad = -grad
    if s["weight_decay"]:
        grad = grad + s["weight_decay"] * param
    if not s["momentum"]:
        return param - s["lr"] * grad, {}
    buf = grad if s["first_step"] else state["momentum_buffer"] * s["momentum"] + s["one_minus_dampening"] * grad
    direction = grad + s["momentum"] * buf if s["nesterov"] else buf
    return param - s["lr"] * direction, {"momentum_buffer": buf}


def _validate(h) -> None:
    check_nonnegative("lr", h["lr"])
    check_unit_interval("momentum", h["momentum"])
    check_unit_interval("dampening", h["dampening"])
    check_nonnegative("weight_decay", h["weight_decay"])
    check_bool("nesterov", h["nesterov"])
    check_bool("maximize", h["maximize"])
    if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
        raise ValueError(
            f"nesterov=True needs momentum > 0 and dampening == 0 "
            f"(got momentum={h['momentum']!r}, dampening={h['dampening']!r})")


SGD = register_rule(Rule(
    name="sgd",
    update=sgd_update,
    defaults={"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False,
              "maximize": False},
    validate=_validate,
    state_specs=lambda shape, hyper: (StateSpec("momentum_buffer", "signed"),) if hyper["momentum"] else (),
    paper="Sutskever et al. 2013, On the importance of initialization and momentum in deep learning",
    torch_group_extras={"foreach": None, "differentiable": False, "fused": None},
    scalars=sgd_scalars,
    kernels=Kernels(native_tile="sgd", triton_tile="tightfit.kernels.tiles.sgd"),
))
