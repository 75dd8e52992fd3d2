#!/usr/bin/python3
"""Makes the golden files of the GPT-2 model tests (run: /usr/bin/python3 tests/gpt2/make_model_golden.py).

Writes, under tests/gpt2/data/:
  model_tiny/          a small random GPT2ForSequenceClassification in Hugging Face's layout: config.json
                       (gelu_new, pad_token_id = eos_token_id as FusionBench sets them, 3 labels),
                       model.safetensors (f32, keys with the `transformer.` prefix, `score.weight`, no
                       `lm_head.weight`, and the `attn.bias` / `attn.masked_bias` buffers old checkpoints
                       carry)
  model_tiny_bare/     a small random GPT2Model: keys without the `transformer.` prefix, sharded in two
                       files with model.safetensors.index.json; activation "gelu" (erf), n_inner 40,
                       no pad_token_id
  model_golden.safetensors  inputs and the expected outputs of the reference below

The reference is transformers' modeling_gpt2.py (GPT2Model, GPT2LMHeadModel, GPT2ForSequenceClassification,
the eager GPT2Attention._attn path) re-implemented in plain torch: the machine has no transformers package.
The facts it follows:
  - Conv1D: y = x·W + b with W stored [in, out] (addmm).
  - embeddings: wte[ids] + wpe[position_ids], position_ids = arange(T) whatever the attention mask
    (GPT2Model.forward makes them so when none are given; left padding therefore shifts positions).
  - block: x + attn(ln_1(x)); x + mlp(ln_2(x)); ln_f at the end.
  - attention: q kᵀ / √head_dim; the causal mask by torch.where(causal, w, finfo.min); then the padding
    mask added as (1 − mask)·finfo.min (so a masked key that is also in the future gets −inf); softmax.
  - gelu_new: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))); "gelu" is the erf GELU.
  - lm_head tied to wte when the file has no lm_head.weight.
  - sequence classification pooling (transformers 4.30 … 4.47, the versions FusionBench ran):
    i = (argmax(input_ids == pad_token_id) − 1) mod T per row: the token before the first pad token, or
    the last token when the row has no pad token (argmax of all-false is 0, and −1 mod T = T − 1).
    With right padding that is the last real token; with left padding the first pad is at 0, so the last
    token again. A pad (= eos) token inside the text cuts the row there.
The forward runs in float64 from the stored f32 weights, so the expected values are the exact outputs to
which an f32 implementation must come within 1e-5.
"""
import json
import math
import os
import struct

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")

DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.bool: "BOOL"}


def tensor_bytes(t):
    t = t.contiguous().cpu()
    if t.dtype == torch.bool:
        return t.to(torch.uint8).numpy().tobytes()
    a = t.numpy()
    return a.astype(a.dtype.newbyteorder("<")).tobytes()


def save_safetensors(path, tensors):
    """safetensors by hand: little-endian u64 header length, JSON header, raw bytes."""
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


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# The reference forward (float64)

def conv1d(x, w, b):
    return torch.addmm(b, x.reshape(-1, x.size(-1)), w).view(*x.shape[:-1], w.size(1))


def act(x, name):
    if name == "gelu_new":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    if name == "gelu":
        return torch.nn.functional.gelu(x)
    raise ValueError(name)


def body(p, cfg, ids, attention_mask=None, prefix="transformer."):
    """GPT2Model.forward: the last hidden state [B, T, d] after ln_f."""
    b, t = ids.shape
    d, nh = cfg["n_embd"], cfg["n_head"]
    hd = d // nh
    eps = cfg["layer_norm_epsilon"]
    dtype = p[prefix + "wte.weight"].dtype
    fmin = torch.finfo(dtype).min
    if attention_mask is not None:
        m = attention_mask.view(b, -1)[:, None, None, :].to(dtype)
        m = (1.0 - m) * fmin
    pos = torch.arange(0, t, dtype=torch.long).unsqueeze(0)
    x = p[prefix + "wte.weight"][ids] + p[prefix + "wpe.weight"][pos]
    causal = torch.tril(torch.ones((t, t), dtype=torch.bool)).view(1, 1, t, t)
    for i in range(cfg["n_layer"]):
        h = f"{prefix}h.{i}."
        y = torch.nn.functional.layer_norm(x, (d,), p[h + "ln_1.weight"], p[h + "ln_1.bias"], eps)
        q, k, v = conv1d(y, p[h + "attn.c_attn.weight"], p[h + "attn.c_attn.bias"]).split(d, dim=2)
        q, k, v = (z.view(b, t, nh, hd).permute(0, 2, 1, 3) for z in (q, k, v))
        w = torch.matmul(q, k.transpose(-1, -2))
        w = w / torch.full([], v.size(-1) ** 0.5, dtype=w.dtype)
        w = torch.where(causal, w, torch.full([], fmin, dtype=w.dtype))
        if attention_mask is not None:
            w = w + m
        w = torch.softmax(w, dim=-1)
        a = torch.matmul(w, v).permute(0, 2, 1, 3).contiguous().view(b, t, d)
        x = x + conv1d(a, p[h + "attn.c_proj.weight"], p[h + "attn.c_proj.bias"])
        y = torch.nn.functional.layer_norm(x, (d,), p[h + "ln_2.weight"], p[h + "ln_2.bias"], eps)
        y = act(conv1d(y, p[h + "mlp.c_fc.weight"], p[h + "mlp.c_fc.bias"]), cfg["activation_function"])
        x = x + conv1d(y, p[h + "mlp.c_proj.weight"], p[h + "mlp.c_proj.bias"])
    return torch.nn.functional.layer_norm(x, (d,), p[prefix + "ln_f.weight"], p[prefix + "ln_f.bias"], eps)


