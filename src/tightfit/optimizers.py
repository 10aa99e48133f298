"""User-facing optimizers: thin names over the rule x codec composition.

Each class lists its rule's hyperparameters and ``state``; the shell's other options
(``min_quantized_numel``, ``impl``, ``paged``, ``stochastic_rounding``, ``rounding_seed``) pass
through ``**shell_options`` (TightfitOptimizer documents them; unknown ones raise).
"""

from __future__ import annotations

from typing import Any

from .codecs import Codec
from .optimizer import TightfitOptimizer
from .rules import ADAM, ADAMW, LION, SGD as SGD_RULE


class AdamW(TightfitOptimizer):
    """AdamW with torch.optim.AdamW semantics; ``state`` picks how m and v are stored.

    >>> opt = AdamW(model.parameters(), lr=2e-4, state="8bit")
    """

    rule = ADAMW

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *,
                 amsgrad: bool = False, maximize: bool = False, state: str | Codec = "fp32",
                 **shell_options: Any):
        if amsgrad is not False:
            raise ValueError(f"amsgrad={amsgrad!r} is not supported by tightfit (allowed: amsgrad=False)")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                         state=state, **shell_options)


class Adam(TightfitOptimizer):
    """Adam with torch.optim.Adam semantics (L2 decay coupled into the gradient)."""

    rule = ADAM

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 amsgrad: bool = False, maximize: bool = False, decoupled_weight_decay: bool = False,
                 state: str | Codec = "fp32", **shell_options: Any):
        if amsgrad is not False:
            raise ValueError(f"amsgrad={amsgrad!r} is not supported by tightfit (allowed: amsgrad=False)")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                         decoupled_weight_decay=decoupled_weight_decay, state=state,
                         **shell_options)


class Lion(TightfitOptimizer):
    """Lion (arXiv 2302.06675): use a 3-10x smaller lr and larger weight decay than AdamW."""

    rule = LION

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *,
                 state: str | Codec = "fp32", **shell_options: Any):
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay, state=state,
                         **shell_options)


class SGD(TightfitOptimizer):
    """SGD with momentum, dampening and Nesterov (torch.optim.SGD semantics)."""

    rule = SGD_RULE

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize: bool = False, state: str | Codec = "fp32", **shell_options: Any):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov, maximize=maximize, state=state,
                         **shell_options)
