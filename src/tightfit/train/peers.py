"""Optimizers by name: every tightfit name (``tightfit.OPTIMIZER_NAMES``) plus peers from
other libraries by prefix (``torch:adamw``, ``bnb:adamw_8bit``, ...; the table is
``tightfit.peers.PEERS``, shared with the planner), so train and bench can put tightfit
next to what people use today.

The lr passed is the AdamW-equivalent lr; ``LR_RULES`` adapts it where an update rule
defines lr differently (documented per rule, shown in bench results).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from ..names import OPTIMIZER_NAMES, create_optimizer
from ..peers import LIBRARIES, PEERS
from .errors import TrainInputError, did_you_mean


def _rule_family(name: str) -> str:
    """The update-rule family of an optimizer name (``lion_8bit`` -> ``lion``)."""
    if name in OPTIMIZER_NAMES:
        entry = OPTIMIZER_NAMES[name]
        return entry.cls.rule_for(entry.options).name
    check_optimizer_name(name)
    return PEERS[name].rule.name


# rule family -> (how the AdamW-equivalent lr maps to this rule's lr, why)
LR_RULES: dict[str, tuple[Callable[[float], float | None], str]] = {
    "lion": (lambda lr: lr / 3, "Lion paper: 3-10x smaller lr than AdamW (sign updates have unit size)"),
    "adafactor": (lambda lr: None, "torch-convention Adafactor: lr only caps the relative step; rule default kept"),
    "adafactor_hf": (lambda lr: None, "transformers-convention Adafactor: its relative step refuses an lr"),
    "came": (lambda lr: lr / 10, "CAME has no bias correction: its first steps are ~10x AdamW's at the same lr "
                                 "(measured: held-out 1.285x AdamW at lr, 1.026x at lr/10, default bench)"),
}


def lr_for(name: str, lr: float) -> float | None:
    """The lr to give optimizer ``name`` for an AdamW lr of ``lr`` (None: the rule's default)."""
    rule = LR_RULES.get(_rule_family(name))
    return lr if rule is None else rule[0](lr)


def build_peer(name: str, params, **kwargs: Any) -> torch.optim.Optimizer:
    """The peer ``name`` (a key of ``PEERS``) over ``params``; its library imported only here."""
    peer = PEERS[name]
    module, package = LIBRARIES[peer.library]
    try:
        library = importlib.import_module(module)
    except ImportError as err:
        raise TrainInputError(f"{peer.library}:* optimizers need {package} (pip install {package}): {err}") from None
    return getattr(library, peer.class_name)(params, **{**peer.options, **kwargs})


def known_optimizers() -> list[str]:
    return sorted(OPTIMIZER_NAMES) + sorted(PEERS)


def check_optimizer_name(name: str) -> None:
    if name not in OPTIMIZER_NAMES and name not in PEERS:
        raise TrainInputError(did_you_mean(name, known_optimizers(), "optimizer",
                                           "`tightfit optims` lists all; peers: " + ", ".join(PEERS)))


# rule family -> (options that make the AdamW-equivalent lr and decay mean the same for it, why)
RULE_OPTIONS: dict[str, tuple[Callable[[float, float], dict[str, Any]], str]] = {
    "muon": (lambda lr, wd: {"adjust_lr_fn": "match_rms_adamw", "adamw": {"lr": lr, "weight_decay": wd}},
             "Muon's update scaled to AdamW's RMS (Liu et al. 2025, arXiv 2502.16982), so the AdamW lr applies; "
             "its AdamW groups (vectors) get the same lr and decay"),
}


def build_optimizer(name: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0, *,
                    model: torch.nn.Module | None = None, stand_in: dict[int, torch.Tensor] | None = None,
                    **options: Any) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``params`` with the lr ``lr_for(name, lr)`` and the rule's
    RULE_OPTIONS, if any. Given the ``model`` whose trainable params ``params`` are (through
    ``stand_in``: the tensor stepped for a model param, e.g. its fp32 master), a preset that
    routes by role gets them as groups (``groups_for_model``: Muon). ``options`` (paged, stochastic_rounding ...) go to tightfit optimizers only."""
    check_optimizer_name(name)
    family = _rule_family(name)
    if options and name not in OPTIMIZER_NAMES:
        raise TrainInputError(f"--optim {name!r}: {', '.join(sorted(options))} need a tightfit optimizer "
                              "(tightfit optims lists them)")
    kwargs: dict[str, Any] = {"weight_decay": weight_decay}
    if name in OPTIMIZER_NAMES and family in RULE_OPTIONS:
        kwargs.update(RULE_OPTIONS[family][0](lr, weight_decay))
    rule_lr = lr_for(name, lr)
    if rule_lr is not None:
        kwargs["lr"] = rule_lr
    kwargs.update(options)
    if name not in OPTIMIZER_NAMES:
        return build_peer(name, params, **kwargs)
    if model is not None:
        model_params = [p for p in model.parameters() if p.requires_grad]
        stand_in = stand_in or {}
        if {id(stand_in.get(id(p), p)) for p in model_params} == {id(p) for p in params}:
            params = OPTIMIZER_NAMES[name].cls.groups_for_model(model, model_params, stand_in)
    return create_optimizer(name, params, **kwargs)


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of optimizer state: tightfit's exact ``state_nbytes()``; for other optimizers the
    tensors in ``optimizer.state`` with more than one element (step counters excluded)."""
    if hasattr(optimizer, "state_nbytes"):
        return int(optimizer.state_nbytes())
    return sum(t.nbytes for t in _tensors(list(optimizer.state.values())) if t.numel() > 1)


def quantized_state_summary(optimizer: torch.optim.Optimizer) -> str:
    """'k/n' parameters whose states are stored quantized (8/4-bit codes), or '-' for
    optimizers that do not say. LoRA adapters below min_quantized_numel stay fp32."""
    from ..codecs import Encoded

    if not hasattr(optimizer, "state_nbytes"):
        return "-"
    total = quantized = 0
    for state in optimizer.state.values():
        encoded = [v for v in state.values() if isinstance(v, Encoded)]
        if not encoded:
            continue
        total += 1
        quantized += any(e.codec not in ("fp32", "bf16") for e in encoded)
    return f"{quantized}/{total}"
