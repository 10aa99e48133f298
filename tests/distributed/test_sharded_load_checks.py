"""load_sharded_state_dict validates everything before it changes the optimizer (one
process: the sharded layout of plain params is plain tensors)."""

import copy
import math

import pytest
import torch

import tightfit
from tightfit.distributed import load_sharded_state_dict, sharded_state_dict

from . import workers


def _edit_last(key, value):
    def edit(sd):
        sd["state"][str(len(sd["state"]) - 1)][key] = value
    return edit


def _nan_state(sd):
    sd["state"]["5"]["exp_avg"] = sd["state"]["5"]["exp_avg"].clone()
    sd["state"]["5"]["exp_avg"][0] = math.nan


@pytest.mark.parametrize("edit, message", [
    (_nan_state, r"param 5 state 'exp_avg' holds NaN or Inf"),
    (_edit_last("exp_avg_sq", torch.zeros(3)), r"param 5 state 'exp_avg_sq' has shape \(3,\), parameter needs \(8,\)"),
    (_edit_last("step", torch.tensor(-1.0)), r"param 5 'step' is -1.0"),
    (lambda sd: sd["param_groups"][0].update(lr=math.inf), r"invalid lr: inf"),
    (lambda sd: sd["state"].pop("5"), r"checkpoint lacks state for param 5"),
])
def test_a_refused_sharded_checkpoint_changes_nothing(edit, message):
    model = workers.model_factory()
    opt = workers.make_optimizer("adamw", model.parameters(), "8bit")
    workers.train(model, opt, workers.batches()[:2])
    sd = copy.deepcopy(sharded_state_dict(opt))
    before = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0]["lr"] = 0.5  # would be applied first by a load that does not validate first
    edit(sd)
    with pytest.raises(ValueError, match=message):
        load_sharded_state_dict(opt, sd)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for index, state in before["state"].items():
        for name, value in state.items():
            if isinstance(value, dict):
                assert all(torch.equal(value[k], after["state"][index][name][k]) for k in ("codes", "absmax", "values")
                           if k in value)
