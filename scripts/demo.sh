#!/usr/bin/env bash
# The main job: installs the dependencies, builds, and runs fusion on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --demo
scripts/build.sh
BUILD_DIR="${FUSION_BUILD_DIR:-build}"
export OMP_WAIT_POLICY=PASSIVE
if [ -x examples/demo/run.sh ]; then
  # Both demos: the vision one (examples/demo), then its language twin (examples/demo_text).
  examples/demo/run.sh "$BUILD_DIR" "$@"
  if [ -x examples/demo_text/run.sh ]; then
    exec examples/demo_text/run.sh "$BUILD_DIR"
  fi
  exit 0
fi
"$BUILD_DIR/bin/fusion" run examples/task_arithmetic.toml "$@"
