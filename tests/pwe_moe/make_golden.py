#!/usr/bin/python3
"""Golden values for fusion_pwe_moe_tests.

Run under Debian's Python (python3-torch 1.13, python3-numpy, python3-cvxopt):

    /usr/bin/python3 tests/pwe_moe/make_golden.py        # writes tests/pwe_moe/data/golden.json

What it computes, each with a small reference written here after the original code's logic
(github.com/tanganke/pareto_set_learning, FusionBench's fusion_bench/method/pwe_moe):
  * the simplex grid generate_simplex_grid(n, m) for (2, 11), (3, 11), (8, 2);
  * EPO's alpha on recorded (losses, r, C) cases: the LP of phn/solvers.py (balance and dominance
    modes) solved by GLPK through cvxopt;
  * a Pareto weight-ensembling model over a tiny 2-block "transformer" (the architecture the C++
    tests define in tiny_model.hpp): task-arithmetic merge of the non-upscaled parameters, one
    router per upscaled MLP (or MLP and attention) group, merged parameters for a preference
    vector, forward outputs, per-task cross-entropy through fixed heads, router gradients;
  * a few training steps (Adam, cosine annealing to 0.1 lr) with LS and with EPO, on recorded
    preference vectors and batches.
"""
import copy
import itertools
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.stateless import functional_call

import cvxopt
import cvxopt.glpk

cvxopt.glpk.options["msg_lev"] = "GLP_MSG_OFF"
torch.set_default_dtype(torch.float32)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "golden.json")


def tensor_json(t):
    t = t.detach().cpu()
    return {"shape": list(t.shape), "data": t.reshape(-1).tolist()}


def sd_json(sd):
    return {k: tensor_json(v) for k, v in sd.items()}


# --------------------------------------------------------------------------------------------
# Simplex grid (docs/pwe_moe.md, "Evaluation"): combinations with replacement of {0..m-1} of length n-1.
def simplex_grid(n, m):
    out = []
    for idx in itertools.combinations_with_replacement(range(m), n - 1):
        e = [0] + list(idx) + [m - 1]
        out.append([(e[i + 1] - e[i]) / (m - 1) for i in range(n)])
    return out


# --------------------------------------------------------------------------------------------
# EPO (Mahapatra & Rajan 2020) as the original's phn/solvers.py, with the LP handed to GLPK
# through cvxopt's glpk.lp in the form  min c'x  s.t.  Gx <= h,  Ax = b  (x free).
# Row order: -alpha <= 0 (T rows), then the mode's rows; the equality sum(alpha) = 1 last.
EPS_MU = 1e-4
F32_EPS = float(np.finfo(np.float32).eps)


