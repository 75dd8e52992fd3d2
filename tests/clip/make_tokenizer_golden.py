#!/usr/bin/python3
"""The reference CLIP tokenizer, and the golden files of the tokenizer's Unicode tests
(run: /usr/bin/python3 tests/clip/make_tokenizer_golden.py, after make_golden.py has written the test
vocabulary; make_golden.py takes its tokenizer from here).

The reference is CLIP's tokenizer as OpenAI's simple_tokenizer and transformers' tokenization_clip.py
(CLIPTokenizer with ftfy) run it, with ftfy.fix_text and html.unescape reduced to the Unicode NFC
normalisation that fix_text ends with (neither package is installed here; the fast tokenizer normalises
to NFC too):
  clean:  NFC, whitespace_clean (regex's `\\s+` to one space, then str.strip()), str.lower() (the full
          lowercase mapping with Final_Sigma)
  split:  `<|startoftext|>` and `<|endoftext|>` split off first (the added tokens), then `regex.findall`
          of CLIP's pattern with re.IGNORECASE on each piece
  bpe:    bytes_to_unicode, `</w>` on the last symbol, merges by rank, unknown tokens to `<|endoftext|>`
Not modelled: transformers' fallback when ftfy is missing (BasicTokenizer: drops control characters and
U+FFFD, puts spaces around CJK ideographs).

Writes, under tests/clip/data/:
  tokenizer_bmp.txt.gz         every code point of the Basic Multilingual Plane that the reference's
                               Unicode version (unicodedata.unidata_version) assigns, surrogates and
                               private use left out, in four texts; line 1 a JSON header, then one line a
                               code point: `XXXX<TAB>ids<TAB>ids<TAB>ids<TAB>ids`, the ids of each text
                               space-separated without the leading `<|startoftext|>` and the final
                               `<|endoftext|>`
  tokenizer_multilingual.json  real class names in many scripts and the edge cases of Unicode case mapping
                               and normalisation, with the cleaned text, the words and the ids
"""
import gzip
import json
import os
import unicodedata

import regex

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
PATTERN = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                        regex.IGNORECASE)
SPECIAL = regex.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clean(text):
    text = unicodedata.normalize("NFC", text)
    text = regex.sub(r"\s+", " ", text).strip()  # whitespace_clean
    return text.lower()


def split_words(text):
    """The special tokens as words of their own (split off as added tokens), the pattern on the rest."""
    words = []
    for k, piece in enumerate(SPECIAL.split(text)):
        if k % 2:
            words.append(piece)
        else:
            words.extend(PATTERN.findall(piece))
    return words


class Tokenizer:
    def __init__(self, vocab, merges):
        self.encoder = vocab
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()

    @staticmethod
    def from_folder(path):
        with open(os.path.join(path, "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        with open(os.path.join(path, "merges.txt"), encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(l.split()) for l in lines[1:] if l.strip()]
        return Tokenizer(vocab, merges)

    def bpe(self, token):
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word[:-1], word[1:]))
            bigram = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if bigram not in self.ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    new_word.append(first + second); i += 2
                else:
                    new_word.append(word[i]); i += 1
            word = tuple(new_word)
        return list(word)

    def tokenize(self, text):
        tokens = []
        for w in split_words(clean(text)):
            if w in (BOS, EOS):
                tokens.append(w)
            else:
                tokens.extend(self.bpe("".join(self.byte_encoder[b] for b in w.encode("utf-8"))))
        return tokens

    def encode(self, text, max_length=77):
        ids = [self.encoder.get(t, self.encoder[EOS]) for t in self.tokenize(text)]
        ids = ids[:max_length - 2]  # truncation=True: the sequence is cut, then the special tokens added
        return [self.encoder[BOS]] + ids + [self.encoder[EOS]]


# Each BMP code point c in four texts: inside a word (letters join, marks compose by NFC), before a
# capital sigma (is c Cased and not Case_Ignorable?), between a sigma and a letter (is c Case_Ignorable,
# or neither Cased nor Case_Ignorable?), after an apostrophe (contractions, runs of other characters,
# stripping at the end).
TEMPLATES = [("a", "b"), ("", "\u03a3"), ("a\u03a3", "b"), ("'", "")]

