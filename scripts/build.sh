#!/usr/bin/env bash
# Configures and builds fusion in ./build (Release, Ninja, ccache when present).
# Extra arguments go to CMake, e.g. scripts/build.sh -DFUSION_SANITIZE=ON
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${FUSION_BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}" "$@"
cmake --build "$BUILD_DIR" -j "${FUSION_JOBS:-$(nproc)}"
