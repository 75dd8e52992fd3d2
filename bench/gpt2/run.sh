#!/usr/bin/env bash
# GPT-2 small's shape (124 M parameters), batch 8 x 128 tokens, float32, at the same thread count with
# OMP_WAIT_POLICY=PASSIVE for everything (issue 12, item 6):
#  1. evaluation: GPT2ForSequenceClassification's forward in fusion (fusion_bench_gpt2) and the same
#     forward in Debian's python3-torch (bench_gpt2_eval.py), run in the order fusion, python, python,
#     fusion so that a load that drifts falls on both alike; tokens/s and CPU time per batch (means of
#     the two runs' medians), peak RSS from /usr/bin/time -v (the larger of the two runs).
#     Target: fusion's tokens/s >= python's.  --fusion-only runs fusion once and skips the peer (the
#     target is then N/A; bench/run_all.sh runs it so).
#  2. one PWEMoE-LS step (`*.mlp.*` upscaled, T = 2 and T = 8 tasks, batch 8 x 128 per task) against a
#     plain forward + backward through the same merged body with the same trainable parameters,
#     alternated rep by rep (fusion_bench_gpt2_pwe_moe): 3 rep pairs at T = 2, 1 at T = 8 (--reps N sets
#     both; --tasks T, repeatable, runs only those T with --reps). Target: LS / plain <= 1.05.
#  3. evaluation in mixed bfloat16 beside float32, batches alternated in one process
#     (fusion_bench_gpt2 --bf16 1; issue 11 item 4 for the language half). Target: bf16 >= 1.6x
#     float32's tokens/s where the CPU has bf16 instructions, N/A elsewhere.
# Last lines: TARGET gpt2_eval_throughput_vs_python ..., TARGET pwe_moe_ls_vs_plain_gpt2_T<T> ... and
# TARGET gpt2_eval_bf16_throughput ...
#
#   bench/gpt2/run.sh [BUILD_DIR] [--fusion-only] [--iters 5] [--warmup 2] [--reps 3] [--tasks T]...
#                     [--batch 8] [--seq 128]
# BUILD_DIR (default build) must hold bin/fusion_bench_gpt2 and bin/fusion_bench_gpt2_pwe_moe
# (ninja -C BUILD_DIR fusion_bench_gpt2 fusion_bench_gpt2_pwe_moe); the peer needs /usr/bin/python3
# with python3-torch, GNU time (/usr/bin/time) is needed for peak RSS.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=build
if [[ $# -gt 0 && $1 != --* ]]; then BUILD_DIR=$1; shift; fi
PEER=1
EVAL=(--iters 5 --warmup 2)
STEP=(--reps 3)
REPS8=1
TASKS=()
SHAPE=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --fusion-only) PEER=0; shift ;;
    --with-python) PEER=1; shift ;;
    --iters|--warmup) EVAL+=("$1" "$2"); shift 2 ;;
    --reps) STEP+=("$1" "$2"); REPS8=$2; shift 2 ;;
    --tasks) TASKS+=("$1" "$2"); shift 2 ;;
    --batch|--seq) SHAPE+=("$1" "$2"); shift 2 ;;
    *) echo "bench/gpt2/run.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
THREADS="${FUSION_BENCH_THREADS:-$(nproc)}"
export OMP_WAIT_POLICY=PASSIVE
for b in fusion_bench_gpt2 fusion_bench_gpt2_pwe_moe; do
  [[ -x "$BUILD_DIR/bin/$b" ]] || { echo "bench/gpt2/run.sh: no $BUILD_DIR/bin/$b (build it first)" >&2; exit 2; }
