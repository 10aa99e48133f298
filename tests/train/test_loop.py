import json

import pytest
import torch

from tightfit.train.checkpoint import list_checkpoints
from tightfit.train.errors import TrainInputError
from tightfit.train.loop import train


def test_run_writes_log_checkpoints_and_final_model(tmp_path, micro_config):
    out = tmp_path / "run"
    result = train(micro_config(out, keep_checkpoints=2))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "peak_memory_bytes", "peak_memory_kind"} <= set(records[0])
    assert [r["step"] for r in records if "eval_loss" in r] == [4, 8]
    assert records[0]["lr"] == pytest.approx(3e-3 / 2)  # warmup step 1 of 2
    assert [p.name for p in list_checkpoints(out)] == ["step-00000006", "step-00000008"]  # 3, 6, 8; keep 2
    assert sorted(f.name for f in (out / "checkpoints" / "step-00000008").iterdir()) == \
        ["optimizer.pt", "rng.pt", "scheduler.pt", "state.json", "trainable.pt"]
    assert (out / "final" / "model.safetensors").exists()
    assert result.train_loss[-1][1] < result.train_loss[0][1]
    assert result.optimizer_state_bytes == 2 * 4 * result.trainable_params  # fp32 m and v
    assert result.peak_memory_bytes >= result.optimizer_state_bytes + 2 * 4 * result.trainable_params


# (method, optimizer): resuming after an interruption reproduces the uninterrupted run exactly
RESUME_CASES = [("full", "adamw_32bit"), ("full", "adamw_8bit"), ("lora", "adamw_4bit"), ("full", "torch:adamw")]


@pytest.mark.parametrize("method, optim", RESUME_CASES)
def test_resume_matches_uninterrupted_run_exactly(tmp_path, micro_config, method, optim):
    config = micro_config(method=method, optim=optim, grad_accum=2, lora_r=8)
    whole = train(config.replace(out=str(tmp_path / "whole")))
    interrupted = tmp_path / "cut"
    first = train(config.replace(out=str(interrupted), max_steps=5))
    assert first.steps == 5 and not (interrupted / "final").exists()
    resumed = train(config.replace(out=str(interrupted), resume=True))
    assert resumed.train_loss == whole.train_loss  # bit-identical losses at every step
    assert resumed.final_eval_loss == whole.final_eval_loss
    log_steps = [json.loads(line)["step"] for line in (interrupted / "log.jsonl").read_text().splitlines()]
    assert log_steps == list(range(1, 9))
    saved = torch.load(interrupted / "checkpoints" / "step-00000008" / "trainable.pt")
    reference = torch.load(tmp_path / "whole" / "checkpoints" / "step-00000008" / "trainable.pt")
    assert all(torch.equal(saved[k], reference[k]) for k in reference)


def test_resume_from_checkpoint_before_the_stop(tmp_path, micro_config):
    """A kill between checkpoints loses the steps after the last one; they are redone."""
    config = micro_config(save_every=2)
    whole = train(config.replace(out=str(tmp_path / "whole")))
    out = tmp_path / "cut"
    train(config.replace(out=str(out), max_steps=5, keep_checkpoints=5))
    import shutil
    shutil.rmtree(out / "checkpoints" / "step-00000005")  # as if killed after step 5, before its checkpoint
    resumed = train(config.replace(out=str(out), resume=True))
    assert resumed.train_loss == whole.train_loss


@pytest.mark.parametrize("changes, message", [
    ({}, "already holds a run"),
    ({"resume": True, "lr": 1e-2}, r"different settings .*lr: 0.003 -> 0.01"),
])
def test_existing_run_is_never_overwritten_or_resumed_differently(tmp_path, micro_config, changes, message):
    config = micro_config(tmp_path / "run", steps=3, save_every=0)
    train(config)
    with pytest.raises(TrainInputError, match=message):
        train(config.replace(**changes))


def test_log_line_cut_by_a_kill_is_dropped_on_resume(tmp_path, micro_config):
    out = tmp_path / "run"
    train(micro_config(out, max_steps=3, save_every=0))
    with open(out / "log.jsonl", "a") as log:
        log.write('{"step": 4, "loss": 1.2')  # killed mid-write
    train(micro_config(out, resume=True))
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_offload_names_train_on_the_cpu_as_their_base_optimizer(tmp_path, micro_config):
    # On a CPU offload is a no-op: a warning from the optimizer, the same run.
    import warnings

    config = micro_config(steps=3, eval_every=3, save_every=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        offloaded = train(config.replace(optim="offload_adamw_8bit", out=str(tmp_path / "offload")))
    assert [str(w.message) for w in caught if "offload=True has no effect" in str(w.message)]
    plain = train(config.replace(optim="adamw_8bit", out=str(tmp_path / "plain")))
    assert offloaded.train_loss == plain.train_loss
