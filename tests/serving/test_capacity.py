"""The capacity calculator, against numbers worked out by hand: bytes per token, blocks rounded up,
sliding layers at their window, budgets at most the sequence, the largest batch that fits."""

from __future__ import annotations

import json

import pytest

import depthkv
from depthkv.serving import (
    GB,
    blocks_for,
    engine_plan,
    engine_plan_capacity,
    estimate_capacity,
    kv_bytes_per_token,
    layer_tokens,
)
from tests.serving.plans import GEMMA3_PLAN

# Llama-3.1-8B's shape on an H200, as in docs/serving.md
LLAMA_8B = dict(num_layers=32, num_kv_heads=8, head_dim=128)
H200 = dict(device_bytes=141 * GB, weight_bytes=16_060_000_000)


def test_kv_bytes_per_token_is_keys_and_values_of_every_kv_head():
    assert kv_bytes_per_token(8, 128) == 2 * 8 * 128 * 2 == 4096
    assert kv_bytes_per_token(8, 128, dtype_bytes=1) == 2048
    assert kv_bytes_per_token(1, 256, 2) == 1024  # Gemma-3-270M
    assert kv_bytes_per_token(8, 128, slot_state_bytes=12) == 4096 + 8 * 12


@pytest.mark.parametrize(
    "tokens, block, blocks", [(0, 16, 0), (1, 16, 1), (15, 16, 1), (16, 16, 1), (17, 16, 2), (32, 16, 2),
                              (33, 16, 3), (3277, 16, 205), (7, 1, 7), (100, 64, 2)],
)
def test_blocks_are_rounded_up(tokens, block, blocks):
    assert blocks_for(tokens, block) == blocks


def test_what_each_layer_holds():
    assert layer_tokens(1000, 3) == [1000, 1000, 1000]
    assert layer_tokens(1000, 3, windows=[512, None, 2000]) == [512, 1000, 1000]
    assert layer_tokens(1000, 3, budgets=[100, None, 5000]) == [100, 1000, 1000]
    assert layer_tokens(300, 3, budgets=[400, 100, None], windows=[512, 50, 200]) == [300, 50, 200]


def test_the_full_cache_of_a_llama_8b_shape_at_32k():
    est = estimate_capacity(**LLAMA_8B, context_length=32_768, **H200)
    assert est.kv_bytes_per_token_layer == 4096 and est.kv_bytes_per_token == 131_072
    assert est.layer_tokens == (32_768,) * 32 and est.layer_blocks == (2048,) * 32
    assert est.slots_per_sequence == 32 * 32_768
    assert est.bytes_per_sequence == 2**32  # 4 GiB
    assert est.usable_bytes == 126_900_000_000
    assert est.kv_pool_bytes == 126_900_000_000 - 16_060_000_000 - 4_000_000_000
    assert est.max_batch == 106_840_000_000 // 2**32 == 24
    assert json.loads(json.dumps(est.to_dict()))["layer_blocks"] == [2048] * 32


def test_each_layer_is_rounded_up_to_whole_blocks():
    est = estimate_capacity(**LLAMA_8B, context_length=32_768, budgets=[17] * 32, **H200)
    assert est.layer_blocks == (2,) * 32
    assert est.slots_per_sequence == 32 * 32
    assert est.bytes_per_sequence == 32 * 32 * 4096
    exact = estimate_capacity(**LLAMA_8B, context_length=32_768, budgets=[16] * 32, **H200)
    assert exact.bytes_per_sequence == 32 * 16 * 4096


def test_sliding_layers_hold_their_window_and_budgets_at_most_the_sequence():
    est = estimate_capacity(num_layers=2, num_kv_heads=1, head_dim=256, context_length=4000,
                            windows=[1000, None], **H200)
    assert est.layer_tokens == (1000, 4000) and est.layer_blocks == (63, 250)
    short = estimate_capacity(num_layers=2, num_kv_heads=1, head_dim=256, context_length=100,
                              budgets=[500, 90], windows=[1000, None], **H200)
    assert short.layer_tokens == (100, 90) and short.slots_per_sequence == 7 * 16 + 6 * 16


