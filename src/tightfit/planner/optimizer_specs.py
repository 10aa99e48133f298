"""What the planner needs to know about an optimizer name: its rule, its state codec,
``min_quantized_numel``, and whether its state is paged or offloaded to host memory.

Accepted names (``allowed_optimizer_names()`` lists them):

* every registered tightfit name (``tightfit.OPTIMIZER_NAMES``); ``options["paged"]`` is
  read generically (True, or a byte budget such as "4GiB" kept on the device), and so is
  ``options["offload"]`` (``offload_<name>``: master weights, states and step on the host);
* ``paged_<name>`` for a registered ``<name>`` while the paged names are not registered:
  the same optimizer with ``paged=True``;
* peers, by prefix: ``torch:`` and ``bnb:`` names, planned by their documented state
  layout through the equivalent tightfit rule and codec (``tightfit.peers.PEERS``, the
  table train builds them from).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..names import OPTIMIZER_NAMES, PAGED_PREFIX
from ..peers import PEERS
from ..rules import Rule
from .units import parse_size

# how a torch peer's step is measured for its temporaries: fused Adam(W) updates one tensor
# per call (its working set is one parameter's); the lr does not change memory
MEASURED_TORCH_OPTIONS: dict[str, dict[str, Any]] = {"AdamW": {"lr": 1e-3, "fused": True},
                                                     "Adam": {"lr": 1e-3, "fused": True},
                                                     "SGD": {"lr": 1e-3}, "Adafactor": {"foreach": False}}


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    rule: Rule
    codec: str  # a codec name, or "param-dtype" (torch: states follow the stepped params)
    hyper: dict[str, Any] = field(default_factory=dict)
    min_quantized_numel: int = 4096
    paged: bool | str = False
    source: str = "tightfit"
    layout: str = ""
    routes: Callable[[tuple[int, ...], str], Rule] | None = None  # (shape, role) -> rule, when it varies
    offload: bool = False  # placement/offload.py: fp32 masters, states and the step on the host

    def rule_for(self, shape: tuple[int, ...], role: str = "") -> Rule:
        """The rule a trainable tensor of ``shape`` and ``role`` ("embedding", "lm_head" ...)
        runs under this optimizer given the whole model (Muon sends embeddings to AdamW)."""
        return self.rule if self.routes is None else self.routes(shape, role)

    def for_param(self, shape: tuple[int, ...], role: str = "") -> "OptimizerSpec":
        """This spec as it applies to one trainable tensor: itself, or (routed to another rule)
        that rule with its defaults, the same codec and placement, named ``<name>:<rule>``."""
        rule = self.rule_for(shape, role)
        if rule is self.rule:
            return self
        return dataclasses.replace(self, name=f"{self.name}:{rule.name}", rule=rule, hyper={}, routes=None)

    def codec_for(self, stepped_dtype: torch.dtype) -> str:
        if self.codec != "param-dtype":
            return self.codec
        return "fp32" if stepped_dtype == torch.float32 else "bf16"  # bf16 and fp16 both 2 bytes

    def device_budget(self) -> int | None:
        """Bytes of state a paged optimizer keeps on the device (None: all, 0: none)."""
        if self.paged is False:
            return None
        if self.paged is True:
            return 0
        return parse_size(str(self.paged))

    def build(self, params, model: torch.nn.Module | None = None, stand_in: dict | None = None):
        """The optimizer itself, for simulated and measured steps (CPU); given the ``model``
        (whose trainable params ``params`` are, through ``stand_in`` masters), grouped by role
        as train groups them (Muon)."""
        if self.source == "torch":
            peer = PEERS[self.name]
            options = {**peer.options, **MEASURED_TORCH_OPTIONS.get(peer.class_name, {})}
            return getattr(torch.optim, peer.class_name)(params, **options)
        equivalent = self.name if self.source == "tightfit" else PEERS[self.name].equivalent
        base = equivalent[len(PAGED_PREFIX):] if equivalent not in OPTIMIZER_NAMES else equivalent
        # paged and offload placements do not change what lives on a CPU; build the unpaged
        # optimizer (the reference implementation: the one that runs on fake tensors too)
        options = {k: v for k, v in OPTIMIZER_NAMES[base].options.items() if k not in ("paged", "offload")}
        options["impl"] = "reference"
        rule = OPTIMIZER_NAMES[base].cls.rule_for(options)
        if rule.defaults.get("lr", 0) is None and not rule.defaults.get("relative_step", False):
            options["lr"] = 1e-4  # rules without a default lr (CAME); the value does not change memory
        cls = OPTIMIZER_NAMES[base].cls
        if model is not None:
            params = cls.groups_for_model(model, [p for p in model.parameters() if p.requires_grad], stand_in)
        return cls(params, **options)


def _pageable(name: str) -> bool:
    """A registered name whose ``paged_`` form is not registered and that is not paged (or offloaded) already."""
    options = OPTIMIZER_NAMES[name].options
    return f"{PAGED_PREFIX}{name}" not in OPTIMIZER_NAMES and not options.get("paged") and not options.get("offload")


def allowed_optimizer_names() -> list[str]:
    return sorted(OPTIMIZER_NAMES) + sorted(f"{PAGED_PREFIX}{n}" for n in OPTIMIZER_NAMES if _pageable(n)) \
        + sorted(PEERS)


def _tightfit_spec(name: str, registered: str, paged: bool | str) -> OptimizerSpec:
    entry = OPTIMIZER_NAMES[registered]
    rule = entry.cls.rule_for(entry.options)
    options = dict(entry.options)
    paged = options.pop("paged", paged)
    offload = bool(options.pop("offload", False))
    codec = options.get("state", "fp32")
    hyper = {k: v for k, v in options.items() if k in rule.defaults}
    routes = functools.partial(entry.cls.rule_for_param, dict(entry.options))
    return OptimizerSpec(name, rule, str(codec), hyper, options.get("min_quantized_numel", 4096), paged, "tightfit",
                         entry.describe(), routes, offload)


def resolve_optimizer(name: str, paged_budget: str | None = None) -> OptimizerSpec:
    """The spec for ``name``; ValueError naming the value and the allowed names.

    ``paged_budget`` (tightfit names): page the state, keeping up to this size on the device."""
    if name in OPTIMIZER_NAMES:
        spec = _tightfit_spec(name, name, False)
    elif (name.startswith(PAGED_PREFIX) and name[len(PAGED_PREFIX):] in OPTIMIZER_NAMES
          and _pageable(name[len(PAGED_PREFIX):])):
        spec = _tightfit_spec(name, name[len(PAGED_PREFIX):], True)
    elif name in PEERS:
        if paged_budget is not None:
            raise ValueError(f"--paged-budget needs a tightfit optimizer (got {name!r})")
        peer = PEERS[name]
        hyper = {k: v for k, v in peer.options.items() if k in peer.rule.defaults}
        return OptimizerSpec(name, peer.rule, peer.codec, hyper, peer.min_quantized_numel, peer.paged, peer.library,
                             peer.layout)
    else:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(allowed_optimizer_names())}")
    if paged_budget is not None:
        if spec.offload:
            raise ValueError(f"--paged-budget with {name!r}: offload already keeps the whole state in host memory")
        parse_size(paged_budget)  # ValueError naming the value
        spec = dataclasses.replace(spec, paged=paged_budget)
    return spec
