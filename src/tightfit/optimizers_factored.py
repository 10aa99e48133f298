"""Adafactor, CAME and SophiaG: thin names over their rules (rules/adafactor.py,
rules/came.py, rules/sophia.py) x any state codec, and their ``create_optimizer`` names."""

from __future__ import annotations

from typing import Any

import torch

from .codecs import Codec, get_codec
from .dtensor import local_tensor
from .impl.base import grad_usable
from .optimizer import TightfitOptimizer
from .rules import Rule
from .rules.adafactor import ADAFACTOR, ADAFACTOR_HF
from .rules.came import CAME as CAME_RULE
from .rules.sophia import SOPHIAG, sophiag_hessian_update

ADAFACTOR_CONVENTIONS = {"torch": ADAFACTOR, "hf": ADAFACTOR_HF}
_UNSET: Any = object()


class Adafactor(TightfitOptimizer):
    """Adafactor (arXiv 1804.04235) with a factored second moment; ``convention`` picks
    whose semantics — and defaults — you get:

    ============== ======================================= ============================================
    convention     ``"torch"`` (default):                  ``"hf"``: transformers.Adafactor
                   torch.optim.Adafactor
    ============== ======================================= ============================================
    lr             1e-2, only a cap: min(lr, 1/√t)          None (relative step); a number needs
                                                            ``relative_step=False``
    second moment  beta2_decay -0.8                         decay_rate -0.8
    eps            (None, 1e-3); None = float32 eps         (1e-30, 1e-3), ε₁ added to g²
    clipping       d 1.0                                    clip_threshold 1.0
    weight decay   0.0, θ ← θ(1 − lr·λ)                     0.0, θ ← θ − λ·αₜ·θ
    other          maximize False                           scale_parameter True, relative_step True,
                                                            warmup_init False
    beta1          None (tightfit extension)                None
    ============== ======================================= ============================================

    Matrices (and the last two dims of >2-D tensors) keep fp32 row/column statistics;
    vectors and scalars a full fp32 second moment. ``beta1`` adds a first moment (EMA of
    the lr-scaled update) stored through ``state``: ``state="8bit"`` makes it 8-bit.
    All options but ``lr`` are keyword-only, since the two conventions name them
    differently; an option of the other convention raises TypeError listing the allowed.

    >>> opt = Adafactor(model.parameters())                                   # torch.optim defaults
    >>> opt = Adafactor(model.parameters(), convention="hf")                  # transformers defaults
    >>> opt = Adafactor(params, lr=1e-3, convention="hf", relative_step=False, scale_parameter=False,
    ...                 beta1=0.9, state="8bit")                              # HF Trainer + 8-bit momentum
    """

    rule = ADAFACTOR

    @classmethod
    def rule_for(cls, options: dict[str, Any]) -> Rule:
        return ADAFACTOR_CONVENTIONS[options.get("convention", "torch")]

    @property
    def convention(self) -> str:
        """"torch" or "hf": derived from the rule, so that it survives deepcopy and pickling."""
        return next(name for name, rule in ADAFACTOR_CONVENTIONS.items() if rule is self.rule)

    def __init__(self, params, lr=_UNSET, *, convention: str = "torch", state: str | Codec = "fp32",
                 **options: Any):
        if convention not in ADAFACTOR_CONVENTIONS:
            raise ValueError(f"unknown Adafactor convention {convention!r}; allowed: {sorted(ADAFACTOR_CONVENTIONS)}")
        if lr is not _UNSET:
            options["lr"] = lr
        # the convention is the default rule (defaults["rule"]: survives pickling and deepcopy)
        super().__init__(params, rule=ADAFACTOR_CONVENTIONS[convention], state=state, **options)