def test_the_assumptions_are_arguments():
    base = estimate_capacity(**LLAMA_8B, context_length=32_768, **H200)
    more = estimate_capacity(**LLAMA_8B, context_length=32_768, **H200, utilization=0.95, reserve_bytes=0)
    assert more.kv_pool_bytes == 133_950_000_000 - 16_060_000_000 and more.max_batch == 27 > base.max_batch
    fp8 = estimate_capacity(**LLAMA_8B, context_length=32_768, **H200, dtype_bytes=1)
    assert fp8.bytes_per_sequence == 2**31 and fp8.max_batch == 49
    blocks = estimate_capacity(**LLAMA_8B, context_length=100, budgets=[10] * 32, **H200, block_size=64)
    assert blocks.slots_per_sequence == 32 * 64


def test_nothing_fits_when_the_weights_do_not():
    est = estimate_capacity(**LLAMA_8B, context_length=1024, device_bytes=16 * GB, weight_bytes=16 * GB)
    assert est.kv_pool_bytes < 0 and est.max_batch == 0


@pytest.mark.parametrize(
    "change, says",
    [
        ({"utilization": 0}, "utilization"),
        ({"utilization": 1.5}, "utilization"),
        ({"utilization": True}, "utilization"),
        ({"block_size": 0}, "block_size"),
        ({"context_length": 0}, "context_length"),
        ({"num_kv_heads": 0}, "num_kv_heads"),
        ({"dtype_bytes": 0.5}, "dtype_bytes"),
        ({"reserve_bytes": -1}, "reserve_bytes"),
        ({"weight_bytes": -1}, "weight_bytes"),
        ({"budgets": [10] * 31}, "budgets has 31 entries"),
        ({"budgets": [10] * 31 + [0]}, r"budgets\[31\]"),
        ({"windows": [None] * 33}, "windows has 33 entries"),
        ({"slot_state_bytes": -12}, "slot_state_bytes"),
    ],
)
def test_bad_arguments_say_which(change, says):
    args = {**LLAMA_8B, "context_length": 1024, **H200, **change}
    with pytest.raises(ValueError, match=says):
        estimate_capacity(**args)


def test_an_engine_plan_s_capacity_is_its_layers_slots_and_windows():
    data = engine_plan(depthkv.Plan.load(GEMMA3_PLAN), context_length=4096, mode="append", max_new_tokens=32)
    est = engine_plan_capacity(data, **H200)
    direct = estimate_capacity(
        num_layers=18, num_kv_heads=1, head_dim=256, context_length=4096 + 32, **H200,
        budgets=[layer["slots"] for layer in data["layers"]],
        windows=[None if i in (5, 11, 17) else 512 for i in range(18)],
    )
    assert est == direct
    assert est.layer_tokens[5] == 4128  # a budget above the sequence holds the sequence
    full = engine_plan_capacity(data, **H200, full_cache=True)
    assert full.layer_tokens == tuple(4128 if i in (5, 11, 17) else 512 for i in range(18))
    assert est.bytes_per_sequence < full.bytes_per_sequence
    assert engine_plan_capacity(data, **H200, context_length=100_000, block_size=32).block_size == 32


def test_an_engine_plan_without_the_model_s_geometry_or_length_is_refused():
    plan = depthkv.Plan(budgets=[8, 16], strategy="explicit", policy=depthkv.PolicyConfig())
    with pytest.raises(ValueError, match="num_kv_heads and head_dim"):
        engine_plan_capacity(engine_plan(plan), **H200, context_length=100)
    as_planned = depthkv.Plan.load(GEMMA3_PLAN)  # relative, exported without a length
    with pytest.raises(ValueError, match="no context_length"):
        engine_plan_capacity(engine_plan(as_planned), **H200)
