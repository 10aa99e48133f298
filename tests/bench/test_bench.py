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


def test_results_name_the_real_data_and_held_out_set(tmp_path, corpus, capsys, one_thread):
    out = tmp_path / "results"
    assert main(micro_args(corpus, out, "--optims", "adamw_32bit,paged_adamw_32bit,offload_adamw_32bit", "--steps", "2")) == 0
    err = capsys.readouterr().err
    assert "data: 6,921 tokens from 1 file(s) -> 216 blocks of 32: 195 to train on, 21 held out (4 scored" in err
    md = (out / "results.md").read_text()
    assert md.startswith("# tightfit bench: llama-micro / full on corpus.txt\n") and "shakespeare" not in md
    assert "held-out: 4 blocks of 32 tokens (of 21 held out: every 10th block, never trained on" in md
    assert "195 training blocks of 32 (0.02 epochs)" in md
    assert "- model source: bundled llama-micro (random init, seed 0)" in md
    assert "offload_adamw_32bit" in md  # offload names run through bench (a no-op on the CPU)


def run_with(optim, train_loss, eval_loss):
    from tightfit.bench.runner import BenchRun
    from tightfit.train.loop import TrainResult

    return BenchRun(optim, TrainResult(optim, 1e-3, 2, train_loss=train_loss, eval_loss=eval_loss), None, 1.0)


def test_identical_curves_are_named_as_twins():
    from tightfit.bench.plots import same_curves

    a = [(1, 2.0), (2, 1.5)]
    runs = [run_with("adamw_32bit", a, [(2, 1.6)]), run_with("paged_adamw_32bit", list(a), [(2, 1.6)]),
            run_with("adamw_8bit", [(1, 2.0), (2, 1.5000001)], [(2, 1.6)]), run_with("x", a, [(2, 1.7)])]
    assert same_curves(runs) == {"paged_adamw_32bit": "adamw_32bit"}


# bar values in MiB -> log scale?, label of the first bar
SCALES = [
    ([6.0, 0.05], True, "6 MiB"),
    ([1.51, 0.95, 0.75], False, "1.51 MiB"),
    ([1234.5, 0.0], False, "1,234 MiB"),
    ([0.0963, 0.0], False, "0.0963 MiB"),
]


@pytest.mark.parametrize("values, log, label", SCALES)
def test_size_axis_turns_logarithmic_across_decades(values, log, label):
    from tightfit.bench.plots import format_mib, use_log_scale

    assert use_log_scale(values) is log and format_mib(values[0]) == label


def test_memory_plot_titles_and_labels(tmp_path, monkeypatch):
    from tightfit.bench import plots

    drawn = {}
    real = plots._bars
    monkeypatch.setattr(plots, "_bars", lambda ax, names, mib, color, title: (drawn.setdefault(title, mib),
                                                                             real(ax, names, mib, color, title)))
    rows = [{"optimizer": n, "error": None, "peak_memory_kind": "cpu_tracked_params_grads_state",
             "peak_memory_bytes": peak, "optimizer_state_bytes": state}
            for n, peak, state in [("adamw_32bit", 6 * 2**20, 4 * 2**20), ("sgd_8bit", 2 * 2**20, 0)]]
    plots.plot_memory(rows, tmp_path / "m.png", "t")
    assert set(drawn) == {"peak memory: params + grads + optimizer state (CPU, exact)", "optimizer state"}
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
