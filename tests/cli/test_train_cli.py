import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import script, script_env

from tightfit.cli.main import main


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
    (["--model", "nowhere/nothing/x"], "model folder 'nowhere/nothing/x' not found"),
    (["--schedule", "steps"], "unknown schedule 'steps'"),
    (["--warmup", "99"], "--warmup 99 must be between 0 and --steps"),
    (["--batch-size", "0"], "--batch-size 0 must be >= 1"),
    (["--threads", "0"], "--threads 0 must be >= 1"),
    (["--method", "lora", "--lora-r", "0"], "--lora-r 0 must be >= 1"),
    (["--eval-fraction", "0.7"], "eval fraction 0.7 must be in (0, 0.5)"),
    (["--optim", "adamw_8bti"], "unknown optimizer 'adamw_8bti'; did you mean adamw_8bit"),
    (["--lr", "-1e-4"], "--lr -0.0001 must be > 0"),
    (["--model", "./no-such-model"], "model folder './no-such-model' not found"),
    (["--out", "{file}"], "is a file, not a folder"),
    (["--out", "/proc/tightfit-run"], "cannot write --out /proc/tightfit-run"),
    (["--data", "{binary}"], "is not UTF-8 text (byte 0xff at offset 0)"),
    (["--data", "{prompts}"], "has no tokens to train on (every record is a prompt with an empty response)"),
    (["--warmup", "20", "--steps", "2"], "--warmup 20 must be between 0 and --steps 2"),
]


def materialize(extra, tmp_path):
    """Placeholders in a case's arguments -> files made for it."""
    made = {"{empty}": ("empty.txt", b""), "{file}": ("a-file", b"x"), "{binary}": ("binary.jsonl", b"\xff\xfe\x00\x01" * 64),
            "{prompts}": ("prompts.jsonl", b'{"prompt": "To be or not to be?", "response": ""}\n' * 300)}
    out = []
    for arg in extra:
        if arg in made:
            name, data = made[arg]
            (tmp_path / name).write_bytes(data)
            arg = str(tmp_path / name)
        out.append(arg)
    return out


