"""AdEMAMix and Muon: thin names over their rules (rules/ademamix.py, rules/muon.py) x any
state codec, and their ``create_optimizer`` names."""

from __future__ import annotations

from typing import Any

from .codecs import Codec
from .names import register_codec_variants, register_name
from .optimizer import TightfitOptimizer
from .rules.ademamix import ADEMAMIX
from .rules.muon import MUON


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


class Muon(TightfitOptimizer):
    """Muon with torch.optim.Muon semantics and defaults: momentum orthogonalized by
    Newton–Schulz, for the matrices of hidden layers. ``state`` stores the momentum
    (8-bit: 1 byte per parameter). Newton–Schulz runs in float32 (``ns_dtype="bf16"``: as
    torch does); parameters with more than two dims follow ``nd_params`` (rules/muon.py).
    Every parameter must have at least two dims (torch.optim.Muon: exactly two).

    >>> opt = Muon(hidden_matrices, lr=0.02, state="8bit")
    """

    rule = MUON

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None, *,
                 ns_dtype: str = "fp32", nd_params: str = "stacked", state: str | Codec = "fp32",
                 **shell_options: Any):
        super().__init__(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                         ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                         ns_dtype=ns_dtype, nd_params=nd_params, state=state, **shell_options)


def register_family(prefix: str, cls: type[TightfitOptimizer]) -> None:
    """``prefix`` (fp32 states, HF Trainer's ``ademamix``) and ``prefix_{32bit,bf16,8bit,4bit}``;
    the ``paged_`` names follow from them (names.register_paged_variants)."""
    register_name(prefix, cls)
    register_codec_variants(prefix, cls)


register_family("ademamix", AdEMAMix)
register_family("muon", Muon)
