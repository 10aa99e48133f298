"""The toy problem the generic optimizer tests train: a small MLP on a fixed regression."""

import torch


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(24, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                               torch.nn.Linear(64, 4))


def regression_batch(seed=1, n=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 24, generator=g)
    w = torch.randn(24, 4, generator=g)
    return x, torch.tanh(x @ w)


def train(model, opt, steps, batch=None):
    x, y = batch or regression_batch()
    loss = None
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return loss.item()


def max_relative_difference(params_a, params_b):
    return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(params_a, params_b))
