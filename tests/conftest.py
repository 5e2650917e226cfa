"""Shared fixtures: tiny random-weight models of each supported family (built from configs, no download)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "phi3")


def tiny_config(family: str, layers: int = 3, heads: int = 4, kv_heads: int = 2, head_dim: int = 16):
    import transformers as tf

    common = dict(
        vocab_size=97,
        hidden_size=heads * head_dim,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    cls = {
        "llama": tf.LlamaConfig,
        "qwen2": tf.Qwen2Config,
        "qwen3": tf.Qwen3Config,
        "mistral": tf.MistralConfig,
        "gemma": tf.GemmaConfig,
        "phi3": tf.Phi3Config,
    }[family]
    extra = {}
    if family in ("qwen3", "gemma", "mistral"):
        extra["head_dim"] = head_dim
    if family in ("qwen2", "qwen3", "mistral"):
        extra["sliding_window"] = None
        extra["use_sliding_window"] = False
    config = cls(**common, **extra)
    if family == "mistral":
        config.sliding_window = None
    return config


def tiny_model(family: str = "llama", seed: int = 0, **kwargs):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **kwargs), attn_implementation="sdpa")
    model.eval()
    return model


@pytest.fixture(scope="session")
def llama():
    return tiny_model("llama")
