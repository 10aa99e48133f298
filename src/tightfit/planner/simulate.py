"""One real training step under the live-bytes tracker: on fake tensors (any size, no
memory, no GPU) or on real CPU tensors (to check the simulation).

The step is what a training loop does in steady state: forward with labels (HF causal-LM
loss), backward, optimizer step (or updates inside backward), ``zero_grad(set_to_none)``.
A first, unmeasured step allocates the optimizer state (lazily created, as in every
optimizer); the peak of the second step is reported, with the peak of each phase.

Fake tensors: the model is built on the meta device, then materialized as fake CPU
tensors (``to_empty`` under ``FakeTensorMode``); value reads are answered by the tracker
(see tracker.py). transformers treats fake tensors as "tracing" and then builds an
explicit b x s x s causal mask (and repeats k/v for GQA) where a real step uses SDPA's
``is_causal``; the simulation turns that check off (``_real_step_mask_path``) so it takes
the path a real step takes. QLoRA runs only on real tensors (``fake=False``): bitsandbytes'
4-bit kernels need real memory (see qlora.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from .tracker import LiveBytesTracker

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepMeasurement:
    peak_bytes: int
    phase_peaks: dict[str, int]
    persistent_bytes: int  # live between steps: weights, optimizer state, masters
    fake: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"peak_bytes": self.peak_bytes, "phase_peaks": dict(self.phase_peaks),
                "persistent_bytes": self.persistent_bytes, "fake": self.fake, "notes": list(self.notes)}


def build_model(hf_config_dict: dict[str, Any], dtype: torch.dtype, fake_mode=None):
    """A causal LM from a config dict, with SDPA attention (eager where transformers has no
    SDPA path for the architecture, e.g. gemma2) and no dropout."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config_dict = {k: v for k, v in hf_config_dict.items() if k not in ("architectures", "torch_dtype", "dtype")}
    config = AutoConfig.for_model(**config_dict)
    config.use_cache = False

    def make():
        for attention in ("sdpa", "eager"):
            try:
                return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
            except ValueError:  # "does not support an attention implementation through sdpa"
                if attention == "eager":
                    raise

    if fake_mode is None:
        model = make()
    else:
        with torch.device("meta"):
            model = make()
        with fake_mode:
            model = model.to_empty(device="cpu")
            model.tie_weights()  # to_empty makes new parameters per module, which unties them
    return model.train()


def _enable_checkpointing(model) -> None:
    """Non-reentrant checkpointing per block (transformers >= 5.2 renamed the method)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@contextlib.contextmanager
def _real_step_mask_path():
    from unittest import mock

    from transformers.utils import import_utils

    with mock.patch.object(import_utils, "is_fake_tensor", lambda x: False):
        yield


def run_step(model, optimizer, input_ids, *, in_backward: bool, tracker: LiveBytesTracker,
             masters: list[tuple[torch.Tensor, torch.Tensor]] | None = None, compute_dtype: torch.dtype | None = None,
             loss: str = "full") -> None:
    """Forward, backward, step, zero_grad. ``masters``: (16-bit param, fp32 master) pairs —
    one at a time, the gradient is converted to fp32 on the master, the master steps and is
    copied back (then the params without masters step).
    ``compute_dtype`` (default: the weights' dtype) other than fp32 runs under autocast, as
    HF Trainer bf16=True; ``loss``: a train/loss.py name."""
    from ..train.loss import get_loss

    dtype = compute_dtype or next(model.parameters()).dtype
    autocast = (torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext())
    with tracker.phase("forward"), autocast:
        loss = get_loss(loss)(model, input_ids, input_ids)
    with tracker.phase("backward"):
        loss.backward()
    del loss
    with tracker.phase("optimizer"):
        if masters:  # one master at a time, as train/step.py: one fp32 gradient alive at once
            for param, master in masters:
                master.grad, param.grad = param.grad.float(), None
                optimizer.step()
                master.grad = None
                with torch.no_grad():
                    param.copy_(master)
        if not in_backward:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def measure_step(hf_config_dict: dict[str, Any], optimizer_spec, *, method: str = "full", batch: int = 1,
                 seq: int = 128, lora_rank: int = 16, checkpointing: bool = False, in_backward: bool = False,
                 dtype: str = "fp32", masters: bool = False, fake: bool = True, seed: int = 0,
                 compute_dtype: str | None = None, targets=None, adapter_dtype: str = "fp32",
                 loss: str = "full") -> StepMeasurement:
    """Peak live bytes of a steady-state training step (see module docstring).

    ``dtype``: the weights'; ``compute_dtype`` (default ``dtype``): autocast's. ``masters``:
    16-bit trainable params get fp32 master copies that the optimizer steps (mixed
    precision with fp32 masters), as the planner assumes for 16-bit full FT. ``targets``
    and ``adapter_dtype``: the LoRA adapters; ``loss``: full or chunked (train/loss.py).
    """
    if method not in ("full", "lora", "qlora") or (method == "qlora" and fake):
        raise ValueError(f"cannot {'simulate' if fake else 'measure'} method {method!r} (allowed: full, lora; "
                         "qlora only measured with fake=False: bitsandbytes' 4-bit kernels need real memory)")
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(seed)
    if fake:
        # one real step of the optimizer first: codecs build their quantization maps once per
        # process (lru_cache), and a map first built under FakeTensorMode would stay fake
        from .step_temporaries import step_bytes_per_element
        step_bytes_per_element(optimizer_spec, torch.float32)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
    model = build_model(hf_config_dict, DTYPES[dtype], fake_mode)
    outer = contextlib.ExitStack()
    if fake:
        outer.enter_context(fake_mode)
        outer.enter_context(_real_step_mask_path())
    with outer:
        quant_states = []
        if method == "qlora":
            from .qlora import quantize_nf4
            quant_states = quantize_nf4(model)
        if method in ("lora", "qlora"):
            from .lora import apply_lora
            from .lora import DEFAULT_TARGETS
            trainable = apply_lora(model, lora_rank, targets or DEFAULT_TARGETS, DTYPES[adapter_dtype])
        else:
            trainable = [p for p in model.parameters()]
        if checkpointing:
            _enable_checkpointing(model)
            if method != "full":
                model.enable_input_require_grads()
        vocab = hf_config_dict["vocab_size"]
        input_ids = torch.randint(0, vocab, (batch, seq))
        tracker = LiveBytesTracker(answer_scalar_reads=fake)
        tracker.track(list(model.parameters()) + list(model.buffers()) + quant_states + [input_ids])
        with tracker:
            pairs, stand_in = None, {}
            if masters:
                pairs = [(p, torch.nn.Parameter(p.detach().float())) for p in trainable if p.dtype != torch.float32]
                fp32 = {id(p) for p, _ in pairs}
                trainable = [m for _, m in pairs] + [p for p in trainable if id(p) not in fp32]
                stand_in = {id(p): m for p, m in pairs}
            optimizer = optimizer_spec.build(trainable, model, stand_in)
            handle = None
            if in_backward:
                from ..backward import step_in_backward
                handle = step_in_backward(trainable, optimizer)
            step = dict(in_backward=in_backward, tracker=tracker, masters=pairs, loss=loss,
                        compute_dtype=DTYPES[compute_dtype or dtype])
            run_step(model, optimizer, input_ids, **step)  # creates the state
            persistent = tracker.current
            tracker.peak, tracker.phase_peaks = tracker.current, {}
            run_step(model, optimizer, input_ids, **step)
            if handle is not None:
                handle.remove()
    return StepMeasurement(tracker.peak, dict(tracker.phase_peaks), persistent, fake)
