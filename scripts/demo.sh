#!/usr/bin/env bash
# The main job: installs the dependencies, builds, and runs fusion on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --demo
scripts/build.sh
BUILD_DIR="${FUSION_BUILD_DIR:-build}"
export OMP_WAIT_POLICY=PASSIVE
if [ -x examples/demo/run.sh ]; then
  exec examples/demo/run.sh "$BUILD_DIR" "$@"
fi
"$BUILD_DIR/bin/fusion" run examples/task_arithmetic.toml "$@"
