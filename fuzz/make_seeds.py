#!/usr/bin/python3
"""Writes the seed corpora of the libFuzzer targets, fuzz/corpus/<target>/ (committed; run this
again only to change them). Small real-format files: IDX plain and gzip, PNG/JPEG/BMP/GIF/PNM,
CSV manifests, run configs (with overrides), CLIP tokenizer files and texts, shard indexes,
safetensors files. Files named regress_* are inputs that found a bug, kept as they are. Debian: /usr/bin/python3 with python3-pil (images only).

    /usr/bin/python3 fuzz/make_seeds.py
"""
import gzip
import io
import json
import shutil
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def target(name):
    """The seed folder of a target, emptied but for regress_* files: inputs that found a bug
    (kept by hand, as the fuzzer wrote them)."""
    d = CORPUS / name
    d.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():
        if not f.name.startswith("regress_"):
            f.unlink()
    return d


def write(path, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)


def gz(data):
    # mtime 0: the same bytes on every run of this script.
    return gzip.compress(data, compresslevel=9, mtime=0)


def idx_images(pixels, n, rows, cols):
    return struct.pack(">IIII", 0x803, n, rows, cols) + bytes(pixels)


def idx_labels(labels):
    return struct.pack(">II", 0x801, len(labels)) + bytes(labels)


SEP = b"FUZZ-IDX-LABELS:"  # fuzz_idx.cpp's kLabelsSeparator


def seeds_idx():
    d = target("fuzz_idx")
    px = [(i * 37) % 256 for i in range(3 * 2 * 4)]
    images = idx_images(px, 3, 2, 4)
    labels = idx_labels([7, 0, 9])
    write(d / "t10k-images-idx3-ubyte", images)  # labels made by the harness
    write(d / "t10k-images-idx3-ubyte.gz", gz(images))
    write(d / "images_and_labels", images + SEP + labels)
    write(d / "images_and_labels.gz", gz(images) + SEP + gz(labels))
    # One 8 x 8 digit, labels given; and a file whose counts disagree.
    digit = [0] * 64
    for r in range(1, 7):
        digit[r * 8 + 4] = 255
    write(d / "digit_8x8", idx_images(digit, 1, 8, 8) + SEP + idx_labels([1]))
    write(d / "count_mismatch", idx_images(px, 3, 2, 4) + SEP + idx_labels([1, 2]))


def seeds_image():
    from PIL import Image  # python3-pil

    d = target("fuzz_image")
    src = ROOT / "tests" / "image_classification" / "data" / "images"
    for name in ["mnist_digit.png", "grey_alpha.png", "palette.png", "grey16.png"]:
        shutil.copy(src / name, d / name)
    img = Image.new("RGB", (16, 12))
    for y in range(12):
        for x in range(16):
            img.putpixel((x, y), (x * 16, y * 20, (x * y) % 256))

    def save(name, im, fmt, **kw):
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        write(d / name, buf.getvalue())

    save("rgb_420.jpg", img, "JPEG", quality=75, subsampling=2)
    save("rgb_444_progressive.jpg", img, "JPEG", quality=90, subsampling=0, progressive=True)
    save("grey.jpg", img.convert("L"), "JPEG", quality=75)
    save("rgb.bmp", img, "BMP")
    save("palette.bmp", img.convert("P"), "BMP")
    save("rgb.gif", img.convert("P"), "GIF")
    save("grey.pgm", img.convert("L"), "PPM")
    save("rgb.ppm", img, "PPM")
    save("rgba.png", img.convert("RGBA"), "PNG")
    # Animated GIF: two frames (the first is decoded).
    buf = io.BytesIO()
    img.convert("P").save(buf, "GIF", save_all=True, append_images=[img.rotate(90).convert("P")])
    write(d / "two_frames.gif", buf.getvalue())
    # A plain-text PGM.
    write(d / "ascii.pgm", "P2\n3 2\n255\n0 128 255\n255 128 0\n")


def seeds_csv():
    d = target("fuzz_csv")
    write(d / "manifest.csv", "path,label\nimgs/a.png,0\nimgs/b.png,2\n")
    write(d / "quoted_crlf.csv", 'id,label,path\r\n1,2,imgs/a.png\r\n\r\n2,0,"imgs/b,c.png"\r\n')
    write(d / "bom.csv", "\ufeffpath,label,split\n\"x \"\"y\"\".png\",1,train\n/abs/z.png, 1 ,test\n")
    write(d / "bad_label.csv", "path,label\na.png,x1\n")
    write(d / "unterminated.csv", 'path,label\n"a.png,1\n')


def seeds_config():
    d = target("fuzz_config")
    for p in sorted((ROOT / "examples").rglob("*.toml")):
        rel = p.relative_to(ROOT / "examples")
        write(d / ("examples_" + "_".join(rel.parts)), p.read_bytes())
    # Overrides: each after a NUL byte, as `fusion run CONFIG key=value ...` passes them.
    base = (ROOT / "examples" / "task_arithmetic.toml").read_bytes()
    write(d / "with_overrides", base + b"\0method.scaling_factor=0.5\0seed=7\0method.weights=[0.5,0.5]"
          b"\0modelpool.models.b=\"b.safetensors\"\0method.mode=b")
    write(d / "every_type", "device = \"cpu\"\nthreads = 2\n\n[method]\nname = \"x\"\nscaling_factor = 1\n"
          "scaling_factors = [0.1, -0.5]\nweights = [0.25, 0.75]\nmatrix = [[1, 2.5], [3, 4]]\n"
          "tasks = [\"mnist\", \"svhn\"]\nmode = \"b\"\npretrained = \"p\"\nflag = true\nlr = inf\n"
          "steps = 3\n\n[modelpool.models]\na = \"a.safetensors\"\n\"b c\" = 'b c'\n")
    write(d / "errors", "[run]\nseed = -1\ndtype = \"int8\"\n[method]\nweights = [1, \"x\"]\n"
          "when = 1979-05-27\n[[taskpool]]\nx = 1\n\0a.b.c=1\0=x\0run=\0method..x=1")


