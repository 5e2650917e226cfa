"""Markdown tables from ``benchmarks/results/decode-cpu.json`` (written by test_decode_step.py).

    python -m benchmarks.decode_report [benchmarks/results/decode-cpu.json]

Prints, per model shape and context, each variant's median step time, its ratio to the full
cache, and for shapes whose weights dominate (SmolLM2-135M) the bytes-read floor and how far above
it each variant runs, and how far above the ``no-kv`` step (the full cache holding 16 tokens: the
weights alone). These are the tables in docs/results.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent / "results" / "decode-cpu.json"
ORDER = ("full", "evict@0.1", "evict@0.2", "append@0.1", "append@0.2", "no-kv")


def rows(data: dict) -> list[dict]:
    out = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if "median_s" in info:
            out.append(info)
    return sorted(out, key=lambda i: (i["shape"], i["context"]))


def table(info: dict) -> str:
    with_floor = info["shape"] != "tiny-llama"
    head = "| variant | step (ms) | × full |" + (" floor (ms) | × floor | × no-kv step |" if with_floor else "")
    rule = "|---|---|---|" + ("---|---|---|" if with_floor else "")
    lines = [f"**{info['shape']}, {info['context']:,} tokens** ({info['layers']} layers)", "", head, rule]
    for name in ORDER:
        med = info["median_s"][name]
        line = f"| {name} | {med * 1e3:.2f} | {info['ratio_vs_full'][name]:.3f} |"
        if with_floor:
            no_kv = info["median_s"]["no-kv"]
            line += f" {info['floor_s'][name] * 1e3:.2f} | {info['over_floor'][name]:.2f} | {med / no_kv:.2f} |"
        lines.append(line)
    if with_floor:
        lines += [
            "",
            f"Weights {info['weight_bytes'] / 1e6:.0f} MB read per token; one thread reads "
            f"{info['read_bandwidth_gbs']:.1f} GB/s.",
        ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DEFAULT
    data = json.loads(path.read_text())
    info = data.get("machine_info", {})
    print(f"Machine: {info.get('cpu', {}).get('brand_raw', '?')}, {data.get('datetime', '?')}\n")
    for entry in rows(data):
        print(table(entry))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
