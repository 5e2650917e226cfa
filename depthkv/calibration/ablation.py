"""``depthkv.calibrate``: per-layer sensitivity by one-layer-at-a-time ablation.

For each example and each layer ``l``, only layer ``l`` is pruned to the ablation budget (every other
layer keeps its full cache) and the degradation against the full cache is recorded
(:mod:`depthkv.calibration.metrics`). The context is prefilled once per example (eviction happens
after attention, so the prefill is the same for every ablation; each layer's policy scores are
recorded on the way), and each ablation then runs only the tokens after the context through layers
``>= l``, replaying the full run's output of layer ``l - 1`` for the layers below (they cannot see
the pruning): :mod:`depthkv.calibration.engine`. See ``benchmarks/test_calibrate_reuse.py`` for the
saving over re-running everything.

The partial profile is written to the checkpoint after every example; a run with the same
checkpoint, settings and workload resumes where it stopped. The statistics
(:mod:`depthkv.calibration.stats`) are computed once every example is in.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from depthkv.calibration.engine import (
    Engine,
    NonFiniteError,
    check_compress,
    first_nonfinite_layer,
    nonfinite_message,
    workload_items,
)
from depthkv.calibration.metrics import Degradation, check_metric
from depthkv.calibration.stats import layer_stats
from depthkv.distributed import agree, barrier, gather_in_order, world
from depthkv.faults import failpoint
from depthkv.files import exclusive_lock, remove_stale_temporaries
from depthkv.policies import PolicyConfig, as_policy
from depthkv.profile import (
    Budget,
    ModelFingerprint,
    Profile,
    budget_tokens,
    check_budget,
    fingerprint,
    round_tokens,
)
from depthkv.runtime.attention import depthkv_attention_enabled
from depthkv.runtime.devices import model_dtype

__all__ = ["ablation_tokens", "calibrate", "compute_stats", "shard_checkpoint"]


def ablation_tokens(budget: Budget, context_tokens: int, floor: int) -> int:
    """Tokens the ablated layer keeps: the budget at this example's context length, at least ``floor``."""
    return max(round_tokens(budget_tokens(budget, context_tokens)), floor)


def _check_budgets(budgets: Sequence[Budget]) -> list[Budget]:
    out = [check_budget(b, "ablation budget") for b in budgets]
    if not out:
        raise ValueError("give at least one ablation budget")
    return out


def _settings(metric: str, compress: str, budgets: list, reuse: bool, extra: int) -> dict:
    """What a resumed run must share with the checkpoint (the policy is the profile's own field)."""
    return {"metric": metric, "compress": compress, "ablation_budgets": budgets, "reuse": reuse, "extra_tokens": extra}


def _resume(
    checkpoint: str | os.PathLike, model: Any, settings: dict, policy: PolicyConfig, description: dict
) -> Profile | None:
    if not os.path.exists(checkpoint):
        return None
    partial = Profile.load(checkpoint, model=model)
    if partial.settings != settings or partial.policy != policy:
        raise ValueError(
            f"checkpoint {checkpoint} was made with other settings ({partial.settings}, policy {partial.policy}) "
            f"than this run ({settings}, policy {policy}); use another checkpoint path or the same settings to resume"
        )
    if partial.workload != description:
        raise ValueError(
            f"checkpoint {checkpoint} was made on another workload ({partial.workload.get('name')!r}); "
            "use another checkpoint path or the same workload to resume"
        )
    return partial


