"""``plan(...)``: every memory component of one training step, the peak, and a verdict.

The peak is a timeline (activations.py): persistent bytes (weights, adapters, masters,
optimizer state on the device) plus the largest live set of the step (activations,
logits/loss, gradients, optimizer-step temporaries). On a GPU the CUDA context and
allocator slack are added as stated assumptions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from . import components as C
from .activations import Setup, block_saved, loss_backward, saved_activations, step_timeline
from .gpus import resolve_gpu
from .model_facts import ModelFacts, load_model_facts
from ..placement.paged import CHUNK_BYTES, SLOTS
from .optimizer_specs import resolve_optimizer
from .step_temporaries import fused_on_gpu, step_bytes_per_element

METHODS = ("full", "lora", "qlora")
CUDA_CONTEXT = int(0.4 * 2**30)  # REFERENCE §4.1: 0.3-0.4 GB with lazy module loading
ALLOCATOR_SLACK = 0.05  # reserved - allocated, as a share of the allocated peak (assumption)
# architectures whose blocks differ from the Llama block the activation model describes
APPROXIMATE_ACTIVATIONS = {
    "gemma2": "transformers has no SDPA path (eager attention keeps s x s scores per head), 4 norms per block, "
              "logit soft-capping: the analytic activations underestimate; use --simulate",
    "phi3": "fused qkv/gate_up projections and partial rotary: activations approximate",
}


@dataclass
class Component:
    name: str
    device: int
    host: int = 0
    detail: str = ""


@dataclass
class Plan:
    model: dict[str, Any]
    settings: dict[str, Any]
    components: list[Component]
    persistent: int
    peak_allocated: int
    peak_at: str
    device_total: int
    host_total: int
    assumptions: list[str]
    gpu: dict[str, Any] | None = None
    fits: bool | None = None
    advice: list[dict[str, Any]] = field(default_factory=list)
    simulation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_choice(what: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r} (allowed: {', '.join(map(str, allowed))})")


def _positive(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"invalid {what} {value!r} (allowed: an integer >= 1)")


def plan(model: str | ModelFacts, *, gpu: str | None = None, method: str = "full", optim: str = "adamw_32bit",
         batch: int = 1, seq: int = 2048, lora_rank: int = 16, checkpointing: bool = False,
         in_backward: bool = False, stochastic_rounding: bool = False, dtype: str = "bf16",
         simulate: bool = False, advise: bool = True) -> Plan:
    """Plan one training step of ``model`` (see the module docstring); ValueError on bad input.

    ``stochastic_rounding`` means bf16 weights updated without fp32 masters (sets dtype
    bf16); ``simulate`` also runs the step on fake tensors; ``advise`` (with a ``gpu``)
    adds the changes that make it fit.
    """
    facts = model if isinstance(model, ModelFacts) else load_model_facts(model)
    _check_choice("method", method, METHODS)
    _check_choice("dtype", dtype, tuple(C.DTYPE_BYTES))
    for what, value in (("batch", batch), ("seq", seq), ("lora rank", lora_rank)):
        _positive(what, value)
    spec = resolve_optimizer(optim)
    gpu_name, capacity = resolve_gpu(gpu) if gpu else (None, None)
    if stochastic_rounding:
        dtype = "bf16"
    if in_backward and spec.source != "tightfit":
        raise ValueError(f"--in-backward needs a tightfit optimizer (got {optim!r}; allowed: tightfit names, "
                         "e.g. adamw_8bit)")
    setup = Setup(method, batch, seq, dtype, lora_rank, checkpointing)
    trainable = C.trainables(facts, method, dtype, lora_rank)
    masters = C.master_bytes(trainable, stochastic_rounding)
    largest = C.largest(trainable)
    stepped = C.TORCH_DTYPES["fp32" if (masters or largest.dtype == "fp32") else largest.dtype]
    on_gpu = gpu is not None
    fused = on_gpu and fused_on_gpu(spec)
    temp_per_elem = 0.0 if fused else step_bytes_per_element(spec, stepped)
    sizes = {
        "weights": C.weight_bytes(facts, method, dtype),
        "adapters": sum(t.numel * 4 for t in trainable) if setup.adapters else 0,
        "masters": masters,
        # with fp32 masters the step reads fp32 gradients: each 16-bit gradient is converted
        "grads_at_step": 4 * sum(t.numel for t in trainable) if masters else C.gradient_bytes(trainable),
        "largest_grad": largest.numel * C.DTYPE_BYTES[largest.dtype],
        "state": sum(state_each := C.optimizer_state_bytes_each(trainable, spec, masters > 0)),
        "step_temp": int(temp_per_elem * largest.numel),
        "dequant": max(p.numel for p in facts.parameters() if p.linear) * C.DTYPE_BYTES[dtype]
        if method == "qlora" else 0,
    }
    budget = spec.device_budget()
    sizes["state_device"], sizes["buffers"] = C.paged_split(state_each, budget, spec.rule.elementwise and not stochastic_rounding)
    timeline = step_timeline(facts, setup, C.gradient_places(facts, trainable, temp_per_elem),
                             grads_at_step=sizes["grads_at_step"], step_temp_largest=sizes["step_temp"],
                             in_backward=in_backward, dequant_temp=sizes["dequant"])
    persistent = sum(sizes[k] for k in ("weights", "adapters", "masters", "state_device", "buffers"))
    peak = persistent + timeline.peak
    sizes["context"] = CUDA_CONTEXT if on_gpu else 0
    sizes["slack"] = int(ALLOCATOR_SLACK * peak) if on_gpu else 0
    settings = dict(method=method, optim=optim, batch=batch, seq=seq, lora_rank=lora_rank if setup.adapters else None,
                    checkpointing=checkpointing, in_backward=in_backward, stochastic_rounding=stochastic_rounding,
                    dtype=dtype, optimizer_source=spec.source)
    total = peak + sizes["context"] + sizes["slack"]
    result = Plan(model=facts.to_dict(), settings=settings,
                  components=_components(facts, setup, spec, trainable, sizes, temp_per_elem, in_backward, on_gpu,
                                         fused),
                  persistent=persistent, peak_allocated=peak, peak_at=timeline.peak_at, device_total=total,
                  host_total=sizes["state"] - sizes["state_device"],
                  assumptions=_assumptions(facts, setup, budget is not None, on_gpu, fused),
                  gpu={"name": gpu_name, "bytes": capacity} if on_gpu else None,
                  fits=total <= capacity if on_gpu else None)
    if simulate:
        result.simulation = _simulate(facts, spec, setup, in_backward, masters > 0,
                                      sizes["state"] - sizes["state_device"], sizes["buffers"])
        # the simulation steps with tightfit's reference implementation (the one that runs on
        # fake tensors); compare it with the analytic plan of that same implementation
        same_impl = peak if not fused else plan(
            facts, method=method, optim=optim, batch=batch, seq=seq, lora_rank=lora_rank, checkpointing=checkpointing,
            in_backward=in_backward, stochastic_rounding=stochastic_rounding, dtype=dtype, advise=False).peak_allocated
        result.simulation["analytic_same_implementation"] = same_impl
        if fused:
            result.simulation["notes"].append("simulated with the reference implementation's step temporaries; "
                                              "the GPU plan assumes fused kernels without them")
    if advise and on_gpu:
        from .advice import advise as make_advice
        result.advice = make_advice(facts, result)
    return result


def _components(facts: ModelFacts, setup: Setup, spec, trainable, sizes: dict, temp_per_elem: float,
                in_backward: bool, on_gpu: bool, fused: bool) -> list[Component]:
    """The table rows: each component's bytes (device, host) and how it was computed."""
    e, n_train = C.DTYPE_BYTES[setup.dtype], sum(t.numel for t in trainable)
    largest = C.largest(trainable)
    rows = [Component("weights", sizes["weights"], 0,
                      f"{facts.total_params() / 1e9:.3f}B params x {e} B ({setup.dtype})" if setup.method != "qlora"
                      else f"block linears NF4 + double quant: n/2 + n/64 + 4*ceil(n/64/256) + 4 B; rest {setup.dtype}")]
    if setup.adapters:
        rows.append(Component("LoRA adapters (fp32)", sizes["adapters"], 0,
                              f"r={setup.lora_rank} on q,k,v,o,gate,up,down: {n_train / 1e6:.2f}M params"))
    if sizes["masters"]:
        rows.append(Component("fp32 master weights", sizes["masters"], 0, "4 B per trainable 16-bit param"))
    rows.append(Component("gradients", sizes["largest_grad"] if in_backward else sizes["grads_at_step"], 0,
                          "in backward: only the largest live" if in_backward else
                          f"{n_train / 1e6:.2f}M trainable x " +
                          ("4 B (converted to fp32 for the master step)" if sizes["masters"] else "dtype")))
    paged = " (paged to host)" if sizes["state_device"] < sizes["state"] or sizes["buffers"] else ""
    rows.append(Component("optimizer state", sizes["state_device"], sizes["state"] - sizes["state_device"],
                          f"{spec.name}: {spec.layout or spec.rule.name}{paged}"))
    if sizes["buffers"]:
        rows.append(Component("paged streaming slots", sizes["buffers"], 0,
                              f"{SLOTS} slots x the largest chunk (chunks of 1/16 of the paged state, "
                              f"1-{CHUNK_BYTES >> 20} MiB; a larger parameter's states are a chunk alone)"))
    rows += [
        Component("activations (saved)", saved_activations(facts, setup), 0,
                  "block inputs only (checkpointing) + one block recomputed" if setup.checkpointing else
                  f"{block_saved(facts, setup) / 1024:.1f} KiB/token/block"),
        Component("logits + loss (fp32)", loss_backward(facts, setup), 0,
                  "log-softmax + its grad + logits grad: 12 B x vocab x tokens"),
        Component("optimizer step temporaries", sizes["step_temp"], 0,
                  "fused kernel on the GPU: none full-size" if fused else
                  f"{temp_per_elem:.1f} B/elem x largest trainable ({largest.numel / 1e6:.1f}M), measured"),
    ]
    if sizes["dequant"]:
        rows.append(Component("QLoRA dequantized weight", sizes["dequant"], 0, f"largest linear in {setup.dtype}"))
    if on_gpu:
        rows += [Component("CUDA context", sizes["context"], 0, "assumption: 0.4 GiB (lazy module loading)"),
                 Component("allocator slack", sizes["slack"], 0,
                           f"assumption: {ALLOCATOR_SLACK:.0%} of the allocated peak")]
    return rows


