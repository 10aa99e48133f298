"""state_dict for tightfit optimizers: a versioned, self-describing format.

Each encoded state is stored as a plain dict (loadable with weights_only=True):
``{"codec", "kind", "block_size", "format", "shape", <buffers>}``; the top level carries
``"tightfit": {"format", "rule"}``. Loading accepts this format (re-encoding when the
target codec differs; bit-exact when it is the same) and torch.optim state_dicts whose
state names match the rule's (exp_avg, exp_avg_sq, momentum_buffer), quantized on load.

Loading is validate-then-swap: ``decode_state_dict`` checks and decodes the whole dict
(structure, the rule it came from, hyperparameters, counters, every buffer against its
codec: state_checks.py, codecs/validate.py) without touching the optimizer; only then
``install`` replaces groups and state. A refused dict leaves the optimizer as it was.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from .codecs import FORMAT_VERSION, CODECS, Encoded, get_codec
from .codecs.upgrade import READABLE_FORMATS, upgrade_encoded
from .codecs.validate import check_encoded
from .dtensor import state_shape
from .state_checks import (SAME_MEANING, TORCH_ONLY_GROUP_KEYS, check_groups_belong, check_plain_state,
                           check_states_belong, check_structure, same, scalar)

ENCODED_FIELDS = ("codec", "kind", "block_size", "format", "shape")
COUNTERS = ("step", "nonfinite_skips")


def _own_storage(buf: torch.Tensor) -> torch.Tensor:
    """``buf``, or a copy if it views a larger storage (a paged state's packed host block:
    torch.save cannot store one storage under several dtypes, and should not store it whole)."""
    return buf if buf.untyped_storage().nbytes() == buf.numel() * buf.element_size() else buf.clone()


def encoded_to_dict(enc: Encoded) -> dict[str, Any]:
    """The saved form of one encoded state (the one place this layout is written)."""
    codec = get_codec(enc.codec)
    return {"codec": enc.codec, "kind": enc.kind, "block_size": codec.block_size, "format": FORMAT_VERSION,
            "shape": list(enc.shape), **{k: _own_storage(b) for k, b in enc.buffers.items()}}


def _encoded_from_dict(where: str, d: Any, spec, expected_shape: torch.Size) -> Encoded:
    """The encoded state a saved dict describes, checked field by field against its codec
    (codecs/validate.py) and against the state it must become; nothing is copied yet."""
    if not isinstance(d, dict):
        raise ValueError(f"{where} is a {type(d).__name__}; expected an encoded-state dict (tightfit format)")
    missing = [k for k in ENCODED_FIELDS if k not in d]
    if missing:
        raise ValueError(f"{where} lacks {missing}; expected a tightfit encoded state with {list(ENCODED_FIELDS)}")
    if not any(same(d["format"], f) for f in READABLE_FORMATS):
        raise ValueError(f"{where} has format {d['format']!r}; this tightfit reads formats {READABLE_FORMATS}")
    if not isinstance(d["codec"], str) or d["codec"] not in CODECS:
        raise ValueError(f"{where} uses unknown codec {d['codec']!r}; known: {sorted(CODECS)}")
    codec = get_codec(d["codec"])
    if not same(d["block_size"], codec.block_size):
        raise ValueError(f"{where}: block size {d['block_size']!r} but codec {codec.name!r} uses {codec.block_size!r}")
    if not same(d["kind"], spec.kind):
        raise ValueError(f"{where} has kind {d['kind']!r}; {spec.name!r} is a {spec.kind!r} state")
    shape = d["shape"]
    if (not isinstance(shape, (list, tuple)) or any(isinstance(s, bool) or not isinstance(s, int) for s in shape)
            or tuple(shape) != tuple(expected_shape)):
        raise ValueError(f"{where} has shape {shape!r}, parameter needs {list(expected_shape)}")
    enc = Encoded(codec.name, spec.kind, torch.Size(shape), {k: v for k, v in d.items() if k not in ENCODED_FIELDS})
    check_encoded(where, codec, enc)
    return upgrade_encoded(enc, d["format"])  # earlier formats: same layout, a map may differ


def _packed_groups(opt) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """torch's packing of param groups: params as indices in group order (and that index by id)."""
    index: dict[int, int] = {}
    groups = []
    for group in opt.param_groups:
        packed = {k: v for k, v in group.items() if k != "params"}
        if not isinstance(packed["state"], str):
            packed["state"] = packed["state"].name  # a Codec object is saved by name
        for p in group["params"]:
            index.setdefault(id(p), len(index))
        packed["params"] = [index[id(p)] for p in group["params"]]
        groups.append(packed)
    return groups, index


