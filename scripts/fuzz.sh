#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (clang, ASan + UBSan) in build-fuzz/ and runs each for
# SECONDS (default 60; 0: each seed once, a smoke test) from a fresh working corpus,
# build-fuzz/corpus/<target>, seeded with fuzz/corpus/<target> (the tree is never written).
# Prints per target the exit status, executions, exec/s, coverage (cov/ft of libFuzzer's last
# status line), corpus size and findings, which libFuzzer saves as
# build-fuzz/findings/<target>/{crash,leak,timeout,oom}-* (kept from run to run; only this run's
# are reported). Exits 1 when a target found something or did not run cleanly, 2 on a usage or
# setup error.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      e.g. scripts/fuzz.sh 600 fuzz_csv fuzz_idx
#
# Reproduce a finding:  build-fuzz/bin/<target> build-fuzz/findings/<target>/crash-...
# Needs clang and libclang-rt-14-dev (scripts/install-deps.sh --dev). Environment:
#   FUSION_FUZZ_BUILD_DIR  build folder (default build-fuzz)
#   FUSION_FUZZ_JOBS       targets fuzzed at the same time (default 1)
#   FUSION_FUZZ_FLAGS      more libFuzzer flags for every target (e.g. -rss_limit_mb=4096)
#   FUSION_FUZZ_NO_BUILD=1 run what is built, without configuring or building
#   FUSION_BUILD_WRAPPER   a command put before cmake and ninja (e.g. "flock /tmp/build.lock")
#   FUSION_JOBS            build parallelism (default: ninja's)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

usage() { echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2; }

SECONDS_PER_TARGET=60
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  SECONDS_PER_TARGET="$1"
  shift
fi
case "${1:-}" in -h|--help) usage ;; esac

ALL_TARGETS=()
for f in fuzz/fuzz_*.cpp; do
  ALL_TARGETS+=("$(basename "$f" .cpp)")
done
if [ $# -gt 0 ]; then
  TARGETS=("$@")
  for t in "${TARGETS[@]}"; do
    [ -f "fuzz/$t.cpp" ] || { echo "fuzz.sh: unknown target '$t' (targets: ${ALL_TARGETS[*]})" >&2; exit 2; }
  done
else
  TARGETS=("${ALL_TARGETS[@]}")
fi

BUILD_DIR="${FUSION_FUZZ_BUILD_DIR:-build-fuzz}"
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$ROOT/$BUILD_DIR" ;; esac
JOBS="${FUSION_FUZZ_JOBS:-1}"
read -r -a EXTRA_FLAGS <<< "${FUSION_FUZZ_FLAGS:-}"
read -r -a WRAP <<< "${FUSION_BUILD_WRAPPER:-}"

# ---- build -------------------------------------------------------------------------------------
if [ "${FUSION_FUZZ_NO_BUILD:-0}" != 1 ]; then
  command -v clang++ >/dev/null || {
    echo "fuzz.sh: clang++ not found; install clang and libclang-rt-14-dev (scripts/install-deps.sh --dev)" >&2
    exit 2
  }
  probe="$(mktemp -d)"
  echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' > "$probe/p.cpp"
  if ! clang++ -fsanitize=fuzzer,address,undefined "$probe/p.cpp" -o "$probe/p" 2> "$probe/err"; then
    cat "$probe/err" >&2
    echo "fuzz.sh: clang++ cannot link libFuzzer; install libclang-rt-14-dev (scripts/install-deps.sh --dev)" >&2
    rm -rf "$probe"
    exit 2
  fi
  rm -rf "$probe"
  if [ ! -f "$BUILD_DIR/build.ninja" ]; then
    "${WRAP[@]}" cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CXX_COMPILER=clang++ -DFUSION_BUILD_FUZZ=ON -DFUSION_BUILD_TESTS=OFF -DFUSION_BUILD_BENCH=OFF
  fi
  "${WRAP[@]}" ninja -C "$BUILD_DIR" ${FUSION_JOBS:+-j "$FUSION_JOBS"} "${TARGETS[@]}"
fi

# ---- fuzz --------------------------------------------------------------------------------------
mkdir -p "$BUILD_DIR/logs" "$BUILD_DIR/corpus" "$BUILD_DIR/findings"
STAMP="$(mktemp "$BUILD_DIR/logs/.started.XXXXXX")"  # findings of earlier runs stay, not counted
trap 'rm -f "$STAMP"' EXIT

fuzz_one() {
  local t="$1"
  local bin="$BUILD_DIR/bin/$t" corpus="$BUILD_DIR/corpus/$t" findings="$BUILD_DIR/findings/$t"
  local log="$BUILD_DIR/logs/$t.log"
  [ -x "$bin" ] || { echo "fuzz.sh: $bin is not built" > "$log"; echo 127 > "$log.status"; return; }
  rm -rf "$corpus"
  mkdir -p "$corpus" "$findings"
  [ -d "fuzz/corpus/$t" ] && cp -p "fuzz/corpus/$t"/* "$corpus"/ 2>/dev/null || true
  local dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  local status=0
  # -timeout: an input that takes longer is a finding (a hang); the parsers take milliseconds.
  # 0 seconds: each seed once (-runs=0), a smoke test.
  local how=(-max_total_time="$SECONDS_PER_TARGET")
  [ "$SECONDS_PER_TARGET" -gt 0 ] || how=(-runs=0)
  "$bin" "${how[@]}" -print_final_stats=1 -timeout=30 \
    -artifact_prefix="$findings/" "${dict[@]}" "${EXTRA_FLAGS[@]}" "$corpus" > "$log" 2>&1 || status=$?
  echo "$status" > "$log.status"
}

echo "fuzz.sh: ${#TARGETS[@]} target(s), ${SECONDS_PER_TARGET} s each, $JOBS at a time; logs in $BUILD_DIR/logs"
running=0
for t in "${TARGETS[@]}"; do
  fuzz_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

# ---- report ------------------------------------------------------------------------------------
failed=0
printf '%-22s %6s %12s %8s %8s %8s %8s  %s\n' target status executions exec/s cov ft corpus findings
for t in "${TARGETS[@]}"; do
  log="$BUILD_DIR/logs/$t.log"
  status="$(cat "$log.status" 2>/dev/null || echo '?')"
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
  execs="$(stat number_of_executed_units)"
  rate="$(stat average_exec_per_sec)"
  last="$(grep -E '^#[0-9]+' "$log" | grep ' cov: ' | tail -1 || true)"
  cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$last")"
  ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$last")"
  corpus_files="$(find "$BUILD_DIR/corpus/$t" -type f 2>/dev/null | wc -l)"
  found="$(find "$BUILD_DIR/findings/$t" -type f -newer "$STAMP" 2>/dev/null | sort)"
  findings="$(grep -c . <<< "$found" || true)"
  what="none"
  if [ "$findings" -gt 0 ]; then
    what="$(xargs -n1 basename <<< "$found" | tr '\n' ' ')"
  fi
  if [ "$status" != 0 ] || [ "$findings" -gt 0 ]; then
    failed=1
    [ "$findings" -gt 0 ] || what="exit status $status, see $log"
  fi
  printf '%-22s %6s %12s %8s %8s %8s %8s  %s\n' "$t" "$status" "${execs:--}" "${rate:--}" "${cov:--}" \
    "${ft:--}" "$corpus_files" "$what"
done
if [ "$failed" != 0 ]; then
  echo "fuzz.sh: FINDINGS (reproduce: $BUILD_DIR/bin/<target> <finding file>; the log shows the report)"
  exit 1
fi
echo "fuzz.sh: all targets clean"
