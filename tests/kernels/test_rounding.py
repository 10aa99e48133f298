"""Stochastic rounding: the torch reference (rounding.py) and the kernels draw the same bits."""

import pytest
import torch

from tightfit.kernels import triton_available
from tightfit.kernels.rounding import philox4x32, stochastic_round_to_bf16
from tightfit.rules import RULES

from kernel_cases import make_params

# Random123 known-answer vectors for Philox4x32-10: (counter, key, output).
PHILOX_VECTORS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_VECTORS)
def test_philox_known_answers(counter, key, expected):
    words = philox4x32(*(torch.tensor([c], dtype=torch.int64) for c in counter), *key)
    assert tuple(int(w) for w in words) == expected


# x, the two bf16 neighbours it may round to.
ROUNDING_CASES = [
    (1.0 + 2.0**-10, 1.0, 1.0 + 2.0**-7),
    (-(1.0 + 3 * 2.0**-10), -1.0, -(1.0 + 2.0**-7)),
    (3.0e-3, 2.9907e-3, 3.0060e-3),
]


@pytest.mark.parametrize("x,low,high", ROUNDING_CASES)
def test_reference_rounding_is_unbiased_between_neighbours(x, low, high):
    n = 1 << 16
    rounded = stochastic_round_to_bf16(torch.full((n,), x), seed=7, salt=3, step=1).float()
    neighbours = torch.tensor([low, high]).to(torch.bfloat16).float()
    assert bool(torch.isin(rounded, neighbours).all())
    # Bernoulli mean: 6 standard deviations of the sample mean over n draws.
    spread = float(neighbours[1] - neighbours[0]).__abs__()
    assert abs(float(rounded.double().mean()) - x) <= 6 * spread * 0.5 / n**0.5


def test_reference_rounding_keeps_exact_values_and_specials():
    exact = torch.tensor([0.0, -0.0, 1.0, -2.5, float("inf"), float("-inf")])
    assert torch.equal(stochastic_round_to_bf16(exact, seed=1, salt=0, step=5), exact.to(torch.bfloat16))
    assert torch.isnan(stochastic_round_to_bf16(torch.tensor([float("nan")]), seed=1, salt=0, step=5)).all()


def test_reference_rounding_depends_on_seed_salt_and_step():
    x = torch.full((4096,), 1.0 + 2.0**-9)
    base = stochastic_round_to_bf16(x, seed=1, salt=2, step=3)
    for other in ({"seed": 9, "salt": 2, "step": 3}, {"seed": 1, "salt": 8, "step": 3},
                  {"seed": 1, "salt": 2, "step": 4}):
        assert not torch.equal(stochastic_round_to_bf16(x, **other), base)


# rule name, hyperparameters (plain floats, as the reference receives them), state names.
KERNEL_SR_CASES = [
    ("adamw", {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1, "maximize": False},
     ["exp_avg", "exp_avg_sq"]),
    ("lion", {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.5}, ["exp_avg"]),
    ("sgd", {"lr": 3e-2, "momentum": 0.0, "dampening": 0.0, "weight_decay": 1e-2, "nesterov": False,
             "maximize": False}, []),
]


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
@pytest.mark.parametrize("rule_name,hyper,state_names", KERNEL_SR_CASES)
def test_kernel_rounding_equals_reference_bit_for_bit(rule_name, hyper, state_names):
    from tightfit.codecs import get_codec
    from tightfit.kernels.fused_step import fused_step

    seed, salts = 1234, [5, 6]
    params = make_params([(37, 29), (300,)], torch.bfloat16)
    grads = make_params([(37, 29), (300,)], torch.bfloat16, seed=1)
    states = []
    for param, grad in zip(params, grads):
        param.grad = grad
        state = {"step": torch.zeros(()), "nonfinite_skips": torch.zeros((), dtype=torch.int64)}
        for name in state_names:
            state[name] = get_codec("fp32").zeros(param.shape, "signed", param.device)
        states.append(state)
    expected, nearest = [], []
    for param, salt in zip(params, salts):
        zeros = {name: torch.zeros(param.shape) for name in state_names}
        new_param, _ = RULES[rule_name].update(param.float(), param.grad.float(), zeros, step=1, **hyper)
        expected.append(stochastic_round_to_bf16(new_param, seed=seed, salt=salt, step=1))
        nearest.append(new_param.to(torch.bfloat16))
    fused_step(RULES[rule_name], hyper, params, states, state_names, "fp32", stochastic_rounding=True, seed=seed,
               salts=salts)
    for param, want, rtne in zip(params, expected, nearest):
        assert torch.equal(param.view(torch.int16), want.view(torch.int16))
        assert not torch.equal(param, rtne)  # stochastic, not round-to-nearest
