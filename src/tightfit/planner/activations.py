"""Activations, logits and loss of a Llama-style decoder (RMSNorm, GQA attention through
SDPA/flash, SwiGLU MLP) as transformers runs it, and the step's memory timeline.

Bytes per token (T = batch·seq tokens; h hidden, q = heads·head_dim, kv = kv_heads·head_dim,
i intermediate, a heads, V vocab, e bytes of the compute dtype, r LoRA rank). What autograd
saves, op by op (transformers' LlamaRMSNorm / sdpa_attention_forward / LlamaMLP):

* RMSNorm: the fp32 input (4h: the input itself in fp32, an fp32 copy otherwise), rsqrt
  (4), and when its weight trains the normalized value (e·h); its output (e·h) is saved by
  the next linear when that linear's weight trains.
* attention: rotated q (e·q), rotated k and v (e·kv each), the SDPA output (e·q; its
  (b,s,q) reshape is a view) and the fp32 logsumexp (4a). No s x s matrix (flash/SDPA).
* MLP: gate, SiLU(gate), up and their product (4·e·i).
* LoRA, per target linear: the A-output (e·r) and, when the base runs in 16 bits, a copy
  of the input (e·width): peft casts the input to the fp32 adapter dtype and autocast
  (HF Trainer ``bf16=True``) casts it back for the matmul, once per target. The SwiGLU
  product is then saved only as down_proj's copy (3·e·i in the MLP), and autocast's
  16-bit casts of the adapter weights (e per adapter parameter) stay saved as well.

Layer 0 saves no norm input under LoRA (the frozen embedding's output needs no grad).
Gradient checkpointing (non-reentrant, per block) keeps only each block's input (e·h)
and recomputes one block's saved set during its backward.

Loss (transformers' ForCausalLMLoss): logits (e·V), an fp32 upcast when e < 4 (4V), the
log-softmax output (4V); backward holds log-softmax output + its gradient + the logits
gradient (12V) at once.

The timeline walks forward, loss, backward (lm_head, blocks from the last, embedding),
and the optimizer step, adding what is live at each point; the peak is its maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

from .components import DTYPE_BYTES, lora_targets
from .model_facts import ModelFacts


@dataclass(frozen=True)
class Setup:
    method: str  # full | lora | qlora
    batch: int
    seq: int
    dtype: str
    lora_rank: int
    checkpointing: bool

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    @property
    def adapters(self) -> bool:
        return self.method in ("lora", "qlora")


def norm_saved(facts: ModelFacts, s: Setup, input_needs_grad: bool = True) -> int:
    """Bytes per token one RMSNorm saves."""
    if not input_needs_grad:
        return 0
    e, h = DTYPE_BYTES[s.dtype], facts.hidden
    return 4 * h + 4 + (0 if s.adapters else e * h)


def linear_inputs_saved(facts: ModelFacts, s: Setup) -> int:
    """Bytes per token of the block's linear inputs kept for weight gradients."""
    e = DTYPE_BYTES[s.dtype]
    widths = {"h": facts.hidden, "q": facts.heads * facts.head_dim, "i": facts.intermediate}
    if not s.adapters:
        return 2 * e * widths["h"]  # the two norm outputs; o_proj/down_proj inputs are saved tensors anyway
    if e == 4:
        return 2 * 4 * widths["h"]  # lora_A saves the norm outputs themselves
    return sum(e * widths[w] * n for w, n in lora_readers(facts).items())  # one autocast copy per target


def lora_readers(facts: ModelFacts) -> dict[str, int]:
    """How many LoRA targets read each input width: h (norm outputs), q (attention), i (SwiGLU)."""
    lay = facts.layout
    return {"h": (1 if lay.fused_qkv else 3) + (1 if lay.fused_gate_up else 2), "q": 1, "i": 1}


def block_saved(facts: ModelFacts, s: Setup, first: bool = False) -> int:
    """Bytes per token one decoder block saves for backward (no checkpointing)."""
    e = DTYPE_BYTES[s.dtype]
    q, kv, i = facts.heads * facts.head_dim, facts.kv_heads * facts.head_dim, facts.intermediate
    norms = norm_saved(facts, s, input_needs_grad=not (first and s.adapters)) + norm_saved(facts, s)
    attention = e * (2 * q + 2 * kv) + 4 * facts.heads
    mlp = (3 if (s.adapters and e < 4) else 4) * e * i  # 16-bit LoRA: prod is kept only as a copy
    lora = sum(lora_readers(facts).values()) * e * s.lora_rank if s.adapters else 0
    return norms + linear_inputs_saved(facts, s) + attention + mlp + lora


def final_saved(facts: ModelFacts, s: Setup) -> int:
    """Final norm (its output is saved by a trained lm_head)."""
    e = DTYPE_BYTES[s.dtype]
    return norm_saved(facts, s) + (0 if s.adapters else e * facts.hidden)


def rope_bytes(facts: ModelFacts, s: Setup) -> int:
    """cos and sin, computed once per forward and shared by every block."""
    return 2 * s.tokens * facts.head_dim * DTYPE_BYTES[s.dtype]


def loss_forward(facts: ModelFacts, s: Setup) -> int:
    e = DTYPE_BYTES[s.dtype]
    return s.tokens * facts.vocab * (e + (4 if e < 4 else 0) + 4)


