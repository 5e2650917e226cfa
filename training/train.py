"""Train (and evaluate, and write the model card of) one of depthkv's embedded tiny models.

This is the repository's training code, not part of the installed package: run it from the root of
a clone of the repository (``training`` is a top-level folder there). The trained model goes to
``depthkv/models/<name>/`` unless ``--out DIR`` says otherwise.

Reproduce a shipped model exactly (same recipe, steps, data stream and curriculum; the command is
in its model card and, under the module path it was run as, in its ``training.json`` under
``reproduce``; a test replays its first steps). tiny-llama's first run, which the same command
with ``--resume --extend-to 6810`` then continued::

    python -m training.train --name tiny-llama --recipe v4 --seed 0 --lr 0.001 --threads 1 \\
        --steps 5810 --stage-steps 1600 800 600 500 560 --data-stream per_step --start-layers 2 --grow-stage 2

or give a wall-clock budget, turned into step caps per stage by timing a few steps of each stage::

    python -m training.train --name tiny-llama --recipe v4 --minutes 55

A finished (or cut) run continues to a larger total with ``--resume --extend-to N`` (same
arguments otherwise); the learning rate follows the schedule of the new total, and ``training.json``
records each extension with the command that replays it (``reproduce_extensions``).

``--eval-only`` then measures the full-cache accuracy table and writes ``evaluation.json`` and the
model card ``README.md`` into the model folder (``--card-only`` rewrites the card from it).

The recipe: dense supervision in the multi-query form.
Each training row is ``<s>`` + a context in the exact text format of ``depthkv.workload``
(``key:value`` records among filler lines, or a record list) followed by questions about (nearly)
every key of the context, each in the prompt form the tasks use (``"\\n?key:"`` or
``"\\n?k1 k2:"``) immediately followed by its answer. The loss is on the answer tokens and the
newline that ends each answer (the model has to learn where a value stops: some values have 5
digits) and, with ``filler_loss`` (default), on the filler lines of the context (never on the random
keys and values of its records): predicting letters of filler words makes the model grow the
"token k back" features early, which the key-matching circuit is built from. Weights start at
``initializer_range=0.06`` (transformers' default 0.02 left the copy circuit slower to form).
Contexts come from the task generators themselves (seeds unrelated to the calibration/evaluation
splits) plus "dense" (a few records, no filler) and "many" (several keys,
some with several values, in filler) generators. The curriculum (``STAGES``) starts with 20-64
character record lists and ends at 1,024 characters; a stage ends when the teacher-forced answer
exact match passes ``advance_at`` or at its step cap. AdamW with warmup-stable-decay, gradient
clipping, fp32, on the CPU (``--threads``; the shipped tiny-llama trained on one thread,
tiny-qwen2 on two) or ``--device cuda`` with ``--batch-scale`` on a GPU. What was tried and
measured while choosing this recipe is in ``training/LOG.md``.

Recipe ``v3`` (``--recipe v3``) puts a stage of content-copy practice (``copy_row``) before that
curriculum: the v2 first stage never formed the content matching that key lookup needs, copy
practice did in a 2-layer model. Recipe ``v4`` trains v3 with progressive depth
(``training.grow``): 2 layers and 4x batches through copy practice and the first
key-matching stage, where the circuit forms in about a thousand steps on the CPU, then the preset's
full depth (new layers start as the identity) for the longer contexts. Recipe ``v5`` is v4 with
more multi-item practice from the 256-character stage on: a task row asks its task's own question
first (all four keys of ``niah_multiquery`` in one question, the evaluation form), keys are grouped
into multi-key questions half the time, and multi-value and multi-query rows are 18% of rows each.
``python -m training.diagnose`` shows why (a model answering 4-key questions as if they had 3).
Recipes ``v6`` and ``v7`` (the shipped tiny-qwen2) are described where ``RECIPES`` defines them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import random
import re
import string
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from depthkv.files import atomic_file, atomic_write_text
from depthkv.workload import DEFAULT_TASKS, TASKS, ByteTokenizer, builtin_workload, score
from depthkv.workload.example import Example
from depthkv.workload.generators import GENERATORS
from depthkv.workload.text import key_question, random_value, random_word, scatter
from training.batch_source import AheadBatches
from training.grow import carry_adam_state, grow_model
from training.probes import key_matching

MODELS_DIR = Path(__file__).resolve().parent.parent / "depthkv" / "models"  # the shipped model folders
# How this script runs: ``python -m training.train`` from the repository root. The shipped models'
# records name the module path it had when they were trained (it lived in the package then).
MODULE = "training.train"
_FORMER_MODULES = ("depthkv.models.train",)
# The evaluation's defaults (``--eval-n``, ``--eval-lengths``, ``--learned-threshold``).
EVAL_N = 24
EVAL_LENGTHS = (256, 512, 1024)
LEARNED_THRESHOLD = 0.8
VOCAB_SIZE = 320  # ByteTokenizer's 259 ids, padded to a multiple of 64
IGNORE = -100
_RECORD = re.compile(r"^([a-z]+):(\d+)$", re.MULTILINE)

# Both models share width and attention layout; they differ in family and depth.
_TINY = dict(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(family="llama", num_hidden_layers=6, **_TINY),
    "tiny-qwen2": dict(family="qwen2", num_hidden_layers=8, **_TINY),
}

# Row kinds and their probabilities: the task generators themselves (exactly the evaluation
# distribution, other seeds) and "many" (more keys in filler, some with several values).
KINDS: dict[str, float] = {
    "niah_single": 0.06,
    "niah_multikey": 0.12,
    "niah_multivalue": 0.12,
    "niah_multiquery": 0.12,
    "kv_retrieval": 0.28,
    "many": 0.30,
}

# The curriculum. A stage draws context lengths up to ``context`` (from ``min_context``), rows of
# the given kinds, and "dense"/"many" rows with up to ``max_keys`` keys. It starts with short
# record lists (2-4 ``key:value`` lines, no filler): a copy (induction) head forms in a few hundred
# steps, key matching after it; a 6-layer model trained on the full mix at 128 characters stayed at
# chance for 1,000 steps (training/LOG.md). Then filler, more keys, and length. A stage may also set ``task_question`` (task
# rows ask their task's own question first) and ``multi_key_prob`` (overrides the config's): v5;
# ``max_group`` (the most keys in one question, default 4): v6; ``key_spaces`` (the most spaces
# between two keys of a re-asked question, default 1): v7.
_EARLY_KINDS = {
    "dense": 0.3,
    "many": 0.3,
    "kv_retrieval": 0.2,
    "niah_multikey": 0.1,
    "niah_multiquery": 0.05,
    "niah_multivalue": 0.05,
}
STAGES: tuple[dict[str, Any], ...] = (
    {
        "context": 64,
        "min_context": 20,
        "max_keys": 6,
        "batch_tokens": 1024,
        "kinds": {"dense": 0.7, "many": 0.3},
    },
    {"context": 128, "min_context": 48, "max_keys": 8, "batch_tokens": 2048, "kinds": _EARLY_KINDS},
    {"context": 256, "min_context": 96, "max_keys": 8, "batch_tokens": 3072, "kinds": KINDS},
    {"context": 512, "min_context": 96, "max_keys": 12, "batch_tokens": 3072, "kinds": KINDS},
    {"context": 1024, "min_context": 96, "max_keys": 16, "batch_tokens": 3072, "kinds": KINDS},
)

# v3's first stage: content-copy practice only (``copy_row``), where a 2-layer model formed content
# matching on the CPU and the v2 first stage never did (training/LOG.md); it moves on once whole
# copied pieces are right (``advance_at``). Copy rows stay in the next stage.
COPY_STAGE: dict[str, Any] = {
    "context": 64,
    "min_context": 20,
    "max_keys": 6,
    "batch_tokens": 1024,
    "kinds": {"copy": 1.0},
}

# Named recipes, so that every shipped model stays reproducible when the default changes: each is
# its overrides of ``TrainConfig``'s defaults. v2 (after the experiments in training/LOG.md) *is* the
# defaults. v1: the first shipped models (up to 4 records in the first stage, loss on answers only,
# transformers' init). v3 (for a GPU session; not yet used by a shipped model): a copy-practice
# stage first, then v2's curriculum with copy rows kept in its first stage, at the rate and init
# with which copying formed (lr 1e-3, std 0.02).
RECIPES: dict[str, dict[str, Any]] = {
    "v1": {
        "stages": ({**STAGES[0], "max_keys": 4}, *STAGES[1:]),
        "time_shares": (0.30, 0.15, 0.10, 0.10),
        "filler_loss": False,
        "initializer_range": 0.02,
    },
    "v2": {},
    "v3": {
        "stages": (
            COPY_STAGE,
            {**STAGES[0], "kinds": {"dense": 0.55, "many": 0.25, "copy": 0.2}},
            *STAGES[1:],
        ),
        "time_shares": (0.25, 0.30, 0.10, 0.08, 0.08),
        "lr": 1e-3,
        "initializer_range": 0.02,
    },
}
# v4: v3's data and rate, with 4x batches and only 2 layers through copy practice and the first
# key-matching stage (where such a model formed key matching on the CPU in ~1,300 steps), then grown
# to the preset's depth (training.grow) for the longer contexts, at v3's batch sizes.
RECIPES["v4"] = {
    **RECIPES["v3"],
    "stages": tuple(
        {**stage, "batch_tokens": stage["batch_tokens"] * 4} if index < 2 else stage
        for index, stage in enumerate(RECIPES["v3"]["stages"])
    ),
    "start_layers": 2,
    "grow_stage": 2,
    "shallow_bias": False,
}
# v5: v4, whose tiny-qwen2 found values but lost its place in multi-item answers (a 4-key question
# answered as if it had 3 keys: training/LOG.md), with more multi-item practice from the 256-token
# stage on: task rows ask their own question first (v4 re-asked a niah_multiquery row's keys mostly
# one by one, so 4-key questions were rare outside dense lists), keys are grouped into multi-key
# questions half the time (v4: 0.3), and multi-value and multi-query rows are 18% of rows each
# (v4: 12%). The stages before it (copy practice, the 2-layer key matching and the growth) are
# v4's, so their batches are v4's too.
_LATE_KINDS = {
    "niah_single": 0.04,
    "niah_multikey": 0.10,
    "niah_multivalue": 0.18,
    "niah_multiquery": 0.18,
    "kv_retrieval": 0.22,
    "many": 0.28,
}
RECIPES["v5"] = {
    **RECIPES["v4"],
    "stages": tuple(
        {**stage, "kinds": _LATE_KINDS, "task_question": True, "multi_key_prob": 0.5} if index >= 3 else stage
        for index, stage in enumerate(RECIPES["v4"]["stages"])
    ),
}


# v6: v4 through the two 64-character stages (the copy practice and the 2-layer key matching, where
# tiny-qwen2's seed 4 formed content copying), then multi-item practice from the stage where the
# model grows, at 128 characters, where a step costs half of one at 1,024: v5 started it at 256 and
# its tiny-qwen2 moved its error from one answer position to another (training/LOG.md). Every stage
# from the growth on asks task questions first, groups keys half the time, in questions of 2-5 keys
# (v4, v5: 2-4, so a fixed offset per question size could pass for keeping one's place), and has
# 10-16% multi-value and multi-query rows, with kv_retrieval kept at v4's share.
_GROWTH_KINDS = {
    "dense": 0.3,
    "many": 0.25,
    "kv_retrieval": 0.15,
    "niah_multikey": 0.1,
    "niah_multiquery": 0.1,
    "niah_multivalue": 0.1,
}
_V6_LATE_KINDS = {
    "niah_single": 0.04,
    "niah_multikey": 0.10,
    "niah_multivalue": 0.16,
    "niah_multiquery": 0.14,
    "kv_retrieval": 0.28,
    "many": 0.28,
}
_MULTI_ITEM = {"task_question": True, "multi_key_prob": 0.5, "max_group": 5}
RECIPES["v6"] = {
    **RECIPES["v4"],
    "stages": tuple(
        stage
        if index < 2
        else {**stage, "kinds": _GROWTH_KINDS if index == 2 else _V6_LATE_KINDS, **_MULTI_ITEM}
        for index, stage in enumerate(RECIPES["v4"]["stages"])
    ),
}


# v7: v6, with the keys of re-asked multi-key questions 1-3 spaces apart (a task row's own question
# keeps the prompt's single spaces). v5 and v6 tiny-qwen2 found the j-th key of a question by its
# distance, and kept it right only for some question sizes and positions (a 4-key question's first
# value wrong, the rest right: training/LOG.md); with uneven gaps no distance names the j-th key, and
# the answer has to follow the question's content instead.
RECIPES["v7"] = {
    **RECIPES["v6"],
    "stages": tuple(
        stage if index < 2 else {**stage, "key_spaces": 3} for index, stage in enumerate(RECIPES["v6"]["stages"])
    ),
}


@dataclass
class TrainConfig:
    name: str
    seed: int = 0
    steps: int | None = None
    stop_at: int | None = None  # end here, before ``steps`` (replays a run cut by its time limit)
    minutes: float | None = None
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.25  # warmup, constant, then cosine decay over the last quarter
    warmup_steps: int = 60
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    threads: int = 1
    device: str = "cpu"  # "cuda" trains on a GPU (same data stream and steps; float rounding differs)
    recipe: str = "v2"  # the name of these settings (see RECIPES; ``recipe_config`` applies one)
    filler_loss: bool = True  # also train on the filler text of the context (not on records)
    initializer_range: float = 0.06  # std of the initial weights
    batch_scale: int = 1  # multiplies every stage's batch_tokens (a GPU has room for far bigger batches)
    # "sequential": one random stream for the whole run (the shipped models); "per_step": the batch
    # of step k from its own seed, so it can be made ahead in ``workers`` processes (same batches
    # for any number of workers).
    data_stream: str = "sequential"
    workers: int = 0  # processes making batches ahead (needs data_stream="per_step"; for GPUs)
    # Every this many steps, log the key-matching probe (training.probes; 0: never). It
    # uses its own prompts and random generator: the training run is the same with or without it.
    probe_every: int = 0
    # Progressive depth (training.grow): train with ``start_layers`` layers until curriculum
    # stage ``grow_stage`` starts, then add zero-output layers up to the preset's depth (0: the
    # preset's depth from the start).
    start_layers: int = 0
    grow_stage: int = 0
    shallow_bias: bool = True  # train linear biases (Qwen2's q/k/v) before the growth too
    stages: tuple[dict[str, Any], ...] = STAGES
    # Most steps each stage but the last may take (it ends earlier once its accuracy is reached;
    # the steps it leaves go to the later stages). ``None``: planned from ``time_shares``.
    stage_steps: tuple[int, ...] | None = None
    # Share of the wall-clock budget planned for each stage but the last (which gets the rest).
    time_shares: tuple[float, ...] = (0.45, 0.12, 0.10, 0.10)
    advance_at: float = 0.75  # EMA of teacher-forced answer exact match that moves to the next stage
    min_stage_steps: int = 25
    max_queries: int = 48  # questions per row at most (kv_retrieval at 1024 has ~100 keys)
    multi_key_prob: float = 0.3  # chance that a question groups 2-4 single-valued keys


def recipe_config(name: str, recipe: str = "v2", **overrides: Any) -> TrainConfig:
    """A ``TrainConfig`` with the settings of ``RECIPES[recipe]`` (then ``overrides``)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    return TrainConfig(name=name, recipe=recipe, **{**RECIPES[recipe], **overrides})


