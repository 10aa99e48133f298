"""What an update rule is: the math of one optimizer, once, as a pure function.

A rule's ``update(param, grad, state, *, step, **hyper)`` takes float32 tensors (the
parameter, its gradient, and a dict of decoded float32 states) and returns the new
parameter and the new states; it mutates nothing. The shell decodes states before and
encodes them after, so the same function serves every codec and placement.

Each state is declared with its kind: ``signed`` (first moments), ``unsigned`` (second
moments), or ``small`` (factored statistics and scalars: always fp32, never quantized).

A rule also carries its per-step scalar precomputation (``scalars``: one function that the
reference, the native kernel and the Triton kernels all use) and where its fast paths live
(``kernels``: a native tile, a Triton tile, by name). Nothing else in the package keys a
table by rule name; docs/architecture.md lists what adding a rule touches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..codecs import STATE_KINDS, get_codec


# A gradient element at or above a rule's limit makes the step skip that parameter, as a
# NaN/Inf does (counted in ``nonfinite_skips``): its square, or a sum of squares, would
# overflow float32 and poison the states (one inf absmax turns a whole 8-bit block NaN).
# Elementwise rules square single elements: |g| < 2^64 keeps g² < 2^128, finite.
# Rules that reduce (factored row/column sums, RMS) sum up to 2^32 squares: |g| < 2^47
# keeps every such sum below 2^126. Every implementation applies the same predicate.
GRAD_LIMIT_ELEMENTWISE = 2.0**64
GRAD_LIMIT_REDUCING = 2.0**47


@dataclass(frozen=True)
class StateSpec:
    name: str
    kind: str
    # Shape of the state for a parameter shape; None = same shape as the parameter.
    shape: Callable[[torch.Size], torch.Size] | None = None

    def __post_init__(self) -> None:
        if self.kind not in STATE_KINDS:
            raise ValueError(f"state {self.name!r}: kind {self.kind!r} not in {STATE_KINDS}")

    def shape_for(self, param_shape: torch.Size) -> torch.Size:
        return param_shape if self.shape is None else torch.Size(self.shape(param_shape))


@dataclass(frozen=True)
class Kernels:
    """Where a rule's fast paths live, by name; each is imported only when a step uses it.

    ``native_tile``: the rule's tile in the native CPU kernel (impl/native/csrc/rules/<name>.h),
    reading ``Rule.scalars`` in order as its coefficients. ``native_driver``: None when one
    fused pass per tensor does the step (elementwise rules); else the module (dotted path)
    whose ``param_step`` drives several passes (factored rules). ``triton_tile``: the module
    (dotted path) holding the rule's ``@triton.jit`` tile ``update``, which reads the same
    scalars as float64 slots (kernels/tiles/), or for a factored rule its ``BINDING`` to the
    shared factored kernels (kernels/factored_rules/). ``triton_driver``: None for the fused
    elementwise step (kernels/fused_step.py), else the module driving the rule's kernels
    (``factored_step``, ``small_state_problem``).
    """

    native_tile: str | None = None
    native_driver: str | None = None
    triton_tile: str | None = None
    triton_driver: str | None = None


Scalars = Callable[[Mapping[str, Any], Any, bool], dict[str, Any]]


@dataclass(frozen=True)
class Rule:
    name: str
    update: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
    defaults: Mapping[str, Any]
    validate: Callable[[Mapping[str, Any]], None]
    # States kept for a parameter of this shape under these hyperparameters.
    state_specs: Callable[[torch.Size, Mapping[str, Any]], tuple[StateSpec, ...]]
    paper: str = ""
    # Keys torch.optim's matching class adds to its param groups (for export).
    torch_group_extras: Mapping[str, Any] = field(default_factory=dict)
    # False when the update reduces across elements (factored statistics, RMS clipping):
    # on sharded params such a rule must see the whole tensor (distributed/step.py).
    elementwise: bool = True
    # True when ``update`` takes ``lossy_states`` (a state is in a lossy codec: bf16, 8/4-bit)
    # to guard against quantization error (AdamW's moment bound); implementations pass it.
    guards_lossy_states: bool = False
    # scalars(hyper, step, lossy) -> ordered {name: value}: everything the update needs
    # that depends on hyperparameters and the step count only (bias corrections, 1 − η·λ,
    # flags as 0/1). ``step`` is the step this update makes: a Python int, or a float64
    # tensor with one entry per param (Triton: computed on the device, no host sync), so
    # it uses arithmetic and ``**`` only. The order is the kernels' ABI: the native tile
    # reads the values as c[0], c[1], ... and the Triton tile as slots 0, 1, ...
    scalars: Scalars | None = None
    kernels: Kernels = field(default_factory=Kernels)

    @property
    def has_native(self) -> bool:
        return self.kernels.native_tile is not None

    @property
    def has_triton(self) -> bool:
        return self.kernels.triton_tile is not None

    def state_names(self, shape: torch.Size, hyper: Mapping[str, Any]) -> list[str]:
        """The names of the states kept for a parameter of ``shape``, in the kernels' order."""
        return [spec.name for spec in self.state_specs(shape, hyper)]

    def lossy_guard(self, codec_names) -> bool:
        """Whether ``update`` guards states stored in these codecs (any of them lossy)."""
        return self.guards_lossy_states and any(get_codec(name).quantized for name in codec_names)

    def update_extras(self, codec_names) -> dict[str, Any]:
        """Keyword arguments the implementation adds to ``update`` for states in these codecs."""
        return {"lossy_states": self.lossy_guard(codec_names)} if self.guards_lossy_states else {}

    @property
    def grad_limit(self) -> float:
        """Largest usable |g| element (exclusive); see GRAD_LIMIT_ELEMENTWISE."""
        return GRAD_LIMIT_ELEMENTWISE if self.elementwise else GRAD_LIMIT_REDUCING

    @property
    def doc(self) -> str:
        return (self.update.__doc__ or "").strip()

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """The rule's hyperparameters taken from a param group."""
        return {k: group[k] for k in self.defaults}


