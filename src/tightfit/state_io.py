"""state_dict for tightfit optimizers: a versioned, self-describing format.

Each encoded state is stored as a plain dict (loadable with weights_only=True):
``{"codec", "kind", "block_size", "format", "shape", <buffers>}``; the top level carries
``"tightfit": {"format", "rule"}``. Loading accepts this format (re-encoding when the
target codec differs; bit-exact when it is the same) and torch.optim state_dicts whose
state names match the rule's (exp_avg, exp_avg_sq, momentum_buffer), quantized on load.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .codecs import FORMAT_VERSION, CODECS, Encoded, get_codec
from .distributed.shards import state_shape

ENCODED_FIELDS = ("codec", "kind", "block_size", "format", "shape")
# torch.optim group flags that have no meaning for tightfit and are dropped on import.
TORCH_ONLY_GROUP_KEYS = ("foreach", "fused", "capturable", "differentiable")


def _own_storage(buf: torch.Tensor) -> torch.Tensor:
    """``buf``, or a copy if it views a larger storage (a paged state's packed host block:
    torch.save cannot store one storage under several dtypes, and should not store it whole)."""
    return buf if buf.untyped_storage().nbytes() == buf.numel() * buf.element_size() else buf.clone()


def _encoded_to_dict(enc: Encoded) -> dict[str, Any]:
    codec = get_codec(enc.codec)
    return {"codec": enc.codec, "kind": enc.kind, "block_size": codec.block_size, "format": FORMAT_VERSION,
            "shape": list(enc.shape), **{k: _own_storage(b) for k, b in enc.buffers.items()}}


def _encoded_from_dict(name: str, d: dict[str, Any], device: torch.device) -> Encoded:
    missing = [k for k in ENCODED_FIELDS if k not in d]
    if missing:
        raise ValueError(f"state {name!r} lacks {missing}; expected a tightfit encoded state with {list(ENCODED_FIELDS)}")
    if d["format"] != FORMAT_VERSION:
        raise ValueError(f"state {name!r} has format {d['format']!r}; this tightfit reads format {FORMAT_VERSION}")
    if d["codec"] not in CODECS:
        raise ValueError(f"state {name!r} uses unknown codec {d['codec']!r}; known: {sorted(CODECS)}")
    codec = get_codec(d["codec"])
    if d["block_size"] != codec.block_size:
        raise ValueError(f"state {name!r}: block size {d['block_size']!r} but codec {codec.name!r} uses {codec.block_size!r}")
    buffers = {k: v.to(device) for k, v in d.items() if k not in ENCODED_FIELDS}
    enc = Encoded(d["codec"], d["kind"], torch.Size(d["shape"]), buffers)
    expected = codec.nbytes(enc.shape, enc.kind)
    if enc.nbytes != expected:
        raise ValueError(f"state {name!r}: {enc.nbytes} bytes stored, codec {codec.name!r} expects {expected} "
                         f"for shape {tuple(enc.shape)}")
    return enc


def export_state_dict(opt, torch_sd: dict[str, Any]) -> dict[str, Any]:
    state = {
        idx: {k: (_encoded_to_dict(v) if isinstance(v, Encoded) else v) for k, v in s.items()}
        for idx, s in torch_sd["state"].items()
    }
    groups = [{k: v for k, v in g.items() if k != "state" or isinstance(v, str)} for g in torch_sd["param_groups"]]
    for g, live in zip(groups, opt.param_groups):
        if not isinstance(live["state"], str):
            g["state"] = live["state"].name
    return {"tightfit": {"format": FORMAT_VERSION, "rule": opt.rule.name}, "state": state, "param_groups": groups}


def _merged_groups(opt, saved_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Saved groups with torch-only flags dropped and tightfit's own keys kept from the live groups."""
    merged = []
    for saved, live in zip(saved_groups, opt.param_groups):
        if saved.get("amsgrad"):
            raise ValueError("state_dict has amsgrad=True; tightfit does not support amsgrad (allowed: amsgrad=False)")
        g = {k: v for k, v in saved.items() if k not in TORCH_ONLY_GROUP_KEYS and k != "amsgrad"}
        for key, value in live.items():  # keys the saved dict lacks (tightfit's own, rule extensions)
            if key != "params":
                g.setdefault(key, value)
        merged.append(g)
    return merged


