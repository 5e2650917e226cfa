"""Models and pre-filled caches for the decode benchmarks (CPU here, GPU in ``gpu.py``).

A decode step's cost does not depend on what the cached keys and values are, so the caches are
filled with random K/V "as if" a ``context``-token prompt had been read: no long prefill is run.
A budgeted layer holds ``budget`` tokens at sorted random positions that end with the most recent
ones (what a policy's observation window keeps); in append mode the reserved tail stays empty.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SHAPES", "fill_budget_cache", "fill_static_cache", "llama_shaped", "weight_bytes"]

# name -> LlamaConfig fields. tiny-llama: the shape of the bundled tiny model family; smollm2-135m:
# SmolLM2-135M's real dimensions (30 layers, 9 query / 3 KV heads, head dim 64, tied embeddings).
SHAPES: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(
        vocab_size=320, hidden_size=128, intermediate_size=384, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2,
    ),
    "smollm2-135m": dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
        rope_theta=100000.0,
    ),
}


def llama_shaped(name: str, max_positions: int, dtype: torch.dtype = torch.float32, **overrides: Any) -> Any:
    """A random-weight Llama of shape ``SHAPES[name]`` (eval mode, SDPA attention)."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(**{**SHAPES[name], **overrides}, max_position_embeddings=max_positions)
    return tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype).eval()


def weight_bytes(model: Any) -> int:
    """Bytes of the model's parameters (tied weights once): what one decode step must read."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def fill_static_cache(model: Any, context: int, max_len: int, batch: int = 1, seed: int = 0) -> Any:
    """A transformers ``StaticCache`` holding ``context`` random tokens (``max_len`` slots per layer)."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=max_len)
    device = next(model.parameters()).device
    with torch.no_grad():
        model(torch.ones((batch, 1), dtype=torch.long, device=device), cache=cache, use_cache=True)
    g = torch.Generator(device=device).manual_seed(seed)
    for layer in cache.layers:
        layer.keys.normal_(generator=g)
        layer.values.normal_(generator=g)
        layer.cumulative_length.fill_(context)
    return cache


def fill_budget_cache(
    model: Any, plan: Any, context: int, max_len: int, *, batch: int = 1, mode: str = "evict",
    max_new_tokens: int | None = None, impl: str = "reference", window: int = 8, seed: int = 0,
) -> Any:
    """A :class:`~depthkv.StaticBudgetCache` for ``plan`` as if ``context`` tokens had been read."""
    from depthkv import StaticBudgetCache

    cache = StaticBudgetCache.for_model(
        model, plan, batch_size=batch, max_len=max_len, mode=mode, max_new_tokens=max_new_tokens, impl=impl
    )
    g = torch.Generator().manual_seed(seed)
    for layer in cache.layers:
        kept = min(layer.budget, context)
        older = torch.randperm(context - window, generator=g)[: kept - window].sort().values
        positions = torch.cat([older, torch.arange(context - window, context)])
        for buf in (layer.keys, layer.values):
            part = buf[:, :, :kept]
            part.copy_(torch.randn(part.shape, generator=g, dtype=torch.float32).to(part))
        layer.positions[:, :, :kept] = positions.to(layer.positions.device)
        layer.scores[:, :, :kept] = torch.rand(kept, generator=g).to(layer.scores.device)
        layer.seen.fill_(context)
    return cache
