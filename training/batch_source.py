"""Training batches made ahead of time in worker processes, identical for any number of workers.

Making a batch is Python (one CPU core): about 1% of a CPU training step but most of a GPU step
with large batches (``data_share`` in ``training.json``). ``AheadBatches`` keeps the batches of the
next steps in flight in a process pool while the accelerator trains on the current one.

Reproducibility does not depend on timing or on the worker count: the batch of step ``k`` is a pure
function ``make(k, stage)`` (its own seed per step), and a batch made ahead for a stage the
curriculum has since left is thrown away and made again for the current one. Workers are started
with ``spawn`` (safe after CUDA has been initialised in the parent).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any


class AheadBatches:
    """``get(step, stage)`` returns ``make(step, stage)``, computed in ``workers`` processes up to
    ``depth`` steps ahead (default ``2 * workers``) assuming the stage stays the same.

    ``make`` must be a picklable top-level function. Use as a context manager, or call ``close``.
    """

    def __init__(self, make: Callable[[int, int], Any], workers: int, depth: int | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers} (0 workers: call make directly)")
        self.make = make
        self.depth = depth if depth is not None else 2 * workers
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        self.pending: dict[int, tuple[int, Future]] = {}
        self.remade = 0  # batches made ahead for a stage that had ended by their step

    def get(self, step: int, stage: int) -> Any:
        for k in [k for k, (s, _) in self.pending.items() if k < step or s != stage]:
            _, future = self.pending.pop(k)
            if not future.cancel():
                self.remade += k >= step
        for k in range(step, step + self.depth + 1):
            if k not in self.pending:
                self.pending[k] = (stage, self.pool.submit(self.make, k, stage))
        _, future = self.pending.pop(step)
        return future.result()

    def close(self) -> None:
        for _, future in self.pending.values():
            future.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> AheadBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
