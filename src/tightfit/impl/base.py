"""What an implementation is: a way to run one optimizer step for a param group.

Every implementation computes what the reference computes (decode -> rule -> encode);
faster ones are tested against it. Per-parameter state is a dict holding ``step``
(0-d float32), ``nonfinite_skips`` (0-d int64) and one ``Encoded`` per rule state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..codecs import encoded_states  # noqa: F401  (re-exported: the implementations' import)
from ..rules import Rule


@dataclass(frozen=True)
class StochasticRounding:
    """bf16 params are written with stochastic rounding instead of round-to-nearest.

    Element i of a param in the step that makes it ``step`` draws Philox4x32 with key
    (seed, salt) and counter (i, step, 0, 0) (kernels/rounding.py), so every
    implementation rounds every element the same way. ``salts`` holds one number per
    param of the call: the param's position in the optimizer, stable across resumes.
    Params of other dtypes keep round-to-nearest (fp32 needs no rounding; fp16 has no
    such path).
    """

    seed: int
    salts: tuple[int, ...]


class Implementation:
    name: str = ""

    def unavailable_reason(self, rule: Rule, params: Sequence[torch.Tensor],
                           states: Sequence[dict[str, Any]],
                           rounding: StochasticRounding | None = None) -> str | None:
        """None when this implementation can step these params, else why not."""
        return None

    def step_group(self, rule: Rule, hyper: Mapping[str, Any], params: Sequence[torch.Tensor],
                   states: Sequence[dict[str, Any]], rounding: StochasticRounding | None = None) -> None:
        """One step of ``params``; ``rounding`` None means round-to-nearest param writes."""
        raise NotImplementedError


def grad_usable(grad: torch.Tensor, limit: float) -> bool:
    """True when no element is NaN, +-Inf, or has |g| >= ``limit`` (``Rule.grad_limit``).

    One read of ``grad``: the largest |g| (an inf-norm reduction, no temporary);
    NaN propagates through it and fails the comparison.
    """
    return bool(grad_usable_flag(grad, limit))


def grad_usable_flag(grad: torch.Tensor, limit: float) -> torch.Tensor:
    """``grad_usable`` as a 0-d bool tensor on the gradient's device (no host sync)."""
    return torch.linalg.vector_norm(grad, ord=float("inf"), dtype=torch.float32) < limit


def plain_hyper(hyper: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters as Python numbers (a tensor lr becomes a float)."""
    return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in hyper.items()}
