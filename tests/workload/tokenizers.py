"""Tokenizers for the natural-text tests, all offline: the byte tokenizer, a word-level stand-in
and a small byte-level BPE trained here with ``tokenizers`` and wrapped as a Hugging Face
``PreTrainedTokenizerFast`` (GPT-2-style: a context's count is not the sum of its sentences'
counts)."""

from __future__ import annotations

import functools
import re

from depthkv.workload import ByteTokenizer


class WordTokenizer:
    """Each word (with the whitespace before it), each punctuation mark and each run of whitespace
    is one token; ids are given in order of first sight."""

    name_or_path = "test-words"
    _PIECE = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.vocab.setdefault(piece, len(self.vocab)) for piece in self._PIECE.findall(text)]


@functools.lru_cache(maxsize=1)
def bpe_tokenizer():
    """A 3,000-token byte-level BPE trained on the prose corpus (about 4 characters a token, as
    real tokenizers on English)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from depthkv.workload import prose_corpus

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=3000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(prose_corpus().sentences, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, name_or_path="test-bpe", model_max_length=1 << 30
    )


def tokenizer(name: str):
    return {"byte": ByteTokenizer, "word": WordTokenizer, "bpe": bpe_tokenizer}[name]()
