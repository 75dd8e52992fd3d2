#!/usr/bin/env bash
# The language demo (examples/demo_text/README.md), the text twin of examples/demo: real offline
# text (Debian's fortunes, the synopses of Debian's packages), a small GPT-2 with GPT-2's real
# vocabulary pretrained briefly as a language model, experts fine-tuned from it, every merging method
# side by side, a table and a Pareto plot.
#
#   examples/demo_text/run.sh [BUILD_DIR]      (BUILD_DIR defaults to build; run from anywhere)
#
# Data, the pretrained model and the experts are cached under .cache/fusion-demo-text/ and reused by
# later runs (each stage keeps a stamp of what made it); the comparison runs go to outputs/demo_text/
# and are redone every time. Needs Debian's `fortunes` (scripts/install-deps.sh --demo) and apt's
# package lists (`apt-get update` once); nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD="${1:-build}"
FUSION="$BUILD/bin/fusion"
PREPARE="$BUILD/bin/fusion_demo_text_prepare_data"
SUMMARIZE="$BUILD/bin/fusion_demo_summarize"
CACHE=.cache/fusion-demo-text   # the configs in examples/demo_text/configs/ name these paths
OUT=outputs/demo_text
DEMO=examples/demo_text
FORTUNES=/usr/share/games/fortunes
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

for exe in "$FUSION" "$PREPARE" "$SUMMARIZE"; do
  [ -x "$exe" ] || { echo "demo_text: $exe is missing: build first (scripts/build.sh)" >&2; exit 1; }
done

TASKS=(fortune section language)
PAIR=(fortune section)   # the 2-task suite
# Label names by task, as prepare_data writes them (its CSV files name labels, so a mismatch stops
# the task pool with the unknown label).
declare -A LABELS=(
  [fortune]="computers, politics, science, songs-poems"
  [section]="games, graphics, net, science, sound"
  [language]="haskell, javascript, perl, python, ruby"
)
N_EMBD=64   # examples/demo_text/model/config.json's, for the placeholder heads
LAMBDAS="[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]"
# PWEMoE: router training (batch 16 per task, Adam lr 1e-2 as the paper), 200 steps; attention is
# upscaled too (upscale_attn), and init_lambda, the task-arithmetic λ of what is not upscaled (the
# embeddings, which hold most of this model's task vectors, and the layer norms), is near task
# arithmetic's best λ of each suite. Grid: 11 points for 2 tasks, m = 6 (21) for 3.
PWE_COMMON=(method.batch_size=16 method.lr=1e-2 method.num_steps=200 method.save_interval=200 method.upscale_attn=true)
PWE_2=(method.init_lambda=0.6)
PWE_3=(method.init_lambda=0.4 method.eval_grid_m=6)

declare -a TIMES=()
now() { date +%s.%N; }
stage() {  # stage NAME COMMAND...: runs and times one step
  local name="$1" t0 t1
  shift
  echo "== $name"
  t0=$(now)
  "$@"
  t1=$(now)
  TIMES+=("$(printf '%-36s %7.1f s' "$name" "$(awk "BEGIN{print $t1 - $t0}")")")
}
stamp_of() { cat "$@" | sha256sum | cut -c1-16; }
cached() { [ -f "$1/.stamp" ] && [ "$(cat "$1/.stamp")" = "$2" ]; }

T_START=$(now)
mkdir -p "$CACHE/downloads" "$OUT"