@pytest.mark.parametrize("extra, message", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, corpus, capsys, extra, message, one_thread):
    extra = materialize(extra, tmp_path)
    assert main(micro_args(corpus, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tightfit train: error:")
    assert message in err


@pytest.mark.parametrize("extra, message", [case for case in BAD_INPUTS if "{" in "".join(case[0])][:3])
def test_bad_input_through_the_console_script(tmp_path, corpus, tightfit, extra, message):
    done = tightfit(*micro_args(corpus, tmp_path / "out", *materialize(extra, tmp_path)))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("tightfit train: error:") and message in done.stderr


def test_offline_hub_id_fails_at_once_in_one_line(tmp_path, corpus, capsys, monkeypatch):
    from tightfit import hub

    monkeypatch.setattr(hub, "network_allowed", lambda: (False, "HF_HUB_OFFLINE is set"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    began = time.perf_counter()
    assert main(micro_args(corpus, tmp_path / "out", "--model", "nobody/no-model")) == 2
    err = capsys.readouterr().err.strip()
    assert time.perf_counter() - began < 30 and len(err.splitlines()) == 1
    assert "model 'nobody/no-model': no such local folder" in err and "hub is not reachable (HF_HUB_OFFLINE is set)" in err


def test_default_warmup_is_clamped_to_a_short_run(tmp_path, corpus, capsys, one_thread):
    args = micro_args(corpus, tmp_path / "out")
    at = args.index("--warmup")
    del args[at:at + 2]
    assert main([*args, "--steps", "2", "--format", "json"]) == 0
    assert "the default --warmup 10 is longer than --steps 2: using --warmup 2" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "run_config.json").read_text())["warmup"] == 2


def test_data_summary_and_overfitting_warning(tmp_path, corpus, capsys, one_thread):
    assert main(micro_args(corpus, tmp_path / "out", "--steps", "40", "--batch-size", "8", "--eval-every", "40")) == 0
    err = capsys.readouterr().err
    # the corpus: 6,920 bytes + 1 end-of-document id -> 216 blocks of 32, every 10th held out
    assert "data: 6,921 tokens from 1 file(s) -> 216 blocks of 32: 195 to train on, 21 held out (16 scored per " \
           "evaluation); 40 steps = 1.64 epochs" in err
    assert "memorize" not in err
    assert main(micro_args(corpus, tmp_path / "more", "--steps", "80", "--batch-size", "8", "--eval-every", "80")) == 0
    assert "warning: 3.3 epochs over 195 training blocks: the model will likely memorize" in capsys.readouterr().err


def test_lora_on_a_random_init_model_warns(tmp_path, corpus, capsys, one_thread):
    assert main(micro_args(corpus, tmp_path / "out", "--method", "lora", "--steps", "1", "--warmup", "0")) == 0
    assert "--method lora on llama-micro, a random-init model" in capsys.readouterr().err


def test_cli_keeps_a_final_folder_it_did_not_write_and_finished_resume_is_a_no_op(tmp_path, corpus, capsys, one_thread):
    out = tmp_path / "out"
    (out / "final").mkdir(parents=True)
    (out / "final" / "weights.bin").write_bytes(b"precious")
    assert main(micro_args(corpus, out)) == 2
    assert (out / "final" / "weights.bin").read_bytes() == b"precious"
    assert main(micro_args(corpus, tmp_path / "done")) == 0
    capsys.readouterr()
    stamp = (tmp_path / "done" / "final" / "model.safetensors").stat().st_mtime_ns
    assert main(["train", "--out", str(tmp_path / "done"), "--resume", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "already finished (step 8 of 8)" in captured.err and captured.out == ""
    assert (tmp_path / "done" / "final" / "model.safetensors").stat().st_mtime_ns == stamp


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
    proc = subprocess.Popen([*script(), *args], env=script_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
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

    def broken(name, params, **kwargs):
        raise RuntimeError("CUDA Setup failed despite GPU being available.\nmore details")

    monkeypatch.setattr(peers, "build_peer", broken)
    assert main(micro_args(corpus, tmp_path / "out", "--optim", "bnb:adamw_8bit")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model and data notes
    assert err == ("tightfit train: error: optimizer bnb:adamw_8bit failed on this machine: "
                   "RuntimeError: CUDA Setup failed despite GPU being available.")


@pytest.mark.parametrize("extra", [["--data", "{missing}"], ["--warmup", "99"]])
def test_bad_input_leaves_no_output_folder(tmp_path, corpus, capsys, extra):
    extra = [str(tmp_path / "missing.txt") if a == "{missing}" else a for a in extra]
    assert main(micro_args(corpus, tmp_path / "out", *extra)) == 2
    assert not (tmp_path / "out").exists()


def start_training(tightfit_command, out, corpus, *extra):
    """A real training process (console script) that would run for minutes unless stopped."""
    args = micro_args(corpus, out, "--steps", "100000", "--threads", "1", *extra)
    return subprocess.Popen([*tightfit_command, *args], env=script_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, seconds=120):
    deadline = time.time() + seconds
    while not condition() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended early: {proc.communicate()[1][-2000:]}"


def logged_steps(out):
    path = Path(out) / "log.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_ctrl_c_after_a_checkpoint_names_it_and_the_resume_command(tmp_path, corpus):
    from tightfit.train.checkpoint import list_checkpoints

    out = tmp_path / "run"
    proc = start_training(script(), out, corpus, "--save-every", "3")
    wait_for(lambda: len(list_checkpoints(out)) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tightfit train: interrupted at step ")
    assert f"latest checkpoint: {out}/checkpoints/step-" in last
    assert last.endswith(f"continue with: tightfit train --out {out} --resume")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_run_stopped_before_its_first_checkpoint_can_be_resumed(tmp_path, corpus, one_thread, sig):
    """No dead end: stopped before any checkpoint, --resume restarts the run (no folder to delete)."""
    out = tmp_path / "run"
    proc = start_training(script(), out, corpus, "--save-every", "0")
    wait_for(lambda: logged_steps(out) >= 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "Traceback" not in err
        assert err.strip().splitlines()[-1].endswith(
            f"before the first checkpoint; restart it with: tightfit train --out {out} --resume")
    assert main(["train", "--out", str(out), "--resume", "--quiet", "--max-steps", "3", "--save-every", "3"]) == 0
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_no_third_party_noise_on_a_qlora_paged_run(tmp_path, corpus, tightfit):
    """bitsandbytes' kernels hint, transformers' FutureWarnings and weight-loading bars, the
    paged-on-CPU warning's source line: none of it reaches the user; every line is ours."""
    pytest.importorskip("bitsandbytes")
    done = tightfit(*micro_args(corpus, tmp_path / "out", "--method", "qlora", "--optim", "paged_adamw_8bit",
                                "--steps", "1", "--warmup", "0", "--grad-checkpointing", "--format", "json"))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert all(line.startswith("tightfit: ") for line in lines), lines
    assert any(line.startswith("tightfit: warning: paged optimizer states have no effect") for line in lines)
    assert json.loads(done.stdout)["steps"] == 1


def test_write_failure_mid_run_names_the_file_and_the_resume_command(tmp_path, corpus, capsys, monkeypatch, one_thread):
    import errno

    from tightfit.train import loop

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "checkpoints"))

    monkeypatch.setattr(loop, "save_checkpoint", disk_full)
    assert main(micro_args(corpus, tmp_path / "out")) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"tightfit train: error: cannot use {tmp_path}/out/checkpoints: No space left on device; "
                    f"once fixed, continue with: tightfit train --out {tmp_path}/out --resume")