RULES: dict[str, Rule] = {}


def register_rule(rule: Rule) -> Rule:
    if rule.name in RULES:
        raise ValueError(f"rule {rule.name!r} registered twice")
    RULES[rule.name] = rule
    return rule


def get_rule(name: str) -> Rule:
    if name not in RULES:
        raise ValueError(f"unknown update rule {name!r}; known: {sorted(RULES)}")
    return RULES[name]


# --- hyperparameter checks shared by rules (ValueError naming value and what is allowed)

def _number(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}={value!r} must be a number or a one-element tensor")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number")
    return float(value)


def check_nonnegative(name: str, value: Any) -> None:
    v = _number(name, value)
    if not 0.0 <= v < math.inf:  # also rejects NaN
        raise ValueError(f"invalid {name}: {value!r} (allowed: a finite number >= 0)")


def check_positive(name: str, value: Any, allow_inf: bool = False) -> None:
    """value > 0 and finite; ``allow_inf`` for thresholds where inf means "off"."""
    v = _number(name, value)
    if not 0.0 < v < math.inf and not (allow_inf and v == math.inf):
        allowed = "a number > 0 (inf: no clipping)" if allow_inf else "a finite number > 0"
        raise ValueError(f"invalid {name}: {value!r} (allowed: {allowed})")


def check_unit_interval(name: str, value: Any) -> None:
    """0 <= value < 1, the allowed range of an EMA coefficient."""
    v = _number(name, value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"invalid {name}: {value!r} (allowed: 0 <= {name} < 1)")


def check_betas(value: Any, count: int) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != count:
        raise ValueError(f"invalid betas: {value!r} (allowed: a tuple of {count} numbers in [0, 1))")
    for i, b in enumerate(value):
        check_unit_interval(f"betas[{i}]", b)


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"invalid {name}: {value!r} (allowed: True or False)")
