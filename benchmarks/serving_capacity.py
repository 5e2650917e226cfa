"""The worked example of docs/serving.md: KV memory and the largest batch of a Llama-3.1-8B-shaped
model on one 141 GB device, full cache against depthkv budgets of 10% and 20% of the context.

Run from the repository root (no GPU, no weights: the model is a config; a few seconds)::

    python -m benchmarks.serving_capacity

It writes ``benchmarks/results/serving-capacity.json`` (every number, every assumption) and prints
the markdown that docs/serving.md shows; ``tests/serving/test_capacity_docs.py`` recomputes it and
checks that the page and the JSON file still say the same.

Each depthkv row is the uniform split of the budget's total over the layers
(``depthkv.uniform_plan``), exported (:func:`depthkv.serving.engine_plan`) and counted
(:func:`depthkv.serving.engine_plan_capacity`). A depthkv plan of the same total spreads the same
tokens differently; only the block rounding can differ, by less than one block per layer, so the
"any split" column bounds every plan of that total: each layer rounded up by ``block_size - 1``
tokens more than the total needs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

RESULT = Path(__file__).resolve().parent / "results" / "serving-capacity.json"

# Llama-3.1-8B's attention geometry (its config.json) and size; the weights are not needed.
LAYERS, HEADS, KV_HEADS, HIDDEN = 32, 32, 8, 4096  # head_dim = 4096 / 32 = 128
PARAMETERS = 8_030_000_000  # ~8.03e9 parameters
DTYPE_BYTES = 2  # bf16 weights and KV cache
DEVICE_BYTES = 141 * 10**9  # "141 GB" (an H200), read as 141 × 10^9 bytes
UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization
RESERVE_BYTES = 4 * 10**9  # assumed allowance for activations, CUDA graphs, allocator slack
BLOCK_SIZE = 16  # vLLM's default block size, in tokens
SLOT_STATE_BYTES = 12  # depthkv's per-slot state per KV head: int64 position + fp32 score
CONTEXTS = (32_768, 131_072)
FRACTIONS = (0.1, 0.2)


def llama_8b_config() -> Any:
    import transformers

    return transformers.LlamaConfig(
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        hidden_size=HIDDEN,
        intermediate_size=14336,
        vocab_size=128256,
    )


def _row(context: int, cache: str, estimate: Any, full: Any, worst: int | None, with_state: Any | None) -> dict:
    return {
        "context": context,
        "cache": cache,
        "tokens_held": sum(estimate.layer_tokens),
        "slots": estimate.slots_per_sequence,
        "bytes_per_sequence": estimate.bytes_per_sequence,
        "of_full": estimate.bytes_per_sequence / full.bytes_per_sequence,
        "max_batch": estimate.max_batch,
        "max_batch_any_split": worst,
        "max_batch_with_state": None if with_state is None else with_state.max_batch,
        "estimate": estimate.to_dict(),
    }


def compute() -> dict:
    """Every number of the worked example (what the JSON file holds)."""
    import depthkv
    from depthkv.serving import engine_plan, engine_plan_capacity

    config = llama_8b_config()
    assumptions = dict(
        dtype_bytes=DTYPE_BYTES, block_size=BLOCK_SIZE, utilization=UTILIZATION, reserve_bytes=RESERVE_BYTES
    )
    device = dict(device_bytes=DEVICE_BYTES, weight_bytes=PARAMETERS * DTYPE_BYTES)
    rows = []
    for context in CONTEXTS:
        base = engine_plan(depthkv.uniform_plan(config, FRACTIONS[0], context_length=context), context_length=context)
        full = engine_plan_capacity(base, full_cache=True, **device, **assumptions)
        rows.append(_row(context, "full", full, full, None, None))
        for fraction in FRACTIONS:
            plan = depthkv.uniform_plan(config, fraction, context_length=context)
            data = engine_plan(plan, context_length=context)
            estimate = engine_plan_capacity(data, **device, **assumptions)
            with_state = engine_plan_capacity(data, **device, **(assumptions | {"slot_state_bytes": SLOT_STATE_BYTES}))
            # any split of the same total: at most block_size - 1 tokens of rounding per layer
            worst_slots = data["totals"]["slots"] + LAYERS * (BLOCK_SIZE - 1)
            worst = estimate.kv_pool_bytes // (worst_slots * estimate.kv_bytes_per_token_layer)
            rows.append(_row(context, f"depthkv {fraction:.0%}", estimate, full, worst, with_state))
    first = rows[0]["estimate"]
    return {
        "command": "python -m benchmarks.serving_capacity",
        "model": {
            "shape": "Llama-3.1-8B",
            "num_layers": LAYERS,
            "num_kv_heads": KV_HEADS,
            "head_dim": HIDDEN // HEADS,
            "parameters": PARAMETERS,
            "dtype_bytes": DTYPE_BYTES,
        },
        "assumptions": {
            "device_bytes": DEVICE_BYTES,
            "utilization": UTILIZATION,
            "reserve_bytes": RESERVE_BYTES,
            "block_size": BLOCK_SIZE,
            "slot_state_bytes_for_the_state_column": SLOT_STATE_BYTES,
            "weight_bytes": PARAMETERS * DTYPE_BYTES,
            "usable_bytes": first["usable_bytes"],
            "kv_pool_bytes": first["kv_pool_bytes"],
            "kv_bytes_per_token_layer": first["kv_bytes_per_token_layer"],
            "kv_bytes_per_token": first["kv_bytes_per_token"],
        },
        "rows": rows,
    }


def _gb(n: int) -> str:
    return f"{n / 1e9:.3f}"


def markdown(result: dict) -> str:
    """The worked example's text and table, as docs/serving.md shows it."""
    a, m = result["assumptions"], result["model"]
    lines = [
        f"* KV bytes per token: 2 × {m['num_kv_heads']} KV heads × {m['head_dim']} × {m['dtype_bytes']} bytes = "
        f"**{a['kv_bytes_per_token_layer']:,} bytes per layer**, {a['kv_bytes_per_token']:,} bytes over the "
        f"{m['num_layers']} layers.",
        f"* Weights: {m['parameters']:,} parameters × {m['dtype_bytes']} bytes = {a['weight_bytes']:,} bytes "
        f"({_gb(a['weight_bytes'])} GB).",
        f"* Device: 141 GB taken as {a['device_bytes']:,} bytes; × {a['utilization']} utilisation = "
        f"{a['usable_bytes']:,} bytes; minus the weights and a {_gb(a['reserve_bytes'])} GB reserve leaves "
        f"**{a['kv_pool_bytes']:,} bytes ({_gb(a['kv_pool_bytes'])} GB) for KV blocks**.",
        f"* Blocks of {a['block_size']} tokens, each layer rounded up; every sequence at the full context.",
        "",
        "| context | cache | tokens held per sequence (all layers) | slots after block rounding | "
        "KV per sequence (GB) | of the full cache | max batch | max batch, any split of the total | "
        f"max batch with {a['slot_state_bytes_for_the_state_column']} B/slot/head of depthkv state |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        dash = "–"
        lines.append(
            f"| {r['context']:,} | {r['cache']} | {r['tokens_held']:,} | {r['slots']:,} | "
            f"{_gb(r['bytes_per_sequence'])} | {r['of_full']:.4f} | {r['max_batch']} | "
            f"{dash if r['max_batch_any_split'] is None else r['max_batch_any_split']} | "
            f"{dash if r['max_batch_with_state'] is None else r['max_batch_with_state']} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from depthkv.files import atomic_write_json

    result = compute()
    atomic_write_json(RESULT, result)
    print(markdown(result))
    print(f"\n(written to {RESULT.relative_to(Path.cwd()) if RESULT.is_relative_to(Path.cwd()) else RESULT})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
