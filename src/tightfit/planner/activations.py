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

LoRA targets (``Setup.targets``) decide which inputs are read by adapters; adapters of the
compute dtype (bf16 adapters under bf16) read the saved tensors themselves, without copies.
fp32 weights under bf16 autocast (``autocast_weights``) keep an fp32 residual stream and
normalized values, one bf16 copy of each norm output per reading linear, and each
matmul's bf16 weight cast until its backward. Offloaded activations (``offload``) live on
the host; a block's saved set comes back to the device for its backward.

Loss (transformers' ForCausalLMLoss): logits (e·V), an fp32 upcast when e < 4 (4V), the
log-softmax output (4V); backward holds log-softmax output + its gradient + the logits
gradient (12V) at once. The chunked loss (train/loss.py) holds that for one chunk of
``LOSS_CHUNK_TOKENS`` tokens, plus the chunk's recomputed logits and the gradient of the
final hidden states.

The timeline walks forward, loss, backward (lm_head, blocks from the last, embedding),
and the optimizer step, adding what is live at each point; the peak is its maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

from .components import DTYPE_BYTES, lora_targets
from ..finetune import LOSS_CHUNK_TOKENS
from .lora import DEFAULT_TARGETS
from .model_facts import ModelFacts


@dataclass(frozen=True)
class Setup:
    method: str  # full | lora | qlora
    batch: int
    seq: int
    dtype: str  # compute dtype (activations)
    lora_rank: int
    checkpointing: bool
    targets: tuple[str, ...] = DEFAULT_TARGETS  # LoRA target modules
    adapter_dtype: str = "fp32"
    autocast_weights: bool = False  # fp32 weights under bf16 autocast: each matmul saves its weight's bf16 cast
    offload: bool = False  # saved activations kept in host memory (train/offload.py)
    loss: str = "full"  # full | chunked (train/loss.py)

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    @property
    def adapters(self) -> bool:
        return self.method in ("lora", "qlora")

    @property
    def adapter_copies(self) -> bool:
        """Adapters in another dtype than the compute: peft casts each target's input to the
        adapter dtype and autocast casts it back (one copy per target)."""
        return self.adapters and DTYPE_BYTES[self.adapter_dtype] != DTYPE_BYTES[self.dtype]


def norm_saved(facts: ModelFacts, s: Setup, input_needs_grad: bool = True) -> int:
    """Bytes per token one RMSNorm saves."""
    if not input_needs_grad:
        return 0
    e, h = DTYPE_BYTES[s.dtype], facts.hidden
    normalized = 4 if s.autocast_weights else e  # with fp32 norm weights the product stays fp32
    return 4 * h + 4 + (0 if s.adapters else normalized * h)


def linear_inputs_saved(facts: ModelFacts, s: Setup) -> int:
    """Bytes per token of the block's linear inputs kept for weight gradients."""
    e = DTYPE_BYTES[s.dtype]
    widths = {"h": facts.hidden, "q": facts.heads * facts.head_dim, "i": facts.intermediate}
    if not s.adapters:
        if s.autocast_weights:  # autocast casts the fp32 norm output once per reading linear
            return e * widths["h"] * lora_readers(facts, DEFAULT_TARGETS)["h"]
        return 2 * e * widths["h"]  # the two norm outputs; o_proj/down_proj inputs are saved tensors anyway
    if not s.adapter_copies:  # lora_A saves the norm outputs themselves, once per norm read
        attn = any(t in s.targets for t in ("q_proj", "k_proj", "v_proj"))
        mlp = any(t in s.targets for t in ("gate_proj", "up_proj"))
        return e * widths["h"] * (attn + mlp)
    return sum(e * widths[w] * n for w, n in lora_readers(facts, s.targets).items())  # one copy per target


def lora_readers(facts: ModelFacts, targets=DEFAULT_TARGETS) -> dict[str, int]:
    """How many LoRA targets read each input width: h (norm outputs), q (attention), i (SwiGLU)."""
    lay = facts.layout
    has = lambda *names: sum(n in targets for n in names)  # noqa: E731
    attn = min(1, has("q_proj", "k_proj", "v_proj")) if lay.fused_qkv else has("q_proj", "k_proj", "v_proj")
    mlp = min(1, has("gate_proj", "up_proj")) if lay.fused_gate_up else has("gate_proj", "up_proj")
    return {"h": attn + mlp, "q": has("o_proj"), "i": has("down_proj")}


def block_saved(facts: ModelFacts, s: Setup, first: bool = False) -> int:
    """Bytes per token one decoder block saves for backward (no checkpointing)."""
    e = DTYPE_BYTES[s.dtype]
    q, kv, i = facts.heads * facts.head_dim, facts.kv_heads * facts.head_dim, facts.intermediate
    norms = norm_saved(facts, s, input_needs_grad=not (first and s.adapters)) + norm_saved(facts, s)
    attention = e * (2 * q + 2 * kv) + 4 * facts.heads
    # gate, SiLU(gate), up; their product only when down_proj's weight trains or an adapter
    # of the compute dtype reads it (with adapter copies the product is kept as the copy)
    prod_saved = not s.adapters or ("down_proj" in s.targets and not s.adapter_copies)
    mlp = (3 + prod_saved) * e * i
    lora = sum(lora_readers(facts, s.targets).values()) * e * s.lora_rank if s.adapters else 0
    return norms + linear_inputs_saved(facts, s) + attention + mlp + lora


def final_saved(facts: ModelFacts, s: Setup) -> int:
    """Final norm (its output is saved by a trained lm_head)."""
    e = DTYPE_BYTES[s.dtype]
    return norm_saved(facts, s) + (0 if s.adapters else e * facts.hidden)


def rope_bytes(facts: ModelFacts, s: Setup) -> int:
    """cos and sin, computed once per forward and shared by every block."""
    return 2 * s.tokens * facts.head_dim * DTYPE_BYTES[s.dtype]


def loss_tokens(facts: ModelFacts, s: Setup) -> int:
    """Tokens whose logits are live at once: all of them, or one chunk (chunked loss)."""
    return s.tokens if s.loss == "full" else min(s.tokens, LOSS_CHUNK_TOKENS)


def loss_forward(facts: ModelFacts, s: Setup) -> int:
    """Logits (e·V), their fp32 upcast when e < 4, the log-softmax (4V), per live token."""
    e = DTYPE_BYTES[s.dtype]
    return loss_tokens(facts, s) * facts.vocab * (e + (4 if e < 4 else 0) + 4)


def loss_backward(facts: ModelFacts, s: Setup) -> int:
    """Log-softmax output + its gradient + the logits gradient (12V) per live token; a
    chunked loss also recomputes the chunk's logits (e·V) and accumulates the gradient of
    the final hidden states (e·h per token)."""
    if s.loss == "full":
        return s.tokens * facts.vocab * 12
    e = DTYPE_BYTES[s.dtype]
    return loss_tokens(facts, s) * facts.vocab * (12 + e) + s.tokens * facts.hidden * e


def logits_grad_at_head(facts: ModelFacts, s: Setup) -> int:
    """What the loss leaves live while lm_head's backward runs: the fp32 logits gradient,
    or (chunked) one chunk's plus the accumulated hidden-state gradient."""
    if s.loss == "full":
        return s.tokens * facts.vocab * 4
    return loss_tokens(facts, s) * facts.vocab * 4 + s.tokens * facts.hidden * DTYPE_BYTES[s.dtype]


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
    copies = s.adapter_copies and "down_proj" in s.targets
    return T * (2 * e * facts.hidden + ((e + DTYPE_BYTES[s.adapter_dtype]) * facts.intermediate if copies else 0))


def block_input_bytes(facts: ModelFacts, s: Setup) -> int:
    """Bytes per token of a block's input (the residual stream: fp32 under autocast)."""
    return (4 if s.autocast_weights else DTYPE_BYTES[s.dtype]) * facts.hidden


def kept_per_block(facts: ModelFacts, s: Setup) -> list[int]:
    """Device bytes each block keeps until its backward: its saved set, only its input
    (checkpointing), or nothing (activations offloaded to the host)."""
    if s.offload:
        return [0] * facts.layers
    if s.checkpointing:
        return [block_input_bytes(facts, s) * s.tokens] * facts.layers
    return [block_saved(facts, s, first=(k == 0)) * s.tokens + block_casts(facts, s) for k in range(facts.layers)]


def block_casts(facts: ModelFacts, s: Setup) -> int:
    """16-bit weight casts one block saves for backward: autocast's copies of fp32 LoRA
    adapters under 16-bit compute, or of every block linear under bf16-autocast."""
    e = DTYPE_BYTES[s.dtype]
    total = 0
    if s.adapter_copies:
        total += e * s.lora_rank * sum(p.shape[0] + p.shape[1] for p in lora_targets(facts, s.targets))
    if s.autocast_weights:
        total += e * sum(p.numel for p in facts.parameters() if p.linear)
    return total // facts.layers


def head_cast(facts: ModelFacts, s: Setup) -> int:
    """lm_head's bf16 weight cast under bf16-autocast, saved until lm_head's backward."""
    return DTYPE_BYTES[s.dtype] * facts.vocab * facts.hidden if s.autocast_weights else 0


def saved_activations(facts: ModelFacts, s: Setup) -> int:
    """Everything saved for backward at the end of the forward, logits and loss excluded."""
    return sum(kept_per_block(facts, s)) + final_saved(facts, s) * s.tokens + rope_bytes(facts, s) + head_cast(facts, s)


def host_activations(facts: ModelFacts, s: Setup) -> int:
    """Host bytes of offloaded activations: every block's saved set (or input when checkpointing)."""
    if not s.offload:
        return 0
    per_block = block_input_bytes(facts, s) * s.tokens if s.checkpointing else None
    return sum(per_block if per_block is not None else block_saved(facts, s, first=(k == 0)) * s.tokens
               + block_casts(facts, s) for k in range(facts.layers))


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
    # a checkpointed block recomputes its saved set; an offloaded one copies it back
    recomputed = [block_saved(facts, s) * T + block_casts(facts, s) if (s.checkpointing or s.offload) else 0
                  for _ in kept]
    rope = rope_bytes(facts, s)
    base = saved_activations(facts, s)
    stepping = grads.stepping if in_backward else None
    points = {"forward (at the loss)": base + loss_forward(facts, s),
              "backward (loss gradient)": base + loss_backward(facts, s),
              "backward (lm_head)": base + logits_grad_at_head(facts, s) + (stepping["head"] if stepping else grads.head)}
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