done
[[ -x /usr/bin/time ]] || { echo "bench/gpt2/run.sh: GNU time (/usr/bin/time) is needed for peak RSS" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One evaluation run: its output line with peak_rss_mib replaced by /usr/bin/time's figure.
eval_run() {  # name, command...
  local name=$1; shift
  /usr/bin/time -v -o "$tmp/$name.time" "$@" "${EVAL[@]}" "${SHAPE[@]}" --threads "$THREADS" >"$tmp/$name.out"
  local kib
  kib=$(sed -n 's/.*Maximum resident set size (kbytes): *\([0-9]*\).*/\1/p' "$tmp/$name.time")
  sed "s/peak_rss_mib=[0-9.]*/peak_rss_mib=$(awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }')/" "$tmp/$name.out"
}
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
mean() { awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { printf f, (a + b) / 2 }'; }
larger() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (a > b ? a : b) }'; }

echo "== evaluation: GPT2ForSequenceClassification, GPT-2 small's shape, $THREADS threads (peak RSS: /usr/bin/time -v)"
cpp1=$(eval_run cpp1 "$BUILD_DIR/bin/fusion_bench_gpt2"); echo "$cpp1"
if [[ $PEER == 1 ]]; then
  py1=$(eval_run py1 /usr/bin/python3 bench/gpt2/bench_gpt2_eval.py); echo "$py1"
  py2=$(eval_run py2 /usr/bin/python3 bench/gpt2/bench_gpt2_eval.py); echo "$py2"
fi
if [[ $PEER == 1 ]]; then cpp2=$(eval_run cpp2 "$BUILD_DIR/bin/fusion_bench_gpt2"); echo "$cpp2"; else cpp2=$cpp1; fi
ct=$(mean "$(field tokens_per_s "$cpp1")" "$(field tokens_per_s "$cpp2")" %.1f)
cc=$(mean "$(field cpu_s_per_batch "$cpp1")" "$(field cpu_s_per_batch "$cpp2")" %.4f)
cm=$(larger "$(field peak_rss_mib "$cpp1")" "$(field peak_rss_mib "$cpp2")")
echo "fusion: $ct tokens/s, $cc CPU s per batch$([[ $PEER == 1 ]] && echo " (means of 2 runs)"), peak RSS $cm MiB"
if [[ $PEER == 1 ]]; then
  pt=$(mean "$(field tokens_per_s "$py1")" "$(field tokens_per_s "$py2")" %.1f)
  pc=$(mean "$(field cpu_s_per_batch "$py1")" "$(field cpu_s_per_batch "$py2")" %.4f)
  pm=$(larger "$(field peak_rss_mib "$py1")" "$(field peak_rss_mib "$py2")")
  echo "python: $pt tokens/s, $pc CPU s per batch (means of 2 runs), peak RSS $pm MiB"
  awk -v c="$ct" -v p="$pt" -v cc="$cc" -v pc="$pc" -v cm="$cm" -v pm="$pm" \
      'BEGIN { printf "ratio fusion/python: throughput %.3f, CPU time per batch %.3f, peak RSS %.3f\n", c / p, cc / pc, cm / pm }'
  eval_target=$(awk -v c="$ct" -v p="$pt" -v cm="$cm" -v pm="$pm" 'BEGIN { r = c / p
    printf "TARGET gpt2_eval_throughput_vs_python %.3f >=1.0 %s fusion %.1f vs python %.1f tokens/s; peak RSS %.0f vs %.0f MiB",
           r, (r >= 1.0 ? "MET" : "MISSED"), c, p, cm, pm }')
else
  eval_target="TARGET gpt2_eval_throughput_vs_python - >=1.0 N/A python peer not run (--fusion-only): fusion $ct tokens/s, peak RSS $cm MiB; peer figures in bench/README.md"
fi

echo
echo "== PWEMoE-LS step vs plain forward + backward (fusion_bench_gpt2_pwe_moe)"
step() { "$BUILD_DIR/bin/fusion_bench_gpt2_pwe_moe" "$@" "${SHAPE[@]}" --threads "$THREADS" | tee -a "$tmp/step.out" | { grep -v '^TARGET ' || true; }; }
if [[ ${#TASKS[@]} -gt 0 ]]; then
  step "${TASKS[@]}" "${STEP[@]}"
else
  # T = 8 takes ~4x T = 2's time per step: one rep pair keeps the whole run within ~5 minutes.
  step --tasks 2 "${STEP[@]}"
  step --tasks 8 --reps "$REPS8"
fi
echo
echo "== evaluation in mixed bfloat16 beside float32, batches alternated (fusion_bench_gpt2 --bf16 1)"
"$BUILD_DIR/bin/fusion_bench_gpt2" --bf16 1 "${EVAL[@]}" "${SHAPE[@]}" --threads "$THREADS" >"$tmp/bf16.out"
grep -v '^TARGET ' "$tmp/bf16.out" || true
echo
echo "$eval_target"
grep '^TARGET ' "$tmp/step.out" || true
grep '^TARGET ' "$tmp/bf16.out" || true
