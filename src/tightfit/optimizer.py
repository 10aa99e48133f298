"""The optimizer shell: a torch.optim.Optimizer that holds no math.

It owns param groups, lazy state creation, codec choice per state, the choice of
implementation, and state_dict (see state_io.py). The rule (rules/) is the math, the
codec (codecs/) the storage; an implementation (impl/) runs decode -> rule -> encode.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable

import torch

from . import state_io
from .codecs import Codec, Encoded, get_codec
from .impl import implementation_names, select_implementation
from .distributed.shards import is_dtensor, state_shape
from .distributed.step import step_dtensor_params
from .impl.base import StochasticRounding
from .rules import Rule, StateSpec
from .state_bytes import codec_for_state


# Group keys the shell understands besides the rule's hyperparameters.
SHELL_DEFAULTS = {"state": "fp32", "min_quantized_numel": 4096, "impl": "auto",
                  "stochastic_rounding": False, "rounding_seed": 0}


class TightfitOptimizer(torch.optim.Optimizer):
    """Base of every tightfit optimizer: ``rule`` x ``state`` codec x implementation.

    Group keys (each may be overridden per param group): the rule's hyperparameters,
    ``state`` (codec name or Codec object), ``min_quantized_numel`` (parameters with
    fewer elements keep fp32 states), ``impl`` ("auto" or a registered name), and
    ``stochastic_rounding`` / ``rounding_seed``: bf16 params are written with stochastic
    rounding (unbiased, so small updates are not lost to round-to-nearest and no fp32
    master copy is needed; Zamirai et al. 2020). The random bits depend only on
    (seed, the param's position in the optimizer, element, step), so every
    implementation and a resumed run draw the same ones.
    """

    rule: ClassVar[Rule]

    def __init__(self, params: Iterable, **options: Any) -> None:
        defaults = {**self.rule.defaults, **SHELL_DEFAULTS}
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown options {unknown}; allowed: {sorted(defaults)}")
        defaults.update(options)
        super().__init__(params, defaults)

    @classmethod
    def rule_for(cls, options: dict[str, Any]) -> Rule:
        """The rule an instance built with ``options`` runs (classes with variants override)."""
        return cls.rule

    # -- groups ------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._validate_group(self.param_groups[-1])

    def _validate_group(self, group: dict[str, Any]) -> None:
        self.rule.validate(group)
        get_codec(group["state"])  # raises ValueError naming the allowed codecs
        mqn = group["min_quantized_numel"]
        if isinstance(mqn, bool) or not isinstance(mqn, int) or mqn < 0:
            raise ValueError(f"invalid min_quantized_numel: {mqn!r} (allowed: an int >= 0)")
        if not isinstance(group["stochastic_rounding"], bool):
            raise ValueError(f"invalid stochastic_rounding: {group['stochastic_rounding']!r} (allowed: True or False)")
        seed = group["rounding_seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"invalid rounding_seed: {seed!r} (allowed: an int in [0, 2**32))")
        if group["impl"] not in implementation_names():
            raise ValueError(f"unknown impl {group['impl']!r}; allowed: {implementation_names()}")
        for p in group["params"]:
            if not (p.is_floating_point()):
                raise ValueError(f"parameter of dtype {p.dtype} cannot be optimized (allowed: float32, bfloat16, float16)")

    # -- state -------------------------------------------------------------------------
    def codec_for(self, spec: StateSpec, param: torch.Tensor, group: dict[str, Any]) -> Codec:
        """fp32 for small states and for parameters below min_quantized_numel."""
        return codec_for_state(spec.kind, param.numel(), group["state"], group["min_quantized_numel"])

    def _ensure_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[param]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["nonfinite_skips"] = torch.zeros((), dtype=torch.int64, device=param.device)
        for spec in self.rule.state_specs(param.shape, group):
            codec = self.codec_for(spec, param, group)
            current = state.get(spec.name)
            if current is None:  # a DTensor param's elementwise states cover its local shard only
                state[spec.name] = codec.zeros(state_shape(spec, param), spec.kind, param.device)
            elif current.codec != codec.name:  # the group's codec changed: re-encode once
                state[spec.name] = codec.encode(get_codec(current.codec).decode(current), spec.kind)
        return state

    # -- step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        if getattr(self, "_in_backward_handle", None) is not None:
            raise RuntimeError(f"{type(self).__name__} updates inside backward (tightfit.step_in_backward); "
                               "step() would update twice. Call handle.remove() first to step normally.")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients "
                                       f"(parameter of shape {tuple(p.shape)}); use a dense gradient")
            self._step_params(group, params)
        return loss

    def _step_params(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        sharded = [p for p in params if is_dtensor(p)]
        if sharded:  # FSDP2 params: distributed/step.py
            step_dtensor_params(self, group, sharded)
            params = [p for p in params if not is_dtensor(p)]
            if not params:
                return
        states = [self._ensure_state(p, group) for p in params]
        rounding = self._rounding(group, params)
        impl = select_implementation(group["impl"], self.rule, params, states, rounding)
        impl.step_group(self.rule, self.rule.hyper(group), params, states, rounding)

    def _rounding(self, group: dict[str, Any], params: list[torch.Tensor]) -> StochasticRounding | None:
        """Stochastic rounding for this call, salted by each param's position in the optimizer."""
        if not group["stochastic_rounding"]:
            return None
        position = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        return StochasticRounding(group["rounding_seed"], tuple(position[id(p)] for p in params))

    @torch.no_grad()
    def step_param(self, param: torch.Tensor, group: dict[str, Any] | None = None) -> None:
        """Update one parameter from its ``.grad`` now (used by updates inside backward)."""
        if group is None:
            group = next((g for g in self.param_groups if any(p is param for p in g["params"])), None)
        if group is None:
            raise ValueError(f"parameter of shape {tuple(param.shape)} is not in this optimizer's param groups")
        if param.grad is not None:
            if param.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients "
                                   f"(parameter of shape {tuple(param.shape)}); use a dense gradient")
            self._step_params(group, [param])

    # -- reporting ---------------------------------------------------------------------
    @property
    def skipped_steps(self) -> int:
        """Parameter updates skipped because the gradient held NaN or Inf (all params)."""
        return int(sum(int(s["nonfinite_skips"]) for s in self.state.values() if "nonfinite_skips" in s))

    def state_nbytes(self) -> int:
        """Exact bytes of optimizer state (encoded states; step counters excluded)."""
        return sum(v.nbytes for s in self.state.values() for v in s.values() if isinstance(v, Encoded))

    # -- state_dict --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return state_io.export_state_dict(self, super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_io.load_state_dict(self, state_dict, super().load_state_dict)

    def to_torch_state_dict(self) -> dict[str, Any]:
        """A state_dict that the matching torch.optim class loads (states decoded)."""
        return state_io.to_torch_state_dict(self)


