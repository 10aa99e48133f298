"""Muon (Jordan et al. 2024, Muon: An optimizer for hidden layers in neural networks;
Liu et al. 2025, Muon is Scalable for LLM Training, arXiv 2502.16982), with
torch.optim.Muon semantics: the momentum of a matrix, orthogonalized by a Newton–Schulz
iteration, is the step.

One state, ``momentum_buffer`` (signed, through the group's codec): quantizing it costs
nothing in stability, since the orthogonalization divides by its norm. The rule reduces
over the whole matrix (``elementwise=False``).

Parameters with more than two dims (``nd_params``):
- ``"stacked"``: the leading dims index a batch of matrices made of the last two dims, each
  orthogonalized on its own — stacked experts (E, d_out, d_in), Q/K/V stacks.
- ``"flatten"``: one matrix (d₀, d₁·d₂·…), the convention of Keller Jordan's and Moonlight's
  Muon for convolution filters (out, in, kh, kw).
- ``"auto"`` (default, Keller Jordan's Muon): 3-D stacked, 4-D and more flattened.
One-dim parameters (biases, norms) are not Muon's: give them another rule.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import (Rule, StateSpec, _number, check_bool, check_nonnegative, check_positive, check_unit_interval,
                   register_rule)

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
NS_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ND_PARAMS = ("auto", "stacked", "flatten")
MAX_NS_STEPS = 100  # torch.optim.Muon's limit (exclusive)
MOMENTUM = (StateSpec("momentum_buffer", "signed"),)


def check_matrix(shape: torch.Size) -> None:
    """Muon orthogonalizes matrices: a parameter of fewer than two dims is refused."""
    if len(shape) < 2:
        raise ValueError(f"Muon needs a matrix; got a parameter of shape {tuple(shape)} (give 1-D params, "
                         "biases and norms, another rule, e.g. a param group with rule 'adamw')")


def as_matrices(tensor: torch.Tensor, nd_params: str) -> torch.Tensor:
    """The matrix (2-D) or batch of matrices (3-D) that Muon orthogonalizes."""
    check_matrix(tensor.shape)
    if tensor.ndim == 2:
        return tensor
    if nd_params == "flatten" or (nd_params == "auto" and tensor.ndim > 3):
        return tensor.reshape(tensor.shape[0], -1)
    return tensor.reshape(-1, *tensor.shape[-2:])


def newton_schulz(matrices: torch.Tensor, coefficients, steps: int, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """The quintic Newton–Schulz iteration toward U·Vᵀ of each matrix M = U·S·Vᵀ:

        X ← M / max(‖M‖_F, ε)          (transposed first when taller than wide)
        X ← a·X + (b·A + c·A²)·X,  A = X·Xᵀ,   ``steps`` times

    The Frobenius norm bounds the spectral one, so every singular value starts in [0, 1];
    the default (a, b, c) = (3.4445, −4.775, 2.0315) maps [0, 1.2024] into itself and
    drives each value toward [0.68, 1.13], not to 1 (fewer steps, as Muon intends).
    Runs in ``dtype`` (torch.optim.Muon: bfloat16) and returns that dtype.
    """
    a, b, c = coefficients
    batched = matrices.ndim == 3
    x = matrices.to(dtype)  # a copy whenever dtype differs; normalized out of place below
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    norm = x.norm(dim=(-2, -1), keepdim=True) if batched else x.norm()
    x = x / norm.clamp(min=eps)
    mul_add = torch.baddbmm if batched else torch.addmm  # input·beta + alpha·(m1 @ m2), one rounding
    for _ in range(steps):
        gram = x @ x.mT
        poly = mul_add(gram, gram, gram, beta=b, alpha=c)
        x = mul_add(x, poly, x, beta=a)
    return x.mT if tall else x


def adjusted_lr(lr, adjust_lr_fn: str | None, rows: int, cols: int):
    """η scaled so the step's RMS does not depend on the matrix shape:
    None/"original" √max(1, rows/cols) (Keller Jordan); "match_rms_adamw" 0.2·√max(rows, cols)
    (Moonlight: reuse AdamW's lr and decay)."""
    if adjust_lr_fn == "match_rms_adamw":
        return lr * (0.2 * math.sqrt(max(rows, cols)))
    return lr * math.sqrt(max(1, rows / cols))


def muon_update(param, grad, state, *, step, lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
                adjust_lr_fn, ns_dtype, nd_params):
    """Muon with torch.optim.Muon semantics:

        B ← μ·B + (1 − μ)·g                  (torch's lerp form)
        U ← (1 − μ)·g + μ·B  if nesterov,  else B
        O ← NSₖ(U)                           newton_schulz, on each matrix (as_matrices)
        θ ← θ · (1 − η·λ)
        θ ← θ − η′ · O,   η′ = adjusted_lr(η, adjust_lr_fn, rows, cols)

    ``ns_dtype`` "fp32" (default) runs the iteration in float32; "bf16" rounds as
    torch.optim.Muon does (its result, step for step, and faster on GPUs). Defaults: lr 1e-3,
    weight_decay 0.1, momentum 0.95, nesterov True, ns_coefficients (3.4445, −4.775, 2.0315),
    eps 1e-7, ns_steps 5, adjust_lr_fn None, ns_dtype "fp32", nd_params "auto".
    """
    buf = state["momentum_buffer"].lerp(grad, 1 - momentum)
    direction = grad.lerp(buf, momentum) if nesterov else buf
    matrices = as_matrices(direction, nd_params)
    ortho = newton_schulz(matrices, ns_coefficients, ns_steps, eps, NS_DTYPES[ns_dtype])
    rows, cols = matrices.shape[-2:]
    param = param * (1 - lr * weight_decay)
    # one rounding, as torch's param.add_(O, alpha=−η′)
    param = torch.add(param, ortho.float().reshape(param.shape), alpha=-adjusted_lr(lr, adjust_lr_fn, rows, cols))
    return param, {"momentum_buffer": buf}


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if not any(value is a or (isinstance(value, str) and value == a) for a in allowed):
        raise ValueError(f"invalid {name}: {value!r} (allowed: {', '.join(map(repr, allowed))})")


def _validate(h) -> None:
    check_nonnegative("lr", h["lr"])
    check_nonnegative("weight_decay", h["weight_decay"])
    check_unit_interval("momentum", h["momentum"])
    check_bool("nesterov", h["nesterov"])
    coefficients = h["ns_coefficients"]
    if not isinstance(coefficients, (tuple, list)) or len(coefficients) != 3:
        raise ValueError(f"invalid ns_coefficients: {coefficients!r} (allowed: a tuple of 3 numbers (a, b, c))")
    for i, value in enumerate(coefficients):
        _number(f"ns_coefficients[{i}]", value)
    check_positive("eps", h["eps"])
    steps = h["ns_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps < MAX_NS_STEPS:
        raise ValueError(f"invalid ns_steps: {steps!r} (allowed: an int in [0, {MAX_NS_STEPS}))")
    _choice("adjust_lr_fn", h["adjust_lr_fn"], ADJUST_LR_FNS)
    _choice("ns_dtype", h["ns_dtype"], tuple(NS_DTYPES))
    _choice("nd_params", h["nd_params"], ND_PARAMS)
    for p in h.get("params", ()):  # a param group: refuse what Muon cannot step now, not at step()
        if isinstance(p, torch.Tensor) and p.ndim < 2:
            as_matrices(p, h["nd_params"])


MUON = register_rule(Rule(
    name="muon",
    update=muon_update,
    defaults={"lr": 1e-3, "weight_decay": 0.1, "momentum": 0.95, "nesterov": True,
              "ns_coefficients": (3.4445, -4.775, 2.0315), "eps": 1e-7, "ns_steps": 5, "adjust_lr_fn": None,
              "ns_dtype": "fp32", "nd_params": "auto"},
    validate=_validate,
    state_specs=lambda shape, hyper: MOMENTUM,  # shape probes of any ndim (state checks, planner)
    paper="Jordan et al. 2024, Muon: An optimizer for hidden layers in neural networks; Liu et al. 2025, "
          "Muon is Scalable for LLM Training, arXiv 2502.16982",
    elementwise=False,
    check_param=check_matrix,
))
