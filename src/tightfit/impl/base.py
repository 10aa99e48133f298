"""What an implementation is: a way to run one optimizer step for a param group.

Every implementation computes what the reference computes (decode -> rule -> encode);
faster ones are tested against it. Per-parameter state is a dict holding ``step``
(0-d float32), ``nonfinite_skips`` (0-d int64) and one ``Encoded`` per rule state.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..codecs import Encoded
from ..rules import Rule


class Implementation:
    name: str = ""

    def unavailable_reason(self, rule: Rule, params: Sequence[torch.Tensor],
                           states: Sequence[dict[str, Any]]) -> str | None:
        """None when this implementation can step these params, else why not."""
        return None

    def step_group(self, rule: Rule, hyper: Mapping[str, Any], params: Sequence[torch.Tensor],
                   states: Sequence[dict[str, Any]]) -> None:
        raise NotImplementedError


def encoded_states(state: Mapping[str, Any]) -> dict[str, Encoded]:
    return {k: v for k, v in state.items() if isinstance(v, Encoded)}


def plain_hyper(hyper: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters as Python numbers (a tensor lr becomes a float)."""
    return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in hyper.items()}
