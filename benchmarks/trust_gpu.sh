#!/usr/bin/env bash
# Issue 25's GPU part on one GPU, every task one at a time, under benchmarks/background.sh:
#
#   benchmarks/background.sh start /tmp/t25 590 -- bash benchmarks/trust_gpu.sh /tmp/t25 /tmp/t25-work
#   benchmarks/background.sh wait /tmp/t25 590      # again while it exits 3 (still running)
#
# 1. timing_agreement.py on the Llama-3-8B shape: bf16 SDPA + static cache, bf16 eager + static
#    cache, bf16 SDPA, at batch 1 and 16, two rounds (A B, B A), ablations where a gap exceeds 5%
#    and, for the first compiled candidate, both sizes in one process with and without
#    CompileConfig(dynamic=True): agreement.{json,md}.
# 2. regret_gpu.py for the pairs not yet run (Llama-3-8B latency and throughput, Falcon-7B
#    throughput), most wanted first, each study's compile cache cold for the first seed and warm for
#    the second: regret.{json,md}, compile_cache.json, raw.json, the studies' databases, and
#    regret_gpu.json (benchmarks/results/regret_gpu.json with the new rows merged in).
#
# Everything lands directly in OUT (background.sh copies OUT's files back); the models and compile
# caches stay in WORK. STAGES (default "agreement regret") picks the stages, PAIRS the regret pairs
# (MODEL:WORKLOAD,...); AGREEMENT_DEADLINE and REGRET_DEADLINE (seconds) bound each. After the machine is given back, run it again on a fresh one
# with the files copied back into OUT and RESUME=1: regret_gpu.py keeps the tasks raw.json holds.
#
# Device time, estimated from measured parts (see each script's docstring): the agreement stage
# about 20 minutes; the three regret pairs about 54 (studies about 26, grids about 25, building the
# two models about 3). Issue 25 allows 25 device-minutes a session: the stages take three.
#
#   1. ... -- env STAGES=agreement bash benchmarks/trust_gpu.sh /tmp/t25 /tmp/t25-work       (~20 min)
#   2. ... -- env STAGES=regret PAIRS=llama-8b:throughput,llama-8b:latency REGRET_DEADLINE=1320 \
#             bash benchmarks/trust_gpu.sh /tmp/t25 /tmp/t25-work   (~25: build, four studies, the grid)
#   3. session 2's files copied into OUT first, then
#      ... -- env STAGES=regret RESUME=1 REGRET_DEADLINE=1320 bash benchmarks/trust_gpu.sh OUT WORK
#             (~25: what session 2 left of Llama-3-8B's grid, then Falcon-7B throughput)
set -uo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OUT WORK" >&2; exit 2; }
out=$1 work=$2
mkdir -p "$out" "$work"
here=$(cd "$(dirname "$0")/.." && pwd)
stages=${STAGES:-agreement regret}
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
count=$(grep -c . "$out/gpu.txt")
visible=${CUDA_VISIBLE_DEVICES:-}
if [ "$count" -gt 1 ] && [ -z "$visible" ]; then
  export CUDA_VISIBLE_DEVICES=0  # one GPU, one task at a time
fi
for stage in $stages; do
  case "$stage" in
    agreement)
      python3 "$here/benchmarks/timing_agreement.py" --build llama-8b --work "$work" --out "$out" \
        --candidates bf16:sdpa:static,bf16:eager:static,bf16:sdpa --batches 1,16 --rounds 2 \
        --deadline "${AGREEMENT_DEADLINE:-1320}" || status=$?
      ;;
    regret)
      [ -f "$out/regret_gpu.json" ] || cp "$here/benchmarks/results/regret_gpu.json" "$out/regret_gpu.json"
      resume=()
      [ "${RESUME:-0}" = 1 ] && resume=(--resume)
      python3 "$here/benchmarks/regret_gpu.py" --work "$work" --out "$out" \
        --pairs "${PAIRS:-llama-8b:throughput,llama-8b:latency,falcon-7b:throughput}" \
        --results "$out/regret_gpu.json" --deadline "${REGRET_DEADLINE:-3000}" "${resume[@]}" || status=$?
      ;;
    *) echo "unknown stage $stage (agreement, regret)" >&2; exit 2 ;;
  esac
done
exit $status
