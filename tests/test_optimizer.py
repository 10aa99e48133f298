"""The shell over every rule x codec: convergence, robustness, param dtypes, torch interop."""

import copy

import pytest
import torch

import tightfit
from optim_cases import CODECS, MATRIX, QUANTIZED, TOLERANCES, rule_by_codec
from toy_problem import regression_batch, small_mlp, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: far faster on one thread on a shared CPU


@pytest.mark.parametrize("case, codec", rule_by_codec(QUANTIZED))
def test_quantized_states_converge_close_to_fp32(case, codec):
    case.skip_if_excluded(f"converge_{codec}")
    losses = {}
    for name in ("fp32", codec):
        model = small_mlp()
        opt = case.make(model.parameters(), state=name, min_quantized_numel=0)
        losses[name] = train(model, opt, 150)
    start = torch.nn.functional.mse_loss(small_mlp()(regression_batch()[0]), regression_batch()[1]).item()
    assert losses[codec] < 0.5 * start  # it trains
    margin = TOLERANCES.get(f"converge_{codec}_{case.rule}", TOLERANCES[f"converge_{codec}"])
    assert losses[codec] <= margin * losses["fp32"] + 1e-3


@pytest.mark.parametrize("case, codec", rule_by_codec())
def test_state_is_quantized_only_above_min_quantized_numel(case, codec):
    model = small_mlp()
    opt = case.make(model.parameters(), state=codec, min_quantized_numel=1000)
    train(model, opt, 1)
    for p in model.parameters():
        stored = {v.codec for v in opt.state[p].values()  # factored statistics ("small") are always fp32
                  if isinstance(v, tightfit.codecs.Encoded) and v.kind != "small"}
        assert stored <= ({codec} if p.numel() >= 1000 else {"fp32"})


@pytest.mark.parametrize("case", MATRIX, ids=repr)
def test_nonfinite_gradient_skips_that_parameter_and_keeps_its_state(case):
    model = small_mlp()
    opt = case.make(model.parameters(), state="8bit", min_quantized_numel=0)
    train(model, opt, 3)
    bad, good = model[0].weight, model[2].weight
    before = {p: (p.detach().clone(), copy.deepcopy(opt.state[p])) for p in (bad, good)}
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(regression_batch()[0]), regression_batch()[1]).backward()
    bad.grad[0, 0] = float("nan")
    bad.grad[1, 1] = float("inf")
    opt.step()
    assert torch.equal(bad, before[bad][0])
    for name, value in before[bad][1].items():
        if isinstance(value, tightfit.codecs.Encoded):
            for key, buf in value.buffers.items():
                assert torch.equal(opt.state[bad][name].buffers[key], buf)
    assert opt.state[bad]["step"].item() == 3
    assert not torch.equal(good, before[good][0])
    assert opt.skipped_steps == 1


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_keep_their_dtype_and_train(codec, dtype):
    model = small_mlp()
    x, y = regression_batch()
    model.to(dtype)
    opt = tightfit.AdamW(model.parameters(), lr=1e-2, state=codec, min_quantized_numel=0)
    first = last = None
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x.to(dtype)).float(), y)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert all(p.dtype == dtype for p in model.parameters())
    assert last < 0.7 * first


def test_math_is_fp32_for_bf16_params():
    p32 = torch.randn(50)
    p16 = torch.nn.Parameter(p32.to(torch.bfloat16))
    g = torch.randn(50)
    p16.grad = g.to(torch.bfloat16)
    ref = torch.nn.Parameter(p16.detach().float().clone())
    ref.grad = p16.grad.float()
    tightfit.AdamW([p16], lr=1e-2).step()
    tightfit.AdamW([ref], lr=1e-2).step()  # the same rule on an fp32 copy, rounded once at the end
    assert torch.equal(p16.detach(), ref.detach().to(torch.bfloat16))


@pytest.mark.parametrize("case", MATRIX, ids=repr)
def test_edge_cases_none_zero_and_0dim_grads(case):
    scalar = torch.nn.Parameter(torch.tensor(1.5))
    untouched = torch.nn.Parameter(torch.randn(5))
    zero = torch.nn.Parameter(torch.randn(300))
    opt = case.make([scalar, untouched, zero], state="8bit", min_quantized_numel=0)
    scalar.grad = torch.tensor(0.25)
    zero.grad = torch.zeros(300)
    before = untouched.detach().clone()
    opt.step()
    assert torch.equal(untouched, before) and untouched not in opt.state
    assert scalar.item() != 1.5
    assert torch.isfinite(zero).all()


def test_sparse_gradients_are_refused():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        tightfit.AdamW(emb.parameters()).step()


