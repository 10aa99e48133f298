import json

import pytest
import torch

from tightfit.cli.main import main
from tightfit.train.model_loading import bundled_model, load_finetuned


def micro_train(corpus, out, *extra):
    return ["train", "--model", "llama-micro", "--data", str(corpus), "--seq", "32", "--batch-size", "2", "--steps",
            "6", "--warmup", "1", "--lr", "1e-2", "--eval-every", "6", "--eval-batches", "1", "--eval-fraction", "0.1",
            "--out", str(out), "--quiet", *extra]


def greedy(model, ids, n):
    """Reference greedy decoding: argmax of the next-token logits, n times."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids


def test_generate_from_a_full_fine_tune_through_the_console_script(tmp_path, corpus, tightfit, one_thread):
    out = tmp_path / "run"
    assert main(micro_train(corpus, out)) == 0
    done = tightfit("generate", out, "To be", "--temperature", "0", "--max-new-tokens", "12")
    assert done.returncode == 0, done.stderr
    loaded = load_finetuned(out)
    prompt = list(loaded.tokenizer.encode("To be"))
    expected = loaded.tokenizer.decode([i for i in greedy(loaded.model.eval(), prompt, 12)[len(prompt):] if i != 256])
    assert done.stdout == "To be" + expected + "\n"


def test_final_folder_is_a_usable_model_with_its_tokenizer(tmp_path, corpus, capsys, one_thread):
    """A full fine-tune's final/ trains again (its byte tokenizer is saved with it)."""
    assert main(micro_train(corpus, tmp_path / "first")) == 0
    assert main(micro_train(corpus, tmp_path / "second", "--model", str(tmp_path / "first" / "final"))) == 0
    assert f"model: folder {tmp_path / 'first' / 'final'}" in capsys.readouterr().err


def test_adapter_loads_onto_the_base_it_was_trained_on(tmp_path, corpus, one_thread):
    out = tmp_path / "lora"
    assert main(micro_train(corpus, out, "--method", "lora", "--lora-r", "4")) == 0
    record = json.loads((out / "final" / "tightfit_final.json").read_text())
    assert record["model"] == "llama-micro" and record["method"] == "lora"
    loaded = load_finetuned(out)
    base = bundled_model("llama-micro", seed=0)
    frozen = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
              for n, p in loaded.model.named_parameters() if "lora_" not in n}
    assert all(torch.equal(frozen[n], p) for n, p in base.named_parameters())  # the same random init
    ids = torch.tensor([list(loaded.tokenizer.encode("To be, or not"))])
    with torch.no_grad():
        assert not torch.allclose(loaded.model(input_ids=ids).logits, base(input_ids=ids).logits)  # adapters trained


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "is not a folder"),
    (["{unfinished}"], "holds no model (no config.json or adapter_config.json) (the run has not finished"),
    (["{run}", "--max-new-tokens", "0"], "--max-new-tokens 0 must be >= 1"),
    (["{run}", "--temperature", "-1"], "--temperature -1.0 must be >= 0"),
])
def test_bad_generate_input_is_one_line(tmp_path, capsys, args, message):
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "run_config.json").write_text("{}")
    places = {"{missing}": tmp_path / "missing", "{unfinished}": tmp_path / "unfinished", "{run}": tmp_path / "unfinished"}
    assert main(["generate", *[str(places.get(a, a)) for a in args]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tightfit generate: error:") and message in err
