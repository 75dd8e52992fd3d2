#!/usr/bin/env bash
# Builds the out-of-tree task-wise AdaMerging plugin against an installed fusion, runs its unit test,
# makes a tiny CLIP world and runs the method on it through `fusion`.
#
#   examples/adamerging/build_and_run.sh PREFIX [BUILD_DIR]
#
# PREFIX is where `cmake --install` put fusion (bin/fusion, lib/cmake/Fusion, the in-tree plugins).
# The plugin is configured with CMAKE_PREFIX_PATH=PREFIX and built in BUILD_DIR (default: a temporary
# folder). The tiny world (in a temporary folder): adamerging_make_world writes two 4-class tasks of
# 12 × 12 images and placeholder heads; `multitask_pretrain` trains a small CLIP vision tower from
# random initialisation with one head per task (tiny_world/pretrain.toml); `finetune` makes one expert
# per task (tiny_world/finetune.toml); then `task_wise_adamerging` merges them (adamerging.toml).
# Exits non-zero unless the unit test passes (when GoogleTest and fusion::testing are there), the
# plugin is listed by `fusion plugins`, and the run wrote a merged model and a report with the learnt
# λ whose entropy went down (initial_entropy > final_entropy).
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 PREFIX [BUILD_DIR]" >&2
  exit 2
fi
prefix=$(cd "$1" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
build=${2:-$scratch/build}
fusion="$prefix/bin/fusion"
[[ -x "$fusion" ]] || { echo "error: no fusion binary at $fusion" >&2; exit 1; }

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$here" -B "$build" "${generator[@]}" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "${JOBS:-2}"

if [[ -x "$build/adamerging_test" ]]; then
  "$build/adamerging_test" --gtest_brief=1
else
  echo "note: adamerging_test was not built (no GoogleTest or fusion::testing)"
fi

export FUSION_PLUGIN_PATH="$build"
"$fusion" plugins | grep -q task_wise_adamerging || {
  echo "error: fusion does not list task_wise_adamerging with FUSION_PLUGIN_PATH=$build" >&2
  "$fusion" plugins >&2 || true
  exit 1
}

# The tiny world, made and used from $scratch (the configs name world/... relative to it).
cd "$scratch"
"$build/adamerging_make_world" world
# The SDK's conformance suite on the installed binary (docs/conformance.md), on its tiny model.
"$fusion" check task_wise_adamerging --set max_steps=3 --set batch_size=8
"$fusion" run "$here/tiny_world/pretrain.toml"
for task in bars checks; do
  "$fusion" run "$here/tiny_world/finetune.toml" "method.task=\"$task\"" "run.out_dir=\"world/experts/$task\""
done
out="$scratch/run"
"$fusion" run "$here/adamerging.toml" "run.out_dir=\"$out\""

# The plugin recognised the pool's CLIP vision tower: the type from the installed libfusion_clip,
# shared by the clip_vision pool's module and this one.
grep -q "task_wise_adamerging: CLIP vision tower, " "$out/log.txt" ||
  { echo "error: the plugin did not recognise the CLIP vision tower (see $out/log.txt)" >&2; exit 1; }
merged=$(find "$out" -name model.safetensors | head -n 1)
[[ -n "$merged" && -s "$merged" ]] || { echo "error: the run wrote no model.safetensors under $out" >&2; exit 1; }
# The report: the learnt λ, and the entropy went down (no jq needed: read the JSON with awk).
report="$out/report.json"
grep -q '"lambdas"' "$report" || { echo "error: $report has no lambdas" >&2; exit 1; }
awk -v RS='\0' '{
  if (match($0, /"initial_entropy": *[-0-9.eE+]+/)) { s = substr($0, RSTART, RLENGTH); sub(/.*: */, "", s); a = s + 0 }
  if (match($0, /"final_entropy": *[-0-9.eE+]+/)) { s = substr($0, RSTART, RLENGTH); sub(/.*: */, "", s); b = s + 0 }
  if (a == "" || b == "" || !(b < a)) { print "error: the entropy did not go down: " a " -> " b > "/dev/stderr"; exit 1 }
  print "entropy " a " -> " b
}' "$report"
echo "ok: task_wise_adamerging built against $prefix and run through fusion ($report)"
