"""Updates inside backward equal a normal step(), free gradients early, accumulate and clip."""

import copy

import pytest
import torch

import tightfit
from optim_cases import TOLERANCES, rule_by_codec
from toy_problem import regression_batch, small_mlp

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: far faster on one thread on a shared CPU


def loss_of(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


@pytest.mark.parametrize("case, codec", rule_by_codec())
def test_in_backward_equals_normal_step(case, codec):
    model = small_mlp()
    twin = copy.deepcopy(model)
    normal = case.make(model.parameters(), state=codec, min_quantized_numel=0)
    inside = case.make(twin.parameters(), state=codec, min_quantized_numel=0)
    handle = tightfit.step_in_backward(twin, inside)
    for _ in range(5):
        normal.zero_grad()
        loss_of(model, regression_batch()).backward()
        normal.step()
        loss_of(twin, regression_batch()).backward()
    handle.remove()
    tol = TOLERANCES["in_backward"]
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        assert b.grad is None


def test_gradients_are_freed_as_soon_as_used():
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(6)])
    opt = tightfit.AdamW(model.parameters(), state="8bit")
    live = []

    def track(_):  # registered before tightfit's hooks: sees the grads alive when each one completes
        live.append(sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None))

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(track)
    handle = tightfit.step_in_backward(model, opt)
    model(torch.randn(8, 64)).square().mean().backward()
    largest = max(p.numel() * 4 for p in model.parameters())
    # the gradient being finished plus at most one more whose hook is running
    assert max(live) <= 2 * largest
    assert all(p.grad is None for p in model.parameters())
    # ordinary backward would keep all of them: the bound above is not trivially met
    assert sum(p.numel() * 4 for p in model.parameters()) > 2 * largest
    handle.remove()


def test_accumulation_updates_on_last_micro_batch_only():
    model = small_mlp()
    twin = copy.deepcopy(model)
    normal = tightfit.AdamW(model.parameters(), lr=1e-2)
    inside = tightfit.AdamW(twin.parameters(), lr=1e-2)
    handle = tightfit.step_in_backward(twin, inside, accumulation_steps=3)
    batches = [regression_batch(seed=s, n=16) for s in range(6)]
    for window in (batches[:3], batches[3:]):
        normal.zero_grad()
        for b in window:
            loss_of(model, b).backward()
        normal.step()
        before = [p.detach().clone() for p in twin.parameters()]
        for i, b in enumerate(window):
            loss_of(twin, b).backward()
            unchanged = all(torch.equal(p, q) for p, q in zip(twin.parameters(), before))
            assert unchanged == (i < 2)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_global_norm_clipping_equals_clip_grad_norm(accumulation_steps):
    model = small_mlp()
    twin = copy.deepcopy(model)
    normal = tightfit.AdamW(model.parameters(), lr=1e-2, state="8bit", min_quantized_numel=0)
    inside = tightfit.AdamW(twin.parameters(), lr=1e-2, state="8bit", min_quantized_numel=0)
    handle = tightfit.step_in_backward(twin, inside, accumulation_steps=accumulation_steps, max_grad_norm=0.05)
    for step in range(3):
        normal.zero_grad()
        batches = [regression_batch(seed=10 * step + k, n=16) for k in range(accumulation_steps)]
        for b in batches:
            loss_of(model, b).backward()
        expected_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05).item()
        normal.step()
        for b in batches:
            handle.backward(loss_of(twin, b))
        assert handle.last_grad_norm == pytest.approx(expected_norm, rel=1e-5)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_scheduler_drives_in_backward_lr():
    model = small_mlp()
    opt = tightfit.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.0 if s >= 1 else 1.0)
    handle = tightfit.step_in_backward(model, opt)
    loss_of(model, regression_batch()).backward()
    sched.step()
    frozen = [p.detach().clone() for p in model.parameters()]
    loss_of(model, regression_batch()).backward()  # lr is now 0
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), frozen))
    handle.remove()


def test_step_is_refused_while_hooks_are_active_and_allowed_after_remove():
    model = small_mlp()
    opt = tightfit.AdamW(model.parameters())
    handle = tightfit.step_in_backward(model, opt)
    with pytest.raises(RuntimeError, match="updates inside backward"):
        opt.step()
    handle.remove()
    loss_of(model, regression_batch()).backward()
    opt.step()


def test_clipping_without_handle_backward_is_a_clear_error():
    model = small_mlp()
    handle = tightfit.step_in_backward(model, tightfit.AdamW(model.parameters()), max_grad_norm=1.0)
    with pytest.raises(RuntimeError, match="handle.backward"):
        loss_of(model, regression_batch()).backward()
    handle.remove()


