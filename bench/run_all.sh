#!/usr/bin/env bash
# Runs every benchmark of bench/ in one go and writes one table: the machine (CPU model, cores,
# the CPU flags that decide the fast paths, memory), the threads, the date and the commit, then one
# row per target with the measured ratio, the limit and MET / MISSED / N/A.
#
#   bench/run_all.sh [BUILD_DIR=build] [OUT=bench/RESULTS.md]
#
# Each bench prints its own table and, last, one machine-readable line per target:
#   TARGET <name> <ratio> <limit> MET|MISSED|N/A [note...]
# where <limit> is written with its comparison (`<=1.2`, `>=1.6`). This script collects those lines.
# The full output of every bench goes to OUT's folder as bench-<name>.log beside OUT.
# No Python: the benches time fusion's own programs (peer figures are recorded in bench/README.md).
#
# Needs: a build with FUSION_BUILD_BENCH=ON (the default), hyperfine and GNU time
# (scripts/install-deps.sh --bench), ~3.5 GB free in /tmp for bench/merge's checkpoints.
# Environment: BENCHES (default "merge pwe_moe clip gpt2 data") picks benches; RUNS is passed to
# bench/merge; FUSION_BENCH_THREADS sets the thread count (default: all cores).
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$(cd "${1:-$repo/build}" 2>/dev/null && pwd) || { echo "run_all: no build folder '${1:-build}'" >&2; exit 2; }
out=${2:-$repo/bench/RESULTS.md}
logdir=$(dirname "$out")
mkdir -p "$logdir"
threads=${FUSION_BENCH_THREADS:-$(nproc)}
export FUSION_BENCH_THREADS=$threads OMP_WAIT_POLICY=PASSIVE
benches=${BENCHES:-merge pwe_moe clip gpt2 data}

declare -A commands=(
  [merge]="$repo/bench/merge/run.sh $build"
  [pwe_moe]="$repo/bench/pwe_moe/run.sh $build"
  [clip]="$repo/bench/clip/run.sh $build --fusion-only"
  [gpt2]="$repo/bench/gpt2/run.sh $build --fusion-only"
  [data]="$repo/bench/data/run.sh $build"
)

targets=$(mktemp)
trap 'rm -f "$targets"' EXIT
status=0
for b in $benches; do
  cmd=${commands[$b]:-}
  [[ -n "$cmd" ]] || { echo "run_all: unknown bench '$b' (known: ${!commands[*]})" >&2; exit 2; }
  log="$logdir/bench-$b.log"
  echo "== bench/$b: $cmd"
  start=$(date +%s)
  # shellcheck disable=SC2086  # the command is a word list on purpose
  (cd "$repo" && $cmd) 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  echo "== bench/$b: exit $rc in $(( $(date +%s) - start )) s"
  if [[ $rc -ne 0 ]]; then
    status=1
    echo "TARGET $b-ran $rc 0 MISSED exit status $rc (see $(basename "$log"))" >>"$targets"
  fi
  grep '^TARGET ' "$log" | sed "s/^TARGET /TARGET $b\//" >>"$targets" || true
done

flag_list() {
  local have=()
  for f in avx2 avx512f avx512_bf16 amx_bf16 amx_tile avx512_vnni f16c fma; do
    grep -qw "$f" /proc/cpuinfo && have+=("$f")
  done
  echo "${have[*]:-none of the listed}"
}
torch_version=$(dpkg-query -W -f='${Version}' libtorch1.13 2>/dev/null || echo unknown)
blas=$(readlink -f /etc/alternatives/libblas.so.3-x86_64-linux-gnu 2>/dev/null || echo unknown)
# OpenBLAS's kernels as fusion sees them (`fusion --version`), OPENBLAS_CORETYPE included where set.
kernels=$("$build/bin/fusion" --version 2>/dev/null | sed -n 's/^BLAS: //p')
{
  echo "# fusion benchmarks"
  echo
  echo "Written by \`bench/run_all.sh\`; each bench's full output is in \`bench-<name>.log\` beside this file."
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
  echo "| commit | $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown) |"
  # The family and model tell apart VMs that share a model name ("AMD EPYC": Zen 4 is family 25,
  # Zen 5 family 26), whose figures differ.
  cpu=$(lscpu | awk -F': *' '/^Model name:/ && n == "" {n = $2} /^CPU family:/ {f = $2} /^Model:/ {m = $2}
                             END {printf "%s (family %s, model %s)", n, f, m}')
  echo "| CPU | $cpu, $(nproc) cores |"
  echo "| CPU flags | $(flag_list) |"
  echo "| memory | $(free -g | awk '/^Mem:/ {print $2 " GiB"}') |"
  echo "| threads | $threads (OMP_WAIT_POLICY=PASSIVE) |"
  echo "| LibTorch | $torch_version; BLAS $blas${kernels:+; $kernels} |"
  echo
  echo "| bench / target | measured | limit | verdict | note |"
  echo "|---|---:|---:|---|---|"
  while read -r _ name ratio limit verdict note; do
    echo "| $name | $ratio | $limit | $verdict | ${note:-} |"
  done <"$targets"
} >"$out"
echo "== wrote $out"
cat "$out"
exit $status
