"""Checkpoints of tightfit optimizers whose params are DTensors (FSDP2).

``sharded_state_dict(opt)`` is for ``torch.distributed.checkpoint`` (DCP): each state is
decoded to float32 and laid out like its param (a DTensor with the param's placements;
reduced statistics as plain tensors, identical on every rank), keyed by the param's
position in the optimizer. DCP can then load it under any world size, including a
single process with plain tensors. ``load_sharded_state_dict`` re-encodes the loaded
values into each state's codec: exact for fp32 and bf16; for 8/4-bit within the codec's
rounding, not bit for bit (the signed maps have no -1, so a block whose largest
magnitude is negative re-encodes with a smaller absmax). Decoded states cost 4 bytes
per element on disk; that is the price of resharding (encoded blocks are tied to one
shard layout). For a bit-exact resume on the same ranks, save each rank's
``opt.state_dict()`` instead (encoded, per shard).

``full_state_dict(opt)`` gathers every state to the whole parameter and returns the
ordinary tightfit state_dict a single-process optimizer would have (same codecs), for
``opt.load_state_dict`` without torch.distributed.
"""

from __future__ import annotations

from typing import Any

import torch

from ..codecs import Encoded, get_codec
from ..state_checks import check_plain_state, scalar
from ..state_io import encoded_to_dict
from .shards import as_dtensor, is_dtensor, local_tensor, state_shape

SCALARS = ("step", "nonfinite_skips")


def _params(opt) -> list[tuple[int, torch.Tensor, dict[str, Any]]]:
    return [(i, p, g) for i, (p, g) in enumerate((p, g) for g in opt.param_groups for p in g["params"])]


def sharded_state_dict(opt) -> dict[str, Any]:
    """{"state": {"<index>": {name: tensor}}, "param_groups": ...} of decoded, placed states.

    Creates zero states for params that have none yet, so the same call on a fresh
    optimizer gives DCP the template to load into.
    """
    state: dict[str, dict[str, torch.Tensor]] = {}
    for index, param, group in _params(opt):
        live = opt.ensure_state(param, group)
        entry = {key: live[key].clone() for key in SCALARS}
        for spec in opt.rule_of(group).state_specs(param.shape, group):
            enc = live[spec.name]
            value = get_codec(enc.codec).decode(enc)
            entry[spec.name] = as_dtensor(value, spec, param) if is_dtensor(param) else value
        state[str(index)] = entry
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    for g in groups:
        if not isinstance(g["state"], str):
            g["state"] = g["state"].name
    return {"state": state, "param_groups": groups}


def load_sharded_state_dict(opt, sd: dict[str, Any]) -> None:
    """Re-encode a (DCP-loaded) ``sharded_state_dict`` into ``opt``'s states.

    Validate, then swap: groups, counters and every state's shape and values are checked
    before anything in ``opt`` changes, so a refused checkpoint leaves it as it was."""
    params = _params(opt)
    if not isinstance(sd, dict) or not isinstance(sd.get("state"), dict) or not isinstance(sd.get("param_groups"), list):
        raise ValueError("not a sharded optimizer state dict: expected 'state' (a dict) and 'param_groups' (a list)")
    if len(sd["param_groups"]) != len(opt.param_groups):
        raise ValueError(f"checkpoint has {len(sd['param_groups'])} param groups, optimizer has {len(opt.param_groups)}")
    groups = []
    for saved, live in zip(sd["param_groups"], opt.param_groups):
        group = {**live, **{k: v for k, v in saved.items()
                            if k != "params" and (k != "state" or isinstance(live["state"], str))}}
        opt.check_group(group)
        groups.append(group)
    new_group = {id(live): group for live, group in zip(opt.param_groups, groups)}
    loaded = []
    for index, param, live_group in params:
        saved = sd["state"].get(str(index))
        if not isinstance(saved, dict):
            raise ValueError(f"checkpoint lacks state for param {index} (shape {tuple(param.shape)})")
        counters = {key: scalar(f"param {index} {key!r}", saved.get(key), integral=key == "nonfinite_skips")
                    for key in SCALARS}
        values = {}
        for spec in opt.rule_of(live_group).state_specs(param.shape, new_group[id(live_group)]):
            if spec.name not in saved:
                raise ValueError(f"param {index}: checkpoint lacks state {spec.name!r}")
            value = saved[spec.name]
            value = local_tensor(value) if is_dtensor(value) else value
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"param {index} state {spec.name!r} is a {type(value).__name__}, expected a tensor")
            check_plain_state(f"param {index} state {spec.name!r}", value, state_shape(spec, param), spec.kind)
            values[spec.name] = value
        loaded.append((counters, values))
    for live, group in zip(opt.param_groups, groups):
        live.update(group)
    for (index, param, group), (counters, values) in zip(params, loaded):
        live = opt.ensure_state(param, group)
        for key, number in counters.items():
            live[key].fill_(number)
        for name, value in values.items():
            enc: Encoded = live[name]
            get_codec(enc.codec).store(enc, value.to(torch.float32))


def full_state_dict(opt) -> dict[str, Any]:
    """The state_dict one process holding the whole parameters would save (collective:
    call it on every rank)."""
    sd = opt.state_dict()
    for index, param, group in _params(opt):
        if not is_dtensor(param) or index not in sd["state"]:
            continue
        live = opt.state[param]
        for spec in opt.rule_of(group).state_specs(param.shape, group):
            enc = live[spec.name]
            codec = get_codec(enc.codec)
            whole = as_dtensor(codec.decode(enc), spec, param).full_tensor()
            sd["state"][index][spec.name] = encoded_to_dict(codec.encode(whole, enc.kind))
    return sd
