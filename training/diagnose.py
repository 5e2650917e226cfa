"""Where a model's multi-item answers go wrong: recall and per-position accuracy by item count.

The multi-item tasks (``niah_multiquery``: several keys in one question, answered in question
order; ``niah_multivalue``: one key written several times, answered in context order) are scored
by recall, which does not say *how* an answer fails. This runs each task at several item counts
(the built-in workload always uses 4) and reports, per count, the recall and, for each position
``j`` of the answer, how often the prediction's ``j``-th item is the answer's ``j``-th item. A model
that answers a 4-key question as if it had 3 keys shows it at once: its last position is right and
the first three are wrong (training/LOG.md has what it showed while the recipes v5-v7 were made).

Run from the repository root (``--model`` takes a shipped model name or a checkpoint folder)::

    python -m training.diagnose --model tiny-qwen2 --length 512 --n 24
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence

from depthkv.workload.needle import niah_multiquery, niah_multivalue
from depthkv.workload.scoring import answer_items, answer_text, score

# The tasks whose item count is a generator argument.
COUNTED = {"niah_multiquery": niah_multiquery, "niah_multivalue": niah_multivalue}

Predict = Callable[[str, int], str]  # (prompt, max new tokens) -> continuation


def item_positions(
    predict: Predict,
    task: str,
    counts: Sequence[int],
    context_length: int,
    n: int,
    seed: int = 0,
) -> dict[int, dict]:
    """For each item count in ``counts``: ``{"n", "recall", "position_exact": [p_0, ...]}`` over
    ``n`` examples of ``task`` at ``context_length`` characters (their own random stream per task,
    count and ``seed``; disjoint from nothing in particular, so use it to diagnose, not to score).

    ``predict(prompt, max_new_tokens)`` returns the model's continuation of ``prompt``; it gets
    room for the answer's tokens plus 2, as the card's evaluation does. ``recall`` is the task's
    score (``depthkv.workload.score``); ``position_exact[j]`` is the share of examples whose predicted
    ``j``-th item (first line, split into items as the scorer splits them) equals the answer's
    ``j``-th item."""
    if task not in COUNTED:
        raise ValueError(f"unknown task {task!r} for item positions; known: {', '.join(COUNTED)}")
    if n < 1 or not counts or min(counts) < 1:
        raise ValueError(f"need n >= 1 and item counts >= 1, got n={n}, counts={list(counts)}")
    out = {}
    for count in counts:
        rng = random.Random(f"depthkv-diagnose/{task}/{count}/{seed}")
        recall, hits = 0.0, [0] * count
        for _ in range(n):
            example = COUNTED[task](rng, context_length, count)
            # One token per character with the byte tokenizer: the card's budget (answer + 2).
            prediction = predict(example.prompt, len(example.answer) + 2)
            recall += score(example, prediction)
            got = answer_items(answer_text(example, prediction))
            for j, item in enumerate(answer_items(example.answer)):
                hits[j] += j < len(got) and got[j] == item
        out[count] = {"n": n, "recall": recall / n, "position_exact": [h / n for h in hits]}
    return out


def greedy_predictor(model, tokenizer) -> Predict:
    """``predict`` for a causal LM: greedy decoding with the full cache."""
    from training.train import greedy_continuation

    return lambda prompt, max_new_tokens: greedy_continuation(model, tokenizer, prompt, max_new_tokens)


def table(task: str, rows: dict[int, dict]) -> str:
    """A markdown table of ``item_positions``' result."""
    lines = [
        f"{task}:",
        "",
        "| items | n | recall | exact at position 1, 2, ... |",
        "|---:|---:|---:|---|",
    ]
    for count, row in rows.items():
        positions = " / ".join(f"{p:.2f}" for p in row["position_exact"])
        lines.append(f"| {count} | {row['n']} | {row['recall']:.3f} | {positions} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import torch

    from depthkv.models import load_model

    parser = argparse.ArgumentParser(prog="python -m training.diagnose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-qwen2", help="shipped model name or checkpoint directory")
    parser.add_argument("--length", type=int, default=512, help="context length in characters")
    parser.add_argument("--n", type=int, default=24, help="examples per task and item count")
    parser.add_argument("--counts", type=int, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--tasks", nargs="+", default=list(COUNTED), choices=list(COUNTED))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    predict = greedy_predictor(model, tokenizer)
    print(f"{args.model} at {args.length} characters, greedy, full cache")
    for task in args.tasks:
        rows = item_positions(predict, task, args.counts, args.length, args.n, args.seed)
        print()
        print(table(task, rows))


if __name__ == "__main__":
    main()
