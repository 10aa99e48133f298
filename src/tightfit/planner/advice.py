"""What to change so that a plan fits: single changes, cheapest in speed first, the
cumulative set that fits, and the largest micro-batch and sequence length that fit.

Each change is a row of ``CHANGES`` (name, speed cost, and a function proposing new
settings or None when it does not apply); every proposal is re-planned exactly
(through the ``device_total`` callable the planner passes), so advice never relies on ratios. Speed costs are rough
orders from published torchtune, torchao and LOMO measurements, stated as such.
"""

from __future__ import annotations

from typing import Any, Callable

from ..finetune import FINETUNE_FIELDS, FineTune, check_finetune
from ..names import OFFLOAD_PREFIX, OPTIMIZER_NAMES, PAGED_PREFIX
from ..peers import PEERS

# cheaper codecs, in order (names: <base>_<suffix>)
CODEC_STEPS = ("32bit", "bf16", "8bit", "4bit")
# peers -> their smaller-state equivalents (paging for bnb names is its own row)
PEER_SMALLER = {"torch:adamw": "adamw_8bit", "torch:adam": "adam_8bit", "bnb:adamw_32bit": "bnb:adamw_8bit",
                "bnb:paged_adamw_32bit": "bnb:paged_adamw_8bit", "torch:adafactor": "adafactor"}
PEER_PAGED = {"bnb:adamw_8bit": "bnb:paged_adamw_8bit", "bnb:adamw_32bit": "bnb:paged_adamw_32bit"}


def _smaller_codec(s: dict) -> dict | None:
    name = s["optim"]
    if name in PEER_SMALLER:
        return {**s, "optim": PEER_SMALLER[name]}
    paged = name.startswith(PAGED_PREFIX) and name not in OPTIMIZER_NAMES
    base = name[len(PAGED_PREFIX):] if paged else name
    for suffix in CODEC_STEPS:
        if base.endswith("_" + suffix):
            later = CODEC_STEPS[CODEC_STEPS.index(suffix) + 1:]
            for nxt in later:
                candidate = base[: -len(suffix)] + nxt
                if candidate in OPTIMIZER_NAMES:
                    return {**s, "optim": (PAGED_PREFIX if paged else "") + candidate}
    return None


def _paged(s: dict) -> dict | None:
    name = s["optim"]
    if name in PEER_PAGED:
        return {**s, "optim": PEER_PAGED[name]}
    if (name in PEERS or name.startswith(PAGED_PREFIX) or OPTIMIZER_NAMES[name].options.get("paged")
            or OPTIMIZER_NAMES[name].options.get("offload")):
        return None
    return {**s, "optim": PAGED_PREFIX + name}


def _offloaded(s: dict) -> dict | None:
    """A tightfit name -> its offload_ form (masters, states and the step on the host)."""
    name = s["optim"]
    if name in PEERS or name not in OPTIMIZER_NAMES or set(OPTIMIZER_NAMES[name].options) & {"paged", "offload"}:
        return None
    candidate = OFFLOAD_PREFIX + name
    return {**s, "optim": candidate} if candidate in OPTIMIZER_NAMES else None


def _flag(key: str) -> Callable[[dict], dict | None]:
    return lambda s: None if s[key] else {**s, key: True}


def _bf16_weights(s: dict) -> dict | None:
    """fp32 weights (fp32, or under bf16 autocast) -> bf16 weights with fp32 masters."""
    return {**s, "precision": "bf16"} if s["precision"] in ("fp32", "bf16-autocast") else None


def _no_masters(s: dict) -> dict | None:
    """bf16 weights updated with stochastic rounding instead of fp32 master weights."""
    if s["method"] != "full" or s["precision"] != "bf16" or s["optim"].startswith("torch:"):
        return None
    return {**s, "precision": "bf16-sr"}


def _chunked_loss(s: dict) -> dict | None:
    return {**s, "loss": "chunked"} if s["loss"] == "full" else None


def _in_backward(s: dict) -> dict | None:
    if s["in_backward"] or ":" in s["optim"] or s["grad_accum"] > 1:
        return None
    return {**s, "in_backward": True}


