"""Simulated (fake tensors) vs measured (real CPU step) vs analytic peaks, as a table."""

import pytest
import torch

from tightfit.planner.api import plan
from tightfit.planner.model_facts import facts_from_config, load_model_facts
from tightfit.planner.optimizer_specs import resolve_optimizer
from tightfit.planner.simulate import measure_step
from tightfit.planner.tracker import LiveBytesTracker

from planner_cases import ANALYTIC_VS_SIMULATED, SIMULATED_VS_MEASURED, TINY_TIED, TINY_UNTIED

# config, method, optimizer, batch, seq, checkpointing, in_backward
MATRIX = [
    (TINY_UNTIED, "full", "adamw_32bit", 1, 32, False, False),
    (TINY_UNTIED, "full", "adamw_32bit", 4, 64, True, False),
    (TINY_TIED, "full", "adamw_8bit", 4, 64, False, False),
    (TINY_TIED, "full", "adamw_8bit", 2, 32, True, True),
    (TINY_TIED, "full", "adafactor", 2, 48, True, False),
    (TINY_UNTIED, "full", "lion_8bit", 1, 32, False, True),
    (TINY_TIED, "full", "torch:adamw", 4, 64, False, False),
    (TINY_UNTIED, "lora", "adamw_32bit", 4, 64, False, False),
    (TINY_TIED, "lora", "adamw_8bit", 1, 32, True, False),
    (TINY_TIED, "lora", "adafactor", 4, 64, True, False),
    (TINY_UNTIED, "lora", "lion_8bit", 2, 48, True, False),
    (TINY_TIED, "lora", "torch:adamw", 1, 32, True, False),
]


def case_id(case):
    cfg, method, optim, batch, seq, ckpt, inb = case
    return (f"{'tied' if cfg['tie_word_embeddings'] else 'untied'}-{method}-{optim}-{batch}x{seq}"
            + ("-ckpt" if ckpt else "") + ("-inbwd" if inb else ""))


@pytest.mark.parametrize("case", MATRIX, ids=[case_id(c) for c in MATRIX])
def test_simulated_measured_analytic(case):
    cfg, method, optim, batch, seq, ckpt, inb = case
    kwargs = dict(method=method, batch=batch, seq=seq, lora_rank=8, checkpointing=ckpt, in_backward=inb,
                  dtype="fp32")
    spec = resolve_optimizer(optim)
    simulated = measure_step(cfg, spec, fake=True, **kwargs)
    measured = measure_step(cfg, spec, fake=False, **kwargs)
    analytic = plan(facts_from_config(cfg, "tiny", "test"), optim=optim, advise=False, **kwargs)
    assert simulated.peak_bytes == pytest.approx(measured.peak_bytes, rel=SIMULATED_VS_MEASURED)
    assert analytic.peak_allocated == pytest.approx(simulated.peak_bytes, rel=ANALYTIC_VS_SIMULATED)


# 16-bit (fake tensors only: bf16 compute on a CPU is slow): fp32 masters for full FT,
# autocast as HF Trainer bf16=True; stochastic rounding drops the masters.
BF16_MATRIX = [(TINY_TIED, "full", "adamw_32bit", True, False), (TINY_UNTIED, "full", "adafactor", False, True),
               (TINY_TIED, "lora", "adamw_8bit", False, False), (TINY_TIED, "lora", "adamw_32bit", True, False)]


@pytest.mark.parametrize("cfg,method,optim,ckpt,sr", BF16_MATRIX)
def test_bf16_simulated_vs_analytic(cfg, method, optim, ckpt, sr):
    result = plan(facts_from_config(cfg, "tiny", "test"), method=method, optim=optim, batch=4, seq=64, lora_rank=8,
                  checkpointing=ckpt, stochastic_rounding=sr, dtype="bf16", simulate=True, advise=False)
    assert result.peak_allocated == pytest.approx(result.simulation["peak_bytes"], rel=ANALYTIC_VS_SIMULATED)


# QLoRA: bitsandbytes 4-bit runs on CPU but not on fake tensors: analytic vs measured only.
QLORA_MATRIX = [(TINY_UNTIED, "adamw_8bit", 4, 64, False), (TINY_TIED, "adamw_32bit", 2, 48, True)]


@pytest.mark.parametrize("cfg,optim,batch,seq,ckpt", QLORA_MATRIX)
def test_qlora_measured_vs_analytic(cfg, optim, batch, seq, ckpt):
    pytest.importorskip("bitsandbytes")
    kwargs = dict(method="qlora", batch=batch, seq=seq, lora_rank=8, checkpointing=ckpt, dtype="fp32")
    measured = measure_step(cfg, resolve_optimizer(optim), fake=False, **kwargs)
    analytic = plan(facts_from_config(cfg, "tiny", "test"), optim=optim, advise=False, **kwargs)
    assert analytic.peak_allocated == pytest.approx(measured.peak_bytes, rel=ANALYTIC_VS_SIMULATED)


def test_simulation_of_a_bundled_model_on_fake_tensors():
    """A 135M model runs on fake tensors (no memory) and the analytic plan agrees."""
    facts = load_model_facts("HuggingFaceTB/SmolLM2-135M")
    result = plan(facts, optim="adafactor", batch=1, seq=64, dtype="fp32", simulate=True, advise=False)
    assert result.simulation["fake"] is True
    assert result.peak_allocated == pytest.approx(result.simulation["peak_bytes"], rel=ANALYTIC_VS_SIMULATED)


def test_tracker_counts_storages_once_and_releases_them():
    tracker = LiveBytesTracker()
    with tracker:
        a = torch.ones(1000)
        view = a.view(10, 100)
        b = a * 2
        b.add_(1)  # in place: no new storage
        assert tracker.current == 8000
        del b
        assert tracker.current == 4000
        del a
        assert tracker.current == 4000  # the view keeps the storage alive
        del view
    assert tracker.current == 0 and tracker.peak == 8000


def test_qlora_is_not_simulated():
    facts = facts_from_config(TINY_TIED, "tiny", "test")
    result = plan(facts, method="qlora", optim="adamw_8bit", seq=16, dtype="fp32", simulate=True, advise=False)
    assert "not simulated" in result.simulation["skipped"]
