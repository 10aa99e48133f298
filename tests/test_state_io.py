"""state_dict: bit-exact resume for every rule x codec, torch.optim interop, clear errors."""

import copy

import pytest
import torch

import tightfit
from compare import assert_same_state, weights_only_round_trip
from optim_cases import CODECS, TOLERANCES, rule_by_codec
from toy_problem import small_mlp, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: far faster on one thread on a shared CPU


def assert_same_states(opt_a, opt_b, params_a, params_b):
    for pa, pb in zip(params_a, params_b):
        assert_same_state(opt_a.state[pa], opt_b.state[pb])


@pytest.mark.parametrize("case, codec", rule_by_codec())
def test_resume_mid_run_is_bit_exact(case, codec):
    model = small_mlp()
    opt = case.make(model.parameters(), state=codec, min_quantized_numel=1000)
    train(model, opt, 4)
    resumed_model = copy.deepcopy(model)
    resumed = case.make(resumed_model.parameters(), state="fp32", min_quantized_numel=1000)
    resumed.load_state_dict(weights_only_round_trip(opt.state_dict()))
    assert resumed.param_groups[0]["state"] == codec
    assert_same_states(opt, resumed, model.parameters(), resumed_model.parameters())
    train(model, opt, 4)
    train(resumed_model, resumed, 4)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    assert_same_states(opt, resumed, model.parameters(), resumed_model.parameters())


@pytest.mark.parametrize("codec", CODECS)
def test_torch_adamw_state_dict_loads_into_any_codec(codec):
    model = small_mlp()
    twin = copy.deepcopy(model)
    theirs = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    train(twin, theirs, 5)
    model.load_state_dict(twin.state_dict())
    ours = tightfit.AdamW(model.parameters(), lr=1e-3, state=codec, min_quantized_numel=0)
    ours.load_state_dict(theirs.state_dict())
    assert ours.param_groups[0]["lr"] == 1e-2 and ours.param_groups[0]["state"] == codec
    for p, q in zip(model.parameters(), twin.parameters()):
        enc = ours.state[p]["exp_avg_sq"]
        assert enc.codec == codec
        expected = tightfit.get_codec(codec).encode(theirs.state[q]["exp_avg_sq"], "unsigned")
        assert all(torch.equal(enc.buffers[k], expected.buffers[k]) for k in enc.buffers)
        assert ours.state[p]["step"].item() == 5
    train(model, ours, 5)
    train(twin, theirs, 5)
    tol = TOLERANCES["torch_adamw_load_continued"][codec]
    for a, b in zip(model.parameters(), twin.parameters()):
        assert ((a - b).abs().max() / b.abs().max()).item() <= tol


@pytest.mark.parametrize("codec", CODECS)
def test_export_to_torch_adamw_and_continue(codec):
    model = small_mlp()
    ours = tightfit.AdamW(model.parameters(), lr=1e-2, state=codec, min_quantized_numel=0)
    train(model, ours, 5)
    twin = copy.deepcopy(model)
    theirs = torch.optim.AdamW(twin.parameters(), lr=1.0)
    theirs.load_state_dict(ours.to_torch_state_dict())
    assert theirs.param_groups[0]["lr"] == 1e-2
    for p, q in zip(model.parameters(), twin.parameters()):
        decoded = tightfit.get_codec(codec).decode(ours.state[p]["exp_avg"])
        assert torch.equal(theirs.state[q]["exp_avg"], decoded)
    if codec == "fp32":
        train(model, ours, 5)
        train(twin, theirs, 5)
        for a, b in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_sgd_torch_state_dict_without_step_loads():
    model, twin = small_mlp(), small_mlp()
    theirs = torch.optim.SGD(twin.parameters(), lr=1e-2, momentum=0.9)
    train(twin, theirs, 3)
    model.load_state_dict(twin.state_dict())
    ours = tightfit.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    ours.load_state_dict(theirs.state_dict())
    train(model, ours, 3)
    train(twin, theirs, 3)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _trained_state_dict(codec="8bit"):
    model = small_mlp()
    opt = tightfit.AdamW(model.parameters(), state=codec, min_quantized_numel=0)
    train(model, opt, 2)
    return model, opt.state_dict()