class CAME(TightfitOptimizer):
    """CAME (arXiv 2307.02047) with came-pytorch 0.1.3 semantics: Adafactor's factored
    second moment, momentum, and a factored confidence (instability) scaling.

    ``lr`` is required (about 0.5-0.9x the AdamW lr, e.g. 2e-4 with weight_decay 1e-2).
    Defaults: eps (1e-30, 1e-16), clip_threshold 1.0, betas (0.9, 0.999, 0.9999),
    weight_decay 0. Only ``exp_avg`` goes through ``state``; factored statistics stay fp32.

    >>> opt = CAME(model.parameters(), lr=2e-4, weight_decay=1e-2, state="8bit")
    """

    rule = CAME_RULE

    def __init__(self, params, lr=None, eps=(1e-30, 1e-16), clip_threshold=1.0, betas=(0.9, 0.999, 0.9999),
                 weight_decay=0.0, *, state: str | Codec = "fp32", **shell_options: Any):
        super().__init__(params, lr=lr, eps=eps, clip_threshold=clip_threshold, betas=betas,
                         weight_decay=weight_decay, state=state, **shell_options)


class SophiaG(TightfitOptimizer):
    """SophiaG (arXiv 2305.14342) with Liuhong99/Sophia semantics; ``exp_avg`` and the
    ``hessian`` EMA both go through ``state``.

    ``bs`` is the number of tokens (samples) per optimizer step — a group hyperparameter
    like lr (sophia.py passes it to ``step``); for GPT-2 small, 480 x 1024. Refresh the
    Hessian every k steps (k = 10 in the paper) with the GNB estimator — a backward of
    the mean loss on labels sampled from the model's own logits, then
    ``update_hessian()``:

    >>> opt = SophiaG(model.parameters(), lr=2e-4, rho=0.05, weight_decay=0.2, bs=batch * seq_len)
    >>> for step, (x, y) in enumerate(loader):
    ...     F.cross_entropy(model(x).flatten(0, -2), y.flatten()).backward()
    ...     opt.step(); opt.zero_grad()
    ...     if step % 10 == 9:
    ...         logits = model(x)
    ...         sampled = torch.distributions.Categorical(logits=logits).sample()
    ...         F.cross_entropy(logits.flatten(0, -2), sampled.flatten()).backward()
    ...         opt.update_hessian(); opt.zero_grad()

    Defaults: lr 1e-4, betas (0.965, 0.99), rho 0.04, weight_decay 0.1, bs 5120.
    """

    rule = SOPHIAG

    def __init__(self, params, lr=1e-4, betas=(0.965, 0.99), rho=0.04, weight_decay=1e-1, *, bs=5120,
                 maximize: bool = False, state: str | Codec = "fp32", **shell_options: Any):
        super().__init__(params, lr=lr, betas=betas, rho=rho, weight_decay=weight_decay, bs=bs,
                         maximize=maximize, state=state, **shell_options)

    @torch.no_grad()
    def update_hessian(self) -> None:
        """h ← β₂h + (1 − β₂)·g⊙g from each param's current ``.grad`` (decode → EMA → encode).

        Params without a gradient are left alone; a gradient with NaN/Inf or an element
        at or above the rule's limit (g² would overflow) leaves h as it was and is counted
        in ``skipped_steps``. The step counter does not move.
        """
        for group in self.param_groups:
            beta2 = group["betas"][1]
            params = [p for p in group["params"] if p.grad is not None]
            for param in params:
                if param.grad.is_sparse:
                    raise RuntimeError(f"SophiaG does not support sparse gradients (parameter of shape "
                                       f"{tuple(param.shape)}); use a dense gradient")
            states = [self.ensure_state(p, group) for p in params]
            self.placement_for(group).run(params, states, lambda ps, ss, b=beta2: _hessian_ema(ps, ss, b))


def _hessian_ema(params: list[torch.Tensor], states: list[dict[str, Any]], beta2: float) -> None:
    """update_hessian's work on states reachable on the params' device (paged ones streamed in)."""
    for param, state in zip(params, states):
        if not grad_usable(param.grad, SOPHIAG.grad_limit):  # a DTensor reduces over all shards
            state["nonfinite_skips"] += 1
            continue
        stored = state["hessian"]
        codec = get_codec(stored.codec)
        grad = local_tensor(param.grad).float()  # h is elementwise: this rank's shard
        codec.store(stored, sophiag_hessian_update(codec.decode(stored), grad, beta2=beta2))

