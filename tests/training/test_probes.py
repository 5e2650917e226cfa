"""The key-matching probe logged while the tiny models train (training.probes)."""

from __future__ import annotations

import random
import re

import pytest
import torch

from depthkv.workload import ByteTokenizer
from training import probes

TOK = ByteTokenizer()


class _Oracle(torch.nn.Module):
    """Reads each prompt, finds the asked key's record, and puts its logit peak on the value's
    first digit (or on ``wrong`` digit when ``wrong`` is set): a model that matches keys exactly."""

    def __init__(self, wrong: str | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.wrong = wrong

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, 320)
        for b, row in enumerate(input_ids.tolist()):
            text = TOK.decode(row)
            context, asked = text.rsplit("\n?", 1)
            value = dict(re.findall(r"^([a-z]+):(\d+)$", context, re.MULTILINE))[asked[:-1]]
            logits[b, -1, ord(self.wrong or value[0])] = 1.0
        return type("Out", (), {"logits": logits})()


def test_prompts_have_one_asked_key_and_equal_lengths():
    prompts, digits = probes.key_match_prompts(random.Random(0), 6, 20)
    assert len({len(p) for p in prompts}) == 1  # one batch without padding
    for prompt, digit in zip(prompts, digits):
        context, asked = prompt.rsplit("\n?", 1)
        records = dict(re.findall(r"^([a-z]+):(\d+)$", context, re.MULTILINE))
        assert len(records) == 6 and asked.endswith(":")
        assert records[asked[:-1]][0] == digit
        assert len(set(records.values())) == 6  # distinct values: one right answer


def test_a_key_matching_model_scores_one_and_a_constant_digit_scores_its_share():
    oracle = _Oracle()
    oracle.train()
    assert probes.key_matching(oracle, TOK, counts=(2, 4, 8), n=32) == {"2": 1.0, "4": 1.0, "8": 1.0}
    assert oracle.training  # mode restored
    constant = probes.key_matching(_Oracle(wrong="7"), TOK, counts=(4,), n=200)["4"]
    assert 0.04 < constant < 0.20  # first digits are 1-9: about 1/9 start with 7
    assert probes.copy_chance(2) == pytest.approx(0.5 + 0.5 / 9)
    # Same prompts for the same seed.
    a = probes.key_match_prompts(random.Random("x"), 3, 5)
    assert a == probes.key_match_prompts(random.Random("x"), 3, 5)


def test_bad_probe_settings_are_clear_errors():
    with pytest.raises(ValueError, match="n >= 1 and counts >= 1"):
        probes.key_matching(_Oracle(), TOK, counts=(), n=4)
