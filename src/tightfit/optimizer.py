"""The optimizer shell: a torch.optim.Optimizer that holds no math.

It owns param groups, lazy state creation, codec choice per state, the choice of
implementation, and state_dict (see state_io.py). The rule (rules/) is the math, the
codec (codecs/) the storage, the placement (placement/) where states live between steps;
an implementation (impl/) runs decode -> rule -> encode.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Iterable

import torch

from . import state_io
from .codecs import Codec, Encoded, get_codec
from .grad_scaler import apply_grad_scaler, hands_over
from .group_checks import validate_group
from .impl import select_implementation
from .dtensor import is_dtensor, state_shape
from .distributed.step import step_dtensor_params
from .impl.base import StochasticRounding
from .memory_report import MemoryReport, memory_report
from .placement import Placement, device_budget, make_placement
from .rules import RULES, Rule, StateSpec, get_rule
from .state_bytes import codec_for_state, state_bytes
from .state_checks import foreign_keys


def _registered(rule: str | Rule | None) -> Rule:
    """A registered rule from its name (or the registered Rule itself); ValueError otherwise."""
    if isinstance(rule, Rule) and RULES.get(rule.name) is rule:
        return rule
    if isinstance(rule, str):
        return get_rule(rule)
    raise ValueError(f"invalid rule {rule!r} (allowed: a registered rule name: {sorted(RULES)})")


# Group keys the shell understands besides the rule's hyperparameters ("rule" names the rule).
SHELL_DEFAULTS = {"state": "fp32", "min_quantized_numel": 4096, "impl": "auto", "paged": False,
                  "offload": False, "stochastic_rounding": False, "rounding_seed": 0}


class TightfitOptimizer(torch.optim.Optimizer):
    """Base of every tightfit optimizer: ``rule`` x ``state`` codec x implementation.

    ``rule`` (a registered name, e.g. "adamw") is a param-group key like any other: the
    named classes (AdamW, Lion ...) are presets that set the default, and a group may run
    another rule (``{"params": ..., "rule": "lion"}``), taking that rule's defaults for the
    hyperparameters it does not give; one state_dict and one memory_report cover all groups.

    Group keys (each may be overridden per param group): the rule's hyperparameters,
    ``state`` (codec name or Codec object), ``min_quantized_numel`` (parameters with
    fewer elements keep fp32 states), ``impl`` ("auto" or a registered name), ``paged``
    (False; True pages every state to pinned host memory; a size like "4GiB" keeps states
    on the device up to that many bytes and pages the rest -- see placement/paged.py),
    ``offload`` (False; True keeps fp32 master weights and states in host memory and runs
    the step on the CPU, ZeRO-Offload style -- see placement/offload.py), and
    ``stochastic_rounding`` / ``rounding_seed``: bf16 params are written with stochastic
    rounding (unbiased, so small updates are not lost to round-to-nearest and no fp32
    master copy is needed; Zamirai et al. 2020). The random bits depend only on
    (seed, the param's position in the optimizer, element, step), so every
    implementation, paged or not, and a resumed run draw the same ones.
    """

    rule: ClassVar[Rule]  # a preset's rule; on an instance: the optimizer's default rule

    def __init__(self, params: Iterable, *, rule: str | Rule | None = None, **options: Any) -> None:
        rule = _registered(rule if rule is not None else getattr(self, "rule", None))
        self.rule = rule  # per instance: the default rule of groups that name none
        defaults = {**rule.defaults, **SHELL_DEFAULTS, "rule": rule.name}
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown options {unknown}; allowed: {sorted(defaults)}")
        defaults.update(options)
        self._placements: dict[int, tuple[tuple, dict, Placement]] = {}  # by id(group)
        self._warned: set[str] = set()
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch pickles only defaults, state and param_groups; the default rule travels as
        # defaults["rule"] (a name), so a pickled or deep-copied optimizer keeps it
        state = dict(state)
        rule_name = state.pop("rule_name", None)  # written by tightfit before the "rule" group key
        super().__setstate__(state)
        default = self.defaults.get("rule", rule_name)
        self.rule = get_rule(default) if default is not None else type(self).rule
        self.defaults.setdefault("rule", self.rule.name)
        for group in self.param_groups:
            group.setdefault("rule", self.rule.name)
            group.setdefault("offload", False)  # pickled before the option existed
        self._placements, self._warned = {}, set()

    @classmethod
    def rule_for(cls, options: dict[str, Any]) -> Rule:
        """The default rule an instance built with ``options`` runs (for names and the planner)."""
        return _registered(options["rule"]) if options.get("rule") is not None else cls.rule

    @classmethod
    def rule_for_param(cls, options: dict[str, Any], shape: tuple[int, ...], role: str = "") -> Rule:
        """The rule a parameter of ``shape`` and ``role`` ("embedding", "lm_head", ...) runs in an
        instance built with ``options`` from a whole model (for the planner; Muon routes)."""
        return cls.rule_for(options)

    @classmethod
    def groups_for_model(cls, model: torch.nn.Module, params: list[torch.Tensor],
                         stand_in: dict[int, torch.Tensor] | None = None) -> list:
        """What to pass as ``params`` for ``params`` of ``model`` (each replaced by
        ``stand_in[id(param)]`` where given, e.g. its fp32 master): the params themselves,
        or param groups by role where the preset routes (Muon)."""
        stand_in = stand_in or {}
        return [stand_in.get(id(p), p) for p in params]

    def rule_of(self, group: dict[str, Any]) -> Rule:
        """The rule a param group runs (its "rule" key)."""
        return get_rule(group["rule"])

    # -- groups ------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's add_param_group, then tightfit's checks; a refused group is not kept.

        A group may name another rule (``"rule": "lion"``): its missing hyperparameters come
        from that rule's defaults, its shell options (state, impl, paged ...) from the
        optimizer's; hyperparameters of the default rule that the group's rule does not
        have are not copied into it."""
        rule = self.rule
        if isinstance(param_group, dict):
            rule = _registered(param_group.get("rule", self.rule.name))
            own_defaults = rule.defaults if rule is not self.rule else {}  # else torch fills self.defaults
            param_group = {**own_defaults, **param_group, "rule": rule.name}
        given = set(param_group) if isinstance(param_group, dict) else set()
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if rule is not self.rule:
            for key in set(self.rule.defaults) - set(rule.defaults) - given:
                del group[key]  # torch filled it from the optimizer's defaults
        try:
            foreign = {k: v for k, v in foreign_keys(rule, group).items() if k in given}
            if foreign:
                details = ", ".join(f"{k}={group[k]!r} (a hyperparameter of {owners})" for k, owners in foreign.items())
                raise ValueError(f"param group has {details}, which rule {rule.name!r} does not have; allowed "
                                 f"hyperparameters: {sorted(rule.defaults)} (or set 'rule' to the rule you mean)")
            self.check_group(group)
        except BaseException:
            self.param_groups.pop()
            raise

    def check_group(self, group: dict[str, Any]) -> None:
        """ValueError naming a bad hyperparameter or shell option of ``group`` (also for loaded groups)."""
        validate_group(self.rule_of(group), group)

    # -- state -------------------------------------------------------------------------
    def codec_for(self, spec: StateSpec, param: torch.Tensor, group: dict[str, Any]) -> Codec:
        """fp32 for small states and for parameters below min_quantized_numel."""
        return codec_for_state(spec.kind, param.numel(), group["state"], group["min_quantized_numel"])

    def placement_for(self, group: dict[str, Any]) -> Placement:
        """The group's placement, rebuilt when its ``paged``, ``offload``, ``state`` or threshold
        change (or those of a group sharing its device budget); the new one takes over from the old."""
        splittable = self.rule_of(group).elementwise and not group["stochastic_rounding"]
        pool = self._budget_pool(group)
        key = (group["paged"], group["offload"], splittable,
               tuple((id(g), get_codec(g["state"]).name, g["min_quantized_numel"], len(g["params"])) for g in pool))
        cached = self._placements.get(id(group))
        if cached is None or cached[0] != key or cached[1] is not group:
            owner = {id(p): g for g in pool for p in g["params"]}
            placement = make_placement(group["paged"], [p for g in pool for p in g["params"]],
                                       lambda p: self._planned_bytes(p, owner[id(p)]), self._warn_once, splittable,
                                       group["offload"])
            if cached is not None:
                placement.take_over(cached[2])
            cached = self._placements[id(group)] = (key, group, placement)
        return cached[2]

    def forget_placements(self) -> None:
        """Drop the cached placements (after the groups are replaced); each is rebuilt when used."""
        for _, _, placement in self._placements.values():
            placement.close()
        self._placements.clear()

    def _budget_pool(self, group: dict[str, Any]) -> list[dict[str, Any]]:
        """The groups whose states share ``group``'s device budget: every group asking for
        the same budget, so ``paged="4GiB"`` bounds the whole optimizer however its params
        are grouped (e.g. decay / no-decay groups); a group with another budget has its own."""
        budget = device_budget(group["paged"])
        if not budget:  # unpaged, or everything paged: nothing to share
            return [group]
        return [g for g in self.param_groups if g is group or device_budget(g["paged"]) == budget]

    def _planned_bytes(self, param: torch.Tensor, group: dict[str, Any]) -> int:
        return state_bytes(self.rule_of(group), group["state"], tuple(param.shape), group, group["min_quantized_numel"])

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, UserWarning, stacklevel=2)

    def ensure_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """``param``'s state: counters and the group's states created, re-encoded when the group's
        codec changed, and settled where the group's placement keeps them."""
        state = self.state[param]
        placement = self.placement_for(group)
        if "step" not in state:  # counters stay with the param (a few bytes; read by every impl)
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["nonfinite_skips"] = torch.zeros((), dtype=torch.int64, device=param.device)
        for spec in self.rule_of(group).state_specs(param.shape, group):
            codec = self.codec_for(spec, param, group)
            current = state.get(spec.name)
            if current is None:  # a DTensor param's elementwise states cover its local shard only
                state[spec.name] = codec.zeros(state_shape(spec, param), spec.kind, placement.home(param))
            elif current.codec != codec.name:  # the group's codec changed: re-encode once
                placement.host_ready()
                state[spec.name] = codec.encode(get_codec(current.codec).decode(current), spec.kind)
        placement.settle(param, state)
        return state

    # -- step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        if getattr(self, "in_backward_handle", None) is not None:
            raise RuntimeError(f"{type(self).__name__} updates inside backward (tightfit.step_in_backward); "
                               "step() would update twice. Call handle.remove() first to step normally.")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if hands_over(self) and not apply_grad_scaler(self, self.param_groups):
            return loss  # GradScaler found inf/NaN: no step, as on its own path
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
        states = [self.ensure_state(p, group) for p in params]
        rule = self.rule_of(group)
        hyper, requested = rule.hyper(group), group["impl"]

        def step_fn(chunk_params: list[torch.Tensor], chunk_states: list[dict[str, Any]]) -> None:
            rounding = self.rounding_for(group, chunk_params)
            impl = select_implementation(requested, rule, chunk_params, chunk_states, rounding)
            impl.step_group(rule, hyper, chunk_params, chunk_states, rounding)

        self.placement_for(group).run(params, states, step_fn)

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """GradScaler hands its scale to step() when a group offloads (grad_scaler.py)."""
        return any(group.get("offload") for group in self.param_groups)

    def rounding_for(self, group: dict[str, Any], params: list[torch.Tensor]) -> StochasticRounding | None:
        """Stochastic rounding for this call, salted by each param's position in the optimizer."""
        if not group["stochastic_rounding"]:
            return None
        position = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        return StochasticRounding(group["rounding_seed"], tuple(position[id(p)] for p in params))

    @torch.no_grad()
    def step_param(self, param: torch.Tensor, group: dict[str, Any] | None = None) -> None:
        """Update one parameter from its ``.grad`` now (used by updates inside backward).

        A paged parameter's states are streamed in, updated and streamed out for this one
        parameter (no overlap with other parameters' transfers)."""
        if group is None:
            group = next((g for g in self.param_groups if any(p is param for p in g["params"])), None)
        if group is None:
            raise ValueError(f"parameter of shape {tuple(param.shape)} is not in this optimizer's param groups")
        if param.grad is not None:
            if param.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients "
                                   f"(parameter of shape {tuple(param.shape)}); use a dense gradient")
            self._step_params(group, [param])

    def zero_grad(self, set_to_none: bool = True) -> None:
        handle = getattr(self, "in_backward_handle", None)
        if handle is not None:
            handle.recover_if_abandoned()
            if handle.micro_batch > 0:
                raise RuntimeError(f"zero_grad() inside an accumulation window (micro-batch {handle.micro_batch} of "
                                   f"{handle.accumulation_steps}) would drop the accumulated gradients; updates "
                                   "inside backward free gradients themselves. Call handle.restart_window() to "
                                   "discard them on purpose")
        super().zero_grad(set_to_none)

    # -- reporting ---------------------------------------------------------------------
    @property
    def skipped_steps(self) -> int:
        """Parameter updates skipped because the gradient held NaN or Inf (all params)."""
        return int(sum(int(s["nonfinite_skips"]) for s in self.state.values()
                       if isinstance(s, dict) and "nonfinite_skips" in s))

    def state_nbytes(self) -> int:
        """Exact bytes of optimizer state (encoded states; step counters excluded)."""
        return sum(v.nbytes for s in self.state.values() if isinstance(s, dict)
                   for v in s.values() if isinstance(v, Encoded))

    def memory_report(self) -> MemoryReport:
        """Exact state bytes on the device and in pinned host memory, per codec (memory_report.py)."""
        return memory_report(self)

    def _host_states_ready(self) -> None:
        """Wait for in-flight copy-outs of paged states before the host reads them."""
        for group in self.param_groups:
            self.placement_for(group).host_ready()

    # -- state_dict --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's layout and hook order: pre-hooks (may edit ``self.state``), export, then
        post-hooks, which see the exported dict and may change or replace it."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        self._host_states_ready()
        sd = state_io.export_state_dict(self)
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Validate, then swap (state_io.py): pre-hooks see a shallow copy and may edit or
        replace it; the whole dict is decoded and checked before anything here changes, so a
        refused dict leaves the optimizer as it was; post-hooks see the loaded state.
        Paged groups' states land in pinned host memory, never passing through the device."""
        if not isinstance(state_dict, dict):
            raise ValueError(f"not an optimizer state_dict: got a {type(state_dict).__name__}, expected a dict "
                             "with 'state' and 'param_groups'")
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        loaded = state_io.decode_state_dict(self, state_dict)
        self._host_states_ready()  # in-flight copy-outs finish before their states are dropped
        state_io.install(self, loaded)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def to_torch_state_dict(self) -> dict[str, Any]:
        """A state_dict that the matching torch.optim class loads (states decoded)."""
        self._host_states_ready()
        return state_io.to_torch_state_dict(self)
