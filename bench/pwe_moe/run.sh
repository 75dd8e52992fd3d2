#!/usr/bin/env bash
# One PWEMoE-LS training step at ViT-B/32 shape, batch 16 per task:
#  1. T = 2 and T = 8, float32 and mixed bfloat16 side by side in one process (fusion_bench_pwe_moe
#     precision). Target: the bf16 step <= 0.6x the float32 step where the CPU has bf16 instructions
#     (avx512_bf16 / amx_bf16); elsewhere the run falls back to float32 and the target is N/A.
#     Lines: `TARGET pwe_moe_bf16_step_T<T> ...`.
#  2. T = 8 over 2 ranks x (threads / 2) against 1 rank x threads, alternated in the same processes
#     (fusion_bench_pwe_moe dist-step: it starts its 2 ranks itself, Gloo on 127.0.0.1), and the bytes
#     each rank sends per step. Lines: `TARGET pwe_moe_ls_2ranks_step_T8 <ratio> <=1.0 ...` (2 ranks no
#     slower than 1 on the same cores) and `TARGET pwe_moe_ls_bytes_per_step_T8_2ranks <bytes> - N/A`.
# No Python.
#
#   bench/pwe_moe/run.sh [BUILD_DIR] [extra args for both, e.g. --reps 3 --emulate 1]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=build
if [[ $# -gt 0 && $1 != --* ]]; then BUILD_DIR=$1; shift; fi
THREADS="${FUSION_BENCH_THREADS:-$(nproc)}"
export OMP_WAIT_POLICY=PASSIVE
"$BUILD_DIR/bin/fusion_bench_pwe_moe" precision --batch 16 --reps 3 --threads "$THREADS" "$@"
echo
exec "$BUILD_DIR/bin/fusion_bench_pwe_moe" dist-step --tasks 8 --batch 16 --reps 3 --nproc 2 --epo 1 \
  --threads "$THREADS" "$@"
