#!/usr/bin/python3
"""Writes tests/sdk/data/optim_golden.json: torch.optim.Adam trajectories (with and without weight
decay) and CosineAnnealingLR learning rates, the reference for fusion::Adam and fusion::cosine_lr.

Run with Debian's interpreter (python3-torch):  /usr/bin/python3 tests/sdk/make_optim_golden.py
Each Adam case: a float64 parameter vector θ₀, the loss ½·Σ a·θ² + b·θ (so grad = a·θ + b, known in
closed form to the C++ test), a constant learning rate per step, and θ after every step.
"""
import json
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data", "optim_golden.json")


def adam_case(seed, n, steps, lr, weight_decay):
    g = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(n, generator=g, dtype=torch.float64)
    a = torch.rand(n, generator=g, dtype=torch.float64) * 2
    b = torch.randn(n, generator=g, dtype=torch.float64)
    p = theta0.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.1 * lr)
    lrs, thetas = [], []
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (a * p * p).sum() + (b * p).sum()).backward()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        thetas.append(p.detach().tolist())
    return {"theta0": theta0.tolist(), "a": a.tolist(), "b": b.tolist(), "lr": lr,
            "weight_decay": weight_decay, "steps": steps, "lrs": lrs, "thetas": thetas}


def main():
    cases = [adam_case(0, 5, 12, 0.05, 0.0), adam_case(1, 7, 9, 0.2, 0.01)]
    with open(OUT, "w") as f:
        json.dump({"torch": torch.__version__, "adam": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
