"""One optimizer step for DTensor (FSDP2) params.

Non-finite gradients are decided for the whole parameter: every rank checks its shard,
one all-reduce (max) per param group, mesh and mesh dimension combines the flags, and a
parameter with NaN/Inf anywhere is skipped on every rank (so ranks never diverge).

Elementwise rules (AdamW, Adam, Lion, SGD, SophiaG) run on the local shards through the
usual implementations (native, triton, reference). Rules that reduce across elements
(Adafactor, CAME: row/column means, RMS clipping, relative step size) run on DTensors:
the decoded states are wrapped as DTensors and the rule's own torch ops reduce across
the mesh, so their results equal a single-process step. Stochastic rounding on shards
counts elements from each shard's start (unbiased, not bit-identical to one process).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..codecs import decode_encoded, encoded_states, store_encoded
from ..impl import select_implementation
from ..impl.base import grad_usable_flag, plain_hyper
from ..impl.reference import reference_param_step, write_param
from .shards import as_dtensor, local_tensor, to_local_value


def _global_nonfinite(params: list[torch.Tensor], limit: float) -> list[bool]:
    flags = torch.stack([~grad_usable_flag(local_tensor(p.grad), limit) for p in params]).to(torch.int32)
    mesh = params[0].device_mesh
    for dim in range(mesh.ndim):
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=mesh.get_group(dim))
    return [bool(f) for f in flags.tolist()]


def by_mesh(params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Params grouped by device mesh, meshes compared by equality (FSDP2's ``fully_shard``
    without ``mesh=`` builds a new, equal mesh per call), in order of first appearance, so
    every rank visits the meshes, and runs their collectives, in the same order."""
    groups: list[tuple[Any, list[torch.Tensor]]] = []
    for p in params:
        for mesh, members in groups:
            if mesh == p.device_mesh:
                members.append(p)
                break
        else:
            groups.append((p.device_mesh, [p]))
    return [members for _, members in groups]


def step_dtensor_params(opt, group: dict[str, Any], params: list[torch.Tensor]) -> None:
    """Step a group's DTensor params mesh by mesh (HSDP, TP + FSDP: several meshes per group)."""
    for members in by_mesh(params):
        _step_one_mesh(opt, group, members)


def _step_one_mesh(opt, group: dict[str, Any], params: list[torch.Tensor]) -> None:
    rule = opt.rule_of(group)
    live = []
    for p, bad in zip(params, _global_nonfinite(params, rule.grad_limit)):
        if bad:
            opt.ensure_state(p, group)["nonfinite_skips"] += 1
        else:
            live.append(p)
    if not live:
        return
    states = [opt.ensure_state(p, group) for p in live]
    placement = opt.placement_for(group)  # paged states stream in around the update, as unsharded
    if rule.elementwise:
        placement.run(live, states, lambda ps, ss: _step_local_shards(opt, group, ps, ss))
    else:
        placement.run(live, states, lambda ps, ss: _step_whole_params(opt, group, ps, ss))


def _step_local_shards(opt, group, params, states) -> None:
    rounding = opt.rounding_for(group, params)
    shards = [local_tensor(p) for p in params]
    for shard, p in zip(shards, params):
        shard.grad = local_tensor(p.grad)
    try:
        rule = opt.rule_of(group)
        impl = select_implementation(group["impl"], rule, shards, states, rounding)
        impl.step_group(rule, rule.hyper(group), shards, states, rounding)
    finally:
        for shard in shards:
            shard.grad = None


def _step_whole_params(opt, group, params, states) -> None:
    rule = opt.rule_of(group)
    hyper = plain_hyper(rule.hyper(group))
    rounding = opt.rounding_for(group, params)
    salts = rounding.salts if rounding is not None else [None] * len(params)
    for p, state, salt in zip(params, states, salts):
        key = None if salt is None else (rounding.seed, salt)
        _step_on_dtensors(rule, hyper, group, p, state, key)


def _step_on_dtensors(rule, hyper, group, param, state, rounding_key) -> None:
    """The reference step on DTensors: states decoded as DTensors laid out like the param (or
    replicated), results written back to this rank's shard; the gradient was checked on
    every rank already."""
    specs = {spec.name: spec for spec in rule.state_specs(param.shape, group)}
    spec_of = {id(enc): specs[name] for name, enc in encoded_states(state).items()}
    reference_param_step(rule, hyper, param, state,
                         decode=lambda enc: as_dtensor(decode_encoded(enc), spec_of[id(enc)], param),
                         store=lambda enc, value: store_encoded(enc, to_local_value(value, spec_of[id(enc)], param)),
                         rounding_key=rounding_key, write=_write_local_shard, grad_checked=True)


def _write_local_shard(param, new_param, step: int, rounding_key) -> None:
    """The rule's DTensor result, laid out as the param, into this rank's shard."""
    write_param(local_tensor(param), new_param.redistribute(param.device_mesh, param.placements).to_local(), step,
                rounding_key)
