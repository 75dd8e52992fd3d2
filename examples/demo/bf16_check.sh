#!/usr/bin/env bash
# bfloat16 against float32 on the vision demo's suites: every method of the demo runs twice from the
# same binary, with [run] dtype = "float32" and "bfloat16", each test example's prediction saved
# (taskpool.save_predictions). Then, per suite and method:
#   - top-1 agreement: the share of (model, task, test image) whose bf16 prediction equals float32's,
#     on the same models (the evaluation-only methods: individual, simple_average, task_arithmetic,
#     ties_merging; PWEMoE's bf16 models differ from float32's, their routers being trained in bf16);
#   - the largest accuracy difference of one model on one task, in points, and the hypervolume of
#     both runs (PWEMoE-LS and -EPO: the fronts trained and evaluated in bf16).
# Targets (issue 11): agreement >= 99 %; PWEMoE accuracies within 1 point, hypervolume within 0.01.
#
#   examples/demo/bf16_check.sh [BUILD=build] [OUT=outputs/demo_bf16]
#
# Needs the demo's models: run examples/demo/run.sh first (it leaves them in .cache/fusion-demo).
# On a CPU without bf16 instructions (avx512_bf16, amx_bf16) fusion would compute in float32; the
# script then sets FUSION_FORCE_BF16=1, which emulates bf16 (same numerics, 7-40x slower): expect
# about 40 minutes on 2 cores for both suites. SUITES="2" runs the 2-task suite only; RESUME=1 keeps
# the runs of an earlier call that finished (those with a report.json) instead of starting afresh;
# METHODS="individual task_arithmetic" runs (and compares) only those.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
OUT=${2:-outputs/demo_bf16}
SUITES=${SUITES:-2 3}
FUSION="$BUILD/bin/fusion"
DEMO=examples/demo
[ -x "$FUSION" ] || { echo "bf16_check: no $FUSION: build first (scripts/build.sh)" >&2; exit 2; }
[ -d .cache/fusion-demo/experts ] || { echo "bf16_check: no demo models in .cache/fusion-demo: run $DEMO/run.sh first" >&2; exit 2; }
# The demo's λ grid and PWEMoE settings, read from run.sh so the two cannot drift apart.
eval "$(grep -E '^(LAMBDAS|PWE_COMMON|PWE_2|PWE_3)=' "$DEMO/run.sh")"
how="native bf16 instructions"
if ! grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then
  export FUSION_FORCE_BF16=1
  how="emulated (FUSION_FORCE_BF16=1: this CPU has no bf16 instructions)"
fi
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
EVAL_ONLY="individual simple_average task_arithmetic ties_merging"
METHODS=${METHODS:-$EVAL_ONLY pwe_moe_ls pwe_moe_epo}
[ -n "${RESUME:-}" ] || rm -rf "$OUT"
mkdir -p "$OUT"
T_START=$(date +%s)

for n in $SUITES; do
  cfg="$DEMO/configs/merge_${n}tasks.toml"
  pwe=("${PWE_COMMON[@]}")
  if [ "$n" = 2 ]; then pwe+=("${PWE_2[@]}"); else pwe+=("${PWE_3[@]}"); fi
  for dtype in float32 bfloat16; do
    for m in $METHODS; do
      args=(method.name="$m")
      case "$m" in
        task_arithmetic | ties_merging) args+=("method.scaling_factors=$LAMBDAS") ;;
        pwe_moe_*) args+=("${pwe[@]}") ;;
      esac
      dir="$OUT/${n}tasks/$dtype/$m"
      if [ -n "${RESUME:-}" ] && [ -f "$dir/report.json" ]; then
        echo "== $n tasks, $dtype $m: kept from an earlier call"
        continue
      fi
      rm -rf "$dir"
      t0=$(date +%s)
      "$FUSION" run "$cfg" "run.out_dir=$dir" "run.dtype=$dtype" taskpool.save_predictions=true "${args[@]}" \
        >"$OUT/${n}tasks-$dtype-$m.log" 2>&1 || { echo "bf16_check: $m ($dtype, $n tasks) failed; see $OUT/${n}tasks-$dtype-$m.log" >&2; exit 1; }
      printf '== %s tasks, %-8s %-16s %5d s\n' "$n" "$dtype" "$m" "$(( $(date +%s) - t0 ))"
    done
  done
  grep -q '"dtype": "bfloat16"' "$OUT/${n}tasks/bfloat16/individual/report.json" ||
    { echo "bf16_check: the bfloat16 runs computed in another type (see $OUT/${n}tasks-bfloat16-individual.log)" >&2; exit 1; }
done

