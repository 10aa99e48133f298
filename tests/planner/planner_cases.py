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
