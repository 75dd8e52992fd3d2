#!/usr/bin/python3
"""Makes the tiny example checkpoints under examples/checkpoints/tiny/ (a few KB each).

    /usr/bin/python3 examples/checkpoints/make_tiny.py

Each folder is laid out like a Hugging Face model folder: config.json + model.safetensors. The
"model" is a two-layer MLP with a layer norm and an integer position-id buffer (which merges must
copy from the pretrained model, not average). The experts are the pretrained model plus small
seeded perturbations, so merges give distinct, reproducible results. Only the standard library is
used, so any Python 3 runs it; the safetensors format is written by hand (u64 little-endian header
length, JSON header padded with spaces to a multiple of 8, raw little-endian bytes).
"""
import json
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tiny")
HIDDEN, INTERMEDIATE, POSITIONS = 8, 16, 4

SHAPES = {
    "embeddings.position_ids": ("I64", [1, POSITIONS]),
    "embeddings.position_embedding.weight": ("F32", [POSITIONS, HIDDEN]),
    "encoder.layer_norm.weight": ("F32", [HIDDEN]),
    "encoder.layer_norm.bias": ("F32", [HIDDEN]),
    "encoder.mlp.fc1.weight": ("F32", [INTERMEDIATE, HIDDEN]),
    "encoder.mlp.fc1.bias": ("F32", [INTERMEDIATE]),
    "encoder.mlp.fc2.weight": ("F32", [HIDDEN, INTERMEDIATE]),
    "encoder.mlp.fc2.bias": ("F32", [HIDDEN]),
}


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def save(path, tensors):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        dtype, shape, values = tensors[name]
        fmt = "<%d%s" % (len(values), "q" if dtype == "I64" else "f")
        raw = struct.pack(fmt, *values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    rng = random.Random(42)
    pretrained = {}
    for name, (dtype, shape) in SHAPES.items():
        if dtype == "I64":
            values = list(range(numel(shape)))
        elif name.endswith("layer_norm.weight"):
            values = [1.0] * numel(shape)
        else:
            values = [rng.gauss(0.0, 0.1) for _ in range(numel(shape))]
        pretrained[name] = (dtype, shape, values)
    config = {"model_type": "tiny_mlp", "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE,
              "max_position_embeddings": POSITIONS, "architectures": ["TinyMLP"]}
    models = {"pretrained": pretrained}
    for i, expert in enumerate(["expert_a", "expert_b", "expert_c"]):
        models[expert] = {
            name: (dtype, shape, values if dtype == "I64" else
                   [v + rng.gauss(0.0, 0.02 * (i + 1)) for v in values])
            for name, (dtype, shape, values) in pretrained.items()}
    for folder, tensors in models.items():
        path = os.path.join(OUT, folder)
        os.makedirs(path, exist_ok=True)
        save(os.path.join(path, "model.safetensors"), tensors)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
