#!/usr/bin/env bash
# Builds the Debian package fusion_<version>_amd64.deb from ./build (scripts/build.sh first) with
# CPack; prints its path. Needs dpkg-dev (dpkg-shlibdeps computes Depends) and file, which
# scripts/install-deps.sh installs.
#   scripts/package-deb.sh [OUT_DIR=build/deb]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${FUSION_BUILD_DIR:-build}"
out=${1:-$BUILD_DIR/deb}
[ -f "$BUILD_DIR/CPackConfig.cmake" ] || { echo "package-deb: $BUILD_DIR is not configured: run scripts/build.sh" >&2; exit 1; }
for tool in dpkg-shlibdeps file; do
  command -v "$tool" >/dev/null || { echo "package-deb: $tool is missing (CPack needs it for Depends): run scripts/install-deps.sh" >&2; exit 1; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
cpack -G DEB --config "$BUILD_DIR/CPackConfig.cmake" -B "$out" >"$out/cpack.log" 2>&1 ||
  { cat "$out/cpack.log" >&2; echo "package-deb: cpack failed" >&2; exit 1; }
rm -rf "$out/_CPack_Packages"
deb=$(ls -t "$out"/fusion_*.deb | head -1)
dpkg-deb --field "$deb" Package Version Architecture Depends Recommends
echo "$deb"
