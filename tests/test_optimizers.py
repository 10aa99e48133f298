"""fp32 tightfit equals the external reference (torch.optim, lion-pytorch, transformers,
came-pytorch) step by step, for every case of the table that has one (optim_cases.py)."""

import copy

import pytest

from optim_cases import TOLERANCES, with_external_reference
from toy_problem import max_relative_difference, small_mlp, train

IMPLS = ["reference", "auto"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", with_external_reference())
def test_fp32_equals_external_reference_step_by_step(case, impl):
    model = small_mlp()
    twin = copy.deepcopy(model)
    ours = case.make(model.parameters(), state="fp32", impl=impl)
    theirs = case.reference(twin.parameters())
    # (SophiaG: h is never refreshed here, so this checks its h = 0 path, sign descent; on this
    # toy h ~ 1e-7 makes the ratio m/(ρ·bs·h) amplify op-order ulps to 9e-5 within 12 steps.
    # tests/rules/test_sophia.py checks refreshes against the same reference on a model where
    # the ratio is well conditioned.)
    for _ in range(case.reference_steps):
        train(model, ours, 1)
        train(twin, theirs, 1)
    assert max_relative_difference(model.parameters(), twin.parameters()) <= TOLERANCES[case.reference_tol]
