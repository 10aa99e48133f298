"""The factored rules' kernels (Adafactor in both conventions, CAME) against the reference,
on CPU under TRITON_INTERPRET=1: statistics, first moments, parameters and counters."""

import pytest
import torch

from tightfit.kernels import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

from compare import assert_states_match, assert_update_close, relative_error  # noqa: E402
from kernel_cases import make_params, set_grads, step_without_syncs, twin_optimizers  # noqa: E402
from optim_cases import TOLERANCES as TOL  # noqa: E402

# A matrix over several stats tiles and two column tiles, a vector, a scalar, a stack of
# matrices (B = 2).
SHAPES = [(37, 130), (300,), (), (2, 5, 7)]

# (case of the table, first-moment codec, param dtype) beyond impl/test_impls_match_reference.py's
# rule x codec matrix (fp32 params, and 8-bit states of bf16 params).
CASES = [
    ("adafactor", "fp32", torch.float32),
    ("adafactor", "fp32", torch.bfloat16),
    ("adafactor_momentum_maximize", "fp32", torch.float32),
    ("adafactor_momentum_maximize", "bf16", torch.float32),
    ("adafactor_momentum_maximize", "8bit", torch.float32),
    ("adafactor_momentum_maximize", "4bit", torch.bfloat16),
    ("adafactor_hf", "fp32", torch.float32),
    ("adafactor_hf_warmup", "bf16", torch.float32),
    ("came", "bf16", torch.bfloat16),
]


def run_and_compare(rule, codec, dtype, shapes=SHAPES, steps=3, nonfinite=None, min_quantized_numel=0, **options):
    params = make_params(shapes, dtype)
    fast, slow = twin_optimizers(rule, params, state=codec, min_quantized_numel=min_quantized_numel, **options)
    for step in range(steps):
        set_grads(fast, slow, seed=step, nonfinite_index=nonfinite.get(step) if nonfinite else None)
        fast.step()
        slow.step()
    for start, a, b in zip(params, fast.param_groups[0]["params"], slow.param_groups[0]["params"]):
        quantized = codec in ("8bit", "4bit")
        assert_update_close(a, b, start, quantized)
        assert_states_match(fast.state[a], slow.state[b], TOL["factored_relative"],
                            loose=("exp_avg_res_row", "exp_avg_res_col") if quantized else ())
    return fast, slow


@pytest.mark.parametrize("rule,codec,dtype", CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_matches_reference(rule, codec, dtype):
    run_and_compare(rule, codec, dtype)


@pytest.mark.parametrize("rule", ["adafactor_momentum_maximize", "came"])
def test_nonfinite_gradient_skips_only_that_param(rule):
    fast, slow = run_and_compare(rule, "8bit", torch.float32, nonfinite={1: 0, 2: 3})
    skips = [int(fast.state[p]["nonfinite_skips"]) for p in fast.param_groups[0]["params"]]
    steps = [int(fast.state[p]["step"]) for p in fast.param_groups[0]["params"]]
    assert skips == [1, 0, 0, 1]
    assert steps == [2, 3, 3, 2]


def test_statistics_spanning_several_finish_programs():
    # 1030 row statistics: two finish programs per pass, each adding its part of Σ rows.
    run_and_compare("came", "8bit", torch.float32, shapes=[(1030, 2), (4, 300, 3)], steps=2)


def test_tensor_lr_is_read_on_the_device():
    fast, slow = twin_optimizers("adafactor_hf_fixed_lr", make_params([(37, 130), (300,)], torch.float32), state="8bit",
                                 min_quantized_numel=0)
    for opt in (fast, slow):
        opt.param_groups[0]["lr"] = torch.tensor(2e-3)
    for step in range(2):
        set_grads(fast, slow, seed=step)
        fast.step()
        slow.step()
    for a, b in zip(fast.param_groups[0]["params"], slow.param_groups[0]["params"]):
        assert relative_error(a, b) <= TOL["factored_relative"]


def test_stochastic_rounding_matches_the_reference_draws():
    # Same Philox draws; a float32 value a summation-order ulp away from the reference may
    # round to the neighbouring bf16 value, hence the one-ulp tolerance.
    run_and_compare("came", "8bit", torch.bfloat16, stochastic_rounding=True, rounding_seed=7)


def test_mixed_codecs_step_in_separate_buckets():
    # Default min_quantized_numel (4096): the 4810-element matrix quantizes its first
    # moment, the vector keeps fp32 -- two buckets in one group, one launch sequence each.
    fast, _ = run_and_compare("came", "4bit", torch.float32, shapes=[(37, 130), (300,)], steps=2,
                              min_quantized_numel=4096)
    assert [fast.state[p]["exp_avg"].codec for p in fast.param_groups[0]["params"]] == ["4bit", "fp32"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rule,codec", [("adafactor", "fp32"), ("adafactor_momentum_maximize", "8bit"),
                                        ("adafactor_hf", "fp32"), ("came", "4bit")])
def test_gpu_matches_reference_without_syncs(rule, codec):
    params = [p.cuda() for p in make_params([(4099,), (1000, 33), (), (3, 64, 130)], torch.float32)]
    fast, slow = twin_optimizers(rule, params, state=codec, min_quantized_numel=0)
    for step in range(3):
        set_grads(fast, slow, seed=step, nonfinite_index=1 if step == 2 else None)
        step_without_syncs(fast, check=step > 0)  # after state creation a step never waits
        slow.step()
    for start, a, b in zip(params, fast.param_groups[0]["params"], slow.param_groups[0]["params"]):
        assert_update_close(a.cpu(), b.cpu(), start.cpu(), quantized=codec in ("8bit", "4bit"))
        assert int(fast.state[a]["nonfinite_skips"]) == int(slow.state[b]["nonfinite_skips"])
