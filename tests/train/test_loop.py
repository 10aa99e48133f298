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


def test_resume_of_a_folder_without_a_run_is_refused(tmp_path, micro_config):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainInputError, match="not a tightfit train output folder"):
        train(micro_config(tmp_path / "empty", resume=True))


def test_run_stopped_before_its_first_checkpoint_resumes_from_step_0(tmp_path, micro_config, capsys):
    """Killed before the first checkpoint: --resume restarts it (no folder to delete by hand)."""
    config = micro_config(save_every=0)
    whole = train(config.replace(out=str(tmp_path / "whole")))
    out = tmp_path / "cut"
    train(config.replace(out=str(out), max_steps=3, checkpoints=False))  # as if killed at step 3
    assert list_checkpoints(out) == [] and (out / "log.jsonl").read_text()
    with pytest.raises(TrainInputError, match="no checkpoint yet.*--resume"):
        train(config.replace(out=str(out)))
    resumed = train(config.replace(out=str(out), resume=True))
    assert "restarting the run from step 0" in capsys.readouterr().err
    assert resumed.train_loss == whole.train_loss
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == list(range(1, 9))


def test_leftover_temporary_folders_are_ignored_then_cleaned(tmp_path, micro_config):
    out = tmp_path / "run"
    train(micro_config(out, steps=3, max_steps=2, save_every=0))
    (out / "checkpoints" / ".tmp-step-00000003-x").mkdir()  # a write killed before its rename
    (out / ".tmp-final-y").mkdir()
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002"]
    assert train(micro_config(out, steps=3, save_every=0, resume=True)).steps == 3
    assert not (out / "checkpoints" / ".tmp-step-00000003-x").exists() and not (out / ".tmp-final-y").exists()


# what damages the newest checkpoint -> words of the warning
DAMAGES = [
    (lambda ckpt: (ckpt / "optimizer.pt").write_bytes((ckpt / "optimizer.pt").read_bytes()[:100]), "optimizer.pt"),
    (lambda ckpt: (ckpt / "state.json").write_text(""), "state.json unreadable"),
    (lambda ckpt: (ckpt / "trainable.pt").write_bytes(bytes(len((ckpt / "trainable.pt").read_bytes()))), "trainable.pt"),
]


@pytest.mark.parametrize("damage, words", DAMAGES)
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, micro_config, capsys, damage, words):
    config = micro_config(save_every=2, keep_checkpoints=2)
    whole = train(config.replace(out=str(tmp_path / "whole")))
    out = tmp_path / "cut"
    train(config.replace(out=str(out), max_steps=6))
    damage(out / "checkpoints" / "step-00000006")
    resumed = train(config.replace(out=str(out), resume=True))
    err = capsys.readouterr().err
    assert words in err and "step-00000006 is damaged" in err and "resuming from" in err and "step 4 of 8" in err
    assert resumed.train_loss == whole.train_loss  # redone from step 4: the same run
    assert (out / "checkpoints" / "damaged-step-00000006").is_dir()  # kept, not deleted


def test_final_folder_the_run_did_not_write_is_never_replaced(tmp_path, micro_config):
    out = tmp_path / "run"
    (out / "final").mkdir(parents=True)
    (out / "final" / "notes.txt").write_text("mine")
    with pytest.raises(TrainInputError, match="final already exists and was not written"):
        train(micro_config(out))
    assert (out / "final" / "notes.txt").read_text() == "mine" and not (out / "log.jsonl").exists()


def test_resume_of_a_finished_run_says_so_and_keeps_final(tmp_path, micro_config):
    from tightfit.train.errors import NothingToDo

    out = tmp_path / "run"
    train(micro_config(out))
    before = {p.name: p.stat().st_mtime_ns for p in (out / "final").iterdir()}
    with pytest.raises(NothingToDo, match="already finished .step 8 of 8"):
        train(micro_config(out, resume=True))
    assert {p.name: p.stat().st_mtime_ns for p in (out / "final").iterdir()} == before


def test_log_line_cut_by_a_kill_is_dropped_on_resume(tmp_path, micro_config):
    out = tmp_path / "run"
    train(micro_config(out, max_steps=3, save_every=0))
    with open(out / "log.jsonl", "a") as log:
        log.write('{"step": 4, "loss": 1.2')  # killed mid-write
    train(micro_config(out, resume=True))
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
