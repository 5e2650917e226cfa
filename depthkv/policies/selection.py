"""Eviction policies, part 2: which slots a layer keeps (:func:`select`).

Scores come from :func:`depthkv.policies.scores.score`; selection adds the slots every policy
always keeps (the observation window, and ``streaming``'s sinks) and the tie-breaking rules.
"""

from __future__ import annotations

import torch

from depthkv.policies.config import PolicyConfig

__all__ = ["select"]


def _mark_extreme(positions: torch.Tensor, valid: torch.Tensor, count: int, largest: bool) -> torch.Tensor:
    """Bool ``[B, Hkv, N]``: the ``count`` valid slots with the largest (or smallest) positions."""
    marked = torch.zeros_like(valid)
    count = min(count, positions.shape[-1])
    if count == 0:
        return marked
    info = torch.iinfo(torch.int64)
    key = positions.masked_fill(~valid, info.min if largest else info.max)
    order = torch.argsort(key, dim=-1, descending=largest, stable=True)[..., :count]
    return marked.scatter(-1, order, True) & valid


def _forced(cfg: PolicyConfig, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    forced = _mark_extreme(positions, valid, cfg.window, largest=True)
    if cfg.name == "streaming":
        forced |= _mark_extreme(positions, valid, cfg.sinks, largest=False)
    return forced


def _rank(tier: torch.Tensor, scores: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Slot indices ordered by (tier desc, score desc, position desc, slot index asc).

    Lexicographic order from stable sorts, least significant key first, so the result never
    depends on how ``topk`` happens to order ties.
    """
    order = torch.argsort(positions, dim=-1, descending=True, stable=True)
    for key in (scores, tier):
        order = order.gather(-1, torch.argsort(key.gather(-1, order), dim=-1, descending=True, stable=True))
    return order


def select(
    cfg: PolicyConfig,
    scores: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
    budget: int,
) -> torch.Tensor:
    """Indices of the ``budget`` slots to keep, per batch row and KV head.

    Ranking, per ``(b, kv head)``:

    1. *forced* slots: the ``window`` valid slots with the largest positions, plus for
       ``streaming`` the ``sinks`` valid slots with the smallest positions;
    2. the other valid slots by score, descending. **Ties in score go to the later position**
       (larger position first; equal positions: lower slot index first). NaN scores count as
       ``-inf``; ``±inf`` are ordinary extremes;
    3. invalid slots (padding, never a real token) last; they are kept only when fewer than
       ``budget`` valid slots exist.

    The first ``budget`` slots of that ranking are returned sorted by ascending position. If
    ``N <= budget`` nothing needs evicting and the result is ``arange(N)`` (slot order).

    Args:
        cfg: the policy (its ``window``, ``sinks`` and ``floor`` matter here).
        scores: ``[B, Hkv, N]`` from :func:`score`, any float dtype.
        positions: ``[B, Hkv, N]`` integer logical positions.
        valid: ``[B, Hkv, N]`` bool, False = padding / empty slot.
        budget: number of slots to keep, ``>= cfg.floor``.

    Returns:
        int64 ``[B, Hkv, min(budget, N)]``.
    """
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise ValueError(f"budget must be an int, got {budget!r}")
    if budget < cfg.floor:
        raise ValueError(
            f"budget {budget} is below the floor {cfg.floor} of policy {cfg.name!r} "
            f"(window {cfg.window}" + (f" + sinks {cfg.sinks}" if cfg.name == "streaming" else "") + ")"
        )
    if (
        scores.dim() != 3
        or tuple(positions.shape) != tuple(scores.shape)
        or tuple(valid.shape) != tuple(scores.shape)
    ):
        raise ValueError(
            f"scores, positions and valid must all be [B, Hkv, N]; got {tuple(scores.shape)}, "
            f"{tuple(positions.shape)}, {tuple(valid.shape)}"
        )
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")
    if positions.is_floating_point() or positions.is_complex():
        raise ValueError(f"positions must be an integer tensor, got {positions.dtype}")
    b, hkv, n = scores.shape
    if n <= budget:
        return torch.arange(n, device=scores.device).expand(b, hkv, n).contiguous()

    positions = positions.long()
    s = scores.float()
    s = torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)
    tier = valid.long() + _forced(cfg, positions, valid).long()
    chosen = _rank(tier, s, positions)[..., :budget]
    by_position = torch.argsort(positions.gather(-1, chosen), dim=-1, stable=True)
    return chosen.gather(-1, by_position)