def export_state_dict(opt) -> dict[str, Any]:
    """torch's packing (state keys that are not params kept as they are), with each
    encoded state as a plain dict."""
    groups, index = _packed_groups(opt)
    state = {}
    for key, value in opt.state.items():
        if isinstance(value, dict):
            value = {k: (encoded_to_dict(v) if isinstance(v, Encoded) else v) for k, v in value.items()}
        state[index[id(key)] if isinstance(key, torch.Tensor) else key] = value
    return {"tightfit": {"format": FORMAT_VERSION, "rule": opt.rule.name}, "state": state, "param_groups": groups}


def _merged_groups(opt, saved_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """New groups: the saved hyperparameters (torch-only flags dropped), tightfit's own keys
    kept from the live groups where the dict lacks them, and the live params."""
    merged = []
    for saved, live in zip(saved_groups, opt.param_groups):
        if not (same(saved.get("amsgrad", False), False) or saved.get("amsgrad") is None):
            raise ValueError(f"state_dict has amsgrad={saved['amsgrad']!r}; tightfit does not support amsgrad "
                             "(allowed: amsgrad=False)")
        rule = opt.rule_of(live)
        if "rule" in saved and not same(saved["rule"], rule.name):
            raise ValueError(f"state_dict param group {len(merged)} runs rule {saved['rule']!r}, this optimizer's "
                             f"group {len(merged)} runs {rule.name!r}; load it into the matching optimizer")
        converted = SAME_MEANING.get(rule.name, {})
        g = {k: v for k, v in saved.items() if k not in TORCH_ONLY_GROUP_KEYS and k != "amsgrad" and k not in converted}
        g["params"] = live["params"]
        if "param_names" in live and "param_names" not in g:
            g["param_names"] = live["param_names"]
        for key, value in live.items():  # keys the saved dict lacks (tightfit's own, rule extensions)
            g.setdefault(key, value)
        merged.append(g)
    return merged


@dataclass
class LoadedState:
    """A decoded, checked state_dict, ready to replace the optimizer's groups and state."""

    groups: list[dict[str, Any]]
    state: dict[Any, Any]


def decode_state_dict(opt, sd: dict[str, Any]) -> LoadedState:
    """Check and decode all of ``sd`` into new groups and state; ``opt`` is not changed."""
    check_structure(sd)
    meta = sd.get("tightfit")
    if meta is not None:
        if not isinstance(meta, dict) or not any(same(meta.get("format"), f) for f in READABLE_FORMATS):
            found = meta.get("format") if isinstance(meta, dict) else meta
            raise ValueError(f"tightfit state_dict format {found!r}; this tightfit reads formats {READABLE_FORMATS}")
        if not same(meta.get("rule"), opt.rule.name):
            raise ValueError(f"state_dict is for rule {meta.get('rule')!r}, this optimizer runs {opt.rule.name!r}")
    saved_groups = copy.deepcopy(list(sd["param_groups"]))
    if len(saved_groups) != len(opt.param_groups):
        raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, the optimizer has "
                         f"{len(opt.param_groups)}")
    for i, (saved, live) in enumerate(zip(saved_groups, opt.param_groups)):
        if len(saved["params"]) != len(live["params"]):
            raise ValueError(f"loaded state dict's parameter group {i} has {len(saved['params'])} params, "
                             f"the optimizer's has {len(live['params'])}")
    if meta is None:
        check_groups_belong([opt.rule_of(g) for g in opt.param_groups], saved_groups)
    groups = _merged_groups(opt, saved_groups)
    for group in groups:
        opt.check_group(group)
    owner = {pid: (p, g) for saved, g in zip(saved_groups, groups) for pid, p in zip(saved["params"], g["params"])}
    state: dict[Any, Any] = {}
    for key, value in sd["state"].items():
        if key in owner:
            param, group = owner[key]
            state[param] = _decode_param_state(opt, param, group, value, f"state of param {key!r}", meta is not None)
        else:  # not a param's: kept as is, as torch does
            state[key] = value
    return LoadedState(groups, state)


