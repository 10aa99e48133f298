import json

import pytest

from tightfit.train.checkpoint import list_checkpoints
from tightfit.train.errors import TrainInputError
from tightfit.train.loop import train


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


def test_read_only_out_is_refused_before_anything_loads(tmp_path, monkeypatch):
    """(As root a chmod does not stop writes, so the read-only mount is simulated at the probe.)"""
    import errno
    import tempfile

    from tightfit.train.run_folder import check_writable

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(TrainInputError, match=r"^cannot write --out .*/new/run: Read-only file system in .*; choose another"):
        check_writable(tmp_path / "new" / "run")
