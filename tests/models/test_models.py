"""The shipped tiny models load offline and still answer as well as their model cards say.

Accuracy check: for each shipped model, the first evaluation-split examples of each task its
card lists as learned (about ``N_EXAMPLES`` in all), at the trained context length.
``builtin_workload`` examples are prefixes of the card's (``generate(n=m)`` is a prefix of
``generate(n=m + k)``), so the card's ``evaluation.json`` holds the expected score of exactly these
examples. Greedy decoding is deterministic; across CPUs, BLAS builds and torch versions only float
rounding differs, which can flip a near-tie between the two best tokens. ``MARGIN`` = 0.1
tolerates two such flips among 20 examples (a near-tie is rare, two in one sample rarer still),
while any real defect (weights not loaded, wrong tokenizer, wrong positions or attention) drops
accuracy to near zero.
"""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch
from transformers import DynamicCache

from depthkv import greedy_generate
from depthkv.models import MODELS, load_model, model_dir
from depthkv.workload import ByteTokenizer, builtin_workload, score

N_EXAMPLES = 20
MARGIN = 0.1


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network: hub offline mode, and any socket connection attempt fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _card(name: str) -> dict:
    return json.loads((model_dir(name) / "evaluation.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_loads_offline(name):
    folder = model_dir(name)
    for file in ("config.json", "model.safetensors", "depthkv_tokenizer.json", "README.md", "training.json"):
        assert (folder / file).is_file(), f"{name} lacks {file}"
    model, tokenizer = load_model(name)
    assert isinstance(tokenizer, ByteTokenizer)
    assert not model.training
    assert model.config._attn_implementation == "sdpa"
    assert model.config.vocab_size >= len(tokenizer)
    assert model.config.max_position_embeddings >= 4096


@pytest.fixture
def one_thread():
    """One torch thread, as the cards were measured; the thread count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_reaches_card_accuracy(name, one_thread):
    card = _card(name)
    length = card["trained_length"]
    tasks = card["learned_tasks"]
    assert tasks, f"{name}'s card lists no learned task"
    model, tokenizer = load_model(name)
    n = min(card["n"], math.ceil(N_EXAMPLES / len(tasks)))
    workload = builtin_workload(
        tasks, n_per_task=n, context_length=length, split="evaluation", seed=card["seed"]
    )
    measured, expected = [], []
    for i, ex in enumerate(workload):
        ids = torch.tensor([tokenizer.encode(ex.prompt, add_special_tokens=True)])
        tokens, _ = greedy_generate(model, ids, DynamicCache(config=model.config), len(tokenizer.encode(ex.answer)) + 2)
        prediction = tokenizer.decode(tokens[0].tolist())
        measured.append(score(ex, prediction))
        expected.append(card["cells"][f"{ex.task}@{length}"]["scores"][i % n])
    accuracy = sum(measured) / len(measured)
    card_accuracy = sum(expected) / len(expected)
    assert accuracy >= card_accuracy - MARGIN, (
        f"{name}: {accuracy:.3f} on {len(measured)} examples of {tasks} at L={length}, "
        f"card says {card_accuracy:.3f} for the same examples"
    )


def test_unknown_name_raises_listing_models():
    with pytest.raises(ValueError) as err:
        load_model("no-such-model")
    for name in MODELS:
        assert name in str(err.value)


def test_local_checkpoint_directory(tmp_path):
    from tests.helpers import tiny_model

    source = tiny_model("llama")
    source.save_pretrained(tmp_path)
    ByteTokenizer().save_pretrained(tmp_path)
    model, tokenizer = load_model(str(tmp_path), dtype=torch.float32)
    assert isinstance(tokenizer, ByteTokenizer)
    assert not model.training
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, source(input_ids=ids).logits)


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    """A checkpoint whose weights file was cut short: CorruptFileError naming the folder, not the
    safetensors library's own exception."""
    from depthkv.files import CorruptFileError
    from tests.helpers import tiny_model

    tiny_model("llama").save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match=f"cannot load the model in {tmp_path}.*truncated or corrupted"):
        load_model(tmp_path)
