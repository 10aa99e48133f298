"""How ``tightfit train`` runs a FineTune's settings: the model's precision, the loss, the
optimizer (paging budget, stochastic rounding, fp32 masters, updates inside backward) and
one step. Every setting ``tightfit plan`` can advise runs here.

* precision (``finetune.PRECISIONS``): ``bf16`` casts the model to bf16 and gives 16-bit
  trainables fp32 master copies that the optimizer steps (gradients converted to fp32
  first, masters copied back after; an ``offload_`` optimizer keeps its own on the host
  instead); ``bf16-autocast`` keeps fp32 weights and runs forward
  under bf16 autocast; ``bf16-sr`` casts to bf16 and the tightfit optimizer writes with
  stochastic rounding. On a CPU all of them run fp32 (``finetune.effective``), and say so.
* ``in_backward``: ``tightfit.step_in_backward`` (accumulation and global-norm clipping
  included); no optimizer.step().
* ``loss``: train/loss.py; ``offload_activations``: train/offload.py.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ..finetune import PRECISIONS, FineTune, effective, is_offloaded
from .errors import TrainInputError
from .loss import get_loss
from .offload import offload_activations

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def running_finetune(config: FineTune, device: torch.device) -> tuple[FineTune, list[str]]:
    """What runs on ``device`` and the notes that say how it differs from ``config``."""
    ran = effective(config.finetune(), device.type)
    notes = []
    if ran.precision != config.precision or ran.adapter_dtype != config.adapter_dtype:
        notes.append(f"--precision {config.precision}" + (f" --adapter-dtype {config.adapter_dtype}"
                                                           if ran.adapter_dtype != config.adapter_dtype else "")
                     + " runs as fp32 on the CPU (bf16 math there is ~25x slower); on a GPU it runs as asked")
    if config.offload_activations and device.type == "cpu":
        notes.append("--offload-activations does nothing on the CPU: activations already are in host memory")
    if config.paged_budget is not None and device.type == "cpu":
        notes.append("--paged-budget does nothing on the CPU: paging streams state between host and a GPU")
    if is_offloaded(config.optim) and device.type == "cpu":
        notes.append(f"--optim {config.optim} steps as {config.optim.removeprefix('offload_')} on the CPU: offload "
                     "moves masters, state and step from a GPU to the host, where they already are")
    return ran, notes


def cast_model(model: torch.nn.Module, ran: FineTune) -> None:
    """Cast the loaded (fp32) model to the precision's weight dtype, before LoRA is added.
    A 4-bit base keeps its packed weights; its other floating params are cast."""
    dtype = DTYPES[PRECISIONS[ran.precision][0]]
    if dtype == torch.float32:
        return
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype and type(param).__name__ != "Params4bit":
            param.data = param.data.to(dtype)


def _masters_needed(ran: FineTune, params: list[torch.nn.Parameter]) -> bool:
    # an offload_ optimizer keeps fp32 masters on the host itself (placement/offload.py)
    return (PRECISIONS[ran.precision][2] and any(p.dtype != torch.float32 for p in params)
            and not is_offloaded(ran.optim))


def build_optimizer_for(ran: FineTune, params: list[torch.nn.Parameter], lr: float, weight_decay: float,
                        model: torch.nn.Module | None = None, stand_in: dict[int, torch.Tensor] | None = None):
    """The optimizer over ``params`` (of ``model``, stepped through ``stand_in`` masters) with the
    FineTune's paging budget and stochastic rounding."""
    from ..names import OPTIMIZER_NAMES
    from .peers import build_optimizer

    extras: dict[str, Any] = {}
    if ran.paged_budget is not None:
        budget = ran.paged_budget.strip()
        extras["paged"] = int(budget) if budget.isdigit() else budget
    if PRECISIONS[ran.precision][3]:
        extras["stochastic_rounding"] = True
    if extras and ran.optim not in OPTIMIZER_NAMES:
        raise TrainInputError(f"--optim {ran.optim!r}: --paged-budget and --precision bf16-sr need a tightfit "
                              "optimizer (tightfit optims lists them)")
    return build_optimizer(ran.optim, params, lr, weight_decay, model=model, stand_in=stand_in, **extras)


