"""What several test modules share: tiny models built from configs (no download), a character
tokenizer and workload for them, a hand-written profile, a Dynamo-like graph, and oracles that run a
plan through ``depthkv.apply`` to check the measurement engine against."""

from __future__ import annotations

import operator
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

import depthkv
from depthkv.kernels.custom_ops import stage_op

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "phi3", "gemma3", "mistral-sliding")
# Families with sliding-window layers (window WINDOW): Gemma 3 (every third layer full attention,
# the others sliding, its own softmax scale) and Mistral with a sliding window on every layer.
HYBRID = ("gemma3", "mistral-sliding")
WINDOW = 16


def tiny_config(family: str, layers: int = 3, heads: int = 4, kv_heads: int = 2, head_dim: int = 16):
    import transformers as tf

    common = dict(
        vocab_size=97,
        hidden_size=heads * head_dim,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    cls = {
        "llama": tf.LlamaConfig,
        "qwen2": tf.Qwen2Config,
        "qwen3": tf.Qwen3Config,
        "mistral": tf.MistralConfig,
        "mistral-sliding": tf.MistralConfig,
        "gemma": tf.GemmaConfig,
        "gemma3": tf.Gemma3TextConfig,
        "phi3": tf.Phi3Config,
    }[family]
    extra = {}
    if family in ("qwen3", "gemma", "mistral", "mistral-sliding", "gemma3"):
        extra["head_dim"] = head_dim
    if family in ("qwen2", "qwen3", "mistral"):
        extra["sliding_window"] = None
        extra["use_sliding_window"] = False
    if family == "mistral-sliding":
        extra["sliding_window"] = WINDOW
    if family == "gemma3":
        extra.update(
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            layer_types=["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(layers)],
        )
    config = cls(**common, **extra)
    if family == "mistral":
        config.sliding_window = None
    return config


def tiny_model(family: str = "llama", seed: int = 0, **kwargs):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **kwargs), attn_implementation="sdpa")
    model.eval()
    return model


def set_attention_scale(model, scaling: float) -> None:
    """Give every attention module of ``model`` the softmax scale ``scaling`` (as Gemma 2/3's
    ``query_pre_attn_scalar`` does), instead of ``head_dim ** -0.5``."""
    for module in model.modules():
        if hasattr(module, "scaling") and hasattr(module, "layer_idx"):
            module.scaling = scaling