def seeds_clip():
    data = ROOT / "tests" / "clip" / "data"
    cases = json.loads((data / "tokenizer_cases.json").read_text())["cases"]
    d = target("fuzz_clip_tokenizer")
    for i, c in enumerate(cases):
        write(d / f"case_{i}", c["text"])
    write(d / "specials", "<|startoftext|>a photo<|endoftext|>of 2 cats' 're\u0130\u00c9\u3000\u2028x")
    write(d / "invalid_utf8", b"caf\xc3 \xe9\xed\xa0\x80 \xf0\x9f\x98\x80 end")

    d = target("fuzz_clip_vocab")
    vocab = (data / "clip_model" / "vocab.json").read_bytes()
    merges = (data / "clip_model" / "merges.txt").read_bytes()
    write(d / "test_vocabulary", vocab + b"\0" + merges + b"\0a photo of a banana.")
    tiny_vocab = {"<|startoftext|>": 5, "<|endoftext|>": 6, "a": 0, "b": 1, "a</w>": 2, "ab</w>": 3, "b</w>": 4}
    write(d / "tiny", json.dumps(tiny_vocab).encode() + b"\0#version: 0.2\na b</w>\r\na b\n\0ab ba a")
    write(d / "no_specials", b'{"a": 1}\0\0a')
    write(d / "bad_merges", json.dumps(tiny_vocab).encode() + b"\0a b c\n\0x")


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (encoder.py's bytes_to_unicode)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def seeds_gpt2():
    d = target("fuzz_gpt2_tokenizer")
    texts = {
        "glue": "The movie wasn't bad, it's just that I'd seen it before -- 3.5/5 stars.",
        "contractions": "IT'S THEY'LL we've you're I'm she'd 'tis o'clock",
        "numbers": "In 2026, 1,234.56 people paid $7.89 (12%) for 3rd-party item #42.",
        "whitespace": "  leading\t\ttabs\n\n  trailing   \r\n\u3000ideographic\u2028sep  ",
        "unicode": "Caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001F600 e\u0301 \u0645\u0631\u062d\u0628\u0627",
        "specials": "<|endoftext|>first<|endoftext|> second <|endoftext",
    }
    for name, text in texts.items():
        write(d / name, text.encode("utf-8"))
    write(d / "invalid_utf8", b"caf\xc3 \xe9\xed\xa0\x80 \xf0\x9f\x98\x80 end")

    d = target("fuzz_gpt2_vocab")
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    for token in ["\u0120t", "\u0120th", "he", "\u0120the", "in", "\u0120a"]:
        vocab[token] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    merges = "#version: 0.2\n\u0120 t\n\u0120t h\nh e\n\u0120th e\ni n\n\u0120 a\n"
    write(d / "tiny", json.dumps(vocab).encode() + b"\0" + merges.encode() + b"\0 the a in thin")
    write(d / "no_eot", json.dumps({table[b]: b for b in range(256)}).encode() + b"\0\0x")
    write(d / "unknown_merge", json.dumps(vocab).encode() + b"\0x y\n\0x")
    write(d / "missing_byte", b'{"a": 0, "<|endoftext|>": 1}\0\0a')


def seeds_checkpoints():
    sdk = ROOT / "tests" / "sdk" / "data"
    d = target("fuzz_safetensors")
    for name in ["metadata.safetensors", "all_dtypes.safetensors"]:
        shutil.copy(sdk / name, d / name)
    for p in sorted((sdk / "sharded").glob("*.safetensors")):
        shutil.copy(p, d / p.name)

    d = target("fuzz_checkpoint_index")
    index = (sdk / "sharded" / "model.safetensors.index.json").read_bytes()
    write(d / "model.safetensors.index.json", index)
    wm = json.loads(index)["weight_map"]
    one, two = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    swapped = dict(wm, **{"position_ids": one})
    write(d / "wrong_shard.json", json.dumps({"weight_map": swapped}))
    missing = {k: v for k, v in wm.items() if k != "layer.0.bias"}
    write(d / "missing_tensor.json", json.dumps({"metadata": {}, "weight_map": missing}))
    write(d / "no_such_shard.json", json.dumps({"weight_map": dict(wm, extra="model-00003-of-00002.safetensors")}))
    write(d / "empty.json", b'{"weight_map": {}}')


if __name__ == "__main__":
    seeds_idx()
    seeds_image()
    seeds_csv()
    seeds_config()
    seeds_clip()
    seeds_gpt2()
    seeds_checkpoints()
    for d in sorted(CORPUS.iterdir()):
        files = list(d.iterdir())
        print(f"{d.name}: {len(files)} files, {sum(f.stat().st_size for f in files)} bytes")
