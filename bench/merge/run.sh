#!/usr/bin/env bash
# Merge benchmark: task arithmetic, simple and weighted averaging, a 10-value λ sweep of task
# arithmetic and TIES-merging over 8 synthetic checkpoints shaped like CLIP ViT-B/32's vision tower
# (~88 M f32 parameters, ~350 MB each), timed in one hyperfine run beside `cat` of the same nine
# files to /dev/null and beside fusion's own reading of them, with peak RSS beside one model's size.
#
#   bench/merge/run.sh [BUILD_DIR=build] [WORK_DIR=/tmp/fusion-bench-merge]
#
# Needs: a build with the `fusion` binary, its plugins and the bench programs (FUSION_BUILD_BENCH=ON,
# the default), hyperfine, GNU time (/usr/bin/time), jq, awk, ~7 GB free in WORK_DIR (the inputs and
# the sweep's ten merged models). No Python.
# Environment: RUNS (default 3) timed runs per command, after one warm-up run (files in page cache).
#   BEFORE=<another build folder>: its `fusion` runs every method too, in the same hyperfine run
#   (`<method>@before`), and each method's time after/before is printed (a change measured side by
#   side, e.g. with the build of the previous commit).
#   PAIRS=N (with BEFORE; default 6, 0 skips): each method then runs N more times alternated with
#   its `@before` twin, and the pairs' median after/before ratio is printed (a batch of hyperfine
#   runs can drift against the next on these VMs; alternated pairs cancel that).
#   METHODS="task_arithmetic ta_sweep": only these methods (default: all five; targets of the others
#   are then not printed).
#
# Targets (issue 11), each printed with its ratio and MET or MISSED, and as a last machine-readable
# line per target: `TARGET <name> <ratio> <limit> MET|MISSED`.
#   read_vs_cat        reading + checking the nine files (fusion_bench_read_all less the start-up of
#                      a LibTorch process, `startup`, timed in the same run) ≤ 1.1× `cat`
#   task_arithmetic, simple_average, weighted_average   ≤ 1.2× read (whole processes, as the issue
#                      measured), peak RSS ≤ 2× one model
#   ta_sweep           10 λ values of task arithmetic, each merged model saved: ≤ 3× read
#   ties_vs_cat        TIES less the start-up ≤ 2.5× `cat`; peak RSS ≤ 2.5× one model
#   copy_read_worst_vs_best, copy_write_worst_vs_best   (fusion_bench_copy_distance, run last) the
#                      streamed reader and writer at every distance between their buffer and the
#                      file offset, the slowest ≤ 2× the fastest (copy_distance.cpp)
# Every `fusion run` saves its merged model(s) (fsync'd, never half-written), so its time includes
# writing 350 MB per model; `read` and `cat` write nothing. `write1` and `write10` time the disk alone
# in the same run (dd from /dev/zero: one model's bytes fsynced; ten models' bytes, then synced), and
# each target of a saving run is printed with its floor: max(read, startup + write1) for one model,
# startup + write10 for the sweep. Where the floor is above the limit, the disk, not the merge,
# decides the verdict. The floor is measured, so it varies as the disk does (bench/README.md).
# The streamed merges write each model into its file as they compute it, and the save links that
# file (detail::OutputFile).
# Phases: from each method's report.json of the /usr/bin/time run, where its wall time goes: outside
# run() (process start, LibTorch and plugin loading, exit), plugins, merge (with writing the models
# when they are written as produced) and save (fsync and link, or the whole write).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(cd "${1:-$repo/build}" && pwd)
work=${2:-/tmp/fusion-bench-merge}
runs=${RUNS:-3}
experts=8
export OMP_WAIT_POLICY=PASSIVE  # see design/environment.md: LibTorch's OpenMP workers otherwise spin