def epo_alpha(losses, r, C):
    l = np.asarray(losses, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    m = len(l)
    rl = r * l
    l_hat = rl / rl.sum()
    nz = l_hat[l_hat > F32_EPS]
    mu = float(np.sum(nz * np.log(nz * m)))
    with np.errstate(divide="ignore"):
        a = r * (np.log(l_hat * m) - mu)
    Ca = C @ a
    G_rows = [-np.eye(m)]
    h_rows = [np.zeros(m)]
    if mu > EPS_MU:
        mode = "balance"
        J = Ca > 0
        if J.any():
            rhs = Ca.copy()
            rhs[J] = -np.inf
            rhs[rl == rl.max()] = 0.0
        else:
            rhs = np.zeros(m)
        keep = np.isfinite(rhs)
        G_rows.append(-C[keep])
        h_rows.append(-rhs[keep])
        c = -Ca
    else:
        mode = "dominance"
        G_rows.append(-Ca.reshape(1, m))
        h_rows.append(np.array([-min(Ca.max(), 0.0)]))
        G_rows.append(-C)
        h_rows.append(np.zeros(m))
        c = -(C.T @ np.ones(m))
    G = np.vstack(G_rows)
    h = np.concatenate(h_rows)
    status, x, z, y = cvxopt.glpk.lp(
        cvxopt.matrix(c), cvxopt.matrix(G), cvxopt.matrix(h),
        cvxopt.matrix(np.ones((1, m))), cvxopt.matrix(np.ones(1)))
    if status != "optimal" or x is None:
        return {"ok": False, "mode": mode, "alpha": (r / r.sum()).tolist(), "mu": mu}
    return {"ok": True, "mode": mode, "alpha": np.array(x).reshape(-1).tolist(), "mu": mu}


def epo_cases():
    rng = np.random.default_rng(1234)
    cases = []
    for T in (2, 3, 5):
        for k in range(4):
            G = rng.normal(size=(T, 7))
            if k == 3:  # a nearly conflicting pair of tasks
                G[1] = -G[0] + 0.1 * rng.normal(size=7)
            C = G @ G.T
            r = rng.dirichlet(np.ones(T))
            l = rng.uniform(0.2, 2.5, size=T)
            cases.append((l, r, C))
        # dominance: r * l nearly uniform, so 0 < mu < 1e-4 (exactly uniform would leave C a at
        # rounding-noise level, where any LP solver's feasibility verdict is arbitrary)
        G = rng.normal(size=(T, 7))
        r = rng.dirichlet(np.ones(T))
        l = 0.7 / r * (1 + 0.008 * rng.normal(size=T))
        cases.append((l, r, G @ G.T))
        # balance with every Ca <= 0 would need special C; use an aligned-gradient case too
        g = rng.normal(size=7)
        G = np.stack([g * (1 + 0.2 * i) for i in range(T)]) + 0.01 * rng.normal(size=(T, 7))
        r = rng.dirichlet(np.ones(T))
        l = rng.uniform(0.2, 2.5, size=T)
        cases.append((l, r, G @ G.T))
    out = []
    for l, r, C in cases:
        res = epo_alpha(l, r, C)
        res.update({"losses": list(map(float, l)), "r": list(map(float, r)), "C": C.tolist()})
        out.append(res)
    # An infeasible LP: dominance mode (r * l uniform) with C = -I, so C alpha >= 0 forces
    # alpha <= 0 against sum(alpha) = 1; GLPK reports no feasible point.
    l = np.array([1.0, 1.0]); r = np.array([0.5, 0.5]); C = -np.eye(2)
    res = epo_alpha(l, r, C)
    res.update({"losses": l.tolist(), "r": r.tolist(), "C": C.tolist()})
    out.append(res)
    return out


# --------------------------------------------------------------------------------------------
# The tiny architecture (tests/pwe_moe/tiny_model.hpp defines the same in C++).
D_IN, D, H, BLOCKS = 3, 4, 6, 2


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(D, H)
        self.fc2 = nn.Linear(H, D)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = nn.Linear(D, D)
        self.mlp = Mlp()

    def forward(self, h):
        h = h + torch.tanh(self.self_attn(h))
        return h + self.mlp(h)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("position_ids", torch.arange(3, dtype=torch.int64))
        self.embed = nn.Linear(D_IN, D)
        self.blocks = nn.ModuleList([Block() for _ in range(BLOCKS)])
        self.norm = nn.LayerNorm(D, eps=1e-5)

    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        return self.norm(h)


class ParetoWeightEnsembling(nn.Module):
    """The original module: base = the pretrained submodule, frozen stacked task vectors, a router
    from the preference vector to one weight per expert; merged = base + sum_t g_t tau_t."""

    def __init__(self, base, experts, init_lambda, hidden_layers):
        super().__init__()
        T = len(experts)
        if hidden_layers == 1:
            self.gate = nn.Sequential(nn.Linear(T, T))
            nn.init.normal_(self.gate[0].weight, std=0.01)
            self.gate[0].bias.data.fill_(init_lambda)
        else:
            self.gate = nn.Sequential(nn.Linear(T, 2 * T), nn.ReLU(), nn.Linear(2 * T, T))
            nn.init.normal_(self.gate[0].weight, std=0.01)
            nn.init.zeros_(self.gate[0].bias)
            nn.init.normal_(self.gate[2].weight, std=0.01)
            self.gate[2].bias.data.fill_(init_lambda)
        self.base_model = copy.deepcopy(base).requires_grad_(False)
        base_sd = self.base_model.state_dict()
        self.names = list(base_sd.keys())
        self.expert_params = nn.ParameterList([
            nn.Parameter(torch.stack([e.state_dict()[n] - base_sd[n] for e in experts]),
                         requires_grad=False) for n in self.names])
        self.pref = None
        self.cache = None

    def set_preference(self, r):
        self.pref = r
        self.cache = None

    def merged(self):
        g = self.gate(self.pref)
        base_sd = self.base_model.state_dict(keep_vars=True)
        return {n: base_sd[n] + (tv * g.view([-1] + [1] * (tv.dim() - 1))).sum(0)
                for n, tv in zip(self.names, self.expert_params)}

    def forward(self, x):
        if self.cache is None:
            self.cache = self.merged()
        return functional_call(self.base_model, self.cache, (x,))


def task_arithmetic(pre, experts, lam):
    m = copy.deepcopy(pre)
    sd = m.state_dict()
    for k in sd:
        if not sd[k].is_floating_point():
            continue
        sd[k] = sd[k] + lam * sum(e.state_dict()[k] - pre.state_dict()[k] for e in experts)
    m.load_state_dict(sd)
    return m


def build_pwe(pre, experts, init_lambda, hidden_layers, upscale_attn):
    model = task_arithmetic(pre, experts, init_lambda).requires_grad_(False)
    for i in range(BLOCKS):
        model.blocks[i].mlp = ParetoWeightEnsembling(
            pre.blocks[i].mlp, [e.blocks[i].mlp for e in experts], init_lambda, hidden_layers)
        if upscale_attn:
            model.blocks[i].self_attn = ParetoWeightEnsembling(
                pre.blocks[i].self_attn, [e.blocks[i].self_attn for e in experts], init_lambda,
                hidden_layers)
    return model


def pwe_modules(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ParetoWeightEnsembling)]