def load_state_dict(opt, sd: dict[str, Any], torch_load: Callable[[dict[str, Any]], None]) -> None:
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise ValueError("not an optimizer state_dict: expected a dict with 'state' and 'param_groups'")
    meta = sd.get("tightfit")
    if meta is not None:
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"tightfit state_dict format {meta.get('format')!r}; this tightfit reads format {FORMAT_VERSION}")
        if meta.get("rule") != opt.rule.name:
            raise ValueError(f"state_dict is for rule {meta.get('rule')!r}, this optimizer runs {opt.rule.name!r}")
    groups = _merged_groups(opt, sd["param_groups"]) if len(sd["param_groups"]) == len(opt.param_groups) else sd["param_groups"]
    saved_state = sd["state"]
    torch_load({"state": {}, "param_groups": groups})  # checks group sizes, restores hyperparameters
    for group in opt.param_groups:
        opt._validate_group(group)
    saved_ids = [i for g in sd["param_groups"] for i in g["params"]]
    live_params = [(p, g) for g in opt.param_groups for p in g["params"]]
    opt.state.clear()
    for pid, (param, group) in zip(saved_ids, live_params):
        if pid in saved_state:
            opt.state[param] = _import_param_state(opt, param, group, saved_state[pid], tightfit=meta is not None)


def _import_param_state(opt, param, group, saved: dict[str, Any], *, tightfit: bool) -> dict[str, Any]:
    specs = opt.rule.state_specs(param.shape, group)
    placement = opt.placement_for(group)
    home = placement.home(param)  # paged states load straight into host memory
    state: dict[str, Any] = {}
    step = saved.get("step")
    if step is None:  # torch SGD keeps no step; a saved buffer means at least one step was taken
        step = 1.0 if any(s.name in saved for s in specs) else 0.0
    state["step"] = torch.as_tensor(step, dtype=torch.float32).clone().to(param.device)
    state["nonfinite_skips"] = torch.as_tensor(saved.get("nonfinite_skips", 0), dtype=torch.int64).clone().to(param.device)
    for spec in specs:
        if spec.name not in saved:
            if float(state["step"]) > 0:
                raise ValueError(f"saved state lacks {spec.name!r} (has {sorted(saved)}); "
                                 f"rule {opt.rule.name!r} keeps {[s.name for s in specs]}")
            continue
        target = opt.codec_for(spec, param, group)
        value = saved[spec.name]
        if isinstance(value, dict):
            enc = _encoded_from_dict(spec.name, value, home)
            if enc.shape != state_shape(spec, param):
                raise ValueError(f"state {spec.name!r} has shape {tuple(enc.shape)}, parameter needs "
                                 f"{tuple(state_shape(spec, param))}")
            if enc.codec != target.name:
                enc = target.encode(get_codec(enc.codec).decode(enc), spec.kind)
        elif isinstance(value, torch.Tensor) and not tightfit:
            expected = state_shape(spec, param)
            if value.shape != expected:
                raise ValueError(f"state {spec.name!r} has shape {tuple(value.shape)}, parameter needs {tuple(expected)}")
            enc = target.encode(value.detach().to(home, torch.float32), spec.kind)
        else:
            raise ValueError(f"state {spec.name!r} is a {type(value).__name__}; expected an encoded-state dict "
                             "(tightfit format) or a tensor (torch.optim format)")
        state[spec.name] = enc
    placement.settle(param, state)
    return state


def to_torch_state_dict(opt) -> dict[str, Any]:
    """torch.optim layout: decoded states in the parameter's dtype, torch's group flags."""
    sd = torch.optim.Optimizer.state_dict(opt)
    params = [p for g in opt.param_groups for p in g["params"]]
    by_index = dict(enumerate(params))
    state = {}
    for idx, s in sd["state"].items():
        dtype = by_index[idx].dtype
        out = {"step": s["step"].detach().clone().cpu()}
        for k, v in s.items():
            if isinstance(v, Encoded):
                out[k] = get_codec(v.codec).decode(v).to(dtype, copy=True)  # never share storage with our state
        state[idx] = out
    groups = []
    for g in sd["param_groups"]:
        tg = {k: v for k, v in g.items() if k not in ("state", "min_quantized_numel", "impl", "paged")}
        tg.update({k: v for k, v in opt.rule.torch_group_extras.items() if k not in tg})
        groups.append(tg)
    return {"state": state, "param_groups": groups}