for tool in hyperfine /usr/bin/time jq awk; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed (scripts/install-deps.sh --bench)" >&2; exit 1; }
done
fusion="$build/bin/fusion"
for exe in "$fusion" "$build/bin/fusion_bench_make_checkpoints" "$build/bin/fusion_bench_read_all" \
           "$build/bin/fusion_bench_copy_distance"; do
  [[ -x "$exe" ]] || { echo "error: $exe is missing; build with -DFUSION_BUILD_BENCH=ON" >&2; exit 1; }
done

ckpt="$work/checkpoints"
mkdir -p "$work"
if [[ ! -f "$ckpt/expert_$((experts - 1))/model.safetensors" ]]; then
  "$build/bin/fusion_bench_make_checkpoints" "$ckpt" "$experts" 0
fi
files=("$ckpt/pretrained")
for ((i = 0; i < experts; i++)); do files+=("$ckpt/expert_$i"); done
model_files=()
for f in "${files[@]}"; do model_files+=("$f/model.safetensors"); done
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
write_config simple_average $'name = "simple_average"'
write_config weighted_average $'name = "weighted_average"\nweights = [1, 2, 3, 4, 5, 6, 7, 8]\nnormalize = true'
write_config ta_sweep $'name = "task_arithmetic"\nscaling_factors = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]'
write_config ties_merging $'name = "ties_merging"\nthreshold = 20\nmerge_func = "sum"\nscaling_factor = 0.3'
read -r -a methods <<<"${METHODS:-task_arithmetic simple_average weighted_average ta_sweep ties_merging}"
before=${BEFORE:+$(cd "$BEFORE" && pwd)}
if [[ -n "$before" ]]; then
  [[ -x "$before/bin/fusion" ]] || { echo "error: BEFORE=$BEFORE has no bin/fusion" >&2; exit 1; }
  for m in "${methods[@]}"; do
    sed "s|out_dir = \"$work/out_$m\"|out_dir = \"$work/out_${m}_before\"|" "$work/$m.toml" >"$work/${m}_before.toml"
  done
fi

cat_cmd="cat ${model_files[*]} > /dev/null"
# The disk alone (see the header), into the same folder as the runs' outputs.
model_mib=$(( (model_bytes + 1048575) / 1048576 ))
write1_cmd="dd if=/dev/zero of=$work/floor_0 bs=1M count=$model_mib conv=fsync status=none"
write10_cmd="for k in 0 1 2 3 4 5 6 7 8 9; do dd if=/dev/zero of=$work/floor_\$k bs=1M count=$model_mib status=none; done; sync -f $work"
startup_cmd="$build/bin/fusion_bench_read_all"
read_cmd="$build/bin/fusion_bench_read_all ${files[*]}"
clean="rm -rf $work/floor_?"
for m in "${methods[@]}"; do clean+=" $work/out_$m $work/out_${m}_before"; done

echo "== timing (hyperfine, $runs runs after 1 warm-up; files in the page cache)"
args=(-n cat "$cat_cmd" -n startup "$startup_cmd" -n read "$read_cmd" -n write1 "$write1_cmd" -n write10 "$write10_cmd")
for m in "${methods[@]}"; do
  args+=(-n "$m" "$fusion run $work/$m.toml")
  [[ -z "$before" ]] || args+=(-n "$m@before" "$before/bin/fusion run $work/${m}_before.toml")
done
hyperfine --warmup 1 --runs "$runs" --export-json "$work/hyperfine.json" --prepare "$clean" "${args[@]}"

