"""The rule as a param-group key: one optimizer running different rules on different groups
steps each group exactly as that rule's own optimizer would."""

import copy
import pickle

import pytest
import torch

import tightfit

# (default rule preset, group rule, the group's own options, the preset matching the group rule)
MIXES = [
    ("adamw", "lion", {"lr": 1e-3, "weight_decay": 0.1}, lambda p, **k: tightfit.Lion(p, **k)),
    ("adamw", "sgd", {"lr": 1e-2, "momentum": 0.9}, lambda p, **k: tightfit.SGD(p, **k)),
    ("lion", "adamw", {"lr": 3e-3}, lambda p, **k: tightfit.AdamW(p, **k)),
    ("adamw", "sophiag", {"lr": 1e-3}, lambda p, **k: tightfit.SophiaG(p, **k)),
    ("adamw", "adafactor", {"lr": 1e-2}, lambda p, **k: tightfit.Adafactor(p, **k)),
]
PRESETS = {"adamw": lambda p, **k: tightfit.AdamW(p, **k), "lion": lambda p, **k: tightfit.Lion(p, **k)}


def _models(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)


def _train(opt, first, second, steps=8):
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        second(first(x).tanh()).pow(2).mean().backward()
        opt.step()


def _separately(default, group_options, group_preset, codec, impl):
    first, second = _models()
    opts = [PRESETS[default](first.parameters(), lr=2e-3, state=codec, impl=impl, min_quantized_numel=0),
            group_preset(second.parameters(), state=codec, impl=impl, min_quantized_numel=0, **group_options)]
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    for _ in range(8):
        for opt in opts:
            opt.zero_grad()
        second(first(x).tanh()).pow(2).mean().backward()
        for opt in opts:
            opt.step()
    return first, second


@pytest.mark.parametrize("impl", ["reference", "auto"])
@pytest.mark.parametrize("codec", ["fp32", "8bit"])
@pytest.mark.parametrize("default,group_rule,group_options,group_preset", MIXES,
                         ids=[f"{d}+{g}" for d, g, _, _ in MIXES])
def test_mixed_optimizer_equals_one_optimizer_per_rule(default, group_rule, group_options, group_preset, codec, impl):
    first, second = _models()
    opt = PRESETS[default]([{"params": first.parameters()},
                            {"params": second.parameters(), "rule": group_rule, **group_options}],
                           lr=2e-3, state=codec, impl=impl, min_quantized_numel=0)
    _train(opt, first, second)
    ref_first, ref_second = _separately(default, group_options, group_preset, codec, impl)
    for got, want in zip([*first.parameters(), *second.parameters()],
                         [*ref_first.parameters(), *ref_second.parameters()]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_group_of_another_rule_takes_that_rules_defaults_and_not_the_others_keys():
    first, second = _models()
    opt = tightfit.AdamW([{"params": first.parameters()}, {"params": second.parameters(), "rule": "lion"}],
                         lr=1e-2, state="8bit")
    adamw_group, lion_group = opt.param_groups
    assert adamw_group["lr"] == 1e-2 and adamw_group["rule"] == "adamw"
    assert lion_group["rule"] == "lion" and lion_group["lr"] == tightfit.rules.RULES["lion"].defaults["lr"]
    assert lion_group["betas"] == (0.9, 0.99) and "eps" not in lion_group and "maximize" not in lion_group
    assert lion_group["state"] == "8bit"  # shell options are the optimizer's
    assert [opt.rule_of(g).name for g in opt.param_groups] == ["adamw", "lion"]


@pytest.mark.parametrize("group,message", [
    ({"rule": "lion", "eps": 1e-8}, "eps=1e-08"),
    ({"rule": "nope"}, "unknown update rule 'nope'"),
    ({"rule": 3}, "invalid rule 3"),
    ({"rule": "sgd", "momentum": 2.0}, "momentum"),
], ids=["foreign-hyperparameter", "unknown-rule", "not-a-name", "bad-value"])
def test_bad_group_rule_is_refused_and_not_kept(group, message):
    first, second = _models()
    opt = tightfit.AdamW(first.parameters())
    with pytest.raises(ValueError, match=message):
        opt.add_param_group({"params": list(second.parameters()), **group})
    assert len(opt.param_groups) == 1


def test_base_optimizer_takes_a_rule_name_without_a_preset():
    first, _ = _models()
    opt = tightfit.TightfitOptimizer(first.parameters(), rule="sgd", lr=0.1, momentum=0.9)
    assert opt.rule.name == "sgd" and opt.param_groups[0]["momentum"] == 0.9
    with pytest.raises(TypeError, match="unknown options"):
        tightfit.TightfitOptimizer(first.parameters(), rule="sgd", betas=(0.9, 0.99))


def _mixed(codec="8bit"):
    first, second = _models()
    opt = tightfit.AdamW([{"params": first.parameters()}, {"params": second.parameters(), "rule": "lion"}],
                         state=codec, min_quantized_numel=0)
    _train(opt, first, second, steps=3)
    return opt, first, second


def test_state_dict_round_trip_keeps_each_groups_rule_and_states():
    opt, first, second = _mixed()
    sd = opt.state_dict()
    assert [g["rule"] for g in sd["param_groups"]] == ["adamw", "lion"]
    fresh_first, fresh_second = _models()
    fresh = tightfit.AdamW([{"params": fresh_first.parameters()},
                            {"params": fresh_second.parameters(), "rule": "lion"}], state="8bit", min_quantized_numel=0)
    fresh.load_state_dict(sd)
    assert fresh.state_dict()["state"].keys() == sd["state"].keys()
    for index, saved in sd["state"].items():
        assert set(fresh.state_dict()["state"][index]) == set(saved)


def test_state_dict_with_another_rule_in_a_group_is_refused_unchanged():
    opt, _, _ = _mixed()
    sd = opt.state_dict()
    first, second = _models()
    other = tightfit.AdamW([{"params": first.parameters()}, {"params": second.parameters(), "rule": "sgd"}])
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="runs rule 'lion'"):
        other.load_state_dict(sd)
    assert other.state_dict()["param_groups"] == before["param_groups"]


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))], ids=["deepcopy", "pickle"])
def test_copies_keep_the_rules(clone):
    opt, _, _ = _mixed()
    copied = clone(opt)
    assert copied.rule.name == "adamw"
    assert [copied.rule_of(g).name for g in copied.param_groups] == ["adamw", "lion"]


def test_memory_report_counts_every_groups_states():
    opt, first, second = _mixed(codec="fp32")
    expected = sum(p.numel() * 4 * 2 for p in first.parameters()) + sum(p.numel() * 4 for p in second.parameters())
    assert opt.memory_report().device_bytes == expected == opt.state_nbytes()
