#!/usr/bin/env bash
# Installs the dependencies, builds, runs the test suite, then builds the out-of-tree example plugins
# (lerp, then task-wise AdaMerging) against an installed SDK and runs them through `fusion`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh "$@"
BUILD_DIR="${FUSION_BUILD_DIR:-build}"
export OMP_WAIT_POLICY=PASSIVE
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "${FUSION_JOBS:-$(nproc)}"
if [ -x examples/lerp_plugin/build_and_run.sh ]; then
  cmake --install "$BUILD_DIR" --prefix "$BUILD_DIR/_install" >/dev/null
  examples/lerp_plugin/build_and_run.sh "$PWD/$BUILD_DIR/_install"
  if [ -x examples/adamerging/build_and_run.sh ]; then
    examples/adamerging/build_and_run.sh "$PWD/$BUILD_DIR/_install"
  fi
fi
echo "fusion: all tests passed"
