"""Simulated (fake tensors) vs measured (real CPU step) vs analytic peaks, as a table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tightfit
from tightfit.planner.api import plan
from tightfit.planner.model_facts import facts_from_config, load_model_facts
from tightfit.planner.tracker import LiveBytesTracker

from planner_cases import (ANALYTIC_VS_SIMULATED, MATRIX, QLORA_MATRIX, SIMULATED_VS_MEASURED, TINY_TIED, TINY_UNTIED,
                           case_id, qlora_case)


@pytest.fixture(scope="module")
def measured():
    """Measured and simulated peaks of the whole matrix, from one single-threaded child process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(tightfit.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("measure_matrix.py"))], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("case", MATRIX, ids=[case_id(c) for c in MATRIX])
def test_simulated_measured_analytic(measured, case):
    cfg, method, optim, batch, seq, ckpt, inb = case
    peaks = measured[case_id(case)]
    analytic = plan(facts_from_config(cfg, "tiny", "test"), optim=optim, method=method, batch=batch, seq=seq,
                    lora_rank=8, checkpointing=ckpt, in_backward=inb, dtype="fp32", device="cpu", advise=False)
    assert peaks["simulated"] == pytest.approx(peaks["measured"], rel=SIMULATED_VS_MEASURED)
    assert analytic.peak_allocated == pytest.approx(peaks["simulated"], rel=ANALYTIC_VS_SIMULATED)


# 16-bit (fake tensors only: bf16 compute on a CPU is slow): fp32 masters for full FT,
# autocast as HF Trainer bf16=True; stochastic rounding drops the masters.
BF16_MATRIX = [(TINY_TIED, "full", "adamw_32bit", True, False), (TINY_UNTIED, "full", "adafactor", False, True),
               (TINY_TIED, "lora", "adamw_8bit", False, False), (TINY_TIED, "lora", "adamw_32bit", True, False)]


@pytest.mark.parametrize("cfg,method,optim,ckpt,sr", BF16_MATRIX)
def test_bf16_simulated_vs_analytic(cfg, method, optim, ckpt, sr):
    result = plan(facts_from_config(cfg, "tiny", "test"), method=method, optim=optim, batch=4, seq=64, lora_rank=8,
                  checkpointing=ckpt, stochastic_rounding=sr, dtype="bf16", simulate=True, device="cpu", advise=False)
    assert result.peak_allocated == pytest.approx(result.simulation["peak_bytes"], rel=ANALYTIC_VS_SIMULATED)


# The settings tightfit train runs (FineTune fields), simulated on fake tensors: precision
# modes (fp32 weights under bf16 autocast, bf16 adapters with stochastic rounding), the
# chunked loss, LoRA target subsets.
SETTINGS_MATRIX = [
    (TINY_TIED, dict(method="full", optim="adamw_32bit", precision="bf16-autocast", batch_size=4, seq=64)),
    (TINY_UNTIED, dict(method="full", optim="adamw_8bit", precision="bf16-autocast", batch_size=4, seq=64,
                       checkpointing=True)),
    (TINY_TIED, dict(method="lora", optim="adamw_32bit", precision="bf16-autocast", batch_size=4, seq=64, lora_r=8)),
    (TINY_UNTIED, dict(method="full", optim="adamw_8bit", precision="bf16", batch_size=8, seq=256, loss="chunked")),
    (TINY_UNTIED, dict(method="lora", optim="adamw_8bit", precision="bf16", batch_size=8, seq=256, loss="chunked",
                       lora_r=8, checkpointing=True)),
    (TINY_TIED, dict(method="lora", optim="adamw_32bit", precision="fp32", batch_size=4, seq=64, lora_targets="qv",
                     lora_r=8)),
    (TINY_TIED, dict(method="lora", optim="adamw_32bit", precision="bf16-sr", batch_size=4, seq=64,
                     adapter_dtype="bf16", lora_r=8)),
    (TINY_UNTIED, dict(method="lora", optim="adamw_8bit", precision="bf16", batch_size=4, seq=64,
                       lora_targets="q_proj,down_proj", lora_r=8, checkpointing=True)),
]


@pytest.mark.parametrize("cfg,settings", SETTINGS_MATRIX, ids=lambda v: "-".join(f"{x}" for x in v.values())
                         if isinstance(v, dict) and "method" in v else None)
def test_settings_simulated_vs_analytic(cfg, settings):
    result = plan(facts_from_config(cfg, "tiny", "test"), simulate=True, device="cpu", advise=False, **settings)
    assert result.peak_allocated == pytest.approx(result.simulation["peak_bytes"], rel=ANALYTIC_VS_SIMULATED)


@pytest.mark.parametrize("case", QLORA_MATRIX, ids=[case_id(qlora_case(c)) for c in QLORA_MATRIX])
def test_qlora_measured_vs_analytic(measured, case):
    pytest.importorskip("bitsandbytes")
    cfg, method, optim, batch, seq, ckpt, _ = qlora_case(case)
    analytic = plan(facts_from_config(cfg, "tiny", "test"), method=method, optim=optim, batch=batch, seq=seq,
                    lora_rank=8, checkpointing=ckpt, dtype="fp32", device="cpu", advise=False)
    assert analytic.peak_allocated == pytest.approx(measured[case_id(qlora_case(case))]["measured"],
                                                    rel=ANALYTIC_VS_SIMULATED)


def test_simulation_of_a_bundled_model_on_fake_tensors():
    """A 135M model runs on fake tensors (no memory) and the analytic plan agrees."""
    facts = load_model_facts("HuggingFaceTB/SmolLM2-135M")
    result = plan(facts, optim="adafactor", batch=1, seq=64, dtype="fp32", simulate=True, device="cpu", advise=False)
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
    result = plan(facts, method="qlora", optim="adamw_8bit", seq=16, dtype="fp32", simulate=True, device="cpu", advise=False)
    assert "not simulated" in result.simulation["skipped"]