# --- 1. Data --------------------------------------------------------------------------------
# The package list: Debian 12's main list for this architecture as apt keeps it (the point
# release's, not -updates or -security, so it changes only with a point release), decompressed by
# apt itself (lz4, zstd, xz, gz, ...).
packages_list() {
  local file
  file=$(apt-get indextargets --format '$(FILENAME)' 'Created-By: Packages' 'Codename: bookworm' \
           'Label: Debian' 'Release: bookworm' 'Component: main' 2>/dev/null | head -n1 || true)
  if [ -z "$file" ] || [ ! -f "$file" ]; then
    echo "demo_text: no package list of Debian 12's main component: run 'apt-get update' (as root) first" >&2
    exit 1
  fi
  /usr/lib/apt/apt-helper cat-file "$file" > "$CACHE/downloads/packages.txt.part"
  mv "$CACHE/downloads/packages.txt.part" "$CACHE/downloads/packages.txt"
}
prepare() {
  [ -f "$FORTUNES/computers" ] ||
    { echo "demo_text: $FORTUNES is missing: apt-get install fortunes (scripts/install-deps.sh --demo)" >&2; exit 1; }
  packages_list
  # GPT-2's tokenizer, committed gzipped with the tokenizer's tests.
  mkdir -p "$CACHE/tokenizer"
  gunzip -c tests/gpt2/data/vocab.json.gz > "$CACHE/tokenizer/vocab.json"
  gunzip -c tests/gpt2/data/merges.txt.gz > "$CACHE/tokenizer/merges.txt"
  "$PREPARE" --out "$CACHE/data" --fortunes "$FORTUNES" --packages "$CACHE/downloads/packages.txt" \
    --seed 0 --max-per-class 500 --test-fraction 0.2 --placeholder-heads "$CACHE/heads" --n-embd "$N_EMBD"
  sha256sum "$CACHE"/data/*/*.csv "$CACHE/data/lm_corpus.jsonl" | sed "s|$CACHE/data/||" > "$CACHE/data/SHA256SUMS"
}
stage "data" prepare

# --- 2. The pretrained GPT-2 ------------------------------------------------------------------
PRE_STAMP=$(stamp_of "$DEMO/configs/pretrain.toml" "$DEMO/model/config.json" "$CACHE/data/SHA256SUMS")
pretrain() {
  if cached "$CACHE/pretrain" "$PRE_STAMP" && [ -f "$CACHE/pretrain/models/pretrained/model.safetensors" ]; then
    echo "demo_text: pretrained model cached in $CACHE/pretrain"
    return 0
  fi
  rm -f "$CACHE/pretrain/.stamp"
  "$FUSION" run "$DEMO/configs/pretrain.toml"
  echo "$PRE_STAMP" > "$CACHE/pretrain/.stamp"
}
stage "pretrain (causal LM)" pretrain

# --- 3. The experts ---------------------------------------------------------------------------
EXP_STAMP=$(echo "$PRE_STAMP" | cat - "$DEMO/configs/finetune.toml" | sha256sum | cut -c1-16)
finetune() {
  local t="$1" dir="$CACHE/experts/$1"
  if cached "$dir" "$EXP_STAMP" && [ -f "$dir/models/$t/model.safetensors" ]; then
    echo "demo_text: expert $t cached in $dir"
    return 0
  fi
  rm -f "$dir/.stamp"
  local names list=""
  IFS=',' read -ra names <<< "${LABELS[$t]}"
  for n in "${names[@]}"; do list+="\"${n# }\", "; done
  "$FUSION" run "$DEMO/configs/finetune.toml" "method.task=$t" "taskpool.tasks=[\"$t\"]" \
    "taskpool.label_names.$t=${LABELS[$t]}" "taskpool.heads.$t=$CACHE/heads/$t.safetensors" \
    "method.head_file=$CACHE/heads/$t.safetensors" "method.label_names=[${list%, }]" "run.out_dir=$dir"
  echo "$EXP_STAMP" > "$dir/.stamp"
}
for t in "${TASKS[@]}"; do stage "finetune $t" finetune "$t"; done

# --- 4. The comparison ------------------------------------------------------------------------
run_suite() {  # run_suite N: every method on the N-task suite
  local n="$1" cfg="$DEMO/configs/merge_$1tasks.toml" dir="$OUT/$1tasks"
  rm -rf "$dir"
  local m pwe=("${PWE_COMMON[@]}")
  if [ "$n" = 2 ]; then pwe+=("${PWE_2[@]}"); else pwe+=("${PWE_3[@]}"); fi
  mkdir -p "$dir"
  fr() { local name="$1"; shift; stage "$n tasks: $name" "$FUSION" run "$cfg" "run.out_dir=$dir/$name" "$@"; }
  fr pretrained method.name=pretrained
  fr individual method.name=individual
  fr simple_average method.name=simple_average
  fr task_arithmetic method.name=task_arithmetic "method.scaling_factors=$LAMBDAS"
  fr ties_merging method.name=ties_merging "method.scaling_factors=$LAMBDAS"
  fr pwe_moe_epo method.name=pwe_moe_epo "${pwe[@]}"
  local compare="["
  for m in pretrained individual simple_average task_arithmetic ties_merging pwe_moe_epo; do
    compare+="\"$dir/$m/report.json\", "
  done
  compare="${compare%, }]"
  fr pwe_moe_ls method.name=pwe_moe_ls "${pwe[@]}" "run.compare=$compare"
}
run_suite 2
run_suite 3

# --- 5. The table and the plot ----------------------------------------------------------------
RUNS="pretrained individual simple_average task_arithmetic ties_merging pwe_moe_ls pwe_moe_epo"
args=()
for n in 2 3; do
  args+=(--suite "$n tasks ($( [ "$n" = 2 ] && echo "${PAIR[*]}" || echo "${TASKS[*]}"))")
  for m in $RUNS; do args+=("$OUT/${n}tasks/$m"); done
done
echo
"$SUMMARIZE" --output "$OUT/summary.md" --title "fusion language demo: $(date -u +%Y-%m-%d), $(nproc) cores" "${args[@]}"
for n in 2 3; do
  [ -f "$OUT/${n}tasks/pwe_moe_ls/pareto.svg" ] && cp "$OUT/${n}tasks/pwe_moe_ls/pareto.svg" "$OUT/pareto_${n}tasks.svg"
done
T_END=$(now)
{
  echo
  echo "### Time per step"
  echo
  echo '```'
  printf '%s\n' "${TIMES[@]}"
  printf '%-36s %7.1f s\n' "total" "$(awk "BEGIN{print $T_END - $T_START}")"
  echo '```'
} | tee -a "$OUT/summary.md"
echo
echo "demo_text: table in $OUT/summary.md, Pareto plot (2 tasks, every method) in $OUT/pareto_2tasks.svg"
