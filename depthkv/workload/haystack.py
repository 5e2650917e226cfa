"""Contexts of natural prose sized in tokens of a given tokenizer, with fact sentences at chosen depths.

A context is ``instruction + "\\n\\n" + prose``. The prose is a run of consecutive corpus sentences
from a random start (wrapping around at the end of the corpus, so a context longer than the
corpus repeats it), sentences of one source paragraph joined by a space, paragraphs by a blank
line. The facts are inserted between sentences, each at the sentence boundary nearest its depth
(0 = start of the prose, 1 = end) by token count, in order of depth.

How the length is hit: every corpus sentence's token count (after a space) is measured once per
tokenizer. The run stops about one typical sentence short of the target; the rest is filled with
sentences chosen by their counts. Then the whole context is tokenized and, while it is off the
target, its last sentence is replaced by one whose count makes up the difference (sentences are
dropped, or typical ones added, first when the difference is outside the usual sentence counts),
and the whole context is tokenized again. Tokenizers that merge across sentence boundaries make
the sum of sentence counts only an estimate, which is why every step counts the whole context.
The result has the target count in practice (about 3-8 tokenizations a context) and is never more
than :func:`length_tolerance` tokens off (a ``ValueError`` otherwise).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence
from typing import Any

from depthkv.workload.prose import ProseCorpus

MAX_FITTING_STEPS = 32
_GOLDEN = 0.6180339887498949


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` without special tokens: ``len(tokenizer.encode(text, add_special_tokens=False))``."""
    return len(tokenizer.encode(text, add_special_tokens=False))


def tokenizer_name(tokenizer: Any) -> str:
    """What a workload records of its tokenizer: ``name_or_path``, else the class name."""
    return str(getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__)


