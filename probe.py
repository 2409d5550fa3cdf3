"""Frozen evaluation of V-JEPA checkpoints on MovingMNIST, each beside random-init networks of
its shape: what the predictor forecasts, what surprises it, what the encoders' tokens carry.

    python probe.py --ckpt OUT_DIR/ckpt.pt [CKPT ...]   # several: seeds of one run, mean ± std

The forecast: R^2 of the digit's position read from the predictor's output 1..4 steps after the
context. The surprise: the share of clip pairs, equal until the context ends, whose impossible
future costs the predictor more. Linear probes of both encoders for the digit, its direction,
speed, velocity and position, under four poolings and the best of them. Writes
OUT_DIR/probe/{results.json, forecast.png}; more: tools/ (VJ-VCR's: tools/probe_vcr.py).
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import model


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


def save_results(results, out_dir, start, tables):
    """results.json in out_dir, and tables {title: {column: {row: [mean, std]}}} printed."""
    results["probe_s"] = round(time.time() - start, 1)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    for title, columns in tables.items():
        print(f"\n{title}\n| | {' | '.join(columns)} |\n|{' --- |' * (len(columns) + 1)}")
        for key in next(iter(columns.values())):
            print(f"| {key} | " + " | ".join("{:.3g} ± {:.2g}".format(*col[key]) if key in col
                                             else "-" for col in columns.values()) + " |")
    print(f"probe time {results['probe_s'] / 60:.1f} min; beside the papers' numbers: "
          f"python tools/tables.py {out_dir}")


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
    (B, L, D), (_, H, W) = tokens.shape, grid
    x = tokens.float().view(B, L // (H * W), H, W, D)  # any number of time steps T'
    T = x.shape[1]
    cell = F.adaptive_avg_pool2d(x.permute(0, 1, 4, 2, 3).reshape(B * T, D, H, W), cells)
    return {"mean": x.mean((1, 2, 3)), "max": x.amax((1, 2, 3)),
            "time": x.mean((2, 3)).flatten(1),
            "cells": cell.view(B, T, D, cells * cells).transpose(2, 3).flatten(1)}


@torch.no_grad()
def video_features(nets, source, n, seed, ctx_steps=0, batch=64, dtype=torch.float32,
                   desc="encode"):
    """Features of n fixed clips of `source` -> ({net: {pooling: [n, F]}} for the target and
    (when it is another network) the online encoder, and with ctx_steps the predictor's view,
    {"world": {"target" [n, T', F], "pred" [n, T' - c, F], "context" [n, c, F]}}, labels)."""
    feats, labels = [], []
    grid = nets["target"].grid
    for clips, lab in tqdm(data.fixed_chunks(source, n, seed, chunk=batch), desc=desc,
                           total=-(-n // batch), unit="batch", leave=False):
        clips = clips.expand(-1, nets["target"].in_chans, -1, -1, -1)  # grey -> RGB if RGB
        with model.autocast(torch.device("cpu"), dtype):
            h = nets["target"](clips).float()
            f = {"target": pool_tokens(h, grid)}
            if nets.get("online", nets["target"]) is not nets["target"]:
                f["online"] = pool_tokens(nets["online"](clips).float(), grid)
            if ctx_steps:
                pred, ctx = model.predict_future(nets["online"], nets["predictor"], clips,
                                                 ctx_steps)
                x = {"target": F.layer_norm(h, h.shape[-1:]), "pred": pred, "context": ctx}
                f["world"] = {k: pool_tokens(v, grid)["cells"].view(  # 2 x 2 cells per step
                    len(v), v.shape[1] // (grid[1] * grid[2]), -1) for k, v in x.items()}
        feats.append(f)
        labels.append(lab)
    return ({name: {k: torch.cat([f[name][k] for f in feats]) for k in feats[0][name]}
             for name in feats[0]}, {k: torch.cat([lab[k] for lab in labels]) for k in labels[0]})


def weights_key(nets, spec):
    """A digest of networks' weights, their heads (no shape shows them) and the evaluation data
    `spec`: the name of their cached features."""
    arch = {name: {"class": type(net).__name__, "input_size": list(getattr(net, "input_size", [])),
                   "in_chans": getattr(net, "in_chans", 0),
                   "heads": [m.heads for m in net.modules() if isinstance(m, model.Attention)]}
            for name, net in nets.items()}
    h = hashlib.sha1(json.dumps([spec, arch], sort_keys=True).encode())
    for name, net in sorted(nets.items()):
        for key, t in net.state_dict().items():
            h.update(f"{name}.{key}".encode())
            h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def cached_features(nets, spec, sources, cache_dir, desc="encode", dtype=torch.float32):
    """{part: (features, labels)} of the fit and test clips (spec[part] = (clips, seed)) of
    sources[part], and with spec["ctx_steps"] the predictor's surprise at spec["pairs"] clip
    pairs; read from cache_dir when these weights were run on them in `dtype` before, else
    computed and saved atomically: every run probes the same random inits."""
    precision = str(dtype).replace("torch.", "")
    path = os.path.join(cache_dir, f"features_{weights_key(nets, spec)}_{precision}.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    c = spec.get("ctx_steps", 0) if "predictor" in nets else 0
    out = {part: video_features(nets, sources[part], *spec[part], c, dtype=dtype,
                                desc=f"{desc} {part}") for part in ("fit", "test")}
    if c and spec.get("pairs"):
        frames = c * nets["target"].patch_embed.tubelet_size
        pairs = data.violation_pairs(sources["test"], spec["pairs"], 3, frames)
        out["surprise"] = surprise(nets, pairs, c, dtype)
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


# ----------------------------------------------------------------------------------------------
# The predictor as a world model: where it puts the digit, and what surprises it

VIOLATIONS = ("teleport", "identity", "pass_through", "stop")


@torch.no_grad()
def surprise(nets, pairs, ctx_steps, dtype=torch.float32, batch=64):
    """The predictor's L1 error at the future tokens (V-JEPA's loss; context = the first
    ctx_steps time steps) of each clip of pairs {"normal" | kind: [n, C, T, H, W]}, whose
    contexts, hence predictions, are the normal clips' -> {"normal" | kind: [n]}."""
    out = {k: [] for k in pairs}
    for i in range(0, len(pairs["normal"]), batch):
        x = {k: v[i:i + batch].expand(-1, nets["target"].in_chans, -1, -1, -1)
             for k, v in pairs.items()}
        with model.autocast(torch.device("cpu"), dtype):
            pred = model.predict_future(nets["online"], nets["predictor"], x["normal"],
                                        ctx_steps)[0].float()
            for k, clips in x.items():
                h = nets["target"](clips).float()[:, -pred.shape[1]:]
                out[k].append((pred - F.layer_norm(h, h.shape[-1:])).abs().mean((1, 2)))
    return {k: torch.cat(v) for k, v in out.items()}


