"""Tokenizers the training data pipeline accepts.

``ByteTokenizer`` is the default for the bundled random-init models: UTF-8 bytes are the
vocabulary (256 ids + end-of-document), so it needs no training, no download and no
files, and tokenizing the whole Shakespeare corpus takes milliseconds. Pretrained models
bring their own Hugging Face tokenizer, wrapped by ``HFTokenizer`` to the same interface.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Written by ByteTokenizer.save_pretrained, so a saved model folder knows its tokenizer.
BYTE_TOKENIZER_FILE = "tightfit_tokenizer.json"


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255, ``eos_id`` = 256."""

    name = "bytes"
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def save_pretrained(self, folder) -> None:
        """The vocabulary is fixed: one small file says which tokenizer this folder needs."""
        (Path(folder) / BYTE_TOKENIZER_FILE).write_text(
            json.dumps({"tokenizer": "bytes", "vocab_size": self.vocab_size, "eos_id": self.eos_id}) + "\n")

    @staticmethod
    def saved_in(folder) -> bool:
        return (Path(folder) / BYTE_TOKENIZER_FILE).is_file()


class HFTokenizer:
    """A transformers tokenizer with the interface above (no special tokens added)."""

    def __init__(self, tokenizer) -> None:
        self.hf = tokenizer
        self.name = type(tokenizer).__name__
        self.vocab_size = len(tokenizer)
        eos = tokenizer.eos_token_id
        self.eos_id = int(eos) if eos is not None else None

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.hf(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids))

    def save_pretrained(self, folder) -> None:
        self.hf.save_pretrained(folder)