BAD_HYPERPARAMETERS = [
    (lambda p: tightfit.AdamW(p, lr=-1e-3), r"invalid lr: -0.001 \(allowed: a finite number >= 0\)"),
    (lambda p: tightfit.AdamW(p, betas=(0.9, 1.0)), r"invalid betas\[1\]: 1.0 \(allowed: 0 <= betas\[1\] < 1\)"),
    (lambda p: tightfit.AdamW(p, betas=(0.9,)), r"invalid betas"),
    (lambda p: tightfit.AdamW(p, eps=-1.0), r"invalid eps: -1.0"),
    (lambda p: tightfit.AdamW(p, weight_decay=float("nan")), r"invalid weight_decay: nan"),
    (lambda p: tightfit.AdamW(p, amsgrad=True), r"amsgrad=True is not supported"),
    (lambda p: tightfit.AdamW(p, state="3bit"), r"unknown state codec '3bit'"),
    (lambda p: tightfit.AdamW(p, min_quantized_numel=-5), r"invalid min_quantized_numel: -5"),
    (lambda p: tightfit.AdamW(p, impl="cuda-magic"), r"unknown impl 'cuda-magic'"),
    (lambda p: tightfit.Lion(p, betas=(-0.1, 0.99)), r"invalid betas\[0\]: -0.1"),
    (lambda p: tightfit.SGD(p, momentum=1.5), r"invalid momentum: 1.5"),
    (lambda p: tightfit.SGD(p, nesterov=True), r"nesterov=True needs momentum > 0"),
    (lambda p: tightfit.AdamW([{"params": p, "lr": -1}]), r"invalid lr: -1"),
    # non-finite values pass a range check (inf >= 0) but make the params inf/NaN
    (lambda p: tightfit.AdamW(p, lr=float("inf")), r"invalid lr: inf \(allowed: finite numbers"),
    (lambda p: tightfit.AdamW(p, weight_decay=float("inf")), r"invalid weight_decay: inf"),
    (lambda p: tightfit.AdamW(p, eps=float("inf")), r"invalid eps: inf"),
    (lambda p: tightfit.SGD(p, lr=torch.tensor(float("inf"))), r"invalid lr: tensor\(inf\)"),
    (lambda p: tightfit.Adafactor(p, eps=(None, float("inf"))), r"invalid eps: \(None, inf\)"),
    (lambda p: tightfit.CAME(p, lr=1e-3, clip_threshold=float("nan")), r"invalid clip_threshold: nan"),
    (lambda p: tightfit.SophiaG(p, rho=float("inf")), r"invalid rho: inf"),
]