@pytest.mark.parametrize("kwargs,message", [
    ({"accumulation_steps": 0}, r"invalid accumulation_steps: 0"),
    ({"max_grad_norm": -1.0}, r"invalid max_grad_norm: -1.0"),
])
def test_bad_arguments(kwargs, message):
    model = small_mlp()
    with pytest.raises(ValueError, match=message):
        tightfit.step_in_backward(model, tightfit.AdamW(model.parameters()), **kwargs)


def test_parameters_missing_from_the_optimizer_are_refused():
    model = small_mlp()
    with pytest.raises(ValueError, match="not in the optimizer"):
        tightfit.step_in_backward(model, tightfit.AdamW(model[0].parameters()))


# --- robustness: failures and misuse ---------------------------------------------------

def _raising_loss(model, batch):
    """A loss whose backward raises after the last two Linears got their gradients."""
    x, y = batch
    hidden = model[:2](x)

    def boom(_):
        raise RuntimeError("boom")
    hidden.register_hook(boom)
    return torch.nn.functional.mse_loss(model[2:](hidden), y)


@pytest.mark.parametrize("through_handle", [False, True])
def test_a_backward_that_raises_starts_a_clean_window(through_handle):
    model = small_mlp()
    twin = copy.deepcopy(model)
    normal = tightfit.AdamW(model.parameters(), lr=1e-2)
    inside = tightfit.AdamW(twin.parameters(), lr=1e-2)
    handle = tightfit.step_in_backward(twin, inside, accumulation_steps=2)
    run = handle.backward if through_handle else torch.Tensor.backward
    batches = [regression_batch(seed=s, n=16) for s in range(4)]
    with pytest.raises(RuntimeError, match="boom"):  # some gradients of this pass accumulated, then it failed
        run(_raising_loss(twin, batches[1]))
    assert any(p.grad is not None for p in twin.parameters()) != through_handle  # handle.backward cleans at once
    for b in batches[2:]:  # a fresh window: exactly one update, from these two batches only
        run(loss_of(twin, b))
    for b in batches[2:]:
        loss_of(model, b).backward()
    normal.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert b.grad is None
    assert handle.micro_batch == 0


def test_removing_a_stale_handle_leaves_the_new_one_attached():
    model = small_mlp()
    opt = tightfit.SGD(model.parameters(), lr=0.1)
    old = tightfit.step_in_backward(model, opt)
    old.remove()
    new = tightfit.step_in_backward(model, opt)
    old.remove()
    before = [p.detach().clone() for p in model.parameters()]
    loss_of(model, regression_batch()).backward()
    assert opt.in_backward_handle is new
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    with pytest.raises(RuntimeError, match="removed"):
        old.backward(loss_of(model, regression_batch()))
    new.remove()
    new.remove()  # idempotent
    assert opt.in_backward_handle is None


def test_a_parameter_unfrozen_after_hooking_is_refused_loudly():
    model = small_mlp()
    opt = tightfit.AdamW(model.parameters())
    model[0].weight.requires_grad_(False)
    handle = tightfit.step_in_backward(model, opt)
    model[0].weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"shapes \[\(64, 24\)\]\) became trainable after step_in_backward"):
        loss_of(model, regression_batch()).backward()
    handle.remove()


def test_loss_backward_with_clipping_is_refused_on_every_micro_batch():
    model = small_mlp()
    handle = tightfit.step_in_backward(model, tightfit.AdamW(model.parameters()), accumulation_steps=3,
                                       max_grad_norm=1.0)
    with pytest.raises(RuntimeError, match="handle.backward"):  # micro-batch 0: nothing updates, still refused
        loss_of(model, regression_batch()).backward()
    assert handle.micro_batch == 0 and all(p.grad is None for p in model.parameters())
    handle.backward(loss_of(model, regression_batch()))
    assert handle.micro_batch == 1
    handle.remove()


def test_zero_grad_inside_an_accumulation_window_is_refused():
    model = small_mlp()
    opt = tightfit.AdamW(model.parameters())
    handle = tightfit.step_in_backward(model, opt, accumulation_steps=2)
    opt.zero_grad()  # between windows: allowed (nothing accumulated)
    loss_of(model, regression_batch()).backward()
    with pytest.raises(RuntimeError, match=r"zero_grad\(\) inside an accumulation window \(micro-batch 1 of 2\)"):
        opt.zero_grad()
    assert all(p.grad is not None for p in model.parameters())  # nothing was dropped
    handle.restart_window()
    assert handle.micro_batch == 0 and all(p.grad is None for p in model.parameters())
    opt.zero_grad()
    handle.remove()