def _decode_param_state(opt, param, group, saved: Any, where: str, tightfit: bool) -> dict[str, Any]:
    if not isinstance(saved, dict):
        raise ValueError(f"{where} is a {type(saved).__name__}; expected a dict of states")
    rule = opt.rule_of(group)
    specs = rule.state_specs(param.shape, group)
    check_states_belong(rule, saved, [s.name for s in specs], where)
    state = {k: v for k, v in saved.items() if k not in COUNTERS and k not in {s.name for s in specs}}
    step = saved.get("step")
    if step is None:  # torch SGD keeps no step; a saved buffer means at least one step was taken
        step = 1.0 if any(s.name in saved for s in specs) else 0.0
    state["step"] = torch.tensor(scalar(f"{where}: 'step'", step), dtype=torch.float32)
    skips = scalar(f"{where}: 'nonfinite_skips'", saved.get("nonfinite_skips", 0), integral=True)
    state["nonfinite_skips"] = torch.tensor(int(skips), dtype=torch.int64)
    for spec in specs:
        if spec.name not in saved:
            if float(state["step"]) > 0:
                raise ValueError(f"saved state lacks {spec.name!r} (has {sorted(map(str, saved))}); "
                                 f"rule {rule.name!r} keeps {[s.name for s in specs]}")
            continue
        target = opt.codec_for(spec, param, group)
        value, name = saved[spec.name], f"{where}: state {spec.name!r}"
        expected = state_shape(spec, param)
        if isinstance(value, torch.Tensor) and not tightfit:
            check_plain_state(name, value, expected, spec.kind)
            enc = target.encode(value.detach().to(torch.float32), spec.kind)
        elif isinstance(value, dict) or tightfit:
            enc = _encoded_from_dict(name, value, spec, expected)
            if enc.codec != target.name:
                enc = target.encode(get_codec(enc.codec).decode(enc), spec.kind)
        else:
            raise ValueError(f"{name} is a {type(value).__name__}; expected an encoded-state dict "
                             "(tightfit format) or a tensor (torch.optim format)")
        state[spec.name] = enc
    return state


def install(opt, loaded: LoadedState) -> None:
    """Swap the loaded groups and state in (groups updated in place, so references to them
    stay valid); every buffer is copied to where its placement keeps it, never shared with
    the loaded dict."""
    for live, new in zip(opt.param_groups, loaded.groups):
        live.clear()
        live.update(new)
    opt.forget_placements()
    opt.state = defaultdict(dict)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    for key, value in loaded.state.items():
        if not isinstance(key, torch.Tensor):
            opt.state[key] = value
            continue
        group = group_of[id(key)]
        placement = opt.placement_for(group)
        home = placement.home(key)
        state = {}
        for name, v in value.items():
            if name in COUNTERS:
                v = v.to(key.device)
            elif isinstance(v, Encoded):
                v = Encoded(v.codec, v.kind, v.shape, {b: t.to(home, copy=True).contiguous() for b, t in v.buffers.items()})
            state[name] = v
        placement.settle(key, state)
        opt.state[key] = state


def to_torch_state_dict(opt) -> dict[str, Any]:
    """torch.optim layout: decoded states in the parameter's dtype, torch's group flags."""
    packed, _ = _packed_groups(opt)
    params = [p for g in opt.param_groups for p in g["params"]]
    state = {}
    for idx, param in enumerate(params):
        live = opt.state.get(param)
        if not live:
            continue
        out = {"step": live["step"].detach().clone().cpu()}
        for k, v in live.items():
            if isinstance(v, Encoded):
                out[k] = get_codec(v.codec).decode(v).to(param.dtype, copy=True)  # never share storage with our state
        state[idx] = out
    groups = []
    for g, live in zip(packed, opt.param_groups):
        tg = {k: v for k, v in g.items()
              if k not in ("state", "min_quantized_numel", "impl", "paged", "offload", "rule")}
        tg.update({k: v for k, v in opt.rule_of(live).torch_group_extras.items() if k not in tg})
        groups.append(tg)
    return {"state": state, "param_groups": groups}