def _first_state(sd):
    return sd["state"][0]["exp_avg"]


def _edit(edit):
    def apply(sd):
        sd = copy.deepcopy(sd)
        edit(sd)
        return sd
    return apply


BAD_STATE_DICTS = [
    (_edit(lambda sd: sd["tightfit"].update(format=99)), r"format 99; this tightfit reads formats \(1, 2\)"),
    (_edit(lambda sd: sd["tightfit"].update(rule="lion")), r"state_dict is for rule 'lion', this optimizer runs 'adamw'"),
    (_edit(lambda sd: _first_state(sd).update(codec="3bit")), r"unknown codec '3bit'"),
    (_edit(lambda sd: _first_state(sd).update(block_size=2048)), r"block size 2048 but codec '8bit' uses 256"),
    (_edit(lambda sd: _first_state(sd).update(format=0)), r"state 'exp_avg' has format 0"),
    (_edit(lambda sd: _first_state(sd).update(absmax=_first_state(sd)["absmax"][:-1])),
     r"buffer .absmax. is float32 of shape \(5,\); codec .8bit. stores float32 of shape \(6,\)"),
    (_edit(lambda sd: _first_state(sd).pop("kind")), r"lacks \['kind'\]"),
    (_edit(lambda sd: sd["state"][0].pop("exp_avg_sq")), r"saved state lacks 'exp_avg_sq'"),
    (_edit(lambda sd: sd["state"][0].update(exp_avg=[1, 2])), r"is a list"),
    (lambda sd: {"weights": 1}, r"not an optimizer state_dict"),
    # each buffer against its codec, not only the total bytes (codecs/validate.py)
    (_edit(lambda sd: _first_state(sd).update(kind="unsigned")), r"has kind 'unsigned'; 'exp_avg' is a 'signed' state"),
    (_edit(lambda sd: _first_state(sd).update(codes=_first_state(sd)["codes"].to(torch.int8))), r"'codes' is int8"),
    (_edit(lambda sd: _first_state(sd)["absmax"].__setitem__(0, float("nan"))), r"'absmax' holds NaN or Inf"),
    (_edit(lambda sd: _first_state(sd).update(shape=[24, 64])), r"has shape \[24, 64\], parameter needs \[64, 24\]"),
    (_edit(lambda sd: sd["state"][0].update(step=torch.tensor(-3.0))), r"'step' is -3.0 \(allowed: a finite number >= 0\)"),
    (_edit(lambda sd: sd["state"][0].update(step=float("nan"))), r"'step' is nan"),
    (_edit(lambda sd: sd["state"][0].update(nonfinite_skips=1.5)), r"'nonfinite_skips' is 1.5 \(allowed: a whole number"),
    (_edit(lambda sd: sd["param_groups"][0].update(lr=float("inf"))), r"invalid lr: inf"),
    (_edit(lambda sd: sd["param_groups"][0]["params"].append(0)), r"lists param id 0 twice"),
    (_edit(lambda sd: sd["param_groups"][0]["params"].pop()), r"parameter group 0 has 5 params, the optimizer's has 6"),
]


@pytest.mark.parametrize("corrupt,message", BAD_STATE_DICTS)
def test_wrong_or_unknown_format_is_a_clear_error(corrupt, message):
    model, sd = _trained_state_dict()
    opt = tightfit.AdamW(model.parameters(), state="8bit", min_quantized_numel=0)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(corrupt(sd))


def test_torch_state_dict_with_amsgrad_is_refused():
    model = small_mlp()
    theirs = torch.optim.AdamW(model.parameters(), amsgrad=True)
    train(model, theirs, 1)
    with pytest.raises(ValueError, match="amsgrad=True"):
        tightfit.AdamW(model.parameters()).load_state_dict(theirs.state_dict())


def test_state_dict_of_fresh_optimizer_round_trips():
    model = small_mlp()
    opt = tightfit.Lion(model.parameters(), state="4bit")
    fresh = tightfit.Lion(model.parameters())
    fresh.load_state_dict(weights_only_round_trip(opt.state_dict()))
    assert len(fresh.state) == 0
    train(model, fresh, 1)


