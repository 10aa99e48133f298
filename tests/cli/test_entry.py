from tightfit.cli.main import join_negative_values, main


def test_version_from_the_console_script_and_python_m(tightfit):
    from importlib import metadata

    expected = f"tightfit {metadata.version('tightfit')}"
    assert tightfit("--version").stdout.strip() == expected
    via_module = tightfit("--version", module=True)
    assert via_module.returncode == 0 and via_module.stdout.strip() == expected


# argv -> argv as argparse gets it: negative values join their option, nothing else changes
NEGATIVE_VALUES = [
    (["--lr", "-1e-4"], ["--lr=-1e-4"]),
    (["--lr", "-.5", "--clip", "-2"], ["--lr=-.5", "--clip=-2"]),
    (["--lr=-1e-4"], ["--lr=-1e-4"]),
    (["--quiet", "--lr", "3e-4"], ["--quiet", "--lr", "3e-4"]),
    (["-1e-4"], ["-1e-4"]),
    (["--out", "-x"], ["--out", "-x"]),
]


def test_negative_values_reach_their_option():
    for argv, expected in NEGATIVE_VALUES:
        assert join_negative_values(argv) == expected


def test_negative_lr_gets_the_lr_check_not_an_argparse_error(tmp_path, corpus, capsys):
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "o"), "--lr", "-1e-4"]) == 2
    assert capsys.readouterr().err.strip() == "tightfit train: error: --lr -0.0001 must be > 0"


def test_unexpected_failure_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import pytest

    from tightfit.cli import optims

    def broken(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(optims, "run", broken)
    assert main(["optims"]) == 1
    assert capsys.readouterr().err.strip() == \
        "tightfit optims: error: RuntimeError: boom (run with --debug for the traceback)"
    with pytest.raises(RuntimeError):
        main(["--debug", "optims"])
    with pytest.raises(RuntimeError):
        main(["optims", "--debug"])