def length_tolerance(target: int) -> int:
    """How many tokens a context may be off ``target``: ``max(2, target // 256)`` (8 at 2,048)."""
    return max(2, target // 256)


def spread_depth(index: int) -> float:
    """The depth of example ``index``'s main fact: ``(0.5 + index * 0.618...) mod 1``.

    The golden-ratio sequence: the first ``n`` examples' depths cover [0, 1) evenly for every
    ``n``, and example ``index`` has the same depth whatever ``n`` is.
    """
    return (0.5 + index * _GOLDEN) % 1.0


def fact_depths(context: str, facts: Sequence[tuple[float, str]]) -> list[float]:
    """Where each fact sentence of ``facts`` starts in ``context``, as a fraction of its characters."""
    return [round(context.index(sentence) / len(context), 4) for _, sentence in facts]


class Haystack:
    """Builds contexts from ``corpus`` sized in tokens of ``tokenizer`` (see the module docstring).

    Making one measures every corpus sentence once; reuse it for many examples.
    """

    def __init__(self, tokenizer: Any, corpus: ProseCorpus) -> None:
        self.tokenizer = tokenizer
        self.corpus = corpus
        # A sentence's count where it usually stands: after a space.
        self.costs = [count_tokens(tokenizer, " " + sentence) for sentence in corpus.sentences]
        if min(self.costs) < 1:
            raise ValueError("the tokenizer gives no tokens for a corpus sentence")
        self._by_cost: dict[int, list[int]] = {}
        for i, cost in enumerate(self.costs):
            self._by_cost.setdefault(cost, []).append(i)
        self._cost_values = sorted(self._by_cost)
        ordered = sorted(self.costs)
        # The counts most sentences have: a last sentence in this range can be swapped for an
        # exact fit.
        self._low, self._typical, self._high = (ordered[int(q * (len(ordered) - 1))] for q in (0.1, 0.5, 0.9))

    def count(self, text: str) -> int:
        return count_tokens(self.tokenizer, text)

    def build(
        self,
        rng: random.Random,
        target: int,
        instruction: str,
        facts: Sequence[tuple[float, str]],
        task: str,
    ) -> tuple[str, int]:
        """``(context, tokens)``: ``facts`` (``(depth, sentence)`` pairs) inside prose, ``tokens``
        within :func:`length_tolerance` of ``target``.

        Facts are placed in order of depth (ties keep the given order). Raises ``ValueError`` if
        the instruction and the facts alone leave no room for prose.
        """
        ordered = [sentence for _, sentence in sorted(facts, key=lambda fact: fact[0])]
        depths = sorted(depth for depth, _ in facts)
        fixed = self.count(instruction + "\n\n" + " ".join(ordered))
        budget = target - fixed
        if budget < self._cost_values[0]:
            raise ValueError(
                f"context_length={target} tokens is too short for {task}: its instruction and facts "
                f"alone take {fixed} tokens, leaving no room for a sentence of prose"
            )
        n = len(self.costs)
        start = rng.randrange(n)
        run: list[int] = []
        total = 0
        # Consecutive sentences while more than a typical sentence's room is left after them ...
        while True:
            following = (start + len(run)) % n
            if total + self.costs[following] > budget - self._typical:
                break
            run.append(following)
            total += self.costs[following]
        # ... then the rest in sentences chosen by their counts, about a typical one each.
        extra = max(1, round((budget - total) / self._typical))
        for left in range(extra, 0, -1):
            run.append(self._pick(rng, round((budget - total) / left), set(run)))
            total += self.costs[run[-1]]

        tolerance = length_tolerance(target)
        best: tuple[int, str, int] | None = None
        tried: set[int] = set()
        for _ in range(MAX_FITTING_STEPS):
            context = self._assemble(instruction, run, ordered, depths)
            tokens = self.count(context)
            error = target - tokens
            if best is None or abs(error) < best[0]:
                best = (abs(error), context, tokens)
            if error == 0:
                break
            # Take the last sentence out; drop more while the room left is below the usual
            # sentence counts, fill it with typical ones while above; then the one that fits.
            slack = error + (self.costs[run.pop()] if run else 0)
            while run and slack < self._low:
                slack += self.costs[run.pop()]
            while slack > self._high:
                run.append(self._pick(rng, min(self._typical, slack - self._typical), set(run)))
                slack -= self.costs[run[-1]]
            run.append(self._pick(rng, slack, set(run), tried))
            tried.add(run[-1])
        assert best is not None
        if best[0] > tolerance:
            raise ValueError(
                f"could not size a {task} context to {target} tokens (best: {best[2]}, tolerance "
                f"{tolerance}); try another context_length"
            )
        return best[1], best[2]

    def _pick(self, rng: random.Random, want: int, used: set[int], tried: set[int] | None = None) -> int:
        """A sentence whose count is nearest ``want``, not in ``tried``, chosen by ``rng`` among
        equals, preferring one not in ``used`` (a context near or above the corpus's length
        repeats sentences rather than miss its length)."""
        tried = tried or set()
        values = self._cost_values
        at = bisect.bisect_left(values, want)
        lo, hi = at - 1, at
        while lo >= 0 or hi < len(values):
            # Nearest count first; at equal distance the shorter one.
            if hi >= len(values) or (lo >= 0 and want - values[lo] <= values[hi] - want):
                cost, lo = values[lo], lo - 1
            else:
                cost, hi = values[hi], hi + 1
            free = [i for i in self._by_cost[cost] if i not in tried]
            if free:
                fresh = [i for i in free if i not in used]
                return rng.choice(fresh or free)
        return rng.randrange(len(self.costs))  # every sentence tried: start again

    def _assemble(self, instruction: str, run: list[int], facts: list[str], depths: list[float]) -> str:
        # Each fact goes to the sentence boundary nearest its depth, by the sentences' counts.
        ends = list(itertools.accumulate((self.costs[i] for i in run), initial=0))
        slots = []
        for depth in depths:
            at = bisect.bisect_left(ends, depth * ends[-1])
            slots.append(
                at - 1
                if at == len(ends) or (at and depth * ends[-1] - ends[at - 1] < ends[at] - depth * ends[-1])
                else at
            )
        pieces: list[str] = []
        previous_paragraph = None
        fact = 0
        for position in range(len(run) + 1):
            while fact < len(facts) and slots[fact] == position:
                pieces.append(" " + facts[fact])
                fact += 1
            if position == len(run):
                break
            index = run[position]
            paragraph = self.corpus.paragraphs[index]
            sep = " " if previous_paragraph in (None, paragraph) else "\n\n"
            pieces.append(sep + self.corpus.sentences[index])
            previous_paragraph = paragraph
        return instruction + "\n\n" + "".join(pieces)[1:]
