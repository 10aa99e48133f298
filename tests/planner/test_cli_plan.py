import json
import subprocess
import sys

import pytest

from tightfit.cli.main import main

QLORA_8B = ["plan", "meta-llama/Llama-3.1-8B", "--method", "qlora", "--optim", "paged_adamw_8bit", "--gpu", "24GiB"]


def test_qlora_8b_table_from_the_command():
    out = subprocess.run([sys.executable, "-m", "tightfit.cli.main", *QLORA_8B], capture_output=True, text=True,
                         check=True).stdout
    for text in ("weights", "optimizer state", "activations", "logits", "CUDA context", "verdict:", "largest that fit",
                 "assumptions:", "paged"):
        assert text in out


def test_json_has_components_verdict_and_advice(capsys):
    assert main([*QLORA_8B, "--checkpointing", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {c["name"]: c for c in data["components"]}
    assert names["optimizer state"]["device"] == 0 and names["optimizer state"]["host"] > 0
    assert data["fits"] is True and data["gpu"]["bytes"] == 24 * 2**30
    assert data["device_total"] > data["peak_allocated"] > data["persistent"]
    assert any(row["kind"] == "limits" for row in data["advice"])


def test_exit_status_says_whether_it_fits(capsys):
    """0 fits (or no verdict), 3 does not fit: scripts can test the verdict."""
    assert main(["plan", "llama-3.2-1b", "--gpu", "80"]) == 0
    assert main(["plan", "llama-3.2-1b", "--gpu", "4"]) == 3
    assert main(["plan", "llama-3.2-1b"]) == 0
    capsys.readouterr()


def test_simulate_prints_one_peak(capsys):
    assert main(["plan", "smollm2-135m", "--optim", "adamw_8bit", "--seq", "64", "--simulate", "--gpu", "24"]) == 0
    out = capsys.readouterr().out
    assert out.count("peak:") == 1 and "peak allocated" not in out and "analytic / simulated = " in out


@pytest.mark.parametrize("args,message", [
    (["plan", "no-such-model"], "unknown model 'no-such-model'"),
    (["plan", "llama-3.2-1b", "--gpu", "24 parsecs"], "invalid --gpu '24 parsecs'"),
    (["plan", "llama-3.2-1b", "--optim", "adamw_3bit"], "unknown optimizer 'adamw_3bit'; allowed:"),
    (["plan", "llama-3.2-1b", "--batch", "0"], "--batch-size 0 must be >= 1"),
    (["plan", "llama-3.2-1b", "--method", "dora"], "unknown method 'dora' (allowed: full, lora, qlora)"),
    (["plan", "llama-3.2-1b", "--dtype", "fp8"], "unknown precision 'fp8' (allowed: fp32, bf16, bf16-autocast, "
                                                 "bf16-sr)"),
    (["plan", "llama-3.2-1b", "--lora-targets", "q_proj,x_proj", "--method", "lora"], "unknown x_proj"),
    (["plan", "llama-3.2-1b", "--loss", "sparse"], "unknown loss 'sparse' (allowed: full, chunked)"),
    (["plan", "llama-3.2-1b", "--optim", "torch:adamw", "--in-backward"], "--in-backward needs a tightfit optimizer"),
    (["plan", "llama-3.2-1b", "--paged-budget", "lots"], "invalid size 'lots'"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "tightfit plan meta-llama/Llama-3.1-8B --method qlora" in out
