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
from .activations import Setup, final_saved, loss_backward, rope_bytes, block_saved, step_timeline
from .gpus import resolve_gpu
from .model_facts import ModelFacts, load_model_facts
from .optimizer_specs import PAGED_DEVICE_BUFFERS, resolve_optimizer
from .step_temporaries import step_bytes_per_element

METHODS = ("full", "lora", "qlora")
CUDA_CONTEXT = int(0.4 * 2**30)  # REFERENCE §4.1: 0.3-0.4 GB with lazy module loading
ALLOCATOR_SLACK = 0.05  # reserved - allocated, as a share of the allocated peak (assumption)


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
    """Plan one training step of ``model`` (see the module docstring); ValueError on bad input."""
    facts = model if isinstance(model, ModelFacts) else load_model_facts(model)
    _check_choice("method", method, METHODS)
    _check_choice("dtype", dtype, tuple(C.DTYPE_BYTES))
    for what, value in (("batch", batch), ("seq", seq), ("lora rank", lora_rank)):
        _positive(what, value)
    spec = resolve_optimizer(optim)
    gpu_name, capacity = resolve_gpu(gpu) if gpu else (None, None)
    if stochastic_rounding:
        dtype = "bf16"  # stochastic rounding is how bf16 weights are updated without masters
    if in_backward and spec.source != "tightfit":
        raise ValueError(f"--in-backward needs a tightfit optimizer (got {optim!r}; allowed: tightfit names, "
                         "e.g. adamw_8bit)")
    setup = Setup(method, batch, seq, dtype, lora_rank, checkpointing)
    e = C.DTYPE_BYTES[dtype]

    trainable = C.trainables(facts, method, dtype, lora_rank)
    weights = C.weight_bytes(facts, method, dtype)
    adapters = sum(t.numel * 4 for t in trainable) if setup.adapters else 0
    masters = C.master_bytes(trainable, stochastic_rounding)
    grad_total = C.gradient_bytes(trainable)
    state = C.optimizer_state_bytes(trainable, spec, masters > 0)
    budget = spec.device_budget()
    state_device = state if budget is None else min(state, budget)
    buffers = min(PAGED_DEVICE_BUFFERS, state - state_device) if budget is not None else 0
    largest = C.largest(trainable)
    largest_grad = largest.numel * C.DTYPE_BYTES[largest.dtype]
    stepped = C.TORCH_DTYPES["fp32" if (masters or largest.dtype == "fp32") else largest.dtype]
    temp_per_elem = step_bytes_per_element(spec, stepped)
    # with fp32 masters the step reads fp32 gradients: each 16-bit gradient is converted
    grad_at_step = 4 * sum(t.numel for t in trainable) if masters else grad_total
    step_temp = int(temp_per_elem * largest.numel)

    # gradients by where backward produces them; with updates in backward, the largest
    # gradient of each place plus its step temporaries
    by_block = [0] * facts.layers
    largest_by_block = [0] * facts.layers
    head = embed = 0
    stepping: dict = {"head": 0, "embed": 0, **{k: 0 for k in range(facts.layers)}}
    params = {p.name: p for p in facts.parameters()}
    for t in trainable:
        p = params[t.name.split(".lora_")[0]]
        nbytes = t.numel * C.DTYPE_BYTES[t.dtype]
        place = p.layer if p.layer is not None else ("embed" if p.kind == "embedding" else "head")
        stepping[place] = max(stepping[place], nbytes + int(temp_per_elem * t.numel))
        if p.layer is not None:
            by_block[p.layer] += nbytes
            largest_by_block[p.layer] = max(largest_by_block[p.layer], nbytes)
        elif p.kind == "embedding":
            embed += nbytes
        else:
            head += nbytes
    if facts.tied and embed:
        head += embed  # the lm_head's gradient is the embedding's; its backward adds to it
    dequant = 0
    if method == "qlora":
        dequant = max(p.numel for p in facts.parameters() if p.linear) * e
    timeline = step_timeline(facts, setup, grads_by_block=by_block, largest_by_block=largest_by_block, grad_head=head, grad_embed=embed,
                             grad_total=grad_at_step, step_temp_largest=step_temp,
                             stepping=stepping if in_backward else None, dequant_temp=dequant)
    persistent = weights + adapters + masters + state_device + buffers
    peak = persistent + timeline.peak
    on_gpu = gpu is not None
    slack = int(ALLOCATOR_SLACK * peak) if on_gpu else 0
    context = CUDA_CONTEXT if on_gpu else 0

    T = setup.tokens
    saved = (sum(block_saved(facts, setup, first=(k == 0)) for k in range(facts.layers)) * T
             if not checkpointing else e * facts.hidden * T * facts.layers)
    saved += final_saved(facts, setup) * T + rope_bytes(facts, setup)
    n_params = facts.total_params()
    weight_detail = (f"{n_params / 1e9:.3f}B params x {e} B ({dtype})" if method != "qlora" else
                     "block linears NF4 + double quant: n/2 + n/64 + 4*ceil(n/64/256) + 4 B; rest " + dtype)
    comps = [
        Component("weights", weights, 0, weight_detail),
        Component("LoRA adapters (fp32)", adapters, 0,
                  f"r={lora_rank} on q,k,v,o,gate,up,down: {sum(t.numel for t in trainable) / 1e6:.2f}M params")
        if setup.adapters else None,
        Component("fp32 master weights", masters, 0, "4 B per trainable 16-bit param") if masters else None,
        Component("gradients", largest_grad if in_backward else grad_at_step, 0,
                  "in backward: only the largest live" if in_backward else
                  f"{sum(t.numel for t in trainable) / 1e6:.2f}M trainable x "
                  + ("4 B (converted to fp32 for the master step)" if masters else "dtype")),
        Component("optimizer state", state_device, state - state_device,
                  f"{spec.name}: {spec.layout or spec.rule.name}" + (" (paged to host)" if budget is not None else "")),
        Component("paged streaming buffers", buffers, 0, "assumption: 2 x 64 MiB") if buffers else None,
        Component("activations (saved)", saved, 0,
                  "block inputs only (checkpointing) + one block recomputed" if checkpointing else
                  f"{block_saved(facts, setup) / 1024:.1f} KiB/token/block"),
        Component("logits + loss (fp32)", loss_backward(facts, setup), 0,
                  "log-softmax + its grad + logits grad: 12 B x vocab x tokens"),
        Component("optimizer step temporaries", step_temp, 0,
                  f"{temp_per_elem:.1f} B/elem x largest trainable ({largest.numel / 1e6:.1f}M), measured"),
        Component("QLoRA dequantized weight", dequant, 0, "largest linear in " + dtype) if dequant else None,
        Component("CUDA context", context, 0, "assumption: 0.4 GiB (lazy module loading)") if on_gpu else None,
        Component("allocator slack", slack, 0, f"assumption: {ALLOCATOR_SLACK:.0%} of the allocated peak")
        if on_gpu else None,
    ]
    assumptions = [
        f"compute/weight dtype {dtype}; activations per transformers' Llama-style block (SDPA, SwiGLU, GQA)",
        "steady-state step: optimizer state already allocated; zero_grad(set_to_none=True) between steps",
        "logits: full vocab, transformers ForCausalLMLoss (fp32 log-softmax); chunked CE would remove most of it",
        "optimizer step temporaries: tightfit reference implementation / torch fused, measured on a sample; "
        "fused Triton kernels allocate less",
    ]
    if budget is not None:
        assumptions.append("paged optimizer: state in pinned host memory, streamed through 2 x 64 MiB device buffers")
    if method == "qlora":
        assumptions.append("QLoRA: NF4 + double quant, block 64; embeddings/norms/lm_head not upcast (TRL >= 0.26)")
    if on_gpu:
        assumptions.append("CUDA context 0.4 GiB and 5% allocator slack are estimates, not measured")
    result = Plan(
        model=facts.to_dict(),
        settings=dict(method=method, optim=optim, batch=batch, seq=seq, lora_rank=lora_rank if setup.adapters else None,
                      checkpointing=checkpointing, in_backward=in_backward, stochastic_rounding=stochastic_rounding,
                      dtype=dtype, optimizer_source=spec.source),
        components=[c for c in comps if c is not None], persistent=persistent, peak_allocated=peak,
        peak_at=timeline.peak_at, device_total=peak + context + slack, host_total=state - state_device,
        assumptions=assumptions,
        gpu={"name": gpu_name, "bytes": capacity} if on_gpu else None,
        fits=(peak + context + slack <= capacity) if on_gpu else None)
    if simulate:
        result.simulation = _simulate(facts, spec, setup, in_backward, masters > 0, state - state_device, buffers)
    if advise and on_gpu:
        from .advice import advise as make_advice
        result.advice = make_advice(facts, result)
    return result


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
