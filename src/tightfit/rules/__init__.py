"""Update rules: each optimizer's math, once, as a pure function (see rules/base.py)."""

from .base import RULES, Rule, StateSpec, get_rule, register_rule
from .adamw import ADAM, ADAMW
from .lion import LION
from .sgd import SGD
from .adafactor import ADAFACTOR, ADAFACTOR_HF
from .came import CAME
from .sophia import SOPHIAG
from . import ademamix, muon  # noqa: F401,E402  (register the AdEMAMix and Muon rules)

__all__ = ["ADAFACTOR", "ADAFACTOR_HF", "ADAM", "ADAMW", "CAME", "LION", "SOPHIAG", "RULES", "SGD", "Rule", "StateSpec", "get_rule", "register_rule"]
