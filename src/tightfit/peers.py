"""Optimizers from other libraries, by prefixed name (``torch:adamw``, ``bnb:adamw_8bit``):
one table read by the planner (their state bytes) and by train and bench (building them),
so a peer is planned exactly as it runs.

Each row names the library class, the constructor options it always gets, the tightfit
rule computing the same update, and how its states are laid out as tightfit codecs:
torch keeps states in the dtype of the parameters it steps ("param-dtype"); bnb 8-bit
keeps 1 byte per element per state + an fp32 absmax per 256-element block and tensors
under 4096 elements in fp32 — tightfit's ``8bit`` codec with ``min_quantized_numel=4096``;
bnb 32-bit keeps fp32 states.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .rules import ADAFACTOR, ADAM, ADAMW, LION, SGD, Rule

# prefix -> (module holding the classes, the package to install)
LIBRARIES = {"torch": ("torch.optim", "torch"), "bnb": ("bitsandbytes.optim", "bitsandbytes")}


@dataclass(frozen=True)
class Peer:
    library: str  # a key of LIBRARIES
    class_name: str  # the optimizer class in that library's optim module
    rule: Rule  # the tightfit rule computing the same update
    codec: str  # tightfit codec holding the same state bytes, or "param-dtype"
    equivalent: str  # the tightfit name with the same update and states
    layout: str  # its state layout, as its library documents it
    options: dict[str, Any] = field(default_factory=dict)  # constructor options it always gets
    paged: bool = False  # states in paged (host) memory
    min_quantized_numel: int = 0  # tensors with fewer elements keep fp32 states


PEERS: dict[str, Peer] = {
    "torch:adamw": Peer("torch", "AdamW", ADAMW, "param-dtype", "adamw_32bit",
                        "torch.optim.AdamW: exp_avg, exp_avg_sq in the param dtype"),
    "torch:adam": Peer("torch", "Adam", ADAM, "param-dtype", "adam_32bit",
                       "torch.optim.Adam: exp_avg, exp_avg_sq in the param dtype"),
    # momentum 0: torch's and HF Trainer's default, and sgd_32bit's, so the two compare
    "torch:sgd": Peer("torch", "SGD", SGD, "param-dtype", "sgd_32bit",
                      "torch.optim.SGD, momentum 0 (HF default): no state", {"momentum": 0.0}),
    "torch:adafactor": Peer("torch", "Adafactor", ADAFACTOR, "param-dtype", "adafactor",
                            "torch.optim.Adafactor: row_var, col_var (or variance for vectors)"),
    "bnb:adamw_8bit": Peer("bnb", "AdamW8bit", ADAMW, "8bit", "adamw_8bit",
                           "bnb AdamW8bit: uint8 state1/state2 + fp32 absmax per 256; < 4096 elements fp32",
                           min_quantized_numel=4096),
    "bnb:paged_adamw_8bit": Peer("bnb", "PagedAdamW8bit", ADAMW, "8bit", "adamw_8bit",
                                 "bnb PagedAdamW8bit: as AdamW8bit, states in paged (host) memory",
                                 paged=True, min_quantized_numel=4096),
    "bnb:adamw_32bit": Peer("bnb", "AdamW32bit", ADAMW, "fp32", "adamw_32bit", "bnb AdamW32bit: fp32 state1/state2",
                            min_quantized_numel=4096),
    "bnb:paged_adamw_32bit": Peer("bnb", "PagedAdamW32bit", ADAMW, "fp32", "adamw_32bit",
                                  "bnb PagedAdamW32bit: fp32 states in paged (host) memory",
                                  paged=True, min_quantized_numel=4096),
    "bnb:lion_8bit": Peer("bnb", "Lion8bit", LION, "8bit", "lion_8bit",
                          "bnb Lion8bit: uint8 state1 + fp32 absmax per 256; < 4096 elements fp32",
                          min_quantized_numel=4096),
}
