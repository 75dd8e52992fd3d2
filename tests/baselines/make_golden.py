#!/usr/bin/python3
"""Golden files for tests/baselines: the reference math of design/reference.md, on small state dicts.

Run with Debian's Python (it has torch 1.13): /usr/bin/python3 tests/baselines/make_golden.py
Writes, under tests/baselines/data/<set>/, the inputs (pretrained.safetensors, expert_<i>.safetensors)
and one expected_<case>.safetensors per case, plus cases.json describing every case. There is no
safetensors package here, so the format (u64 little-endian header length, JSON header, raw bytes) is
written by hand.

TIES follows FusionBench's fusion_bench/method/ties_merging (state_dict_to_vector over sorted keys,
topk_values_mask with kthvalue, resolve_sign, disjoint_merge), written out again here; integer tensors
and remove_keys are left out of the flattened vector and keep the pretrained values.
"""
import json
import os
import re
import struct

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")

DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.float16: "F16"}


def save_safetensors(path, tensors):
    header = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        raw = t.numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def mergeable(t):
    return t.is_floating_point()


# ---- reference math -------------------------------------------------------------------------

def task_arithmetic(pre, experts, lam):
    out = {}
    for k, p in pre.items():
        if not mergeable(p):
            out[k] = p.clone()
            continue
        tv = sum(e[k] - p for e in experts)
        out[k] = p + lam * tv
    return out


def weighted_average(experts, weights, normalize):
    if normalize:
        s = sum(weights)
        weights = [w / s for w in weights]
    out = {}
    for k, t in experts[0].items():
        if not mergeable(t):
            out[k] = t.clone()
            continue
        out[k] = sum(w * e[k] for w, e in zip(weights, experts))
    return out


def simple_average(experts):
    out = {}
    for k, t in experts[0].items():
        out[k] = t.clone() if not mergeable(t) else sum(e[k] for e in experts) / len(experts)
    return out


def ties(pre, experts, threshold, merge_func, remove_keys, lam):
    def removed(key):
        return any(key == r or re.fullmatch(r, key) for r in remove_keys)

    keys = sorted(k for k, v in pre.items() if mergeable(v) and not removed(k))

    def flat(sd):
        return torch.cat([sd[k].reshape(-1) for k in keys])

    flat_pre = flat(pre)
    tv = torch.vstack([flat(e) for e in experts]) - flat_pre
    # topk_values_mask
    K = threshold / 100
    n, d = tv.shape
    k = d - int(d * K)
    if k >= 1:
        kth, _ = tv.abs().kthvalue(k, dim=1, keepdim=True)
        tv = tv * (tv.abs() >= kth)
    # resolve_sign
    sign = torch.sign(tv.sum(dim=0))
    majority = torch.sign(sign.sum())
    sign[sign == 0] = majority
    # disjoint_merge
    keep = torch.where(sign.unsqueeze(0) > 0, tv > 0, tv < 0)
    sel = tv * keep
    if merge_func == "mean":
        merged = sel.sum(dim=0) / torch.clamp((sel != 0).sum(dim=0).float(), min=1)
    elif merge_func == "sum":
        merged = sel.sum(dim=0)
    elif merge_func == "max":
        merged = sel.abs().max(dim=0)[0] * sign
    else:
        raise ValueError(merge_func)
    merged_flat = flat_pre + lam * merged
    out, off = {}, 0
    flat_out = {}
    for k in keys:
        n_k = pre[k].numel()
        flat_out[k] = merged_flat[off:off + n_k].reshape(pre[k].shape)
        off += n_k
    for k, p in pre.items():
        out[k] = flat_out[k] if k in flat_out else p.clone()
    return out


# ---- inputs ---------------------------------------------------------------------------------

SHAPES = {"encoder.layer0.weight": (6, 5), "encoder.layer0.bias": (5,), "encoder.ln.weight": (7,),
          "head.weight": (3, 2, 2), "embeddings.position_ids": (1, 9)}


