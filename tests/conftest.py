import os

# Triton kernels must see the interpreter flag before they are defined.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- train / bench: the bundled llama-micro model (99k params) on a few kB of text -------

TRAIN_TEXT = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
              "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. ") * 40


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and far faster when other jobs share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TRAIN_TEXT)
    return path


@pytest.fixture
def micro_config(corpus, one_thread):
    """TrainConfig factory: llama-micro, seq 32, batch 2, 8 steps (~1 s on a 2-core CPU)."""
    from tightfit.train.config import TrainConfig

    def make(out=None, **changes):
        base = TrainConfig(model="llama-micro", data=[str(corpus)], seq=32, batch_size=2, steps=8, lr=3e-3, warmup=2,
                           eval_every=4, eval_batches=2, eval_fraction=0.1, save_every=3, progress=False,
                           out=str(out) if out else None)
        return base.replace(**changes)

    return make
