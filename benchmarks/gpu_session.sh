#!/usr/bin/env bash
# One lent-GPU session in one call (see docs/models.md and docs/kernels.md), run from the repository
# root (it cd's there; the training code is the top-level training/ folder, run as python -m training.train):
#   1. the embedded models trained on CUDA, several settings side by side (one process each),
#      while the Triton kernel tests run on the GPU (correctness only, so sharing is harmless);
#   2. then benchmarks/gpu.py alone on the GPU (its timings are the ones we report; it starts no
#      serving row after BENCH_LIMIT - 45 s and rewrites its JSON/markdown after every row, so a
#      timeout still leaves the numbers measured so far).
# Everything lands under $OUT (default ./gpu-session-out): one .tgz per trained model folder and
# logs.tgz (training logs, pytest log, the benchmark's JSON/markdown). Runs with the device's own
# python3 (torch/transformers/triton preinstalled) and PYTHONPATH=. -- nothing is installed.
#
#   bash benchmarks/gpu_session.sh            # on the GPU machine (about 11 minutes)
#   DRY=1 bash benchmarks/gpu_session.sh      # plumbing check on a CPU: seconds of training,
#                                             # interpreter kernels, gpu.py --dry-run
#   TRAIN_ONLY=1 MINUTES=6.5 WORKERS=3 bash benchmarks/gpu_session.sh
#       # a training session: no kernel tests or benchmark (both measured on 2026-11-28), each
#       # variant's batches made ahead by WORKERS processes (--data-stream per_step)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-session-out}
PY=${PY:-python3}
MINUTES=${MINUTES:-4.5}
BENCH_LIMIT=${BENCH_LIMIT:-330}  # benchmarks/gpu.py: about 5 minutes on an H200
W=${WORK:-/tmp/depthkv-gpu-session}
DRY=${DRY:-0}
TRAIN_ONLY=${TRAIN_ONLY:-0}
WORKERS=${WORKERS:-0}
PROBE_EVERY=${PROBE_EVERY:-200}  # key-matching probe in the training log (training/probes.py)
rm -rf "$W" && mkdir -p "$OUT" "$W/models" "$W/logs" "$W/bench"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
DEVICE=cuda BENCH_ARGS="" KERNEL_TESTS_INTERPRET=0 PYTEST_K=""
if [ "$DRY" = 1 ]; then
  DEVICE=cpu BENCH_ARGS=--dry-run KERNEL_TESTS_INTERPRET=1 PYTEST_K="compact" MINUTES=${DRY_MINUTES:-0.1}
fi
START=$SECONDS
stamp() { echo "[+$((SECONDS - START)) s] $*"; }

{ nvidia-smi || true; $PY -c "import platform, torch, transformers, triton; print('python', platform.python_version(), \
'torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__, \
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"; nproc; } > "$W/logs/machine.txt" 2>&1
tail -n 2 "$W/logs/machine.txt"

# name  model  recipe  batch-scale  lr  seed
# Four at most: on 2026-11-28 six processes with 16x batches ran the 141 GiB card out of memory
# (benchmarks/results/gpu-session-2026-11-28/). v4 (progressive depth) formed key matching for
# both models on the CPU; tiny-qwen2 left the copy plateau only with seed 4 (seeds 0-3 stalled),
# so the GPU tries it with three seeds at once, seed 4 among them (training/LOG.md). Larger
# batches change the data each seed sees, so seed 4's escape on the CPU does not carry over.
VARIANTS=(
  "llama-v4-b4 tiny-llama v4 4 1e-3 0"
  "qwen2-v4-b4-s0 tiny-qwen2 v4 4 1e-3 0"
  "qwen2-v4-b4-s1 tiny-qwen2 v4 4 1e-3 1"
  "qwen2-v4-b4-s4 tiny-qwen2 v4 4 1e-3 4"
)
[ "$DRY" = 1 ] && VARIANTS=("${VARIANTS[1]}" "${VARIANTS[2]}")  # two processes for two CPU cores
# The trainer stops itself at 1.3 x --minutes; the timeout is only a backstop.
LIMIT=$($PY -c "print(int($MINUTES * 60 * 1.3 + 45))")
pids=()
for v in "${VARIANTS[@]}"; do
  read -r name model recipe scale lr seed <<<"$v"
  [ "$DRY" = 1 ] && scale=1  # a CPU cannot probe 16x batches quickly
  data=()
  [ "$WORKERS" -gt 0 ] && data=(--data-stream per_step --workers "$WORKERS")
  timeout "$LIMIT" $PY -m training.train --name "$model" --recipe "$recipe" --batch-scale "$scale" \
    --lr "$lr" --seed "$seed" --minutes "$MINUTES" --device "$DEVICE" --no-eval --out "$W/models/$name" \
    --work-dir "$W/work/$name" --probe-every "$PROBE_EVERY" "${data[@]}" >"$W/logs/train-$name.log" 2>&1 &
  pids+=($!)
done
stamp "training ${#VARIANTS[@]} variants for $MINUTES min each (backstop ${LIMIT} s)"

if [ "$TRAIN_ONLY" != 1 ]; then
  TRITON_INTERPRET=$KERNEL_TESTS_INTERPRET timeout 300 $PY -m pytest -q -p no:cacheprovider \
    ${PYTEST_K:+-k "$PYTEST_K"} tests/kernels/test_triton.py tests/kernels/test_attend_evict.py \
    >"$W/logs/pytest-kernels-gpu.log" 2>&1
  stamp "kernel tests rc=$?: $(tail -n 1 "$W/logs/pytest-kernels-gpu.log")"
fi

for i in "${!pids[@]}"; do
  wait "${pids[$i]}"
  stamp "train ${VARIANTS[$i]%% *} rc=$?"
done

if [ "$TRAIN_ONLY" != 1 ]; then
  timeout "$BENCH_LIMIT" $PY benchmarks/gpu.py $BENCH_ARGS --time-budget $((BENCH_LIMIT - 45)) --out "$W/bench" \
    >"$W/logs/bench.log" 2>&1
  stamp "benchmark rc=$? (limit $BENCH_LIMIT s)"
fi

for v in "${VARIANTS[@]}"; do
  name=${v%% *}
  [ -d "$W/models/$name" ] && tar -czf "$OUT/model-$name.tgz" -C "$W/models" "$name"
done
tar -czf "$OUT/logs.tgz" -C "$W" logs bench

$PY - "$W" <<'EOF'
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
for folder in sorted((w / "models").iterdir()):
    t = json.loads((folder / "training.json").read_text())
    moves = ", ".join(
        f"{m['step']}:grew:{m['grew_to_layers']}" if "grew_to_layers" in m else f"{m['step']}:{m['reason'][:4]}:{m['ema_exact_match']}"
        for m in t["curriculum"]["transitions"]
    )
    f = t["final"] or {}
    probed = [r for r in t["history"] if "key_match" in r]
    if probed:
        print(f"{folder.name:15s} key matching (2/4/8 records) by step: "
              + " ".join(f"{r['step']}:{'/'.join(str(v) for v in r['key_match'].values())}" for r in probed[-6:]))
    print(f"{folder.name:15s} steps {t['steps']}/{t['steps_planned']} {t['wall_time_s']:.0f}s moves [{moves}] "
          f"final loss {f.get('loss')} em {f.get('exact_match')} tok/s {f.get('tokens_per_s')} data {f.get('data_share')}")
EOF
[ -f "$W/logs/bench.log" ] && tail -n 25 "$W/logs/bench.log"
stamp "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
