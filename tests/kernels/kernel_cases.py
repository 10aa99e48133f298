"""Shared pieces of the kernel tests: shapes, twin optimizers of the case table's
rows (optim_cases.py), gradients. Comparisons: compare.py; tolerances: optim_cases.TOLERANCES."""

import torch

from optim_cases import CASES_BY_ID

# Odd numel spanning two programs and a partial 4-bit/8-bit block, a small vector, a 0-dim param.
SHAPES = [(37, 29), (300,), ()]


def make_params(shapes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype) for shape in shapes]


def twin_optimizers(case_id, params, **options):
    """(triton optimizer, reference optimizer) of a case of the table over identical copies of ``params``."""
    make = CASES_BY_ID[case_id].make
    fast = [p.clone().requires_grad_() for p in params]
    slow = [p.clone().requires_grad_() for p in params]
    return make(fast, impl="triton", **options), make(slow, impl="reference", **options)


def set_grads(opt_a, opt_b, seed, nonfinite_index=None):
    g = torch.Generator().manual_seed(seed)
    for a, b in zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"]):
        grad = torch.randn(a.shape, generator=g).to(a.dtype)
        a.grad, b.grad = grad.clone(), grad.clone()
    if nonfinite_index is not None:
        for opt in (opt_a, opt_b):
            opt.param_groups[0]["params"][nonfinite_index].grad.view(-1)[0] = float("nan")


def step_without_syncs(opt, check: bool) -> None:
    """opt.step(); with ``check``, any host synchronisation inside it raises (CUDA only)."""
    if check:
        torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
