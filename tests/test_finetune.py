"""tightfit.finetune: one configuration, one flag per field, the same in every command."""

import argparse
import dataclasses
import json

import pytest
from hypothesis import given, settings, strategies as st

from tightfit.cli.main import build_parser
from tightfit.finetune import (FINETUNE_FIELDS, FLAGS, PRECISIONS, FineTune, check_finetune, effective,
                               from_run_config, lora_target_modules, to_flags)
from tightfit.train.config import TrainConfig


def test_train_config_is_a_finetune():
    assert issubclass(TrainConfig, FineTune)
    assert set(FINETUNE_FIELDS) <= {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("command", ["plan", "train", "bench"])
def test_every_command_has_every_flag(command):
    parser, _ = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    options = {s for a in sub._actions for s in a.option_strings}
    for name in FLAGS:
        assert "--" + name.replace("_", "-") in options, (command, name)
    assert {"--stochastic-rounding", "--grad-checkpointing", "--lora-rank", "--batch", "--dtype"} <= options


finetunes = st.builds(
    FineTune, method=st.sampled_from(["full", "lora", "qlora"]), optim=st.sampled_from(["adamw_8bit", "lion_32bit"]),
    paged_budget=st.sampled_from([None, "0", "64MiB"]), precision=st.sampled_from(sorted(PRECISIONS)),
    in_backward=st.booleans(), checkpointing=st.booleans(), offload_activations=st.booleans(),
    loss=st.sampled_from(["full", "chunked"]), lora_r=st.integers(1, 64), lora_alpha=st.integers(1, 64),
    lora_targets=st.sampled_from(["all-linear", "qv", "q_proj,down_proj"]), adapter_dtype=st.sampled_from(["fp32", "bf16"]),
    batch_size=st.integers(1, 16), seq=st.integers(1, 4096), grad_accum=st.integers(1, 8))


@settings(max_examples=30, deadline=None)
@given(finetunes)
def test_flags_round_trip_through_every_parser(ft):
    """to_flags(ft) parsed by plan's and train's parsers gives ft back."""
    parser, _ = build_parser()
    settings = {k: getattr(ft, k) for k in FINETUNE_FIELDS if k != "model"}
    flags = to_flags({k: v for k, v in settings.items() if v is not None})
    for argv in (["plan", "llama-micro", *flags], ["train", "--out", "x", *flags]):
        args = parser.parse_args(argv)
        parsed = {k: getattr(args, k) for k in settings if hasattr(args, k)}
        assert parsed == {k: v for k, v in settings.items() if v is not None and v is not False}


def test_stochastic_rounding_flag_is_the_precision():
    parser, _ = build_parser()
    assert parser.parse_args(["plan", "m", "--stochastic-rounding"]).precision == "bf16-sr"


@pytest.mark.parametrize("changes,message", [
    ({"method": "dora"}, "unknown method 'dora' (allowed: full, lora, qlora)"),
    ({"precision": "fp16"}, "unknown precision 'fp16' (allowed: fp32, bf16, bf16-autocast, bf16-sr)"),
    ({"loss": "sparse"}, "unknown loss 'sparse'"),
    ({"adapter_dtype": "fp8"}, "unknown adapter-dtype 'fp8'"),
    ({"seq": 0}, "--seq 0 must be >= 1"),
    ({"grad_accum": True}, "--grad-accum True must be >= 1"),
    ({"method": "lora", "lora_targets": "q_proj,bogus"}, "unknown bogus"),
    ({"method": "lora", "lora_alpha": 0}, "--lora-alpha 0 must be > 0"),
    ({"paged_budget": "much"}, "invalid size 'much'"),
    ({"optim": "torch:adamw", "in_backward": True}, "--in-backward needs a tightfit optimizer"),
    ({"optim": "bnb:adamw_8bit", "precision": "bf16-sr"}, "--precision bf16-sr needs a tightfit optimizer"),
    ({"optim": "bnb:adamw_8bit", "paged_budget": "1GiB"}, "--paged-budget needs a tightfit optimizer"),
    ({"method": "full", "precision": "bf16", "in_backward": True}, "--in-backward with --precision bf16"),
])
def test_bad_settings_name_the_value(changes, message):
    with pytest.raises(ValueError, match=None) as err:
        check_finetune(dataclasses.replace(FineTune(), **changes))
    assert message in str(err.value)


@pytest.mark.parametrize("text,modules", [("all-linear", 7), ("qv", 2), ("attention", 4), ("q_proj, down_proj", 2)])
def test_lora_targets(text, modules):
    assert len(lora_target_modules(text)) == modules


def test_cpu_runs_fp32():
    ft = FineTune(precision="bf16-sr", adapter_dtype="bf16")
    assert effective(ft, "cpu").precision == "fp32" and effective(ft, "cuda") == ft


def test_run_config_round_trip(tmp_path):
    config = TrainConfig(model="llama-micro", method="lora", loss="chunked", lora_targets="qv", seq=64)
    (tmp_path / "run_config.json").write_text(json.dumps(config.to_dict()))
    assert from_run_config(tmp_path) == config.finetune()
    assert TrainConfig.from_saved(config.to_dict()) == config


def test_an_older_run_config_reads_as_what_it_ran(tmp_path):
    """Runs saved before these fields: grad_checkpointing, and fp32 (train computed in fp32)."""
    old = {"model": "llama-tiny", "method": "full", "optim": "adamw_8bit", "grad_checkpointing": True, "seq": 64}
    (tmp_path / "run_config.json").write_text(json.dumps(old))
    ft = from_run_config(tmp_path / "run_config.json")
    assert (ft.checkpointing, ft.precision, ft.seq) == (True, "fp32", 64)
    assert TrainConfig.from_saved(old).checkpointing is True


@pytest.mark.parametrize("content", ["{", "[1, 2]", '{"optim": "x"}'])
def test_a_bad_run_config_names_the_file(tmp_path, content):
    path = tmp_path / "run_config.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="run_config.json"):
        from_run_config(path)