def surprise_share(normal, violated):
    """The share of pairs whose impossible clip surprises more (ties count half: chance 0.5),
    with its binomial standard error."""
    p = float(((violated > normal).double() + 0.5 * (violated == normal).double()).mean())
    return [p, math.sqrt(p * (1 - p) / len(normal))]


def forecast_scores(fit, test, pos_fit, pos_test, ctx_steps, seed=0):
    """R^2 of the digit's position at each future step h = 1 .. T' - c: predicted (a readout of
    the target's features, fitted at every step, applied to the predictions), oracle (to the true
    future's features), persistence (to the last context step's), predicted with its own readout,
    context readout (of all context features). fit / test: {"target": [n, T', F], "pred":
    [n, T' - c, F], "context": [n, c, F]}, pos: [n, T', 2] -> ({row: [R^2 per h]}, {row:
    positions [n_test, T' - c, 2]})."""
    c, n = ctx_steps, len(pos_test)
    x_new = torch.cat([test["target"][:, c:].flatten(0, 1), test["pred"].flatten(0, 1),
                       test["target"][:, c - 1]])
    (read, _), = ridge_cv(fit["target"].flatten(0, 1), [pos_fit.flatten(0, 1)], x_new, seed=seed)
    H = pos_test.shape[1] - c
    positions = {"predicted": read[n * H:2 * n * H].view(n, H, 2),
                 "oracle": read[:n * H].view(n, H, 2),
                 "persistence": read[2 * n * H:, None].expand(-1, H, -1)}
    own = [ridge_cv(fit["pred"][:, h], [pos_fit[:, c + h]], test["pred"][:, h], seed=seed)[0][0]
           for h in range(H)]
    positions["predicted, own readout"] = torch.stack(own, 1)
    ctx = ridge_cv(fit["context"].flatten(1), list(pos_fit[:, c:].unbind(1)),
                   test["context"].flatten(1), seed=seed)
    positions["context readout"] = torch.stack([p for p, _ in ctx], 1)
    return ({row: [r2_and_se(p[:, h], pos_test[:, c + h])[0] for h in range(H)]
             for row, p in positions.items()}, positions)


def compare(trained, random, se, r_std=None):
    """Scores of the trained runs and of the random inits, the trained runs' standard errors
    -> summary. The combined std adds the trained spread over seeds (one run: its standard
    error) and the random inits' (r_std: given) in quadrature; the gap is counted in it."""
    t_mean, t_std = mean_std(trained)
    r_mean, spread = mean_std(random)
    r_std = spread if r_std is None else r_std
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
        out[task] = {**compare([s[0] for s in trained[t_pool]], [best[0]],
                               [s[1] for s in trained[t_pool]], r_std),
                     "pooling": t_pool, "random_pooling": r_pool, "random_se": round(best[1], 4)}
    return out


def probe_sets(config, encoder, a):
    """-> (clip sources {"fit": training digits, "test": held-out digits}, one digit per clip at
    the encoder's clip size, looking as in training; spec: what the features depend on)."""
    digits = data.load_digits(a.mnist_dir or config.get("mnist_dir", ""))
    T, H, _ = encoder.input_size
    look = {"normalise": config.get("normalise", False)}
    sources = {part: data.MovingMNIST(*data.split_digits(*digits, split), T, H, 1, **look)
               for part, split in (("fit", "train"), ("test", "val"))}
    spec = {"fit": (a.fit_clips, 1), "test": (a.test_clips, 2),
            "digits": [len(digits[0]), int(digits[0][:100].float().sum())], **look}
    return sources, spec


def load_networks(path):
    """A V-JEPA checkpoint's frozen networks -> ({"target", "online" (the context encoder),
    "predictor" (if it predicts features)}, its config or {}); VJ-VCR's: tools/probe_vcr.py."""
    ckpt = model.read_checkpoint(path, "target_encoder")
    config = ckpt.get("config") or {}
    if config.get("objective", "vjepa") not in ("vjepa", "pixel"):
        raise ValueError(f"{path} is a {config['objective']} checkpoint; probe it with "
                         "python tools/probe_vcr.py --ckpt ...")
    nets = dict(zip(("target", "predictor"), model.from_checkpoint(ckpt, "target_encoder", path)))
    if isinstance(ckpt.get("encoder"), dict):
        nets["online"] = model.from_checkpoint(ckpt, "encoder", path)[0]
    if nets["predictor"] is None or config.get("objective") == "pixel" or "online" not in nets:
        del nets["predictor"]  # nothing that predicts features to evaluate
    return nets, config


def summarise_forecast(trained, random):
    """Per row and horizon, mean and std over checkpoints; the random predictor's best init
    per horizon, beside its std over inits; skill = 1 - (1 - R^2) / (1 - R^2 of persistence)."""
    out = {row: [list(mean_std([r[row][h] for r in trained])) for h in range(len(v))]
           for row, v in trained[0].items()}
    out["random init (best)"] = [[max(v), mean_std(v)[1]] for v in zip(*[r["predicted"]
                                                                      for r in random])]
    out["skill over persistence"] = [list(mean_std([
        1 - (1 - r["predicted"][h]) / (1 - r["persistence"][h]) for r in trained]))
        for h in range(len(out["predicted"]))]
    return out


def draw_forecast(path, clips, true, rows, r2, scale=3):
    """forecast.png: a few test clips' last context frame with the digit's corner over the
    future steps, true (green), read from the predictions (red) and from the last context step
    (blue); right, R^2 against steps ahead for each row of the forecast table."""
    from PIL import Image, ImageDraw
    S, colours = clips.shape[-1] * scale, ["#e33", "#3c3", "#39f", "#fa0", "#c6f", "#999"]
    img = Image.new("RGB", (len(clips) * (S + 8) + 460, S + 30), "black")
    draw = ImageDraw.Draw(img)
    for i, clip in enumerate(clips):
        frame = clip[0, -2 * len(true[0]) - 1]  # the last context frame
        frame = (frame - frame.min()) / (frame.max() - frame.min() + 1e-6) * 160
        img.paste(Image.fromarray(frame.byte().numpy()).resize((S, S)), (i * (S + 8), 0))
        for pos, colour in ((true[i], "#3c3"), (rows["predicted"][i], "#e33"),
                            (rows["persistence"][i], "#39f")):
            pts = [(i * (S + 8) + (x + 14) * scale, (y + 14) * scale) for y, x in pos.tolist()]
            draw.line(pts, fill=colour, width=2)
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=colour)
    x0, w, h = len(clips) * (S + 8) + 40, 250, S - 20  # R^2 from 0 (bottom) to 1 (top)
    draw.rectangle([x0, 10, x0 + w, 10 + h], outline="#666")
    for j, (row, values) in enumerate(r2.items()):
        draw.line([(x0 + w * (k + 0.5) / len(values), 10 + h * (1 - min(1.0, max(0.0, v))))
                   for k, v in enumerate(values)], fill=colours[j % 6], width=2)
        draw.text((x0 + w + 8, 10 + 14 * j), row, fill=colours[j % 6])
    draw.text((4, S + 10), f"green: true; red: from the predictions; blue: last context step; "
              f"right: R^2 (0 to 1) at 1 to {len(true[0])} steps ahead", fill="#ccc")
    img.save(path)


def probe_vjepa(a):
    """V-JEPA checkpoints, the seeds of one run, each beside a.random_inits random-init networks
    of its shape: the linear probes of the target and the online encoder; with future or causal
    masks, the predictor's forecast of the digit and its surprise at impossible clips."""
    start = time.time()
    trained, configs = zip(*[load_networks(c) for c in a.ckpt])  # each file read once
    config, first = configs[0], trained[0]["target"]
    if len({(*n["target"].input_size, n["target"].dim, len(n["target"].blocks))
            for n in trained}) > 1:
        raise ValueError("--ckpt: the checkpoints are of different architectures; seeds of one "
                         "run are expected")
    run_dir = os.path.dirname(os.path.abspath(a.ckpt[0]))
    out_dir = a.out_dir or os.path.join(run_dir, "probe")
    os.makedirs(out_dir, exist_ok=True)
    sources, spec = probe_sets(config, first, a)
    world = config.get("mask") in ("future", "causal") and all("predictor" in n for n in trained)
    if world:
        spec.update(ctx_steps=config["mask_ctx_frames"] // config["tubelet_size"], pairs=a.pairs)
    cache = a.cache_dir or os.path.join(run_dir, "..", "feature_cache")
    pred = trained[0].get("predictor")  # random inits: the online encoder is the target (step 0)
    randoms = [{"target": (r := model.random_init_like(first, 1000 + i)), "online": r,
                **({"predictor": model.random_init_like(pred, 1001 + i)} if pred else {})}
               for i in range(a.random_inits)]
    runs = {"trained": [], "online": [], "random_init": []}  # trained: the target encoder
    worlds = {"trained": [], "random_init": []}
    for name, sets in (("trained", trained), ("random_init", randoms)):
        for i, nets in enumerate(sets):
            feats = cached_features(nets, spec, sources, cache, f"{name} {i}", a.dtype)
            targets = {p: linear_targets(feats[p][1], sources[p].speed) for p in ("fit", "test")}
            for net in ("target", "online") if name == "trained" else ("target",):
                runs[name if net == "target" else net].append(linear_probes(
                    {p: feats[p][0][net] for p in ("fit", "test")}, targets))
            if world:
                pos = [feats[p][1]["pos"][:, 0].unflatten(1, (-1, first.patch_embed.tubelet_size))
                       .mean(2) for p in ("fit", "test")]  # the digit's corner per time step
                r2, positions = forecast_scores(*[feats[p][0]["world"] for p in ("fit", "test")],
                                                *pos, spec["ctx_steps"])
                s = feats["surprise"]
                worlds[name].append({"forecast": r2, "surprise": {
                    v: surprise_share(s["normal"], s[v]) for v in VIOLATIONS}})
                if name == "trained" and i == 0:
                    picture = (positions, pos[1][:, spec["ctx_steps"]:], r2)
    results = {"ckpt": a.ckpt, "preset": config.get("preset", "release"),
               "objective": config.get("objective", "vjepa"), "mask": config.get("mask", ""),
               "token_vcr": config.get("token_vcr", 0.0), "fit_clips": a.fit_clips,
               "test_clips": a.test_clips, "random_inits": a.random_inits, "linear_runs": runs}
    tables = {}
    for net, key, prefix in (("target", "trained", ""), ("online", "online", "online_"))[
            :2 if runs["online"] else 1]:
        pair = {"trained": runs[key], "random_init": runs["random_init"]}
        results[f"{prefix}linear"] = {pool: {task: compare(
            *[[s[pool][task][0] for s in pair[n]] for n in pair], [s[pool][task][1] for s in
                                                                   runs[key]])
            for task in runs[key][0][pool]} for pool in POOLINGS}
        best = results[f"{prefix}best"] = best_readout(pair)
        rows = {f"{t} ({p})": c for p in POOLINGS for t, c in results[f"{prefix}linear"][p].items()}
        rows.update({f"{t} (best: {c['pooling']} / {c['random_pooling']})": c
                     for t, c in best.items()})
        tables[f"linear probes, {net} encoder"] = {
            "trained": {k: c["trained"] for k, c in rows.items()},
            "random init": {k: c["random"] for k, c in rows.items()},
            "gap ± combined std": {k: [c["gap"], c["combined_std"]] for k, c in rows.items()}}
    if world:
        forecast = results["forecast"] = summarise_forecast(
            [w["forecast"] for w in worlds["trained"]],
            [w["forecast"] for w in worlds["random_init"]])
        results["surprise"] = {v: compare(*[[w["surprise"][v][0] for w in worlds[n]]
                                            for n in worlds],
                                          [w["surprise"][v][1] for w in worlds["trained"]])
                               for v in VIOLATIONS}
        tables["forecast R^2 of the digit's position, steps ahead"] = {
            f"+{h + 1}": {row: v[h] for row, v in forecast.items()}
            for h in range(len(forecast["predicted"]))}
        tables["surprise: share of pairs where the impossible clip surprises more"] = {
            col: {v: c[key] for v, c in results["surprise"].items()}
            for col, key in (("trained", "trained"), ("random init", "random"))}
        clips = next(data.fixed_chunks(sources["test"], a.test_clips, 2, chunk=64))[0][:5]
        draw_forecast(os.path.join(out_dir, "forecast.png"), clips, picture[1][:5],
                      {k: v[:5] for k, v in picture[0].items()},
                      {k: [x[0] for x in v] for k, v in forecast.items() if "skill" not in k})
    save_results(results, out_dir, start, tables)
    print(verdict(results, out_dir))
    return results


def verdict(r, out_dir):
    """What the run learned, in a few lines a student can read without the tables."""
    lines = [f"What the run learned ({len(r['ckpt'])} checkpoint(s), {r['random_inits']} random "
             "inits):"]
    if "forecast" in r:
        f, h = r["forecast"], len(r["forecast"]["predicted"])
        lines.append(f"- the predictor places the digit {h} steps ({2 * h} frames) ahead at R^2 "
                     f"{f['predicted'][-1][0]:.2f} ({f['predicted, own readout'][-1][0]:.2f} with "
                     f"its own readout); the last context step {f['persistence'][-1][0]:.2f}, a "
                     f"linear readout of the context {f['context readout'][-1][0]:.2f}, the best "
                     f"random network {f['random init (best)'][-1][0]:.2f}")
        lines.append("- an impossible future surprises it more than the real one in " + ", ".join(
            f"{100 * c['trained'][0]:.0f}% of {v} pairs (random {100 * c['random'][0]:.0f}%)"
            for v, c in r["surprise"].items()) + "; chance 50%")
    for net, key in (("target", "best"), ("online", "online_best")):
        won = [t for t, c in r.get(key, {}).items() if (c["gap_over_std"] or 0) >= 2]
        lines += [f"- the {net} encoder reads {len(won)} of 5 tasks better than the best random "
                  f"network (by 2 combined stds, best readout): {', '.join(won) or 'none'}"
                  ] * (key in r)
    return "\n".join(lines + [f"picture: {out_dir}/forecast.png"] * ("forecast" in r))


def linear_probe_arguments(p):
    """The linear probes' flags, shared with tools/curve.py; --dtype: the encoders' precision."""
    p.add_argument("--fit_clips", type=int, default=2000, help="clips the probes are fitted on")
    p.add_argument("--test_clips", type=int, default=1000, help="held-out clips scored")
    p.add_argument("--random_inits", type=int, default=3, help="random-init networks beside")
    p.add_argument("--cache_dir", default="", help="encoded features (default: feature_cache/)")
    p.add_argument("--mnist_dir", default="")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", nargs="+", required=True, help="checkpoint(s); several: seeds")
    linear_probe_arguments(p)
    p.add_argument("--pairs", type=int, default=400, help="clip pairs per kind of violation")
    p.add_argument("--out_dir", default="", help="default: the first checkpoint's folder/probe")
    a = p.parse_args(argv)
    a.dtype = model.pick_dtype(a.dtype, torch.device("cpu"))
    return probe_vjepa(a)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
