import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tightfit.train.checkpoint import (TENSOR_FILES, choose_checkpoint, clean_temporary, damage, list_checkpoints,
                                       save_checkpoint)


def tiny_run(out: Path, steps: list[int]) -> None:
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for step in steps:
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        save_checkpoint(out, step, model, optimizer, scheduler, {"tokens_seen": step}, keep=5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    tiny_run(out, [1, 2])
    return out


def test_intact_checkpoint_has_checksums_and_no_damage(saved):
    ckpt = list_checkpoints(saved)[-1]
    state = json.loads((ckpt / "state.json").read_text())
    assert set(state["sha256"]) == set(TENSOR_FILES) and damage(ckpt) is None


@settings(max_examples=40, deadline=None)
@given(file=st.sampled_from(TENSOR_FILES), where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7),
       how=st.sampled_from(["flip", "truncate", "zero"]))
def test_any_changed_byte_is_detected(saved, file, where, bit, how):
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "step-00000002"
        shutil.copytree(list_checkpoints(saved)[-1], ckpt)
        data = bytearray((ckpt / file).read_bytes())
        at = int(where * len(data))
        if how == "flip":
            data[at] ^= 1 << bit
        elif how == "truncate":
            data = data[:at]
        else:
            data[at:] = bytes(len(data) - at) if any(data[at:]) else b"\x01" * (len(data) - at)
        (ckpt / file).write_bytes(bytes(data))
        assert damage(ckpt) == f"{file} does not match its checksum"


def test_choose_falls_back_and_sets_damaged_aside(tmp_path):
    tiny_run(tmp_path, [1, 2, 3])
    (tmp_path / "checkpoints" / "step-00000003" / "rng.pt").unlink()
    (tmp_path / "checkpoints" / "step-00000002" / "state.json").write_text("{")
    warnings = []
    assert choose_checkpoint(tmp_path, warn=warnings.append).name == "step-00000001"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == \
        {"step-00000001", "damaged-step-00000002", "damaged-step-00000003"}
    assert "step-00000003 is damaged (rng.pt missing)" in warnings[0] and "state.json unreadable" in warnings[1]


def test_clean_temporary_removes_only_interrupted_saves(tmp_path):
    tiny_run(tmp_path, [1])
    for path in (tmp_path / "checkpoints" / ".tmp-step-00000002-ab", tmp_path / ".tmp-final-cd", tmp_path / "mine"):
        path.mkdir()
    assert {p.name for p in clean_temporary(tmp_path)} == {".tmp-step-00000002-ab", ".tmp-final-cd"}
    assert (tmp_path / "mine").is_dir() and list_checkpoints(tmp_path)