# -- model ---------------------------------------------------------------------------------


def build_config(preset: dict[str, Any], initializer_range: float = 0.02):
    """The transformers config of a preset (random init happens in ``from_config``)."""
    import transformers as tf

    preset = dict(preset)
    family = preset.pop("family")
    tokenizer = ByteTokenizer()
    common = dict(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
        **preset,
    )
    if family == "llama":
        return tf.LlamaConfig(**common)
    if family == "qwen2":
        return tf.Qwen2Config(use_sliding_window=False, sliding_window=None, **common)
    raise ValueError(f"unknown family {family!r}; known: llama, qwen2")


def new_model(preset: dict[str, Any], seed: int, initializer_range: float = 0.02):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = build_config(preset, initializer_range)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def layers_at(cfg: TrainConfig, stage: int) -> int:
    """The model's depth during curriculum ``stage`` (``start_layers`` before ``grow_stage``)."""
    full = PRESETS[cfg.name]["num_hidden_layers"]
    return cfg.start_layers if cfg.start_layers and stage < cfg.grow_stage else full


def model_at(cfg: TrainConfig, layers: int):
    """A freshly initialized model of ``cfg``'s preset with ``layers`` layers (seeded)."""
    return new_model({**PRESETS[cfg.name], "num_hidden_layers": layers}, cfg.seed, cfg.initializer_range)


