"""tightfit under FSDP2 (DTensor params) and DDP: 2 gloo ranks on CPU vs one process.

Each rank trains on its half of every batch; the gradient average equals the full
batch's, so the parameters must match a single-process run on whole batches.
"""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tightfit
from optim_cases import TOLERANCES
from tightfit.distributed import load_sharded_state_dict, sharded_state_dict

from . import workers

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORLD = 2
# Max relative parameter difference vs one process: TOLERANCES["dist_*"]. The one-process
# run accumulates the ranks' half-batch gradients the way the all-reduce sums them, so what
# is left is the optimizer's own difference.
TOL = {name: TOLERANCES[f"dist_{name}"] for name in ("aligned", "misaligned", "reencoded")}


def _spawn(fn, out_dir, *args):
    rendezvous = tempfile.mktemp(prefix="tightfit-rdzv-")  # must not exist yet; gloo's FileStore creates it
    try:
        mp.spawn(fn, args=(WORLD, rendezvous, str(out_dir), *args), nprocs=WORLD, join=True)
    finally:
        if os.path.exists(rendezvous):
            os.unlink(rendezvous)


def _single_process(rule, codec, blocks="aligned", steps=workers.STEPS):
    model = workers.model_factory()
    opt = workers.make_optimizer(rule, model.parameters(), codec, blocks)
    workers.train(model, opt, workers.batches()[:steps], emulate_world=WORLD)
    return model, opt


def _rel(a, b):
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-12)).item() for x, y in zip(a, b))


CASES = [("fsdp2", rule, codec, "aligned") for rule in ("adamw", "lion", "adafactor")
         for codec in ("fp32", "8bit", "4bit")]
CASES += [("fsdp2", "came", "8bit", "aligned"), ("fsdp2", "adamw", "8bit", "misaligned"),
          ("fsdp2", "lion", "4bit", "misaligned"),
          ("ddp", "adamw", "8bit", "misaligned"), ("ddp", "lion", "fp32", "aligned"),
          ("ddp", "adafactor", "4bit", "aligned")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    _spawn(workers.run_training_cases, out, CASES)
    return out


@pytest.mark.parametrize("wrapper, rule, codec, blocks", CASES, ids=["-".join(c) for c in CASES])
def test_distributed_training_equals_one_process(trained, wrapper, rule, codec, blocks):
    params = torch.load(trained / f"{wrapper}-{rule}-{codec}-{blocks}.pt")
    reference, _ = _single_process(rule, codec, blocks)
    # DDP replicates whole tensors: its blocks are a single process's, so it is always exact
    tol = TOL["aligned"] if wrapper == "ddp" else TOL[blocks]
    assert _rel(params, list(reference.parameters())) <= tol


@pytest.mark.parametrize("rule, codec, tol", [("adamw", "fp32", "aligned"), ("adamw", "8bit", "reencoded"),
                                              ("adafactor", "8bit", "reencoded")])
def test_checkpoint_from_two_ranks_continues_in_one_process(tmp_path, rule, codec, tol):
    """Saved with 2 FSDP2 ranks (DCP, sharded), loaded by one plain process, continued."""
    import torch.distributed.checkpoint as dcp

    split = 2
    _spawn(workers.run_checkpoint_case, tmp_path, rule, codec, split)
    model = workers.model_factory(seed=123)  # different init: everything must come from the checkpoint
    opt = workers.make_optimizer(rule, model.parameters(), codec)
    state = {"model": model.state_dict(), "optim": sharded_state_dict(opt)}
    dcp.load(state, checkpoint_id=str(tmp_path / "dcp"))
    model.load_state_dict(state["model"])
    load_sharded_state_dict(opt, state["optim"])
    workers.train(model, opt, workers.batches()[split:], emulate_world=WORLD)
    final = torch.load(tmp_path / "final.pt")
    assert _rel(list(model.parameters()), final) <= TOL[tol]

    # the gathered full state_dict loads into a plain optimizer and equals one process's state
    reference, ref_opt = _single_process(rule, codec, steps=split)
    plain = workers.make_optimizer(rule, reference.parameters(), codec)
    plain.load_state_dict(torch.load(tmp_path / "full_state.pt", weights_only=False))
    for p in reference.parameters():
        for name, enc in ref_opt.state[p].items():
            if isinstance(enc, tightfit.codecs.Encoded):
                mine = tightfit.get_codec(enc.codec).decode(plain.state[p][name])
                theirs = tightfit.get_codec(enc.codec).decode(enc)
                assert _rel([mine], [theirs]) <= TOL[tol], name


def test_in_backward_refuses_fsdp2(tmp_path):
    _spawn(workers.run_in_backward_refusal, tmp_path)
    assert "FSDP2" in (tmp_path / "error.txt").read_text()
