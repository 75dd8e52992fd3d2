#!/usr/bin/env bash
# Builds fusion against a CUDA-enabled LibTorch (PyTorch's own CMake package) and runs the test
# suite on CUDA. Meant for a machine with a GPU and PyTorch but no Debian archive: the other
# dependencies come as .deb files fetched beforehand by scripts/gpu-debs.sh and unpacked here.
#   scripts/gpu-debs.sh          # where apt works
#   scripts/gpu-test.sh          # on the GPU machine, in the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD/.gpu-root"
mkdir -p "$ROOT"
for deb in .gpu-debs/*.deb; do dpkg -x "$deb" "$ROOT"; done
TORCH_PREFIX="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
CXX11_ABI="$(python3 -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"
echo "LibTorch: $TORCH_PREFIX (CXX11 ABI $CXX11_ABI)"
nvidia-smi -L || true
export LD_LIBRARY_PATH="$ROOT/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
export CPATH="$ROOT/usr/include:${CPATH:-}"
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$ROOT/usr/lib/x86_64-linux-gnu/cmake;$ROOT/usr/share/cmake" \
  -DCMAKE_LIBRARY_PATH="$ROOT/usr/lib/x86_64-linux-gnu" -DCMAKE_INCLUDE_PATH="$ROOT/usr/include" \
  -DFUSION_BUILD_BENCH=OFF
cmake --build build-cuda -j "$(nproc)"
./build-cuda/bin/fusion --version
FUSION_TEST_DEVICE=cuda ctest --test-dir build-cuda --output-on-failure -j 4
# The 2-rank distributed tests (PWEMoE-LS and -EPO over 2 processes against one) once more with the
# backend named (issue 13, item 7): NCCL where 2+ GPUs are listed, Gloo otherwise.
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
if [[ ${gpus:-0} -ge 2 ]]; then backend=nccl; else backend=gloo; fi
echo "distributed: ${gpus:-0} GPU(s) listed: the 2-rank tests with [run] backend = \"$backend\""
FUSION_TEST_BACKEND=$backend ctest --test-dir build-cuda --output-on-failure --no-tests=error \
  -R '^distributed\.Distributed\..*TwoRanksEqualsOneProcess$'