@dataclass
class StepRunner:
    """One micro-batch's loss and backward, and one optimizer step, for ``ran``."""

    ran: FineTune
    device: torch.device
    model: torch.nn.Module
    params: list[torch.nn.Parameter]  # what autograd gives gradients to
    optimizer: torch.optim.Optimizer
    clip: float
    masters: list[tuple[torch.nn.Parameter, torch.nn.Parameter]] = field(default_factory=list)
    handle: Any = None  # tightfit InBackwardHandle
    notes: list[str] = field(default_factory=list)

    def _autocast(self):
        compute = DTYPES[PRECISIONS[self.ran.precision][1]]
        if compute == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=compute)

    def loss(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self._autocast(), offload_activations(self.ran.offload_activations, self.device):
            return get_loss(self.ran.loss)(self.model, batch, labels)

    def backward(self, loss: torch.Tensor) -> None:
        if self.handle is not None:
            self.handle.backward(loss)
        else:
            loss.backward()

    def step(self) -> float | None:
        """Apply the update (unless it ran inside backward); the gradient norm before clipping."""
        if self.handle is not None:
            return getattr(self.handle, "last_grad_norm", None)
        if self.masters:
            return self._step_masters()
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip)) if self.clip > 0 else None
        self.optimizer.step()
        return norm

    @torch.no_grad()
    def _step_masters(self) -> float | None:
        """One master at a time: its gradient converted to fp32 (scaled by the clipping
        coefficient), its update, the rounded copy back into the 16-bit param; so only one
        fp32 gradient exists at a time (mixed precision as DeepSpeed/LOMO measure it)."""
        with_masters = {id(p) for p, _ in self.masters}
        plain = [p for p in self.params if id(p) not in with_masters and p.grad is not None]
        pairs = [(p, m) for p, m in self.masters if p.grad is not None]
        coef, norm = None, None
        if self.clip > 0:
            squares = torch.zeros((), dtype=torch.float32, device=self.device)
            for grad in [p.grad for p in plain] + [p.grad for p, _ in pairs]:
                squares += grad.float().square().sum()
            norm = squares.sqrt()
            coef = torch.clamp(self.clip / (norm + 1e-6), max=1.0)
        for p in plain:
            if coef is not None:
                p.grad.mul_(coef)
        if plain:  # fp32 trainables (if any) step together, before any master has a gradient
            self.optimizer.step()
            for p in plain:
                p.grad = None
        for param, master in pairs:
            master.grad = param.grad.float()
            param.grad = None
            if coef is not None:
                master.grad.mul_(coef)
            self.optimizer.step()  # steps only the params with a gradient: this master
            master.grad = None
            param.copy_(master)
        return None if norm is None else float(norm)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for param, _ in self.masters:
            param.grad = None


def build_runner(config, model: torch.nn.Module, device: torch.device) -> StepRunner:
    """Optimizer (over fp32 masters where the precision keeps them) and the step for ``config``
    (a TrainConfig: a FineTune with lr, weight_decay and clip)."""
    ran, notes = running_finetune(config, device)
    params = [p for p in model.parameters() if p.requires_grad]
    masters = []
    if _masters_needed(ran, params):
        masters = [(p, torch.nn.Parameter(p.detach().float())) for p in params if p.dtype != torch.float32]
        if ran.in_backward:
            raise TrainInputError("--in-backward with --precision bf16 (fp32 master weights) is not supported: the "
                                  "update runs on the masters after backward; use --precision bf16-sr or fp32")
    fp32 = {id(p) for p, _ in masters}
    stepped = [m for _, m in masters] + [p for p in params if id(p) not in fp32]
    optimizer = build_optimizer_for(ran, stepped, config.lr, config.weight_decay, model,
                                    {id(p): m for p, m in masters})
    handle = None
    if ran.in_backward:
        from ..backward import step_in_backward
        from ..optimizer import TightfitOptimizer

        if not isinstance(optimizer, TightfitOptimizer):
            raise TrainInputError(f"--in-backward needs a tightfit optimizer (got {config.optim!r})")
        handle = step_in_backward(params, optimizer, accumulation_steps=config.grad_accum,
                                  max_grad_norm=config.clip if config.clip > 0 else None)
    return StepRunner(ran, device, model, params, optimizer, config.clip, masters, handle, notes)


def prepare_model(config, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Cast to the precision, then apply the method (LoRA targets and adapter dtype)."""
    from ..finetune import lora_target_modules
    from .methods import LoraOptions, get_method

    ran, _ = running_finetune(config, device)
    cast_model(model, ran)
    lora = LoraOptions(config.lora_r, config.lora_alpha, config.lora_dropout,
                       list(lora_target_modules(config.lora_targets)) if config.method != "full" else "all-linear",
                       adapter_dtype=ran.adapter_dtype)
    return get_method(config.method).prepare(model, lora, config.checkpointing)


def compute_dtype(config, device: torch.device) -> torch.dtype:
    """The dtype 4-bit QLoRA layers compute in for ``config`` on ``device``."""
    ran, _ = running_finetune(config, device)
    return DTYPES[PRECISIONS[ran.precision][1]]

