#!/usr/bin/python3
"""The Python side of bench/clip: the same ViT-B/32-shaped CLIP vision tower as transformers'
CLIPVisionTransformer (eager attention), written in plain torch (no transformers package here), with
random weights, evaluated under torch.inference_mode(). Prints one line like the C++ benchmark.

  /usr/bin/python3 bench/clip/bench_clip_vision.py [--batch 64] [--iters 5] [--warmup 2] [--threads N]
"""
import argparse
import os
import resource
import time

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h, self.hd = h, d // h
        self.scale = self.hd ** -0.5
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.h, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.h, self.hd).transpose(1, 2)
        w = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
        return self.out_proj(torch.matmul(w, v).transpose(1, 2).reshape(b, t, d))


class Layer(nn.Module):
    def __init__(self, d, i, h):
        super().__init__()
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = Attention(d, h)
        self.fc1, self.fc2 = nn.Linear(d, i), nn.Linear(i, d)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        y = self.fc1(self.layer_norm2(x))
        return x + self.fc2(y * torch.sigmoid(1.702 * y))  # quick_gelu


class VisionTransformer(nn.Module):
    def __init__(self, d=768, i=3072, h=12, layers=12, image=224, patch=32):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(d))
        self.patch_embedding = nn.Conv2d(3, d, patch, stride=patch, bias=False)
        self.position_embedding = nn.Embedding((image // patch) ** 2 + 1, d)
        self.pre_layrnorm, self.post_layernorm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.layers = nn.ModuleList(Layer(d, i, h) for _ in range(layers))

    def forward(self, pixels):
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + self.position_embedding.weight
        x = self.pre_layrnorm(x)
        for layer in self.layers:
            x = layer(x)
        return self.post_layernorm(x[:, 0, :])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = VisionTransformer().eval()
    pixels = torch.randn(a.batch, 3, 224, 224)
    secs, cpu = [], 0.0
    with torch.inference_mode():
        for i in range(a.warmup + a.iters):
            t0, c0 = time.perf_counter(), time.process_time()
            out = model(pixels)
            s = time.perf_counter() - t0
            if i >= a.warmup:
                secs.append(s)
                cpu += time.process_time() - c0
    assert out.shape[0] == a.batch
    secs.sort()
    median = secs[len(secs) // 2]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"python images_per_s={a.batch / median:.2f} median_batch_s={median:.4f} best_batch_s={secs[0]:.4f} "
          f"cpu_s_per_batch={cpu / a.iters:.4f} peak_rss_mib={rss:.1f} threads={torch.get_num_threads()} batch={a.batch}")


if __name__ == "__main__":
    main()
