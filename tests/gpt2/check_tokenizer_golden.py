#!/usr/bin/python3
"""Optional cross-check of tests/gpt2/data/tokenizer_golden.jsonl.gz (gpt-3-encoder's ids, JavaScript)
against a Python implementation of OpenAI's encoder.py algorithm (GPT-2's pattern compiled by the
`regex` module, bytes->unicode, merges by rank) on the same vocab.json / merges.txt.

Run with Debian's /usr/bin/python3 and python3-regex; make_tokenizer_golden.sh runs it when it can.
Exits non-zero, listing the texts, if any id differs. With --print TEXT..., prints the ids of each
TEXT instead (used to derive the C++ tests' expectations for texts the battery leaves out, e.g. with
U+0085 or U+FEFF, where JavaScript's \\s differs from Python's).
The C++ tests never run this.
"""
import gzip
import json
import os
import sys

import regex

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def byte_table():
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class Encoder:
    def __init__(self):
        with gzip.open(os.path.join(DATA, "vocab.json.gz"), "rt", encoding="utf-8") as f:
            self.vocab = json.load(f)
        with gzip.open(os.path.join(DATA, "merges.txt.gz"), "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split(" ")) for line in lines[1:] if line]
        self.ranks = {pair: r for r, pair in enumerate(merges)}
        self.bytes = byte_table()
        self.cache = {}

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        symbols = list(word)
        while len(symbols) > 1:
            pairs = {(symbols[i], symbols[i + 1]) for i in range(len(symbols) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self.cache[word] = symbols
        return symbols

    def encode(self, text):
        ids = []
        for piece in PATTERN.findall(text):
            word = "".join(self.bytes[b] for b in piece.encode("utf-8"))
            ids.extend(self.vocab[t] for t in self.bpe(word))
        return ids


def main():
    enc = Encoder()
    if len(sys.argv) > 1 and sys.argv[1] == "--print":
        for text in sys.argv[2:]:
            print(json.dumps(text), PATTERN.findall(text), enc.encode(text))
        return 0
    with gzip.open(os.path.join(DATA, "tokenizer_golden.jsonl.gz"), "rt", encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line]  # not splitlines(): U+2028 is raw in JSON
    header, rows = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    bad = [r for r in rows if enc.encode(r["text"]) != r["ids"]]
    for r in bad[:20]:
        print(f"differs ({r['source']}): {json.dumps(r['text'])}\n  js:     {r['ids']}\n  python: {enc.encode(r['text'])}")
    print(f"check_tokenizer_golden: {len(rows) - len(bad)} of {len(rows)} texts have the same ids in Python "
          f"(regex {regex.__version__}) as in {header['generator']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
