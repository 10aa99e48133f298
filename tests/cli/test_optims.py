import json
import subprocess
import sys

import pytest

from tightfit.cli.main import main

# name: exact state bytes/param for a 4096x4096 parameter (REFERENCE.md §1.1)
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


def test_table_output_from_the_installed_command():
    out = subprocess.run([sys.executable, "-m", "tightfit.cli.main", "optims"], capture_output=True, text=True,
                         check=True).stdout
    assert "adamw_8bit" in out and "State codecs" in out


def test_bad_format_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["optims", "--format", "yaml"])
    assert "invalid choice: 'yaml'" in capsys.readouterr().err