def _half_batch(s: dict) -> dict | None:
    """Half the micro-batch, twice the accumulation: the same optimizer batch."""
    if s["batch_size"] < 2:
        return None
    return {**s, "batch_size": s["batch_size"] // 2, "grad_accum": s["grad_accum"] * 2}


def _lower_rank(s: dict) -> dict | None:
    return {**s, "lora_r": s["lora_r"] // 2} if s["method"] != "full" and s["lora_r"] > 4 else None


def _lighter_method(s: dict) -> dict | None:
    nxt = {"full": "lora", "lora": "qlora"}.get(s["method"])
    return {**s, "method": nxt} if nxt else None


def _half(key: str) -> Callable[[dict], dict | None]:
    return lambda s: {**s, key: s[key] // 2} if s[key] > 1 else None


# name, speed cost (rough), proposal — cheapest in speed first
CHANGES: list[tuple[str, str, Callable[[dict], dict | None]]] = [
    ("chunked cross-entropy", "~0-5% slower (each chunk's logits recomputed in backward)", _chunked_loss),
    ("smaller optimizer state", "~0-5% slower (8-bit) / ~10% (4-bit) with fused kernels", _smaller_codec),
    ("bf16 weights with fp32 masters", "~0% slower on GPUs with bf16 tensor cores", _bf16_weights),
    ("bf16 weights + stochastic rounding, no fp32 masters", "~0% slower; bf16 update precision", _no_masters),
    ("page optimizer state to host", "~0-20% slower (host<->device traffic each step)", _paged),
    ("offload optimizer (fp32 masters, state and step on the host)",
     "slower by the grad and weight PCIe copies and the CPU step (benchmarks/offload_gpu.py)", _offloaded),
    ("update inside backward", "~0% slower; needs --grad-accum 1", _in_backward),
    ("gradient checkpointing", "~30% slower (one extra forward per block)", _flag("checkpointing")),
    ("offload activations to host", "slower by the PCIe copies of every saved activation (not measured)",
     _flag("offload_activations")),
    ("halve micro-batch (accumulate to keep the batch)", "lower throughput per step", _half_batch),
    ("halve sequence length", "shorter context", _half("seq")),
    ("halve LoRA rank", "~0% slower; fewer trainable parameters", _lower_rank),
    ("lighter method (full -> LoRA -> QLoRA)", "LoRA trains fewer params; QLoRA ~20-30% slower", _lighter_method),
]
# The path to a fit changes what is trained, never the data: sequence length is left to
# the "limits" row (largest sequence that fits).
NOT_ON_PATH = {"halve sequence length"}
WORTH_IT = 0.01  # a change joins the path only if it saves >= 1% of the GPU
SETTING_KEYS = tuple(name for name in FINETUNE_FIELDS if name != "model")


def _propose(propose: Callable[[dict], dict | None], settings: dict) -> dict | None:
    """The proposal, or None when it does not apply or is not a setting train can run."""
    proposal = propose(settings)
    if proposal is None:
        return None
    try:
        check_finetune(FineTune(**proposal))
    except ValueError:
        return None
    return proposal


# device_total(settings): the device bytes of the exact plan of those settings on the same
# model and GPU (the planner passes its own re-plan, so this module never imports it)
DeviceTotal = Callable[[dict], int]


def _largest(device_total: DeviceTotal, settings: dict, capacity: int, key: str, limit: int) -> int:
    """Largest value of ``key`` in [1, limit] that fits (memory grows with it); 0 if none."""
    if device_total({**settings, key: 1}) > capacity:
        return 0
    low, high = 1, 1
    while high < limit and device_total({**settings, key: min(2 * high, limit)}) <= capacity:
        low = high = min(2 * high, limit)
    if high == limit:
        return limit
    high = min(2 * high, limit)  # fits at low, not at high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if device_total({**settings, key: mid}) <= capacity else (low, mid)
    return low


def advise(facts, result, device_total: DeviceTotal) -> list[dict[str, Any]]:
    """Advice rows for a Plan with a GPU (see module docstring); ``device_total`` re-plans."""
    capacity = result.gpu["bytes"]
    settings = {k: result.settings[k] for k in SETTING_KEYS}
    settings["lora_r"] = settings["lora_r"] or 16
    rows: list[dict[str, Any]] = []
    for name, cost, propose in CHANGES:
        single = _propose(propose, settings)
        if single is not None:
            total = device_total(single)
            if total < result.device_total:
                rows.append({"kind": "change", "change": name, "speed": cost, "settings": _diff(settings, single),
                             "device_total": total, "fits": total <= capacity})
    cumulative, applied, fits = _path_to_fit(device_total, settings, capacity, result)
    final = cumulative if fits else settings
    if not result.fits:
        rows.append({"kind": "to_fit", "changes": applied, "fits": fits, "settings": _diff(settings, cumulative),
                     "device_total": device_total(cumulative)})
    max_seq = facts.max_position or 131072
    rows.append({"kind": "limits", "for": "current settings" if result.fits else
                 ("settings after the changes above" if fits else "current settings"),
                 "max_batch": _largest(device_total, final, capacity, "batch_size", 4096),
                 "max_seq": _largest(device_total, final, capacity, "seq", max_seq)})
    return rows


def _path_to_fit(device_total: DeviceTotal, settings: dict, capacity: int, result) -> tuple[dict, list[str], bool]:
    """Greedy, cheapest first: apply the first change that saves enough, then start over."""
    current, total, applied = dict(settings), result.device_total, []
    fits = result.fits
    while not fits:
        for name, _, propose in CHANGES:
            proposal = None if name in NOT_ON_PATH else _propose(propose, current)
            if proposal is None:
                continue
            new_total = device_total(proposal)
            if total - new_total >= WORTH_IT * capacity:
                current, total, fits = proposal, new_total, new_total <= capacity
                applied.append(name)
                break
        else:
            break
    return current, applied, fits


def _diff(before: dict, after: dict) -> dict:
    return {k: v for k, v in after.items() if before.get(k) != v}
