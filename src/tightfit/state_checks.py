"""Checks of a state_dict read from outside, before any of it is used (state_io.py).

- its structure (dict / list / hashable param ids, as torch's own loader expects);
- which rule wrote it: hyperparameters or states that belong to another rule and not to
  the loading optimizer's are refused, naming both (a torch.optim.SGD dict must not load
  into AdamW and silently drop its momentum);
- scalar counters (``step`` finite and >= 0, ``nonfinite_skips`` a count) and plain
  torch.optim state tensors (floating, finite, the state's shape, >= 0 for second moments).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch

from .rules import RULES, Rule

# torch.optim group flags that have no meaning for tightfit and are dropped on import.
TORCH_ONLY_GROUP_KEYS = ("foreach", "fused", "capturable", "differentiable")
# A key another rule owns, with the one value under which our rule means the same: the
# documented conversions (torch.optim.AdamW groups say decoupled_weight_decay=True).
SAME_MEANING = {"adamw": {"decoupled_weight_decay": True}}
# Optional states turned on when listing every state name a rule can keep.
_OPTIONAL_STATES_ON = {"momentum": 0.9, "beta1": 0.9}


def same(value: Any, expected: Any) -> bool:
    """``value == expected`` for plain values only: a saved field may be anything (a tensor
    compared with == gives a tensor, whose truth value can raise)."""
    return type(value) is type(expected) and value == expected


def check_structure(sd: Any) -> None:
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise ValueError("not an optimizer state_dict: expected a dict with 'state' and 'param_groups'")
    if not isinstance(sd["state"], dict):
        raise ValueError(f"state_dict['state'] is a {type(sd['state']).__name__}, expected a dict")
    groups = sd["param_groups"]
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
        raise ValueError("state_dict['param_groups'] must be a list of dicts")
    seen: set = set()
    for i, group in enumerate(groups):
        ids = group.get("params")
        if not isinstance(ids, (list, tuple)):
            raise ValueError(f"state_dict param group {i} has params {ids!r}, expected a list of param ids")
        for pid in ids:
            try:
                hash(pid)
            except TypeError:
                raise ValueError(f"state_dict param group {i}: param id {pid!r} is not hashable") from None
            if pid in seen:
                raise ValueError(f"state_dict lists param id {pid!r} twice")
            seen.add(pid)


@lru_cache(maxsize=None)
def _state_owners() -> dict[str, frozenset[str]]:
    """state name -> the registered rules that can keep it (matrices and vectors)."""
    owners: dict[str, set[str]] = {}
    for rule in RULES.values():
        hyper = {**rule.defaults, **{k: v for k, v in _OPTIONAL_STATES_ON.items() if k in rule.defaults}}
        for shape in (torch.Size([4, 4]), torch.Size([4])):
            for spec in rule.state_specs(shape, hyper):
                owners.setdefault(spec.name, set()).add(rule.name)
    return {name: frozenset(rules) for name, rules in owners.items()}


def foreign_keys(rule: Rule, group: dict[str, Any]) -> dict[str, list[str]]:
    """Hyperparameters in a saved group that only other rules have: key -> those rules."""
    equivalent = SAME_MEANING.get(rule.name, {})
    foreign = {}
    for key, value in group.items():
        if key in rule.defaults or key in rule.torch_group_extras or key in TORCH_ONLY_GROUP_KEYS:
            continue
        if key in equivalent and same(value, equivalent[key]):
            continue
        owners = sorted(r.name for r in RULES.values() if key in r.defaults and r.name != rule.name)
        if owners:
            foreign[key] = owners
    return foreign


def check_groups_belong(rules: list[Rule], groups: list[dict[str, Any]]) -> None:
    """Each saved group against the rule of the live group it loads into."""
    for i, (rule, group) in enumerate(zip(rules, groups)):
        foreign = foreign_keys(rule, group)
        if foreign:
            rules = sorted({r for owners in foreign.values() for r in owners})
            details = ", ".join(f"{k}={group[k]!r}" for k in foreign)
            raise ValueError(f"state_dict param group {i} has {details}: hyperparameters of rule(s) {rules}, not of "
                             f"rule {rule.name!r} that this optimizer runs; load it into the matching optimizer")


def check_states_belong(rule: Rule, saved: dict[str, Any], kept: list[str], where: str) -> None:
    """Refuse states that some rule keeps but this rule does not keep for this param."""
    owners = _state_owners()
    for name in saved:
        if name in owners and name not in kept:
            others = sorted(owners[name] - {rule.name})
            whose = f"a state of rule(s) {others}" if others else f"a state rule {rule.name!r} keeps only with other hyperparameters"
            raise ValueError(f"{where}: saved state {name!r} is {whose}; rule {rule.name!r} keeps {kept} here. "
                             "Refusing to load it and drop that state silently")


def scalar(where: str, value: Any, *, integral: bool = False) -> float:
    """A saved counter as a float: a real number or a one-element real tensor, finite, >= 0."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{where} is a {value.dtype} tensor of shape {tuple(value.shape)}; "
                             "expected one real number")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} is {value!r}; expected a number")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (integral and number != int(number)):
        kind = "a whole number >= 0" if integral else "a finite number >= 0"
        raise ValueError(f"{where} is {value!r} (allowed: {kind})")
    return number


def check_plain_state(where: str, value: torch.Tensor, shape: torch.Size, kind: str) -> None:
    """A torch.optim state tensor about to be encoded into a tightfit state."""
    if value.layout != torch.strided or value.is_meta or not value.is_floating_point():
        raise ValueError(f"{where} is a {value.layout} {value.dtype} tensor; expected a dense floating tensor")
    if value.shape != shape:
        raise ValueError(f"{where} has shape {tuple(value.shape)}, parameter needs {tuple(shape)}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{where} holds NaN or Inf (allowed: finite values)")
    if kind == "unsigned" and bool((value < 0).any()):
        raise ValueError(f"{where} holds negative values (allowed: values >= 0 for a second moment)")
