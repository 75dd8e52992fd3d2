#!/usr/bin/python3
"""Makes the golden files of fusion_clip_tests (run: /usr/bin/python3 tests/clip/make_golden.py).

Writes, under tests/clip/data/:
  clip_model/         a small random CLIPModel in Hugging Face's layout: config.json, model.safetensors
                      (f32, with the legacy int64 position_ids buffers), vocab.json and merges.txt of a
                      hand-made byte-level BPE vocabulary
  clip_vision_model/  a small random CLIPVisionModel (bf16 weights, gelu, other sizes)
  golden.safetensors  inputs and the expected outputs of the reference below
  tokenizer_cases.json texts with the expected tokens and ids

The reference follows transformers' modeling_clip.py (CLIPVisionTransformer, CLIPTextTransformer,
CLIPModel.get_image_features / get_text_features / forward) and tokenization_clip.py (CLIPTokenizer:
bytes_to_unicode, bpe, the word pattern, special tokens, truncation) in plain torch: the machine has
no transformers package. The tokenizer is make_tokenizer_golden.py's. The forward runs in float64 from
the stored weights, so the expected values are the exact outputs to which an f32 implementation must
come within 1e-5.
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

from make_tokenizer_golden import BOS, EOS, Tokenizer, bytes_to_unicode, clean, split_words

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")

# ---------------------------------------------------------------------------------------------
# safetensors, written by hand (little-endian u64 header length, JSON header, raw bytes)

DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32"}


def tensor_bytes(t):
    t = t.contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()


def save_safetensors(path, tensors):
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        b = tensor_bytes(t)
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------------------------------------
# The test vocabulary (the tokenizer is make_tokenizer_golden.py's)

# Merges by hand. Ranks matter: "o t" comes before "h o", so "photo" must not merge "h o" first.
MERGES = [
    ("o", "t"), ("h", "o"), ("p", "h"), ("ph", "ot"), ("phot", "o</w>"),
    ("t", "h"), ("th", "e</w>"), ("o", "f</w>"), ("c", "a"), ("ca", "t</w>"), ("ca", "r</w>"),
    ("d", "o"), ("do", "g</w>"), ("r", "e</w>"), ("'", "re</w>"), ("'", "s</w>"), ("i", "t</w>"),
    ("a", "n"), ("an", "a</w>"), ("b", "an"), ("ban", "an"), ("banan", "a</w>"),
    ("h", "e"), ("he", "re</w>"), ("2", "0"),
]


def make_vocab():
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    for a, b in MERGES:
        vocab_list.append(a + b)
    vocab_list = [v for v in vocab_list if v != "Ã"]  # one byte symbol left out: the unk fallback
    vocab_list += [BOS, EOS]
    return {t: i for i, t in enumerate(vocab_list)}


# ---------------------------------------------------------------------------------------------
# The model (modeling_clip.py in plain torch, float64)

def layer_norm(x, p, key, eps):
    return F.layer_norm(x, (x.shape[-1],), p[key + ".weight"], p[key + ".bias"], eps)


def act(x, name):
    return x * torch.sigmoid(1.702 * x) if name == "quick_gelu" else F.gelu(x)


def encoder(p, prefix, cfg, x, mask):
    h = cfg["num_attention_heads"]
    hd = cfg["hidden_size"] // h
    b, t, d = x.shape
    for l in range(cfg["num_hidden_layers"]):
        pre = f"{prefix}layers.{l}."
        lin = lambda y, name: F.linear(y, p[pre + name + ".weight"], p[pre + name + ".bias"])
        residual = x
        y = layer_norm(x, p, pre + "layer_norm1", cfg["layer_norm_eps"])
        q = lin(y, "self_attn.q_proj").view(b, t, h, hd).transpose(1, 2)
        k = lin(y, "self_attn.k_proj").view(b, t, h, hd).transpose(1, 2)
        v = lin(y, "self_attn.v_proj").view(b, t, h, hd).transpose(1, 2)
        w = torch.matmul(q, k.transpose(-1, -2)) * hd ** -0.5
        if mask is not None:
            w = w + mask
        w = torch.softmax(w, dim=-1)
        o = torch.matmul(w, v).transpose(1, 2).reshape(b, t, d)
        x = residual + lin(o, "self_attn.out_proj")
        residual = x
        y = layer_norm(x, p, pre + "layer_norm2", cfg["layer_norm_eps"])
        y = lin(act(lin(y, "mlp.fc1"), cfg["hidden_act"]), "mlp.fc2")
        x = residual + y
    return x


def vision_forward(p, cfg, pixels):
    e = "vision_model.embeddings."
    patches = F.conv2d(pixels, p[e + "patch_embedding.weight"], stride=cfg["patch_size"]).flatten(2).transpose(1, 2)
    cls = p[e + "class_embedding"].expand(pixels.shape[0], 1, -1)
    x = torch.cat([cls, patches], dim=1) + p[e + "position_embedding.weight"]
    x = layer_norm(x, p, "vision_model.pre_layrnorm", cfg["layer_norm_eps"])
    x = encoder(p, "vision_model.encoder.", cfg, x, None)
    return layer_norm(x[:, 0, :], p, "vision_model.post_layernorm", cfg["layer_norm_eps"])


def text_forward(p, cfg, ids):
    e = "text_model.embeddings."
    t = ids.shape[1]
    x = p[e + "token_embedding.weight"][ids] + p[e + "position_embedding.weight"][:t]
    mask = torch.full((t, t), float("-inf"), dtype=x.dtype).triu(1)
    x = encoder(p, "text_model.encoder.", cfg, x, mask)
    x = layer_norm(x, p, "text_model.final_layer_norm", cfg["layer_norm_eps"])
    if bool((ids.max(dim=-1).values == 49407).all()):
        pos = ids.argmax(dim=-1)
    else:
        pos = (ids == cfg["eos_token_id"]).int().argmax(dim=-1)
    return x[torch.arange(ids.shape[0]), pos]


def encoder_params(gen, prefix, cfg, dtype=torch.float32):
    d, i = cfg["hidden_size"], cfg["intermediate_size"]
    p = {}
    rn = lambda *s, std=1.0: (torch.randn(*s, generator=gen) * std).to(dtype)
    for l in range(cfg["num_hidden_layers"]):
        pre = f"{prefix}layers.{l}."
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            p[pre + f"self_attn.{name}.weight"] = rn(d, d, std=d ** -0.5)
            p[pre + f"self_attn.{name}.bias"] = rn(d, std=0.1)
        p[pre + "layer_norm1.weight"] = (1 + rn(d, std=0.2)).to(dtype)
        p[pre + "layer_norm1.bias"] = rn(d, std=0.1)
        p[pre + "mlp.fc1.weight"] = rn(i, d, std=d ** -0.5)
        p[pre + "mlp.fc1.bias"] = rn(i, std=0.1)
        p[pre + "mlp.fc2.weight"] = rn(d, i, std=i ** -0.5)
        p[pre + "mlp.fc2.bias"] = rn(d, std=0.1)
        p[pre + "layer_norm2.weight"] = (1 + rn(d, std=0.2)).to(dtype)
        p[pre + "layer_norm2.bias"] = rn(d, std=0.1)
    return p


def vision_params(gen, cfg, dtype=torch.float32):
    d, ps = cfg["hidden_size"], cfg["patch_size"]
    n = (cfg["image_size"] // ps) ** 2 + 1
    rn = lambda *s, std=1.0: (torch.randn(*s, generator=gen) * std).to(dtype)
    p = {"vision_model.embeddings.class_embedding": rn(d, std=0.5),
         "vision_model.embeddings.patch_embedding.weight": rn(d, 3, ps, ps, std=(3 * ps * ps) ** -0.5),
         "vision_model.embeddings.position_embedding.weight": rn(n, d, std=0.5),
         "vision_model.pre_layrnorm.weight": (1 + rn(d, std=0.2)).to(dtype),
         "vision_model.pre_layrnorm.bias": rn(d, std=0.1)}
    p.update(encoder_params(gen, "vision_model.encoder.", cfg, dtype))
    p["vision_model.post_layernorm.weight"] = (1 + rn(d, std=0.2)).to(dtype)
    p["vision_model.post_layernorm.bias"] = rn(d, std=0.1)
    return p


def main():
    gen = torch.Generator().manual_seed(20240601)
    vocab = make_vocab()
    tok = Tokenizer(vocab, MERGES)
    bos, eos = vocab[BOS], vocab[EOS]

    vision_cfg = {"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4, "num_hidden_layers": 2,
                  "image_size": 16, "patch_size": 4, "num_channels": 3, "hidden_act": "quick_gelu",
                  "layer_norm_eps": 1e-5, "model_type": "clip_vision_model"}
    text_cfg = {"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4, "num_hidden_layers": 2,
                "vocab_size": len(vocab), "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5, "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": 1,
                "model_type": "clip_text_model"}
    proj = 24
    config = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": proj,
              "logit_scale_init_value": 2.6592, "initializer_factor": 1.0, "torch_dtype": "float32",
              "text_config": text_cfg, "vision_config": vision_cfg}

    # --- the CLIPModel checkpoint
    p = {}
    rn = lambda *s, std=1.0: torch.randn(*s, generator=gen) * std
    p["text_model.embeddings.token_embedding.weight"] = rn(len(vocab), 32, std=0.5)
    p["text_model.embeddings.position_embedding.weight"] = rn(77, 32, std=0.5)
    p["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    p.update(encoder_params(gen, "text_model.encoder.", text_cfg))
    p["text_model.final_layer_norm.weight"] = 1 + rn(32, std=0.2)
    p["text_model.final_layer_norm.bias"] = rn(32, std=0.1)
    p.update(vision_params(gen, vision_cfg))
    p["vision_model.embeddings.position_ids"] = torch.arange(17).unsqueeze(0)
    p["visual_projection.weight"] = rn(proj, 32, std=32 ** -0.5)
    p["text_projection.weight"] = rn(proj, 32, std=32 ** -0.5)
    p["logit_scale"] = torch.tensor(2.6592)

    model_dir = os.path.join(DATA, "clip_model")
    os.makedirs(model_dir, exist_ok=True)
    save_safetensors(os.path.join(model_dir, "model.safetensors"), p)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(model_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(model_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))

    # --- the CLIPVisionModel checkpoint: bf16, gelu, other sizes
    v2_cfg = {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model", "hidden_size": 16,
              "intermediate_size": 40, "num_attention_heads": 2, "num_hidden_layers": 3, "image_size": 12,
              "patch_size": 6, "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
              "torch_dtype": "bfloat16"}
    p2 = vision_params(gen, v2_cfg, torch.bfloat16)
    v2_dir = os.path.join(DATA, "clip_vision_model")
    os.makedirs(v2_dir, exist_ok=True)
    save_safetensors(os.path.join(v2_dir, "model.safetensors"), p2)
    with open(os.path.join(v2_dir, "config.json"), "w") as f:
        json.dump(v2_cfg, f, indent=2)

    # --- expected outputs (float64 forward from the stored weights)
    pd = {k: v.double() if v.is_floating_point() else v for k, v in p.items()}
    p2d = {k: v.double() for k, v in p2.items()}
    pixels = torch.randn(3, 3, 16, 16, generator=gen)
    pixels2 = torch.randn(2, 3, 12, 12, generator=gen)
    texts = ["a photo of a cat.", "a photo of a dog.", "the car", "they're here, it's 20 bananas!"]
    rows = [tok.encode(t) for t in texts]
    length = max(len(r) for r in rows)
    ids = torch.tensor([r + [eos] * (length - len(r)) for r in rows])  # padding=True pads with eos

    pooled = vision_forward(pd, vision_cfg, pixels.double())
    image_features = F.linear(pooled, pd["visual_projection.weight"])
    text_pooled = text_forward(pd, text_cfg, ids)
    text_features = F.linear(text_pooled, pd["text_projection.weight"])
    img_n = image_features / image_features.norm(p=2, dim=-1, keepdim=True)
    txt_n = text_features / text_features.norm(p=2, dim=-1, keepdim=True)
    logits_per_image = torch.matmul(txt_n, img_n.t()).t() * pd["logit_scale"].exp()

    # zero-shot head (FusionBench): per class, templates embedded, normalised, averaged, normalised
    classnames = ["cat", "dog", "car"]
    templates = ["a photo of a {}.", "the {}", "{} {} banana"]
    head = []
    for c in classnames:
        t_rows = [tok.encode(t.replace("{}", c, 1)) for t in templates]
        n = max(len(r) for r in t_rows)
        t_ids = torch.tensor([r + [eos] * (n - len(r)) for r in t_rows])
        e = F.linear(text_forward(pd, text_cfg, t_ids), pd["text_projection.weight"])
        e = (e / e.norm(dim=-1, keepdim=True)).mean(0)
        head.append(e / e.norm())
    head = torch.stack(head)
    zero_shot_logits = pd["logit_scale"].exp() * torch.matmul(img_n, head.t())

    pooled2 = vision_forward(p2d, v2_cfg, pixels2.double())

    # gradients of sum(pooled²) w.r.t. two weights, through the functional forward
    pg = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in pd.items()}
    (vision_forward(pg, vision_cfg, pixels.double()) ** 2).sum().backward()
    grad_fc1 = pg["vision_model.encoder.layers.0.mlp.fc1.weight"].grad
    grad_patch = pg["vision_model.embeddings.patch_embedding.weight"].grad

    golden = {"pixel_values": pixels, "vision_pooled": pooled, "image_features": image_features,
              "input_ids": ids, "text_features": text_features, "logits_per_image": logits_per_image,
              "zero_shot_text_embeds": head, "zero_shot_logits": zero_shot_logits,
              "pixel_values_2": pixels2, "vision_pooled_2": pooled2,
              "grad_fc1_layer0": grad_fc1, "grad_patch_embedding": grad_patch}
    golden = {k: v.float() if v.is_floating_point() else v for k, v in golden.items()}
    save_safetensors(os.path.join(DATA, "golden.safetensors"), golden)
    with open(os.path.join(DATA, "golden.json"), "w", encoding="utf-8") as f:
        json.dump({"texts": texts, "classnames": classnames, "templates": templates}, f, ensure_ascii=False, indent=1)

    # --- tokenizer cases
    cases = ["a photo of a cat.", "  A   PHOTO\tof the\nDog!!  ", "they're here, it's 2024",
             "Café ☕ 中文 naïve", "hello<|endoftext|>world<|startoftext|>", "'s'ab ''x !'re", "banana bananas",
             "ÀÉÎ ΑΒΓ Привет ẞ", "x² ½ ٣ 10", "", "a\u00a0b\u3000c\u2028d", "photo" * 3,
             " ".join(["a photo of a cat"] * 20)]
    out = []
    for text in cases:
        out.append({"text": text, "cleaned": clean(text), "words": split_words(clean(text)),
                    "tokens": tok.tokenize(text), "ids": tok.encode(text), "ids_max_10": tok.encode(text, 10)})
    with open(os.path.join(DATA, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        json.dump({"bos": bos, "eos": eos, "cases": out}, f, ensure_ascii=False, indent=1)
    for c in out[:6]:
        print(repr(c["text"]), c["tokens"][:12])
    print("long text ids:", len(out[-1]["ids"]), "last", out[-1]["ids"][-1] == eos)


if __name__ == "__main__":
    main()
