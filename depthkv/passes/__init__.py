"""FX passes of depthkv's torch.compile backend."""

from .attention_nodes import AttentionSite, UnsupportedAttentionError, find_attention
from .specialize import PassReport, specialize_budgets

__all__ = ["AttentionSite", "PassReport", "UnsupportedAttentionError", "find_attention", "specialize_budgets"]
