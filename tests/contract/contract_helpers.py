"""Small shared pieces of the contract tests: a tiny model, training, exact comparisons."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)


def loss_of(model) -> torch.Tensor:
    x, y = data()
    return torch.nn.functional.mse_loss(model(x), y)


def train(model, opt, steps: int) -> float:
    loss = None
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of(model)
        loss.backward()
        opt.step()
    return loss.item()


def trained(row, steps: int = 2, seed: int = 0, **kwargs):
    model = tiny_model(seed)
    opt = row.make(model.parameters(), **kwargs)
    train(model, opt, steps)
    return model, opt


def twin(model, opt, row, **kwargs):
    """A copy of ``model`` with a fresh optimizer of the same row and options."""
    other = copy.deepcopy(model)
    return other, row.make(other.parameters(), **kwargs)


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Exact recursive equality of state_dict-like values (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, a.keys(), getattr(b, "keys", lambda: b)())
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)


def assert_same_params(model_a, model_b) -> None:
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


def skip_if_excluded(row, test: str) -> None:
    if test in row.excluded:
        pytest.skip(row.excluded[test])


def lr_options(row) -> dict[str, Any]:
    """A plain numeric lr for the row (the HF convention's default is a relative step)."""
    return {"lr": 1e-2, "relative_step": False} if row.optimizer == "adafactor_hf" else {"lr": 1e-2}


def maximizes(kwargs: dict[str, Any]) -> bool:
    return bool(kwargs.get("maximize", False))
