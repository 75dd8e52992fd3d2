#!/usr/bin/python3
"""Golden files for fusion_image_classification_tests: small test images in the formats the task pool
must read (8-bit RGB, grey, grey+alpha, RGBA, palette with transparency, 16-bit grey and RGB PNG,
JPEG 4:2:0 and 4:4:4) and what Hugging Face's CLIPImageProcessor makes of them with PIL:
convert("RGB"), resize of the shortest edge with PIL's bicubic filter, centre crop (floored
offsets), /255, CLIP's mean and std.

Run with Debian's python3 (python3-pil, python3-numpy):  /usr/bin/python3 make_golden.py
Writes data/images/*, data/expected/*.png (the 8-bit crops) and data/golden.json; data/normalized.safetensors
holds one crop normalised in float32 (transformers' arithmetic) to check the last step exactly.
"""
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

rng = np.random.default_rng(1234)


def smooth(h, w, c, noise=12.0):
    """Smooth colour fields with some noise: detail for the filter, yet small as PNG."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((h, w, c))
    for k in range(c):
        fx, fy, ph = rng.uniform(0.02, 0.3), rng.uniform(0.02, 0.3), rng.uniform(0, 6.28)
        out[..., k] = 127.5 + 110 * np.sin(fx * x + ph) * np.cos(fy * y - ph)
    out += rng.normal(0, noise, out.shape)
    # a few hard edges, where bicubic overshoots and clamping matters
    out[h // 3 : h // 3 + 3, :, :] = 255
    out[:, w // 4 : w // 4 + 2, :] = 0
    return out


def u8(a):
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def png_chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def write_png16(path, a):
    """A 16-bit PNG (grey [h, w] or RGB [h, w, 3]) written by hand: PIL cannot write 16-bit RGB."""
    h, w = a.shape[:2]
    colour = 2 if a.ndim == 3 else 0
    raw = b"".join(b"\x00" + a[r].astype(">u2").tobytes() for r in range(h))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)))
        f.write(png_chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(png_chunk(b"IEND", b""))


def clip_crop(img, size):
    """CLIPImageProcessor's convert, resize and centre crop, on a PIL image: uint8 [size, size, 3]."""
    img = img.convert("RGB")
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    img = img.resize((new_w, new_h), resample=Image.BICUBIC)
    a = np.asarray(img)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return a[top : top + size, left : left + size]


def normalize(crop):
    x = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - MEAN) / STD
    return x.transpose(2, 0, 1).astype(np.float32)


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        b = np.ascontiguousarray(t, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    os.makedirs(os.path.join(DATA, "images"), exist_ok=True)
    os.makedirs(os.path.join(DATA, "expected"), exist_ok=True)
    cases = []  # (file name, PIL image as the reference reads it, sizes, tolerance in grey levels)

    def save(name, img, sizes, tol=1, **kw):
        path = os.path.join(DATA, "images", name)
        img.save(path, **kw)
        cases.append((name, Image.open(path), sizes, tol))

    save("rgb_wide.png", Image.fromarray(u8(smooth(37, 61, 3))), [224, 32])
    save("rgb_tall_large.png", Image.fromarray(u8(smooth(203, 150, 3, noise=20))), [64, 23])
    save("rgb_square.png", Image.fromarray(u8(smooth(48, 48, 3))), [48, 17])
    save("grey.png", Image.fromarray(u8(smooth(40, 52, 1)[..., 0]), "L"), [224, 40])
    la = np.dstack([u8(smooth(30, 26, 1)[..., 0]), u8(smooth(30, 26, 1)[..., 0])])
    save("grey_alpha.png", Image.fromarray(la, "LA"), [32])
    save("rgba.png", Image.fromarray(u8(smooth(45, 30, 4)), "RGBA"), [64])
    pal = Image.fromarray(u8(smooth(33, 35, 3))).convert("P", palette=Image.ADAPTIVE, colors=37)
    pal.info["transparency"] = 5  # palette entry 5 is transparent: tRNS chunk, dropped by convert("RGB")
    save("palette.png", pal, [224, 30], transparency=5)
    save("mnist_digit.png", Image.fromarray(u8(smooth(28, 28, 1, noise=40)[..., 0]), "L"), [224])

    # 16-bit PNGs. PIL reads 16-bit RGB by its high byte, which is the right reduction; 16-bit grey
    # it opens as mode "I" and convert("RGB") clips every value above 255 to white, a PIL defect.
    # The reference for grey therefore reduces to the high byte first, as for RGB.
    g16 = np.clip(smooth(26, 34, 1)[..., 0] * 257 + rng.integers(0, 257, (26, 34)), 0, 65535).astype(np.uint16)
    write_png16(os.path.join(DATA, "images", "grey16.png"), g16)
    cases.append(("grey16.png", Image.fromarray((g16 >> 8).astype(np.uint8), "L"), [32], 1))
    c16 = np.clip(smooth(22, 27, 3) * 257 + rng.integers(0, 257, (22, 27, 3)), 0, 65535).astype(np.uint16)
    write_png16(os.path.join(DATA, "images", "rgb16.png"), c16)
    ref16 = Image.open(os.path.join(DATA, "images", "rgb16.png"))
    assert ref16.mode == "RGB" and np.array_equal(np.asarray(ref16), (c16 >> 8).astype(np.uint8))
    cases.append(("rgb16.png", ref16, [32], 1))

    # JPEGs: stb_image and libjpeg decode to slightly different pixels (chroma upsampling, IDCT and
    # colour conversion rounding), so these get a looser tolerance; 4:4:4 avoids the upsampling.
    photo = Image.fromarray(u8(smooth(120, 160, 3, noise=6)))
    save("photo_420.jpg", photo, [64], tol=3, quality=90, subsampling=2)
    save("photo_444.jpg", photo, [64], tol=2, quality=95, subsampling=0)

    golden = []
    for name, img, sizes, tol in cases:
        for size in sizes:
            crop = clip_crop(img, size)
            out = f"{os.path.splitext(name)[0]}_{size}.png"
            Image.fromarray(crop).save(os.path.join(DATA, "expected", out))
            golden.append({"image": name, "size": size, "expected": out, "tolerance": tol,
                           "width": img.size[0], "height": img.size[1]})
    with open(os.path.join(DATA, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    crop = clip_crop(Image.open(os.path.join(DATA, "images", "rgb_square.png")), 17)
    write_safetensors(os.path.join(DATA, "normalized.safetensors"), {"rgb_square_17": normalize(crop)})
    print(f"{len(golden)} golden crops")


if __name__ == "__main__":
    main()
