"""Code that runs inside each spawned rank (gloo, CPU); results go to files the test reads.

Kept apart from the test module so that spawned processes import only this.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback

import torch
import torch.distributed as dist

import tightfit

STEPS = 4
LR = {"adamw": 1e-2, "lion": 1e-3, "adafactor": 1e-2, "came": 1e-3}


def model_factory(seed=0):
    """The matrices' shards on 2 ranks (768, 2048, 256 elements) are whole 8/4-bit blocks."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(24, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                               torch.nn.Linear(64, 8))


def batches(steps=STEPS, n=16):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 24, generator=g), torch.randn(n, 8, generator=g)) for _ in range(steps)]


# "aligned": only the matrices are quantized (biases, 64 elements, keep fp32);
# "misaligned": biases too, whose 32-element shards split a single-process block.
MIN_QUANTIZED = {"aligned": 512, "misaligned": 0}


def make_optimizer(name: str, params, codec: str, blocks: str = "aligned"):
    options = {"state": codec, "min_quantized_numel": MIN_QUANTIZED[blocks]}
    if name == "adafactor":
        return tightfit.Adafactor(params, lr=LR[name], beta1=0.9 if codec != "fp32" else None, **options)
    cls = {"adamw": tightfit.AdamW, "lion": tightfit.Lion, "came": tightfit.CAME}[name]
    return cls(params, lr=LR[name], **options)


def train(model, opt, data, rank=0, world=1, emulate_world=1):
    """Each rank trains on its share of every batch. One process (``emulate_world`` > 1)
    accumulates the shares' gradients / world, the sum the ranks' all-reduce forms, so
    that any difference left is the optimizer's."""
    for x, y in data:
        opt.zero_grad()
        if world > 1:
            rows = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
            torch.nn.functional.mse_loss(model(x[rows]), y[rows]).backward()
        else:
            for share in range(emulate_world):
                rows = slice(share * len(x) // emulate_world, (share + 1) * len(x) // emulate_world)
                (torch.nn.functional.mse_loss(model(x[rows]), y[rows]) / emulate_world).backward()
        opt.step()


def full_params(model):
    return [p.full_tensor() if hasattr(p, "full_tensor") else p.detach().clone() for p in model.parameters()]


def rank_main(work):
    """Run ``work`` as one rank: set up gloo, run, and leave together with the other rank.

    The process then ends with os._exit: under load, gloo's C++ teardown at interpreter
    exit occasionally aborts ("terminate called without an active exception", seen
    ~1 run in 10 on a busy 2-core machine) after every result was written. A failure
    in ``work`` prints its traceback and exits 1, so the test still sees it.
    """
    @functools.wraps(work)
    def run(rank, world, rendezvous, *args):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
        try:
            work(rank, world, *args)
            dist.barrier()
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        sys.stdout.flush()
        os._exit(0)
    return run


def fsdp_model(seed=0):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model = model_factory(seed)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@rank_main
def run_training_cases(rank, world, out_dir, cases):
    """FSDP2 and DDP training for each (wrapper, rule, codec); rank 0 saves full params."""
    for wrapper, rule, codec, blocks in cases:
        if wrapper == "fsdp2":
            model = fsdp_model()
        else:
            model = torch.nn.parallel.DistributedDataParallel(model_factory())
        opt = make_optimizer(rule, model.parameters(), codec, blocks)
        train(model, opt, batches(), rank, world)
        params = full_params(model)
        if wrapper == "ddp":  # replicas must agree exactly
            for p in params:
                gathered = [torch.empty_like(p) for _ in range(world)]
                dist.all_gather(gathered, p)
                assert all(torch.equal(g, gathered[0]) for g in gathered), "DDP replicas diverged"
        if rank == 0:
            torch.save(params, os.path.join(out_dir, f"{wrapper}-{rule}-{codec}-{blocks}.pt"))


@rank_main
def run_checkpoint_case(rank, world, out_dir, rule, codec, split):
    """Train ``split`` steps, save with DCP (model + optimizer), train on; also a full state_dict."""
    import torch.distributed.checkpoint as dcp

    from tightfit.distributed import full_state_dict, sharded_state_dict

    model = fsdp_model()
    opt = make_optimizer(rule, model.parameters(), codec)
    data = batches()
    train(model, opt, data[:split], rank, world)
    dcp.save({"model": model.state_dict(), "optim": sharded_state_dict(opt)},
             checkpoint_id=os.path.join(out_dir, "dcp"))
    full = full_state_dict(opt)
    train(model, opt, data[split:], rank, world)
    params = full_params(model)
    if rank == 0:
        torch.save(params, os.path.join(out_dir, "final.pt"))
        torch.save(full, os.path.join(out_dir, "full_state.pt"))


@rank_main
def run_in_backward_refusal(rank, world, out_dir):
    model = fsdp_model()
    opt = tightfit.AdamW(model.parameters())
    try:
        tightfit.step_in_backward(model, opt)
    except ValueError as error:
        if rank == 0:
            with open(os.path.join(out_dir, "error.txt"), "w") as f:
                f.write(str(error))


def mesh_model(pattern: str, seed=0):
    """FSDP2 as people write it, on ``dist.get_world_size()`` (4) ranks:

    - "tutorial": fully_shard(each Linear), then fully_shard(model), no mesh given: every
      call builds its own (equal) mesh;
    - "explicit": one 1-D mesh passed to every call;
    - "hsdp": a 2-D (replicate x shard) mesh, 2 x 2;
    - "mixed": the first Linear on the 2-D mesh, the rest on a 1-D mesh: one param group
      whose params live on two different meshes.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world = dist.get_world_size()
    model = model_factory(seed)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    if pattern == "tutorial":
        for layer in linears:
            fully_shard(layer)
        fully_shard(model)
        return model
    flat = init_device_mesh("cpu", (world,))
    square = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
    meshes = {"explicit": [flat] * len(linears), "hsdp": [square] * len(linears),
              "mixed": [square] + [flat] * (len(linears) - 1)}[pattern]
    for layer, mesh in zip(linears, meshes):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=meshes[-1])
    return model


@rank_main
def run_mesh_cases(rank, world, out_dir, cases):
    """Train each (pattern, rule, codec) on every rank's share of the batches; rank 0 saves."""
    for pattern, rule, codec in cases:
        model = mesh_model(pattern)
        opt = make_optimizer(rule, model.parameters(), codec)
        train(model, opt, batches(), rank, world)
        params = full_params(model)
        if rank == 0:
            torch.save(params, os.path.join(out_dir, f"{pattern}-{rule}-{codec}.pt"))
