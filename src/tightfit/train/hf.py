"""Using tightfit optimizers inside ``transformers.Trainer`` (or TRL's SFTTrainer).

Two drop-ins, both tested in tests/train/test_hf_trainer.py:

1. ``optimizer_cls_and_kwargs`` (preferred): the Trainer builds the optimizer itself from
   its own parameter groups (weight decay split), after moving the model to its device;
   TRL passes it through::

       from tightfit.train.hf import trainer_optimizer
       trainer = Trainer(model=model, args=args, train_dataset=ds,
                         optimizer_cls_and_kwargs=trainer_optimizer("adamw_8bit", lr=2e-4))

   or with a class directly: ``optimizer_cls_and_kwargs=(tightfit.AdamW, {"lr": 2e-4, "state": "8bit"})``.

2. ``optimizers=(optimizer, scheduler)``: you build it; the parameters must already be
   on their final device, and a ``None`` scheduler makes the Trainer create its own::

       opt = tightfit.create_optimizer("adamw_4bit", model.parameters(), lr=2e-4)
       trainer = Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, None))

The two cannot be combined. The Trainer's ``args.learning_rate`` is the lr when the
kwargs give none; its scheduler works on tightfit optimizers like on torch ones.
"""

from __future__ import annotations

from typing import Any

from ..names import OPTIMIZER_NAMES
from .errors import TrainInputError


def trainer_optimizer(name: str, **kwargs: Any) -> tuple[type, dict[str, Any]]:
    """``(class, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)`` from a tightfit
    name such as ``"adamw_8bit"`` or ``"came"``; ``kwargs`` override the name's options."""
    if name not in OPTIMIZER_NAMES:
        raise TrainInputError(f"unknown optimizer {name!r} (allowed: {', '.join(sorted(OPTIMIZER_NAMES))})")
    entry = OPTIMIZER_NAMES[name]
    return entry.cls, {**entry.options, **kwargs}
