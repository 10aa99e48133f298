"""FSDP2 meshes as people build them (4 gloo ranks on CPU) train as one process does.

One spawn of 4 ranks runs every case (starting ranks is the slow part on a small CPU).
Params on meshes that compare equal are stepped together; a group whose params live on
different meshes is stepped mesh by mesh.
"""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from optim_cases import TOLERANCES

from . import workers

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORLD = 4
# Max relative parameter difference vs one process after 4 steps. fp32 states: the same
# math, the 4 ranks' gradients summed in another order (a few ulp); 8-bit: TOLERANCES["mesh_8bit"].
TOL = {"fp32": TOLERANCES["dist_aligned"], "8bit": TOLERANCES["mesh_8bit"]}
CASES = [("tutorial", "adamw", "fp32"), ("explicit", "lion", "fp32"), ("hsdp", "adamw", "8bit"),
         ("hsdp", "adafactor", "fp32"), ("mixed", "adamw", "fp32")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("meshes")
    rendezvous = tempfile.mktemp(prefix="tightfit-rdzv-")  # gloo's FileStore creates it
    try:
        mp.spawn(workers.run_mesh_cases, args=(WORLD, rendezvous, str(out), CASES), nprocs=WORLD, join=True)
    finally:
        if os.path.exists(rendezvous):
            os.unlink(rendezvous)
    return out


@pytest.mark.parametrize("pattern, rule, codec", CASES, ids=["-".join(c) for c in CASES])
def test_mesh_pattern_trains_as_one_process(trained, pattern, rule, codec):
    params = torch.load(trained / f"{pattern}-{rule}-{codec}.pt")
    model = workers.model_factory()
    opt = workers.make_optimizer(rule, model.parameters(), codec)
    workers.train(model, opt, workers.batches(), emulate_world=WORLD)
    worst = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                for a, b in zip(params, model.parameters()))
    assert worst <= TOL[codec]
