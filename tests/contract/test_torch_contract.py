"""The torch.optim contract, checked on every row of the table (optim_table.py): the checks
torch's generic optimizer tests (test/test_optim.py) make, plus pickling and loads across
libraries. A row excluded from a test skips it with the reason the table gives."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

import tightfit
from compare import weights_only_round_trip
from contract_helpers import (assert_same, assert_same_params, loss_of, lr_options, maximizes, skip_if_excluded,
                              tiny_model, train, trained, twin)
from optim_cases import TOLERANCES
from optim_table import ROWS

pytestmark = [pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS]),
              pytest.mark.filterwarnings("ignore:paged optimizer states have no effect")]


def test_step_goes_the_right_direction(row):
    for kwargs, desc in row.inputs:
        model = tiny_model()
        opt = row.make(model.parameters(), **kwargs)
        first = loss_of(model).item()
        for _ in range(8):
            opt.zero_grad()
            loss = loss_of(model)
            (-loss if maximizes(kwargs) else loss).backward()  # maximize: ascent on -loss
            opt.step()
        assert loss_of(model).item() < first, desc


def test_lr_scheduler_drives_the_group_lr(row):
    model, opt = tiny_model(), None
    opt = row.make(model.parameters(), **lr_options(row))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    first = loss_of(model).item()
    for _ in range(3):
        train(model, opt, 1)
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.125)
    assert loss_of(model).item() < first


def test_tensor_lr_equals_float_lr(row):
    options = lr_options(row)
    model_f, opt_f = trained(row, 3, **options)
    model_t, opt_t = trained(row, 3, **{**options, "lr": torch.tensor(options["lr"])})
    for a, b in zip(model_f.parameters(), model_t.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_param_group_lr_and_weight_decay(row):
    skip_if_excluded(row, "param_group_lr")
    model = tiny_model()
    first, rest = list(model[0].parameters()), list(model[2].parameters())
    opt = row.make([{"params": first, "lr": 0.0, "weight_decay": 0.0}, {"params": rest, "weight_decay": 0.0}],
                   **lr_options(row))
    before = [p.detach().clone() for p in model.parameters()]
    train(model, opt, 2)
    assert all(torch.equal(p, q) for p, q in zip(first, before[:2]))  # lr 0: not moved
    assert all(not torch.equal(p, q) for p, q in zip(rest, before[2:]))
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.0


def test_step_without_gradients_is_a_no_op(row):
    skip_if_excluded(row, "no_grad_no_op")
    model = tiny_model()
    opt = row.make(model.parameters(), weight_decay=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert_same_params_to(model, before)
    assert len(opt.state) == 0
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients, no decay: nothing moves
    assert_same_params_to(model, before)


def assert_same_params_to(model, values):
    assert all(torch.equal(p, v) for p, v in zip(model.parameters(), values))


def test_printing_names_the_class_and_options(row):
    text = repr(row.make(tiny_model().parameters()))
    assert row.cls.__name__ in text and "lr" in text and row.codec in text


def test_state_dict_is_deterministic_and_resumes_exactly(row):
    for kwargs, desc in row.inputs:
        model, opt = trained(row, 2, **kwargs)
        sd = opt.state_dict()
        assert_same(sd, opt.state_dict(), desc)
        other, resumed = twin(model, opt, row, **kwargs)
        resumed.load_state_dict(copy.deepcopy(sd))
        assert_same(resumed.state_dict(), sd, desc)
        train(model, opt, 2)
        train(other, resumed, 2)
        assert_same_params(model, other)
        assert_same(resumed.state_dict(), opt.state_dict(), desc)


def test_older_state_dict_without_newer_flags_loads(row):
    model, opt = trained(row, 2)
    sd = copy.deepcopy(opt.state_dict())
    for group in sd["param_groups"]:
        for flag in ("maximize", "foreach", "fused", "differentiable", "capturable", "impl", "paged",
                     "stochastic_rounding", "rounding_seed"):
            group.pop(flag, None)
    other, resumed = twin(model, opt, row)
    resumed.load_state_dict(sd)
    train(model, opt, 2)
    train(other, resumed, 2)
    assert_same_params(model, other)


def test_named_parameters_state_dict(row):
    skip_if_excluded(row, "named_parameters")
    model = tiny_model()
    opt = row.make(list(model.named_parameters()))
    train(model, opt, 2)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["param_names"] == [n for n, _ in model.named_parameters()]
    other = copy.deepcopy(model)
    resumed = row.make(list(other.named_parameters()))
    resumed.load_state_dict(sd)
    train(model, opt, 1)
    train(other, resumed, 1)
    assert_same_params(model, other)


def test_weights_only_round_trip(row):
    model, opt = trained(row, 2)
    other, resumed = twin(model, opt, row)
    resumed.load_state_dict(weights_only_round_trip(opt.state_dict()))
    train(model, opt, 2)
    train(other, resumed, 2)
    assert_same_params(model, other)


def test_non_tensor_step_loads(row):
    model, opt = trained(row, 2)
    sd = copy.deepcopy(opt.state_dict())
    for state in sd["state"].values():
        state["step"] = float(state["step"])
    other, resumed = twin(model, opt, row)
    resumed.load_state_dict(sd)
    train(model, opt, 2)
    train(other, resumed, 2)
    assert_same_params(model, other)


def test_step_hooks_run_in_order(row):
    model = tiny_model()
    opt = row.make(model.parameters())
    calls = []
    handles = [opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre0", len(o.state)))),
               opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre1", len(o.state)))),
               opt.register_step_post_hook(lambda o, a, k: calls.append(("post0", len(o.state)))),
               opt.register_step_post_hook(lambda o, a, k: calls.append(("post1", len(o.state))))]
    train(model, opt, 1)
    assert [c[0] for c in calls] == ["pre0", "pre1", "post0", "post1"]
    assert calls[0][1] == 0 and calls[2][1] == 4  # pre-hooks run before the step, post-hooks after it
    for h in handles:
        h.remove()
    train(model, opt, 1)
    assert len(calls) == 4


def test_state_dict_hooks_see_and_change_what_torch_hooks_do(row):
    model, opt = trained(row, 2)
    first = next(iter(model.parameters()))
    calls = []

    def pre(o):
        calls.append("pre")
        o.state["test"] = 1  # a non-param key, as torch's own test writes
        o.state[first]["extra"] = torch.tensor(7.0)

    def post(o, sd):
        calls.append("post")
        assert sd["tightfit"]["rule"] == o.rule.name  # post-hooks see the exported (tightfit) dict
        sd["state"].pop("test")
        sd["ran_pre_hook"] = True
        return sd

    def first_post(o, sd):
        calls.append("post-prepended")

    opt.register_state_dict_pre_hook(pre)
    opt.register_state_dict_post_hook(post)
    opt.register_state_dict_post_hook(first_post, prepend=True)
    sd = opt.state_dict()
    assert calls == ["pre", "post-prepended", "post"]
    assert sd["ran_pre_hook"] is True and "test" not in sd["state"]
    assert torch.equal(sd["state"][0]["extra"], torch.tensor(7.0))  # a pre-hook's state edit is exported
    other, resumed = twin(model, opt, row)
    resumed.load_state_dict(sd)
    assert torch.equal(resumed.state[next(iter(other.parameters()))]["extra"], torch.tensor(7.0))


def test_load_state_dict_hooks_see_and_change_what_torch_hooks_do(row):
    model, opt = trained(row, 2, **lr_options(row))
    sd = opt.state_dict()
    other, resumed = twin(model, opt, row, **lr_options(row))
    calls = []

    def pre1(o, state_dict):
        calls.append("pre1")
        state_dict["param_groups"][0]["lr"] = 0.002

    def pre2(o, state_dict):  # returns a new dict: that one is loaded
        calls.append("pre2")
        mine = copy.deepcopy(state_dict)
        mine["param_groups"][0]["lr"] = 0.003
        return mine

    def post(o):
        calls.append("post")
        o.state["ran_post_hook"] = o.param_groups[0]["lr"] == 0.003 and len(o.state) > 0

    resumed.register_load_state_dict_pre_hook(pre2)
    resumed.register_load_state_dict_pre_hook(pre1, prepend=True)
    resumed.register_load_state_dict_post_hook(post)
    resumed.load_state_dict(sd)
    assert calls == ["pre1", "pre2", "post"]
    assert resumed.state["ran_post_hook"] is True  # the post-hook saw the loaded state; its write stays
    assert resumed.param_groups[0]["lr"] == 0.003


def test_deepcopy_copies_all_public_attributes_and_continues(row):
    for kwargs, desc in row.inputs:
        model, opt = trained(row, 2, **kwargs)
        model_copy, opt_copy = copy.deepcopy((model, opt))
        public = lambda o: {k for k in o.__dict__ if not k.startswith("_")}  # noqa: E731
        assert public(opt) == public(opt_copy), desc
        assert opt_copy.rule is opt.rule and getattr(opt_copy, "convention", None) == getattr(opt, "convention", None)
        train(model, opt, 2)
        train(model_copy, opt_copy, 2)
        assert_same_params(model, model_copy)


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickled_optimizer_continues_exactly(row, how, tmp_path):
    model, opt = trained(row, 2)
    if how == "pickle":
        model_copy, opt_copy = pickle.loads(pickle.dumps((model, opt)))
    else:
        torch.save((model, opt), tmp_path / "opt.pt")
        model_copy, opt_copy = torch.load(tmp_path / "opt.pt", weights_only=False)
    assert type(opt_copy) is type(opt) and opt_copy.rule is opt.rule
    train(model, opt, 2)
    train(model_copy, opt_copy, 2)
    assert_same_params(model, model_copy)


BAD_OPTIONS = [({"lr": -0.01}, r"invalid lr: -0.01"), ({"lr": math.inf}, r"invalid lr: inf"),
               ({"lr": math.nan}, r"invalid lr: nan"), ({"weight_decay": -1.0}, r"invalid weight_decay: -1.0"),
               ({"weight_decay": math.inf}, r"invalid weight_decay: inf")]


def test_bad_inputs_raise_value_errors_naming_the_value(row):
    skip_if_excluded(row, "bad_inputs")
    for options, message in BAD_OPTIONS:
        if "lr" in options and row.optimizer == "adafactor_hf":
            options = {**options, "relative_step": False}
        with pytest.raises(ValueError, match=message):
            row.make(tiny_model().parameters(), **options)
    with pytest.raises(ValueError, match=r"dtype float64.*allowed: float32, bfloat16, float16"):
        row.make(tiny_model().double().parameters())
    opt = row.make(tiny_model().parameters())
    groups = copy.deepcopy(opt.state_dict()["param_groups"])
    with pytest.raises(ValueError, match=r"invalid lr: inf"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))], "lr": math.inf})
    with pytest.raises(ValueError, match=r"dtype float64"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]})
    assert_same(opt.state_dict()["param_groups"], groups)  # refused groups are not kept


def test_cross_library_load(row):
    skip_if_excluded(row, "cross_library_load")
    model = tiny_model()
    theirs_model = copy.deepcopy(model)
    theirs = row.torch_cls(theirs_model.parameters(), lr=1e-2)
    train(theirs_model, theirs, 3)
    model.load_state_dict(theirs_model.state_dict())
    ours = row.make(model.parameters(), lr=1e-2)
    ours.load_state_dict(theirs.state_dict())
    train(theirs_model, theirs, 2)
    train(model, ours, 2)
    worst = max(((a - b).abs().max() / b.abs().max()).item()
                for a, b in zip(model.parameters(), theirs_model.parameters()))
    assert worst <= TOLERANCES["cross_library_load"][row.codec]
    back = row.torch_cls(copy.deepcopy(model).parameters(), lr=1.0)
    back.load_state_dict(ours.to_torch_state_dict())
    assert back.param_groups[0]["lr"] == 1e-2


def test_a_state_dict_of_another_rule_is_refused_naming_both(row):
    skip_if_excluded(row, "other_rule_refused")
    model = tiny_model()
    foreign = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9) if row.optimizer != "sgd" \
        else torch.optim.AdamW(model.parameters())
    train(model, foreign, 1)
    opt = row.make(model.parameters())
    before = copy.deepcopy(opt.state_dict())
    rule = "sgd" if row.optimizer != "sgd" else "adam"
    with pytest.raises(ValueError, match=rf"{rule}.*{opt.rule.name!r}|{opt.rule.name!r}.*{rule}"):
        opt.load_state_dict(foreign.state_dict())
    other_rule = tightfit.SGD if row.optimizer != "sgd" else tightfit.Lion
    mine = other_rule(model.parameters(), state=row.codec)
    train(model, mine, 1)
    with pytest.raises(ValueError, match=rf"state_dict is for rule {mine.rule.name!r}, this optimizer runs "
                                         rf"{opt.rule.name!r}"):
        opt.load_state_dict(mine.state_dict())
    assert_same(opt.state_dict(), before)


def test_a_refused_load_leaves_the_optimizer_unchanged(row):
    model, opt = trained(row, 2, **lr_options(row))
    source_model, source = trained(row, 4, seed=1, **lr_options(row))
    good = source.state_dict()
    before = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(good)
    bad["param_groups"][0]["lr"] = 0.5  # would change the hyperparameters first ...
    last = max(bad["state"])
    bad["state"][last]["step"] = torch.tensor(-1.0)  # ... but the last param's step is invalid
    with pytest.raises(ValueError, match=r"param 3: 'step' is -1.0 \(allowed: a finite number >= 0\)"):
        opt.load_state_dict(bad)
    assert_same(opt.state_dict(), before)
    train(model, opt, 1)  # and it still steps
