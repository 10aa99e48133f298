"""What the planner needs to know about an optimizer name: its rule, its state codec,
``min_quantized_numel``, and whether its state is paged to host memory.

Accepted names (``allowed_optimizer_names()`` lists them):

* every registered tightfit name (``tightfit.OPTIMIZER_NAMES``); ``options["paged"]`` is
  read generically (True, or a byte budget such as "4GiB" kept on the device);
* ``paged_<name>`` for a registered ``<name>`` while the paged names are not registered:
  the same optimizer with ``paged=True``;
* peers, by prefix: ``torch:`` and ``bnb:`` names, planned by their documented state
  layout through the equivalent tightfit rule and codec (table ``PEERS``):
  torch keeps states in the dtype of the parameters it steps (fp32 masters -> fp32);
  bnb 8-bit keeps 1 byte per element per state + an fp32 absmax per 256-element block,
  and tensors under 4096 elements in fp32 — exactly tightfit's ``8bit`` codec with
  ``min_quantized_numel=4096``; bnb 32-bit keeps fp32 states.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ..names import OPTIMIZER_NAMES
from ..rules import ADAFACTOR, ADAM, ADAMW, LION, SGD, Rule
from .units import parse_size

# peer name -> (rule, codec or "param-dtype", paged, min_quantized_numel, tightfit equivalent, documented layout)
PEERS: dict[str, tuple[Rule, str, bool, int, str, str]] = {
    "torch:adamw": (ADAMW, "param-dtype", False, 0, "adamw_32bit",
                    "torch.optim.AdamW: exp_avg, exp_avg_sq in the param dtype"),
    "torch:adam": (ADAM, "param-dtype", False, 0, "adam_32bit",
                   "torch.optim.Adam: exp_avg, exp_avg_sq in the param dtype"),
    "torch:sgd": (SGD, "param-dtype", False, 0, "sgd_32bit",
                  "torch.optim.SGD, momentum 0 (HF default): no state"),
    "torch:adafactor": (ADAFACTOR, "param-dtype", False, 0, "adafactor",
                        "torch.optim.Adafactor: row_var, col_var (or variance for vectors)"),
    "bnb:adamw_8bit": (ADAMW, "8bit", False, 4096, "adamw_8bit",
                       "bnb AdamW8bit: uint8 state1/state2 + fp32 absmax per 256; < 4096 elements fp32"),
    "bnb:paged_adamw_8bit": (ADAMW, "8bit", True, 4096, "adamw_8bit",
                             "bnb PagedAdamW8bit: as AdamW8bit, states in paged (host) memory"),
    "bnb:adamw_32bit": (ADAMW, "fp32", False, 4096, "adamw_32bit", "bnb AdamW32bit: fp32 state1/state2"),
    "bnb:paged_adamw_32bit": (ADAMW, "fp32", True, 4096, "adamw_32bit",
                              "bnb PagedAdamW32bit: fp32 states in paged (host) memory"),
    "bnb:lion_8bit": (LION, "8bit", False, 4096, "lion_8bit",
                      "bnb Lion8bit: uint8 state1 + fp32 absmax per 256; < 4096 elements fp32"),
}

PAGED_PREFIX = "paged_"


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

    def build(self, params):
        """The optimizer itself, for simulated and measured steps (CPU)."""
        if self.source == "torch" and self.rule in (ADAMW, ADAM):
            cls = torch.optim.AdamW if self.rule is ADAMW else torch.optim.Adam
            return cls(params, lr=1e-3, fused=True)
        if self.source == "torch" and self.rule is SGD:
            return torch.optim.SGD(params, lr=1e-3)
        if self.source == "torch" and self.rule is ADAFACTOR:
            return torch.optim.Adafactor(params, foreach=False)
        equivalent = self.name if self.source == "tightfit" else PEERS[self.name][4]
        base = equivalent[len(PAGED_PREFIX):] if equivalent not in OPTIMIZER_NAMES else equivalent
        # paged placement does not change what lives on a CPU; build the unpaged optimizer
        # (the reference implementation: the one that runs on fake tensors too)
        options = {k: v for k, v in OPTIMIZER_NAMES[base].options.items() if k != "paged"}
        options["impl"] = "reference"
        rule = OPTIMIZER_NAMES[base].cls.rule_for(options)
        if rule.defaults.get("lr", 0) is None and not rule.defaults.get("relative_step", False):
            options["lr"] = 1e-4  # rules without a default lr (CAME); the value does not change memory
        return OPTIMIZER_NAMES[base].cls(params, **options)


def _pageable(name: str) -> bool:
    """A registered name whose ``paged_`` form is not registered and that is not paged already."""
    return f"{PAGED_PREFIX}{name}" not in OPTIMIZER_NAMES and not OPTIMIZER_NAMES[name].options.get("paged")


def allowed_optimizer_names() -> list[str]:
    return sorted(OPTIMIZER_NAMES) + sorted(f"{PAGED_PREFIX}{n}" for n in OPTIMIZER_NAMES if _pageable(n)) \
        + sorted(PEERS)


def _tightfit_spec(name: str, registered: str, paged: bool | str) -> OptimizerSpec:
    entry = OPTIMIZER_NAMES[registered]
    rule = entry.cls.rule_for(entry.options)
    options = dict(entry.options)
    paged = options.pop("paged", paged)
    codec = options.get("state", "fp32")
    hyper = {k: v for k, v in options.items() if k in rule.defaults}
    return OptimizerSpec(name, rule, str(codec), hyper, options.get("min_quantized_numel", 4096), paged, "tightfit",
                         entry.describe())


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
        rule, codec, paged, mqn, _, layout = PEERS[name]
        return OptimizerSpec(name, rule, codec, {}, mqn, paged, name.split(":")[0], layout)
    else:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(allowed_optimizer_names())}")
    if paged_budget is not None:
        parse_size(paged_budget)  # ValueError naming the value
        spec = dataclasses.replace(spec, paged=paged_budget)
    return spec
