#!/usr/bin/env bash
# Eval throughput of a ViT-B/32-shaped CLIP vision tower at batch 64: fusion in float32 and, where the
# CPU has bf16 instructions, in mixed bfloat16 beside it (target: bf16 >= 1.6x float32; the last line
# is `TARGET clip_eval_bf16_throughput ...`, N/A without bf16 hardware). No Python is needed.
# With --with-python, the same forward in Debian's python3-torch is timed too (the peer figure), at
# the same thread count, OMP_WAIT_POLICY=PASSIVE for both.
#
#   bench/clip/run.sh [BUILD_DIR] [--with-python | --fusion-only] [extra args for both, e.g. --iters 5 --threads 2]
# BUILD_DIR (default build) must hold bin/fusion_bench_clip (ninja -C BUILD_DIR fusion_bench_clip).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=build
if [[ $# -gt 0 && $1 != --* ]]; then BUILD_DIR=$1; shift; fi
PEER=0
ARGS=()
for a in "$@"; do
  case "$a" in
    --with-python) PEER=1 ;;
    --fusion-only) PEER=0 ;;
    *) ARGS+=("$a") ;;
  esac
done
THREADS="${FUSION_BENCH_THREADS:-$(nproc)}"
export OMP_WAIT_POLICY=PASSIVE
out=$("$BUILD_DIR/bin/fusion_bench_clip" --threads "$THREADS" "${ARGS[@]}")
echo "$out" | grep -v '^TARGET '
if [[ $PEER == 1 ]]; then
  cpp=$(grep '^cpp ' <<<"$out")
  py=$(/usr/bin/python3 bench/clip/bench_clip_vision.py --threads "$THREADS" "${ARGS[@]}")
  echo "$py"
  field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
  awk -v c="$(field images_per_s "$cpp")" -v p="$(field images_per_s "$py")" \
      -v cc="$(field cpu_s_per_batch "$cpp")" -v pc="$(field cpu_s_per_batch "$py")" \
      -v cm="$(field peak_rss_mib "$cpp")" -v pm="$(field peak_rss_mib "$py")" \
      'BEGIN { printf "ratio cpp/python (float32): throughput %.3f, CPU time per batch %.3f, peak RSS %.3f\n", c / p, cc / pc, cm / pm }'
fi
echo "$out" | grep '^TARGET ' || true