echo "== peak RSS and CPU time (/usr/bin/time -v, one run each)"
: >"$work/rss.txt"
: >"$work/phases.txt"
peak() {  # name, command... → appends "name kbytes cpu_seconds"; for a run, its phases to phases.txt
  local name=$1
  shift
  $clean
  /usr/bin/time -v "$@" 2>"$work/time.txt" >/dev/null || { cat "$work/time.txt" >&2; exit 1; }
  awk -F': ' -v n="$name" '/Maximum resident set size/ {rss = $2} /User time/ {u = $2} /System time/ {s = $2}
                           END {print n, rss, u + s}' "$work/time.txt" >>"$work/rss.txt"
  local report="$work/out_${name/@before/_before}/report.json"
  if [[ -f "$report" ]]; then
    local wall
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$work/time.txt")
    jq -r --arg n "$name" --arg w "$wall" '.timings | "\($n) \($w) \(.plugins_s) \(.merge_s) \(.save_s) \(.total_s)"' "$report" >>"$work/phases.txt"
  fi
}
peak read $read_cmd
for m in "${methods[@]}"; do
  peak "$m" "$fusion" run "$work/$m.toml"
  [[ -z "$before" ]] || peak "$m@before" "$before/bin/fusion" run "$work/${m}_before.toml"
done
$clean

jq -r '.results[] | "\(.command) \(.mean) \(.stddev // 0)"' "$work/hyperfine.json" >"$work/means.txt"
names="cat startup read write1 write10"
for m in "${methods[@]}"; do names+=" $m"; [[ -z "$before" ]] || names+=" $m@before"; done
awk -v model="$model_bytes" -v names="$names" -v phases="$work/phases.txt" '
  FNR == NR { mean[$1] = $2; sd[$1] = $3; next }
  { rss[$1] = $2 * 1024; cpu[$1] = $3 }
  function target(name, ratio, limit, note) {
    verdict = ratio <= limit ? "MET" : "MISSED"
    printf "  %-28s %6.2f  (target <= %s)  %s%s\n", name, ratio, limit, verdict, note == "" ? "" : "  (" note ")"
    lines = lines sprintf("TARGET %s %.3f %s %s%s\n", name, ratio, limit, verdict, note == "" ? "" : " " note)
  }
  END {
    printf "one model: %.1f MB; cat, read and each method read the same 9 files\n", model / 1e6
    printf "wall time from hyperfine; CPU time (user + sys) and peak RSS from one /usr/bin/time -v run\n"
    printf "%-24s %8s %6s %7s %7s %7s %12s %8s\n", "command", "mean s", "± s", "x cat", "x read", "CPU s", "peak RSS MB", "x model"
    n = split(names, list, " ")
    for (i = 1; i <= n; i++) {
      c = list[i]
      r = (c in rss) ? sprintf("%7.2f %12.1f %8.2f", cpu[c], rss[c] / 1e6, rss[c] / model) : sprintf("%7s %12s %8s", "-", "-", "-")
      printf "%-24s %8.3f %6.3f %7.2f %7.2f %s\n", c, mean[c], sd[c], mean[c] / mean["cat"], mean[c] / mean["read"], r
    }
    net = mean["read"] - mean["startup"]
    printf "LibTorch start-up (startup) %.3f s; read less start-up %.3f s\n", mean["startup"], net
    print "phases (s, one /usr/bin/time run each, from its report.json): wall = outside run() + plugins + merge + save"
    printf "  %-24s %7s %12s %8s %7s %7s\n", "method", "wall", "outside run", "plugins", "merge", "save"
    while ((getline line < phases) > 0) {
      split(line, f, " ")
      printf "  %-24s %7.2f %12.2f %8.2f %7.2f %7.2f\n", f[1], f[2], f[2] - f[6], f[3], f[4], f[5]
    }
    for (i = 1; i <= n; i++) {
      c = list[i]
      if ((c "@before") in mean) printf "after/before %-16s %.3f s / %.3f s = %.2f\n", c, mean[c], mean[c "@before"], mean[c] / mean[c "@before"]
    }
    # A saving run cannot end before it has read its inputs, nor before its models are durable.
    one_floor = mean["startup"] + mean["write1"]
    if (mean["read"] > one_floor) one_floor = mean["read"]
    sweep_floor = mean["startup"] + mean["write10"]
    printf "the disk: one model written and fsynced %.3f s (%.0f MB/s), ten written and synced %.3f s (%.0f MB/s)\n",
           mean["write1"], model / 1e6 / mean["write1"], mean["write10"], 10 * model / 1e6 / mean["write10"]
    printf "floors: a run saving one model max(read, startup + write1) = %.2fx read; the sweep startup + write10 = %.2fx read\n",
           one_floor / mean["read"], sweep_floor / mean["read"]
    one_note = sprintf("floor %.2fx read: max(read, startup + one model written durably)", one_floor / mean["read"])
    sweep_note = sprintf("floor %.2fx read: startup + ten models written durably", sweep_floor / mean["read"])
    print "targets:"
    target("read_vs_cat", net / mean["cat"], 1.1)
    split("task_arithmetic simple_average weighted_average", avg, " ")
    for (i = 1; i <= 3; i++) {
      if (!(avg[i] in mean)) continue
      target(avg[i] "_vs_read", mean[avg[i]] / mean["read"], 1.2, one_note)
      target(avg[i] "_rss", rss[avg[i]] / model, 2)
    }
    if ("ta_sweep" in mean) target("ta_sweep_vs_read", mean["ta_sweep"] / mean["read"], 3, sweep_note)
    if ("ties_merging" in mean) {
      target("ties_vs_cat", (mean["ties_merging"] - mean["startup"]) / mean["cat"], 2.5)
      target("ties_rss", rss["ties_merging"] / model, 2.5)
    }
    if ("task_arithmetic" in mean)
      printf "also: task_arithmetic less start-up %.2fx cat\n", (mean["task_arithmetic"] - mean["startup"]) / mean["cat"]
    if ("ties_merging" in mean) printf "also: ties_merging %.2fx read\n", mean["ties_merging"] / mean["read"]
    printf "%s", lines
  }' "$work/means.txt" "$work/rss.txt"

