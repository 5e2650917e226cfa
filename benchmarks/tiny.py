"""The random tiny Llama the CPU benchmarks run on (weights do not matter for speed)."""

from __future__ import annotations

import torch


def tiny_llama(layers: int, hidden: int = 128, intermediate: int = 256, max_positions: int = 16384):
    """A random-weight Llama: ``layers`` layers, 4 query / 2 KV heads, byte-sized vocab, eval mode."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=320, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
    )
    return tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
