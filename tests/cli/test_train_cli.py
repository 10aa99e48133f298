import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tightfit.cli.main import main

SRC = str(Path(__file__).resolve().parents[2] / "src")


def micro_args(corpus, out, *extra):
    return ["train", "--model", "llama-micro", "--data", str(corpus), "--seq", "32", "--batch-size", "2",
            "--steps", "8", "--warmup", "2", "--eval-every", "4", "--eval-batches", "2", "--eval-fraction", "0.1",
            "--out", str(out), "--quiet", *extra]


def log_losses(out):
    return [json.loads(line)["loss"] for line in (Path(out) / "log.jsonl").read_text().splitlines()]


# extra/replaced arguments -> words the single error line must contain
BAD_INPUTS = [
    (["--data", "/no/such/file.txt"], "data '/no/such/file.txt' not found"),
    (["--data", "{empty}"], "is empty"),
    (["--optim", "adamw_3bit"], "unknown optimizer 'adamw_3bit'"),
    (["--seq", "4096"], "--seq 4096 is longer than the model's context (128"),
    (["--method", "dora"], "unknown method 'dora' (allowed: full, lora, qlora)"),
    (["--model", "nowhere/nothing/x"], "model 'nowhere/nothing/x' not found"),
    (["--schedule", "steps"], "unknown schedule 'steps'"),
    (["--warmup", "99"], "--warmup 99 must be between 0 and --steps"),
    (["--batch-size", "0"], "--batch-size 0 must be >= 1"),
    (["--threads", "0"], "--threads 0 must be >= 1"),
    (["--method", "lora", "--lora-r", "0"], "--lora-r 0 must be >= 1"),
    (["--eval-fraction", "0.7"], "eval fraction 0.7 must be in (0, 0.5)"),
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, corpus, capsys, extra, message, one_thread):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    extra = [str(empty) if a == "{empty}" else a for a in extra]
    assert main(micro_args(corpus, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tightfit train: error:")
    assert message in err


def test_cli_resume_takes_settings_from_the_run(tmp_path, corpus, capsys, one_thread):
    assert main(micro_args(corpus, tmp_path / "whole", "--format", "json")) == 0
    assert main(micro_args(corpus, tmp_path / "cut", "--max-steps", "3", "--format", "json")) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume", "--quiet", "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 8
    assert log_losses(tmp_path / "cut") == log_losses(tmp_path / "whole")


def test_killed_process_resumes_to_the_same_losses(tmp_path, corpus, one_thread):
    """SIGKILL a real training process after a checkpoint, then --resume."""
    from tightfit.train.checkpoint import latest_checkpoint

    out = tmp_path / "killed"
    args = micro_args(corpus, out, "--steps", "2000", "--save-every", "2", "--threads", "1")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "tightfit.cli.main", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while latest_checkpoint(out) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = latest_checkpoint(out)
    assert ckpt is not None, "no checkpoint before the kill"
    stop = json.loads((ckpt / "state.json").read_text())["step"] + 4
    assert stop < 2000, "killed too late to test anything"
    assert main(["train", "--out", str(out), "--resume", "--quiet", "--max-steps", str(stop)]) == 0
    assert main(micro_args(corpus, tmp_path / "whole", "--steps", "2000", "--max-steps", str(stop))) == 0
    assert log_losses(out) == log_losses(tmp_path / "whole")


def test_failing_peer_optimizer_is_one_line(tmp_path, corpus, capsys, monkeypatch, one_thread):
    """A peer that cannot run here (e.g. a bitsandbytes build without this device) -> one line, exit 1."""
    from tightfit.train import peers

    def broken(params, **kwargs):
        raise RuntimeError("CUDA Setup failed despite GPU being available.\nmore details")

    monkeypatch.setitem(peers.PEERS, "bnb:adamw_8bit", peers.Peer(broken, "broken"))
    assert main(micro_args(corpus, tmp_path / "out", "--optim", "bnb:adamw_8bit")) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("tightfit train: error: optimizer bnb:adamw_8bit failed on this machine: "
                   "RuntimeError: CUDA Setup failed despite GPU being available.")


@pytest.mark.parametrize("extra", [["--data", "{missing}"], ["--warmup", "99"]])
def test_bad_input_leaves_no_output_folder(tmp_path, corpus, capsys, extra):
    extra = [str(tmp_path / "missing.txt") if a == "{missing}" else a for a in extra]
    assert main(micro_args(corpus, tmp_path / "out", *extra)) == 2
    assert not (tmp_path / "out").exists()