@pytest.mark.parametrize("factory,message", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_raise_value_error_naming_the_value(factory, message):
    with pytest.raises(ValueError, match=message):
        factory([torch.nn.Parameter(torch.randn(3))])


def test_unknown_option_is_a_type_error_listing_allowed():
    with pytest.raises(TypeError, match="allowed"):
        tightfit.TightfitOptimizer.__init__(tightfit.AdamW.__new__(tightfit.AdamW), [torch.zeros(1)], foo=1)


def test_param_group_overrides_codec_and_threshold():
    model = small_mlp()
    first, rest = list(model[0].parameters()), [p for m in model[1:] for p in m.parameters()]
    opt = tightfit.AdamW([{"params": first, "state": "fp32"},
                          {"params": rest, "state": "4bit", "min_quantized_numel": 0}], lr=1e-2)
    train(model, opt, 2)
    assert {opt.state[p]["exp_avg"].codec for p in first} == {"fp32"}
    assert {opt.state[p]["exp_avg"].codec for p in rest} == {"4bit"}


def test_changing_a_groups_codec_reencodes_on_next_step():
    model = small_mlp()
    opt = tightfit.AdamW(model.parameters(), lr=1e-2, min_quantized_numel=0)
    train(model, opt, 3)
    full = opt.state_nbytes()
    opt.param_groups[0]["state"] = "8bit"
    train(model, opt, 1)
    assert opt.state_nbytes() < full / 3
    assert {s["exp_avg"].codec for s in opt.state.values()} == {"8bit"}


@pytest.mark.parametrize("codec,expected", [
    ("8bit", 2 * (16_777_216 + 4 * 65_536)),
    ("4bit", 2 * (8_388_608 + 4 * 131_072)),
    ("fp32", 2 * 4 * 16_777_216),
])
def test_exact_state_bytes_of_a_4096_square_under_adamw(codec, expected):
    p = torch.nn.Parameter(torch.zeros(4096, 4096))
    p.grad = torch.zeros(4096, 4096)
    opt = tightfit.AdamW([p], state=codec)
    opt.step()
    assert opt.state_nbytes() == expected


def test_works_with_lr_scheduler_clipping_and_zero_grad():
    model = small_mlp()
    twin = copy.deepcopy(model)
    ours = tightfit.AdamW(model.parameters(), lr=1e-2)
    theirs = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    schedules = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1e-2, total_steps=30) for o in (ours, theirs)]
    x, y = regression_batch()
    for _ in range(30):
        for m, opt, sched in ((model, ours, schedules[0]), (twin, theirs, schedules[1])):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(m(x), y).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1)
            opt.step()
            sched.step()
    assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_grad_scaler_unscales_and_skips_overflowing_steps():
    model = small_mlp()
    twin = copy.deepcopy(model)
    x, y = regression_batch()
    ours = tightfit.AdamW(model.parameters(), lr=1e-2, state="8bit", min_quantized_numel=0)
    plain = tightfit.AdamW(twin.parameters(), lr=1e-2, state="8bit", min_quantized_numel=0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for _ in range(5):
        ours.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
        scaler.step(ours)
        scaler.update()
        train(twin, plain, 1)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    before = [p.detach().clone() for p in model.parameters()]
    ours.zero_grad()
    (torch.nn.functional.mse_loss(model(x), y) * float("inf")).backward()
    scaler.step(ours)  # overflow: the scaler skips the step
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


def test_create_optimizer_by_name_and_unknown_name_lists_known():
    p = [torch.nn.Parameter(torch.randn(5000))]
    opt = tightfit.create_optimizer("adamw_8bit", p, lr=1e-4)
    assert isinstance(opt, tightfit.AdamW) and opt.param_groups[0]["state"] == "8bit"
    assert opt.param_groups[0]["lr"] == 1e-4
    assert isinstance(tightfit.create_optimizer("lion_32bit", p), tightfit.Lion)
    assert tightfit.create_optimizer("sgd_8bit", p, momentum=0.9).param_groups[0]["state"] == "8bit"
    with pytest.raises(ValueError, match=r"unknown optimizer name 'adamw_3bit'; known: .*adamw_8bit"):
        tightfit.create_optimizer("adamw_3bit", p)


def test_explicit_impl_that_cannot_run_lists_usable_ones():
    from tightfit.impl import IMPLEMENTATIONS, select_implementation
    from tightfit.impl.base import Implementation

    class Never(Implementation):
        name = "never"

        def unavailable_reason(self, rule, params, states, rounding=None):
            return "it never runs"

    IMPLEMENTATIONS["never"] = Never()
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    opt = tightfit.AdamW([p])
    opt.step()
    try:
        with pytest.raises(ValueError, match=r"impl='never' cannot run here: it never runs; usable now: .*reference"):
            select_implementation("never", tightfit.rules.ADAMW, [p], [opt.state[p]])
    finally:
        del IMPLEMENTATIONS["never"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.complex64])
def test_params_of_other_dtypes_are_refused_not_rounded(dtype):
    """float64 math would be rounded to float32 every step (SGD at lr 1e-6 would leave 1000.0
    unchanged where torch gives 999.999999): refused, naming the dtype and what is allowed."""
    p = torch.nn.Parameter(torch.full((3,), 1000.0, dtype=torch.float64)) if dtype == torch.float64 \
        else torch.zeros(3, dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=rf"dtype {name}.*allowed: float32, bfloat16, float16"):
        tightfit.SGD([p], lr=1e-6)
    opt = tightfit.SGD([torch.nn.Parameter(torch.zeros(3))], lr=1e-6)
    with pytest.raises(ValueError, match=rf"dtype {name}"):
        opt.add_param_group({"params": [p]})
    assert len(opt.param_groups) == 1


def test_a_refused_param_group_is_not_kept():
    opt = tightfit.AdamW([torch.nn.Parameter(torch.zeros(3))])
    extra = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match=r"invalid lr: nan"):
        opt.add_param_group({"params": [extra], "lr": float("nan")})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [extra], "lr": 1e-2})  # the same param can then be added properly
    assert opt.param_groups[1]["params"] == [extra]


@pytest.mark.parametrize("convention", ["torch", "hf"])
def test_adafactor_convention_survives_deepcopy_and_pickling(convention, tmp_path):
    model = small_mlp()
    opt = tightfit.Adafactor(model.parameters(), convention=convention)
    train(model, opt, 1)
    torch.save(opt, tmp_path / "opt.pt")
    for copied in (copy.deepcopy(opt), torch.load(tmp_path / "opt.pt", weights_only=False)):
        assert copied.convention == convention and copied.rule is opt.rule
        for p in copied.state:
            p.grad = torch.ones_like(p)
        copied.step()  # the HF convention used to come back as torch's and raise KeyError 'beta2_decay'
