"""plan(): the same run gives the same numbers with or without --gpu, and the settings
FineTune adds change the components they should."""

import pytest

from tightfit.finetune import FineTune
from tightfit.placement.paged import SLOTS
from tightfit.planner import components as C
from tightfit.planner.api import plan
from tightfit.planner.model_facts import load_model_facts
from tightfit.planner.optimizer_specs import resolve_optimizer

GiB = 2**30


@pytest.fixture(scope="module")
def llama8b():
    return load_model_facts("meta-llama/Llama-3.1-8B")


def rows(result):
    return {c.name: c for c in result.components}


def test_a_gpu_only_adds_the_verdict(llama8b):
    """GPU step temporaries, context and slack with or without --gpu (the plan is for a GPU)."""
    without = plan(llama8b, optim="adafactor", advise=False)
    with_gpu = plan(llama8b, optim="adafactor", gpu="80", advise=False)
    assert without.device_total == with_gpu.device_total and without.fits is None and with_gpu.fits is True


def test_finetune_and_keywords_plan_the_same(llama8b):
    ft = FineTune(model="meta-llama/Llama-3.1-8B", method="lora", optim="adamw_8bit", batch_size=2, seq=1024,
                  lora_targets="qv", loss="chunked")
    by_keywords = plan(llama8b, method="lora", optim="adamw_8bit", batch_size=2, seq=1024, lora_targets="qv",
                       loss="chunked", advise=False)
    assert plan(ft, advise=False).device_total == by_keywords.device_total
    assert by_keywords.finetune().lora_targets == "qv"


def test_bnb_paged_state_is_managed_memory(llama8b):
    """bitsandbytes pages through CUDA managed memory: no slots, not in the allocated peak,
    tensors under 100k elements stay on the device; nvidia-smi may still show it."""
    result = plan(llama8b, optim="bnb:paged_adamw_32bit", gpu="80", advise=False)
    r = rows(result)
    spec = resolve_optimizer("bnb:paged_adamw_32bit")
    trainable = C.trainables(llama8b, "full", "bf16", 16)
    each = C.optimizer_state_bytes_each(trainable, spec, True)
    small = sum(b for t, b in zip(trainable, each) if t.numel < C.BNB_PAGED_MIN_NUMEL)
    assert r["optimizer state"].device == small and "paged streaming slots" not in r
    assert result.managed == r["optimizer state (CUDA managed)"].host == sum(each) - small
    assert result.managed > 50 * GiB


@pytest.mark.parametrize("in_backward", [False, True])
def test_stochastic_rounding_streams_whole_parameters(llama8b, in_backward):
    """placement/paged.py splits large parameters only without stochastic rounding, so the
    slots hold the largest parameter's whole state: SLOTS of them, or one when each
    parameter is paged alone inside backward."""
    base = dict(optim="paged_adamw_8bit", in_backward=in_backward, advise=False)
    pieces = rows(plan(llama8b, precision="fp32", **base))["paged streaming slots"].device
    whole = rows(plan(llama8b, precision="bf16-sr", **base))["paged streaming slots"].device
    spec = resolve_optimizer("adamw_8bit")
    largest = max(C.optimizer_state_bytes_each(C.trainables(llama8b, "full", "bf16", 16), spec, False))
    assert pieces <= SLOTS * 16 * 2**20
    assert whole >= (1 if in_backward else SLOTS) * largest


@pytest.mark.parametrize("changes,component,smaller", [
    ({"precision": "bf16-autocast"}, "weights", False),
    ({"adapter_dtype": "bf16"}, "LoRA adapters (bf16)", None),
    ({"lora_targets": "qv"}, "LoRA adapters (fp32)", True),
    ({"offload_activations": True}, "activations (saved)", True),
])
def test_lora_settings_change_their_component(llama8b, changes, component, smaller):
    base = dict(method="lora", optim="adamw_8bit", seq=1024, advise=False)
    before = rows(plan(llama8b, **base))
    after = rows(plan(llama8b, **base, **changes))
    if smaller is None:
        assert component in after and component not in before
    elif smaller:
        assert after[component].device < before[component].device
    else:
        assert after[component].device > before[component].device


def test_offloaded_activations_are_host_bytes(llama8b):
    on = rows(plan(llama8b, offload_activations=True, seq=1024, advise=False))["activations (saved)"]
    off = rows(plan(llama8b, seq=1024, advise=False))["activations (saved)"]
    assert on.host >= off.device - on.device > 0
    cpu = rows(plan(llama8b, offload_activations=True, seq=1024, device="cpu", advise=False))["activations (saved)"]
    assert cpu.host == 0  # a CPU step keeps them where they are


def test_masters_convert_one_gradient_at_a_time(llama8b):
    """bf16 + fp32 masters: 2 + 4 + 2 B/param + states, and one fp32 gradient at the step."""
    r = plan(llama8b, optim="adamw_32bit", precision="bf16", seq=256, advise=False)
    n = llama8b.total_params()
    assert rows(r)["gradients"].device == 2 * n and rows(r)["fp32 master weights"].device == 4 * n
