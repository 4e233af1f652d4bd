#!/usr/bin/env bash
# The GPU check, in one go, on one H100/H200 without network (about 4 minutes): training throughput on CUDA
# (benchmarks/train_throughput.py) at batch 16 and 256, fp32 and bf16, channels_last (the default), with the fold held in
# GPU memory; then the same with every batch streamed from host memory (--stream: gathered into pinned memory by a
# background thread and copied without blocking). Prints the `ratio device=cuda precision=... vs_seed=... vs_bound=...`
# lines of both runs at the end. Targets: vs_seed >= 50 at batch 256 bf16, vs_bound >= 0.8.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from the repository root or anywhere
#   bash benchmarks/gpu_check.sh --smoke         # the same commands on the CPU at a tiny size (checks the script, ~1 min)
#   PYTHON=/path/to/python DATA=/path/to/photos bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DATA=${DATA:-../shared/data}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ "${1:-}" == "--smoke" ]]; then
    args=(--device cpu --size 32 --limit 16 --batch 4 --large-batch 8 --steps 1 --seed-steps 1 --rounds 1 --precision fp32)
else
    args=(--device cuda --seed-steps 1)  # 1,024 images at 256 px, batch 16 and 256, 20 steps x 3 rounds, fp32 and bf16
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "== resident: the fold in GPU memory"
timeout 240 "$PYTHON" benchmarks/train_throughput.py --data "$DATA" "${args[@]}" | tee "$out/resident.txt"
echo "== streamed: every batch from host memory"
timeout 150 "$PYTHON" benchmarks/train_throughput.py --data "$DATA" "${args[@]}" --rounds 2 --stream | tee "$out/stream.txt"
echo "== summary: resident"
grep '^ratio ' "$out/resident.txt"
echo "== summary: streamed"
grep '^ratio ' "$out/stream.txt"
