"""The training script of the embedded models: its data, schedule and curriculum, and that a run
cut anywhere continues exactly (checkpoint + ``--resume``)."""

from __future__ import annotations

import json
import pickle
import random
import re

import pytest
import torch
from safetensors.torch import load_file

from depthkv.workload import ByteTokenizer
from training import train as T

TOK = ByteTokenizer()
RECORD = re.compile(r"^([a-z]+):(\d+)$", re.MULTILINE)

# A model small enough to train a few steps in a second.
SMALL = dict(
    family="llama",
    num_hidden_layers=1,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=2,
    num_key_value_heads=1,
)
SMALL_STAGES = (
    {
        "context": 48,
        "min_context": 20,
        "max_keys": 4,
        "batch_tokens": 192,
        "kinds": {"dense": 0.7, "many": 0.3},
    },
    {"context": 96, "min_context": 48, "max_keys": 6, "batch_tokens": 256, "kinds": T.KINDS},
)


def _values(context: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for key, value in RECORD.findall(context):
        values.setdefault(key, []).append(value)
    return values


V5_STAGES = T.RECIPES["v5"]["stages"]
V6_STAGES = T.RECIPES["v6"]["stages"]
V7_STAGES = T.RECIPES["v7"]["stages"]


@pytest.mark.parametrize(
    "stages, stage",
    [(T.STAGES, i) for i in range(len(T.STAGES))]
    + [(V5_STAGES, i) for i in range(3, len(V5_STAGES))]
    + [(V6_STAGES, i) for i in range(2, len(V6_STAGES))]
    + [(V7_STAGES, i) for i in range(2, len(V7_STAGES))],
    ids=[f"v2-{i}" for i in range(len(T.STAGES))]
    + [f"v5-{i}" for i in range(3, len(V5_STAGES))]
    + [f"v6-{i}" for i in range(2, len(V6_STAGES))]
    + [f"v7-{i}" for i in range(2, len(V7_STAGES))],
)
def test_rows_label_exactly_the_answers_and_the_answers_are_right(stages, stage):
    cfg = T.TrainConfig(name="tiny-llama", filler_loss=False)
    rng = random.Random(stage)
    for _ in range(20):
        length = rng.randint(stages[stage]["min_context"], stages[stage]["context"])
        row = T.make_row(rng, cfg, stages[stage], length, TOK)
        assert len(row.ids) == len(row.labels)
        assert row.ids[0] == TOK.bos_token_id
        text = TOK.decode(row.ids[1:])
        context, _, asked = text.partition("\n?")
        assert len(context) <= length
        values = _values(context)
        labelled = {i for i, label in enumerate(row.labels) if label != T.IGNORE}
        in_spans = {i for start, end in row.spans for i in range(start, end)}
        assert labelled == in_spans  # loss on the answers (and their newline) only
        asked_keys = []
        for start, end in row.spans:
            assert row.labels[start:end] == row.ids[start:end]
            answer = TOK.decode(row.ids[start:end])
            assert answer.endswith("\n")
            question = TOK.decode(row.ids[:start]).rsplit("?", 1)[1]
            assert question.endswith(":")
            keys = question[:-1].split()
            assert " ".join(keys) == question[:-1] or stages[stage].get("key_spaces", 1) > 1
            asked_keys += keys
            # The oracle: the answer is every value of each asked key, in order, from the context.
            assert answer[:-1] == " ".join(v for k in keys for v in values[k])
            if len(keys) > 1:
                assert all(len(values[k]) == 1 for k in keys)
        assert len(asked_keys) == len(set(asked_keys))
        assert set(asked_keys) <= set(values)
        assert len(asked_keys) == min(len(values), cfg.max_queries)


def test_task_rows_can_ask_their_own_question_first():
    """With ``task_question`` a task row asks the task's own question (a niah_multiquery row: all
    its keys in one question, the evaluation form) before any other; without it (v1-v4) its keys
    are re-asked in groups drawn by ``multi_key_prob``."""
    cfg = T.TrainConfig(name="tiny-llama", filler_loss=False)
    stage = {"context": 256, "min_context": 200, "max_keys": 8, "batch_tokens": 1024}
    for kind in ("niah_multiquery", "niah_multivalue", "niah_multikey", "kv_retrieval"):
        for own in (True, False):
            rng = random.Random(7)
            row = T.make_row(rng, cfg, {**stage, "kinds": {kind: 1.0}, "task_question": own}, 256, TOK)
            start, end = row.spans[0]
            question = TOK.decode(row.ids[:start]).rsplit("\n?", 1)[1]
            answer = TOK.decode(row.ids[start:end])[:-1]
            # Replay the generator with the row's random stream to get the example it used.
            replay = random.Random(7)
            replay.choices([kind], [1.0])
            example = T.GENERATORS[kind](replay, 256)
            if own:
                assert "?" + question == example.question.lstrip("\n") and answer == example.answer
            if kind == "niah_multiquery":
                # Without task_question this seed's four keys are asked in smaller groups: v4 asked
                # the evaluation form only when it drew a group of 4 (what v5 changes).
                assert (len(question[:-1].split()) == 4) == own


def test_v5_changes_only_the_stages_after_the_growth():
    """v5 is v4 up to and including the stage where the model grows (same batches, step for step),
    then asks task questions, groups keys more often and has more multi-item rows."""
    v4 = T.recipe_config("tiny-qwen2", "v4", seed=4, data_stream="per_step")
    v5 = T.recipe_config("tiny-qwen2", "v5", seed=4, data_stream="per_step")
    assert v5.stages[:3] == v4.stages[:3]
    for stage in range(3):
        assert _same_batch(T.step_batch(v4, 100 + stage, stage), T.step_batch(v5, 100 + stage, stage))
    for late in v5.stages[3:]:
        assert late["task_question"] and late["multi_key_prob"] == 0.5
        assert late["kinds"]["niah_multiquery"] == late["kinds"]["niah_multivalue"] == 0.18
        assert sum(late["kinds"].values()) == pytest.approx(1.0)
    assert not _same_batch(T.step_batch(v4, 1005, 5), T.step_batch(v5, 1005, 5))


def _question_sizes(cfg: T.TrainConfig, stage: int, rows: int) -> set[int]:
    rng = random.Random(stage)
    sizes = set()
    for _ in range(rows):
        spec = cfg.stages[stage]
        row = T.make_row(rng, cfg, spec, rng.randint(spec["min_context"], spec["context"]), TOK)
        for start, _end in row.spans:
            sizes.add(len(TOK.decode(row.ids[:start]).rsplit("?", 1)[1][:-1].split(" ")))
    return sizes


def test_v6_practises_questions_of_up_to_five_keys_from_the_growth_on():
    """v6 is v4 through the two 64-character stages (same batches, step for step); from the stage
    where the model grows on, questions group 2-5 keys (v4: at most 4) and task rows ask their own
    question first."""
    v4 = T.recipe_config("tiny-qwen2", "v4", seed=4, data_stream="per_step")
    v6 = T.recipe_config("tiny-qwen2", "v6", seed=4, data_stream="per_step")
    assert v6.stages[:2] == v4.stages[:2] and v6.grow_stage == v4.grow_stage == 2
    for stage in range(2):
        assert _same_batch(T.step_batch(v4, 100 + stage, stage), T.step_batch(v6, 100 + stage, stage))
    for index, late in enumerate(v6.stages[2:], start=2):
        assert late["task_question"] and late["multi_key_prob"] == 0.5 and late["max_group"] == 5
        assert sum(late["kinds"].values()) == pytest.approx(1.0)
        assert late["context"] == v4.stages[index]["context"]
        assert not _same_batch(T.step_batch(v4, 1000 + index, index), T.step_batch(v6, 1000 + index, index))
    assert _question_sizes(v6, 3, 60) == {1, 2, 3, 4, 5}
    assert max(_question_sizes(v4, 3, 60)) == 4


def test_v7_spaces_the_keys_of_re_asked_questions_unevenly():
    """v7 is v6 with 1-3 spaces between the keys of re-asked multi-key questions; a task row's own
    question keeps the prompt's form, and v6's batches before the growth are v7's."""
    v6 = T.recipe_config("tiny-qwen2", "v6", seed=4, data_stream="per_step")
    v7 = T.recipe_config("tiny-qwen2", "v7", seed=4, data_stream="per_step")
    for stage in range(2):
        assert _same_batch(T.step_batch(v6, 100 + stage, stage), T.step_batch(v7, 100 + stage, stage))
    assert all(late["key_spaces"] == 3 for late in v7.stages[2:])
    assert [{k: v for k, v in late.items() if k != "key_spaces"} for late in v7.stages] == list(v6.stages)
    rng = random.Random(5)
    gaps, own = set(), 0
    for _ in range(40):
        row = T.make_row(rng, v7, v7.stages[3], 256, TOK)
        for index, (start, _end) in enumerate(row.spans):
            question = TOK.decode(row.ids[:start]).rsplit("?", 1)[1][:-1]
            keys = question.split()
            gaps |= {len(g) for g in re.findall(" +", question)}
            if len(keys) == 4 and index == 0 and " ".join(keys) == question:
                own += 1
    assert gaps == {1, 2, 3} and own > 0


def test_card_names_each_stage_s_question_options():
    """A card's curriculum line says what a stage changes about the re-asked questions (v5-v7) and
    nothing for a stage that keeps the defaults (v4's, so the tiny-llama card stays as it is)."""
    v4 = T.recipe_config("tiny-qwen2", "v4", seed=4)
    v7 = T.recipe_config("tiny-qwen2", "v7", seed=4)
    assert all(T._question_options(stage) == "" for stage in v4.stages + v7.stages[:2])
    late = T._question_options(v7.stages[3])
    assert "own question first" in late and "chance 0.5" in late
    assert "up to 5 keys" in late and "1-3 spaces apart" in late
    assert T._question_lines(list(v4.stages)) == []
    (line,) = T._question_lines(list(v7.stages))
    assert line.startswith("- Questions in the 48-128, 96-256, 96-512, 96-1024 stages: ") and late in line


@pytest.mark.parametrize(
    "stage, digest",
    [(1, "bc40bc17f73865f7"), (2, "d7a5a2c9a7aac128"), (3, "46d4cd2d57ffa652"), (5, "54a223398fa9cd65")],
)
def test_v4_batches_never_change(stage, digest):
    """The shipped models were trained on v4's batches: a change to the data code must leave them
    as they were (digests written before the stage options of v5 were added), or the models'
    ``reproduce`` commands would silently train something else past the 20 steps that
    ``test_shipped_training_record_replays`` runs."""
    import hashlib

    cfg = T.recipe_config("tiny-qwen2", "v4", seed=4, data_stream="per_step")
    ids, labels, *_ = T.step_batch(cfg, 1000 + stage, stage)
    got = hashlib.sha256(ids.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()[:16]
    assert got == digest


@pytest.mark.parametrize("scale", [1, 3])
def test_batches_hold_the_stage_tokens_right_padded(scale):
    cfg = T.TrainConfig(name="tiny-llama", batch_scale=scale, filler_loss=False)
    stage = T.STAGES[1]
    ids, labels, qid, n, length = T.make_batch(random.Random(0), cfg, stage, TOK)
    real = ids != TOK.pad_token_id
    assert int(real.sum()) >= stage["batch_tokens"] * scale
    # Right padding: once a row is padded it stays padded, and padding is never labelled.
    assert torch.equal(real, real.cummin(dim=1).values)
    assert not (labels[~real] != T.IGNORE).any()
    assert sorted(set(qid[qid >= 0].tolist())) == list(range(n))
    assert torch.equal(qid >= 0, labels != T.IGNORE)
    assert stage["min_context"] <= length <= stage["context"]


def test_answer_exact_match_counts_whole_answers():
    cfg = T.TrainConfig(name="tiny-llama")
    ids, labels, qid, n, _ = T.make_batch(random.Random(1), cfg, T.STAGES[0], TOK)
    # Logits whose argmax is the next token everywhere: every answer right.
    perfect = torch.nn.functional.one_hot(ids.roll(-1, dims=1), num_classes=T.VOCAB_SIZE).float()
    assert T.answer_exact_match(perfect, labels, qid, n) == 1.0
    # Break one token of the first answer: exactly that answer becomes wrong.
    b, t = (labels != T.IGNORE).nonzero()[0].tolist()
    broken = perfect.clone()
    broken[b, t - 1] = broken[b, t - 1].roll(1)
    assert T.answer_exact_match(broken, labels, qid, n) == pytest.approx((n - 1) / n)


def test_lr_schedule_warms_up_holds_then_decays_to_the_floor():
    cfg = T.TrainConfig(name="tiny-llama", lr=1e-3, warmup_steps=10, decay_fraction=0.25, min_lr_ratio=0.1)
    total = 100
    lrs = [T.lr_at(cfg, step, total) for step in range(total)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(lr == pytest.approx(1e-3) for lr in lrs[10:75])
    decay = lrs[75:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert decay[-1] == pytest.approx(1e-4, rel=0.05)
    assert min(lrs[10:]) >= 1e-4 - 1e-12


def test_curriculum_advances_on_accuracy_or_at_the_cap():
    cfg = T.TrainConfig(name="tiny-llama", min_stage_steps=5, advance_at=0.75)
    caps = [50, 100, 100, 100]
    on_accuracy = T.Curriculum()
    for step in range(30):
        on_accuracy.update(cfg, caps, step, 1.0)
    assert on_accuracy.transitions[0]["reason"] == "accuracy"
    assert on_accuracy.transitions[0]["step"] >= cfg.min_stage_steps
    at_cap = T.Curriculum()
    for step in range(60):
        at_cap.update(cfg, caps, step, 0.0)
    assert at_cap.stage == 1
    assert at_cap.transitions == [
        {"step": 50, "to_context": 128, "reason": "step cap", "ema_exact_match": 0.0}
    ]


def test_planned_steps_fit_the_budget():
    cfg = T.TrainConfig(name="tiny-llama")
    seconds = {0: 0.3, 1: 0.7, 2: 1.0, 3: 1.6, 4: 1.3}
    total, caps = T.plan_steps(seconds, cfg, minutes=60)
    shares = [*cfg.time_shares, 1 - sum(cfg.time_shares)]
    per_stage = [*caps, total - sum(caps)]
    assert len(caps) == len(cfg.stages) - 1
    planned = sum(n * seconds[i] * 1.08 for i, n in enumerate(per_stage))
    assert 0.95 * 3600 <= planned <= 3600
    for i, share in enumerate(shares):
        assert per_stage[i] * seconds[i] * 1.08 == pytest.approx(share * 3600, rel=0.02)


def _small_run(tmp_path, monkeypatch, name: str, **overrides):
    monkeypatch.setitem(T.PRESETS, "tiny-llama", SMALL)
    cfg = T.TrainConfig(
        name="tiny-llama", stages=SMALL_STAGES, steps=20, stage_steps=(10,), warmup_steps=4, **overrides
    )
    return cfg, tmp_path / name, tmp_path / f"{name}-work"


def test_training_writes_a_loadable_model_and_its_record(tmp_path, monkeypatch):
    cfg, out, work = _small_run(tmp_path, monkeypatch, "full")
    summary = T.train(cfg, out, work, log=lambda m: None)
    assert summary["steps"] == 20 and not summary["stopped_early"]
    assert [t["step"] for t in summary["curriculum"]["transitions"]] == [10]
    record = json.loads((out / "training.json").read_text())
    assert record["reproduce"].endswith("--steps 20 --stage-steps 10")
    # A new record names the module the script runs as today (python -m training.train).
    assert T.__name__ == T.MODULE == "training.train"
    assert record["reproduce"].startswith("python -m training.train --name tiny-llama ")
    assert record["command"].startswith("python -m training.train ")
    assert record["machine"]["device"] == "cpu"
    assert len(record["history"]) == 2
    from depthkv.models import load_model

    model, tokenizer = load_model(str(out))
    assert model.config.num_hidden_layers == 1
    assert isinstance(tokenizer, ByteTokenizer)


def test_a_cut_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    cfg, out, work = _small_run(tmp_path, monkeypatch, "whole")
    T.train(cfg, out, work, log=lambda m: None)
    cut_cfg, cut_out, cut_work = _small_run(tmp_path, monkeypatch, "cut", stop_at=10)
    first = T.train(cut_cfg, cut_out, cut_work, log=lambda m: None)
    assert first["stopped_early"] and first["steps"] == 10
    resumed_cfg, _, _ = _small_run(tmp_path, monkeypatch, "cut")
    second = T.train(resumed_cfg, cut_out, cut_work, resume=True, log=lambda m: None)
    assert second["steps"] == 20 and not second["stopped_early"]
    whole = load_file(out / "model.safetensors")
    resumed = load_file(cut_out / "model.safetensors")
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    timing = {"elapsed_s", "tokens_per_s", "data_share"}
    untimed = [{k: v for k, v in r.items() if k not in timing} for r in second["history"]]
    whole_history = json.loads((out / "training.json").read_text())["history"]
    assert untimed == [{k: v for k, v in r.items() if k not in timing} for r in whole_history]


def test_resume_refuses_other_settings(tmp_path, monkeypatch):
    cfg, out, work = _small_run(tmp_path, monkeypatch, "run", stop_at=10)
    T.train(cfg, out, work, log=lambda m: None)
    other, _, _ = _small_run(tmp_path, monkeypatch, "run", lr=5e-3)
    with pytest.raises(ValueError, match=r"lr: checkpoint 0\.002, now 0\.005.*--work-dir"):
        T.train(other, out, work, resume=True, log=lambda m: None)


def test_a_finished_run_extends_on_the_schedule_of_its_new_total(tmp_path, monkeypatch):
    """``extend_to`` continues a finished run's checkpoint to a larger total: the recorded steps
    before it are untouched, the learning rate after it follows the new total's schedule, and the
    record says how to replay both parts."""
    cfg, out, work = _small_run(tmp_path, monkeypatch, "run")
    first = T.train(cfg, out, work, log=lambda m: None)
    assert first["extensions"] == [] and first["reproduce_extensions"] == []
    logs: list[str] = []
    second = T.train(cfg, out, work, resume=True, log=logs.append, extend_to=30)
    assert second["steps"] == 30 and second["steps_planned"] == 30 and not second["stopped_early"]
    assert second["extensions"] == [{"at_step": 20, "from_total": 20, "to_total": 30}]
    assert second["history"][:2] == first["history"]
    assert [r["lr"] for r in second["history"][2:]] == [round(T.lr_at(cfg, 29, 30), 6)]
    assert T.lr_at(cfg, 20, 30) > T.lr_at(cfg, 19, 20)  # the decay restarts
    assert any("extended from 20 to 30 steps" in m for m in logs)
    record = json.loads((out / "training.json").read_text())
    assert record["reproduce"].endswith("--steps 20 --stage-steps 10")
    assert record["reproduce_extensions"] == [record["reproduce"] + " --resume --extend-to 30"]
    (card_line,) = T._extension_lines(record)
    assert "from step 20 to 30 (`--resume --extend-to 30`)" in card_line and "at step 30" in card_line
    assert T._extension_lines(first) == []
    # Resuming the extended run's checkpoint with the same total is a no-op extension.
    third = T.train(cfg, out, work, resume=True, log=lambda m: None, extend_to=30)
    assert third["extensions"] == second["extensions"] and third["steps"] == 30


def test_a_cut_run_extended_replays_with_the_stop_of_each_part(tmp_path, monkeypatch):
    """A run cut at step 10 of 20, extended to 40 and cut again at 30: each replay command stops
    where its part stopped, and the same two parts run again from scratch (through ``train``, with
    the settings those commands give) end with the same weights."""
    cfg, out, work = _small_run(tmp_path, monkeypatch, "run", stop_at=10)
    T.train(cfg, out, work, log=lambda m: None)
    cut_again, _, _ = _small_run(tmp_path, monkeypatch, "run", stop_at=30)
    record = T.train(cut_again, out, work, resume=True, log=lambda m: None, extend_to=40)
    assert record["steps"] == 30 and record["extensions"] == [{"at_step": 10, "from_total": 20, "to_total": 40}]
    assert record["reproduce"].endswith("--steps 20 --stage-steps 10 --stop-at 10")
    assert record["reproduce_extensions"] == [
        record["reproduce"].removesuffix(" --stop-at 10") + " --resume --extend-to 40 --stop-at 30"
    ]
    # The same two parts run again from scratch, as the commands say.
    replay_out, replay_work = tmp_path / "replay", tmp_path / "replay-work"
    T.train(cfg, replay_out, replay_work, log=lambda m: None)
    T.train(cut_again, replay_out, replay_work, resume=True, log=lambda m: None, extend_to=40)
    first, second = load_file(out / "model.safetensors"), load_file(replay_out / "model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_extend_to_needs_a_checkpoint_and_a_larger_total(tmp_path, monkeypatch):
    cfg, out, work = _small_run(tmp_path, monkeypatch, "run")
    with pytest.raises(ValueError, match=r"--extend-to continues a run from its checkpoint: give --resume"):
        T.train(cfg, out, work, log=lambda m: None, extend_to=30)
    T.train(cfg, out, work, log=lambda m: None)
    with pytest.raises(ValueError, match=r"--extend-to 15 is below the run's planned 20 steps"):
        T.train(cfg, out, work, resume=True, log=lambda m: None, extend_to=15)


def _same_batch(a, b) -> bool:
    pairs = zip(a, b, strict=True)
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in pairs)


def test_per_step_batches_are_the_same_in_workers_and_after_a_stage_change():
    """``AheadBatches`` hands step k the batch ``step_batch(cfg, k, stage)`` would make here, made
    ahead in worker processes; a batch made ahead for a stage that ended is made again."""
    import functools

    from training.batch_source import AheadBatches

    cfg = T.TrainConfig(name="tiny-llama", stages=SMALL_STAGES, data_stream="per_step")
    plan = [(k, 0) for k in range(6)] + [(k, 1) for k in range(6, 10)]
    assert not _same_batch(T.step_batch(cfg, 3, 0), T.step_batch(cfg, 4, 0))  # steps differ
    assert not _same_batch(T.step_batch(cfg, 6, 0), T.step_batch(cfg, 6, 1))  # stages differ
    with AheadBatches(functools.partial(T.step_batch, cfg), workers=2, depth=3) as ahead:
        for k, stage in plan:
            assert _same_batch(ahead.get(k, stage), T.step_batch(cfg, k, stage)), (k, stage)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        AheadBatches(functools.partial(T.step_batch, cfg), workers=0)


def test_workers_train_the_same_weights_as_the_loop(tmp_path, monkeypatch):
    """With ``data_stream="per_step"`` the run is the same with 0 or 2 batch workers, across the
    stage change at step 10; the sequential stream refuses workers with a clear error."""
    runs = {}
    for workers in (0, 2):
        settings = dict(data_stream="per_step", workers=workers)
        cfg, out, work = _small_run(tmp_path, monkeypatch, f"w{workers}", **settings)
        summary = T.train(cfg, out, work, log=lambda m: None)
        assert summary["machine"]["batch_workers"] == workers
        assert summary["reproduce"].endswith("--data-stream per_step")
        runs[workers] = load_file(out / "model.safetensors")
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[2][key]), key
    sequential, out, work = _small_run(tmp_path, monkeypatch, "seq", workers=2)
    with pytest.raises(ValueError, match="--workers 2 needs --data-stream per_step"):
        T.train(sequential, out, work, log=lambda m: None)
    with pytest.raises(ValueError, match="data_stream must be 'sequential' or 'per_step'"):
        T.check_run_settings(T.TrainConfig(name="tiny-llama", data_stream="random"))


def test_the_key_matching_probe_is_logged_and_changes_nothing(tmp_path, monkeypatch):
    cfg, out, work = _small_run(tmp_path, monkeypatch, "plain")
    T.train(cfg, out, work, log=lambda m: None)
    probed_cfg, probed_out, probed_work = _small_run(tmp_path, monkeypatch, "probed", probe_every=10)
    summary = T.train(probed_cfg, probed_out, probed_work, log=lambda m: None)
    assert [sorted(r["key_match"]) for r in summary["history"]] == [["2", "4", "8"]] * 2
    assert all(0.0 <= v <= 1.0 for r in summary["history"] for v in r["key_match"].values())
    plain, probed = load_file(out / "model.safetensors"), load_file(probed_out / "model.safetensors")
    for key in plain:
        assert torch.equal(plain[key], probed[key]), key
    with pytest.raises(ValueError, match="probe_every must be 0 or a multiple of 10"):
        T.check_run_settings(T.TrainConfig(name="tiny-llama", probe_every=15))


def test_copy_rows_label_pieces_of_earlier_lines_found_by_content():
    rng = random.Random(4)
    for length in (20, 64, 200):
        row = T.copy_row(rng, length, TOK)
        assert row.ids[0] == TOK.bos_token_id and len(row.ids) == len(row.labels)
        text = TOK.decode(row.ids[1:])
        lines = text.split("\n")
        sources = lines[: len(lines) - len(row.spans)]
        assert sum(len(x) + 1 for x in sources) >= length and all(6 <= len(x) <= 14 for x in sources)
        labelled = {i for i, label in enumerate(row.labels) if label != T.IGNORE}
        assert labelled == {i for start, end in row.spans for i in range(start, end)}
        for (start, end), line in zip(row.spans, lines[len(sources) :]):
            tail = TOK.decode(row.ids[start:end])
            assert row.labels[start:end] == row.ids[start:end] and line.endswith(tail)
            # the labelled tail plus the two letters before it is a piece of a source line
            piece = TOK.decode(row.ids[start - 2 : end])
            assert len(piece) >= 4 and any(piece in source for source in sources), (piece, sources)
    a, b = T.copy_row(random.Random(1), 64, TOK), T.copy_row(random.Random(1), 64, TOK)
    assert (a.ids, a.labels, a.spans) == (b.ids, b.labels, b.spans)


def test_v3_starts_with_copy_practice_at_its_own_rate(tmp_path):
    cfg = T.recipe_config("tiny-llama", "v3")
    assert cfg.lr == 1e-3 and cfg.initializer_range == 0.02
    assert cfg.stages[0]["kinds"] == {"copy": 1.0} and cfg.stages[2:] == T.STAGES[1:]
    assert len(cfg.time_shares) == len(cfg.stages) - 1
    ids, labels, qid, n, _ = T.make_batch(random.Random(0), cfg, cfg.stages[0], TOK)
    assert n > 0 and ":" not in TOK.decode(ids[0])  # copy rows: answers, and no records
    # Without --lr the command line keeps the recipe's rate (and the replay command says it).
    out = tmp_path / "v3"
    argv = "--name tiny-llama --recipe v3 --steps 10 --stage-steps 5 1 1 1 1 --no-eval".split()
    T.main([*argv, "--out", str(out), "--work-dir", str(tmp_path / "work")])
    record = json.loads((out / "training.json").read_text())
    assert record["config"]["lr"] == 1e-3 and " --lr 0.001 " in record["reproduce"]
    assert record["curriculum"]["transitions"][0]["step"] == 5


def test_a_checkpoint_older_than_a_setting_counts_as_its_default():
    from dataclasses import asdict, replace

    cfg = T.TrainConfig(name="tiny-llama")
    saved = {k: v for k, v in asdict(cfg).items() if k != "data_stream"}  # written before the field
    assert T.resume_mismatch(saved, cfg) == []
    assert T.resume_mismatch(saved, replace(cfg, data_stream="per_step")) == [
        "data_stream: checkpoint 'sequential', now 'per_step'"
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA device; use --device cpu"):
        T.resolve_device("cuda")
    with pytest.raises(ValueError, match="expected cpu or cuda"):
        T.resolve_device("meta")


def test_filler_loss_labels_filler_lines_and_never_records():
    cfg = T.TrainConfig(name="tiny-llama", filler_loss=True)
    rng = random.Random(7)
    for _ in range(20):
        row = T.make_row(rng, cfg, T.STAGES[2], rng.randint(96, 256), TOK)
        first_answer = row.spans[0][0]
        question_start = TOK.decode(row.ids[:first_answer]).rindex("\n?") + 1  # token index of "\n?"
        context = TOK.decode(row.ids[1:question_start])
        offset = 1
        lines = context.split("\n")
        for index, line in enumerate(lines):
            # The newline after the last line starts the question: not part of the context.
            labels = row.labels[offset : offset + len(line) + (index < len(lines) - 1)]
            if RECORD.match(line):
                assert all(label == T.IGNORE for label in labels), line
            else:
                assert labels == row.ids[offset : offset + len(labels)], line
            offset += len(line) + 1
    # Without the option only the answers carry a loss.
    plain_cfg = T.TrainConfig(name="tiny-llama", filler_loss=False)
    plain = T.make_row(random.Random(0), plain_cfg, T.STAGES[2], 200, TOK)
    assert {i for i, label in enumerate(plain.labels) if label != T.IGNORE} == {
        i for start, end in plain.spans for i in range(start, end)
    }


def test_unknown_recipe_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown recipe 'v9'; known: v1, v2, v3"):
        T.recipe_config("tiny-llama", "v9")
    assert T.recipe_config("tiny-llama", "v1").filler_loss is False
    assert T.recipe_config("tiny-llama").initializer_range == 0.06


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_shipped_training_record_replays(name, tmp_path):
    """The ``reproduce`` command in a shipped model's training.json, run by today's script, retraces
    the recorded run: the first 20 steps' mean loss and answer exact match (two logged records)
    match. Float rounding across CPUs and BLAS builds is far below the tolerance. A model trained
    on a GPU (``--device cuda``) is replayed on the CPU (same data stream, fp32 both; its first
    losses agree to 4 decimals), and only for 10 steps when its batches are ``--batch-scale``
    times larger (16x batches take seconds per step on a CPU)."""
    import shlex

    record = json.loads((T.MODELS_DIR / name / "training.json").read_text())
    command = shlex.split(T.runnable_command(record["reproduce"]))  # as the card prints it
    assert command[:3] == ["python", "-m", T.__name__]
    argv = command[3:]
    if "--device" in argv:
        argv[argv.index("--device") + 1] = "cpu"
    steps = 10 if record["config"]["batch_scale"] > 1 else 20
    out, work = tmp_path / "model", tmp_path / "work"
    T.main([*argv, "--stop-at", str(steps), "--out", str(out), "--work-dir", str(work), "--no-eval"])
    replay = json.loads((out / "training.json").read_text())["history"]
    assert [r["step"] for r in replay] == list(range(10, steps + 1, 10))
    for got, want in zip(replay, record["history"]):
        assert got["loss"] == pytest.approx(want["loss"], rel=2e-3), (got, want)
        assert got["exact_match"] == pytest.approx(want["exact_match"], abs=0.02), (got, want)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_shipped_cards_are_what_their_records_write(name, tmp_path):
    """A card is generated from the model's files: regenerating it gives the committed text, which
    names the replay commands and no path of the machine it was trained on."""
    import shutil

    shutil.copytree(T.MODELS_DIR / name, tmp_path / name)
    (tmp_path / name / "README.md").unlink()
    T.write_card(tmp_path / name, json.loads((tmp_path / name / "evaluation.json").read_text(encoding="utf-8")))
    card = (tmp_path / name / "README.md").read_text(encoding="utf-8")
    assert card == (T.MODELS_DIR / name / "README.md").read_text(encoding="utf-8")
    training = json.loads((tmp_path / name / "training.json").read_text(encoding="utf-8"))
    evaluation = json.loads((tmp_path / name / "evaluation.json").read_text(encoding="utf-8"))
    # Commands that run today, from the repository root: the recorded ones under today's module
    # path, and the one that measured the accuracy table.
    for recorded in [training["reproduce"], *training["reproduce_extensions"]]:
        assert "\n    " + T.runnable_command(recorded) + "\n" in card
    assert "\n    " + T.eval_command(evaluation) + "\n" in card
    assert "python -m depthkv" not in card and "depthkv/models/train.py" not in card
    assert "`training/` folder, not in the installed package" in card
    assert "--out /tmp" not in card and "--work-dir" not in card


def test_recorded_commands_run_under_today_s_module_path():
    args = "--name tiny-llama --recipe v4 --steps 5810"
    assert T.runnable_command(f"python -m depthkv.models.train {args}") == f"python -m training.train {args}"
    assert T.runnable_command(f"python -m training.train {args}") == f"python -m training.train {args}"
    for other in (f"python -m depthkv.models.grow {args}", f"python3 train.py {args}"):
        with pytest.raises(ValueError, match="not a recorded training command"):
            T.runnable_command(other)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_the_eval_command_repeats_the_recorded_evaluation(name):
    """The card's ``--eval-only`` command, parsed by the script, asks for the evaluation its
    ``evaluation.json`` holds (example count, lengths, threshold); one the script cannot repeat
    is refused."""
    import shlex

    evaluation = json.loads((T.MODELS_DIR / name / "evaluation.json").read_text(encoding="utf-8"))
    for case in (evaluation, {**evaluation, "n": 24, "lengths": [512], "learned_threshold": 0.9}):
        command = shlex.split(T.eval_command(case))
        assert command[:3] == ["python", "-m", T.__name__]
        args = T.build_parser().parse_args(command[3:])
        assert args.eval_only and not args.card_only and args.name == name and args.out is None
        assert (args.eval_n, args.eval_lengths, args.learned_threshold) == (
            case["n"],
            case["lengths"],
            case["learned_threshold"],
        )
    with pytest.raises(ValueError, match="no option for"):
        T.eval_command({**evaluation, "seed": 1})


def test_card_accuracy_scores_each_task_and_length_and_skips_what_does_not_fit(monkeypatch):
    """The card's table: per task and length, the mean score of greedy answers to the evaluation
    split's examples, each decoded with room for its answer + 2 tokens; a length too short for a
    task is left out and said."""
    from depthkv.workload import builtin_workload

    tasks, lengths, n = ["niah_single", "niah_multikey"], [32, 64], 4
    answers = {
        ex.prompt: ex.answer
        for task in tasks
        for length in lengths
        if (task, length) != ("niah_multikey", 32)
        for ex in builtin_workload([task], n_per_task=n, context_length=length, split="evaluation", seed=0)
    }
    room = []

    def fake_continuation(model, tokenizer, prompt, max_new_tokens):
        room.append(max_new_tokens == len(tokenizer.encode(answers[prompt])) + 2)
        return model(prompt)

    monkeypatch.setattr(T, "greedy_continuation", fake_continuation)
    messages = []
    oracle = T.card_accuracy(lambda prompt: answers[prompt], TOK, tasks, lengths, n, log=messages.append)
    assert all(room) and len(room) == 3 * n
    assert sorted(oracle) == ["niah_multikey@64", "niah_single@32", "niah_single@64"]
    assert all(cell["accuracy"] == 1.0 and cell["scores"] == [1.0] * n for cell in oracle.values())
    assert any(m.startswith("skip niah_multikey @ 32") for m in messages)
    calls = iter(range(100))
    cells = T.card_accuracy(
        lambda prompt: answers[prompt] if next(calls) % 2 else "", TOK, tasks, [64], n, log=messages.append
    )
    assert {key: cell["accuracy"] for key, cell in cells.items()} == {
        "niah_single@64": 0.5,
        "niah_multikey@64": 0.5,
    }
    assert cells["niah_single@64"]["n"] == n and cells["niah_single@64"]["context_length"] == 64


def test_greedy_continuation_is_the_argmax_continuation_of_bos_and_the_prompt(monkeypatch):
    monkeypatch.setitem(T.PRESETS, "tiny-llama", SMALL)
    model = T.model_at(T.TrainConfig(name="tiny-llama"), 1).eval()
    prompt, steps = "abcd:1234\n?abcd:", 5
    ids = TOK.encode(prompt, add_special_tokens=True)
    with torch.no_grad():
        for _ in range(steps):  # no cache: the whole sequence again at each step
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert T.greedy_continuation(model, TOK, prompt, steps) == TOK.decode(ids[-steps:])


def test_a_checkpoint_write_that_fails_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path):
    path = tmp_path / "work" / "checkpoint.pt"
    T._save_checkpoint(path, {"step": 10, "weights": torch.arange(4)})
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):  # a lambda does not pickle
        T._save_checkpoint(path, {"step": 20, "unpicklable": lambda: None})
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]
    state = torch.load(path, weights_only=False)
    assert state["step"] == 10 and torch.equal(state["weights"], torch.arange(4))
