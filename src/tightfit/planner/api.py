"""``plan(...)``: every memory component of one training step, the peak, and a verdict.

The step is described by a ``tightfit.finetune.FineTune`` (the settings ``tightfit train``
runs), given whole or as keywords. The peak is a timeline (activations.py): persistent
bytes (weights, adapters, masters, optimizer state on the device, paging slots) plus the
largest live set of the step (activations, logits/loss, gradients, optimizer-step
temporaries). A GPU step (the default) adds the CUDA context and allocator slack as
stated assumptions; bitsandbytes' paged state is CUDA managed memory, outside both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from ..finetune import (FINETUNE_FIELDS, LOSS_CHUNK_TOKENS, PRECISIONS, FineTune, check_finetune, from_dict,
                        lora_target_modules)
from . import components as C
from .advice import advise as make_advice
from .activations import (Setup, block_saved, host_activations, loss_backward, loss_tokens, saved_activations,
                          step_timeline)
from .lora import DEFAULT_TARGETS
from .gpus import resolve_gpu
from .model_facts import ModelFacts, load_model_facts
from ..placement.paged import CHUNK_BYTES, SLOTS
from .optimizer_specs import resolve_optimizer
from .step_temporaries import fused_on_gpu, step_bytes_per_element

CUDA_CONTEXT = int(0.4 * 2**30)  # CUDA context: 0.3-0.4 GB with lazy module loading
ALLOCATOR_SLACK = 0.05  # reserved - allocated, as a share of the allocated peak (assumption)
DEVICES = ("cuda", "cpu")  # what the step runs on: a GPU (fused kernels, context, slack) or a CPU
# the planner's defaults where they differ from a training run's (one long sequence)
PLAN_DEFAULTS = FineTune(batch_size=1, seq=2048)
# plan() keyword spellings of earlier versions -> FineTune fields
LEGACY_KWARGS = {"batch": "batch_size", "lora_rank": "lora_r", "dtype": "precision"}
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
    device: str = "cuda"
    managed: int = 0  # bitsandbytes paged state: CUDA managed memory, outside torch's counters

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def finetune(self, model: str | None = None) -> FineTune:
        """The FineTune this plan was made for (``model``: the name to put in it)."""
        settings = {**self.settings, "lora_r": self.settings["lora_r"] or PLAN_DEFAULTS.lora_r}
        return from_dict({**settings, "model": model or self.model["name"]})


def _check_choice(what: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r} (allowed: {', '.join(map(str, allowed))})")


def fields_of(ft: FineTune) -> dict[str, Any]:
    """The settings of ``ft`` as plan() keywords (every field but the model)."""
    return {k: getattr(ft, k) for k in FINETUNE_FIELDS if k != "model"}


def _finetune_from_kwargs(model_name: str, settings: dict[str, Any]) -> FineTune:
    """A FineTune from plan() keywords (FineTune fields, or the legacy spellings)."""
    settings = dict(settings)
    sr = settings.pop("stochastic_rounding", False)
    for old, new in LEGACY_KWARGS.items():
        if old in settings:
            if new in settings:
                raise ValueError(f"plan() got both {old!r} and {new!r}; pass {new!r}")
            settings[new] = settings.pop(old)
    if sr:
        if settings.get("precision", "bf16") == "fp32":
            raise ValueError("stochastic_rounding=True rounds bf16 weights; it cannot go with precision 'fp32'")
        settings["precision"] = "bf16-sr"
    unknown = sorted(set(settings) - set(FINETUNE_FIELDS))
    if unknown:
        raise ValueError(f"unknown plan setting {unknown[0]!r} (allowed: {', '.join(FINETUNE_FIELDS)})")
    return dataclasses.replace(PLAN_DEFAULTS, model=model_name, **settings)


def plan(model: str | ModelFacts | FineTune, *, gpu: str | None = None, device: str = "cuda", simulate: bool = False,
         advise: bool = True, **settings: Any) -> Plan:
    """Plan one training step (see the module docstring); ValueError on bad input.

    ``model``: a model spec, ModelFacts, or a whole ``FineTune`` (then no ``settings``).
    ``settings``: FineTune fields (method, optim, precision, batch_size, seq, lora_r, ...;
    the older batch/lora_rank/dtype/stochastic_rounding spellings are accepted).
    ``device``: "cuda" (default, with or without ``gpu``: fused GPU kernels, CUDA context
    and allocator slack) or "cpu" (what a CPU step allocates). ``simulate`` also runs the
    step on fake tensors; ``advise`` (with a ``gpu``) adds the changes that make it fit.
    """
    ft = None
    if isinstance(model, FineTune):
        if settings:
            raise ValueError("plan(FineTune(...)) takes no other settings; change the FineTune instead")
        ft, model = model.finetune(), model.model
    facts = model if isinstance(model, ModelFacts) else load_model_facts(model)
    ft = ft or _finetune_from_kwargs(facts.name, settings)
    check_finetune(ft)
    _check_choice("device", device, DEVICES)
    spec = resolve_optimizer(ft.optim, ft.paged_budget)
    gpu_name, capacity = resolve_gpu(gpu) if gpu else (None, None)
    on_gpu = device == "cuda"
    weight_dtype, compute_dtype, masters_on, sr = PRECISIONS[ft.precision]
    targets = lora_target_modules(ft.lora_targets) if ft.method != "full" else DEFAULT_TARGETS
    in_backward = ft.in_backward and ft.grad_accum == 1  # accumulating micro-batches keep their gradients
    setup = Setup(ft.method, ft.batch_size, ft.seq, compute_dtype, ft.lora_r, ft.checkpointing, targets,
                  ft.adapter_dtype, autocast_weights=weight_dtype != compute_dtype,
                  offload=ft.offload_activations and on_gpu, loss=ft.loss)
    trainable = C.trainables(facts, ft.method, weight_dtype, ft.lora_r, targets, ft.adapter_dtype)
    # placement/offload.py (a no-op on a CPU): the optimizer keeps fp32 masters, states and its
    # step on the host; the device keeps the params and their grads
    offload = spec.offload and on_gpu  # (check_finetune refused it with bf16-sr and a paged budget)
    masters = 0 if offload else C.master_bytes(trainable, not masters_on)
    largest = C.largest(trainable)
    stepped = C.TORCH_DTYPES["fp32" if (masters or largest.dtype == "fp32") else largest.dtype]
    own_specs = {t.name: spec.for_param(t.shape, t.role) for t in trainable}  # Muon: AdamW for embeddings

    def temp_per_elem(t: C.Trainable) -> float:
        own = own_specs[t.name]
        return 0.0 if offload or (on_gpu and fused_on_gpu(own)) else step_bytes_per_element(own, stepped)

    fused = all(on_gpu and fused_on_gpu(own) for own in own_specs.values())
    worst = max(trainable, key=lambda t: temp_per_elem(t) * t.numel)  # the largest step working set
    sizes = {
        "weights": C.weight_bytes(facts, ft.method, weight_dtype),
        "adapters": sum(t.numel * C.DTYPE_BYTES[t.dtype] for t in trainable) if setup.adapters else 0,
        "masters": masters,
        "offload_masters": C.offload_master_bytes(trainable) if offload else 0,
        "offload_grads": C.gradient_bytes(trainable) if offload else 0,
        # with fp32 masters each 16-bit gradient is converted to fp32 just before its master's
        # update (train/step.py), so one fp32 gradient joins the 16-bit ones at a time
        "grads_at_step": C.gradient_bytes(trainable),
        "largest_grad": largest.numel * C.DTYPE_BYTES[largest.dtype],
        "state": sum(state_each := C.optimizer_state_bytes_each(trainable, spec, masters > 0 or offload)),
        "step_temp": int(temp_per_elem(worst) * worst.numel) + (4 * largest.numel if masters else 0),
        "dequant": max(p.numel for p in facts.parameters() if p.linear) * C.DTYPE_BYTES[compute_dtype]
        if ft.method == "qlora" else 0,
        "managed": 0,
    }
    budget = spec.device_budget()
    if spec.source == "bnb" and budget is not None:  # bitsandbytes pages through CUDA managed memory
        sizes["state_device"], sizes["managed"] = C.managed_split(trainable, state_each) if on_gpu else (sizes["state"], 0)
        sizes["buffers"] = 0
    elif offload:
        sizes["state_device"], sizes["buffers"] = 0, 0
    elif on_gpu:
        # placement/paged.py streams large params in pieces only for elementwise rules without
        # stochastic rounding (its random bits are keyed by the whole parameter's element index)
        sizes["state_device"], sizes["buffers"] = C.paged_split(state_each, budget, spec.rule.elementwise and not sr,
                                                                per_param=in_backward)
    else:  # paging is a no-op on a CPU: the state stays with the params
        sizes["state_device"], sizes["buffers"] = sizes["state"], 0
    timeline = step_timeline(facts, setup, C.gradient_places(facts, trainable, temp_per_elem),
                             grads_at_step=sizes["grads_at_step"], step_temp_largest=sizes["step_temp"],
                             in_backward=in_backward, dequant_temp=sizes["dequant"])
    persistent = sum(sizes[k] for k in ("weights", "adapters", "masters", "state_device", "buffers"))
    peak = persistent + timeline.peak
    sizes["context"] = CUDA_CONTEXT if on_gpu else 0
    sizes["slack"] = int(ALLOCATOR_SLACK * peak) if on_gpu else 0
    sizes["host_activations"] = host_activations(facts, setup)
    settings_out = {**fields_of(ft),
                    "lora_r": ft.lora_r if setup.adapters else None, "optimizer_source": spec.source}
    total = peak + sizes["context"] + sizes["slack"]
    result = Plan(model=facts.to_dict(), settings=settings_out,
                  components=_components(facts, setup, ft, spec, trainable, sizes, temp_per_elem(worst), worst, in_backward,
                                         on_gpu, fused, sr),
                  persistent=persistent, peak_allocated=peak, peak_at=timeline.peak_at, device_total=total,
                  host_total=sizes["state"] - sizes["state_device"] - sizes["managed"] + sizes["host_activations"]
                  + sizes["offload_masters"] + sizes["offload_grads"],
                  assumptions=_assumptions(facts, setup, ft, spec, budget is not None, on_gpu, fused),
                  gpu={"name": gpu_name, "bytes": capacity} if gpu else None,
                  fits=total <= capacity if gpu else None, device=device, managed=sizes["managed"])
    if simulate:
        result.simulation = _simulate(facts, spec, dataclasses.replace(setup, offload=False), ft, in_backward,
                                      masters > 0)
        # the simulation steps with tightfit's reference implementation on a CPU; compare it
        # with the analytic plan of that same step
        same = plan(facts, device="cpu", advise=False, **fields_of(ft))
        result.simulation["analytic_same_step"] = same.peak_allocated
        if on_gpu:
            result.simulation["notes"].append("simulated as a CPU step (reference implementation, no context or "
                                              "slack); compared with the CPU plan of the same step")
    if advise and gpu and on_gpu:  # advice is for a GPU
        # the device total does not depend on the GPU, only its capacity (which advice holds)
        result.advice = make_advice(facts, result, lambda settings: plan(
            facts, device=device, advise=False, **settings).device_total)
    return result


def _components(facts: ModelFacts, setup: Setup, ft: FineTune, spec, trainable, sizes: dict, temp_per_elem: float,
                worst: C.Trainable, in_backward: bool, on_gpu: bool, fused: bool, sr: bool) -> list[Component]:
    """The table rows: each component's bytes (device, host) and how it was computed."""
    n_train = sum(t.numel for t in trainable)
    weight_dtype = PRECISIONS[ft.precision][0]
    rows = [Component("weights", sizes["weights"], 0,
                      f"{facts.total_params() / 1e9:.3f}B params x {C.DTYPE_BYTES[weight_dtype]} B ({weight_dtype})"
                      if setup.method != "qlora" else
                      f"block linears NF4 + double quant: n/2 + n/64 + 4*ceil(n/64/256) + 4 B; rest {weight_dtype}")]
    if setup.adapters:
        rows.append(Component(f"LoRA adapters ({setup.adapter_dtype})", sizes["adapters"], 0,
                              f"r={setup.lora_rank} on {','.join(t.replace('_proj', '') for t in setup.targets)}: "
                              f"{n_train / 1e6:.2f}M params"))
    if sizes["masters"]:
        rows.append(Component("fp32 master weights", sizes["masters"], 0, "4 B per trainable 16-bit param"))
    rows.append(Component("gradients", sizes["largest_grad"] if in_backward else sizes["grads_at_step"], 0,
                          "in backward: only the largest live" if in_backward else
                          f"{n_train / 1e6:.2f}M trainable x " +
                          "dtype" + (" (+ the one converted to fp32 for its master's step, counted as a "
                                     "step temporary)" if sizes["masters"] else "")))
    state_host = sizes["state"] - sizes["state_device"] - sizes["managed"]
    paged = (" (offloaded: stepped on the host)" if sizes["offload_masters"] else
             " (paged to host)" if state_host or sizes["buffers"] else "")
    rows.append(Component("optimizer state", sizes["state_device"], state_host,
                          f"{spec.name}: {spec.layout or spec.rule.name}{paged}"))
    if sizes["offload_masters"]:
        rows += [Component("offload: fp32 master weights", 0, sizes["offload_masters"],
                           "pinned host memory, 4 B per trainable param (placement/offload.py)"),
                 Component("offload: gradient buffers", 0, sizes["offload_grads"],
                           "pinned host memory, one per trainable in its dtype: grads in, new weights out")]
    if sizes["managed"]:
        rows.append(Component("optimizer state (CUDA managed)", 0, sizes["managed"],
                              "bitsandbytes paged: managed memory, not in torch's counters; nvidia-smi shows it on "
                              "the GPU while the GPU has room, the driver evicts it to host under pressure"))
    if sizes["buffers"]:
        rows.append(Component("paged streaming slots", sizes["buffers"], 0,
                              f"{SLOTS} slots x the largest chunk (chunks of 1/16 of the paged state, "
                              f"1-{CHUNK_BYTES >> 20} MiB; " + (
                                  "stochastic rounding: each parameter's states stream whole" if sr else
                                  "a larger parameter's states stream in pieces" if spec.rule.elementwise else
                                  "a larger parameter's states are a chunk alone") + ")"))
    how = ("offloaded to host; one block's set copied back in its backward" if setup.offload else
           "block inputs only (checkpointing) + one block recomputed" if setup.checkpointing else
           f"{block_saved(facts, setup) / 1024:.1f} KiB/token/block")
    rows += [
        Component("activations (saved)", saved_activations(facts, setup), sizes["host_activations"], how),
        Component("logits + loss (fp32)", loss_backward(facts, setup), 0,
                  "log-softmax + its grad + logits grad: 12 B x vocab x tokens" if setup.loss == "full" else
                  f"chunked: {loss_tokens(facts, setup)} tokens' logits at once (chunks of {LOSS_CHUNK_TOKENS}, "
                  "recomputed in backward) + the hidden-state gradient"),
        Component("optimizer step temporaries", sizes["step_temp"], 0,
                  "none on the device: the offloaded step runs on the host" if sizes["offload_masters"] else
                  ("fused kernel on the GPU: " + ("only the fp32 gradient of the master being stepped"
                                                  if sizes["masters"] else "none full-size")) if fused else
                  f"{temp_per_elem:.1f} B/elem x {worst.name} ({worst.numel / 1e6:.1f}M, the largest working set), "
                  "measured"
                  + (" + its fp32 gradient (master step)" if sizes["masters"] else "")),
    ]
    if sizes["dequant"]:
        rows.append(Component("QLoRA dequantized weight", sizes["dequant"], 0, f"largest linear in {setup.dtype}"))
    if on_gpu:
        rows += [Component("CUDA context", sizes["context"], 0, "assumption: 0.4 GiB (lazy module loading)"),
                 Component("allocator slack", sizes["slack"], 0,
                           f"assumption: {ALLOCATOR_SLACK:.0%} of the allocated peak")]
    return rows


