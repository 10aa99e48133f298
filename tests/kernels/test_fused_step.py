"""The triton implementation against the reference (the spec), on CPU under TRITON_INTERPRET=1."""

import itertools

import pytest
import torch

import tightfit
from tightfit.impl import IMPLEMENTATIONS
from tightfit.kernels import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

from compare import assert_states_match, relative_error  # noqa: E402
from kernel_cases import SHAPES, make_params, set_grads, step_without_syncs, twin_optimizers  # noqa: E402
from optim_cases import TOLERANCES as TOL  # noqa: E402

PARAM_TOL = {torch.float32: TOL["fp32_relative"], torch.bfloat16: TOL["bf16_relative"],
             torch.float16: TOL["fp16_relative"]}
STATE_TOL = {"fp32": TOL["fp32_relative"], "bf16": TOL["bf16_relative"], "8bit": None, "4bit": None}

# (case of the table, codec, param dtype) beyond impl/test_impls_match_reference.py's rule x
# codec matrix (fp32 params, and 8-bit states of bf16 params): variants with every term on
# (decay, dampening, maximize), bf16 and fp16 params.
MATRIX = [
    (case, codec, dtype)
    for case, codec, dtype in itertools.product(["adam_maximize", "lion_decay", "sgd_momentum_dampening"],
                                                ["fp32", "bf16", "8bit", "4bit"], [torch.float32, torch.bfloat16])
] + [("adamw_decay", codec, torch.bfloat16) for codec in ("fp32", "bf16", "4bit")] + [
    ("sgd_nesterov", "8bit", torch.float32), ("sgd_plain", "fp32", torch.float32), ("adamw", "8bit", torch.float16),
    ("lion", "fp32", torch.float16), ("sgd_plain", "fp32", torch.bfloat16), ("sophiag", "4bit", torch.bfloat16),
    ("sophiag_maximize", "bf16", torch.float32)]


def run_and_compare(rule, codec, dtype, shapes=SHAPES, steps=3, nonfinite=None, **options):
    fast, slow = twin_optimizers(rule, make_params(shapes, dtype), state=codec, **options)
    for step in range(steps):
        set_grads(fast, slow, seed=step, nonfinite_index=nonfinite.get(step) if nonfinite else None)
        if hasattr(fast, "update_hessian") and step > 0:  # SophiaG: a refreshed h, then the step
            fast.update_hessian()
            slow.update_hessian()
        fast.step()
        slow.step()
    for a, b in zip(fast.param_groups[0]["params"], slow.param_groups[0]["params"]):
        assert a.dtype == b.dtype
        assert relative_error(a, b) <= PARAM_TOL[dtype]
        assert_states_match(fast.state[a], slow.state[b], STATE_TOL.get(codec) or TOL["fp32_relative"])
    return fast, slow


@pytest.mark.parametrize("rule,codec,dtype", MATRIX, ids=lambda v: str(v).replace("torch.", ""))
def test_matches_reference(rule, codec, dtype):
    run_and_compare(rule, codec, dtype, min_quantized_numel=0)


def test_small_params_keep_fp32_states_in_their_own_bucket():
    # Default min_quantized_numel (4096): the 5000-element param quantizes, the others stay
    # fp32 -- two buckets in one group.
    fast, _ = run_and_compare("adamw", "8bit", torch.float32, shapes=[(50, 100), (300,), ()])
    codecs = [fast.state[p]["exp_avg"].codec for p in fast.param_groups[0]["params"]]
    assert codecs == ["8bit", "fp32", "fp32"]


@pytest.mark.parametrize("codec", ["fp32", "8bit", "4bit"])
def test_nonfinite_gradient_skips_only_that_param(codec):
    shapes = [(37, 29), (300,), (5,)]
    fast, slow = run_and_compare("adamw", codec, torch.float32, shapes=shapes, steps=3, nonfinite={1: 0, 2: 2},
                                 min_quantized_numel=0)
    skips = [int(fast.state[p]["nonfinite_skips"]) for p in fast.param_groups[0]["params"]]
    steps = [int(fast.state[p]["step"]) for p in fast.param_groups[0]["params"]]
    assert skips == [1, 0, 1]
    assert steps == [2, 3, 2]
    assert fast.skipped_steps == 2


def test_nonfinite_first_step_leaves_param_and_states_untouched():
    params = make_params([(37, 29), (300,)], torch.float32)
    fast, _ = twin_optimizers("adamw", params, state="8bit", min_quantized_numel=0)
    set_grads(fast, fast, seed=0, nonfinite_index=0)
    fast.step()
    first = fast.param_groups[0]["params"][0]
    assert torch.equal(first, params[0])
    for name, enc in fast.state[first].items():
        if hasattr(enc, "buffers"):
            fresh = tightfit.get_codec(enc.codec).zeros(enc.shape, enc.kind, enc.device)
            assert all(torch.equal(enc.buffers[k], fresh.buffers[k]) for k in fresh.buffers), name
    assert not torch.equal(fast.param_groups[0]["params"][1], params[1])


