#!/usr/bin/env bash
# Builds the out-of-tree example plugin against an installed fusion and runs it through `fusion`.
#
#   examples/lerp_plugin/build_and_run.sh [PREFIX [BUILD_DIR]]
#
# PREFIX is where `cmake --install` put fusion (it holds bin/fusion and lib/cmake/Fusion). The plugin
# is configured with CMAKE_PREFIX_PATH=PREFIX, built in BUILD_DIR (default: a temporary folder), found
# by `fusion` through FUSION_PLUGIN_PATH, and run on the tiny example checkpoints. Exits non-zero
# unless the plugin is listed by `fusion plugins` and the run wrote a merged model. With no PREFIX (or
# PREFIX "-"), fusion is the one on PATH and CMake finds the package where it looks by default (the
# Debian package's /usr).
set -euo pipefail

prefix=${1:--}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
build=${2:-$scratch/build}
prefix_args=()
if [[ "$prefix" == "-" ]]; then
  fusion=$(command -v fusion) || { echo "error: no PREFIX given and no fusion on PATH" >&2; exit 1; }
  prefix=$(dirname "$(dirname "$fusion")")
else
  prefix=$(cd "$prefix" && pwd)
  fusion="$prefix/bin/fusion"
  prefix_args=(-DCMAKE_PREFIX_PATH="$prefix")
fi
[[ -x "$fusion" ]] || { echo "error: no fusion binary at $fusion" >&2; exit 1; }

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$here" -B "$build" "${generator[@]}" "${prefix_args[@]}" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "${JOBS:-2}"

export FUSION_PLUGIN_PATH="$build"
"$fusion" plugins | grep -q linear_interpolation || {
  echo "error: fusion does not list linear_interpolation with FUSION_PLUGIN_PATH=$build" >&2
  "$fusion" plugins >&2 || true
  exit 1
}

out="$scratch/run"
# The SDK's conformance suite on the installed binary (docs/conformance.md).
"$fusion" check linear_interpolation
(cd "$repo" && "$fusion" run examples/lerp_plugin/lerp.toml "run.out_dir=\"$out\"")
merged=$(find "$out" -name model.safetensors | head -n 1)
[[ -n "$merged" && -s "$merged" ]] || { echo "error: the run wrote no model.safetensors under $out" >&2; exit 1; }
echo "ok: linear_interpolation built against $prefix and wrote $merged"
