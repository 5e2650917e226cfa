"""Shared set-up: tiny random-weight models of each supported family (built from configs, no download).

Triton kernels run natively where CUDA is present and under the Triton interpreter elsewhere
(``TRITON_INTERPRET=1``, set here before any kernel module is imported); ``make test-gpu`` runs the
kernel tests natively and fails without CUDA. Hypothesis runs derandomized (the same examples every
run) with no example database, so it writes nothing into the repository.
"""

from __future__ import annotations

import os

import torch
from hypothesis import settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile("depthkv", derandomize=True, database=None, print_blob=True)
settings.load_profile("depthkv")

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


def set_attention_scale(model, scaling: float) -> None:
    """Give every attention module of ``model`` the softmax scale ``scaling`` (as Gemma 2/3's
    ``query_pre_attn_scalar`` does), instead of ``head_dim ** -0.5``."""
    for module in model.modules():
        if hasattr(module, "scaling") and hasattr(module, "layer_idx"):
            module.scaling = scaling