def calibrate(
    model: Any,
    tokenizer: Any,
    workload: Any,
    *,
    ablation_budget: Budget | Sequence[Budget] = 0.2,
    metric: str = "nll",
    policy: PolicyConfig | str | None = None,
    compress: str = "context",
    checkpoint: str | os.PathLike | None = None,
    n_permutations: int = 10_000,
    seed: int = 0,
    reuse: bool = True,
    scorer: Callable[[Any, str], float] | None = None,
    extra_tokens: int = 0,
    progress: bool = True,
    distributed: bool = True,
) -> Profile:
    """Measure each layer's sensitivity to KV pruning on ``workload``.

    Args:
        model: a ``transformers`` causal LM in eval mode (its attention implementation is switched to
            ``depthkv`` for the run and restored afterwards).
        tokenizer: a HF tokenizer (or :class:`depthkv.workload.ByteTokenizer`).
        workload: a :class:`depthkv.Workload` or a list of examples with ``context``, ``question`` and
            ``answer`` strings.
        ablation_budget: tokens kept by the ablated layer (:mod:`depthkv.profile.budget`): a float in
            (0, 1] is a fraction of each example's context, an int a token count; a list measures
            sensitivity curves (for the ``greedy`` strategy); the first entry is the primary budget.
        metric: ``"nll"`` (default), ``"kl"`` or ``"score"`` (:mod:`depthkv.calibration.metrics`).
        policy: eviction policy (default SnapKV).
        compress: ``"context"`` or ``"prompt"`` (:mod:`depthkv.calibration.engine`).
        checkpoint: a JSON path; the partial profile is written there after every example, and a run
            with the same path, settings and workload resumes where it stopped, with the same
            result as an uninterrupted run (tested with SIGKILL). The run holds ``<checkpoint>.lock``
            (:func:`depthkv.files.exclusive_lock`): a second run on the same path refuses at once.
        n_permutations: permutation-test size; ``seed`` its seed.
        reuse: replay the layers below the ablated one (equal results up to float rounding; False
            for the benchmark). Recorded in the settings: a checkpoint resumes with the same value.
        scorer: ``scorer(example, prediction) -> float`` for ``metric="score"`` (default:
            :func:`depthkv.workload.score`).
        extra_tokens: extra tokens generated beyond the answer length for ``metric="score"``.
        progress: show a progress bar.
        distributed: inside an initialised ``torch.distributed`` process group (``torchrun``),
            split the examples over the ranks (:mod:`depthkv.distributed`): rank ``r`` measures
            examples ``r, r + N, ...`` and checkpoints them to :func:`shard_checkpoint` (a restarted
            job with the same number of ranks resumes from there), the rows are gathered in
            workload order, every rank returns the profile a single process makes (same matrix,
            statistics and workload fingerprint) and rank 0 writes it to ``checkpoint``. False
            measures every example on every rank.

    Returns:
        A complete :class:`Profile` with the degradation matrix and statistics.
    """
    check_metric(metric)
    check_compress(compress)
    budgets = _check_budgets(ablation_budget if isinstance(ablation_budget, (list, tuple)) else [ablation_budget])
    pol = as_policy(policy)
    items, description = workload_items(workload)
    fp = fingerprint(model)  # an unsupported model is refused before any work
    settings = _settings(metric, compress, budgets, reuse, extra_tokens)
    run = _Run(model, tokenizer, fp, description, budgets, metric, pol, compress, reuse, scorer, extra_tokens, progress)
    rank, size = world() if distributed else (0, 1)
    if size > 1:
        return _calibrate_sharded(run, items, settings, checkpoint, n_permutations, seed, rank, size)
    lock = exclusive_lock(checkpoint, "calibrating") if checkpoint else contextlib.nullcontext()
    with lock:
        profile = _measure(run, items, checkpoint=checkpoint, settings=settings)
        profile.stats = compute_stats(profile, n_permutations=n_permutations, seed=seed)
        if checkpoint:
            profile.save(checkpoint)
        return profile


def shard_checkpoint(checkpoint: str | os.PathLike, rank: int, size: int) -> Path:
    """Where rank ``rank`` of ``size`` checkpoints its shard of a run whose profile goes to
    ``checkpoint``: ``profile.json`` -> ``profile.rank0-of-2.json`` beside it."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.rank{rank}-of-{size}{path.suffix or '.json'}")


@dataclass(frozen=True)
class _Run:
    """What every example of one calibration is measured with (the arguments of :func:`calibrate`)."""

    model: Any
    tokenizer: Any
    fp: ModelFingerprint
    description: dict
    budgets: list
    metric: str
    policy: PolicyConfig
    compress: str
    reuse: bool
    scorer: Callable[[Any, str], float] | None
    extra_tokens: int
    progress: bool

    def profile(self, rows: Sequence[np.ndarray], lengths: list, baseline: list, settings: dict, complete: bool) -> Profile:
        """The profile of the examples measured so far: ``rows`` are their ``[budgets, layers]`` rows."""
        deg = np.stack(rows, axis=1) if len(rows) else np.zeros((len(self.budgets), 0, self.fp.num_layers))
        return Profile(
            fingerprint=self.fp,
            metric=self.metric,
            ablation_budgets=self.budgets,
            degradation=deg,
            context_lengths=lengths,
            baseline=baseline,
            policy=self.policy,
            workload=self.description,
            complete=complete,
            settings=settings,
        )


def _examples(profile: Profile, indices: Sequence[int]) -> list[tuple[np.ndarray, int, float]]:
    """``(row [budgets, layers], context length, baseline)`` of ``profile``'s examples ``indices``."""
    rows = np.moveaxis(profile.degradation, 1, 0)
    return [(rows[i], profile.context_lengths[i], profile.baseline[i]) for i in indices]


