"""The contract table (OptimizerInfo-style): one row per optimizer x codec x paged, each with
the inputs every generic test loops over and the tests it is excluded from, with a reason.

Inputs come from torch's own ``torch.testing._internal.common_optimizers`` where tightfit
has the torch.optim class (AdamW, Adam, SGD, Adafactor), minus the options tightfit does
not take (listed in UNSUPPORTED_OPTIONS); the other optimizers get inputs written here in
the same shape: (kwargs, description).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.testing._internal import common_optimizers as torch_inputs

import tightfit
from optim_cases import CODECS

# Options of torch's inputs that tightfit refuses (amsgrad) or has no use for (foreach,
# fused, capturable, differentiable: torch's kernel choices); inputs that use them are
# dropped, and docs/architecture.md lists the exclusion.
UNSUPPORTED_OPTIONS = {"amsgrad", "foreach", "fused", "capturable", "differentiable"}


def _torch_inputs(func: Callable) -> list[tuple[dict[str, Any], str]]:
    return [(dict(i.kwargs), i.desc) for i in func(device="cpu")
            if not UNSUPPORTED_OPTIONS & set(i.kwargs)]


@dataclass(frozen=True)
class Row:
    optimizer: str
    cls: type
    base: dict[str, Any]  # options every input gets (what the optimizer requires, e.g. CAME's lr)
    inputs: list[tuple[dict[str, Any], str]]
    torch_cls: type | None = None  # the torch.optim class whose state_dict it loads
    codec: str = "fp32"
    paged: bool = False
    excluded: dict[str, str] = field(default_factory=dict)  # test name -> reason

    @property
    def id(self) -> str:
        return f"{self.optimizer}-{self.codec}" + ("-paged" if self.paged else "")

    def make(self, params, **kwargs) -> tightfit.TightfitOptimizer:
        return self.cls(params, **{**self.base, "state": self.codec, "paged": self.paged,
                                   "min_quantized_numel": 0, **kwargs})


OPTIMIZERS = [
    # name, class, base options, inputs, torch class
    ("adamw", tightfit.AdamW, {}, _torch_inputs(torch_inputs.optim_inputs_func_adamw), torch.optim.AdamW),
    ("adam", tightfit.Adam, {}, _torch_inputs(torch_inputs.optim_inputs_func_adam)
     + [({"weight_decay": 0.1, "decoupled_weight_decay": True}, "decoupled weight decay")], torch.optim.Adam),
    ("sgd", tightfit.SGD, {}, _torch_inputs(torch_inputs.optim_inputs_func_sgd), torch.optim.SGD),
    ("adafactor", tightfit.Adafactor, {}, _torch_inputs(torch_inputs.optim_inputs_func_adafactor)
     + [({"beta1": 0.9}, "first moment (tightfit extension)")], torch.optim.Adafactor),
    ("adafactor_hf", tightfit.Adafactor, {"convention": "hf"},
     [({}, "default (relative step)"), ({"lr": 1e-2, "relative_step": False, "beta1": 0.9}, "fixed lr, momentum"),
      ({"weight_decay": 0.1, "scale_parameter": False}, "weight decay")], None),
    ("lion", tightfit.Lion, {}, [({}, "default"), ({"lr": 1e-3, "weight_decay": 0.1}, "weight decay"),
                                 ({"lr": torch.tensor(1e-3)}, "tensor lr")], None),
    ("came", tightfit.CAME, {"lr": 1e-3}, [({}, "default"), ({"weight_decay": 0.1}, "weight decay")], None),
    ("sophiag", tightfit.SophiaG, {}, [({}, "default"), ({"lr": 1e-3, "weight_decay": 0.0, "maximize": True},
                                                        "maximize")], None),
]

NO_TORCH_CLASS = "no torch.optim class with this rule: the cross-library load is tests/test_state_io.py's"
EXCLUDED = {
    "adafactor_hf": {"cross_library_load": NO_TORCH_CLASS},
    "lion": {"cross_library_load": NO_TORCH_CLASS},
    "came": {"cross_library_load": NO_TORCH_CLASS},
    "sophiag": {"cross_library_load": NO_TORCH_CLASS},
}

# Every optimizer x codec, unpaged; paged rows for the 8-bit codec (on CPU paging keeps
# states where they are, with a warning: these rows check the paged placement's state_dict path).
ROWS = [Row(name, cls, base, inputs, torch_cls, codec, paged, EXCLUDED.get(name, {}))
        for name, cls, base, inputs, torch_cls in OPTIMIZERS
        for codec, paged in [(c, False) for c in CODECS] + [("8bit", True)]]
