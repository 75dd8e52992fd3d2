#!/usr/bin/env bash
# Proves the README's two commands on a stock Debian 12: debootstraps a minimal bookworm root
# (minbase + git + ca-certificates), clones this repository's committed HEAD into it, and runs
# scripts/demo.sh and then scripts/test.sh inside it as root, reporting each exit status and time.
# With --deb it then builds the Debian package there (scripts/package-deb.sh) and tests it in a
# second fresh root: `apt install ./fusion_*.deb`, `fusion plugins` lists every component, and the
# out-of-tree example (examples/lerp_plugin) builds against /usr with no prefix and runs.
#
#   sudo scripts/check-fresh-debian.sh [--deb] [--keep] [--only-deb] [--prepare] [WORK_DIR]
#
# --prepare only makes the cached bare root; --only-deb reuses a kept build root (--keep) for --deb,
# with this checkout's install-deps.sh and package-deb.sh copied into it.
#
# Needs root, debootstrap and network access to a Debian archive. The archive is the one this
# machine's apt uses (its sources are copied into the roots), else debootstrap's default. The bare
# root is cached as WORK_DIR/base.tar (delete it to debootstrap again). Logs: WORK_DIR/*.log.
# Each root trusts what this machine trusts (its CA bundle is added to the root's ca-certificates;
# a network behind a TLS-inspecting proxy needs it for npm and git), and the proxy variables
# (http_proxy, https_proxy, no_proxy) pass through, as a user's own set-up would have them.
# WORK_DIR defaults to /var/tmp/fusion-fresh-debian. --keep leaves the roots in WORK_DIR.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
deb=0 keep=0 only_deb=0 prepare=0
args=()
for a in "$@"; do
  case "$a" in
    --deb) deb=1 ;;
    --only-deb) deb=1 only_deb=1 ;;
    --keep) keep=1 ;;
    --prepare) prepare=1 ;;
    -*) echo "check-fresh-debian: unknown option '$a'" >&2; exit 2 ;;
    *) args+=("$a") ;;
  esac
done
work=${args[0]:-/var/tmp/fusion-fresh-debian}
[ "$(id -u)" -eq 0 ] || { echo "check-fresh-debian: must run as root (debootstrap, chroot)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "check-fresh-debian: debootstrap is missing: apt-get install debootstrap" >&2; exit 2; }
mkdir -p "$work"
work=$(cd "$work" && pwd)

now() { date +%s.%N; }
secs() { awk "BEGIN{printf \"%.0f\", $2 - $1}"; }
report=()
say() { echo "check-fresh-debian: $*"; report+=("$*"); }

mounted=()
mount_into() {  # mount_into ROOT: what a chroot needs to run apt, compilers and tests
  local r=$1
  mount -t proc proc "$r/proc"; mounted+=("$r/proc")
  mount --rbind /sys "$r/sys"; mount --make-rslave "$r/sys"; mounted+=("$r/sys")
  mount --rbind /dev "$r/dev"; mount --make-rslave "$r/dev"; mounted+=("$r/dev")
  cp -L /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
}
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -R -l "${mounted[i]}" 2>/dev/null || true; done
  if [ "$keep" -eq 0 ]; then rm -rf "$work/root-build" "$work/root-deb"; fi
}
trap cleanup EXIT

# --- the bare root -------------------------------------------------------------------------------
if [ ! -f "$work/base.tar" ]; then
  mirror=()
  uri=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 || true)
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$uri" ] && mirror=("$uri")
  rm -rf "$work/base"
  t0=$(now)
  debootstrap --variant=minbase --include=git,ca-certificates bookworm "$work/base" "${mirror[@]}" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; echo "check-fresh-debian: debootstrap failed" >&2; exit 1; }
  # The archive this machine's apt uses (security and updates too), as a stock install would have.
  if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
    rm -f "$work/base/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/*.sources "$work/base/etc/apt/sources.list.d/"
  elif [ -f /etc/apt/sources.list ]; then
    cp /etc/apt/sources.list "$work/base/etc/apt/sources.list"
  fi
  tar -C "$work/base" -cf "$work/base.tar" .
  rm -rf "$work/base"
  say "debootstrap --variant=minbase --include=git,ca-certificates bookworm: ok ($(secs "$t0" "$(now)") s)"
fi
if [ "$prepare" -eq 1 ]; then
  say "bare root cached in $work/base.tar"
  exit 0