def set_pref(model, r):
    for _, m in pwe_modules(model):
        m.set_preference(r)


def router_state(model):
    out = {}
    for n, m in pwe_modules(model):
        for k, v in m.gate.state_dict().items():
            out[f"{n}.gate.{k}"] = v.clone()
    return out


def router_params(model):
    return [p for _, m in pwe_modules(model) for p in m.gate.parameters()]


def merged_state_dict(model):
    """The full parameter set of the merged model for the current preference vector."""
    sd = {}
    pwe = dict(pwe_modules(model))
    for k, v in model.state_dict().items():
        if any(k.startswith(n + ".") for n in pwe):
            continue
        sd[k] = v
    for n, m in pwe.items():
        for k, v in m.merged().items():
            sd[f"{n}.{k}"] = v
    return sd


def make_models(T):
    torch.manual_seed(0)
    pre = TinyNet()
    experts = []
    for t in range(T):
        e = copy.deepcopy(pre)
        with torch.no_grad():
            for p in e.parameters():
                p.add_(0.3 * torch.randn_like(p))
        experts.append(e)
    return pre, experts


def make_heads_and_data(T, B, steps, seed):
    g = torch.Generator().manual_seed(seed)
    classes = [3, 4, 5, 3, 4][:T]
    heads = [torch.randn(c, D, generator=g) for c in classes]
    batches = []
    for s in range(steps):
        per_task = []
        for t in range(T):
            x = torch.randn(B, D_IN, generator=g)
            y = torch.randint(0, classes[t], (B,), generator=g)
            per_task.append((x, y))
        batches.append(per_task)
    return heads, batches


def task_losses(model, heads, batch):
    return torch.stack([F.cross_entropy(model(x) @ heads[t].T, y) for t, (x, y) in enumerate(batch)])


