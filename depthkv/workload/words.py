"""Word-frequency extraction tasks (RULER's CWE and FWE).

The context is a list of random 4-letter lowercase words, 8 per line, separated by spaces. The
question ``"\\n?topK:"`` asks for the K most frequent words, most frequent first, ties broken by
first appearance in the context, space-separated. Both generators make the top-K set unique
(the K-th count is strictly above every other count).
"""

from __future__ import annotations

import random

from depthkv.workload.example import Example
from depthkv.workload.text import KEY_LENGTH, random_word, top_question

WORDS_PER_LINE = 8
_COST = KEY_LENGTH + 1  # a word plus its separator


def _word_count(context_length: int) -> int:
    return (context_length + 1) // _COST


def _layout(words: list[str]) -> str:
    lines = [" ".join(words[i : i + WORDS_PER_LINE]) for i in range(0, len(words), WORDS_PER_LINE)]
    return "\n".join(lines)


def top_words(counts: dict[str, int], first_seen: dict[str, int], k: int) -> list[str]:
    """The ``k`` words with the highest count, ties broken by first appearance."""
    return sorted(counts, key=lambda w: (-counts[w], first_seen[w]))[:k]


def _build(rng: random.Random, counts: list[int], k: int, task: str, meta: dict) -> Example:
    taken: set[str] = set()
    vocab = [random_word(rng, taken) for _ in counts]
    words = [w for w, c in zip(vocab, counts) for _ in range(c)]
    rng.shuffle(words)
    first_seen: dict[str, int] = {}
    for i, w in enumerate(words):
        first_seen.setdefault(w, i)
    answer = top_words(dict(zip(vocab, counts)), first_seen, k)
    return Example(_layout(words), top_question(k), " ".join(answer), task, meta)


def common_words(
    rng: random.Random,
    context_length: int,
    num_common: int = 3,
    common_fraction: float = 0.3,
    uncommon_count: int = 2,
) -> Example:
    """``num_common`` words share ``common_fraction`` of the list; every other word appears at most
    ``uncommon_count`` times. Answer: the common words in order of first appearance."""
    if num_common < 1 or uncommon_count < 1:
        raise ValueError(f"need num_common >= 1 and uncommon_count >= 1, got {num_common}, {uncommon_count}")
    total = _word_count(context_length)
    per_common = max(uncommon_count + 1, round(common_fraction * total / num_common))
    rest = total - num_common * per_common
    if rest < 0:
        raise ValueError(
            f"context_length={context_length} is too short for common_words with num_common={num_common} "
            f"(needs >= {num_common * (uncommon_count + 1) * _COST - 1})"
        )
    full, remainder = divmod(rest, uncommon_count)
    counts = [per_common] * num_common + [uncommon_count] * full + ([remainder] if remainder else [])
    meta = {"num_common": num_common, "common_count": per_common, "uncommon_count": uncommon_count}
    return _build(rng, counts, num_common, "common_words", meta)


def zipf_counts(total: int, vocab: int, alpha: float) -> list[int]:
    """Counts proportional to ``1 / rank**alpha`` summing to ``total`` (largest remainder),
    sorted in decreasing order, zeros dropped."""
    weights = [1.0 / (rank**alpha) for rank in range(1, vocab + 1)]
    scale = total / sum(weights)
    exact = [w * scale for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(vocab), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return sorted((c for c in counts if c > 0), reverse=True)


def _separate_top(counts: list[int], k: int) -> list[int]:
    """Make ``counts[0] > ... > counts[k]`` strictly, taking the extra from the rarest words."""
    counts = list(counts)
    if len(counts) <= k:
        raise ValueError(f"need more than {k} distinct words, got {len(counts)}")
    for rank in range(k - 1, -1, -1):
        deficit = counts[rank + 1] + 1 - counts[rank]
        if deficit <= 0:
            continue
        counts[rank] += deficit
        while deficit:
            last = len(counts) - 1
            if last <= k:
                raise ValueError("not enough words to separate the top counts")
            counts[last] -= 1
            deficit -= 1
            if counts[last] == 0:
                counts.pop()
    return counts


def frequent_words(
    rng: random.Random,
    context_length: int,
    num_top: int = 3,
    alpha: float = 1.0,
    words_per_type: int = 4,
) -> Example:
    """Word counts follow a Zipf law (exponent ``alpha``) over about ``total / words_per_type``
    distinct words. Answer: the ``num_top`` most frequent words, most frequent first."""
    if num_top < 1 or words_per_type < 1:
        raise ValueError(f"need num_top >= 1 and words_per_type >= 1, got {num_top}, {words_per_type}")
    total = _word_count(context_length)
    vocab = max(num_top + 2, total // words_per_type)
    if total < 2 * (num_top + 2):
        raise ValueError(
            f"context_length={context_length} is too short for frequent_words with num_top={num_top} "
            f"(needs >= {2 * (num_top + 2) * _COST - 1})"
        )
    counts = _separate_top(zipf_counts(total, vocab, alpha), num_top)
    meta = {"num_top": num_top, "alpha": alpha, "top_counts": counts[: num_top + 1]}
    return _build(rng, counts, num_top, "frequent_words", meta)
