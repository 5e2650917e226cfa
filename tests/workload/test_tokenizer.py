import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from depthkv.workload import ByteTokenizer

tok = ByteTokenizer()


def test_ids_and_vocab():
    assert tok.vocab_size == len(tok) == 259
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (256, 257, 258)
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    assert tok.padding_side == "left"
    assert tok.encode("aZ\n") == [97, 90, 10]
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.encode("hi", add_special_tokens=True) == [257, 104, 105]
    assert len(tok.get_vocab()) == 259
    assert tok.convert_ids_to_tokens([97, 258]) == ["a", "</s>"]


@settings(max_examples=300, deadline=None)
@given(st.text() | st.text(st.characters(exclude_categories=())))  # the second includes lone surrogates
def test_round_trip_any_text(text):
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text, add_special_tokens=True)) == text


@pytest.mark.parametrize(
    "text", ["", "\n", "a\r\nb\t", "日本語 🙂👍🏽 e\u0301", "\x00\x7f", "\ud800lone", "x" * 1000]
)
def test_round_trip_edge_cases(text):
    assert tok.decode(tok.encode(text)) == text


def test_decode_specials_and_invalid_bytes():
    ids = [257, 104, 105, 258, 256, 300]
    assert tok.decode(ids) == "hi"
    assert tok.decode(ids, skip_special_tokens=False) == "<s>hi</s><pad><unused300>"
    # A multi-byte character cut in the middle decodes with a replacement character.
    assert tok.decode([104, 0xE6, 0x97]) == "h\ufffd"
    assert tok.decode(np.array([104, 105])) == "hi"
    with pytest.raises(ValueError, match="negative"):
        tok.decode([-1])


def test_batch_left_padding():
    out = tok(["abc", "d", ""], padding=True)
    pad = tok.pad_token_id
    assert out["input_ids"] == [[97, 98, 99], [pad, pad, 100], [pad, pad, pad]]
    assert out["attention_mask"] == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert out.input_ids is out["input_ids"]
    right = tok(["abc", "d"], padding="longest", padding_side="right")
    assert right["input_ids"] == [[97, 98, 99], [100, pad, pad]]
    assert right["attention_mask"] == [[1, 1, 1], [1, 0, 0]]
    ragged = tok(["abc", "d"])
    assert ragged["input_ids"] == [[97, 98, 99], [100]]
    assert ragged["attention_mask"] == [[1, 1, 1], [1]]
    single = tok("ab", add_special_tokens=True)
    assert single == {"input_ids": [257, 97, 98], "attention_mask": [1, 1, 1]}


def test_max_length_padding_and_truncation():
    out = tok(["abcdef", "a"], padding="max_length", max_length=4, truncation=True)
    pad = tok.pad_token_id
    assert out["input_ids"] == [[99, 100, 101, 102], [pad, pad, pad, 97]]  # keeps the end
    assert out["attention_mask"] == [[1, 1, 1, 1], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match="max_length"):
        tok(["a"], padding="max_length")


def test_return_tensors():
    torch = pytest.importorskip("torch")
    out = tok(["hello", "hi"], padding=True, return_tensors="pt")
    assert out["input_ids"].shape == (2, 5) and out["input_ids"].dtype == torch.long
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert tok.batch_decode(out["input_ids"]) == ["hello", "hi"]
    one = tok("hello", return_tensors="pt").to("cpu")
    assert one.input_ids.shape == (1, 5) and one.attention_mask.sum().item() == 5
    empty = tok("", return_tensors="pt")
    assert empty["input_ids"].shape == (1, 0)
    assert tok(["ab", "c"], padding=True, return_tensors="np")["input_ids"].shape == (2, 2)
    with pytest.raises(ValueError, match="padding=True"):
        tok(["ab", "c"], return_tensors="pt")


def test_save_and_load(tmp_path):
    custom = ByteTokenizer(padding_side="right", truncation_side="right")
    (path,) = custom.save_pretrained(tmp_path / "tok")
    assert json.loads(open(path).read())["tokenizer_class"] == "ByteTokenizer"
    loaded = ByteTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.padding_side == "right" and loaded.truncation_side == "right"
    assert loaded.vocab_size == 259 and loaded.encode("hé") == custom.encode("hé")
    assert ByteTokenizer.from_pretrained(tmp_path / "tok", padding_side="left").padding_side == "left"
    with pytest.raises(FileNotFoundError):
        ByteTokenizer.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="padding_side"):
        ByteTokenizer(padding_side="middle")
