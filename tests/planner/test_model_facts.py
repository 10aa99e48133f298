import json

import pytest
import torch

from tightfit.planner.model_facts import bundled_configs, facts_from_config, load_model_facts

BUNDLED = sorted(bundled_configs())

# Published parameter totals (model cards) for a few bundled configs.
PUBLISHED_TOTALS = {
    "meta-llama/Llama-3.1-8B": 8_030_261_248,
    "meta-llama/Llama-3.2-1B": 1_235_814_400,
    "HuggingFaceTB/SmolLM2-135M": 134_515_008,
}

KIND_OF_MODULE = {"embed_tokens": "embedding", "self_attn": "attention", "mlp": "mlp", "lm_head": "lm_head"}


def kind_of(name: str) -> str:
    parts = name.split(".")
    for part in parts:
        if part in KIND_OF_MODULE:
            return KIND_OF_MODULE[part]
    assert parts[-2].endswith("norm") or parts[-2].endswith("layernorm"), name
    return "norm"


@pytest.mark.parametrize("hub_id", BUNDLED)
def test_parameters_equal_transformers_meta_model(hub_id):
    from transformers import AutoConfig, AutoModelForCausalLM

    facts = load_model_facts(hub_id)
    config = AutoConfig.for_model(**{k: v for k, v in facts.raw.items() if k != "architectures"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    real = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert real == {p.name: p.shape for p in facts.parameters()}
    by_kind: dict[str, int] = {}
    by_module: dict[str, int] = {}
    for name, p in model.named_parameters():
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0) + p.numel()
        module = name.rsplit(".", 2)[-2]
        by_module[module] = by_module.get(module, 0) + p.numel()
    assert by_kind == facts.counts_by_kind()
    assert by_module == facts.counts_by_module()
    assert facts.total_params() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("hub_id,total", sorted(PUBLISHED_TOTALS.items()))
def test_published_totals(hub_id, total):
    assert load_model_facts(hub_id).total_params() == total


@pytest.mark.parametrize("spec,hub_id", [("llama-3.1-8b", "meta-llama/Llama-3.1-8B"),
                                         ("META-LLAMA/llama-3.1-8B", "meta-llama/Llama-3.1-8B"),
                                         ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M"),
                                         ("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B"),
                                         ("phi-4-mini", "microsoft/Phi-4-mini-instruct")])
def test_aliases(spec, hub_id):
    assert load_model_facts(spec).name == hub_id


def test_local_config_file_and_folder(tmp_path):
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "vocab_size": 100, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    from_file = load_model_facts(str(tmp_path / "config.json"))
    from_dir = load_model_facts(str(tmp_path))
    assert from_file.total_params() == from_dir.total_params() == (
        2 * 100 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64)
    assert from_file.kv_heads == 4 and from_file.head_dim == 16


def test_unknown_model_lists_bundled():
    with pytest.raises(ValueError, match="unknown model 'no-such-model'.*meta-llama/Llama-3.1-8B"):
        load_model_facts("no-such-model")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="'someone/some-model' is not bundled and the hub is not reachable "
                                         r"\(HF_HUB_OFFLINE is set\)"):
        load_model_facts("someone/some-model")


def test_unknown_architecture():
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        facts_from_config({"model_type": "gpt2"}, "x", "test")
