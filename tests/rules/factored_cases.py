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


def assert_round_trip_continues_identically(make_optimizer, steps=5):
    """Train ``steps``, save state_dict through torch.save, load it into a fresh optimizer
    over copies of the params; both continue ``steps`` more with equal params and states."""
    import io

    params_a = make_params()
    opt_a = make_optimizer(params_a)
    run(opt_a, params_a, steps)
    buf = io.BytesIO()
    torch.save(opt_a.state_dict(), buf)
    params_b = [p.detach().clone().requires_grad_() for p in params_a]
    opt_b = make_optimizer(params_b)
    buf.seek(0)
    opt_b.load_state_dict(torch.load(buf, weights_only=True))
    for sa, sb in zip(run(opt_a, params_a, steps, start=steps), run(opt_b, params_b, steps, start=steps)):
        assert all(torch.equal(x, y) for x, y in zip(sa, sb))
    for pa, pb in zip(params_a, params_b):
        for key, value in opt_a.state[pa].items():
            other = opt_b.state[pb][key]
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, other)
            else:
                assert all(torch.equal(value.buffers[k], other.buffers[k]) for k in value.buffers)