# --- comparison --------------------------------------------------------------------------------
hypervolume() { sed -n 's/^  "hypervolume": \([-0-9.e+]*\),*$/\1/p' "$1/report.json" | awk '{printf "%.4f", $1}'; }
# agreement DIR32 DIR16: "same total" over every predictions file of the float32 run; the rows must
# name the same test images in the same order (column 1, the image's index in its split).
agreement() {
  local same=0 total=0 f g r
  while IFS= read -r f; do
    g="$2/${f#"$1"/}"
    [ -f "$g" ] || { echo "bf16_check: $g is missing" >&2; exit 1; }
    # Columns: index,sample,label,label_name,predicted,... The demo's samples and class names hold no
    # comma, so the fields are split on commas.
    r=$(paste -d'\n' <(tail -n +2 "$f") <(tail -n +2 "$g") | awk -F, '
      NR % 2 == 1 { i = $1; p = $5; next }
      { if ($1 != i) { print "misaligned"; exit } ; t++; if ($5 == p) s++ }
      END { if (t) print s + 0, t }')
    [ "$r" != misaligned ] || { echo "bf16_check: $f and $g list other images" >&2; exit 1; }
    same=$((same + ${r% *})) total=$((total + ${r#* }))
  done < <(find "$1/predictions" -name '*.csv' | sort)
  echo "$same $total"
}
# max_accuracy_gap DIR32 DIR16: the largest |accuracy difference| of one model on one task, in points
# (results.csv: the same rows, one per model, in both runs; *.accuracy columns, average excluded).
max_accuracy_gap() {
  paste -d'\n' "$1/results.csv" "$2/results.csv" | awk -F, '
    NR == 1 { for (i = 1; i <= NF; i++) if ($i ~ /\.accuracy$/ && $i != "average.accuracy") col[i] = 1; next }
    NR == 2 { next }
    NR % 2 == 1 { for (i in col) a[i] = $i; next }
    { for (i in col) { d = $i - a[i]; if (d < 0) d = -d; if (d > m) m = d } }
    END { printf "%.1f", 100 * m }'
}

status=0
summary="$OUT/summary.md"
{
  echo "# bf16 against float32 on the demo's suites"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1); bf16: $how; $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "| suite | method | top-1 agreement | max accuracy gap (points) | hypervolume float32 | hypervolume bf16 |"
  echo "|---|---|---:|---:|---:|---:|"
} >"$summary"
targets=()
for n in $SUITES; do
  all_same=0 all_total=0
  for m in $METHODS; do
    d32="$OUT/${n}tasks/float32/$m" d16="$OUT/${n}tasks/bfloat16/$m"
    read -r same total < <(agreement "$d32" "$d16")
    gap=$(max_accuracy_gap "$d32" "$d16")
    h32=$(hypervolume "$d32") h16=$(hypervolume "$d16")
    share=$(awk "BEGIN{printf \"%.2f\", 100 * $same / $total}")
    note=""
    case " $EVAL_ONLY " in *" $m "*) all_same=$((all_same + same)) all_total=$((all_total + total)) ;; *) note=" (other models)" ;; esac
    echo "| $n tasks | $m | $share %$note ($same / $total) | $gap | $h32 | $h16 |" >>"$summary"
    case "$m" in
      pwe_moe_*)
        dh=$(awk "BEGIN{d = $h16 - $h32; if (d < 0) d = -d; printf \"%.4f\", d}")
        v=$(awk "BEGIN{print ($gap <= 1.0) ? \"MET\" : \"MISSED\"}")
        targets+=("TARGET bf16-${n}tasks-$m-accuracy-gap-points $gap <=1.0 $v")
        v=$(awk "BEGIN{print ($dh <= 0.01) ? \"MET\" : \"MISSED\"}")
        targets+=("TARGET bf16-${n}tasks-$m-hypervolume-gap $dh <=0.01 $v")
        ;;
    esac
  done
  if [ "$all_total" -gt 0 ]; then
    share=$(awk "BEGIN{printf \"%.4f\", $all_same / $all_total}")
    v=$(awk "BEGIN{print ($share >= 0.99) ? \"MET\" : \"MISSED\"}")
    targets+=("TARGET bf16-${n}tasks-top1-agreement $share >=0.99 $v ($all_same of $all_total predictions, evaluation-only methods)")
  fi
done
{
  echo
  echo "Total $(( $(date +%s) - T_START )) s. Command: examples/demo/bf16_check.sh $BUILD $OUT"
  echo
  echo '```'
  printf '%s\n' "${targets[@]}"
  echo '```'
} >>"$summary"
cat "$summary"
printf '%s\n' "${targets[@]}" | grep -q MISSED && status=1
exit "$status"
