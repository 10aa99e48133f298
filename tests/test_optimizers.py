"""fp32 tightfit rules equal their external references (torch.optim, lion-pytorch) step by step."""

import copy

import pytest

from cases import RULE_CASES, TOL, max_relative_difference, small_mlp, train

IMPLS = ["reference", "auto"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", sorted(RULE_CASES))
def test_fp32_equals_external_reference_over_100_steps(case, impl):
    ours_factory, theirs_factory = RULE_CASES[case]
    model = small_mlp()
    twin = copy.deepcopy(model)
    ours = ours_factory(model.parameters(), state="fp32", impl=impl)
    theirs = theirs_factory(twin.parameters())
    for _ in range(100):
        train(model, ours, 1)
        train(twin, theirs, 1)
    assert max_relative_difference(model.parameters(), twin.parameters()) <= TOL["fp32_vs_external"]
