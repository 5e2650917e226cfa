"""The two decode modes of a budgeted cache: ``evict`` and ``append``.

* ``evict`` — the budget is fixed for ever: after the prompt is compressed, every generated token
  takes a free slot or replaces the lowest-scoring slot outside the protected window. Memory never
  grows, whatever the length of the conversation: for long multi-turn sessions and agents.
* ``append`` — the setting the KV-compression literature evaluates (SnapKV, PyramidKV, Ada-KV):
  the prompt is compressed to the budget once, and generated tokens are appended to a reserved
  tail with no eviction while decoding. The decode step is plain masked attention over a smaller
  buffer. For one-shot answers of a known maximum length. A new multi-token step (a new turn)
  compresses everything back to the budget and empties the tail.
"""

from __future__ import annotations

__all__ = ["MODES", "check_mode"]

MODES: tuple[str, ...] = ("evict", "append")


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`; else a ``ValueError`` naming them."""
    if mode not in MODES:
        raise ValueError(f"unknown decode mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode
