"""Frozen evaluation of V-JEPA checkpoints on MovingMNIST, each beside random-init encoders of
its shape.

    python probe.py --ckpt OUT_DIR/ckpt.pt [CKPT ...]   # several: seeds of one run, mean ± std

Linear probes of pooled target-encoder tokens for the digit, its direction, speed, velocity and
position, under four poolings and the best of them; `--attentive_seeds K` adds the attentive
probe. Results go to OUT_DIR/probe/results.json; tools/tables.py sets them beside the paper's
numbers. VJ-VCR and generative checkpoints: tools/probe_vcr.py.
"""
import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
import model
import train


# ----------------------------------------------------------------------------------------------
# Linear fits, in float64 so that no answer depends on the CPU's kernels or thread count

def standardise(fit, *others):
    """Features standardised with the fitting set's per-column mean and std."""
    mean, std = fit.mean(0), fit.std(0) + 1e-6
    return [(x - mean) / std for x in (fit, *others)]


def folds(n, k, seed=0):
    """k disjoint random index sets covering range(n) (cross-validation folds)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [order[i::k] for i in range(k)]


def ridge_predict(x, y, x_new, lams):
    """Ridge, argmin 1/n |x w + b - y|^2 + lam |w|^2 (b free), in the primal form, for fewer
    features than samples. x [n, F], y [n, k], x_new [m, F] -> [len(lams), m, k]."""
    x, y, x_new = x.double(), y.double(), x_new.double()
    mean, y_mean = x.mean(0), y.mean(0)
    a = x - mean
    gram, rhs = a.T @ a, a.T @ (y - y_mean)
    eye = torch.eye(len(gram), dtype=gram.dtype)
    return torch.stack([(x_new - mean) @ torch.cholesky_solve(
        rhs, torch.linalg.cholesky(gram + len(x) * lam * eye)) + y_mean for lam in lams])


def ridge_dual(K, K_new, y, lams):
    """The same fits from inner products, K = x x^T [n, n] and K_new = x_new x^T [m, n]: the
    dual form, for more features than samples. -> [len(lams), m, k]."""
    K, K_new, y = K.double(), K_new.double(), y.double()
    n = len(K)
    rows, total = K.mean(0), K.mean()
    Kc = K - rows[:, None] - rows[None] + total  # x_c x_c^T: centring needs only the means
    Kc_new = K_new - K_new.mean(1, keepdim=True) - rows[None] + total  # (x_new - mean) x_c^T
    y_mean = y.mean(0)
    eye = torch.eye(n, dtype=K.dtype)
    return torch.stack([Kc_new @ torch.cholesky_solve(
        y - y_mean, torch.linalg.cholesky(Kc + n * lam * eye)) + y_mean for lam in lams])


RIDGE_LAMS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def ridge_cv(x, targets, x_new, lams=RIDGE_LAMS, k=3, seed=0):
    """Ridge on standardised features x [n, F] for each target ([n] or [n, t]), its penalty
    chosen by k-fold cross-validation. The targets share every factorisation; in the dual form
    every fold's Gram matrix is a block of one. -> [(predictions at x_new, penalty)]."""
    ys = [t.reshape(len(t), -1).double() for t in targets]
    y = torch.cat(ys, 1)
    owner = torch.cat([torch.full((t.shape[1],), i) for i, t in enumerate(ys)])  # column -> target
    x, x_new = standardise(x.double(), x_new.double())
    if x.shape[1] > len(x):
        K, K_new = x @ x.T, x_new @ x.T

        def solve(fit, new, lams):  # new: held-out rows of x, or None for x_new
            return ridge_dual(K[fit][:, fit], (K_new if new is None else K[new])[:, fit],
                              y[fit], lams)
    else:
        def solve(fit, new, lams):
            return ridge_predict(x[fit], y[fit], x_new if new is None else x[new], lams)
    errors = torch.zeros(len(lams), len(ys), dtype=torch.float64)
    for val in folds(len(x), k, seed):
        fit = torch.ones(len(x), dtype=torch.bool)
        fit[val] = False
        errors.index_add_(1, owner, (solve(fit, val, lams) - y[val]).pow(2).sum(1))
    best = [lams[int(i)] for i in errors.argmin(0)]
    chosen = sorted(set(best))
    preds = solve(torch.ones(len(x), dtype=torch.bool), None, chosen)
    return [(preds[chosen.index(lam)][:, owner == i].reshape(-1, *t.shape[1:]), lam)
            for i, (t, lam) in enumerate(zip(targets, best))]


def logistic_fit(x, y, classes, lam, init=None, iters=100):
    """Multinomial logistic regression, mean cross-entropy + lam / 2 |W|^2 (the bias free), by
    L-BFGS (in float32 its line search stalls on the loss's rounding). x [n, F], y [n] ->
    [F + 1, C], the last row the bias. Convex: a warm start `init` moves only the tolerance."""
    x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    w = (torch.zeros(x.shape[1], classes, dtype=torch.float64) if init is None
         else init.double().clone()).requires_grad_()
    opt = torch.optim.LBFGS([w], lr=1, max_iter=iters, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w, y) + 0.5 * lam * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(objective)
    return w.detach()


def logistic_logits(w, x):
    return x.to(w.dtype) @ w[:-1] + w[-1]


LOGISTIC_LAMS = (1e-1, 1e-2, 1e-3, 1e-4)  # strongest first: each fit warm-starts the next


def logistic_cv(x, y, classes, x_new, lams=LOGISTIC_LAMS, k=3, seed=0):
    """Logistic regression on standardised features, the penalty chosen by k-fold
    cross-validation (accuracy, ties to the stronger) -> (classes at x_new, penalty)."""
    x, x_new = standardise(x.double(), x_new.double())
    correct = torch.zeros(len(lams))
    for val in folds(len(x), k, seed):
        fit = torch.ones(len(x), dtype=torch.bool)
        fit[val] = False
        w = None
        for i, lam in enumerate(lams):
            w = logistic_fit(x[fit], y[fit], classes, lam, init=w)
            correct[i] += (logistic_logits(w, x[val]).argmax(1) == y[val]).sum()
    best = int(correct.argmax())
    w = None
    for lam in lams[:best + 1]:  # the same warm-start path as in cross-validation
        w = logistic_fit(x, y, classes, lam, init=w)
    return logistic_logits(w, x_new).argmax(1), lams[best]


def mean_std(values):
    """(mean, std) of a list; std 0 for a single value (the sample std, 1/(n-1), otherwise)."""
    v = torch.tensor(values, dtype=torch.float64)
    return float(v.mean()), float(v.std()) if len(v) > 1 else 0.0


def save_results(results, out_dir, start, columns):
    """results.json in out_dir, and columns {name: {measure: [mean, std]}} printed as a table."""
    results["probe_s"] = round(time.time() - start, 1)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    names = list(columns)
    lines = ["| measure | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
    for key in columns[names[0]]:
        lines.append(f"| {key} | " + " | ".join(
            "{:.4g} ± {:.2g}".format(*columns[c][key]) if key in columns[c] else "-"
            for c in names) + " |")
    print("\n".join(lines) + f"\nprobe time {results['probe_s'] / 60:.1f} min; beside the "
          f"papers' numbers: python tools/tables.py {out_dir}")


# V-JEPA (paper sec. 4, appendix D): probes of the frozen target encoder's tokens

CLASS_TASKS = ("digit", "direction")  # accuracy, multinomial logistic regression
REGRESSION_TASKS = ("speed", "velocity", "position")  # R^2, ridge regression
POOLINGS = ("mean", "max", "time", "cells")
CLASS_POOLINGS = ("mean", "max")  # logistic regression on the long vectors is slow


def probe_tasks(labels, speed_range):
    """MovingMNIST labels (one digit per clip) -> {task: (class per clip [N], classes)}: the
    digit; the initial direction in 8 sectors of 45 degrees; the speed in 4 equal bins."""
    vy, vx = labels["velocity"][:, 0].unbind(-1)
    sector = (torch.atan2(vy, vx) % (2 * math.pi) / (math.pi / 4)).long() % 8
    lo, hi = speed_range
    speed = ((labels["speed"][:, 0] - lo) / (hi - lo) * 4).long().clamp(0, 3)
    return {"digit": (labels["digits"][:, 0].long(), 10), "direction": (sector, 8),
            "speed": (speed, 4)}


def linear_targets(labels, speed_range):
    """-> {task: target}: digit and direction (classes), speed (pixels per frame), velocity
    (vy, vx) before any bounce, position (y, x) at the last frame."""
    classes = probe_tasks(labels, speed_range)
    return {"digit": classes["digit"][0], "direction": classes["direction"][0],
            "speed": labels["speed"][:, 0], "velocity": labels["velocity"][:, 0],
            "position": labels["pos"][:, 0, -1]}


def pool_tokens(tokens, grid, cells=2):
    """Tokens [B, L, D] on a (T', H', W') grid -> {pooling: [B, F]}: the mean and the max over
    all tokens (D), each time step's mean (T' D), the mean of each of cells x cells spatial
    cells per time step (T' cells^2 D)."""
    B, L, D = tokens.shape
    T, H, W = grid
    x = tokens.float().view(B, T, H, W, D)
    cell = F.adaptive_avg_pool2d(x.permute(0, 1, 4, 2, 3).reshape(B * T, D, H, W), cells)
    return {"mean": x.mean((1, 2, 3)), "max": x.amax((1, 2, 3)),
            "time": x.mean((2, 3)).flatten(1),
            "cells": cell.view(B, T, D, cells * cells).transpose(2, 3).flatten(1)}


def video_features(encoder, source, n, seed, batch=64, dtype=torch.float32, desc="encode"):
    """Pooled features of n fixed clips of `source` -> ({pooling: [n, F] float32}, labels)."""
    feats, labels = [], []
    for clips, lab in tqdm(data.fixed_chunks(source, n, seed, chunk=batch), desc=desc,
                           total=-(-n // batch), unit="batch", leave=False):
        clips = clips.expand(-1, encoder.in_chans, -1, -1, -1)  # grey -> RGB for an RGB encoder
        feats.append(pool_tokens(model.encode(encoder, clips, batch, dtype), encoder.grid))
        labels.append(lab)
    return ({k: torch.cat([f[k] for f in feats]) for k in feats[0]},
            {k: torch.cat([lab[k] for lab in labels]) for k in labels[0]})


def weights_key(encoder, spec):
    """A digest of an encoder's weights, its heads (no shape shows them) and the evaluation
    data `spec`: the name of its cached features."""
    arch = {"class": type(encoder).__name__, "input_size": list(encoder.input_size),
            "in_chans": encoder.in_chans, "heads": [b.attn.heads for b in encoder.blocks]}
    h = hashlib.sha1(json.dumps([spec, arch], sort_keys=True).encode())
    for name, t in encoder.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def cached_features(encoder, spec, sources, cache_dir, desc="encode", dtype=torch.float32):
    """{part: (pooled features, labels)} of the fit and test clips (spec[part] = (clips, seed))
    of sources[part], read from cache_dir when these weights were encoded on them in `dtype`
    before, else encoded and saved atomically: every run probes the same random inits."""
    precision = str(dtype).replace("torch.", "")
    path = os.path.join(cache_dir, f"features_{weights_key(encoder, spec)}_{precision}.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    out = {part: video_features(encoder, sources[part], *spec[part], dtype=dtype,
                                desc=f"{desc} {part}") for part in ("fit", "test")}
    os.makedirs(cache_dir, exist_ok=True)
    data.atomic_save(out, path)
    return out


def accuracy_and_se(pred, y):
    """Accuracy and its binomial standard error sqrt(p (1 - p) / m)."""
    p = float((pred == y).float().mean())
    return p, math.sqrt(p * (1 - p) / len(y))


def r2_and_se(pred, y):
    """R^2 = 1 - MSE / Var(y), averaged over y's columns, and its standard error from the
    spread of the per-clip squared errors (the variance taken as known)."""
    y2, p2 = y.reshape(len(y), -1).double(), pred.reshape(len(y), -1).double()
    per_clip = ((p2 - y2).pow(2) / y2.var(0, unbiased=False)).mean(1)
    return 1 - float(per_clip.mean()), float(per_clip.std() / math.sqrt(len(y)))


def linear_probes(feats, targets, seed=0):
    """One encoder's probes: feats {part: {pooling: [n, F]}}, targets {part: {task: target}}
    -> {pooling: {task: [score, standard error, penalty]}}."""
    fit, test, y_fit, y_test = feats["fit"], feats["test"], targets["fit"], targets["test"]
    out = {}
    for pooling in POOLINGS:
        regs = ridge_cv(fit[pooling], [y_fit[t] for t in REGRESSION_TASKS], test[pooling],
                        seed=seed)
        out[pooling] = {task: [*r2_and_se(pred, y_test[task]), lam]
                        for task, (pred, lam) in zip(REGRESSION_TASKS, regs)}
        for task in CLASS_TASKS if pooling in CLASS_POOLINGS else ():
            classes = int(max(y_fit[task].max(), y_test[task].max())) + 1
            pred, lam = logistic_cv(fit[pooling], y_fit[task], classes, test[pooling], seed=seed)
            out[pooling][task] = [*accuracy_and_se(pred, y_test[task]), lam]
    return out


def random_init_like(encoder, seed):
    """The same architecture with fresh weights (the fixed positional table stays)."""
    fresh = copy.deepcopy(encoder)
    torch.manual_seed(seed)
    model.init_weights(fresh, fresh.blocks)
    return fresh.eval()


def compare(trained, random, se):
    """Scores of the trained runs and of the random inits, the trained runs' standard errors
    -> summary. The combined std adds the trained spread over seeds (one run: its standard
    error) and the random inits' in quadrature; the gap is counted in it."""
    t_mean, t_std = mean_std(trained)
    r_mean, r_std = mean_std(random)
    combined = math.hypot(t_std if len(trained) > 1 else max(se), r_std)
    gap = t_mean - r_mean
    return {"trained": [round(t_mean, 4), round(t_std, 4)], "random": [round(r_mean, 4),
            round(r_std, 4)], "se": round(max(se), 4), "gap": round(gap, 4),
            "combined_std": round(combined, 4),
            "gap_over_std": round(gap / combined, 1) if combined > 0 else None}


def best_readout(runs):
    """Per task, the trained encoder's best pooling (highest mean over seeds) against the best
    readout of any random init (the maximum over inits and poolings, not flattered). runs:
    {"trained" | "random_init": [{pooling: {task: [score, standard error, ...]}}]}
    -> {task: comparison, plus the two poolings and the random best's standard error}."""
    out = {}
    for task in runs["trained"][0][POOLINGS[0]]:
        pools = [p for p in POOLINGS if task in runs["trained"][0][p]]
        trained = {p: [r[p][task] for r in runs["trained"]] for p in pools}
        t_pool = max(pools, key=lambda p: mean_std([s[0] for s in trained[p]])[0])
        randoms = runs["random_init"]
        r_pool, r_init = max(((p, i) for p in pools for i in range(len(randoms))),
                             key=lambda pi: randoms[pi[1]][pi[0]][task][0])
        best = randoms[r_init][r_pool][task]
        # the random side's spread: over inits at its best pooling (one init: its standard error)
        r_std = mean_std([r[r_pool][task][0] for r in randoms])[1] if len(randoms) > 1 else best[1]
        c = compare([s[0] for s in trained[t_pool]], [best[0]], [s[1] for s in trained[t_pool]])
        combined = math.hypot(c["combined_std"], r_std)  # compare's is the trained side's alone
        out[task] = {**c, "random": [round(best[0], 4), round(r_std, 4)],
                     "combined_std": round(combined, 4),
                     "gap_over_std": round(c["gap"] / combined, 1) if combined > 0 else None,
                     "pooling": t_pool, "random_pooling": r_pool, "random_se": round(best[1], 4)}
    return out


def probe_sets(config, encoder, a):
    """-> (clip sources {"fit": training digits, "test": held-out digits}, one digit per clip at
    the encoder's clip size, looking as in training; spec: what the features depend on)."""
    digits = data.load_digits(a.mnist_dir or config.get("mnist_dir", ""))
    T, H, _ = encoder.input_size
    look = {"normalise": config.get("normalise", False)}
    sources = {part: data.MovingMNIST(*data.split_digits(*digits, split), T, H, num_digits=1,
                                      **look)
               for part, split in (("fit", "train"), ("test", "val"))}
    spec = {"fit": (a.fit_clips, 1), "test": (a.test_clips, 2),
            "digits": [len(digits[0]), int(digits[0][:100].float().sum())], **look}
    return sources, spec


def load_encoder(path, which="target_encoder"):
    """A V-JEPA checkpoint's encoder, frozen -> (encoder, its training config; {} for a release
    file); a VJ-VCR or generative checkpoint is an error that names tools/probe_vcr.py."""
    ckpt = data.read_checkpoint(path, which)
    objective = (ckpt.get("config") or {}).get("objective", "vjepa")
    if objective not in ("vjepa", "pixel"):
        raise ValueError(f"{path} is a {objective} checkpoint; probe it with "
                         "python tools/probe_vcr.py --ckpt ...")
    return model.from_checkpoint(ckpt, which, path)[0], ckpt.get("config") or {}


class AttentiveProbe(nn.Module):
    """V-JEPA's attentive probe (appendix D.1): one learnable query attends over the frozen
    tokens, q <- q + proj(CrossAttn(q, LN(tokens))), q <- q + MLP(LN(q)), logits = Linear(q).
    [B, N, D] -> [B, classes]."""

    def __init__(self, dim, heads, classes, mlp_ratio=4.0):
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)  # on the tokens only, not on the query
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # rows [k | v]
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = model.MLP(dim, int(dim * mlp_ratio))
        self.head = nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.query, std=0.02)
        # a head that starts near zero (as MAE's linear probe): no steps spent undoing logits
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens):
        B, N, D = tokens.shape
        h = self.heads
        q = self.q(self.query).view(1, h, 1, D // h).expand(B, -1, -1, -1)  # (B, h, 1, Dh)
        kv = self.kv(self.norm1(tokens)).view(B, N, 2, h, D // h).permute(2, 0, 3, 1, 4)
        x = model.attention(q, kv[0], kv[1]).reshape(B, 1, D)  # heads side by side
        x = self.query + self.proj(x)
        x = x + self.mlp(self.norm2(x))
        return self.head(x[:, 0])


def fit_probes(probes, tokens, labels, epochs=20, batch=16, lr=1e-3, weight_decay=0.01, seed=0,
               dtype=torch.float32):
    """Train probes side by side (disjoint parameters: as each alone) on frozen tokens
    [N, L, D], labels one [N] tensor per probe: AdamW, no decay on 1-D parameters, LR cosine
    from lr to 0."""
    opt = torch.optim.AdamW(model.param_groups(probes), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    per_epoch = -(-len(tokens) // batch)
    total = epochs * per_epoch
    probes.train()
    for step in tqdm(range(total), desc="probes", unit="step", leave=False):
        if step % per_epoch == 0:
            order = torch.randperm(len(tokens), generator=g)
        i = order[step % per_epoch * batch:(step % per_epoch + 1) * batch]
        for group in opt.param_groups:
            group["lr"] = train.warmup_cosine(step, total, 0, 0.0, lr, 0.0)
        with model.autocast(torch.device("cpu"), dtype):
            x = tokens[i].to(dtype)
            loss = sum(F.cross_entropy(p(x).float(), y[i]) for p, y in zip(probes, labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probes.eval()


@torch.no_grad()
def probabilities(probe, tokens, batch=256, dtype=torch.float32):
    """A probe's class probabilities for tokens [N, L, D] -> [N, classes]."""
    with model.autocast(torch.device("cpu"), dtype):
        logits = torch.cat([probe(t.to(dtype)) for t in tokens.split(batch)])
    return logits.float().softmax(-1)


def attentive_probes(encoders, randoms, sources, a):
    """The attentive probe (digit, direction, speed in 4 bins) of each trained and random-init
    encoder, a.attentive_seeds probe seeds each, fitted on a.attentive_fit_clips clips
    -> ({task: comparison (`compare`), with probe_seed_std: the largest std over probe seeds of
    one encoder, [trained, random init]}, {"trained" | "random_init": [{task: [accuracy, se]}]}
    encoder by encoder, probe seed by probe seed)."""
    sets = []
    for part, n, seed in (("fit", a.attentive_fit_clips, 1), ("test", a.test_clips, 2)):
        clips, labels = data.fixed_set(sources[part], n, seed=seed)
        sets.append((clips, probe_tasks(labels, sources[part].speed)))
    (fit, tasks_fit), (test, tasks_test) = sets
    names = list(tasks_fit)
    acc = {"trained": [], "random_init": []}
    for name, nets in (("trained", encoders), ("random_init", randoms)):
        for net in nets:
            rgb = (-1, net.in_chans, -1, -1, -1)  # grey digits in every channel
            fit_tokens, test_tokens = (model.encode(net, c.expand(*rgb), dtype=a.dtype).to(a.dtype)
                                       for c in (fit, test))
            for seed in range(a.attentive_seeds):
                torch.manual_seed(seed)  # the same probe weights for every encoder
                probes = nn.ModuleList([AttentiveProbe(net.dim, net.blocks[0].attn.heads,
                                                       tasks_fit[t][1]) for t in names])
                fit_probes(probes, fit_tokens, [tasks_fit[t][0] for t in names],
                           epochs=a.epochs, lr=a.lr, seed=seed, dtype=a.dtype)
                acc[name].append({t: accuracy_and_se(probabilities(
                    probes[j], test_tokens, dtype=a.dtype).argmax(1), tasks_test[t][0])
                    for j, t in enumerate(names)})
    k = a.attentive_seeds  # runs of one encoder are consecutive: its spread over probe seeds
    seed_std = {name: {t: max(mean_std([r[t][0] for r in runs[i:i + k]])[1]
                              for i in range(0, len(runs), k)) for t in names}
                for name, runs in acc.items()}
    return {t: {**compare([r[t][0] for r in acc["trained"]], [r[t][0] for r in acc["random_init"]],
                          [r[t][1] for r in acc["trained"]]),
                "probe_seed_std": [round(seed_std[n][t], 4) for n in acc]} for t in names}, acc


def probe_vjepa(a):
    """V-JEPA checkpoints, the seeds of one run: the linear probes of each and of
    a.random_inits random-init encoders, compared; with a.attentive_seeds the attentive probe."""
    start = time.time()
    encoders, configs = zip(*[load_encoder(c) for c in a.ckpt])  # each file read once
    config = configs[0]
    shapes = {tuple(e.input_size) + (e.dim, len(e.blocks)) for e in encoders}
    if len(shapes) > 1:
        raise ValueError(f"--ckpt: the checkpoints are of different architectures {shapes}; "
                         "seeds of one run are expected")
    run_dir = os.path.dirname(os.path.abspath(a.ckpt[0]))
    out_dir = a.out_dir or os.path.join(run_dir, "probe")
    os.makedirs(out_dir, exist_ok=True)
    sources, spec = probe_sets(config, encoders[0], a)
    cache = a.cache_dir or os.path.join(run_dir, "..", "feature_cache")
    randoms = [random_init_like(encoders[0], 1000 + i) for i in range(a.random_inits)]
    runs = {"trained": [], "random_init": []}
    for name, nets in (("trained", encoders), ("random_init", randoms)):
        for i, net in enumerate(nets):
            feats = cached_features(net, spec, sources, cache, f"{name} {i}", a.dtype)
            targets = {p: linear_targets(feats[p][1], sources[p].speed) for p in feats}
            runs[name].append(linear_probes({p: feats[p][0] for p in feats}, targets))
    def scores(name, pool, task, j=0):  # j: 0 the score, 1 its standard error
        return [s[pool][task][j] for s in runs[name]]

    summary = {pool: {task: compare(scores("trained", pool, task),
                                    scores("random_init", pool, task),
                                    scores("trained", pool, task, 1))
                      for task in runs["trained"][0][pool]} for pool in POOLINGS}
    results = {"ckpt": a.ckpt, "preset": config.get("preset", "release"),
               "objective": config.get("objective", "vjepa"), "mask": config.get("mask", ""),
               "token_vcr": config.get("token_vcr", 0.0), "fit_clips": a.fit_clips,
               "test_clips": a.test_clips, "random_inits": a.random_inits, "linear": summary,
               "linear_runs": runs, "best": best_readout(runs)}
    if a.attentive_seeds:
        results["attentive"], results["attentive_runs"] = attentive_probes(encoders, randoms,
                                                                          sources, a)
    rows = {f"{t} ({p})": c for p in POOLINGS for t, c in summary[p].items()}
    rows.update({f"{t} (best: {c['pooling']} / {c['random_pooling']})": c
                 for t, c in results["best"].items()})
    rows.update({f"{t} (attentive)": c for t, c in results.get("attentive", {}).items()})
    save_results(results, out_dir, start, {name: {k: f(c) for k, c in rows.items()} for name, f in (
        ("trained", lambda c: c["trained"]), ("random init", lambda c: c["random"]),
        ("gap ± combined std", lambda c: [c["gap"], c["combined_std"]]))})
    return results


def linear_probe_arguments(p):
    """The linear probes' flags, shared with tools/curve.py; --dtype: the encoders' precision."""
    p.add_argument("--fit_clips", type=int, default=5000, help="clips the probes are fitted on")
    p.add_argument("--test_clips", type=int, default=2500, help="held-out clips scored")
    p.add_argument("--random_inits", type=int, default=3, help="random-init networks beside")
    p.add_argument("--cache_dir", default="", help="where encoded features are kept "
                   "(default: feature_cache/ beside the run's folder)")
    p.add_argument("--mnist_dir", default="")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                   help="autocast precision (auto: bf16 where the CPU multiplies in it natively)")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", nargs="+", help="checkpoint(s); several: seeds of one run")
    linear_probe_arguments(p)
    p.add_argument("--attentive_seeds", type=int, default=0,
                   help="also the attentive probe, over this many probe seeds")
    # the schedule with the smallest std over probe seeds (tools/attentive_sweep.py; results 3)
    p.add_argument("--attentive_fit_clips", type=int, default=2048,
                   help="clips the attentive probe is trained on")
    p.add_argument("--epochs", type=int, default=10, help="attentive probe: training epochs")
    p.add_argument("--lr", type=float, default=3e-3, help="attentive probe: peak LR")
    p.add_argument("--out_dir", default="", help="default: the first checkpoint's folder/probe")
    a = p.parse_args(argv)
    a.dtype = model.pick_dtype(a.dtype, torch.device("cpu"))
    if not a.ckpt:
        raise ValueError("give --ckpt OUT_DIR/ckpt.pt [CKPT ...]")
    for path in a.ckpt:
        if not os.path.exists(path):
            raise FileNotFoundError(f"--ckpt {path} does not exist")
    return probe_vjepa(a)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
