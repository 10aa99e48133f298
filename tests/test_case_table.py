"""The case table (optim_cases.py) covers every registered rule, and each preset class's
defaults are its rule's: a new rule without a row, or a default written differently in
the class and the rule, fails here."""

import inspect

import pytest
import torch

import tightfit
from optim_cases import CASES, MATRIX, TOLERANCES

# preset class, options selecting the convention, rule name, options the rule requires
PRESETS = [
    (tightfit.AdamW, {}, "adamw", {}),
    (tightfit.Adam, {}, "adam", {}),
    (tightfit.Lion, {}, "lion", {}),
    (tightfit.SGD, {}, "sgd", {}),
    (tightfit.SophiaG, {}, "sophiag", {}),
    (tightfit.CAME, {}, "came", {"lr": 1e-3}),  # CAME has no default lr (None: it must be given)
    (tightfit.Adafactor, {}, "adafactor", {}),
    (tightfit.Adafactor, {"convention": "torch"}, "adafactor", {}),
    (tightfit.Adafactor, {"convention": "hf"}, "adafactor_hf", {}),
]
PRESET_IDS = [f"{cls.__name__}{''.join(f'-{v}' for v in conv.values())}" for cls, conv, _, _ in PRESETS]


@pytest.mark.parametrize("cls, convention, rule, required", PRESETS, ids=PRESET_IDS)
def test_signature_defaults_are_the_rules(cls, convention, rule, required):
    defaults = tightfit.RULES[rule].defaults
    exposed = {name: p.default for name, p in inspect.signature(cls).parameters.items() if name in defaults}
    assert exposed or cls is tightfit.Adafactor  # Adafactor's options are keyword-only **options
    for name, default in exposed.items():
        if type(default) is object:  # a sentinel: "the convention's default", checked below
            continue
        assert default == defaults[name], f"{cls.__name__}({name}={default!r}) but rule {rule!r} has {defaults[name]!r}"


@pytest.mark.parametrize("cls, convention, rule, required", PRESETS, ids=PRESET_IDS)
def test_a_preset_built_without_options_gets_the_rules_defaults(cls, convention, rule, required):
    opt = cls([torch.nn.Parameter(torch.zeros(3))], **convention, **required)
    assert opt.rule is tightfit.RULES[rule]
    group = opt.param_groups[0]
    for name, default in tightfit.RULES[rule].defaults.items():
        if name not in required:
            assert group[name] == default, f"{cls.__name__}: group {name}={group[name]!r}, rule has {default!r}"


def test_every_registered_rule_has_a_matrix_row_and_every_row_a_registered_rule():
    assert sorted(c.rule for c in MATRIX) == sorted(tightfit.RULES), "one rule x codec matrix row per rule"
    assert {c.rule for c in CASES} <= set(tightfit.RULES)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_each_row_builds_an_optimizer_of_its_rule(case):
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    opt = case.make(params, state="8bit", impl="reference")
    assert opt.rule.name == case.rule
    assert all(g["state"] == "8bit" and g["impl"] == "reference" for g in opt.param_groups)
    assert case.maximize == bool(opt.param_groups[0].get("maximize", False))
    assert not (case.matrix and case.maximize), "matrix rows train the toy loss down"
    assert case.reference_tol in TOLERANCES