def _calibrate_sharded(
    run: _Run, items: list, settings: dict, checkpoint, n_permutations: int, seed: int, rank: int, size: int
) -> Profile:
    """:func:`calibrate` inside a process group: rank ``r`` measures examples ``r, r + size, ...``
    (checkpointing them to :func:`shard_checkpoint`, from which a restarted job resumes), the rows
    are gathered in workload order, and every rank gets the profile one process would have made;
    rank 0 writes it to ``checkpoint``."""
    run = replace(run, progress=run.progress and rank == 0)  # one progress bar: rank 0's
    agree("this calibration run", workload=run.description, settings=settings, policy=run.policy.to_dict(),
          model=run.fp.to_dict(), checkpoint=str(checkpoint))
    with contextlib.ExitStack() as stack:

        def work(indices: list[int]) -> list[tuple[np.ndarray, int, float]]:
            done = _completed(checkpoint, run.model, settings, run.policy, run.description) if checkpoint else None
            if done is not None:  # the whole profile is already there: this shard's rows from it
                return _examples(done, indices)
            part = None
            if checkpoint:
                if rank == 0:
                    stack.enter_context(exclusive_lock(checkpoint, "calibrating"))
                part = shard_checkpoint(checkpoint, rank, size)
                stack.enter_context(exclusive_lock(part, "calibrating"))
            shard_settings = {**settings, "shard": {"rank": rank, "ranks": size}}
            mine = _measure(run, [items[i] for i in indices], checkpoint=part, settings=shard_settings, numbers=indices)
            return _examples(mine, range(len(indices)))

        gathered = gather_in_order(len(items), work)
        rows, lengths, baseline = (list(column) for column in zip(*gathered)) if gathered else ([], [], [])
        profile = run.profile(rows, lengths, baseline, settings, complete=True)
        profile.stats = compute_stats(profile, n_permutations=n_permutations, seed=seed)
        if checkpoint:
            if rank == 0:
                profile.save(checkpoint)
            barrier()  # the whole profile is on disk: the shards are no longer needed
            with contextlib.suppress(FileNotFoundError):
                os.remove(shard_checkpoint(checkpoint, rank, size))
        return profile


def _completed(checkpoint, model, settings: dict, pol: PolicyConfig, description: dict) -> Profile | None:
    """The complete profile at ``checkpoint`` of this very run, or None."""
    done = _resume(checkpoint, model, settings, pol, description)
    return done if done is not None and done.complete else None


def _measure(
    run: _Run, items: list, *, checkpoint, settings: dict, numbers: Sequence[int] | None = None
) -> Profile:
    """The calibration loop of :func:`calibrate`: every example of ``items`` measured (resuming
    from ``checkpoint``, written after each), as a complete profile without statistics.
    ``numbers`` are the examples' indices in the workload (for error messages)."""
    model, fp, budgets, metric, pol = run.model, run.fp, run.budgets, run.metric, run.policy
    numbers = list(range(len(items))) if numbers is None else list(numbers)
    if checkpoint:
        remove_stale_temporaries(checkpoint)  # left by a run killed while writing the checkpoint
    partial = _resume(checkpoint, model, settings, pol, run.description) if checkpoint else None
    rows: list[np.ndarray] = list(np.moveaxis(partial.degradation, 1, 0)) if partial else []
    lengths = list(partial.context_lengths) if partial else []
    baseline = list(partial.baseline) if partial else []
    if len(rows) > len(items):
        raise ValueError(f"checkpoint {checkpoint} holds {len(rows)} examples, more than the {len(items)} of this run")

    engine = Engine(model, run.tokenizer, pol, run.compress, run.reuse)
    todo = items[len(rows) :]
    engine.check_fits(todo, run.extra_tokens)
    bar = tqdm(total=len(todo) * fp.num_layers * len(budgets), desc="calibrate", unit="ablation", disable=not run.progress)
    try:
        with depthkv_attention_enabled(model), torch.inference_mode():
            for k, item in enumerate(todo, start=len(rows)):
                number = numbers[k]
                example = engine.run(item, record_layers=metric != "score")
                measure = Degradation(example, metric, run.scorer, run.extra_tokens)
                check_finite(measure.baseline, example, number, item, "with the full cache")
                row = np.zeros((len(budgets), fp.num_layers))
                for b, budget in enumerate(budgets):
                    tokens = ablation_tokens(budget, example.context_tokens, pol.floor)
                    for layer in range(fp.num_layers):
                        one = [None] * fp.num_layers
                        one[layer] = tokens
                        row[b, layer] = measure.of(one)
                        check_finite(row[b, layer], example, number, item, f"with layer {layer} pruned to {tokens} tokens")
                        bar.update(1)
                        failpoint("calibrate-ablation")
                rows.append(row)
                lengths.append(example.context_tokens)
                baseline.append(measure.baseline)
                if checkpoint:
                    run.profile(rows, lengths, baseline, settings, complete=False).save(checkpoint)
    finally:
        bar.close()
    return run.profile(rows, lengths, baseline, settings, complete=True)


def check_finite(value: float, run: Any, number: int, item: Any, when: str) -> None:
    """Raise :class:`NonFiniteError` naming the example (and the layer that overflowed) if ``value``
    is NaN or inf, instead of writing a profile of NaNs."""
    if np.isfinite(value):
        return
    dtype = model_dtype(run.engine.model)
    layer = first_nonfinite_layer(run.outputs)
    raise NonFiniteError(nonfinite_message(number, item, run.context_tokens, when, value, layer, dtype))


def compute_stats(profile: Profile, n_permutations: int = 10_000, seed: int = 0) -> dict[str, Any] | None:
    """Permutation test, Friedman test and bootstrap CIs for each ablation budget (None if < 2 examples)."""
    if profile.n_examples < 2 or profile.n_layers < 2:
        return None
    per_budget = [
        layer_stats(profile.matrix(k), n_permutations=n_permutations, seed=seed).to_dict()
        for k in range(len(profile.ablation_budgets))
    ]
    return {"by_budget": per_budget}