def new_optimizer(cfg: TrainConfig, model) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms and biases). Before the model grows,
    ``shallow_bias=False`` leaves the linear layers' biases (Qwen2's q/k/v) out: they stay at their
    initial zeros and train only once the model has its full depth."""
    shallow = cfg.start_layers and model.config.num_hidden_layers < PRESETS[cfg.name]["num_hidden_layers"]
    frozen = shallow and not cfg.shallow_bias
    params = [p for name, p in model.named_parameters() if not (frozen and name.endswith("_proj.bias"))]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )


# -- data ----------------------------------------------------------------------------------


@dataclass
class Row:
    ids: list[int]
    labels: list[int]
    spans: list[tuple[int, int]]  # [start, end) of each labelled answer (+ its newline)


def _context_many(rng: random.Random, context_length: int, max_keys: int) -> str:
    """Filler with 1..``max_keys`` keys, about a quarter of them written 2-4 times."""
    taken_keys: set[str] = set()
    taken_values: set[str] = set()
    records = []
    for _ in range(rng.randint(1, max_keys)):
        key = random_word(rng, taken_keys)
        repeats = 1 if rng.random() < 0.75 else rng.randint(2, 4)
        records += [f"{key}:{random_value(rng, taken_values)}" for _ in range(repeats)]
    rng.shuffle(records)
    while sum(len(r) + 1 for r in records) > context_length + 1:
        records.pop()
    return scatter(rng, records, context_length, "many")


def _context_dense(rng: random.Random, context_length: int, max_keys: int) -> str:
    """2..``max_keys`` ``key:value`` lines and nothing else (a short ``kv_retrieval``)."""
    count = max(1, min(rng.randint(2, max_keys), (context_length + 1) // 10))
    taken_keys: set[str] = set()
    taken_values: set[str] = set()
    return "\n".join(
        f"{random_word(rng, taken_keys)}:{random_value(rng, taken_values)}" for _ in range(count)
    )


def _context(
    rng: random.Random, kind: str, context_length: int, max_keys: int
) -> tuple[str, Example | None]:
    """(context, the task example it came from; ``None`` for "dense"/"many" rows, and for a task
    row whose length is too short for its task, which falls back to "many")."""
    if kind == "dense":
        return _context_dense(rng, context_length, max_keys), None
    if kind != "many":
        try:
            example = GENERATORS[kind](rng, context_length)
            return example.context, example
        except ValueError:  # too short for this task
            pass
    return _context_many(rng, context_length, max_keys), None


def _questions(
    rng: random.Random,
    context: str,
    max_queries: int,
    multi_key_prob: float,
    asked: frozenset[str] = frozenset(),
    max_group: int = 4,
    key_spaces: int = 1,
) -> list[tuple[str, str]]:
    """(question, answer) pairs asking about the keys of ``context`` (but not those in ``asked``),
    each key at most once; a multi-key question asks 2..``max_group`` keys, 1..``key_spaces``
    spaces apart (the task prompts: 1)."""
    values: dict[str, list[str]] = {}
    for key, value in _RECORD.findall(context):
        values.setdefault(key, []).append(value)
    keys = [key for key in values if key not in asked]
    rng.shuffle(keys)
    keys = keys[:max_queries]
    out = []
    while keys:
        group = 1
        if rng.random() < multi_key_prob:
            group = rng.randint(2, max_group)
        chosen = [keys.pop()]
        # Several keys in one question only among single-valued keys (as in niah_multiquery).
        while len(chosen) < group and keys and len(values[keys[-1]]) == 1 and len(values[chosen[0]]) == 1:
            chosen.append(keys.pop())
        answer = " ".join(v for k in chosen for v in values[k])
        if key_spaces > 1:
            gaps = [" " * rng.randint(1, key_spaces) for _ in chosen[1:]]
            out.append(("\n?" + chosen[0] + "".join(g + k for g, k in zip(gaps, chosen[1:])) + ":", answer))
        else:
            out.append((key_question(chosen), answer))
    return out


def filler_labels(context: str, ids: list[int]) -> list[int]:
    """``ids`` (the context's tokens, one per character) where the character belongs to a filler
    line or the newline after it, ``IGNORE`` on record lines (their keys and values are random)."""
    labels = []
    for line in context.split("\n"):
        keep = _RECORD.match(line) is None
        labels += [keep] * (len(line) + 1)
    labels = labels[: len(ids)]
    return [t if keep else IGNORE for t, keep in zip(ids, labels)]


def copy_row(rng: random.Random, context_length: int, tokenizer: ByteTokenizer) -> Row:
    """Content-copy practice (row kind ``"copy"``): lines of 6-14 random letters (about
    ``context_length`` characters), then 2-5 lines that each copy a piece (4+ letters, from a random
    offset) of one of them after 0-3 random letters. Each piece past its first two letters is a
    labelled span: it can only be found by matching those letters (the random prefix and offset
    rule out copying by position), the content ("induction") matching that key lookup needs."""

    def letters(count: int) -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(count))

    lines: list[str] = []
    while len(lines) < 2 or sum(len(x) + 1 for x in lines) < context_length:
        lines.append(letters(rng.randint(6, 14)))
    ids = tokenizer.encode("\n".join(lines), add_special_tokens=True)
    labels = [IGNORE] * len(ids)
    spans = []
    for _ in range(rng.randint(2, 5)):
        source = rng.choice(lines)
        start = rng.randrange(0, len(source) - 3)
        piece = source[start : rng.randint(start + 4, len(source))]
        noise = letters(rng.randint(0, 3))
        head = tokenizer.encode("\n" + noise + piece[:2])
        tail = tokenizer.encode(piece[2:])
        ids += head
        labels += [IGNORE] * len(head)
        spans.append((len(ids), len(ids) + len(tail)))
        ids += tail
        labels += tail
    return Row(ids, labels, spans)


def make_row(
    rng: random.Random, cfg: TrainConfig, stage: dict[str, Any], context_length: int, tokenizer: ByteTokenizer
) -> Row:
    kinds, weights = zip(*stage["kinds"].items())
    kind = rng.choices(kinds, weights)[0]
    if kind == "copy":
        return copy_row(rng, context_length, tokenizer)
    context, example = _context(rng, kind, context_length, stage["max_keys"])
    ids = tokenizer.encode(context, add_special_tokens=True)
    labels = [IGNORE] * len(ids)
    if cfg.filler_loss:
        labels = [IGNORE, *filler_labels(context, ids[1:])]
    # A stage may ask a task row's own question first (its evaluation form: all four keys of
    # niah_multiquery in one question), then the other keys as usual; and may group keys into
    # multi-key questions more often than ``cfg.multi_key_prob``, and of up to ``max_group`` keys.
    pairs: list[tuple[str, str]] = []
    asked: frozenset[str] = frozenset()
    if stage.get("task_question", False) and example is not None:
        pairs.append((example.question, example.answer))
        asked = frozenset(example.metadata.get("keys", ()))
    multi_key_prob = stage.get("multi_key_prob", cfg.multi_key_prob)
    max_group = stage.get("max_group", 4)
    key_spaces = stage.get("key_spaces", 1)
    pairs += _questions(rng, context, cfg.max_queries - len(pairs), multi_key_prob, asked, max_group, key_spaces)
    spans = []
    for i, (question, answer) in enumerate(pairs):
        # After the first question, the newline ending the previous answer starts this question.
        q = tokenizer.encode(question if i == 0 else question[1:])
        ids += q
        labels += [IGNORE] * len(q)
        # The answer and the newline that ends it (the next question's "\n", or a final one).
        a = tokenizer.encode(answer + "\n")
        spans.append((len(ids), len(ids) + len(a)))
        ids += a
        labels += a
    return Row(ids, labels, spans)


def make_batch(rng: random.Random, cfg: TrainConfig, stage: dict[str, Any], tokenizer: ByteTokenizer):
    """A batch of about ``stage["batch_tokens"]`` tokens, rows of one context length (a quarter of
    the batches anywhere in the stage's range, the rest in its upper half), right-padded (padding
    is after every real token of a row, so causal attention needs no mask)."""
    low, high = stage["min_context"], stage["context"]
    if rng.random() >= 0.25:
        low = max(low, high // 2)
    context_length = rng.randint(low, high)
    rows = []
    tokens = 0
    while tokens < stage["batch_tokens"] * cfg.batch_scale or not rows:
        row = make_row(rng, cfg, stage, context_length, tokenizer)
        rows.append(row)
        tokens += len(row.ids)
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    qid = torch.full((len(rows), width), -1, dtype=torch.long)
    n = 0
    for b, row in enumerate(rows):
        ids[b, : len(row.ids)] = torch.tensor(row.ids)
        labels[b, : len(row.labels)] = torch.tensor(row.labels)
        for start, end in row.spans:
            qid[b, start:end] = n
            n += 1
    return ids, labels, qid, n, context_length


def step_batch(cfg: TrainConfig, step: int, stage: int):
    """``make_batch`` for ``step`` in curriculum ``stage`` from the step's own seed
    (``data_stream="per_step"``): the same batch whichever process makes it, and when."""
    rng = random.Random(f"depthkv-train/{cfg.name}/{cfg.seed}/step/{step}")
    return make_batch(rng, cfg, cfg.stages[stage], ByteTokenizer())


def check_run_settings(cfg: TrainConfig) -> None:
    """A clear error for a data stream, worker count or probe interval that cannot work."""
    if cfg.data_stream not in ("sequential", "per_step"):
        raise ValueError(f"data_stream must be 'sequential' or 'per_step', got {cfg.data_stream!r}")
    if cfg.workers < 0:
        raise ValueError(f"workers must be >= 0, got {cfg.workers}")
    if cfg.probe_every < 0 or cfg.probe_every % 10:
        raise ValueError(
            f"probe_every must be 0 or a multiple of 10 (steps are logged every 10), got {cfg.probe_every}"
        )
    if cfg.start_layers:
        full = PRESETS[cfg.name]["num_hidden_layers"]
        if not 1 <= cfg.start_layers < full:
            raise ValueError(
                f"start_layers must be between 1 and {full - 1} ({cfg.name} has {full} layers; 0 "
                f"trains all of them from the start), got {cfg.start_layers}"
            )
        if not 1 <= cfg.grow_stage < len(cfg.stages):
            raise ValueError(
                f"grow_stage must name a later curriculum stage, 1..{len(cfg.stages) - 1}, got {cfg.grow_stage}"
            )
    if cfg.workers and cfg.data_stream != "per_step":
        raise ValueError(
            f"--workers {cfg.workers} needs --data-stream per_step (the sequential stream is one "
            "random generator, it cannot be split across processes)"
        )


def answer_exact_match(logits: torch.Tensor, labels: torch.Tensor, qid: torch.Tensor, n: int) -> float:
    """Fraction of answers whose every token is the argmax (teacher forced)."""
    pred = logits[:, :-1].argmax(-1)
    target, q = labels[:, 1:], qid[:, 1:]
    wrong = ((pred != target) & (target != IGNORE)).long()
    per_query = torch.zeros(n, dtype=torch.long, device=wrong.device).scatter_add_(
        0, q[q >= 0], wrong[q >= 0]
    )
    return float((per_query == 0).float().mean()) if n else 0.0


# -- schedule and curriculum ---------------------------------------------------------------


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Warmup-stable-decay: linear warmup, constant peak (plateaus end while the rate is high),
    cosine decay to ``min_lr_ratio * lr`` over the last ``decay_fraction`` of the steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = int(total * (1 - cfg.decay_fraction))
    if step < decay_start:
        return cfg.lr
    progress = min(1.0, (step - decay_start) / max(1, total - decay_start))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class Curriculum:
    stage: int = 0
    stage_start: int = 0
    ema: float = 0.0
    transitions: list[dict] = field(default_factory=list)

    def update(self, cfg: TrainConfig, stage_steps: list[int], step: int, exact_match: float) -> None:
        self.ema = 0.9 * self.ema + 0.1 * exact_match
        if self.stage >= len(cfg.stages) - 1:
            return
        in_stage = step + 1 - self.stage_start
        ready = in_stage >= cfg.min_stage_steps and self.ema >= cfg.advance_at
        capped = step + 1 >= sum(stage_steps[: self.stage + 1])
        if ready or capped:
            self.stage += 1
            self.stage_start = step + 1
            self.transitions.append(
                {
                    "step": step + 1,
                    "to_context": cfg.stages[self.stage]["context"],
                    "reason": "accuracy" if ready else "step cap",
                    "ema_exact_match": round(self.ema, 4),
                }
            )
            self.ema = 0.0


# -- training ------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(cfg: TrainConfig, tokenizer: ByteTokenizer, device: torch.device) -> dict[int, float]:
    """Seconds per step (making the batch, forward + backward) in each stage, on a fresh model of
    the depth that stage trains (``layers_at``). Making the batch is ~1% of a CPU step but most of a GPU step with ``batch_scale``; with
    ``workers`` it overlaps the step, which then takes the longer of the two (data / workers)."""
    rng = random.Random("depthkv-train/probe")
    seconds = {}
    for index, stage in enumerate(cfg.stages):
        probe = model_at(cfg, layers_at(cfg, index)).to(device)
        data, compute = [], []
        for _ in range(3):
            start = time.perf_counter()
            ids, labels, _, _, _ = make_batch(rng, cfg, stage, tokenizer)
            made = time.perf_counter()
            probe(input_ids=ids.to(device), labels=labels.to(device)).loss.backward()
            _sync(device)
            data.append(made - start)
            compute.append(time.perf_counter() - made)
            probe.zero_grad(set_to_none=True)
        data_s, compute_s = sum(data[1:]) / 2, sum(compute[1:]) / 2
        seconds[index] = max(compute_s, data_s / cfg.workers) if cfg.workers else data_s + compute_s
    return seconds


def plan_steps(seconds: dict[int, float], cfg: TrainConfig, minutes: float) -> tuple[int, list[int]]:
    """(total steps, most steps of each stage but the last) that fit in ``minutes`` when each stage
    takes its ``time_shares`` share (8% added to the probed step time for the optimizer and logging).

    A stage that reaches its accuracy early hands its steps to later, costlier stages, so a run
    can take longer than planned; the training loop stops at 1.3 x the budget."""
    shares = [*cfg.time_shares, 1 - sum(cfg.time_shares)]
    steps = [max(1, int(share * minutes * 60 / (seconds[i] * 1.08))) for i, share in enumerate(shares)]
    return max(cfg.warmup_steps + 10, sum(steps)), steps[:-1]


def default_stage_steps(cfg: TrainConfig, total: int) -> list[int]:
    """Stage step caps for a run given by ``--steps`` alone: the time shares, as shares of steps."""
    return [max(1, int(share * total)) for share in cfg.time_shares]


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (``depthkv.files.atomic_file``): a run killed while
    saving keeps its previous checkpoint, and leaves no partial file behind."""
    with atomic_file(path, binary=True) as fh:
        torch.save(state, fh)


# Settings a resumed run must share with the run that wrote the checkpoint (the step budget,
# threads and device may change: a run cut on the CPU can finish on a GPU).
_RESUME_FIELDS = (
    "name",
    "seed",
    "lr",
    "min_lr_ratio",
    "decay_fraction",
    "warmup_steps",
    "weight_decay",
    "betas",
    "grad_clip",
    "stages",
    "advance_at",
    "min_stage_steps",
    "max_queries",
    "multi_key_prob",
    "batch_scale",
    "data_stream",
    "filler_loss",
    "initializer_range",
    "start_layers",
    "grow_stage",
    "shallow_bias",
)


def resume_mismatch(saved: dict, cfg: TrainConfig) -> list[str]:
    """``"field: checkpoint X, now Y"`` for each setting that differs from the checkpoint's. A
    setting newer than the checkpoint counts as its default there (what that run used)."""
    now = asdict(cfg)
    fields = TrainConfig.__dataclass_fields__
    was = {name: saved.get(name, fields[name].default) for name in _RESUME_FIELDS}
    return [
        f"{name}: checkpoint {was[name]!r}, now {now[name]!r}"
        for name in _RESUME_FIELDS
        if _plain(was[name]) != _plain(now[name])
    ]


def _plain(value):
    """Tuples as lists, recursively (a config read back from JSON has lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def resolve_device(name: str) -> torch.device:
    """The training device; a clear error when CUDA is asked for but absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch build or machine has no CUDA device; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: expected cpu or cuda[:N]")
    return device


def train(
    cfg: TrainConfig,
    out_dir: Path,
    work_dir: Path,
    resume: bool = False,
    log=print,
    extend_to: int | None = None,
) -> dict:
    """Train ``cfg`` into ``out_dir`` (checkpoints in ``work_dir``). ``resume`` continues the
    checkpoint there; ``extend_to`` (with ``resume``) raises a finished or cut run's planned total to
    that many steps: the learning rate then follows the schedule of the new total (a finished run's
    decay restarts from near the peak). Extensions are recorded in ``training.json``."""
    device = resolve_device(cfg.device)
    check_run_settings(cfg)
    torch.set_num_threads(cfg.threads)
    tokenizer = ByteTokenizer()
    preset = PRESETS[cfg.name]
    model = model_at(cfg, layers_at(cfg, 0)).to(device)
    optimizer = new_optimizer(cfg, model)
    rng = random.Random(f"depthkv-train/{cfg.name}/{cfg.seed}")
    curriculum = Curriculum()
    ckpt_path = work_dir / "checkpoint.pt"
    step, elapsed, history, extensions = 0, 0.0, [], []
    probe_seconds = None
    stage_steps = list(cfg.stage_steps) if cfg.stage_steps is not None else None
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True, map_location=device)  # tensors and plain values only: no pickled code
        mismatch = resume_mismatch(state["config"], cfg)
        if mismatch:
            raise ValueError(
                f"{ckpt_path} was written with other settings ({'; '.join(mismatch)}); resume with "
                "the same settings, or give another --work-dir to start afresh"
            )
        curriculum = Curriculum(**state["curriculum"])
        if layers_at(cfg, curriculum.stage) != model.config.num_hidden_layers:  # grown before the stop
            model = model_at(cfg, layers_at(cfg, curriculum.stage)).to(device)
            optimizer = new_optimizer(cfg, model)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(state["rng"])
        step, elapsed, history, total = state["step"], state["elapsed"], state["history"], state["total"]
        probe_seconds, stage_steps = state["probe_seconds"], state["stage_steps"]
        extensions = state.get("extensions", [])
        log(f"resumed at step {step}/{total} ({elapsed / 60:.1f} min trained)")
        if extend_to is not None and extend_to != total:
            if extend_to < total:
                raise ValueError(
                    f"--extend-to {extend_to} is below the run's planned {total} steps; give a larger "
                    f"total (or plain --resume to finish the planned {total})"
                )
            extensions.append({"at_step": step, "from_total": total, "to_total": extend_to})
            log(
                f"extended from {total} to {extend_to} steps: learning rate {lr_at(cfg, step - 1, total):.2e}"
                f" at step {step} before, {lr_at(cfg, step, extend_to):.2e} on the new schedule"
            )
            total = extend_to
    elif extend_to is not None:
        raise ValueError(
            f"--extend-to continues a run from its checkpoint: give --resume and the --work-dir that holds "
            f"it ({ckpt_path} {'exists' if ckpt_path.exists() else 'does not exist'})"
        )
    elif cfg.steps is not None:
        total = cfg.steps
        stage_steps = stage_steps or default_stage_steps(cfg, total)
    else:
        probe_seconds = _timed_steps(cfg, tokenizer, device)
        total, planned = plan_steps(probe_seconds, cfg, cfg.minutes)
        stage_steps = stage_steps or planned
        log(f"probe seconds/step by stage {probe_seconds} -> {total} steps, stage caps {stage_steps}")
    if len(stage_steps) != len(cfg.stages) - 1:
        raise ValueError(f"need {len(cfg.stages) - 1} stage step caps, got {stage_steps}")
    model.train()
    limit = cfg.minutes * 60 * 1.3 if cfg.minutes is not None and cfg.steps is None else float("inf")
    last_ckpt = time.perf_counter()
    window: list[dict] = []
    stopped_early = False
    with contextlib.ExitStack() as stack:
        # Worker processes making the next batches (data_stream per_step); closed at any exit.
        ahead = (
            stack.enter_context(AheadBatches(functools.partial(step_batch, cfg), cfg.workers))
            if cfg.workers
            else None
        )
        while step < total:
            if cfg.stop_at is not None and step >= cfg.stop_at:
                stopped_early = True
                log(f"stopping at step {step}/{total} (--stop-at)")
                break
            if elapsed > limit:
                stopped_early = True
                log(f"time limit (1.3 x budget) reached at step {step}/{total}")
                break
            started = time.perf_counter()
            if ahead is not None:
                ids, labels, qid, n, context_length = ahead.get(step, curriculum.stage)
            elif cfg.data_stream == "per_step":
                ids, labels, qid, n, context_length = step_batch(cfg, step, curriculum.stage)
            else:
                ids, labels, qid, n, context_length = make_batch(
                    rng, cfg, cfg.stages[curriculum.stage], tokenizer
                )
            data_seconds = time.perf_counter() - started
            ids, labels, qid = ids.to(device), labels.to(device), qid.to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step, total)
            out = model(input_ids=ids, labels=labels)
            out.loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            exact = answer_exact_match(out.logits.detach(), labels, qid, n)
            curriculum.update(cfg, stage_steps, step, exact)
            step += 1
            if layers_at(cfg, curriculum.stage) > model.config.num_hidden_layers:
                small, old_optimizer = model, optimizer
                model = grow_model(small, model_at(cfg, layers_at(cfg, curriculum.stage))).to(device)
                model.train()
                optimizer = new_optimizer(cfg, model)
                carry_adam_state(small, old_optimizer, model, optimizer)
                curriculum.transitions.append({"step": step, "grew_to_layers": model.config.num_hidden_layers})
                log(f"step {step}: grew from {small.config.num_hidden_layers} to {model.config.num_hidden_layers} layers")
            elapsed += time.perf_counter() - started
            window.append(
                {
                    "loss": float(out.loss.detach()),
                    "em": exact,
                    "tokens": ids.numel(),
                    "grad_norm": grad_norm,
                    "seconds": time.perf_counter() - started,
                    "data_seconds": data_seconds,
                }
            )
            if step % 10 == 0 or step == total:
                record = {
                    "step": step,
                    "elapsed_s": round(elapsed, 1),
                    "stage_context": cfg.stages[curriculum.stage]["context"],
                    "context_length": context_length,
                    "lr": round(lr_at(cfg, step - 1, total), 6),
                    "loss": round(sum(w["loss"] for w in window) / len(window), 4),
                    "exact_match": round(sum(w["em"] for w in window) / len(window), 4),
                    "grad_norm": round(sum(w["grad_norm"] for w in window) / len(window), 3),
                    "tokens_per_s": round(
                        sum(w["tokens"] for w in window) / sum(w["seconds"] for w in window)
                    ),
                    # Share of the step time spent making batches (Python, one core): most of a GPU step.
                    "data_share": round(
                        sum(w["data_seconds"] for w in window) / sum(w["seconds"] for w in window), 3
                    ),
                }
                if cfg.probe_every and (step % cfg.probe_every == 0 or step == total):
                    record["key_match"] = key_matching(model, tokenizer)
                history.append(record)
                window = []
                log(json.dumps(record))
            stopping = step == total or (cfg.stop_at is not None and step >= cfg.stop_at) or elapsed > limit
            if time.perf_counter() - last_ckpt > 120 or stopping:
                # Every stop leaves a checkpoint, so a cut run continues exactly with --resume.
                _save_checkpoint(
                    ckpt_path,
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "rng": rng.getstate(),
                        "curriculum": asdict(curriculum),
                        "step": step,
                        "elapsed": elapsed,
                        "history": history,
                        "total": total,
                        "extensions": extensions,
                        "probe_seconds": probe_seconds,
                        "stage_steps": stage_steps,
                        "config": asdict(cfg),
                    },
                )
                last_ckpt = time.perf_counter()
    model.eval()
    model.to("cpu")
    save_model(model, tokenizer, out_dir)
    import transformers

    base = (
        f"python -m {MODULE} --name {cfg.name} --recipe {cfg.recipe} --seed {cfg.seed} --lr {cfg.lr} "
        f"--threads {cfg.threads} --steps {extensions[0]['from_total'] if extensions else total} "
        f"--stage-steps {' '.join(map(str, stage_steps))}"
        + (f" --device {cfg.device}" if cfg.device != "cpu" else "")
        + (f" --batch-scale {cfg.batch_scale}" if cfg.batch_scale != 1 else "")
        + (f" --data-stream {cfg.data_stream}" if cfg.data_stream != "sequential" else "")
        + (f" --start-layers {cfg.start_layers} --grow-stage {cfg.grow_stage}" if cfg.start_layers else "")
    )
    # (stopped at, planned total) of each part of the run: the first, then each extension.
    ends = [(e["at_step"], e["from_total"]) for e in extensions] + [(step, total)]
    stops = [at if at < planned else None for at, planned in ends]
    summary = {
        "name": cfg.name,
        "architecture": model.config.architectures[0] if model.config.architectures else type(model).__name__,
        "preset": preset,
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": asdict(cfg),
        "seed": cfg.seed,
        "steps_planned": total,
        "extensions": extensions,
        "steps": step,
        "stopped_early": stopped_early,
        "probe_seconds_per_step": probe_seconds,
        "schedule": {
            "optimizer": "AdamW",
            "lr": cfg.lr,
            "warmup_steps": cfg.warmup_steps,
            "decay": f"warmup-stable-decay: constant, cosine over the last {cfg.decay_fraction:.0%} of steps",
            "min_lr": cfg.lr * cfg.min_lr_ratio,
            "weight_decay": cfg.weight_decay,
            "betas": list(cfg.betas),
            "grad_clip": cfg.grad_clip,
            "batch_tokens": [stage["batch_tokens"] * cfg.batch_scale for stage in cfg.stages],
        },
        "curriculum": {
            "stages": [dict(stage) for stage in cfg.stages],
            "stage_steps": stage_steps,
            "advance_at": cfg.advance_at,
            "transitions": curriculum.transitions,
        },
        "wall_time_s": round(elapsed, 1),
        "final": history[-1] if history else None,
        "history": history,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "machine": {
            "cpu_threads": cfg.threads,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "device": str(device),
            "batch_workers": cfg.workers,
            "batches_remade": ahead.remade if ahead is not None else 0,
            **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}),
        },
        "command": " ".join(["python", "-m", MODULE, *sys.argv[1:]]),
        # One command per part: the first run, then each extension continuing the checkpoint the
        # part before left; a part that stopped before its planned total carries its --stop-at.
        "reproduce": base + _stop_at(stops[0]),
        "reproduce_extensions": [
            f"{base} --resume --extend-to {e['to_total']}" + _stop_at(stop)
            for e, stop in zip(extensions, stops[1:], strict=True)
        ],
    }
    atomic_write_text(out_dir / "training.json", json.dumps(summary, indent=2) + "\n")
    return summary


