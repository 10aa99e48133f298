"""Model facts: architecture numbers and every parameter's shape, from a config.

Sources (``load_model_facts(spec)``): a local ``config.json``, a local model folder
holding one, a bundled config (``configs/*.json``, addressed by hub id such as
``meta-llama/Llama-3.1-8B`` or by short alias such as ``llama-3.1-8b``), or — only when
the network allows — any hub id through ``transformers.AutoConfig``.

Parameters are listed from the architecture table ``LAYOUTS`` (per ``model_type``: fused
or split projections, biases, norms per block), named like transformers' modules, so
per-kind counts (embedding, attention q/k/v/o, mlp, norms, lm_head) are exact: the tests
compare them with transformers' meta-device models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import hub

CONFIG_DIR = Path(__file__).with_name("configs")


@dataclass(frozen=True)
class Layout:
    """How one decoder block of a ``model_type`` is built (transformers' modules)."""

    fused_qkv: bool = False  # phi3: one qkv_proj
    fused_gate_up: bool = False  # phi3: one gate_up_proj
    qkv_bias: bool | None = None  # None: the config's attention_bias decides (also for o_proj)
    norms_per_block: int = 2


LAYOUTS: dict[str, Layout] = {
    "llama": Layout(),
    "mistral": Layout(qkv_bias=False),
    "qwen2": Layout(qkv_bias=True),
    "phi3": Layout(fused_qkv=True, fused_gate_up=True, qkv_bias=False),
    "gemma2": Layout(norms_per_block=4),
}


@dataclass(frozen=True)
class ParamInfo:
    name: str
    kind: str  # embedding | attention | mlp | norm | lm_head
    shape: tuple[int, ...]
    linear: bool = False  # a block linear weight: LoRA target, NF4-quantized under QLoRA
    layer: int | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def module(self) -> str:
        """The module's own name: q_proj, gate_proj, input_layernorm, embed_tokens, lm_head ..."""
        return self.name.rsplit(".", 2)[-2]


@dataclass(frozen=True)
class ModelFacts:
    name: str
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    max_position: int
    source: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.model_type]

    def parameters(self) -> list[ParamInfo]:
        """Every parameter, in module order (a tied lm_head is not listed again)."""
        h, d, i = self.hidden, self.head_dim, self.intermediate
        q_out, kv_out = self.heads * d, self.kv_heads * d
        lay = self.layout
        bias = lay.qkv_bias if lay.qkv_bias is not None else bool(self.raw.get("attention_bias", False))
        o_bias = bool(self.raw.get("attention_bias", False)) if lay.qkv_bias is None else False
        mlp_bias = bool(self.raw.get("mlp_bias", False))
        out = [ParamInfo("model.embed_tokens.weight", "embedding", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            proj = [("qkv_proj", q_out + 2 * kv_out, h, bias)] if lay.fused_qkv else [
                ("q_proj", q_out, h, bias), ("k_proj", kv_out, h, bias), ("v_proj", kv_out, h, bias)]
            for mod, rows, cols, has_bias in proj + [("o_proj", h, q_out, o_bias)]:
                out.append(ParamInfo(f"{p}self_attn.{mod}.weight", "attention", (rows, cols), True, n))
                if has_bias:
                    out.append(ParamInfo(f"{p}self_attn.{mod}.bias", "attention", (rows,), False, n))
            mlp = [("gate_up_proj", 2 * i, h)] if lay.fused_gate_up else [("gate_proj", i, h), ("up_proj", i, h)]
            for mod, rows, cols in mlp + [("down_proj", h, i)]:
                out.append(ParamInfo(f"{p}mlp.{mod}.weight", "mlp", (rows, cols), True, n))
                if mlp_bias:
                    out.append(ParamInfo(f"{p}mlp.{mod}.bias", "mlp", (rows,), False, n))
            norm_names = ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                          "post_feedforward_layernorm"][: lay.norms_per_block]
            out += [ParamInfo(f"{p}{norm}.weight", "norm", (h,), False, n) for norm in norm_names]
        out.append(ParamInfo("model.norm.weight", "norm", (h,)))
        if not self.tied:
            out.append(ParamInfo("lm_head.weight", "lm_head", (self.vocab, h)))
        return out

    def counts_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.parameters():
            counts[p.kind] = counts.get(p.kind, 0) + p.numel
        return counts

    def counts_by_module(self) -> dict[str, int]:
        """Parameters per module name over all blocks (q_proj, k_proj, ..., norm, lm_head)."""
        counts: dict[str, int] = {}
        for p in self.parameters():
            counts[p.module] = counts.get(p.module, 0) + p.numel
        return counts

    def total_params(self) -> int:
        return sum(p.numel for p in self.parameters())

    def to_dict(self) -> dict[str, Any]:
        keys = ("name", "model_type", "hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim", "vocab",
                "tied", "max_position", "source")
        return {**{k: getattr(self, k) for k in keys}, "params": self.total_params(),
                "params_by_kind": self.counts_by_kind(), "params_by_module": self.counts_by_module()}


def facts_from_config(config: dict[str, Any], name: str, source: str) -> ModelFacts:
    """ModelFacts from a config.json dict; ValueError for an architecture outside LAYOUTS."""
    model_type = config.get("model_type")
    if model_type not in LAYOUTS:
        raise ValueError(f"model {name!r} has model_type {model_type!r}; the planner knows: {', '.join(LAYOUTS)}")
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    return ModelFacts(
        name=name, model_type=model_type, hidden=hidden, intermediate=config["intermediate_size"],
        layers=config["num_hidden_layers"], heads=heads, kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or hidden // heads, vocab=config["vocab_size"],
        # transformers' default for tie_word_embeddings is True
        tied=bool(config.get("tie_word_embeddings", True)), max_position=config.get("max_position_embeddings", 0),
        source=source, raw={k: v for k, v in config.items() if not k.startswith("_")})


def bundled_configs() -> dict[str, Path]:
    """hub id -> bundled config file."""
    out = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        out[json.loads(path.read_text())["_hub_id"]] = path
    return out


def _alias(hub_id: str) -> str:
    return hub_id.rsplit("/", 1)[-1].lower()


def _aliases(hub_id: str, path: Path) -> list[str]:
    """The repository name in lower case, plus any ``_aliases`` the config lists."""
    return [_alias(hub_id), *json.loads(path.read_text()).get("_aliases", [])]


def load_model_facts(spec: str) -> ModelFacts:
    """Facts for a config path, a model folder, a bundled id or alias, or (online) a hub id."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if path.is_file():
        return facts_from_config(json.loads(path.read_text()), str(spec), f"file {path}")
    bundled = bundled_configs()
    by_key = {**{k.lower(): k for k in bundled}, **{a: k for k, p in bundled.items() for a in _aliases(k, p)}}
    if spec.lower() in by_key:
        hub_id = by_key[spec.lower()]
        return facts_from_config(json.loads(bundled[hub_id].read_text()), hub_id, "bundled config")
    from ..train.model_loading import BUNDLED_CONFIGS, ByteTokenizer

    if spec in BUNDLED_CONFIGS:  # tightfit train's random-init models over the byte tokenizer
        config = {"model_type": "llama", "vocab_size": ByteTokenizer.vocab_size, "tie_word_embeddings": True,
                  **BUNDLED_CONFIGS[spec]}
        return facts_from_config(config, spec, "tightfit train bundled config")
    listing = ", ".join([f"{k} ({_alias(k)})" for k in bundled] + list(BUNDLED_CONFIGS))
    if "/" in spec and not path.exists():
        allowed, reason = hub.network_allowed()
        if not allowed:
            raise ValueError(f"model {spec!r} is not bundled and the hub is not reachable ({reason}); "
                             f"pass a local config.json or model folder, or one of: {listing}")
        from transformers import AutoConfig

        return facts_from_config(AutoConfig.from_pretrained(spec).to_dict(), spec, "hub (transformers.AutoConfig)")
    raise ValueError(f"unknown model {spec!r} (allowed: a config.json, a model folder, or one of: {listing})")
