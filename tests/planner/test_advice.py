import pytest

from tightfit.planner.advice import CHANGES
from tightfit.planner.api import plan
from tightfit.planner.gpus import resolve_gpu
from tightfit.planner.model_facts import load_model_facts
from tightfit.planner.units import parse_size

GiB = 2**30


@pytest.mark.parametrize("text,expected", [("24GiB", 24 * GiB), ("80GB", 80 * 10**9), ("16G", 16 * GiB),
                                           ("512MiB", 512 * 2**20), ("1.5TiB", int(1.5 * 2**40))])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text,expected", [("rtx4090", ("RTX 4090", 24 * GiB)), ("A100-80GB", ("A100 80GB", 80 * GiB)),
                                           ("H200", ("H200", 141 * GiB)), ("t4", ("NVIDIA T4", 16 * GiB)),
                                           ("24GiB", ("24 GiB", 24 * GiB)), ("24", ("24 GiB", 24 * GiB)),
                                           ("24GB", ("24 GiB", 24 * GiB)), ("24 gb", ("24 GiB", 24 * GiB)),
                                           ("23.5G", ("23.5 GiB", int(23.5 * GiB))), ("80000MiB", ("78.125 GiB", 80000 * 2**20))])
def test_resolve_gpu(text, expected):
    assert resolve_gpu(text) == expected


@pytest.mark.parametrize("bad", ["24 parsecs", "lots", "", "0", "0GiB"])
def test_bad_gpu_names_the_value(bad):
    with pytest.raises(ValueError, match=f"invalid --gpu '{bad}'.*24GiB.*rtx4090"):
        resolve_gpu(bad)


def test_verdict_is_the_total_against_the_gpu():
    facts = load_model_facts("llama-3.2-1b")
    need = plan(facts, optim="adamw_8bit", gpu="80GB", advise=False).device_total
    # the allocator slack scales with the peak, not with the GPU, so the total is the same
    assert plan(facts, optim="adamw_8bit", gpu=f"{need}B", advise=False).fits is True
    assert plan(facts, optim="adamw_8bit", gpu=f"{need - 1}B", advise=False).fits is False


def test_advice_path_fits_and_limits_are_tight():
    facts = load_model_facts("meta-llama/Llama-3.1-8B")
    settings = dict(method="lora", optim="adamw_32bit", seq=4096)
    result = plan(facts, gpu="24GiB", **settings)
    assert result.fits is False
    changes = [row for row in result.advice if row["kind"] == "change"]
    order = [name for name, _, _ in CHANGES]
    assert [order.index(r["change"]) for r in changes] == sorted(order.index(r["change"]) for r in changes)
    for row in changes:  # each single change is re-planned exactly
        assert row["device_total"] == plan(facts, gpu="24GiB", advise=False, **{**settings, **row["settings"]}).device_total
    path = next(row for row in result.advice if row["kind"] == "to_fit")
    fixed = {**settings, **path["settings"]}
    assert path["fits"] and plan(facts, gpu="24GiB", advise=False, **fixed).fits
    limits = next(row for row in result.advice if row["kind"] == "limits")
    assert plan(facts, gpu="24GiB", advise=False, **{**fixed, "batch_size": limits["max_batch"]}).fits
    assert not plan(facts, gpu="24GiB", advise=False, **{**fixed, "batch_size": limits["max_batch"] + 1}).fits
    assert plan(facts, gpu="24GiB", advise=False, **{**fixed, "seq": limits["max_seq"]}).fits
    assert not plan(facts, gpu="24GiB", advise=False, **{**fixed, "seq": limits["max_seq"] + 1}).fits


@pytest.mark.parametrize("flag,component,smaller", [
    ({"checkpointing": True}, "activations (saved)", True),
    ({"in_backward": True, "precision": "bf16-sr"}, "gradients", True),  # fp32 masters step after backward
    ({"stochastic_rounding": True}, "fp32 master weights", None),
    ({"loss": "chunked"}, "logits + loss (fp32)", True),
    ({"offload_activations": True}, "activations (saved)", True),
    ({"lora_targets": "qv", "method": "lora"}, "activations (saved)", True),
])
def test_switches_shrink_their_component(flag, component, smaller):
    facts = load_model_facts("llama-3.2-1b")
    base = {c.name: c.device for c in plan(facts, optim="adamw_8bit", advise=False).components}
    changed = {c.name: c.device for c in plan(facts, optim="adamw_8bit", advise=False, **flag).components}
    if smaller is None:
        assert component in base and component not in changed
    else:
        assert changed[component] < base[component]
