"""Fuzzing load_state_dict with corrupted state_dicts: whatever one corruption does, the load
either succeeds (and the optimizer then steps) or raises a ValueError with a message, and
a refused load leaves the optimizer exactly as it was. Never another exception, never a
crash in the native kernel."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import tightfit
from contract_helpers import assert_same, tiny_model, train

# (optimizer factory, where the state_dict comes from): tightfit's own format for several
# rules and codecs, and torch.optim's format loaded into a quantized tightfit optimizer.
SOURCES = {
    "adamw_8bit": (lambda p: tightfit.AdamW(p, state="8bit", min_quantized_numel=0), None),
    "adafactor_4bit": (lambda p: tightfit.Adafactor(p, beta1=0.9, state="4bit", min_quantized_numel=0), None),
    "sgd_bf16": (lambda p: tightfit.SGD(p, lr=1e-2, momentum=0.9, state="bf16", min_quantized_numel=0), None),
    "torch_adamw_into_4bit": (lambda p: tightfit.AdamW(p, state="4bit", min_quantized_numel=0),
                              lambda p: torch.optim.AdamW(p)),
}

BAD_VALUES = [None, "x", -1, 0, 1.5, -2.5, math.nan, math.inf, 2**70, True, [], {}, [1, 2], (3,),
              torch.tensor(math.nan), torch.tensor(-1.0), torch.zeros(0), torch.zeros(3, dtype=torch.int64),
              torch.ones(2, 2), torch.tensor([1.0, 2.0])]


def _tensor_mutations(t: torch.Tensor) -> list[torch.Tensor]:
    flat = t.reshape(-1)
    out = [t.to(d) for d in (torch.float16, torch.float64, torch.int32, torch.uint8, torch.bool)]
    out += [flat[:-1], torch.cat([flat, flat[:1]]), t.reshape(1, -1), flat[:0], t.unsqueeze(0).expand(2, *t.shape)]
    if t.is_floating_point() and t.numel():
        for value in (math.nan, math.inf, -1.0, 1e38):
            bad = t.clone()
            bad.reshape(-1)[0] = value
            out.append(bad)
    return out


def _paths(value, prefix=()):
    """Every path to a value inside nested dicts and lists (the root excluded)."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield prefix + (key,)
        yield from _paths(child, prefix + (key,))


def _parent(sd, path):
    for key in path[:-1]:
        sd = sd[key]
    return sd


def _source(name):
    make, make_source = SOURCES[name]
    model = tiny_model()
    source = (make_source or make)(model.parameters())
    train(model, source, 2)
    return model, make, source.state_dict()


@pytest.mark.parametrize("name", sorted(SOURCES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_corrupted_state_dict_is_loaded_or_refused_cleanly(name, data):
    model, make, sd = _source(name)
    opt = make(model.parameters())
    train(model, opt, 1)
    before = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(sd)
    path = data.draw(st.sampled_from(sorted(_paths(bad), key=repr)), label="path")
    parent, key = _parent(bad, path), path[-1]
    action = data.draw(st.sampled_from(["replace", "delete", "mutate"]), label="action")
    if action == "delete" and isinstance(parent, dict):
        del parent[key]
    elif action == "mutate" and isinstance(parent[key], torch.Tensor):
        parent[key] = data.draw(st.sampled_from(_tensor_mutations(parent[key])), label="tensor")
    else:
        parent[key] = copy.deepcopy(data.draw(st.sampled_from(BAD_VALUES), label="value"))
    try:
        opt.load_state_dict(bad)
    except ValueError as error:
        assert str(error)
        assert_same(opt.state_dict(), before)  # refused: nothing changed
        return
    train(model, opt, 1)  # accepted: it must step (the native kernel included) without crashing


def test_a_non_dict_is_refused():
    opt = tightfit.AdamW(tiny_model().parameters())
    for bad in (None, [], "state", 3, {"state": []}, {"state": {}, "param_groups": [1]},
                {"state": {}, "param_groups": [{"params": [[1]]}]}):
        with pytest.raises(ValueError):
            opt.load_state_dict(bad)