def lm_logits(p, hidden, prefix="transformer."):
    w = p.get("lm_head.weight", p[prefix + "wte.weight"])  # tied when absent
    return hidden @ w.t()


def pool_index(ids, pad_token_id):
    t = ids.shape[-1]
    return (torch.eq(ids, pad_token_id).int().argmax(-1) - 1) % t


def cls_logits(p, hidden, ids, pad_token_id):
    logits = hidden @ p["score.weight"].t()
    idx = pool_index(ids, pad_token_id)
    return logits[torch.arange(ids.shape[0]), idx], idx


# ---------------------------------------------------------------------------------------------
# The models

def random_body(gen, cfg, prefix):
    """Random weights larger than Hugging Face's N(0, 0.02) init, non-trivial layer norms and biases,
    so a wrong transpose, scale or mask moves the outputs well past the tolerance."""
    d, v, n = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
    inner = cfg.get("n_inner") or 4 * d

    def rnd(*shape, std=1.0):
        return torch.randn(*shape, generator=gen) * std

    p = {prefix + "wte.weight": rnd(v, d, std=0.5), prefix + "wpe.weight": rnd(n, d, std=0.3)}
    for i in range(cfg["n_layer"]):
        h = f"{prefix}h.{i}."
        p[h + "ln_1.weight"] = 1.0 + rnd(d, std=0.2)
        p[h + "ln_1.bias"] = rnd(d, std=0.1)
        p[h + "attn.c_attn.weight"] = rnd(d, 3 * d, std=d ** -0.5)
        p[h + "attn.c_attn.bias"] = rnd(3 * d, std=0.1)
        p[h + "attn.c_proj.weight"] = rnd(d, d, std=d ** -0.5)
        p[h + "attn.c_proj.bias"] = rnd(d, std=0.1)
        p[h + "ln_2.weight"] = 1.0 + rnd(d, std=0.2)
        p[h + "ln_2.bias"] = rnd(d, std=0.1)
        p[h + "mlp.c_fc.weight"] = rnd(d, inner, std=d ** -0.5)
        p[h + "mlp.c_fc.bias"] = rnd(inner, std=0.1)
        p[h + "mlp.c_proj.weight"] = rnd(inner, d, std=inner ** -0.5)
        p[h + "mlp.c_proj.bias"] = rnd(d, std=0.1)
    p[prefix + "ln_f.weight"] = 1.0 + rnd(d, std=0.2)
    p[prefix + "ln_f.bias"] = rnd(d, std=0.1)
    return {k: t.float() for k, t in p.items()}