def save_model(model, tokenizer: ByteTokenizer, out_dir: Path) -> None:
    """config.json + model.safetensors (transformers 5 always writes safetensors) + tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.do_sample = False
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    weights = out_dir / "model.safetensors"
    if not weights.is_file():
        raise RuntimeError(f"save_pretrained wrote no model.safetensors into {out_dir}")
    weights.chmod(0o644)  # safetensors writes 0600; package data must be readable by every user


# -- evaluation ----------------------------------------------------------------------------


def greedy_continuation(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy decode with the full KV cache: ``<s>`` + prompt, then ``max_new_tokens`` tokens."""
    from transformers import DynamicCache

    from depthkv import greedy_generate

    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=True)], device=model.device)
    tokens, _ = greedy_generate(model, ids, DynamicCache(config=model.config), max_new_tokens)
    return tokenizer.decode(tokens[0].tolist())


def card_accuracy(model, tokenizer, tasks, lengths, n: int, seed: int = 0, log=print) -> dict:
    """The model card's accuracy table: full-cache greedy accuracy per task and context length on
    the evaluation split, ``{"task@length": {"task", "context_length", "n", "accuracy", "scores"}}``
    (a task too long for a length is left out, with a message to ``log``)."""
    cells = {}
    for length in lengths:
        for task in tasks:
            try:
                workload = builtin_workload(
                    [task], n_per_task=n, context_length=length, split="evaluation", seed=seed
                )
            except ValueError as err:
                log(f"skip {task} @ {length}: {err}")
                continue
            scores = []
            for ex in workload:
                prediction = greedy_continuation(
                    model, tokenizer, ex.prompt, len(tokenizer.encode(ex.answer)) + 2
                )
                scores.append(score(ex, prediction))
            cells[f"{task}@{length}"] = {
                "task": task,
                "context_length": length,
                "n": len(scores),
                "accuracy": sum(scores) / len(scores),
                "scores": scores,
            }
            log(f"{task:18s} {length:5d}  {sum(scores) / len(scores):.3f}")
    return cells


