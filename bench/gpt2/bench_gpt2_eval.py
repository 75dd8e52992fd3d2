#!/usr/bin/python3
"""The Python side of bench/gpt2: GPT-2 small's GPT2ForSequenceClassification written in plain torch as
transformers' modeling_gpt2.py computes it (eager attention: q kᵀ divided by √head_dim, the causal mask
by torch.where from a tril buffer, softmax; Conv1D as addmm with W [in, out]; gelu_new; ln_f; the score
head on every position, then the logits at the token before the first pad), as
tests/gpt2/make_model_golden.py does (no transformers package here). Random weights (N(0, 0.02), layer
norms 1 and 0, biases 0), float32, under torch.inference_mode(), on random ids below the pad token (no
row padded). Prints one line like the C++ benchmark (bench_gpt2_eval.cpp).

  /usr/bin/python3 bench/gpt2/bench_gpt2_eval.py [--batch 8] [--seq 128] [--iters 5] [--warmup 2] [--threads N]
                   [--layers 12 --hidden 768 --heads 12 --vocab 50257 --positions 1024]
"""
import argparse
import math
import os
import resource
import time

import torch
from torch import nn


class Conv1D(nn.Module):
    """y = x·W + b with W stored [in, out]."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(0.0, 0.02))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        shape = x.shape[:-1] + (self.weight.size(1),)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(shape)


class Attention(nn.Module):
    def __init__(self, d, h, positions):
        super().__init__()
        self.h, self.hd = h, d // h
        self.c_attn, self.c_proj = Conv1D(d, 3 * d), Conv1D(d, d)
        tril = torch.tril(torch.ones((positions, positions), dtype=torch.bool))
        self.register_buffer("bias", tril.view(1, 1, positions, positions), persistent=False)

    def heads(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.h, self.hd).permute(0, 2, 1, 3)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (self.heads(z) for z in self.c_attn(x).split(d, dim=2))
        w = torch.matmul(q, k.transpose(-1, -2))
        w = w / torch.full([], v.size(-1) ** 0.5, dtype=w.dtype)
        causal = self.bias[:, :, :t, :t]
        w = torch.where(causal, w, torch.full([], torch.finfo(w.dtype).min, dtype=w.dtype))
        w = torch.softmax(w, dim=-1)
        a = torch.matmul(w, v).permute(0, 2, 1, 3).contiguous().view(b, t, d)
        return self.c_proj(a)


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Block(nn.Module):
    def __init__(self, d, h, positions):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
        self.attn = Attention(d, h, positions)
        self.c_fc, self.c_proj = Conv1D(d, 4 * d), Conv1D(4 * d, d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(gelu_new(self.c_fc(self.ln_2(x))))


class Gpt2ForSequenceClassification(nn.Module):
    def __init__(self, vocab, positions, d, h, layers, labels=2, pad=50256):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(positions, d)
        nn.init.normal_(self.wte.weight, 0.0, 0.02)
        nn.init.normal_(self.wpe.weight, 0.0, 0.02)
        self.h = nn.ModuleList(Block(d, h, positions) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        self.score = nn.Linear(d, labels, bias=False)
        nn.init.normal_(self.score.weight, 0.0, 0.02)
        self.pad = pad

    def forward(self, ids):
        b, t = ids.shape
        pos = torch.arange(0, t, dtype=torch.long).unsqueeze(0)
        x = self.wte(ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.score(self.ln_f(x))
        last = (torch.eq(ids, self.pad).int().argmax(-1) - 1) % t
        return logits[torch.arange(b), last]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--positions", type=int, default=1024)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Gpt2ForSequenceClassification(a.vocab, a.positions, a.hidden, a.heads, a.layers).eval()
    body = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("score."))
    ids = torch.randint(0, min(a.vocab, 50256), (a.batch, a.seq))
    secs, cpu = [], 0.0
    with torch.inference_mode():
        for i in range(a.warmup + a.iters):
            t0, c0 = time.perf_counter(), time.process_time()
            out = model(ids)
            s = time.perf_counter() - t0
            if i >= a.warmup:
                secs.append(s)
                cpu += time.process_time() - c0
    assert out.shape == (a.batch, 2) and bool(torch.isfinite(out).all())
    secs.sort()
    median = secs[len(secs) // 2]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"python tokens_per_s={a.batch * a.seq / median:.1f} median_batch_s={median:.4f} best_batch_s={secs[0]:.4f} "
          f"cpu_s_per_batch={cpu / a.iters:.4f} peak_rss_mib={rss:.1f} threads={torch.get_num_threads()} "
          f"batch={a.batch} seq={a.seq} body_params={body}")


if __name__ == "__main__":
    main()