def main():
    gen = torch.Generator().manual_seed(20240612)
    os.makedirs(DATA, exist_ok=True)

    # --- model_tiny: GPT2ForSequenceClassification, pad = eos (FusionBench's setting)
    vocab, eos = 320, 319
    cfg = {
        "architectures": ["GPT2ForSequenceClassification"],
        "model_type": "gpt2",
        "vocab_size": vocab,
        "n_positions": 64,
        "n_ctx": 64,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "id2label": {"0": "negative", "1": "neutral", "2": "positive"},
        "label2id": {"negative": 0, "neutral": 1, "positive": 2},
        "torch_dtype": "float32",
    }
    p = random_body(gen, cfg, "transformer.")
    p["score.weight"] = (torch.randn(3, cfg["n_embd"], generator=gen) * 0.5).float()
    stored = dict(p)
    n = cfg["n_positions"]
    for i in range(cfg["n_layer"]):  # the buffers old checkpoints carry (to be ignored)
        stored[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        stored[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    tiny = os.path.join(DATA, "model_tiny")
    os.makedirs(tiny, exist_ok=True)
    save_safetensors(os.path.join(tiny, "model.safetensors"), stored)
    write_json(os.path.join(tiny, "config.json"), cfg)

    # Inputs: five rows of 12 tokens. Real tokens avoid the pad/eos id except row 4, whose text holds an
    # eos in the middle (HF's rule cuts the row there).
    t = 12
    lengths = [12, 7, 3, 1, 9]
    real = [torch.randint(0, eos, (n_,), generator=gen) for n_ in lengths]
    real[4][4] = eos
    ids_right = torch.full((5, t), eos, dtype=torch.long)
    mask_right = torch.zeros((5, t), dtype=torch.long)
    ids_left = torch.full((5, t), eos, dtype=torch.long)
    mask_left = torch.zeros((5, t), dtype=torch.long)
    for r, toks in enumerate(real):
        ids_right[r, : len(toks)] = toks
        mask_right[r, : len(toks)] = 1
        ids_left[r, t - len(toks):] = toks
        mask_left[r, t - len(toks):] = 1
    ids_full = torch.randint(0, eos, (1, n), generator=gen)

    pd = {k: v.double() for k, v in p.items()}
    g = {"ids_right": ids_right, "mask_right": mask_right, "ids_left": ids_left, "mask_left": mask_left,
         "ids_full": ids_full}
    h_right = body(pd, cfg, ids_right, mask_right)
    h_left = body(pd, cfg, ids_left, mask_left)
    h_nomask = body(pd, cfg, ids_right)
    h_full = body(pd, cfg, ids_full)
    g["hidden_right"] = h_right
    g["hidden_left"] = h_left
    g["hidden_nomask"] = h_nomask
    g["hidden_full"] = h_full
    g["lm_logits_right"] = lm_logits(pd, h_right)
    g["lm_logits_full"] = lm_logits(pd, h_full)
    g["cls_logits_right"], g["pool_index_right"] = cls_logits(pd, h_right, ids_right, eos)
    g["cls_logits_left"], g["pool_index_left"] = cls_logits(pd, h_left, ids_left, eos)
    g["cls_logits_nomask"], _ = cls_logits(pd, h_nomask, ids_right, eos)
    print("pool index right", g["pool_index_right"].tolist(), "left", g["pool_index_left"].tolist())
    assert g["pool_index_right"].tolist() == [11, 6, 2, 0, 3]
    assert g["pool_index_left"].tolist() == [11] * 5

    # Gradient of a scalar of the classification logits w.r.t. one MLP weight (autograd through the
    # functional forward): the reference for the C++ backward.
    pg = {k: v.clone().requires_grad_(True) for k, v in pd.items()}
    out, _ = cls_logits(pg, body(pg, cfg, ids_right, mask_right), ids_right, eos)
    (out ** 2).sum().backward()
    g["grad_h0_mlp_c_fc_weight"] = pg["transformer.h.0.mlp.c_fc.weight"].grad
    g["grad_wte"] = pg["transformer.wte.weight"].grad

    # --- model_tiny_bare: GPT2Model, bare keys, two shards, gelu (erf), n_inner 40, no pad token
    cfg2 = {
        "architectures": ["GPT2Model"],
        "model_type": "gpt2",
        "vocab_size": 200,
        "n_positions": 32,
        "n_embd": 24,
        "n_layer": 3,
        "n_head": 3,
        "n_inner": 40,
        "activation_function": "gelu",
        "layer_norm_epsilon": 1e-6,
        "bos_token_id": 199,
        "eos_token_id": 199,
        "torch_dtype": "float32",
    }
    p2 = random_body(gen, cfg2, "")
    bare = os.path.join(DATA, "model_tiny_bare")
    os.makedirs(bare, exist_ok=True)
    keys = list(p2.keys())
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for fname, ks in shards.items():
        save_safetensors(os.path.join(bare, fname), {k: p2[k] for k in ks})
        for k in ks:
            weight_map[k] = fname
    total = sum(v.numel() * 4 for v in p2.values())
    write_json(os.path.join(bare, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})
    write_json(os.path.join(bare, "config.json"), cfg2)
    ids2 = torch.randint(0, 199, (3, 10), generator=gen)
    mask2 = torch.ones((3, 10), dtype=torch.long)
    mask2[1, 6:] = 0
    mask2[2, :4] = 0
    p2d = {k: v.double() for k, v in p2.items()}
    g["bare_ids"] = ids2
    g["bare_mask"] = mask2
    h2 = body(p2d, cfg2, ids2, mask2, prefix="")
    g["bare_hidden"] = h2
    g["bare_lm_logits"] = lm_logits(p2d, h2, prefix="")

    save_safetensors(os.path.join(DATA, "model_golden.safetensors"), g)
    print("wrote", tiny, bare, os.path.join(DATA, "model_golden.safetensors"))


if __name__ == "__main__":
    main()
