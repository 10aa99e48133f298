"""Shared tiny configs and tolerances for the planner tests."""

# Tolerances (see the issue): the simulation runs the same program as the measured step,
# on fake tensors, so it may differ only where fake tensors take another path (3%); the
# analytic timeline is a model of that program (10%).
SIMULATED_VS_MEASURED = 0.03
ANALYTIC_VS_SIMULATED = 0.10

# Llama-style configs, hidden 64-128, 2 layers (GQA: 4 heads, 2 kv heads).
TINY_UNTIED = dict(model_type="llama", hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False,
                   max_position_embeddings=512)
TINY_TIED = dict(TINY_UNTIED, hidden_size=128, intermediate_size=352, vocab_size=256, tie_word_embeddings=True)

# The simulate/measure/analytic matrix: config, method, optimizer, batch, seq, checkpointing, in_backward
MATRIX = [
    (TINY_UNTIED, "full", "adamw_32bit", 1, 32, False, False),
    (TINY_UNTIED, "full", "adamw_32bit", 4, 64, True, False),
    (TINY_TIED, "full", "adamw_8bit", 4, 64, False, False),
    (TINY_TIED, "full", "adamw_8bit", 2, 32, True, True),
    (TINY_TIED, "full", "adafactor", 2, 48, True, False),
    (TINY_UNTIED, "full", "lion_8bit", 1, 32, False, True),
    (TINY_TIED, "full", "torch:adamw", 4, 64, False, False),
    (TINY_UNTIED, "lora", "adamw_32bit", 4, 64, False, False),
    (TINY_TIED, "lora", "adamw_8bit", 1, 32, True, False),
    (TINY_TIED, "lora", "adafactor", 4, 64, True, False),
    (TINY_UNTIED, "lora", "lion_8bit", 2, 48, True, False),
    (TINY_TIED, "lora", "torch:adamw", 1, 32, True, False),
    (TINY_UNTIED, "full", "muon_8bit", 2, 32, False, False),  # routed: embedding + head run AdamW
]
# QLoRA: bitsandbytes 4-bit runs on CPU but not on fake tensors: analytic vs measured only.
# config, optimizer, batch, seq, checkpointing
QLORA_MATRIX = [(TINY_UNTIED, "adamw_8bit", 4, 64, False), (TINY_TIED, "adamw_32bit", 2, 48, True)]


def case_id(case) -> str:
    cfg, method, optim, batch, seq, ckpt, inb = case
    return (f"{'tied' if cfg['tie_word_embeddings'] else 'untied'}-{method}-{optim}-{batch}x{seq}"
            + ("-ckpt" if ckpt else "") + ("-inbwd" if inb else ""))


def qlora_case(case) -> tuple:
    """A QLORA_MATRIX row as a MATRIX row."""
    cfg, optim, batch, seq, ckpt = case
    return (cfg, "qlora", optim, batch, seq, ckpt, False)
