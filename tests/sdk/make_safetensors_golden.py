#!/usr/bin/python3
"""Writes the golden safetensors files the SDK tests read (tests/sdk/data/).

Run with Debian's interpreter (it has python3-torch 1.13):  /usr/bin/python3 tests/sdk/make_safetensors_golden.py

There is no `safetensors` Python package on the build machines, so `save_file` below is a reference
writer implemented here from the rules of the safetensors library itself (huggingface/safetensors,
`prepare()` in safetensors/src/tensor.rs, read at commit 24b0b28):
  * tensors sorted by dtype in *descending* order of the Rust `Dtype` enum, which lists the dtypes by
    increasing alignment (BOOL < U8 < I8 < I16 < F16 < BF16 < I32 < F32 < F64 < I64), then by name
    (byte-wise ascending);
  * the header is `serde_json::to_string` of {"__metadata__": {...}, name: {"dtype", "shape",
    "data_offsets"}, ...}: compact (no spaces), "__metadata__" first, fields in that order;
  * the header is padded with b' ' to a multiple of 8 bytes and preceded by its length as a
    little-endian u64; the data section follows, tensors back to back in the same order.
With one metadata key (`format: pt`, as transformers writes) this is byte-identical to what
`safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})` writes. With several keys
the Rust HashMap's order is unspecified; this writer (and fusion) sorts them.

Also writes golden.json: for every file, each tensor's dtype, shape, values and raw bytes (hex).
"""
import json
import os
import struct

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")

# safetensors dtype name, torch dtype, position in the Rust enum (only the order matters).
DTYPES = {
    torch.bool: ("BOOL", 0),
    torch.uint8: ("U8", 4),
    torch.int8: ("I8", 5),
    torch.int16: ("I16", 11),
    torch.float16: ("F16", 13),
    torch.bfloat16: ("BF16", 14),
    torch.int32: ("I32", 15),
    torch.float32: ("F32", 17),
    torch.float64: ("F64", 19),
    torch.int64: ("I64", 20),
}


def tensor_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)  # numpy has no bfloat16; same bytes
    return t.numpy().tobytes()  # little-endian host


def save_file(tensors, path, metadata=None):
    items = sorted(tensors.items(), key=lambda kv: kv[0].encode("utf-8"))
    items = sorted(items, key=lambda kv: -DTYPES[kv[1].dtype][1])  # stable: name order kept per dtype
    header = {}
    if metadata is not None:
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    blobs = []
    for name, t in items:
        b = tensor_bytes(t)
        header[name] = {"dtype": DTYPES[t.dtype][0], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def jsonable(x):
    if isinstance(x, list):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return "nan" if x != x else ("inf" if x > 0 else "-inf")
    return x


def describe(tensors):
    out = {}
    for name, t in tensors.items():
        values = t.double() if t.is_floating_point() else t.long()
        out[name] = {"dtype": DTYPES[t.dtype][0], "shape": list(t.shape),
                     "values": jsonable(values.reshape(-1).tolist()),
                     "hex": tensor_bytes(t).hex()}
    return out


def main():
    g = torch.Generator().manual_seed(1234)
    os.makedirs(DATA, exist_ok=True)
    golden = {}

    # Every dtype, several tensors per dtype (name order), a scalar and an empty tensor.
    special = torch.tensor([0.0, -0.0, 1.5, -2.25, float("inf"), float("-inf"), float("nan"), 65504.0])
    t = {
        "f64": torch.randn(2, 3, generator=g, dtype=torch.float64),
        "f32.b": torch.randn(3, 4, generator=g),
        "f32.a": special.clone(),
        "F32_upper": torch.randn(5, generator=g),
        "f32.scalar": torch.tensor(3.25),
        "f32.empty": torch.zeros(0, 3),
        "f16": (torch.randn(2, 2, 3, generator=g) * 4).half(),
        "bf16": (torch.randn(7, generator=g) * 100).bfloat16(),
        "i64": torch.tensor([[-(2**62), 0, 7], [2**40, -1, 123456789]], dtype=torch.int64),
        "i32": torch.tensor([-(2**31), 2**31 - 1, 5], dtype=torch.int32),
        "i16": torch.tensor([-32768, 32767, -3], dtype=torch.int16),
        "i8": torch.tensor([-128, 127, 0, -1], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True, True]),
        "position_ids": torch.arange(10, dtype=torch.int64).reshape(1, 10),
    }
    save_file(t, os.path.join(DATA, "all_dtypes.safetensors"), {"format": "pt"})
    golden["all_dtypes.safetensors"] = {"metadata": {"format": "pt"}, "tensors": describe(t)}

    # Metadata beyond `format`, with characters JSON must escape and non-ASCII text.
    meta = {"format": "pt", "note": "quote \" backslash \\ newline \n tab \t é ✓"}
    t2 = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "ünï.cödé": torch.ones(2)}
    save_file(t2, os.path.join(DATA, "metadata.safetensors"), meta)
    golden["metadata.safetensors"] = {"metadata": meta, "tensors": describe(t2)}

    # A sharded Hugging Face folder: two shards and their index, plus a config.json.
    shard_dir = os.path.join(DATA, "sharded")
    os.makedirs(shard_dir, exist_ok=True)
    full = {
        "embed.weight": torch.randn(4, 3, generator=g),
        "layer.0.weight": torch.randn(3, 3, generator=g),
        "layer.0.bias": torch.randn(3, generator=g),
        "layer.1.weight": torch.randn(3, 3, generator=g),
        "position_ids": torch.arange(4, dtype=torch.int64),
    }
    shards = {
        "model-00001-of-00002.safetensors": ["embed.weight", "layer.0.bias", "layer.0.weight"],
        "model-00002-of-00002.safetensors": ["layer.1.weight", "position_ids"],
    }
    weight_map = {}
    for shard, names in shards.items():
        save_file({n: full[n] for n in names}, os.path.join(shard_dir, shard), {"format": "pt"})
        for n in names:
            weight_map[n] = shard
    total = sum(v.numel() * v.element_size() for v in full.values())
    with open(os.path.join(shard_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                  f, indent=2)
        f.write("\n")
    with open(os.path.join(shard_dir, "config.json"), "w") as f:
        f.write('{\n  "model_type": "toy",\n  "hidden_size": 3\n}\n')
    golden["sharded"] = {"metadata": {}, "tensors": describe(full)}

    with open(os.path.join(DATA, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
