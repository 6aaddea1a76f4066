#!/usr/bin/env python3
"""Print the inverse frequencies transformers computes for Llama 3.2 1B's rope (head_dim 64,
rope_theta 500000, rope_scaling llama3: factor 32, low_freq_factor 1, high_freq_factor 4,
original_max_position_embeddings 8192), the values hard-coded in tests/ops_rope.rs
(`llama3_inv_freq_matches_reference_and_transformers`). transformers computes them in float32.

Not run in CI (needs torch + transformers):

    python3 scripts/rope_llama3_inv_freq.py
"""
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

config = LlamaConfig(
    hidden_size=2048,
    num_attention_heads=32,
    rope_theta=500000.0,
    max_position_embeddings=131072,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
)
inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
assert attention_factor == 1.0
for i in [0, 5, 10, 15, 16, 17, 18, 19, 22, 31]:
    print(i, repr(float(inv_freq[i])))
