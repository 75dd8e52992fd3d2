#!/usr/bin/env bash
# One PWEMoE-LS training step at ViT-B/32 shape, batch 16 per task, T = 2 and T = 8: float32 and mixed
# bfloat16 side by side in one process (fusion_bench_pwe_moe precision). Target: the bf16 step <= 0.6x
# the float32 step where the CPU has bf16 instructions (avx512_bf16 / amx_bf16); elsewhere the run falls
# back to float32 and the target is N/A. Last lines: `TARGET pwe_moe_bf16_step_T<T> ...`. No Python.
#
#   bench/pwe_moe/run.sh [BUILD_DIR] [extra args, e.g. --reps 3 --emulate 1]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=build
if [[ $# -gt 0 && $1 != --* ]]; then BUILD_DIR=$1; shift; fi
THREADS="${FUSION_BENCH_THREADS:-$(nproc)}"
export OMP_WAIT_POLICY=PASSIVE
exec "$BUILD_DIR/bin/fusion_bench_pwe_moe" precision --batch 16 --reps 3 --threads "$THREADS" "$@"
