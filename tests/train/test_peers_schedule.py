import pytest
import torch

from tightfit.train.errors import TrainInputError
from tightfit.train.peers import PEERS, build_optimizer, lr_for, optimizer_state_bytes, quantized_state_summary
from tightfit.train.schedule import build_scheduler, lr_factor


@pytest.mark.parametrize("name", sorted(PEERS))
def test_every_peer_builds_and_steps_or_fails_in_one_line(name):
    param = torch.nn.Parameter(torch.randn(64, 80))
    try:
        opt = build_optimizer(name, [param], lr=1e-2)
        before = param.detach().clone()
        param.grad = torch.randn_like(param)
        opt.step()
    except TrainInputError as err:  # bitsandbytes missing
        assert "\n" not in str(err)
        return
    assert not torch.equal(before, param.detach())
    assert optimizer_state_bytes(opt) > 0 or name == "torch:sgd"


@pytest.mark.parametrize("name, lr, expected", [
    ("adamw_8bit", 3e-3, 3e-3),
    ("lion_8bit", 3e-3, 1e-3),
    ("bnb:lion_8bit", 3e-3, 1e-3),
    ("adafactor", 3e-3, None),
    ("torch:adafactor", 3e-3, None),
    ("came", 3e-3, 3e-4),
    ("adafactor_hf", 3e-3, None),
])
def test_lr_rules(name, lr, expected):
    assert lr_for(name, lr) == (pytest.approx(expected) if expected else None)


# typo -> names the error suggests (close matches, not the whole registry)
TYPOS = [("adamw_3bit", "adamw_32bit"), ("adamw8bit", "adamw_8bit"), ("torch:adamv", "torch:adamw"), ("lion_8bti", "lion_8bit")]


@pytest.mark.parametrize("typo, suggested", TYPOS)
def test_unknown_optimizer_suggests_close_names(typo, suggested):
    with pytest.raises(TrainInputError) as err:
        build_optimizer(typo, [torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    message = str(err.value)
    assert message.startswith(f"unknown optimizer {typo!r}; did you mean ") and suggested in message.split("?")[0]
    assert "`tightfit optims` lists all" in message and "paged_sophiag_bf16" not in message  # no dump of every name


def test_unknown_optimizer_without_close_names_points_to_the_listing():
    with pytest.raises(TrainInputError, match=r"^unknown optimizer 'zzz' \(`tightfit optims` lists all"):
        build_optimizer("zzz", [torch.nn.Parameter(torch.zeros(2))], lr=1e-3)


def test_state_bytes_and_quantized_summary():
    big, small = torch.nn.Parameter(torch.randn(64, 64)), torch.nn.Parameter(torch.randn(10))
    opt = build_optimizer("adamw_8bit", [big, small], lr=1e-3)
    for p in (big, small):
        p.grad = torch.ones_like(p)
    opt.step()
    assert quantized_state_summary(opt) == "1/2"  # 10 elements < min_quantized_numel keeps fp32
    assert optimizer_state_bytes(opt) == 2 * (4096 + 16 * 4) + 2 * 10 * 4  # codes + absmax, fp32 small
    torch_opt = build_optimizer("torch:adamw", [big], lr=1e-3)
    torch_opt.step()
    assert optimizer_state_bytes(torch_opt) == 2 * 4096 * 4 and quantized_state_summary(torch_opt) == "-"


@pytest.mark.parametrize("name, step, expected", [
    ("cosine", 0, 0.25), ("cosine", 3, 1.0), ("cosine", 4, 1.0), ("cosine", 14, 0.1), ("cosine", 9, 0.55),
    ("linear", 9, 0.55), ("linear", 14, 0.1), ("constant", 10, 1.0),
])
def test_schedule_factors(name, step, expected):
    assert lr_factor(name, step, warmup=4, total=14, min_ratio=0.1) == pytest.approx(expected)


@pytest.mark.parametrize("name, warmup, message", [("exp", 1, "unknown schedule 'exp'"), ("cosine", 20, "--warmup 20")])
def test_bad_schedule(name, warmup, message):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(TrainInputError, match=message):
        build_scheduler(opt, name, warmup, total=10)


def test_every_registered_name_builds_with_an_adamw_lr():
    """train / bench build any registered name from the AdamW-equivalent lr (LR_RULES maps
    it where a rule defines lr differently; transformers-convention Adafactor refuses one)."""
    import warnings

    import torch

    from tightfit.names import OPTIMIZER_NAMES
    from tightfit.train.peers import build_optimizer

    for name in sorted(OPTIMIZER_NAMES):
        params = [torch.nn.Parameter(torch.randn(8, 8))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # paged names on CPU warn once
            opt = build_optimizer(name, params, 3e-3)
        params[0].grad = torch.randn(8, 8)
        opt.step()
        assert torch.isfinite(params[0]).all(), name
