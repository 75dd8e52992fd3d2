#!/usr/bin/env bash
# Eval throughput of a ViT-B/32-shaped CLIP vision tower at batch 64: fusion (C++) against the same
# forward in Debian's python3-torch, at the same thread count, OMP_WAIT_POLICY=PASSIVE for both.
#
#   bench/clip/run.sh [BUILD_DIR] [extra args for both, e.g. --iters 5 --threads 2]
# BUILD_DIR (default build) must hold bin/fusion_bench_clip (ninja -C BUILD_DIR fusion_bench_clip).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR="${1:-build}"
shift || true
THREADS="${FUSION_BENCH_THREADS:-$(nproc)}"
export OMP_WAIT_POLICY=PASSIVE
cpp=$("$BUILD_DIR/bin/fusion_bench_clip" --threads "$THREADS" "$@")
py=$(/usr/bin/python3 bench/clip/bench_clip_vision.py --threads "$THREADS" "$@")
echo "$cpp"
echo "$py"
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
awk -v c="$(field images_per_s "$cpp")" -v p="$(field images_per_s "$py")" \
    -v cc="$(field cpu_s_per_batch "$cpp")" -v pc="$(field cpu_s_per_batch "$py")" \
    -v cm="$(field peak_rss_mib "$cpp")" -v pm="$(field peak_rss_mib "$py")" \
    'BEGIN { printf "ratio cpp/python: throughput %.3f, CPU time per batch %.3f, peak RSS %.3f\n", c / p, cc / pc, cm / pm }'
