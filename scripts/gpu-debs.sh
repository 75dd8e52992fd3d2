#!/usr/bin/env bash
# Downloads (here, where Debian's archive is reachable) the .deb files a GPU machine without a
# package archive needs to build fusion against PyTorch's own CUDA LibTorch, into .gpu-debs/.
# scripts/gpu-test.sh unpacks them there with dpkg -x.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu-debs
cd .gpu-debs
apt-get download libboost1.74-dev libboost-program-options1.74-dev libboost-program-options1.74.0 \
  libboost-filesystem1.74-dev libboost-filesystem1.74.0 libtomlplusplus-dev libtomlplusplus3 \
  nlohmann-json3-dev libutf8proc-dev libutf8proc2 libglpk-dev libglpk40 libamd2 libcolamd2 libsuitesparseconfig5 libltdl7 libgmp10 \
  libstb-dev libstb0 libgtest-dev googletest 2>&1 | tail -2
ls -la