PRECISION_WORDS = {
    "fp32": "fp32 weights and compute",
    "bf16": "bf16 weights and compute (autocast for the fp32 parts); fp32 masters for 16-bit trainables",
    "bf16-autocast": "fp32 weights under bf16 autocast (HF Trainer bf16=True on an fp32 model): each matmul "
                     "saves its weight's bf16 cast",
    "bf16-sr": "pure bf16 weights, stochastic rounding, no fp32 masters",
}


def _assumptions(facts: ModelFacts, setup: Setup, ft: FineTune, spec, paged: bool, on_gpu: bool,
                 fused: bool) -> list[str]:
    out = [
        f"{PRECISION_WORDS[ft.precision]}{'' if on_gpu else ' (a CPU step)'}; activations of "
        "transformers' Llama-style blocks (SDPA, SwiGLU, GQA)",
        "steady-state step: optimizer state already allocated; zero_grad(set_to_none=True) between steps",
        "logits: full vocab, transformers ForCausalLMLoss (fp32 log-softmax); --loss chunked removes most of it"
        if setup.loss == "full" else
        f"logits: chunked cross-entropy (tightfit train --loss chunked), {LOSS_CHUNK_TOKENS}-token chunks",
        "optimizer step: a fused kernel (tightfit Triton / bnb CUDA) with no full-size temporaries" if fused else
        "optimizer step temporaries: measured on a sample with the optimizer's own code (tightfit reference "
        "implementation, torch fused), per element of the largest trainable tensor",
    ]
    if ft.in_backward and ft.grad_accum > 1:
        out.append("in backward with gradient accumulation: gradients accumulate as usual, so no gradient saving")
    if ft.offload_activations and not on_gpu:
        out.append("activation offloading does nothing on a CPU (the activations already are in host memory)")
    if facts.model_type in APPROXIMATE_ACTIVATIONS:
        out.append(f"{facts.model_type}: {APPROXIMATE_ACTIVATIONS[facts.model_type]}")
    if paged and spec.source == "bnb":
        out.append("bitsandbytes paged optimizer: states of tensors >= 100k elements in CUDA managed memory "
                   "(counted as host; nvidia-smi shows them on the GPU while it has room)")
    elif spec.offload:
        out.append("offloaded optimizer: fp32 master weights, states and the step on the host; grads copied to the "
                   "host during backward, weights back after each step (placement/offload.py)"
                   + ("" if on_gpu else "; on a CPU offload is a no-op"))
    elif paged:
        out.append(f"paged optimizer: state in pinned host memory, streamed through {SLOTS} reusable device slots "
                   "(placement/paged.py)" + ("" if on_gpu else "; on a CPU paging is a no-op"))
    if setup.method == "qlora":
        out.append("QLoRA: NF4 + double quant, block 64; embeddings/norms/lm_head not upcast (TRL >= 0.26)")
    if on_gpu:
        out.append("CUDA context 0.4 GiB and 5% allocator slack are estimates, not measured")
    return out


def _simulate(facts: ModelFacts, spec, setup: Setup, ft: FineTune, in_backward: bool, masters: bool) -> dict[str, Any]:
    if setup.method == "qlora":
        return {"skipped": "QLoRA is not simulated: bitsandbytes' 4-bit kernels need real memory "
                           "(tests measure it on CPU instead)"}
    from .simulate import measure_step

    if masters and in_backward:
        return {"skipped": "updates inside backward with fp32 masters are not simulated"}
    m = measure_step(facts.raw, spec, method=setup.method, batch=setup.batch, seq=setup.seq,
                     lora_rank=setup.lora_rank, checkpointing=setup.checkpointing, in_backward=in_backward,
                     dtype=PRECISIONS[ft.precision][0], compute_dtype=setup.dtype, masters=masters, fake=True,
                     targets=setup.targets, adapter_dtype=setup.adapter_dtype, loss=setup.loss)
    return m.to_dict()