@pytest.mark.parametrize("codec", ["fp32", "8bit"])
def test_lr_as_tensor_and_changing_between_steps(codec):
    fast, slow = twin_optimizers("adamw", make_params(SHAPES, torch.float32), state=codec, min_quantized_numel=0)
    for step, lr in enumerate([torch.tensor(1e-2), torch.tensor(3e-3), 5e-2]):
        for opt in (fast, slow):
            opt.param_groups[0]["lr"] = lr
        set_grads(fast, slow, seed=step)
        fast.step()
        slow.step()
    for a, b in zip(fast.param_groups[0]["params"], slow.param_groups[0]["params"]):
        assert relative_error(a, b) <= TOL["fp32_relative"]
        assert_states_match(fast.state[a], slow.state[b], TOL["fp32_relative"])


def test_hyperparameters_are_runtime_values():
    # lr, betas, eps, decay and the step live in tensors, so changing them never recompiles:
    # the only compile-time parameters are the layout/dtype selectors, the rule's tile and
    # its number of scalars.
    import inspect

    import triton.language as tl

    from tightfit.kernels import fused_kernels

    kernel = fused_kernels.fused_update_kernel
    signature = inspect.signature(getattr(kernel, "fn", kernel))
    constexprs = {name for name, p in signature.parameters.items() if p.annotation in (tl.constexpr, "tl.constexpr")}
    assert constexprs == {"TILE", "SLOTS", "NSTATES", "CODEC", "VALUE_DTYPE", "PARAM_DTYPE", "GRAD_DTYPE", "STOCHASTIC",
                          "ROWS", "BLOCK", "LANES", "BITS", "COLUMNS", "SEARCH_LEVELS"}


class _CountingKernel:
    def __init__(self, kernel, counter):
        self.kernel, self.counter = kernel, counter

    def __getitem__(self, grid):
        self.counter.append(grid)
        return self.kernel[grid]


@pytest.mark.parametrize("count", [1, 6])
def test_launch_count_does_not_grow_with_params(count, monkeypatch):
    from tightfit.kernels import fused_kernels

    launches = []
    for name in ("finite_check_kernel", "fused_update_kernel"):
        monkeypatch.setattr(fused_kernels, name, _CountingKernel(getattr(fused_kernels, name), launches))
    params = [p.requires_grad_() for p in make_params([(7, 3)] * count, torch.float32)]
    opt = tightfit.Lion(params, impl="triton")
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert len(launches) == 2


def test_unavailable_without_interpreter_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    params = [torch.zeros(3, requires_grad=True)]
    opt = tightfit.AdamW(params, impl="triton")
    params[0].grad = torch.ones(3)
    reason = IMPLEMENTATIONS["triton"].unavailable_reason(opt.rule, params, [{}])
    assert "TRITON_INTERPRET" in reason
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        opt.step()


def test_unavailable_for_rule_without_kernel():
    from dataclasses import replace

    from tightfit.rules.base import Kernels

    rule = replace(tightfit.RULES["adamw"], name="not_a_kernel_rule", kernels=Kernels(native_tile="adam"))
    reason = IMPLEMENTATIONS["triton"].unavailable_reason(rule, [torch.zeros(3)], [{}])
    assert "not_a_kernel_rule" in reason


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_reference_without_syncs_or_recompiles_when_lr_changes():
    from tightfit.kernels import fused_kernels

    params = [p.cuda() for p in make_params([(4099,), (1000, 33), ()], torch.bfloat16)]
    fast, slow = twin_optimizers("adamw", params, state="8bit", min_quantized_numel=0)
    cache = fused_kernels.fused_update_kernel.device_caches
    sizes = []
    for step, lr in enumerate([1e-2, 2e-3, torch.tensor(5e-3, device="cuda")]):
        for opt in (fast, slow):
            opt.param_groups[0]["lr"] = lr
        set_grads(fast, slow, seed=step)
        step_without_syncs(fast, check=step > 0)  # after state creation a step never waits
        slow.step()
        sizes.append(sum(len(c[0]) for c in cache.values()))
    assert sizes[0] == sizes[-1]
    for a, b in zip(fast.param_groups[0]["params"], slow.param_groups[0]["params"]):
        assert relative_error(a, b) <= TOL["bf16_relative"]
