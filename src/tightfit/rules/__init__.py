"""Update rules: each optimizer's math, once, as a pure function (see rules/base.py)."""

from .base import RULES, Rule, StateSpec, get_rule, register_rule
from .adamw import ADAM, ADAMW
from .lion import LION
from .sgd import SGD

__all__ = ["ADAM", "ADAMW", "LION", "RULES", "SGD", "Rule", "StateSpec", "get_rule", "register_rule"]
