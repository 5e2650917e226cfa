"""Runs split over processes with ``torch.distributed``: which examples are this rank's, and gathering.

``torchrun --nproc-per-node N -m depthkv calibrate ...`` starts N processes; the command line joins
them into a process group (:func:`init_from_env`), and :func:`depthkv.calibrate` /
:func:`depthkv.evaluate` called inside an initialised group give each rank every N-th example
(:func:`shard`), measure those, and gather the per-example results to every rank in workload order
(:func:`gather_in_order`). Only Python objects travel (per-example rows and scores, a few KB), so
the exchange runs over a gloo group even when the job's own group is NCCL.

A rank that fails does not leave the others waiting: every rank reaches the gather with either its
results or its error, and every rank then raises (:class:`RankFailedError` naming the failed rank,
or the failed rank's own exception).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["RankFailedError", "agree", "barrier", "gather_in_order", "init_from_env", "local_device", "shard", "world"]

T = TypeVar("T")
_GLOO: dict[int, Any] = {}


class RankFailedError(RuntimeError):
    """Another rank of a distributed run failed; the message names it and its error."""


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def init_from_env() -> bool:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) over
    gloo, when launched with more than one process and no group exists yet. Returns whether it did."""
    if launched_world_size() <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    dist.init_process_group(backend="gloo")
    return True


def local_device(device: str | torch.device) -> torch.device:
    """``device``, where a bare ``"cuda"`` under torchrun is this rank's own GPU (``cuda:LOCAL_RANK``)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return dev


def shard(n: int, rank: int, size: int) -> list[int]:
    """The indices of ``n`` items that rank ``rank`` of ``size`` takes: every ``size``-th one from
    ``rank`` (round robin, so tasks listed one after another spread over every rank)."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} of a world of {size}: need 0 <= rank < size and size >= 1")
    return list(range(rank, n, size))


def _group() -> Any:
    """The group objects travel over: the default one if it is gloo, else a gloo group of all ranks
    (made once per default group; every rank makes it at the same call, as torch requires)."""
    if dist.get_backend() == "gloo":
        return None
    key = id(dist.group.WORLD)
    if key not in _GLOO:
        _GLOO[key] = dist.new_group(backend="gloo")
    return _GLOO[key]


def _all_gather(obj: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_group())
    return out


def gather_in_order(n: int, work: Callable[[list[int]], Sequence[T]]) -> list[T]:
    """Run ``work(indices)`` on this rank's shard of ``n`` items and return every rank's results
    merged into item order (on every rank). Without a process group: ``work(range(n))``.

    Args:
        n: number of items.
        work: maps this rank's item indices (:func:`shard`) to one result per index.

    Raises:
        RankFailedError: another rank's ``work`` raised (named with its rank and error); the rank
            whose ``work`` raised re-raises its own exception after the gather.
    """
    rank, size = world()
    mine = shard(n, rank, size)
    if size == 1:
        return list(work(mine))
    error: BaseException | None = None
    try:
        results = list(work(mine))
        if len(results) != len(mine):
            raise RuntimeError(f"work returned {len(results)} results for {len(mine)} items")
        payload: tuple[str, Any] = ("ok", results)
    except Exception as exc:  # every rank must reach the gather, or the others wait forever
        error = exc
        payload = ("error", f"{type(exc).__name__}: {exc}")
    gathered = _all_gather(payload)
    if error is not None:
        raise error
    failed = [(r, msg) for r, (status, msg) in enumerate(gathered) if status == "error"]
    if failed:
        r, msg = failed[0]
        raise RankFailedError(f"rank {r} of {size} failed: {msg}")
    merged: list[Any] = [None] * n
    for r, (_, results) in enumerate(gathered):
        for index, result in zip(shard(n, r, size), results):
            merged[index] = result
    return merged


def barrier() -> None:
    """Wait until every rank gets here (nothing without a process group)."""
    if world()[1] > 1:
        dist.barrier(group=_group())


def agree(what: str, **parts: Any) -> None:
    """Raise ``ValueError`` on every rank unless every rank passes equal ``parts`` (named values;
    the message names the first that differs, ``what`` the run); nothing without a process group."""
    rank, size = world()
    if size == 1:
        return
    gathered = _all_gather(parts)
    for name in parts:
        differ = [r for r, p in enumerate(gathered) if p.get(name) != gathered[0].get(name)]
        if differ:
            mine, theirs = (_short(gathered[r].get(name)) for r in (0, differ[0]))
            raise ValueError(
                f"the ranks of {what} disagree on its {name}: rank 0 has {mine}, rank {differ[0]} has {theirs}; every "
                "rank must run the same command on the same inputs (or, from Python, pass distributed=False to "
                "measure everything on each rank alone)"
            )


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