# hyperfine runs each command's runs one after the other, and on these VMs a whole batch can drift
# by ±20 % against the next one: with BEFORE, PAIRS=N (default 6; 0 skips it) runs each method N
# more times alternated with its `@before` twin (which goes first swaps each pair) and prints the
# pairs' median ratio and how many pairs the new build won.
pairs=${PAIRS:-6}
if [[ -n "$before" && $pairs -gt 0 ]]; then
  echo "== after and before alternated ($pairs pairs per method; wall s of one run each)"
  : >"$work/pairs.txt"
  TIMEFORMAT=%R
  for ((p = 0; p < pairs; p++)); do
    for m in "${methods[@]}"; do
      sides=(after before)
      ((p % 2 == 0)) || sides=(before after)
      for side in "${sides[@]}"; do
        if [[ $side == after ]]; then exe=$fusion conf="$work/$m.toml"; else exe="$before/bin/fusion" conf="$work/${m}_before.toml"; fi
        $clean
        t=$({ time "$exe" run "$conf" >/dev/null 2>&1; } 2>&1) || { echo "error: $exe run $conf failed" >&2; exit 1; }
        echo "$m $side $p $t" >>"$work/pairs.txt"
      done
    done
  done
  $clean
  awk '{ t[$1 " " $2 " " $3] = $4; if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } if ($3 + 1 > np) np = $3 + 1 }
    END {
      printf "%-18s %9s %9s %13s %5s\n", "method", "after s", "before s", "median ratio", "won"
      for (i = 1; i <= n; i++) {
        m = order[i]; sa = 0; sb = 0; won = 0
        for (p = 0; p < np; p++) {
          a = t[m " after " p]; b = t[m " before " p]; sa += a; sb += b; r[p] = a / b; won += a < b
        }
        for (x = 0; x < np; x++) for (y = x + 1; y < np; y++) if (r[y] < r[x]) { z = r[x]; r[x] = r[y]; r[y] = z }
        med = np % 2 ? r[int(np / 2)] : (r[np / 2 - 1] + r[np / 2]) / 2
        printf "%-18s %9.3f %9.3f %13.2f %2d/%d\n", m, sa / np, sb / np, med, won, np
      }
    }' "$work/pairs.txt"
fi

echo "== copy distance"
"$build/bin/fusion_bench_copy_distance" "$work"
