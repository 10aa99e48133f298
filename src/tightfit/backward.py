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

from .dtensor import is_dtensor
from .optimizer import TightfitOptimizer


class InBackwardHandle:
    """Returned by ``step_in_backward``; ``remove()`` detaches the hooks.

    Robustness: a backward that raised leaves its accumulation window unfinished; the next
    backward (or ``handle.backward``) notices and starts a clean window (gradients of the
    hooked params dropped; updates the failed pass already applied stay). Misuse that would
    change accumulation silently raises instead: ``loss.backward()`` when clipping (the norm
    pass would be skipped), ``opt.zero_grad()`` inside a window, and parameters that became
    trainable after hooking (they would never be updated).
    """

    def __init__(self, optimizer: TightfitOptimizer, params: list[torch.Tensor], accumulation_steps: int,
                 max_grad_norm: float | None, frozen: list[torch.Tensor]) -> None:
        self.optimizer = optimizer
        self.accumulation_steps = accumulation_steps
        self.max_grad_norm = max_grad_norm
        self.micro_batch = 0  # index within the accumulation window
        self._params = params
        self._frozen = frozen  # not hooked: must stay frozen while the hooks live
        self._group_of = {p: g for g in optimizer.param_groups for p in g["params"]}
        self._mode = "update"  # "norm" during the first pass of a clipped backward
        self._sq_norm = torch.zeros((), dtype=torch.float64)
        self._clip_coef: torch.Tensor | None = None
        self._had_grad: set = set()
        self._task: int | None = None  # the backward in progress (autograd graph task id)
        self._in_handle_backward = False
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad_ready) for p in params]
        self._hooks += [p.register_hook(self._before_accumulate(p)) for p in params]
        optimizer.in_backward_handle = self

    @property
    def updating(self) -> bool:
        """True when the next backward is the last micro-batch of the window (it updates)."""
        return self.micro_batch == self.accumulation_steps - 1

    @property
    def active(self) -> bool:
        return self.optimizer.in_backward_handle is self

    def restart_window(self) -> None:
        """Drop the gradients accumulated in this window and start a new one."""
        for p in self._params:
            p.grad = None
        self.micro_batch, self._mode, self._clip_coef, self._task = 0, "update", None, None

    def recover_if_abandoned(self) -> None:
        """Restart the window when a backward began and never finished (it raised); the
        optimizer calls this before zero_grad() judges the window."""
        if self._task is not None:  # a backward began and never reached its end: it raised
            self.restart_window()

    def _on_backward_start(self) -> None:
        """Once per backward pass, before any hooked gradient accumulates."""
        task = torch._C._current_graph_task_id()
        if task == self._task:
            return
        self.recover_if_abandoned()
        woke = [tuple(p.shape) for p in self._frozen if p.requires_grad]
        if woke:
            raise RuntimeError(f"{len(woke)} parameter(s) (shapes {woke[:3]}) became trainable after step_in_backward "
                               "hooked the model; they would never be updated. Call handle.remove() and "
                               "step_in_backward(...) again (with the optimizer holding them)")
        if self.max_grad_norm is not None and not self._in_handle_backward:
            raise RuntimeError("max_grad_norm is set: run backward through handle.backward(loss), which measures "
                               "the gradient norm before updating (loss.backward() would skip clipping and "
                               "desynchronize the accumulation window)")
        self._task = task
        torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)

    def _end_of_backward(self) -> None:
        self._task = None
        if self._mode == "update":
            self.micro_batch = 0 if self.updating else self.micro_batch + 1

    @torch.no_grad()
    def _on_grad_ready(self, param: torch.Tensor) -> None:
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

    def _before_accumulate(self, param: torch.Tensor):
        """Runs on each new gradient before it accumulates; during pass 1 of a clipped
        backward it adds ||accumulated + new gradient||^2 to the norm and accumulates nothing."""
        def hook(grad: torch.Tensor):
            self._on_backward_start()
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
        if not self.active:
            raise RuntimeError("this in-backward handle was removed; backward() through it would not update")
        self.recover_if_abandoned()
        self._in_handle_backward = True
        try:
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
            loss.backward()
        except BaseException:
            self.restart_window()  # the failed pass's partial gradients must not leak into the next window
            raise
        finally:
            self._clip_coef = None
            self._in_handle_backward = False

    def remove(self) -> None:
        """Detach this handle's hooks; a second call, or a call on a handle already replaced, does nothing."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self.active:
            self.optimizer.in_backward_handle = None


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
    if getattr(optimizer, "in_backward_handle", None) is not None:
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
    frozen = [p for p in wanted if not p.requires_grad]
    return InBackwardHandle(optimizer, params, accumulation_steps, max_grad_norm, frozen)