def _assumptions(facts: ModelFacts, setup: Setup, paged: bool, on_gpu: bool, fused: bool) -> list[str]:
    out = [
        f"weights/compute {setup.dtype}" + (" under autocast (HF Trainer bf16=True)" if setup.dtype != "fp32" else "")
        + "; activations of transformers' Llama-style blocks (SDPA, SwiGLU, GQA)",
        "steady-state step: optimizer state already allocated; zero_grad(set_to_none=True) between steps",
        "logits: full vocab, transformers ForCausalLMLoss (fp32 log-softmax); chunked CE would remove most of it",
        "optimizer step: a fused kernel (tightfit Triton / bnb CUDA) with no full-size temporaries" if fused else
        "optimizer step temporaries: measured on a sample with the optimizer's own code (tightfit reference "
        "implementation, torch fused), per element of the largest trainable tensor",
    ]
    if facts.model_type in APPROXIMATE_ACTIVATIONS:
        out.append(f"{facts.model_type}: {APPROXIMATE_ACTIVATIONS[facts.model_type]}")
    if paged:
        out.append(f"paged optimizer: state in pinned host memory, streamed through {SLOTS} reusable device slots "
                   "(placement/paged.py)")
    if setup.method == "qlora":
        out.append("QLoRA: NF4 + double quant, block 64; embeddings/norms/lm_head not upcast (TRL >= 0.26)")
    if on_gpu:
        out.append("CUDA context 0.4 GiB and 5% allocator slack are estimates, not measured")
    return out


def _simulate(facts: ModelFacts, spec, setup: Setup, in_backward: bool, masters: bool, host_state: int,
              buffers: int) -> dict[str, Any]:
    if setup.method == "qlora":
        return {"skipped": "QLoRA is not simulated: bitsandbytes' 4-bit kernels need real memory "
                           "(tests measure it on CPU instead)"}
    from .simulate import measure_step

    if masters and in_backward:
        return {"skipped": "updates inside backward with fp32 masters are not simulated"}
    m = measure_step(facts.raw, spec, method=setup.method, batch=setup.batch, seq=setup.seq,
                     lora_rank=setup.lora_rank, checkpointing=setup.checkpointing, in_backward=in_backward,
                     dtype=setup.dtype, masters=masters, fake=True)
    out = m.to_dict()
    if host_state:  # paged: on a CPU the state is just memory; on the GPU it is host memory
        out["device_peak_bytes"] = m.peak_bytes - host_state + buffers
        out["notes"].append("paged state subtracted from the simulated peak (host memory on a GPU)")
    return out
