#!/usr/bin/env bash
# Merge benchmark: task arithmetic and TIES-merging over 8 synthetic checkpoints shaped like CLIP
# ViT-B/32's vision tower (~88 M f32 parameters, ~350 MB each), each timed beside simply reading the
# same files, with peak RSS beside one model's size.
#
#   bench/merge/run.sh [BUILD_DIR=build] [WORK_DIR=/tmp/fusion-bench-merge]
#
# Needs: a build with the `fusion` binary, its plugins and the bench programs (FUSION_BUILD_BENCH=ON,
# the default), hyperfine, GNU time (/usr/bin/time), ~3.5 GB free in WORK_DIR.
# Targets: task arithmetic ≤ 1.5× the read time; peak RSS ≤ 3× one model.
# Environment: RUNS (default 3) timed runs per command, after one warm-up run (files in page cache).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(cd "${1:-$repo/build}" && pwd)
work=${2:-/tmp/fusion-bench-merge}
runs=${RUNS:-3}
experts=8
export OMP_WAIT_POLICY=PASSIVE  # see design/environment.md: LibTorch's OpenMP workers otherwise spin

for tool in hyperfine /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed (scripts/install-deps.sh --bench)" >&2; exit 1; }
done
fusion="$build/bin/fusion"
for exe in "$fusion" "$build/bin/fusion_bench_make_checkpoints" "$build/bin/fusion_bench_read_all"; do
  [[ -x "$exe" ]] || { echo "error: $exe is missing; build with -DFUSION_BUILD_BENCH=ON" >&2; exit 1; }
done

ckpt="$work/checkpoints"
mkdir -p "$work"
if [[ ! -f "$ckpt/expert_$((experts - 1))/model.safetensors" ]]; then
  "$build/bin/fusion_bench_make_checkpoints" "$ckpt" "$experts" 0
fi
files=("$ckpt/pretrained")
for ((i = 0; i < experts; i++)); do files+=("$ckpt/expert_$i"); done
model_bytes=$(stat -c %s "$ckpt/pretrained/model.safetensors")

# One config per method; no [taskpool], so a run merges and saves.
write_config() {  # name, method lines
  {
    printf '[run]\nout_dir = "%s/out_%s"\ndevice = "cpu"\nseed = 0\n\n[method]\n%s\n\n' "$work" "$1" "$2"
    printf '[modelpool]\nname = "safetensors"\npretrained = "%s/pretrained"\n\n[modelpool.models]\n' "$ckpt"
    for ((i = 0; i < experts; i++)); do printf 'expert_%d = "%s/expert_%d"\n' "$i" "$ckpt" "$i"; done
  } >"$work/$1.toml"
}
write_config task_arithmetic $'name = "task_arithmetic"\nscaling_factor = 0.3'
write_config ties_merging $'name = "ties_merging"\nthreshold = 20\nmerge_func = "sum"\nscaling_factor = 0.3'

read_cmd="$build/bin/fusion_bench_read_all ${files[*]}"
ta_cmd="$fusion run $work/task_arithmetic.toml"
ties_cmd="$fusion run $work/ties_merging.toml"

echo "== timing (hyperfine, $runs runs after 1 warm-up; files in the page cache)"
hyperfine --warmup 1 --runs "$runs" --export-json "$work/hyperfine.json" \
  --prepare "rm -rf $work/out_task_arithmetic $work/out_ties_merging" \
  -n read "$read_cmd" -n task_arithmetic "$ta_cmd" -n ties_merging "$ties_cmd"

echo "== peak RSS and CPU time (/usr/bin/time -v, one run each)"
peak() {  # command... → "kbytes cpu_seconds"
  rm -rf "$work/out_task_arithmetic" "$work/out_ties_merging"
  /usr/bin/time -v "$@" 2>"$work/time.txt" >/dev/null || { cat "$work/time.txt" >&2; exit 1; }
  awk -F': ' '/Maximum resident set size/ {rss = $2} /User time/ {u = $2} /System time/ {s = $2}
              END {print rss "," u + s}' "$work/time.txt"
}
rss_read=$(peak $read_cmd)
rss_ta=$(peak $ta_cmd)
rss_ties=$(peak $ties_cmd)

python3 - "$work/hyperfine.json" "$model_bytes" "$rss_read" "$rss_ta" "$rss_ties" <<'PY'
import json, sys
results = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
model = int(sys.argv[2])
names = ["read", "task_arithmetic", "ties_merging"]
rss = {n: int(v.split(",")[0]) * 1024 for n, v in zip(names, sys.argv[3:6])}
cpu = {n: float(v.split(",")[1]) for n, v in zip(names, sys.argv[3:6])}
read = results["read"]["mean"]
print(f"one model: {model / 1e6:.1f} MB; 9 checkpoints read by each run (TIES reads the experts twice)")
print("wall time from hyperfine; CPU time (user + sys) and peak RSS from one /usr/bin/time -v run —")
print("CPU time is the steadier figure on a shared machine")
print(f"{'command':<16} {'mean s':>8} {'± s':>6} {'× read':>7} {'CPU s':>7} {'× read':>7} {'peak RSS MB':>12} {'× model':>8}")
for name in names:
    r = results[name]
    print(f"{name:<16} {r['mean']:8.3f} {r['stddev'] or 0:6.3f} {r['mean'] / read:7.2f} "
          f"{cpu[name]:7.2f} {cpu[name] / cpu['read']:7.2f} {rss[name] / 1e6:12.1f} {rss[name] / model:8.2f}")
ta_time = results["task_arithmetic"]["mean"] / read
ta_rss = rss["task_arithmetic"] / model
print(f"targets: task arithmetic {ta_time:.2f}x read time (<= 1.5: {'met' if ta_time <= 1.5 else 'MISSED'}); "
      f"peak RSS {ta_rss:.2f}x one model (<= 3: {'met' if ta_rss <= 3 else 'MISSED'}), "
      f"TIES {rss['ties_merging'] / model:.2f}x")
PY