# Real class names (ImageNet, Food-101, cities) in many scripts, and the edge cases of case mapping,
# normalisation, white space and the pattern.
MULTILINGUAL = [
    # German, French, Spanish, Portuguese, Polish, Czech, Vietnamese
    "Deutscher Schäferhund", "Großer Schweizer Sennenhund", "WEISSSTORCH", "Käsekuchen", "Zürich", "Köln",
    "crème brûlée", "Œufs Bénédicte", "Château de Versailles", "aujourd'hui L'ÉCUREUIL", "Île-de-France",
    "jalapeño", "Ñandú", "pingüino", "São Paulo", "pão de queijo", "Łódź", "ŻÓŁW", "Škoda", "Phở bò",
    "Hà Nội", "bánh mì",
    # Turkish: İ lower-cases to i + U+0307 (SpecialCasing.txt), ı stays
    "İstanbul", "İZMİR KÖFTESİ", "Diyarbakır", "IĞDIR", "Şanlıurfa",
    # Greek: Final_Sigma
    "ΟΔΥΣΣΕΑΣ", "Σπάρτη", "ΑΘΗΝΑ", "ΚΑΛΑΜΑΡΑΚΙΑ ΤΗΓΑΝΗΤΑ", "ΜΟΥΣΑΚΑΣ.", "ΣΑΣ ΣΑΣ", "Σ", "ΑΣ", "ΌΣΟΣ'S",
    "Α'Σ", "ΑΣ'Α", "ΑΣ\u0301Β", "ΑΣ\u00adΒ", "ΑΣ\u00a0Β", "\u00aaΣ", "\U0001F130Σ", "ᾼ ΦΩΣ",
    # Cyrillic, Armenian, Georgian (Mtavruli capitals), Cherokee
    "Москва", "БОРЩ", "Ёжик", "Санкт-Петербург", "Київ", "Ґанок", "Љубљана", "Ђурђевак", "ԵՐԵՎԱՆ",
    "თბილისი", "ᲗᲑᲘᲚᲘᲡᲘ", "ᏣᎳᎩ",
    # Indic, Thai
    "नमस्ते", "दिल्ली", "हाथी", "क़लम", "ঢাকা", "রসগোল্লা", "বাংলা", "ॲ ॻ", "சென்னை", "กรุงเทพมหานคร",
    "ต้มยำกุ้ง",
    # Chinese, Japanese, Korean (half-width forms, decomposed jamo and kana)
    "北京烤鸭", "熊猫", "长颈鹿", "豈", "東京", "すし", "ラーメン", "ｶﾞﾝﾀﾞﾑ", "\u30ab\u3099", "서울", "김치찌개",
    "ﾡﾢﾣ", "\u1112\u1161\u11ab\u1100\u1173\u11af",
    # Arabic, Hebrew, Persian
    "القاهرة", "كُسكُس", "٣ قطط", "ירושלים", "שָׁלוֹם", "تهران",
    # decomposed (NFD) input that NFC composes; singletons; letterlike and full-width forms
    "Cafe\u0301", "Zu\u0308rich", "A\u030angstro\u0308m", "\u212b \u2126 \u212a", "Pho\u031b\u0309",
    "ǄEMAL ǅ", "ℂℍℕ ℋ", "ＡＢＣ１２３ ｃａｔ", "Ⅻ Ⓐ", "𝐀𝐁𝐂", "𐐀𐐨", "𞤀",
    # emoji, zero-width characters, the pattern's corners
    "🐱 cat", "👩\u200d🍳", "a\u200bb", "a\u0345b", "It'ſ DON'T WE'RE", "<|ſtartoftext|>",
    "a\x1cb \x1c x \x1f", "\x1c", "a\u0085b\u2028c", "x² ½ ٣ 10",
]


def write_bmp(tok):
    bos, eos = tok.encoder[BOS], tok.encoder[EOS]
    header = {"unicode_version": unicodedata.unidata_version, "regex_version": regex.__version__,
              "templates": [list(t) for t in TEMPLATES],
              "note": "every BMP code point assigned in unicode_version, no surrogates or private use; "
                      "per line the code point and, per template prefix+c+suffix, its ids without "
                      "<|startoftext|> and <|endoftext|>"}
    lines, count = [], 0
    for cp in range(0x10000):
        c = chr(cp)
        if unicodedata.category(c) in ("Cn", "Cs", "Co"):
            continue
        fields = ["%04X" % cp]
        for prefix, suffix in TEMPLATES:
            ids = tok.encode(prefix + c + suffix)
            assert ids[0] == bos and ids[-1] == eos
            fields.append(" ".join(str(i) for i in ids[1:-1]))
        lines.append("\t".join(fields))
        count += 1
    header["count"] = count
    text = json.dumps(header, ensure_ascii=False) + "\n" + "\n".join(lines) + "\n"
    # mtime=0: the same input gives the same bytes
    with open(os.path.join(DATA, "tokenizer_bmp.txt.gz"), "wb") as f:
        f.write(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))
    return count


def write_multilingual(tok):
    cases = [{"text": t, "cleaned": clean(t), "words": split_words(clean(t)), "ids": tok.encode(t)}
             for t in MULTILINGUAL]
    with open(os.path.join(DATA, "tokenizer_multilingual.json"), "w", encoding="utf-8") as f:
        json.dump({"unicode_version": unicodedata.unidata_version, "regex_version": regex.__version__,
                   "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    return cases


def main():
    tok = Tokenizer.from_folder(os.path.join(DATA, "clip_model"))
    count = write_bmp(tok)
    cases = write_multilingual(tok)
    print("unicode", unicodedata.unidata_version, "regex", regex.__version__)
    print("BMP code points:", count, " multilingual texts:", len(cases))
    for c in cases[:3] + cases[22:24] + cases[27:29]:
        print(repr(c["text"]), "->", repr(c["cleaned"]), c["words"])


if __name__ == "__main__":
    main()
