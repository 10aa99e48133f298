"""Updates inside backward (LOMO-style; Lv et al. 2023, arXiv 2306.09782).

``step_in_backward(model_or_params, optimizer)`` registers a post-accumulate-grad hook on
every parameter of the optimizer: as soon as a parameter's gradient is complete, the
optimizer updates that parameter and frees its gradient, so at most one full gradient
(plus what autograd holds in flight) is alive at a time instead of all of them. Works with
every rule, codec and implementation, since it calls the optimizer's own per-parameter step.

* Gradient accumulation (``accumulation_steps=k``): gradients accumulate in ``.grad`` for
  k-1 backward passes as usual; the k-th pass updates and frees. Memory during accumulation
  is that of ordinary training (the accumulated gradients must live somewhere).
* Global-norm clipping (``max_grad_norm=c``): the norm must be known before the first
  update, so ``handle.backward(loss)`` runs backward twice on the updating pass (LOMO's
  approach): pass 1 (graph retained) only sums squared norms of the (accumulated +
  new) gradients, one parameter at a time, and accumulates nothing; pass 2 updates with the gradients scaled by min(1, c / (norm + 1e-6)).
  Cost: one extra backward pass on every updating micro-batch.
* LR schedulers work as usual (the hooks read the group's current lr); call
  ``scheduler.step()`` after each updating backward.
* Paged optimizers (``paged=True`` or a device budget) page per parameter here: when a
  gradient is ready, that parameter's states alone are copied in, updated and copied out
  (side streams and events as in ``step()``, no host sync), so transfers overlap backward
  but not each other's update. Peak device memory for states is one parameter's states.
"""

from __future__ import annotations

from typing import Iterable

import torch

from .distributed.shards import is_dtensor
from .optimizer import TightfitOptimizer


class InBackwardHandle:
    """Returned by ``step_in_backward``; ``remove()`` detaches the hooks."""

    def __init__(self, optimizer: TightfitOptimizer, params: list[torch.Tensor], accumulation_steps: int,
                 max_grad_norm: float | None) -> None:
        self.optimizer = optimizer
        self.accumulation_steps = accumulation_steps
        self.max_grad_norm = max_grad_norm
        self.micro_batch = 0  # index within the accumulation window
        self._group_of = {p: g for g in optimizer.param_groups for p in g["params"]}
        self._mode = "update"  # "norm" during the first pass of a clipped backward
        self._sq_norm = torch.zeros((), dtype=torch.float64)
        self._clip_coef: torch.Tensor | None = None
        self._end_queued = False
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad_ready) for p in params]
        self._hooks += [p.register_hook(self._norm_pass_hook(p)) for p in params]
        optimizer._in_backward_handle = self

    @property
    def updating(self) -> bool:
        """True when the next backward is the last micro-batch of the window (it updates)."""
        return self.micro_batch == self.accumulation_steps - 1

    def _queue_end_of_backward(self) -> None:
        if not self._end_queued:
            self._end_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)

    def _end_of_backward(self) -> None:
        self._end_queued = False
        if self._mode == "update":
            self.micro_batch = 0 if self.updating else self.micro_batch + 1

    @torch.no_grad()
    def _on_grad_ready(self, param: torch.Tensor) -> None:
        self._queue_end_of_backward()
        if not self.updating:
            return  # accumulate: the gradient stays in .grad
        if self._mode == "norm":
            if param not in self._had_grad:
                param.grad = None  # pass 1 added zeros to nothing: drop them
            return
        if self.max_grad_norm is not None:
            if self._clip_coef is None:
                raise RuntimeError("max_grad_norm is set: run backward through handle.backward(loss), "
                                   "which measures the gradient norm before updating")
            param.grad.mul_(self._clip_coef.to(param.grad.device, param.grad.dtype))
        self.optimizer.step_param(param, self._group_of[param])
        param.grad = None
        self.optimizer._opt_called = True  # tells LR schedulers that the optimizer stepped

    def _norm_pass_hook(self, param: torch.Tensor):
        """During pass 1: add ||accumulated + new gradient||^2 to the norm, accumulate nothing."""
        def hook(grad: torch.Tensor):
            if self._mode != "norm" or not self.updating:
                return None
            with torch.no_grad():
                full = grad if param.grad is None else param.grad + grad
                self._sq_norm += full.double().pow(2).sum().cpu()
                if param.grad is not None:
                    self._had_grad.add(param)
            return torch.zeros_like(grad)
        return hook

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, with the extra norm pass when clipping on an updating pass."""
        if self.max_grad_norm is None or not self.updating:
            loss.backward()
            return
        self._mode, self._sq_norm, self._had_grad = "norm", torch.zeros((), dtype=torch.float64), set()
        try:
            loss.backward(retain_graph=True)
        finally:
            self._mode = "update"
        norm = self._sq_norm.sqrt()
        self.last_grad_norm = float(norm)
        self._clip_coef = torch.clamp(self.max_grad_norm / (norm + 1e-6), max=1.0).float()
        try:
            loss.backward()
        finally:
            self._clip_coef = None

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.optimizer._in_backward_handle = None


def step_in_backward(model_or_params: torch.nn.Module | Iterable[torch.Tensor], optimizer: TightfitOptimizer, *,
                     accumulation_steps: int = 1, max_grad_norm: float | None = None) -> InBackwardHandle:
    """Update each parameter inside backward as soon as its gradient is ready; see module doc.

    >>> handle = tightfit.step_in_backward(model, opt, max_grad_norm=1.0)
    >>> for batch in data:
    ...     handle.backward(model(batch).loss)   # updates happen here; no opt.step()
    ...     scheduler.step()
    >>> handle.remove()
    """
    if not isinstance(optimizer, TightfitOptimizer):
        raise ValueError(f"step_in_backward needs a tightfit optimizer, got {type(optimizer).__name__}")
    if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(f"invalid accumulation_steps: {accumulation_steps!r} (allowed: an int >= 1)")
    if max_grad_norm is not None and not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0):
        raise ValueError(f"invalid max_grad_norm: {max_grad_norm!r} (allowed: None or a number > 0)")
    if getattr(optimizer, "_in_backward_handle", None) is not None:
        raise ValueError("this optimizer already steps inside backward; remove the existing handle first")
    if isinstance(model_or_params, torch.nn.parallel.DistributedDataParallel):
        raise ValueError("step_in_backward cannot wrap a DistributedDataParallel model: its hooks would update with "
                         "gradients DDP has not all-reduced yet; call opt.step() after backward instead")
    wanted = list(model_or_params.parameters()) if isinstance(model_or_params, torch.nn.Module) else list(model_or_params)
    if any(is_dtensor(p) for p in wanted):
        raise ValueError("step_in_backward does not support FSDP2 (DTensor) params: FSDP2 reduce-scatters gradients "
                         "after autograd accumulates them, so no per-parameter hook sees the final gradient; "
                         "call opt.step() after backward instead")
    owned = {p for g in optimizer.param_groups for p in g["params"]}
    missing = [tuple(p.shape) for p in wanted if p.requires_grad and p not in owned]
    if missing:
        raise ValueError(f"{len(missing)} trainable parameter(s) are not in the optimizer (shapes {missing[:3]}...)")
    params = [p for p in wanted if p.requires_grad]
    return InBackwardHandle(optimizer, params, accumulation_steps, max_grad_norm)