def loss_backward(facts: ModelFacts, s: Setup) -> int:
    return s.tokens * facts.vocab * 12


def mlp_backward_working(facts: ModelFacts, s: Setup) -> tuple[int, int]:
    """Bytes beyond the block's saved set in its MLP backward, where the block peaks, as
    (after down_proj, at the SiLU product). After down_proj's backward, grad(prod) (e·i)
    has replaced the freed prod, so only the gradient entering the block (e·h) is extra —
    that is when down_proj's gradient is accumulated (and, in backward, stepped). Then
    grad(SiLU) and grad(up) join grad(prod): 2·e·i + e·h."""
    e, T = DTYPE_BYTES[s.dtype], s.tokens
    return T * e * facts.hidden, T * e * (2 * facts.intermediate + facts.hidden)


@dataclass
class Timeline:
    """Live bytes (beyond the persistent ones) at each point of the step, and the peak."""

    points: dict[str, int]

    @property
    def peak(self) -> int:
        return max(self.points.values())

    @property
    def peak_at(self) -> str:
        return max(self.points, key=self.points.get)


def recompute_transient(facts: ModelFacts, s: Setup) -> int:
    """Bytes beyond the saved set at the end of a checkpointed block's recompute: the
    gradient entering the block and down_proj's output (2·e·h); with 16-bit LoRA also the
    SwiGLU product (e·i) and peft's fp32 copy of it (4·i), freed right after."""
    e, T = DTYPE_BYTES[s.dtype], s.tokens
    lora16 = s.adapters and e < 4
    return T * (2 * e * facts.hidden + ((e + 4) * facts.intermediate if lora16 else 0))


def kept_per_block(facts: ModelFacts, s: Setup) -> list[int]:
    """Bytes each block keeps until its backward: its saved set, or only its input (checkpointing)."""
    if s.checkpointing:
        return [DTYPE_BYTES[s.dtype] * facts.hidden * s.tokens] * facts.layers
    casts = adapter_casts(facts, s) // facts.layers
    return [block_saved(facts, s, first=(k == 0)) * s.tokens + casts for k in range(facts.layers)]


def adapter_casts(facts: ModelFacts, s: Setup) -> int:
    """Autocast's 16-bit copies of the fp32 LoRA weights of all blocks, saved for backward."""
    e = DTYPE_BYTES[s.dtype]
    if not s.adapters or e == 4:
        return 0
    return e * s.lora_rank * sum(p.shape[0] + p.shape[1] for p in lora_targets(facts))


def saved_activations(facts: ModelFacts, s: Setup) -> int:
    """Everything saved for backward at the end of the forward, logits and loss excluded."""
    return sum(kept_per_block(facts, s)) + final_saved(facts, s) * s.tokens + rope_bytes(facts, s)


def step_timeline(facts: ModelFacts, s: Setup, grads, *, grads_at_step: int, step_temp_largest: int,
                  in_backward: bool, dequant_temp: int = 0) -> Timeline:
    """Live bytes beyond weights/masters/state at each point of a steady-state step.

    ``grads`` (components.GradientPlaces): gradient bytes per block, the largest of each
    block (down_proj's, produced first), lm_head's (the embedding's when tied) and the
    embedding's as its backward makes them (added to the existing one when tied).
    ``grads_at_step``: all gradients as the optimizer reads them. ``in_backward``: autograd
    accumulates a gradient (and so runs its update) as soon as it is ready, so none
    accumulate — live is the largest gradient of each place plus its step temporaries.
    ``dequant_temp``: QLoRA's dequantized weight, live only inside a 4-bit matmul (forward
    and backward): counted at down_proj's backward, the largest linear.
    """
    T = s.tokens
    kept = kept_per_block(facts, s)
    recomputed = [block_saved(facts, s) * T + adapter_casts(facts, s) // facts.layers if s.checkpointing else 0
                  for _ in kept]
    rope = rope_bytes(facts, s)
    base = saved_activations(facts, s)
    stepping = grads.stepping if in_backward else None
    points = {"forward (at the loss)": base + loss_forward(facts, s),
              "backward (loss gradient)": base + loss_backward(facts, s),
              "backward (lm_head)": base + T * facts.vocab * 4 + (stepping["head"] if stepping else grads.head)}
    done = 0 if stepping else grads.head
    after_down, at_product = mlp_backward_working(facts, s)
    for k in reversed(range(facts.layers)):
        live = sum(kept[:k + 1]) + recomputed[k] + rope + done
        down = 0 if stepping else grads.largest_by_block[k]
        points[f"backward block {k} (down_proj)"] = (live + (stepping[k] if stepping else down) + after_down
                                                     + dequant_temp)
        points[f"backward block {k} (SwiGLU)"] = live + down + at_product
        if s.checkpointing:
            points[f"backward block {k} (recompute)"] = live + recompute_transient(facts, s)
        done += 0 if stepping else grads.by_block[k]
    if stepping:
        points["backward (embedding)"] = stepping["embed"]
    else:
        points["backward (embedding)"] = done + grads.embed
        points["optimizer step"] = grads_at_step + step_temp_largest
    return Timeline(points)
