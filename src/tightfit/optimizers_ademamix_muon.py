"""AdEMAMix and Muon: thin presets over their rules (rules/ademamix.py, rules/muon.py) x any
state codec; their ``create_optimizer`` names are rows of names.FAMILIES."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .codecs import Codec
from .optimizer import TightfitOptimizer
from .rules import Rule
from .rules.adamw import ADAMW
from .rules.ademamix import ADEMAMIX
from .rules.muon import MUON

# Roles whose matrices Muon leaves to AdamW (as Keller Jordan's and Moonlight's setups do):
# the input embedding and the output head act on one token / one logit at a time, not as
# a linear map between hidden states that orthogonalization suits.
ADAMW_ROLES = ("embedding", "lm_head")


def runs_muon(ndim: int, role: str = "") -> bool:
    """Muon's routing, shared by ``Muon(model)`` and the planner: matrices (two or more
    dims) that are neither an embedding nor the output head; ``role`` is one of
    ADAMW_ROLES or anything else (a hidden linear, a LoRA adapter, a norm ...)."""
    return ndim >= 2 and role not in ADAMW_ROLES


class AdEMAMix(TightfitOptimizer):
    """AdEMAMix (arXiv 2409.03137) with bitsandbytes' ``AdEMAMix`` semantics and defaults:
    Adam plus a slow EMA of the gradient (β₃) mixed in with weight ``alpha``; ``t_alpha`` and
    ``t_beta3`` warm α and β₃ up over that many steps (the paper sets both to the run's length).
    Three states (fast EMA, slow EMA, second moment) stored as ``state`` says.

    >>> opt = AdEMAMix(model.parameters(), lr=1e-4, t_alpha=100_000, t_beta3=100_000, state="8bit")
    """

    rule = ADEMAMIX

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha=None, t_beta3=None,
                 eps=1e-8, weight_decay=1e-2, *, state: str | Codec = "fp32", **shell_options: Any):
        super().__init__(params, lr=lr, betas=betas, alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3, eps=eps,
                         weight_decay=weight_decay, state=state, **shell_options)


def output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module that maps hidden states to outputs: ``get_output_embeddings()`` where the
    model has it (transformers' models: the LM head), else the last ``nn.Linear`` registered."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if isinstance(head, torch.nn.Module):
        return head
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1] if linears else None


def hidden_matrices(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(Muon's params, the rest) of a model: Muon takes every parameter of two or more dims
    except embedding tables (``nn.Embedding``/``EmbeddingBag`` weights) and the output head's;
    the rest are those, biases, norms and other vectors. A tied head is an embedding (and each
    parameter is listed once)."""
    role = {id(p): "embedding" for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))
            for p in m.parameters(recurse=False)}
    head = output_head(model)
    if head is not None:
        role |= {id(p): "lm_head" for p in head.parameters() if id(p) not in role}
    hidden, rest = [], []
    for p in model.parameters():
        (hidden if runs_muon(p.ndim, role.get(id(p), "")) else rest).append(p)
    return hidden, rest


def model_groups(model: torch.nn.Module, params: list[torch.Tensor] | None = None,
                 stand_in: Mapping[int, torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """Muon's param groups for ``model`` as hidden_matrices splits it, restricted to ``params``
    (default: those requiring grad), each replaced by ``stand_in[id(param)]`` where given (the
    fp32 master a trainer steps instead of a bf16 param); AdamW's group carries ``"rule"``."""
    wanted = [p for p in model.parameters() if p.requires_grad] if params is None else params
    ids = {id(p) for p in wanted}
    stand_in = stand_in or {}
    hidden, rest = (
        [stand_in.get(id(p), p) for p in part if id(p) in ids] for part in hidden_matrices(model))
    return [g for g in ({"params": hidden}, {"params": rest, "rule": "adamw"}) if g["params"]]


def route(params, adamw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Param groups for Muon: a module is split by hidden_matrices; an iterable of params (or of
    (name, param) pairs) by dims: two or more to Muon, fewer to AdamW. Groups given as dicts
    stay as given (a group without "rule" is Muon's); ``adamw`` fills the AdamW groups' options."""
    if isinstance(params, torch.nn.Module):
        hidden, rest = hidden_matrices(params)
    else:
        items = list(params)
        if items and all(isinstance(item, dict) for item in items):
            return [{**adamw, **group} if group.get("rule") == "adamw" else dict(group) for group in items]

        def dims(item) -> int:
            return (item[1] if isinstance(item, tuple) else item).ndim

        hidden, rest = [i for i in items if dims(i) >= 2], [i for i in items if dims(i) < 2]
    groups = [{"params": hidden}] if hidden else []
    if rest:
        groups.append({**adamw, "params": rest, "rule": "adamw"})
    return groups  # empty: torch refuses the empty parameter list


class Muon(TightfitOptimizer):
    """Muon with torch.optim.Muon semantics and defaults (momentum orthogonalized by
    Newton–Schulz) on hidden matrices, and AdamW on everything else, in one optimizer:

    - ``Muon(model)``: Muon on the hidden matrices; embeddings, the output head (the model's
      ``get_output_embeddings()``, else its last ``nn.Linear``), biases and norms run AdamW
      (hidden_matrices).
    - ``Muon(model.parameters())`` or ``named_parameters()``: split by dims only — params of two
      or more dims run Muon (embeddings and the head too: pass the module to route them).
    - Param groups (dicts): as given; a group runs Muon unless it names another ``"rule"``.

    ``adamw`` (a dict) sets the AdamW groups' options (``lr``, ``betas``, ``eps``,
    ``weight_decay``, ``state`` ...; default: AdamW's defaults, lr 1e-3). ``state`` stores
    Muon's momentum and AdamW's moments (8-bit: 1 byte per parameter for Muon). Newton–Schulz
    runs in float32 (``ns_dtype="bf16"``: as torch does); params of more than two dims follow
    ``nd_params`` (rules/muon.py).

    >>> opt = Muon(model, lr=0.02, adamw={"lr": 3e-4, "betas": (0.9, 0.95)}, state="8bit")
    """

    rule = MUON

    @classmethod
    def rule_for_param(cls, options: dict[str, Any], shape: tuple[int, ...], role: str = "") -> Rule:
        return MUON if runs_muon(len(shape), role) else ADAMW

    @classmethod
    def groups_for_model(cls, model, params, stand_in=None) -> list:
        return model_groups(model, params, stand_in)

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None, *,
                 ns_dtype: str = "fp32", nd_params: str = "auto", adamw: Mapping[str, Any] | None = None,
                 state: str | Codec = "fp32", **shell_options: Any):
        if adamw is not None and not isinstance(adamw, Mapping):
            raise ValueError(f"invalid adamw: {adamw!r} (allowed: None or a dict of AdamW group options)")
        super().__init__(route(params, dict(adamw or {})), lr=lr, weight_decay=weight_decay, momentum=momentum,
                         nesterov=nesterov, ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                         adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype, nd_params=nd_params, state=state,
                         **shell_options)
