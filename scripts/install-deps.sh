#!/usr/bin/env bash
# Installs what fusion needs to build, test and run on Debian 12, from Debian's archive only.
# Usage: scripts/install-deps.sh [--dev]   (--dev adds what regenerating golden files and fuzzing need)
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(
  g++ cmake ninja-build ccache pkg-config git curl ca-certificates
  libtorch-dev                       # LibTorch 1.13 (CPU)
  libopenblas0-pthread               # switches libblas.so.3 from reference BLAS (6 GFLOP/s) to OpenBLAS
  libboost-dev libboost-program-options-dev libboost-filesystem-dev
  libtomlplusplus-dev nlohmann-json3-dev
  libglpk-dev                        # the LP solver of PWEMoE-EPO
  libstb-dev zlib1g-dev              # image decoding, gzipped IDX files
  gnuplot-nox                        # Pareto plots
  libgtest-dev libgmock-dev libbenchmark-dev
  dataset-fashion-mnist              # real data for the demo
)
if [ "${1:-}" = "--dev" ]; then
  packages+=(python3-torch python3-numpy python3-cvxopt python3-pil clang libclang-rt-14-dev hyperfine time)
fi

export DEBIAN_FRONTEND=noninteractive
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi
