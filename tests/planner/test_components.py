import math

import pytest
import torch

from tightfit.planner import components as C
from tightfit.planner.model_facts import facts_from_config, load_model_facts
from tightfit.planner.optimizer_specs import resolve_optimizer

from planner_cases import TINY_TIED, TINY_UNTIED

GiB = 2**30


def unique_storage_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def state_tensors(state):
    for value in state.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            yield value
        elif hasattr(value, "buffers") and isinstance(value.buffers, dict):
            yield from value.buffers.values()


def test_reference_fixtures_llama_3_1_8b():
    """By hand from the shapes: NF4 3.25 GiB + DQ absmax 0.10 GiB + bf16 rest 1.96 GiB; LoRA r16 41.94M."""
    facts = load_model_facts("meta-llama/Llama-3.1-8B")
    linear = [p.numel for p in facts.parameters() if p.linear]
    assert sum(math.ceil(n / 2) for n in linear) / GiB == pytest.approx(3.25, abs=0.005)
    assert sum(C.nf4_bytes(n) - math.ceil(n / 2) for n in linear) / GiB == pytest.approx(0.10, abs=0.005)
    rest = sum(p.numel for p in facts.parameters() if not p.linear) * 2
    assert rest / GiB == pytest.approx(1.96, abs=0.005)
    assert C.weight_bytes(facts, "qlora", "bf16") == sum(C.nf4_bytes(n) for n in linear) + rest
    assert sum(t.numel for t in C.trainables(facts, "lora", "bf16", 16)) == 41_943_040


def test_nf4_bytes_equal_bitsandbytes():
    functional = pytest.importorskip("bitsandbytes.functional")
    for shape in [(256, 4096), (100, 333)]:
        weight = torch.randn(shape)
        packed, quant = functional.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
        # code tables (nf4 16 values, dynamic map 256 values) are shared constants, not per weight
        actual = sum(t.numel() * t.element_size() for t in (packed, quant.absmax, quant.state2.absmax, quant.offset))
        assert C.nf4_bytes(weight.numel()) == actual


@pytest.mark.parametrize("optim", ["adamw_32bit", "adamw_8bit", "adamw_4bit", "lion_8bit", "adafactor",
                                   "adafactor_8bit", "came_8bit", "sophiag_4bit", "torch:adamw", "torch:adafactor"])
def test_state_bytes_equal_the_optimizers_state(optim):
    """The planner's state bytes over a model's shapes equal what the optimizer keeps after a step."""
    facts = facts_from_config(TINY_TIED, "tiny", "test")
    spec = resolve_optimizer(optim)
    params = [torch.nn.Parameter(torch.randn(p.shape)) for p in facts.parameters()]
    optimizer = spec.build(params)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    actual = unique_storage_bytes(t for s in optimizer.state.values() for t in state_tensors(s))
    planned = C.optimizer_state_bytes(C.trainables(facts, "full", "fp32", 16), spec, masters=False)
    assert planned == actual


@pytest.mark.parametrize("config", [TINY_TIED, TINY_UNTIED], ids=["tied", "untied"])
@pytest.mark.parametrize("optim", ["muon", "muon_8bit", "muon_4bit"])
def test_muon_state_bytes_follow_its_routing(optim, config):
    """Muon's plan counts what ``Muon(model)`` keeps: one momentum for hidden matrices, AdamW's
    two moments for the embedding, the LM head and the norms (not Muon state for all)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from tightfit.names import create_optimizer

    facts = facts_from_config(config, "tiny", "test")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k != "model_type"}))
    optimizer = create_optimizer(optim, model)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    assert {g["rule"] for g in optimizer.param_groups} == {"muon", "adamw"}
    spec = resolve_optimizer(optim)
    planned = C.optimizer_state_bytes(C.trainables(facts, "full", "fp32", 16), spec, masters=False)
    assert planned == optimizer.state_nbytes()


@pytest.mark.parametrize("optim,bnb_class", [("bnb:adamw_8bit", "AdamW8bit"), ("bnb:lion_8bit", "Lion8bit"),
                                             ("bnb:adamw_32bit", "AdamW32bit")])
def test_bnb_layout_equals_bitsandbytes(optim, bnb_class):
    bnb = pytest.importorskip("bitsandbytes")
    facts = facts_from_config(TINY_TIED, "tiny", "test")
    params = [torch.nn.Parameter(torch.randn(p.shape)) for p in facts.parameters()]
    optimizer = getattr(bnb.optim, bnb_class)(params)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    # qmap1/qmap2 are one shared 256-entry map per optimizer: counted once
    actual = unique_storage_bytes(t for s in optimizer.state.values() for t in state_tensors(s))
    shared_maps = unique_storage_bytes(t for s in optimizer.state.values() for k, t in s.items() if "qmap" in k)
    planned = C.optimizer_state_bytes(C.trainables(facts, "full", "fp32", 16), resolve_optimizer(optim), False)
    assert planned == actual - shared_maps


def test_masters_and_stochastic_rounding():
    facts = facts_from_config(TINY_TIED, "tiny", "test")
    full = C.trainables(facts, "full", "bf16", 16)
    n = sum(t.numel for t in full)
    assert C.master_bytes(full, stochastic_rounding=False) == 4 * n
    assert C.master_bytes(full, stochastic_rounding=True) == 0
    assert C.master_bytes(C.trainables(facts, "lora", "bf16", 16), False) == 0  # fp32 adapters
    assert C.gradient_bytes(full) == 2 * n


def test_torch_state_follows_the_stepped_dtype():
    facts = facts_from_config(TINY_TIED, "tiny", "test")
    full = C.trainables(facts, "full", "bf16", 16)
    n = sum(t.numel for t in full)
    spec = resolve_optimizer("torch:adamw")
    assert C.optimizer_state_bytes(full, spec, masters=False) == 2 * 2 * n  # bf16 params, no masters
    assert C.optimizer_state_bytes(full, spec, masters=True) == 2 * 4 * n  # steps the fp32 masters
