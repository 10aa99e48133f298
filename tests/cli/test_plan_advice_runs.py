"""Every change `tightfit plan` advises is a `tightfit train` command that runs.

The plan is made for the bundled llama-micro model on a GPU too small for anything (so
every applicable change is listed); each advice row's flags are added to the run's flags,
parsed by the train command's own parser and trained for 2 steps on the CPU.
"""

import pytest

from tightfit.cli.main import build_parser, main
from tightfit.cli.train import config_from_args
from tightfit.finetune import to_flags
from tightfit.planner.api import plan
from tightfit.train.loop import train

# starting points whose advice together covers every row of advice.CHANGES that applies to
# a tiny model: (plan settings, the same as train flags)
BASES = [
    dict(method="full", optim="adamw_32bit", precision="bf16-autocast", batch_size=12, seq=128),
    dict(method="full", optim="lion_32bit", precision="bf16", batch_size=2, seq=32),
    dict(method="lora", optim="adamw_32bit", precision="bf16", lora_r=16, batch_size=2, seq=32),
]


def advised(base: dict) -> list[dict]:
    """The settings each advice row changes."""
    result = plan("llama-micro", gpu="1MiB", **base)
    assert result.fits is False
    return [row["settings"] for row in result.advice if row["kind"] in ("change", "to_fit")]


def test_the_advice_covers_the_changes():
    changed = {key for base in BASES for settings in advised(base) for key in settings}
    assert changed == {"loss", "optim", "precision", "in_backward", "checkpointing", "offload_activations",
                       "batch_size", "grad_accum", "seq", "lora_r", "method"}


@pytest.mark.parametrize("base", BASES, ids=[f"{b['method']}-{b['optim']}-{b['precision']}" for b in BASES])
def test_every_advice_line_trains(base, corpus, one_thread, tmp_path, capsys):
    parser, _ = build_parser()
    rows = advised(base)
    assert rows
    for n, settings in enumerate(rows):
        argv = ["train", "--model", "llama-micro", "--data", str(corpus), "--steps", "2", "--warmup", "0",
                "--eval-every", "2", "--eval-batches", "1", "--eval-fraction", "0.1", "--out", str(tmp_path / str(n)),
                "--quiet", *to_flags(base), *to_flags(settings)]
        config = config_from_args(parser.parse_args(argv))
        assert {k: getattr(config, k) for k in {**base, **settings}} == {**base, **settings}  # the flags took effect
        result = train(config.replace(save_final=False, checkpoints=False))
        assert result.steps == 2 and result.final_eval_loss > 0, settings


def test_plan_takes_a_runs_config(corpus, one_thread, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "llama-micro", "--data", str(corpus), "--steps", "2", "--warmup", "0",
                 "--eval-every", "2", "--eval-batches", "1", "--eval-fraction", "0.1", "--seq", "32",
                 "--batch-size", "2", "--loss", "chunked", "--checkpointing", "--out", str(out), "--format",
                 "json"]) == 0
    err = capsys.readouterr().err
    assert "plan (CPU step)" in err and "measured / predicted = " in err
    assert main(["plan", str(out / "run_config.json"), "--device", "cpu", "--format", "json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    s = data["settings"]
    assert (s["loss"], s["checkpointing"], s["seq"], s["batch_size"], s["precision"]) == ("chunked", True, 32, 2, "fp32")
    assert data["model"]["name"] == "llama-micro"