def make_set(gen, grid, num_experts):
    """grid=True: values on a coarse dyadic grid, so sums are exact in f32 and magnitudes tie."""
    def values(shape):
        if grid:
            return torch.randint(-8, 9, shape, generator=gen).float() / 16
        return torch.randn(shape, generator=gen) * 0.5

    pre = {}
    for k, s in SHAPES.items():
        pre[k] = torch.arange(s[-1]).reshape(s).to(torch.int64) if k.endswith("position_ids") else values(s)
    experts = []
    for _ in range(num_experts):
        e = {}
        for k, v in pre.items():
            if not mergeable(v):
                e[k] = v.clone()
            elif grid:
                e[k] = v + torch.randint(-3, 4, v.shape, generator=gen).float() / 8
            else:
                e[k] = v + torch.randn(v.shape, generator=gen) * 0.1
        experts.append(e)
    return pre, experts


CASES = [
    # (name, method, options)
    ("task_arithmetic", "task_arithmetic", {"scaling_factor": 0.3}),
    ("task_arithmetic_lambda_1", "task_arithmetic", {"scaling_factor": 1.0}),
    ("simple_average", "simple_average", {}),
    ("weighted_average", "weighted_average", {"weights": [0.2, 0.3, 0.5], "normalize": False}),
    ("weighted_average_normalized", "weighted_average", {"weights": [1.0, 2.0, 5.0], "normalize": True}),
    ("ties_sum", "ties_merging", {"threshold": 20, "merge_func": "sum", "remove_keys": [], "scaling_factor": 0.3}),
    ("ties_mean", "ties_merging", {"threshold": 20, "merge_func": "mean", "remove_keys": [], "scaling_factor": 0.3}),
    ("ties_max", "ties_merging", {"threshold": 20, "merge_func": "max", "remove_keys": [], "scaling_factor": 0.3}),
    ("ties_k50_removed", "ties_merging", {"threshold": 50, "merge_func": "sum",
                                           "remove_keys": ["head.weight", "encoder\\.ln\\..*"], "scaling_factor": 0.7}),
    ("ties_k100_mean", "ties_merging", {"threshold": 100, "merge_func": "mean", "remove_keys": [], "scaling_factor": 1.0}),
    ("ties_k0_max", "ties_merging", {"threshold": 0, "merge_func": "max", "remove_keys": [], "scaling_factor": 0.5}),
]


def run_case(method, opts, pre, experts):
    if method == "task_arithmetic":
        return task_arithmetic(pre, experts, opts["scaling_factor"])
    if method == "simple_average":
        return simple_average(experts)
    if method == "weighted_average":
        return weighted_average(experts, opts["weights"], opts["normalize"])
    if method == "ties_merging":
        return ties(pre, experts, opts["threshold"], opts["merge_func"], opts["remove_keys"], opts["scaling_factor"])
    raise ValueError(method)


def main():
    gen = torch.Generator().manual_seed(20240611)
    for set_name, grid in (("grid", True), ("random", False)):
        folder = os.path.join(DATA, set_name)
        os.makedirs(folder, exist_ok=True)
        pre, experts = make_set(gen, grid, 3)
        save_safetensors(os.path.join(folder, "pretrained.safetensors"), pre)
        for i, e in enumerate(experts):
            save_safetensors(os.path.join(folder, f"expert_{i}.safetensors"), e)
        manifest = {"experts": [f"expert_{i}" for i in range(len(experts))], "cases": []}
        for name, method, opts in CASES:
            out = run_case(method, opts, pre, experts)
            save_safetensors(os.path.join(folder, f"expected_{name}.safetensors"), out)
            manifest["cases"].append({"name": name, "method": method, "options": opts})
        with open(os.path.join(folder, "cases.json"), "w") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
    print("wrote", DATA)


if __name__ == "__main__":
    main()