def test_torch_adafactor_state_dict_loads():
    model, twin = small_mlp(), small_mlp()
    theirs = torch.optim.Adafactor(twin.parameters(), lr=1e-2)
    train(twin, theirs, 3)
    model.load_state_dict(twin.state_dict())
    ours = tightfit.Adafactor(model.parameters(), lr=1e-2)
    ours.load_state_dict(theirs.state_dict())
    train(model, ours, 3)
    train(twin, theirs, 3)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("edit, message", [
    (lambda st: st["exp_avg"].__setitem__((0, 0), float("nan")), r"state 'exp_avg' holds NaN or Inf"),
    (lambda st: st["exp_avg_sq"].__setitem__((0, 0), -1.0), r"state 'exp_avg_sq' holds negative values"),
    (lambda st: st.update(exp_avg=st["exp_avg"].t()), r"state 'exp_avg' has shape \(24, 64\), parameter needs \(64, 24\)"),
    (lambda st: st.update(exp_avg=st["exp_avg"].to(torch.int32)), r"expected a dense floating tensor"),
])
def test_torch_format_states_are_checked_before_encoding(edit, message):
    model = small_mlp()
    theirs = torch.optim.AdamW(model.parameters())
    train(model, theirs, 1)
    sd = copy.deepcopy(theirs.state_dict())
    edit(sd["state"][0])
    ours = tightfit.AdamW(model.parameters(), state="8bit", min_quantized_numel=0)
    with pytest.raises(ValueError, match=message):
        ours.load_state_dict(sd)
    assert len(ours.state) == 0


@pytest.mark.parametrize("source, target, message", [
    # the case: a torch SGD dict silently lost its momentum in tightfit.AdamW
    (lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9), lambda p: tightfit.AdamW(p),
     r"momentum=0.9.*hyperparameters of rule\(s\) \['sgd'\], not of rule 'adamw'"),
    (lambda p: torch.optim.Adam(p, weight_decay=0.1), lambda p: tightfit.AdamW(p),
     r"decoupled_weight_decay=False.*rule\(s\) \['adam'\], not of rule 'adamw'"),
    (lambda p: torch.optim.AdamW(p), lambda p: tightfit.Lion(p), r"eps=1e-08.*not of rule 'lion'"),
    (lambda p: tightfit.SGD(p, momentum=0.9), lambda p: tightfit.SGD(p),  # same rule, momentum edited out below
     r"saved state 'momentum_buffer' is a state rule 'sgd' keeps only with other hyperparameters"),
])
def test_a_dict_of_another_rule_is_refused_naming_both(source, target, message):
    model = small_mlp()
    src = source(model.parameters())
    train(model, src, 1)
    sd = src.state_dict()
    for group in sd["param_groups"]:
        if isinstance(src, tightfit.SGD):
            group["momentum"] = 0.0
    opt = target(model.parameters())
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(sd)


def test_torch_adamw_dict_loads_into_tightfit_adam_as_decoupled():
    model = small_mlp()
    theirs = torch.optim.AdamW(model.parameters(), weight_decay=0.1)
    train(model, theirs, 1)
    ours = tightfit.Adam(model.parameters())
    ours.load_state_dict(theirs.state_dict())
    assert ours.param_groups[0]["decoupled_weight_decay"] is True


def test_a_loaded_state_never_shares_memory_with_its_source():
    model = small_mlp()
    first = tightfit.AdamW(model.parameters(), state="fp32")
    train(model, first, 2)
    before = copy.deepcopy(first.state_dict())
    second = tightfit.AdamW(model.parameters(), state="fp32")
    second.load_state_dict(first.state_dict())
    train(model, second, 2)  # steps the second optimizer only
    assert_same_dict = lambda a, b: all(  # noqa: E731
        torch.equal(a[i][k]["values"], b[i][k]["values"]) for i in a for k in ("exp_avg", "exp_avg_sq"))
    assert assert_same_dict(first.state_dict()["state"], before["state"])