def learned_tasks(cells: dict, length: int, threshold: float = LEARNED_THRESHOLD) -> list[str]:
    """Tasks whose full-cache accuracy at ``length`` reaches ``threshold``."""
    return [c["task"] for c in cells.values() if c["context_length"] == length and c["accuracy"] >= threshold]


def write_card(out_dir: Path, evaluation: dict) -> None:
    training = json.loads((out_dir / "training.json").read_text(encoding="utf-8"))
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    cells = evaluation["cells"]
    lengths = evaluation["lengths"]
    tasks = evaluation["tasks"]
    trained = evaluation["trained_length"]
    learned = evaluation["learned_tasks"]
    sizes = {
        p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file() and p.name != "README.md"
    }
    head = config["hidden_size"] // config["num_attention_heads"]
    recorded = [training["reproduce"], *training.get("reproduce_extensions", [])]
    lines = [
        f"# {training['name']}",
        "",
        f"A tiny byte-level `{training['architecture']}` trained on this project's synthetic long-context",
        "retrieval tasks, so that its layers take on different jobs and depthkv's per-layer calibration",
        "measures something real. Not a language model: it reads and answers the `depthkv.workload` formats.",
        "",
        "Load it offline with `model, tokenizer = depthkv.load_model(" + repr(training["name"]) + ")`.",
        "",
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
        f"| class | `{training['architecture']}` (`model_type={config['model_type']}`), attention `sdpa` |",
        f"| layers | {config['num_hidden_layers']}"
        + (
            f" (the first {training['config']['start_layers']} trained alone, the rest added at curriculum"
            f" stage {training['config']['grow_stage']})"
            if training["config"].get("start_layers")
            else ""
        )
        + " |",
        f"| hidden size | {config['hidden_size']} (MLP {config['intermediate_size']}) |",
        f"| attention heads | {config['num_attention_heads']} query : {config['num_key_value_heads']} KV (GQA), head dim {head} |",
        f"| vocabulary | {config['vocab_size']} (ByteTokenizer's 259 ids: bytes, `<pad>`=256, `<s>`=257, `</s>`=258; rest unused) |",
        f"| positions | RoPE, max_position_embeddings {config['max_position_embeddings']} |",
        f"| parameters | {training['parameters']:,} (untied embeddings), stored fp32 |",
        "",
        "Files: "
        + ", ".join(f"`{k}` ({v / 1e6:.2f} MB)" if v > 1e5 else f"`{k}`" for k, v in sizes.items())
        + ".",
        "",
        "## Training",
        "",
        "Trained with `training/train.py` of the depthkv source repository (the training code is in the"
        " repository's `training/` folder, not in the installed package). Full record (the command as it was"
        " run, config, losses every 10 steps, curriculum transitions) in `training.json`"
        + _former_module_note(recorded)
        + ". Exact replay, from the root of a clone of the repository (it writes to"
        f" `depthkv/models/{training['name']}` and its checkpoints to `/tmp/depthkv-train/{training['name']}`;"
        " add `--out DIR` to keep the shipped files):",
        "",
        *["    " + runnable_command(command) for command in recorded],
        "",
        "- Data: generated on the fly in the exact text format of `depthkv.workload` (no download): contexts from",
        "  the task generators `niah_single`, `niah_multikey`, `niah_multivalue`, `niah_multiquery`,",
        "  `kv_retrieval` (seeds from a training stream unrelated to the calibration/evaluation splits), plus",
        '  "dense" rows (2 to max_keys `key:value` lines, no filler) and "many" rows (1 to max_keys keys in',
        "  filler, a quarter of them written 2-4 times), with words and filler from `depthkv.workload.text`.",
        "- Multi-query dense supervision: after each context, questions about (nearly) every key in the",
        "  tasks' prompt form (`\\n?key:` or `\\n?k1 k2 ...:`), each followed by its answer; the loss is on the",
        "  answer tokens and the newline ending each answer"
        + (
            ", and on the context's filler lines (never on its records' random keys and values)."
            if training["config"].get("filler_loss")
            else ", nowhere else."
        ),
        "- Curriculum (context length in characters, max keys, row kinds): "
        + "; ".join(
            f"{stage['min_context']}-{stage['context']}, {stage['max_keys']} keys, "
            + ", ".join(f"{k} {w:g}" for k, w in stage["kinds"].items())
            for stage in training["curriculum"]["stages"]
        ),
        f"  (advance when the teacher-forced answer exact match EMA >= {training['curriculum']['advance_at']},",
        "  or at a stage's step cap); transitions: "
        + "; ".join(map(_transition, training["curriculum"]["transitions"]))
        + ".",
        *_question_lines(training["curriculum"]["stages"]),
        f"- AdamW lr {training['schedule']['lr']}, {training['schedule']['warmup_steps']} warmup steps, constant,"
        f" cosine to {training['schedule']['min_lr']:.1e} over the last {training['config']['decay_fraction']:.0%}"
        f" of the steps, weight decay {training['schedule']['weight_decay']}, grad clip"
        f" {training['schedule']['grad_clip']}, about {'/'.join(map(str, training['schedule']['batch_tokens']))}"
        " tokens per batch by stage, fp32; weights initialised with std"
        f" {_init_std(training)}.",
        f"- {training['steps']} steps in {training['wall_time_s'] / 60:.1f} minutes on {_where(training)},"
        f" seed {training['seed']};"
        f" torch {training['versions']['torch']}, transformers {training['versions']['transformers']}.",
        *_extension_lines(training),
        f"- Final training batches: {'loss' if training['config'].get('filler_loss') else 'answer loss'}"
        f" {training['final']['loss']}, teacher-forced answer exact match"
        f" {training['final']['exact_match']} (context {training['final']['stage_context']}).",
        "",
        "## Full-cache accuracy (measured)",
        "",
        "Greedy decoding with the full KV cache of `<s>` + prompt, `len(answer) + 2` new tokens, scored by",
        "`depthkv.workload.score` (exact match; recall of items for multi-item tasks), on",
        f'`builtin_workload([task], n_per_task={evaluation["n"]}, context_length=L, split="evaluation", seed={evaluation["seed"]})`.',
        f"n = {evaluation['n']} examples per cell. Per-example scores are in `evaluation.json`. Measured"
        " (from the repository root; it rewrites `evaluation.json` and this card in the model folder, or with"
        " `--out DIR` in a copy of it) by:",
        "",
        "    " + eval_command(evaluation),
        "",
        "| task | " + " | ".join(f"L={length}" for length in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for task in tasks:
        row = []
        for length in lengths:
            cell = cells.get(f"{task}@{length}")
            row.append(f"{cell['accuracy']:.3f}" if cell else "n/a")
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    means = []
    for length in lengths:
        values = [cells[f"{t}@{length}"]["accuracy"] for t in DEFAULT_TASKS if f"{t}@{length}" in cells]
        means.append(f"**{sum(values) / len(values):.3f}**" if values else "n/a")
    lines.append("| mean of default retrieval tasks | " + " | ".join(means) + " |")
    not_learned = [t for t in tasks if t not in learned]
    lines += [
        "",
        f"Learned (accuracy >= {evaluation['learned_threshold']} at the trained length L={trained}): "
        + (", ".join(f"`{t}`" for t in learned) or "none")
        + ".",
        "",
        "Not learned: "
        + (", ".join(f"`{t}`" for t in not_learned) or "none")
        + ". "
        + "Tasks outside the default retrieval set (`variable_tracking`, `common_words`, `frequent_words`) are"
        " not in the training data at all; their rows show what an untrained format gives. Leave not-learned"
        " tasks out of workloads for this model.",
        "",
        *_key_matching_note(cells, trained, evaluation["learned_threshold"], training),
        "## Intended use",
        "",
        "Test and demo model for depthkv: calibration, allocation and the budget-aware cache/kernels on a CPU.",
        "Its accuracy numbers are about these synthetic tasks only.",
        "",
    ]
    atomic_write_text(out_dir / "README.md", "\n".join(lines))


def _transition(t: dict) -> str:
    """One curriculum transition (a stage change or a growth in depth) as the card says it."""
    if "grew_to_layers" in t:
        return f"step {t['step']}: grown to {t['grew_to_layers']} layers (training/grow.py)"
    return f"step {t['step']} -> {t['to_context']} ({t['reason']})"


def runnable_command(recorded: str) -> str:
    """A command of a ``training.json`` (``reproduce``, ``reproduce_extensions``) as it runs today:
    ``python -m depthkv.models.train ARGS``, the module path the shipped models' records name,
    becomes ``python -m training.train ARGS``. Raises ``ValueError`` for any other command."""
    head, _, args = recorded.partition(" -m ")
    module, _, rest = args.partition(" ")
    if head != "python" or module not in (MODULE, *_FORMER_MODULES):
        raise ValueError(f"not a recorded training command (python -m {MODULE} ...): {recorded!r}")
    return f"python -m {MODULE} {rest}"


def _former_module_note(recorded: list[str]) -> str:
    """The card's word on records that name the script's former module path (none when they don't)."""
    former = sorted({c.partition(" -m ")[2].partition(" ")[0] for c in recorded} & set(_FORMER_MODULES))
    if not former:
        return ""
    return f" (its commands name the module path the script had then, {', '.join(f'`{m}`' for m in former)})"


def eval_command(evaluation: dict) -> str:
    """The command that measures ``evaluation`` (an ``evaluation.json``) again: ``--eval-only`` with
    its example count, lengths and threshold (the options left at their defaults are omitted).
    Raises ``ValueError`` for an evaluation no option of the script can repeat."""
    if evaluation["seed"] != 0 or evaluation["split"] != "evaluation" or evaluation["tasks"] != list(TASKS):
        raise ValueError(
            "this evaluation used a seed, split or task list the script has no option for: "
            f"seed {evaluation['seed']}, split {evaluation['split']!r}, tasks {evaluation['tasks']}"
        )
    parts = ["python", "-m", MODULE, "--name", evaluation["name"], "--eval-only"]
    if evaluation["n"] != EVAL_N:
        parts += ["--eval-n", str(evaluation["n"])]
    if list(evaluation["lengths"]) != list(EVAL_LENGTHS):
        parts += ["--eval-lengths", *map(str, evaluation["lengths"])]
    if evaluation["learned_threshold"] != LEARNED_THRESHOLD:
        parts += ["--learned-threshold", str(evaluation["learned_threshold"])]
    return " ".join(parts)


def _question_lines(stages: list[dict]) -> list[str]:
    """Card lines for the stages whose questions differ from the defaults (recipes v5-v7), one per
    distinct set of options, naming the stages by context length; none for v1-v4."""
    groups: dict[str, list[str]] = {}
    for stage in stages:
        words = _question_options(stage)
        if words:
            groups.setdefault(words, []).append(f"{stage['min_context']}-{stage['context']}")
    return [f"- Questions in the {', '.join(names)} stages: {words}." for words, names in groups.items()]


def _question_options(stage: dict) -> str:
    """The stage's question options (v5-v7) in words; empty for a stage that keeps the defaults."""
    words = []
    if stage.get("task_question"):
        words.append("task rows ask their own question first")
    if "multi_key_prob" in stage:
        words.append(f"a re-asked question groups keys with chance {stage['multi_key_prob']:g}")
    if "max_group" in stage:
        words.append(f"up to {stage['max_group']} keys per question")
    if stage.get("key_spaces", 1) > 1:
        words.append(f"keys 1-{stage['key_spaces']} spaces apart in re-asked questions")
    return "; ".join(words)


def _init_std(training: dict) -> float:
    """The initial weights' std of a run (older records kept it in the preset)."""
    return training["config"].get("initializer_range", training["preset"].get("initializer_range", 0.02))


def _stop_at(step: int | None) -> str:
    return f" --stop-at {step}" if step is not None else ""


def _extension_lines(training: dict) -> list[str]:
    """The card's account of ``--extend-to`` continuations (none for a run trained in one go)."""
    lines = []
    for e in training.get("extensions", []):
        after = next((r for r in training["history"] if r["step"] > e["at_step"]), None)
        restart = f" (learning rate {after['lr']:.1e} at step {after['step']})" if after else ""
        lines.append(
            f"- Extended: planned for {e['from_total']} steps, continued from step {e['at_step']}"
            f" to {e['to_total']} (`--resume --extend-to {e['to_total']}`), the learning rate following the"
            f" schedule of the new total{restart}."
        )
    return lines


def _where(training: dict) -> str:
    """Where a run trained, as the card says it."""
    machine = training["machine"]
    if machine.get("gpu"):
        return f"one {machine['gpu']} GPU"
    return f"{machine['cpu_threads']} CPU thread(s) (a 2-core VM shared with other work)"


def _key_matching_note(cells: dict, length: int, threshold: float, training: dict) -> list[str]:
    """A paragraph on what the numbers say about key matching (only when it was not learned)."""
    multikey = cells.get(f"niah_multikey@{length}")
    if multikey is None or multikey["accuracy"] >= threshold:
        return []
    first = training["curriculum"]["stages"][0]
    in_first = [r for r in training["history"] if r["stage_context"] == first["context"]]
    tail = in_first[-5:]
    reached = sum(r["exact_match"] for r in tail) / max(1, len(tail))
    end = in_first[-1]["step"] if in_first else 0
    return [
        "What the model does: it copies a value from the context (`niah_single`: one record) but does",
        f"not reliably match 4-letter keys: `niah_multikey` (4 records, chance 0.25) scores {multikey['accuracy']:.3f}",
        "and `kv_retrieval` (about L/10 records) fails. `niah_multiquery` is scored by recall without order, so",
        "listing the context's values without matching them to keys already earns credit there (up to full);",
        "`niah_multivalue` needs every value of one key in order. Within this training budget the key-matching",
        "circuit had only started to form: on the first stage's short contexts (up to"
        f" {first['max_keys']} records) the teacher-forced answer exact match was {reached:.2f} when the stage"
        f" ended at step {end}, below the {training['curriculum']['advance_at']} that advances a stage (see `training.json`).",
        "",
    ]


def run_evaluation(
    name: str,
    out_dir: Path,
    lengths,
    n: int,
    trained_length: int,
    threshold: float,
    log=print,
    device: str = "cpu",
):
    from depthkv.models import load_model

    torch.set_num_threads(1)
    model, tokenizer = load_model(str(out_dir))
    model.to(resolve_device(device))
    started = time.perf_counter()
    cells = card_accuracy(model, tokenizer, list(TASKS), lengths, n, log=log)
    evaluation = {
        "name": name,
        "split": "evaluation",
        "seed": 0,
        "n": n,
        "lengths": list(lengths),
        "tasks": list(TASKS),
        "trained_length": trained_length,
        "learned_threshold": threshold,
        "learned_tasks": learned_tasks(cells, trained_length, threshold),
        "decode": "greedy, full cache, <s> + prompt, len(answer)+2 new tokens",
        "wall_time_s": round(time.perf_counter() - started, 1),
        "cells": cells,
    }
    atomic_write_text(out_dir / "evaluation.json", json.dumps(evaluation, indent=1) + "\n")
    write_card(out_dir, evaluation)
    return evaluation


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m training.train``."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, choices=sorted(PRESETS))
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="exact number of optimizer steps (reproducible)")
    budget.add_argument("--minutes", type=float, help="wall-clock budget, turned into a step count")
    parser.add_argument("--stop-at", type=int, help="with --steps: stop after this many steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--recipe",
        default="v2",
        choices=sorted(RECIPES),
        help="training settings (v1: the first shipped models)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core VM)"
    )
    parser.add_argument(
        "--lr", type=float, help=f"peak learning rate (default: the recipe's; v1/v2 {TrainConfig.lr})"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu (default) or cuda[:N]: train and evaluate on a GPU"
    )
    parser.add_argument(
        "--batch-scale",
        type=int,
        help="multiply every stage's tokens per batch (default: the recipe's, 1 before v4; e.g. 16 on a GPU; "
        "the learning rate is unchanged)",
    )
    parser.add_argument(
        "--data-stream",
        choices=("sequential", "per_step"),
        default="sequential",
        help="sequential: one random stream (the shipped models); per_step: each step's batch from its own "
        "seed, which --workers can make ahead (same batches for any worker count)",
    )
    parser.add_argument(
        "--probe-every",
        type=int,
        default=0,
        help="log the key-matching probe (first answer digit right with 2/4/8 records) every N steps",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes making batches ahead of the GPU (needs --data-stream per_step; 0: in the training loop)",
    )
    parser.add_argument(
        "--start-layers",
        type=int,
        help="train this many layers first, then grow to the preset's depth (default: the recipe's; 0: no growth)",
    )
    parser.add_argument(
        "--grow-stage", type=int, help="the curriculum stage at whose start the model grows (default: the recipe's)"
    )
    parser.add_argument(
        "--time-shares",
        type=float,
        nargs="+",
        help=f"with --minutes: planned share of the time for each stage but the last (default {TrainConfig.time_shares})",
    )
    parser.add_argument(
        "--stage-steps", type=int, nargs="+", help="most steps of each stage but the last (default: planned)"
    )
    parser.add_argument("--out", type=Path, help="model folder (default: depthkv/models/<name>)")
    parser.add_argument("--work-dir", type=Path, help="checkpoints (default: /tmp/depthkv-train/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the work dir's checkpoint")
    parser.add_argument(
        "--extend-to",
        type=int,
        help="with --resume: raise the run's planned total to this many steps (the learning-rate schedule "
        "follows the new total); recorded in training.json",
    )
    parser.add_argument("--eval-only", action="store_true", help="only evaluate and write the card")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    parser.add_argument("--card-only", action="store_true", help="rewrite README.md from evaluation.json")
    parser.add_argument("--eval-n", type=int, default=EVAL_N, help="evaluation examples per task and length")
    parser.add_argument(
        "--eval-lengths", type=int, nargs="+", default=list(EVAL_LENGTHS), help="evaluation context lengths"
    )
    parser.add_argument(
        "--learned-threshold",
        type=float,
        default=LEARNED_THRESHOLD,
        help="accuracy at the trained length from which the card lists a task as learned",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    out_dir = args.out or MODELS_DIR / args.name
    work_dir = args.work_dir or Path("/tmp/depthkv-train") / args.name

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    if args.card_only:
        write_card(out_dir, json.loads((out_dir / "evaluation.json").read_text(encoding="utf-8")))
        return
    if not args.eval_only:
        if args.steps is None and args.minutes is None:
            parser.error("give --steps or --minutes")
        cfg = recipe_config(
            args.name,
            args.recipe,
            seed=args.seed,
            steps=args.steps,
            minutes=args.minutes,
            **({"lr": args.lr} if args.lr is not None else {}),
            stage_steps=tuple(args.stage_steps) if args.stage_steps else None,
            stop_at=args.stop_at,
            **({"time_shares": tuple(args.time_shares)} if args.time_shares else {}),
            threads=args.threads,
            device=args.device,
            **({"batch_scale": args.batch_scale} if args.batch_scale is not None else {}),
            data_stream=args.data_stream,
            workers=args.workers,
            probe_every=args.probe_every,
            **({"start_layers": args.start_layers} if args.start_layers is not None else {}),
            **({"grow_stage": args.grow_stage} if args.grow_stage is not None else {}),
        )
        train(cfg, out_dir, work_dir, resume=args.resume, log=log, extend_to=args.extend_to)
    if not args.no_eval:
        trained_length = STAGES[-1]["context"]
        run_evaluation(
            args.name,
            out_dir,
            args.eval_lengths,
            args.eval_n,
            trained_length,
            args.learned_threshold,
            log,
            device=args.device,
        )


if __name__ == "__main__":
    main()
