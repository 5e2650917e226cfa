"""Calibration: each layer's measured sensitivity to KV pruning, and whether the layers really differ.

* :mod:`~depthkv.calibration.engine` — the measurement engine (one prefill per example, pruned
  caches derived from it), shared with plan checks and evaluation.
* :mod:`~depthkv.calibration.metrics` — how much worse an example gets (``nll``, ``kl``, ``score``).
* :mod:`~depthkv.calibration.replay` — the full run's hidden states replayed below a pruned layer.
* :mod:`~depthkv.calibration.ablation` — :func:`calibrate` (checkpointed, resumable).
* :mod:`~depthkv.calibration.stats` — permutation test, Friedman test, bootstrap CIs.
"""

from depthkv.calibration.ablation import calibrate, compute_stats, shard_checkpoint
from depthkv.calibration.stats import (
    LayerStats,
    bootstrap_mean_ci,
    friedman_test,
    layer_stats,
    permutation_test,
)

__all__ = [
    "LayerStats",
    "bootstrap_mean_ci",
    "calibrate",
    "compute_stats",
    "friedman_test",
    "layer_stats",
    "permutation_test",
    "shard_checkpoint",
]