def pwe_case(T, hidden_layers, upscale_attn, seed):
    pre, experts = make_models(T)
    torch.manual_seed(seed)
    model = build_pwe(pre, experts, 0.3, hidden_layers, upscale_attn)
    # Spread the routers beyond their N(0, 0.01) init so the test sees every weight at work.
    with torch.no_grad():
        for p in router_params(model):
            p.add_(0.2 * torch.randn_like(p))
    heads, batches = make_heads_and_data(T, 5, 1, seed + 1)
    r = torch.distributions.Dirichlet(torch.ones(T)).sample()
    set_pref(model, r)
    merged = merged_state_dict(model)
    x_all = torch.cat([x for x, _ in batches[0]])
    features = model(x_all)
    losses = task_losses(model, heads, batches[0])
    for p in router_params(model):
        p.grad = None
    loss = (r * losses).sum()
    loss.backward()
    grads = {}
    for n, m in pwe_modules(model):
        for k, p in m.gate.named_parameters():
            grads[f"{n}.gate.{k}"] = p.grad.clone()
    # Per-task router gradients (what EPO's C is made of).
    set_pref(model, r)
    per_task = []
    for t in range(T):
        set_pref(model, r)
        lt = task_losses(model, heads, batches[0])[t]
        gs = torch.autograd.grad(lt, router_params(model))
        per_task.append(torch.cat([g_.reshape(-1) for g_ in gs]))
    G = torch.stack(per_task)
    return {
        "T": T, "router_hidden_layers": hidden_layers, "upscale_attn": upscale_attn,
        "init_lambda": 0.3,
        "pretrained": sd_json(pre.state_dict()),
        "experts": [sd_json(e.state_dict()) for e in experts],
        "routers": sd_json(router_state(model)),
        "heads": [tensor_json(h) for h in heads],
        "inputs": [tensor_json(x) for x, _ in batches[0]],
        "labels": [y.tolist() for _, y in batches[0]],
        "r": r.tolist(),
        "merged": sd_json({k: v.detach() for k, v in merged.items()}),
        "features": tensor_json(features),
        "losses": losses.tolist(),
        "router_grads": sd_json(grads),
        "C": (G @ G.T).tolist(),
    }


def training_case(T, method, steps, seed):
    pre, experts = make_models(T)
    torch.manual_seed(seed)
    model = build_pwe(pre, experts, 0.3, 2, False)
    init = router_state(model)
    heads, batches = make_heads_and_data(T, 4, steps, seed + 7)
    rays = [torch.distributions.Dirichlet(torch.ones(T)).sample() for _ in range(steps)]
    lr = 1e-2
    opt = torch.optim.Adam(router_params(model), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.1 * lr)
    log = []
    for s in range(steps):
        r = rays[s]
        set_pref(model, r)
        losses = task_losses(model, heads, batches[s])
        if method == "ls":
            weights = r
            mode = "ls"
        else:
            per_task = []
            for t in range(T):
                gs = torch.autograd.grad(losses[t], router_params(model), retain_graph=True)
                per_task.append(torch.cat([g_.reshape(-1) for g_ in gs]))
            G = torch.stack(per_task)
            res = epo_alpha(losses.detach().numpy(), r.numpy(), (G @ G.T).detach().double().numpy())
            weights = torch.tensor(res["alpha"], dtype=torch.float32) * T
            mode = res["mode"]
        loss = (losses * weights).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.append({"lr": opt.param_groups[0]["lr"], "loss": loss.item(), "losses": losses.tolist(),
                    "weights": weights.tolist(), "mode": mode})
        sched.step()
    return {
        "T": T, "method": method, "steps": steps, "lr": lr,
        "pretrained": sd_json(pre.state_dict()),
        "experts": [sd_json(e.state_dict()) for e in experts],
        "routers_init": sd_json(init),
        "routers_final": sd_json(router_state(model)),
        "heads": [tensor_json(h) for h in heads],
        "batches": [[{"x": tensor_json(x), "y": y.tolist()} for x, y in b] for b in batches],
        "rays": [r.tolist() for r in rays],
        "log": log,
    }


def main():
    golden = {
        "grid": {f"{n},{m}": simplex_grid(n, m) for n, m in ((2, 11), (3, 11), (8, 2))},
        "epo": epo_cases(),
        "pwe": [pwe_case(3, 2, False, 11), pwe_case(2, 1, True, 12), pwe_case(3, 2, True, 13)],
        "train": [training_case(3, "ls", 5, 21), training_case(2, "epo", 4, 22),
                  training_case(3, "epo", 4, 23)],
        "cosine": [{"lr": 1e-2, "T_max": 10, "eta_min": 1e-3,
                    "lrs": cosine_lrs(1e-2, 10, 1e-3)}],
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(golden, f, separators=(",", ":"))
    print(OUT, os.path.getsize(OUT), "bytes;",
          "epo modes:", [c["mode"] + ("" if c["ok"] else "(failed)") for c in golden["epo"]],
          "train modes:", [[e["mode"] for e in c["log"]] for c in golden["train"]])


def cosine_lrs(lr, t_max, eta_min):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=eta_min)
    out = []
    for _ in range(t_max + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


if __name__ == "__main__":
    main()