fi
new_root() {  # new_root NAME: a fresh copy of the bare root
  rm -rf "${work:?}/$1" && mkdir -p "$work/$1"
  tar -C "$work/$1" -xf "$work/base.tar"
  mount_into "$work/$1"
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$work/$1/usr/local/share/ca-certificates/host-trust.crt"
    chroot "$work/$1" update-ca-certificates >/dev/null 2>&1
  fi
}
passthrough=()
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  [ -n "${!v:-}" ] && passthrough+=("$v=${!v}")
done
in_root() {  # in_root ROOT LOG COMMAND...: runs COMMAND as root in ROOT's /root/fusion; returns its status
  local r=$1 log=$2; shift 2
  chroot "$r" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM=dumb "${passthrough[@]}" /bin/bash -c "cd /root/fusion 2>/dev/null || cd /root; $*" >"$log" 2>&1
}
timed() {  # timed WHAT ROOT LOG COMMAND...
  local what=$1 r=$2 log=$3 rc t0; shift 3
  t0=$(now)
  set +e; in_root "$r" "$log" "$@"; rc=$?; set -e
  say "$what: exit $rc ($(secs "$t0" "$(now)") s; log $log)"
  [ "$rc" -eq 0 ] || { echo "--- last lines of $log:" >&2; tail -25 "$log" >&2; }
  return "$rc"
}

# --- the README's two commands -------------------------------------------------------------------
status=0
head=$(git -C "$repo" rev-parse HEAD)
if [ "$only_deb" -eq 0 ] || [ ! -d "$work/root-build/root/fusion/build" ]; then
  new_root root-build
  rb="$work/root-build"
  git clone -q --no-hardlinks "$repo" "$rb/root/fusion"
  git -C "$rb/root/fusion" checkout -q "$head"
  say "cloned $head into a fresh bookworm root"
  timed "scripts/demo.sh" "$rb" "$work/demo.log" scripts/demo.sh || status=1
  timed "scripts/test.sh" "$rb" "$work/test.log" scripts/test.sh || status=1
  grep -E "% tests passed" "$work/test.log" | tail -1 | sed 's/^/check-fresh-debian:   /' || true
else
  rb="$work/root-build"
  mount_into "$rb"
  cp "$repo/scripts/install-deps.sh" "$repo/scripts/package-deb.sh" "$rb/root/fusion/scripts/"
  timed "scripts/install-deps.sh (this checkout's)" "$rb" "$work/deps.log" scripts/install-deps.sh || status=1
fi

# --- the Debian package --------------------------------------------------------------------------
if [ "$deb" -eq 1 ] && [ "$status" -eq 0 ]; then
  timed "scripts/package-deb.sh" "$rb" "$work/package.log" scripts/package-deb.sh build/deb || status=1
  if [ "$status" -eq 0 ]; then
    debfile=$(ls "$rb"/root/fusion/build/deb/fusion_*_amd64.deb)
    say "built $(basename "$debfile"): $(dpkg-deb --field "$debfile" Depends)"
    new_root root-deb
    rd="$work/root-deb"
    cp "$debfile" "$rd/root/"
    # Only the example's sources travel: the package, not the build tree, provides fusion.
    mkdir -p "$rd/root/fusion/examples"
    cp -r "$rb/root/fusion/examples/lerp_plugin" "$rb/root/fusion/examples/checkpoints" "$rd/root/fusion/examples/"
    timed "apt install ./$(basename "$debfile")" "$rd" "$work/deb-install.log" \
      "cd /root && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ./$(basename "$debfile")" || status=1
    timed "fusion plugins" "$rd" "$work/deb-plugins.log" "command -v fusion && fusion plugins" || status=1
    if [ "$status" -eq 0 ]; then
      # Every component the build tree's fusion lists must be listed by the installed one.
      in_root "$rb" "$work/build-plugins.log" "FUSION_PLUGIN_PATH= build/bin/fusion plugins" || true
      want=$(grep -oE '^ +(algorithm|modelpool|taskpool) +[a-z_]+' "$work/build-plugins.log" | awk '{print $2}' | sort -u)
      got=$(grep -oE '^ +(algorithm|modelpool|taskpool) +[a-z_]+' "$work/deb-plugins.log" | awk '{print $2}' | sort -u)
      if [ -n "$want" ] && [ "$want" = "$got" ]; then
        say "fusion plugins (installed) lists all $(echo "$want" | wc -l) components of the build tree"
      else
        say "fusion plugins (installed) differs from the build tree: want [$(echo $want)] got [$(echo $got)]"
        status=1
      fi
      timed "examples/lerp_plugin/build_and_run.sh (against /usr, no prefix)" "$rd" "$work/deb-example.log" \
        "examples/lerp_plugin/build_and_run.sh" || status=1
      grep -E "^ok:" "$work/deb-example.log" | sed 's/^/check-fresh-debian:   /' || true
    fi
  fi
fi

echo "check-fresh-debian: summary"
printf '  %s\n' "${report[@]}"
[ "$status" -eq 0 ] && echo "check-fresh-debian: all passed" || echo "check-fresh-debian: FAILED"
exit "$status"
