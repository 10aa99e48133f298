import json

import pytest

from tightfit.cli.main import main

# name: exact state bytes/param for a 4096x4096 parameter (codes + one fp32 absmax per block)
EXPECTED_BYTES_PER_PARAM = {
    "adamw_32bit": 8.0,
    "adamw_bf16": 4.0,
    "adamw_8bit": 2 * (1 + 4 / 256),
    "adamw_4bit": 2 * (0.5 + 4 / 128),
    "lion_8bit": 1 + 4 / 256,
    "sgd_8bit": 0.0,  # momentum 0 by default: SGD keeps no state
}


def run_json(capsys, *args):
    assert main(["optims", "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name,expected", sorted(EXPECTED_BYTES_PER_PARAM.items()))
def test_json_lists_exact_bytes_per_param(capsys, name, expected):
    rows = {row["name"]: row for row in run_json(capsys)["names"]}
    assert rows[name]["state_bytes_per_param"] == pytest.approx(expected, rel=1e-12)


def test_json_lists_rules_and_codecs(capsys):
    data = run_json(capsys, "--shape", "1024", "1024")
    assert {"adamw", "adam", "lion", "sgd"} <= {r["name"] for r in data["rules"]}
    assert {c["name"] for c in data["codecs"]} == {"fp32", "bf16", "8bit", "4bit"}
    assert data["shape"] == [1024, 1024]


def test_piped_table_is_not_truncated(tightfit):
    """Through a pipe (not a terminal) every name and description stays whole on its line."""
    from tightfit.names import OPTIMIZER_NAMES

    done = tightfit("optims")
    assert done.returncode == 0 and "State codecs" in done.stdout and "…" not in done.stdout
    lines = done.stdout.splitlines()
    for name, entry in OPTIMIZER_NAMES.items():
        assert any(f"│ {name} " in line and entry.describe() in line for line in lines), name


def test_stateless_names_say_why_they_show_zero(capsys):
    rows = {row["name"]: row for row in run_json(capsys)["names"]}
    for name in ("sgd_8bit", "sgd_4bit", "sgd_32bit"):
        assert rows[name]["state_bytes_per_param"] == 0
        assert rows[name]["note"].startswith("no state at momentum 0 (the default)")
    assert rows["sgd_8bit"]["state_bytes_per_param_with_momentum"] == pytest.approx(1 + 4 / 256, rel=1e-12)
    assert rows["sgd_4bit"]["state_bytes_per_param_with_momentum"] < rows["sgd_8bit"]["state_bytes_per_param_with_momentum"]
    assert "note" not in rows["adamw_8bit"]


def test_bad_format_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["optims", "--format", "yaml"])
    assert "invalid choice: 'yaml'" in capsys.readouterr().err