class CharTokenizer:
    """Minimal HF-like tokenizer for a vocab-97 random model."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + (ord(c) % 96) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(32 + i % 90) for i in ids)


def workload(n=5, length=90, seed=0):
    r = random.Random(seed)
    return [
        {
            "context": "".join(r.choice("abcdefgh ") for _ in range(length)),
            "question": "\nQ: key?",
            "answer": " " + "".join(r.choice("xyz") for _ in range(4)),
        }
        for _ in range(n)
    ]


def answer_nll_with_budgets(model, example, budgets) -> float:
    """Mean answer NLL when ``model`` runs through ``depthkv.apply`` with per-layer ``budgets``:
    context + question prefilled and compressed, then the answer teacher-forced (``compress="prompt"``)."""
    tok = CharTokenizer()
    prompt = tok(example["context"] + example["question"])["input_ids"]
    answer = tok(example["answer"])["input_ids"]
    assert prompt and answer
    handle = depthkv.apply(model, depthkv.plan_from_budgets(model, budgets))
    try:
        cache = handle.new_cache()
        with torch.no_grad():
            first = handle(torch.tensor([prompt]), cache=cache).logits[:, -1:]
            rest = handle(torch.tensor([answer[:-1]]), cache=cache).logits
    finally:
        handle.remove()
    logp = torch.log_softmax(torch.cat([first, rest], 1)[0].float(), -1)
    return -logp[torch.arange(len(answer)), torch.tensor(answer)].mean().item()


def checksum_scorer(example, prediction: str) -> float:
    """A scorer that moves with every character of the prediction (random models never answer right)."""
    return (sum(map(ord, prediction)) % 101) / 101


def generated_score(model, example, budgets, scorer=checksum_scorer) -> float:
    """Score of greedy generation when ``model`` runs through ``depthkv.apply`` with ``budgets``:
    the context prefilled and compressed, then the question, then ``len(answer)`` tokens one by one
    (``compress="context"``), each fed back."""
    tok = CharTokenizer()
    context = torch.tensor([tok(example["context"])["input_ids"]])
    question = torch.tensor([tok(example["question"])["input_ids"]])
    n = len(tok(example["answer"])["input_ids"])
    handle = depthkv.apply(model, depthkv.plan_from_budgets(model, budgets))
    try:
        cache = handle.new_cache()
        with torch.no_grad():
            handle(context, cache=cache)
            logits = handle(question, cache=cache).logits[0, -1]
            tokens = []
            for _ in range(n):
                tokens.append(int(logits.argmax()))
                logits = handle(torch.tensor([[tokens[-1]]]), cache=cache).logits[0, -1]
    finally:
        handle.remove()
    return scorer(example, tok.decode(tokens))


def make_profile(model, n=4):
    rng = np.random.default_rng(0)
    return depthkv.Profile(
        fingerprint=depthkv.fingerprint(model),
        metric="nll",
        ablation_budgets=[0.2, 64],
        degradation=rng.normal(size=(2, n, 3)),
        context_lengths=[100] * n,
        baseline=[1.5] * n,
        policy=depthkv.PolicyConfig(),
        workload={"name": "test"},
    )


B, HKV, G, D, MAX = 1, 2, 2, 8, 64


def _placeholder(graph, name, shape, dtype=torch.float32):
    node = graph.placeholder(name)
    node.meta["example_value"] = torch.empty(shape, dtype=dtype, device="meta")
    return node


def build_graph(budgets, *, gqa_form="repeat", break_layer=None, extra_reader=False, m=1, append=False):
    """A small Dynamo-like graph: per layer, stage -> (repeat_kv) -> sdpa, chained through the output.

    ``m`` new tokens per step (1 = a decode graph); ``append``: the cache's decode mode literal.
    """
    graph = fx.Graph()
    extra = []
    x = _placeholder(graph, "q0", (B, HKV * G, m, D))
    mask = _placeholder(graph, "mask", (B, 1, 1, MAX), torch.bool)
    stage = stage_op()
    for layer, budget in enumerate(budgets):
        bufs = [
            _placeholder(graph, f"k_buf{layer}", (B, HKV, budget, D)),
            _placeholder(graph, f"v_buf{layer}", (B, HKV, budget, D)),
            _placeholder(graph, f"pos{layer}", (B, HKV, budget), torch.long),
            _placeholder(graph, f"score{layer}", (B, HKV, budget)),
            _placeholder(graph, f"seen{layer}", (), torch.long),
        ]
        k_new = _placeholder(graph, f"k_new{layer}", (B, HKV, m, D))
        v_new = _placeholder(graph, f"v_new{layer}", (B, HKV, m, D))
        st = graph.call_function(stage, (*bufs, k_new, v_new, layer, MAX, budget, append))
        k = graph.call_function(operator.getitem, (st, 0))
        v = graph.call_function(operator.getitem, (st, 1))
        if layer == break_layer:
            k = k_new  # attention that does not read the cache
        if gqa_form == "repeat":
            idx = (slice(None), slice(None), None, slice(None), slice(None))
            k = graph.call_method("reshape", (graph.call_method("expand", (graph.call_function(operator.getitem, (k, idx)), B, HKV, G, MAX, D)), B, HKV * G, MAX, D))
            v = graph.call_method("reshape", (graph.call_method("expand", (graph.call_function(operator.getitem, (v, idx)), B, HKV, G, MAX, D)), B, HKV * G, MAX, D))
            kwargs = {"attn_mask": mask, "scale": 0.5}
        else:
            kwargs = {"attn_mask": mask, "scale": 0.5, "enable_gqa": True}
        if extra_reader and layer == 0:
            extra.append(graph.call_function(torch.matmul, (x, graph.call_method("transpose", (k, -1, -2)))))
        x = graph.call_function(F.scaled_dot_product_attention, (x, k, v), kwargs)
        x.meta["example_value"] = torch.empty((B, HKV * G, m, D), device="meta")
        x.meta["nn_module_stack"] = {"a": (f"L['self'].model.layers.{layer}.self_attn", object)}
    graph.output((x, *extra) if extra else x)
    return fx.GraphModule(torch.nn.Module(), graph)
