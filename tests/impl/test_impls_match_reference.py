"""Every implementation against impl="reference" (the spec), over the case table
(optim_cases.py): the C++ codec passes (native_codec) and the fused C++ kernel (native) on
every case x codec, the Triton kernels (CPU: TRITON_INTERPRET=1) on every rule x codec.
Same starts, same gradients, a few steps; then params and every state are compared within
TOLERANCES. tests/kernels/ checks the kernels' other param dtypes and edge cases."""

import pytest
import torch

from compare import assert_bit_identical, assert_states_match, assert_update_close, relative_error
from optim_cases import CASES, MATRIX, TOLERANCES, rule_codec_impl

pytestmark = pytest.mark.usefixtures("one_thread")

# A matrix over several blocks with a partial 8/4-bit block, several row-statistics tiles and
# two column tiles of the factored kernels; a vector; a 0-dim param (odd numel: 4-bit padding);
# a stack of matrices (factored over the last two dims).
SHAPES = [(37, 130), (300,), (), (2, 5, 7)]
STEPS = 3
PARAM_TOL = {torch.float32: TOLERANCES["fp32_relative"], torch.bfloat16: TOLERANCES["bf16_relative"]}
PAIRS = (rule_codec_impl(CASES, impls=("native_codec", "native"))
         + rule_codec_impl(MATRIX, impls=("triton",))
         + rule_codec_impl(MATRIX, codecs=("8bit",), impls=("native_codec", "native", "triton"),
                           dtypes=(torch.bfloat16,)))


def run(case, impl, codec, starts, grads):
    params = [x.clone().requires_grad_() for x in starts]
    opt = case.make(params, state=codec, min_quantized_numel=0, impl=impl)
    for step, step_grads in enumerate(grads):
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        if case.refreshes_hessian and step > 0:  # SophiaG: a refreshed h, then the step
            opt.update_hessian()
        opt.step()
    return params, [opt.state[p] for p in params]


@pytest.mark.parametrize("case, codec, dtype, impl", PAIRS)
def test_matches_the_reference(case, codec, dtype, impl):
    if impl == "triton":
        pytest.importorskip("triton")
    g = torch.Generator().manual_seed(0)
    starts = [torch.randn(s, generator=g).to(dtype) for s in SHAPES]
    grads = [[torch.randn(s, generator=g).to(dtype) for s in SHAPES] for _ in range(STEPS)]
    fast_params, fast_states = run(case, impl, codec, starts, grads)
    slow_params, slow_states = run(case, "reference", codec, starts, grads)
    if impl == "native_codec":  # the reference's own rule, codec passes bit for bit
        assert_bit_identical(fast_params, fast_states, slow_params, slow_states)
        return
    quantized = codec in ("8bit", "4bit")
    for start, a, b, sa, sb in zip(starts, fast_params, slow_params, fast_states, slow_states):
        if case.elementwise:
            assert relative_error(a, b) <= PARAM_TOL[dtype]
            assert_states_match(sa, sb, TOLERANCES["fp32_relative"])
        else:
            assert_update_close(a, b, start, quantized)
            assert_states_match(sa, sb, TOLERANCES["factored_relative"],
                                loose=("exp_avg_res_row", "exp_avg_res_col") if quantized else ())
