"""A small model with every shape class the factored rules treat differently, and the
trajectory helpers their parity tests share (test_adafactor.py, test_came.py)."""

import torch


def make_params(seed=0):
    """Matrix, vector, 3-D (factored over the last two dims) and scalar."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).requires_grad_() for s in [(6, 5), (6,), (2, 3, 4), ()]]


def loss_of(params, step):
    g = torch.Generator().manual_seed(1000 + step)
    weight, bias, cube, scale = params
    x, target = torch.randn(8, 5, generator=g), torch.randn(8, 4, generator=g)
    out = scale * (torch.tanh(x @ weight.T + bias) @ cube.reshape(6, 4))
    return ((out - target) ** 2).mean()


def run(opt, params, steps, start=0):
    """Trajectory of parameter snapshots."""
    snapshots = []
    for step in range(start, start + steps):
        opt.zero_grad()
        loss_of(params, step).backward()
        opt.step()
        snapshots.append([p.detach().clone() for p in params])
    return snapshots


def max_rel_err(ours, theirs):
    return max(float((a - b).norm() / b.norm().clamp(min=1e-30)) for sa, sb in zip(ours, theirs)
               for a, b in zip(sa, sb))
