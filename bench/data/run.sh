#!/usr/bin/env bash
# Decoding + preprocessing throughput of the image_classification pipeline at 224, for JPEGs of the
# sizes the TA8 datasets hold (SUN397/Stanford Cars photos ~500x375; RESISC45 256x256; EuroSAT 64x64;
# SVHN/MNIST-sized 32x32).
#
#   bench/data/run.sh [BUILD_DIR]      (ninja -C BUILD_DIR fusion_bench_decode first)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR="${1:-build}"
for dims in "500 375" "256 256" "64 64" "32 32"; do
  set -- $dims
  "$BUILD_DIR/bin/fusion_bench_decode" --images 512 --width "$1" --height "$2" --workers 0,1,2
done
