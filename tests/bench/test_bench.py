import csv
import json

import pytest

from tightfit.bench.presets import DEFAULT_OPTIMS, PRESETS
from tightfit.bench.runner import resolve_optims
from tightfit.cli.main import main
from tightfit.names import OPTIMIZER_NAMES
from tightfit.train.errors import TrainInputError


def micro_args(corpus, out, *extra):
    return ["bench", "--model", "llama-micro", "--data", str(corpus), "--seq", "32", "--batch-size", "2", "--steps", "6",
            "--warmup", "1", "--eval-every", "3", "--eval-batches", "2", "--eval-fraction", "0.1", "--lr", "3e-3",
            "--out", str(out), "--quiet", *extra]


def test_bench_writes_every_file_with_sane_contents(tmp_path, corpus, capsys, one_thread):
    out = tmp_path / "results"
    optims = ["adamw_32bit", "adamw_8bit", "lion_8bit", "torch:adamw"]
    assert main(micro_args(corpus, out, "--optims", ",".join(optims), "--format", "json")) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {p.name for p in out.iterdir()} == {"loss.png", "memory.png", "results.md", "results.csv", "results.json", "runs"}
    for png in ("loss.png", "memory.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    rows = {r["optimizer"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert list(rows) == optims
    report = json.loads((out / "results.json").read_text())
    assert report["meta"]["baseline"] == "adamw_32bit" and printed["rows"] == report["rows"]
    by_name = {r["optimizer"]: r for r in report["rows"]}
    assert by_name["adamw_32bit"]["eval_loss_ratio"] == 1.0
    for row in report["rows"]:
        assert row["error"] is None and row["device"].startswith("cpu") and row["date"] and "torch" in row["versions"]
        assert 1.0 < row["final_eval_loss"] < 6.0  # byte vocab: ln 257 = 5.55 at random init
        assert row["eval_loss_ratio"] == pytest.approx(row["final_eval_loss"] / by_name["adamw_32bit"]["final_eval_loss"])
        assert row["step_time_s"] > 0 and row["tokens_per_s"] > 0 and row["peak_memory_bytes"] > row["optimizer_state_bytes"]
    # same init and data order: identical loss at step 1 for every optimizer
    first = {name: curves["train_loss"][0][1] for name, curves in report["curves"].items()}
    assert len(set(first.values())) == 1
    state = {n: by_name[n]["optimizer_state_bytes"] for n in optims}
    assert state["torch:adamw"] == state["adamw_32bit"] > state["adamw_8bit"] > state["lion_8bit"]
    assert by_name["adamw_8bit"]["quantized_states"].split("/")[0] != "0"
    md = (out / "results.md").read_text()
    assert all(f"| {name} |" in md for name in optims)
    assert md.count(report["rows"][0]["date"]) >= len(optims)  # date on every row
    for name in optims:
        log = out / "runs" / name.replace(":", "_") / "log.jsonl"
        assert len(log.read_text().splitlines()) == 6


def test_existing_results_folder_is_refused(tmp_path, corpus, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.csv").write_text("keep me")
    assert main(micro_args(corpus, out, "--optims", "adamw_32bit")) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and len(err.splitlines()) == 1
    assert (out / "results.csv").read_text() == "keep me"


def test_default_optimizers_are_those_registered(monkeypatch):
    run, skipped = resolve_optims(None)
    assert run == [n for n in DEFAULT_OPTIMS if n in OPTIMIZER_NAMES]
    assert set(run) | set(skipped) == set(DEFAULT_OPTIMS)
    # a name registered later (e.g. by the paging branch) joins the default list automatically
    monkeypatch.setitem(OPTIMIZER_NAMES, "paged_adamw_8bit", OPTIMIZER_NAMES["adamw_8bit"])
    assert "paged_adamw_8bit" in resolve_optims(None)[0]


@pytest.mark.parametrize("requested, message", [
    (["adamw_8bit", "nope"], "unknown optimizer 'nope'"),
    (["adamw_8bit", "adamw_8bit"], "twice"),
    ([], "empty"),
])
def test_bad_optimizer_lists(requested, message):
    with pytest.raises(TrainInputError, match=message):
        resolve_optims(requested)


def test_presets_are_runnable_configs():
    assert {"shakespeare-tiny", "smollm2-lora", "smollm2-qlora"} <= set(PRESETS)
    assert PRESETS["smollm2-qlora"].config.method == "qlora" and PRESETS["smollm2-lora"].config.method == "lora"
    assert all(not p.config.checkpoints for p in PRESETS.values())
