"""Frozen evaluation of a checkpoint on MovingMNIST.

    python probe.py --ckpt OUT_DIR/ckpt.pt

V-JEPA (objective vjepa or pixel; V-JEPA paper sec. 4 and appendix D): the frozen *target*
encoder's tokens of clips of one held-out digit feed probes for three tasks that separate
appearance from motion: the digit (10 classes), the direction of motion (8 sectors of 45
degrees) and the speed (4 bins over 1-4 pixels per frame).
- Attentive probe: one learnable query, cross-attention over the tokens (LayerNorm on the
  tokens only), a residual MLP, a linear head; AdamW, cosine LR 1e-3 -> 0, weight decay 0.01.
- Average pooling: the mean token, standardised per channel, a linear head; trained the same
  way (the paper's Table 3 compares the two).
- Multi-clip: `--segments S` cuts each video into S clips, encodes each, and concatenates
  their tokens along the token axis; `--views V` averages the softmax over V shifted views.
Every accuracy is printed next to the same probe (same initial weights, `--seed`) on a
randomly initialised encoder, with the collapse monitors (per-channel std, RankMe) of both.

VJ-VCR and generative (VJ-VCR paper, sec. 4.3 and appendix B.2), over the checkpoints of
several training seeds (`--ckpt s0/ckpt.pt s1/ckpt.pt s2/ckpt.pt`), mean ± std:

- Speed probe (Table 1): a ridge regression from the predicted target representation h~_y
  (all predicted steps' per-frame vectors, flattened) to the digit's speed, fitted on clips of
  the training digits, scored (MSE, R^2) on clips of the held-out digits; beside it the
  predict-the-mean baseline and the same probe on `--random_inits` randomly initialised
  networks of the same architecture.
- Decoder PSNR of the predicted frames: the model's own decoder when it has one, else a decoder
  trained here on the frozen predictions. RankMe of h~_y and its singular-value spectrum
  (JSON, PNG), a GIF of target frames beside decoded predicted frames (first seed).
- Models of stochastic MovingMNIST (presets switch_*; Table 2, Figure 3): z* inferred with the
  networks frozen (infer_latent.py), linear classifiers from z* to the switch psi and to the
  digit, how z* is used, and Figure 3 (figure3.png).
Results go to OUT_DIR/probe/ (OUT_DIR = the first checkpoint's folder; `--out_dir` elsewhere).

    python probe.py --table out/vjvcr out/vjvcr_dec out/generative_vcr out/generative
    python probe.py --table out/switch_none out/switch_discrete out/switch_sparse80 ...
    python probe.py --table out/laptop out/laptop_pixel out/laptop_tube out/laptop_causal

prints probed runs (folders with results.json or probe/results.json) side by side with the
paper's numbers (VJ-VCR Tables 1 and 2 with the verdict of each ordering, or V-JEPA Tables 1,
3 and 4).
"""
import argparse
import copy
import glob
import hashlib
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
import infer_latent
import losses
import model
import train


def standardise(fit, *others):
    """Features standardised with the fitting set's per-column mean and std."""
    mean, std = fit.mean(0), fit.std(0) + 1e-6
    return [(x - mean) / std for x in (fit, *others)]


def folds(n, k, seed=0):
    """k disjoint random index sets covering range(n) (cross-validation folds)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [order[i::k] for i in range(k)]


def ridge_predict(x, y, x_new, lams):
    """Ridge regression with an unpenalised intercept, one fit per penalty lam:
    w, b = argmin 1/n |x w + b - y|^2 + lam |w|^2, i.e. (x_c^T x_c + n lam I) w = x_c^T y_c on
    centred data (the primal form; for fewer features than samples).
    x: [n, F], y: [n, k], x_new: [m, F] -> predictions [len(lams), m, k]."""
    x, y, x_new = x.double(), y.double(), x_new.double()
    mean, y_mean = x.mean(0), y.mean(0)
    a = x - mean
    gram, rhs = a.T @ a, a.T @ (y - y_mean)
    eye = torch.eye(len(gram), dtype=gram.dtype)
    return torch.stack([(x_new - mean) @ torch.cholesky_solve(
        rhs, torch.linalg.cholesky(gram + len(x) * lam * eye)) + y_mean for lam in lams])


def ridge_dual(K, K_new, y, lams):
    """The same ridge regressions from inner products only (the dual form; for more features
    than samples): K = x x^T [n, n], K_new = x_new x^T [m, n]. With x_c = x - mean(x), the
    weights are w = x_c^T a with (x_c x_c^T + n lam I) a = y_c, and centring a Gram matrix needs
    only its row and overall means. -> [len(lams), m, k]."""
    K, K_new, y = K.double(), K_new.double(), y.double()
    n = len(K)
    rows, total = K.mean(0), K.mean()
    Kc = K - rows[:, None] - rows[None] + total  # x_c x_c^T
    Kc_new = K_new - K_new.mean(1, keepdim=True) - rows[None] + total  # (x_new - mean) x_c^T
    y_mean = y.mean(0)
    eye = torch.eye(n, dtype=K.dtype)
    return torch.stack([Kc_new @ torch.cholesky_solve(
        y - y_mean, torch.linalg.cholesky(Kc + n * lam * eye)) + y_mean for lam in lams])


RIDGE_LAMS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def ridge_cv(x, targets, x_new, lams=RIDGE_LAMS, k=3, seed=0):
    """Ridge regressions on standardised features x [n, F], one per target in `targets` (each
    [n] or [n, t]); each target's penalty is chosen by k-fold cross-validation (mean squared
    error) on the fitting set. The targets share every factorisation, and with more features
    than samples every fold's Gram matrix is a block of one computed once.
    -> [(predictions at x_new shaped like the target, chosen penalty)] per target."""
    ys = [t.reshape(len(t), -1).double() for t in targets]
    y = torch.cat(ys, 1)
    owner = torch.cat([torch.full((t.shape[1],), i) for i, t in enumerate(ys)])  # column -> target
    x, x_new = standardise(x.double(), x_new.double())  # float64: no answer depends on the CPU
    if x.shape[1] > len(x):  # dual
        K, K_new = x @ x.T, x_new @ x.T

        def solve(fit, new, lams):
            return ridge_dual(K[fit][:, fit], (K if new is not None else K_new)[
                new if new is not None else slice(None)][:, fit], y[fit], lams)
    else:
        def solve(fit, new, lams):
            return ridge_predict(x[fit], y[fit], x_new if new is None else x[new], lams)
    errors = torch.zeros(len(lams), len(ys), dtype=torch.float64)
    for val in folds(len(x), k, seed):
        fit = torch.ones(len(x), dtype=torch.bool)
        fit[val] = False
        sq = (solve(fit, val, lams) - y[val]).pow(2).sum(1)
        errors.index_add_(1, owner, sq)  # (lams, targets)
    best = [lams[int(i)] for i in errors.argmin(0)]
    chosen = sorted(set(best))
    preds = solve(torch.ones(len(x), dtype=torch.bool), None, chosen)
    return [(preds[chosen.index(lam)][:, owner == i].reshape(-1, *t.shape[1:]), lam)
            for i, (t, lam) in enumerate(zip(targets, best))]


def ridge_fit(x, y):
    """Ridge regression of y [n] on x [n, F] -> predict(x_new) -> [m] (the VJ-VCR speed probe)."""
    return lambda x_new: ridge_cv(x, [y], x_new)[0][0]


def logistic_fit(x, y, classes, lam, init=None, iters=100):
    """Multinomial logistic regression with an L2 penalty on the weights (not the bias),
    minimised by L-BFGS in float64: mean cross-entropy + lam / 2 |W|^2. x: [n, F], y: [n] ->
    [F + 1, C] float64 (the last row is the bias). The objective is convex, so the answer does
    not depend on `init` (a warm start) beyond L-BFGS's tolerance; in float32 the loss's
    rounding (~1e-7 of it) stalled the line search short of that tolerance, at a point that
    depended on the CPU's kernels and the thread count."""
    x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    w = (torch.zeros(x.shape[1], classes, dtype=torch.float64) if init is None
         else init.double().clone()).requires_grad_()
    opt = torch.optim.LBFGS([w], lr=1, max_iter=iters, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-10,
                            line_search_fn="strong_wolfe")

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
    """Multinomial logistic regression on standardised features, the penalty chosen by k-fold
    cross-validation (accuracy, ties to the stronger penalty) -> (predicted classes at x_new,
    chosen penalty)."""
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


def regression_scores(pred, y):
    mse = float((pred - y).pow(2).mean())
    return {"mse": round(mse, 5), "r2": round(1 - mse / float(y.var(unbiased=False)), 4)}


def psnr(recon, frames):
    """Mean over clips of 10 log10(1 / MSE) for pixels in [0, 1]. recon, frames: [B, ...]."""
    mse = (recon.float() - frames.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def spectrum(emb):
    """Singular values of an [N, d] embedding matrix (centred) and the cumulative share of
    variance that the first k directions explain."""
    s = torch.linalg.svdvals((emb - emb.mean(0)).double())
    explained = (s ** 2).cumsum(0) / (s ** 2).sum()
    return s.float(), explained.float()


def draw_spectrum(s, explained, path):
    """PNG: log singular values (left) and cumulative explained variance (right)."""
    from PIL import Image, ImageDraw

    W, H, pad = 360, 240, 30
    img = Image.new("RGB", (2 * W, H), "white")
    draw = ImageDraw.Draw(img)
    logs = torch.log10(s.clamp_min(1e-12))
    for panel, (ys, lo, hi, title) in enumerate(
            [(logs, float(logs.min()), float(logs.max()), "log10 singular value"),
             (explained, 0.0, 1.0, "cumulative explained variance")]):
        x0 = panel * W
        draw.rectangle([x0 + pad, pad, x0 + W - pad, H - pad], outline="black")
        draw.text((x0 + pad, 8), title, fill="black")
        n = len(ys)
        points = [(x0 + pad + (W - 2 * pad) * i / max(1, n - 1),
                   H - pad - (H - 2 * pad) * (float(v) - lo) / max(hi - lo, 1e-12))
                  for i, v in enumerate(ys)]
        draw.line(points, fill="blue", width=2)
        draw.text((x0 + pad, H - pad + 4), f"1 .. {n} (index)", fill="black")
    img.save(path)


def save_gif(targets, recon, path, clips=4):
    """Rows: clips; left half the target frames, right half the decoded predictions."""
    import imageio.v3 as iio

    t = targets[:clips, 0].clamp(0, 1)  # (n, T, H, W)
    r = recon[:clips, 0].clamp(0, 1)
    frames = torch.cat([torch.cat([t[i], r[i]], dim=2) for i in range(len(t))], dim=1)
    iio.imwrite(path, (frames.numpy() * 255).astype(np.uint8), duration=200, loop=0)


# V-JEPA's frozen-evaluation findings (K400 top-1, attentive probe unless noted): feature vs.
# pixel targets (Table 1), attentive vs. average pooling (Table 3), masks (Table 4).
PAPER_VJEPA = {("vjepa", "multiblock", "attentive"): "73.7 (T1, T3); 72.9 (T4)",
               ("vjepa", "multiblock", "average"): "56.7 (T3)",
               ("pixel", "multiblock", "attentive"): "68.6 (T1)",
               ("vjepa", "random_tube", "attentive"): "51.5 (T4)",
               ("vjepa", "causal", "attentive"): "61.3 (T4, causal[6])"}


def _load_results(d):
    """({}, results.json) of a probe-results folder (`--out_dir`) or of a run folder
    (OUT_DIR/probe/results.json)."""
    for path in (os.path.join(d, "results.json"), os.path.join(d, "probe", "results.json")):
        if os.path.exists(path):
            with open(path) as f:
                return {}, json.load(f)
    raise FileNotFoundError(f"{os.path.join(d, 'probe', 'results.json')} is missing: train and "
                            f"probe {d} first")


def table(out_dirs):
    """A markdown table of probed runs (each a folder with results.json or probe/results.json):
    VJ-VCR's Table 1, its Table 2 (latent models), or V-JEPA's findings."""
    runs = [r for _, r in (_load_results(d) for d in out_dirs)]
    if "linear" in runs[0]:
        return vjepa_table(runs)
    if "psi_from_target" in runs[0]["summary"]:
        return latent_table(runs)
    return vcr_table(runs)


# The paper's orderings of the findings table, (lower preset, higher preset, paper table).
# Each ordering is judged only between runs of the same token_vcr ("laptop" probed before
# token_vcr existed is laptop_vjepa).
VJEPA_ORDERINGS = [("laptop_pixel", "laptop_vjepa", "T1"), ("laptop_pixel", "laptop", "T1"),
                   ("laptop_tube", "laptop_multiblock", "T4"),
                   ("laptop_causal", "laptop_multiblock", "T4")]
# The pooling each task is read with in the findings table, fixed for every run.
HEADLINE = {"digit": "max", "direction": "max", "speed": "mean", "velocity": "time",
            "position": "cells"}


def vjepa_table(runs):
    """V-JEPA's findings: one row per probed run (mean ± std over its seeds), each task with its
    HEADLINE pooling, the random-init encoders beside it, the average-pooling (mean) digit and
    direction probes and, when measured, the attentive probe (Table 3), and the paper's K400
    number for the setting."""
    lines = ["| run | targets | masks | seeds | " + " | ".join(
        f"{t} ({p})" for t, p in HEADLINE.items()) + " | digit / direction, average pooling | "
        "digit / direction, attentive | paper K400 (attentive) |", "|" + " --- |" * 11]

    def cell(c, task):
        return f"{_fmt(task, c, 'trained')} ({_fmt(task, c, 'random')})"

    for r in runs:
        att = r.get("attentive")
        vcr = f" + token_vcr {r['token_vcr']:g}" if r.get("token_vcr") else ""
        lines.append(
            f"| {r['preset']}{vcr} | {r['objective'].replace('vjepa', 'features')} | {r['mask']} | "
            f"{len(r['ckpt'])} | " + " | ".join(cell(r["linear"][p][t], t)
                                                for t, p in HEADLINE.items())
            + " | " + " / ".join(cell(r["linear"]["mean"][t], t) for t in CLASS_TASKS)
            + " | " + (" / ".join(cell(att[t], t) for t in CLASS_TASKS) if att else "-")
            + f" | {PAPER_VJEPA.get((r['objective'], r['mask'], 'attentive'), '-')} |")
    # the paper's orderings, each task at its HEADLINE pooling: Table 1 (features above pixels,
    # same masks), Table 4 (multi-block above random-tube and causal); and Table 3 (attentive
    # above average pooling) for every run with the attentive probe
    by_preset = {r["preset"]: r for r in runs}
    checks = []
    for low, high, what in VJEPA_ORDERINGS:
        if (low in by_preset and high in by_preset and by_preset[low].get("token_vcr", 0.0)
                == by_preset[high].get("token_vcr", 0.0)):
            seeds = min(len(by_preset[low]["ckpt"]), len(by_preset[high]["ckpt"]))
            checks += [(f"{what}, {t} ({p}): {low} < {high}",
                        by_preset[low]["linear"][p][t]["trained"],
                        by_preset[high]["linear"][p][t]["trained"], seeds)
                       for t, p in HEADLINE.items()]
    for r in runs:
        if r.get("attentive"):
            checks += [(f"T3, {t}: average < attentive, {r['preset']}",
                        r["linear"]["mean"][t]["trained"], r["attentive"][t]["trained"],
                        len(r["ckpt"])) for t in CLASS_TASKS]
    if checks:
        lines += ["", "| ordering | gap | 2 x combined std | verdict |", "|" + " --- |" * 4]
        for name, low, high, seeds in checks:
            gap, combined, verdict = ordering(low, high)
            if seeds < 2:  # no spread over seeds to judge a gap against
                verdict = "not judged: one seed"
            lines.append(f"| {name} | {gap:+.4f} | {2 * combined:.4f} | {verdict} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# VJ-VCR and generative models (VJ-VCR sec. 4.3 and appendix B.2): Table 1 and Table 2, each
# over the checkpoints of several training seeds

def load_run(path, mnist_dir=""):
    """A VJ-VCR or generative checkpoint -> (its Config, its networks as one
    train.VCRObjective in eval mode). mnist_dir overrides the one it was trained with."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--ckpt {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = {"pool_grid": 1, **state["config"]}  # saved before pool_grid existed: global
    cfg = train.Config(**{**config, "mnist_dir": mnist_dir or config["mnist_dir"]})
    if cfg.objective in ("vjepa", "pixel"):
        raise ValueError(f"{path} is a V-JEPA checkpoint; this evaluates VJ-VCR and "
                         "generative ones (objective vjvcr or generative)")
    net, _, _ = train.build(cfg, None, torch.device("cpu"))
    for name in ("encoder", "predictor", "decoder"):
        if getattr(net, name) is not None:
            model.load_strict(getattr(net, name), model.from_release(state[name]),
                              f"{path} {name}")
    return cfg, net.eval()


def batch_norm_mode(net, mode):
    """A copy of `net` as it is probed. "running": eval mode, BatchNorm normalises with the
    running statistics kept in training (the default). "batch": every BatchNorm normalises
    with the statistics of the batch it sees, as in training, where the 3 context frames and
    the 12 target frames go through the encoder apart, while the running statistics average
    the two (the probe's batches are 128 clips; the weights are not changed)."""
    if mode not in ("running", "batch"):
        raise ValueError(f"--bn {mode!r}: expected 'running' or 'batch'")
    net = copy.deepcopy(net).eval()
    if mode == "batch":
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    return net


@torch.no_grad()
def predict(net, clips, batch=128, decode=True):
    """Frozen predictions for clips [N, C, T, H, W]: h~_y per target step [N, T_tgt, d] (the
    per-frame vectors: the pooled grid, flattened), and the frames the model's own decoder makes
    of them (None without a decoder, or with decode=False: decoding is most of the cost)."""
    steps, recon = [], []
    for c in clips.split(batch):
        _, pred, pred_steps = net.predict(c)
        steps.append(pred_steps)
        if decode and net.decoder is not None:
            recon.append(net.decode(pred))
    return torch.cat(steps), (torch.cat(recon) if recon else None)


def train_decoder(cfg, h, frames, steps, seed=0, batch=32, dtype=torch.float32):
    """A decoder (the encoder mirrored, model.ConvDecoder) fitted to frozen predictions
    h [N, T, d] -> frames [N, C, T, H, W]: Adam 1e-3, `steps` batches of `batch`, autocast
    to `dtype`."""
    torch.manual_seed(seed)
    dec = model.ConvDecoder(cfg.in_chans, h.shape[-1] // cfg.pool_grid ** 2,
                            img_size=cfg.img_size, grid=cfg.pool_grid)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(h), (batch,), generator=g)
        with train.autocast(torch.device("cpu"), dtype):
            loss = losses.pixel_mse(dec(h[i]), frames[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return dec.eval()


def vcr_sets(cfg, fit_clips, test_clips):
    """{"fit": (clips, labels) of the training digits, "test": of the held-out digits}, the
    same clips (seeds 1 and 2) for every run of one config."""
    digits = data.load_digits(cfg.mnist_dir)
    return {part: data.fixed_set(train.make_source(cfg, split, digits), n, seed=seed)
            for part, split, n, seed in (("fit", "train", fit_clips, 1),
                                         ("test", "val", test_clips, 2))}


def vcr_scores(cfg, net, sets, decoder_steps=None, dtype=torch.float32):
    """One network, frozen: the speed probe (ridge from the flattened predicted target
    representation h~_y to the speed, penalty by 3-fold CV; MSE and R^2 on the held-out
    digits) and RankMe of h~_y; with decoder_steps (not None) also the PSNR of the decoded
    predictions (the model's own decoder, else one trained for decoder_steps on the frozen
    predictions; on the ViT route, which has one vector per tubelet, of each tubelet's mean
    frame). -> (scores, (h~_y of the test clips [N, T * d], decoded frames, their targets)
    or None)."""
    n = cfg.mask_ctx_frames
    (fit, fit_labels), (test, test_labels) = sets["fit"], sets["test"]
    speed_fit, speed_test = fit_labels["speed"][:, 0], test_labels["speed"][:, 0]
    h_fit, _ = predict(net, fit, decode=False)
    h_test, recon = predict(net, test, decode=decoder_steps is not None)
    speed = regression_scores(ridge_fit(h_fit.flatten(1), speed_fit)(h_test.flatten(1)),
                              speed_test)
    flat = h_test.flatten(1)
    scores = {"speed_mse": speed["mse"], "speed_r2": speed["r2"],
              "rankme": round(train.rankme(flat), 2)}
    if decoder_steps is None:
        return scores, None
    y_fit, y_test = fit[:, :, n:], test[:, :, n:]
    if recon is None:
        if h_fit.shape[1] < y_fit.shape[2]:  # ViT route: one vector per tubelet of frames
            y_fit, y_test = (y.unflatten(2, (h_fit.shape[1], -1)).mean(3) for y in (y_fit, y_test))
        decoder = train_decoder(cfg, h_fit, y_fit, decoder_steps, dtype=dtype)
        with torch.no_grad():
            recon = torch.cat([decoder(h) for h in h_test.split(128)])
    scores["psnr"] = round(psnr(recon, y_test), 2)
    return scores, (flat, recon, y_test)


def summarise(runs):
    """[{key: value}] over seeds -> {key: [mean, std]} for the keys every run has a number for."""
    keys = [k for k in runs[0] if all(isinstance(r.get(k), (int, float)) for r in runs)]
    return {k: [round(v, 4) for v in mean_std([r[k] for r in runs])] for k in keys}


def training_time(ckpt):
    """Training wall time in seconds from summary.json beside a checkpoint (None if absent)."""
    path = os.path.join(os.path.dirname(os.path.abspath(ckpt)), "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("wall_s")


def probe_vcr(a):
    """`python probe.py --ckpt CKPT [CKPT ...]` for VJ-VCR and generative checkpoints (the seeds
    of one row): Table 1's measurements for each, the same for a.random_inits randomly
    initialised networks of the same architecture, mean ± std over both; models of
    switching_mnist go to `probe_latent` (Table 2). -> results dict (also results.json)."""
    start = time.time()
    runs = [load_run(c, a.mnist_dir) for c in a.ckpt]
    cfg = runs[0][0]
    kinds = {(c.preset, c.dataset) + tuple(getattr(c, k) for k in train.ARCH_KEYS)
             for c, _ in runs}
    if len(kinds) > 1:
        raise ValueError(f"--ckpt: the checkpoints differ in preset, data or architecture "
                         f"({len(kinds)} kinds); give the seeds of one run")
    out_dir = a.out_dir or os.path.join(os.path.dirname(os.path.abspath(a.ckpt[0])), "probe")
    os.makedirs(out_dir, exist_ok=True)
    if cfg.dataset == "switching_mnist":
        return probe_latent(a, runs, out_dir, start)
    if cfg.latent != "none":
        raise ValueError(f"{a.ckpt[0]} has a {cfg.latent} latent but was trained on "
                         f"{cfg.dataset}; latents are evaluated on switching_mnist")
    a.fit_clips, a.test_clips = a.fit_clips or 2048, a.test_clips or 1024
    sets = vcr_sets(cfg, a.fit_clips, a.test_clips)
    trained, pictures = [], None
    for i, (path, (c, net)) in enumerate(zip(a.ckpt, runs)):
        scores, pics = vcr_scores(c, batch_norm_mode(net, a.bn), sets, a.decoder_steps,
                                  a.dtype)
        trained.append({"ckpt": path, "seed": c.seed, **scores, "train_s": training_time(path)})
        pictures = pictures or pics
    random = []
    for i in range(a.random_inits):
        torch.manual_seed(1000 + i)
        net, _, _ = train.build(cfg, None, torch.device("cpu"))
        random.append(vcr_scores(cfg, batch_norm_mode(net, a.bn), sets)[0])
    speed_fit, speed_test = sets["fit"][1]["speed"][:, 0], sets["test"][1]["speed"][:, 0]
    n = cfg.mask_ctx_frames
    mean_frames = sets["fit"][0][:, :, n:].mean(0, keepdim=True)  # the average target clip
    results = {"ckpt": a.ckpt, "preset": cfg.preset, "objective": cfg.objective,
               "pool_grid": cfg.pool_grid, "enc_dim": cfg.enc_dim, "bn": a.bn,
               "fit_clips": a.fit_clips, "test_clips": a.test_clips,
               "random_inits": a.random_inits,
               "speed_mean_baseline": regression_scores(
                   torch.full_like(speed_test, float(speed_fit.mean())), speed_test),
               "psnr_mean_frames": round(psnr(mean_frames.expand_as(sets["test"][0][:, :, n:]),
                                              sets["test"][0][:, :, n:]), 2),
               "summary": {"trained": summarise(trained), "random_init": summarise(random)},
               "runs": trained, "random_init_runs": random}
    flat, recon, targets = pictures
    s, explained = spectrum(flat)
    with open(os.path.join(out_dir, "spectrum.json"), "w") as f:
        json.dump({"singular_values": s.tolist(), "cumulative_explained": explained.tolist()}, f)
    draw_spectrum(s, explained, os.path.join(out_dir, "spectrum.png"))
    save_gif(targets, recon, os.path.join(out_dir, "predictions.gif"))
    results["probe_s"] = round(time.time() - start, 1)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(vcr_table([results]))
    return results


# VJ-VCR Table 1, MovingMNIST: speed-probe MSE and decoder PSNR per row.
PAPER_TABLE1 = {"vjvcr": (0.04, 19.5), "vjvcr_dec": (0.04, 21.2), "generative_vcr": (0.10, 22.9),
                "generative": (0.15, 22.8)}
# The orderings Table 1 shows: (measure, the row the paper has lower, the row it has higher).
PAPER_ORDERINGS = [("speed_mse", "vjvcr", "generative_vcr"), ("speed_mse", "vjvcr", "generative"),
                   ("speed_mse", "vjvcr_dec", "generative_vcr"),
                   ("speed_mse", "vjvcr_dec", "generative"),
                   ("speed_mse", "generative_vcr", "generative"),
                   ("psnr", "vjvcr", "vjvcr_dec"), ("psnr", "vjvcr", "generative_vcr"),
                   ("psnr", "vjvcr", "generative"), ("psnr", "vjvcr_dec", "generative_vcr"),
                   ("psnr", "vjvcr_dec", "generative")]


def ordering(low, high):
    """Is the first below the second? low, high: [mean, std] over seeds -> (gap = high - low,
    combined std, verdict): "match" only where the gap exceeds twice the combined std,
    "reversed" where the opposite gap does, else "not distinguishable"."""
    gap, combined = high[0] - low[0], math.hypot(low[1], high[1])
    verdict = ("match" if gap > 2 * combined else "reversed" if -gap > 2 * combined
               else "not distinguishable")
    return gap, combined, verdict


def _ms(c, digits=3):
    return f"{c[0]:.{digits}f} ± {c[1]:.{digits}f}" if c else "-"


def _minutes(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return f"{sum(values) / len(values) / 60:.1f}" if values else "-"


def vcr_table(results):
    """VJ-VCR's Table 1 from probe results (one per row, each over its seeds): mean ± std, the
    paper's values in brackets, random init, predict-the-mean and the PSNR of the average
    target clip of the fitting set (what a decoder gets without knowing the clip) beside;
    then every ordering of
    the paper's table that both rows are there for, with its verdict (`ordering`)."""
    lines = ["| row | seeds | speed MSE (paper) | speed R^2 | random init: MSE | random init: R^2 "
             "| predict the mean: MSE | PSNR dB (paper) | PSNR, mean frames | RankMe "
             "| RankMe, random init | train min | probe min |", "|" + " --- |" * 13]
    rows, randoms = {}, {}
    for r in results:
        t, rnd = r["summary"]["trained"], r["summary"]["random_init"]
        rows[r["preset"]], randoms[r["preset"]] = t, rnd
        mse, db = PAPER_TABLE1.get(r["preset"], ("-", "-"))
        lines.append(
            f"| {r['preset']} | {len(r['runs'])} | {_ms(t['speed_mse'])} ({mse}) | "
            f"{_ms(t['speed_r2'])} | {_ms(rnd['speed_mse'])} | {_ms(rnd['speed_r2'])} | "
            f"{r['speed_mean_baseline']['mse']:.3f} | {_ms(t.get('psnr'), 1)} ({db}) | "
            f"{r.get('psnr_mean_frames', '-')} | "
            f"{_ms(t['rankme'], 1)} | {_ms(rnd['rankme'], 1)} | {_minutes(r['runs'], 'train_s')} "
            f"| {r['probe_s'] / 60 / len(r['runs']):.1f} |")
    checks = [(m, lo, hi, rows[lo][m], rows[hi][m]) for m, lo, hi in PAPER_ORDERINGS
              if lo in rows and hi in rows and m in rows[lo] and m in rows[hi]]
    checks += [("speed_mse", row, "random init", rows[row]["speed_mse"],
                randoms[row]["speed_mse"]) for row in rows]  # does training help at all?
    lines += ["", "| ordering (the paper's, then each row against random init) | gap "
              "| 2 x combined std | verdict |", "|" + " --- |" * 4]
    for m, lo, hi, low, high in checks:
        gap, combined, verdict = ordering(low, high)
        lines.append(f"| {m}: {lo} < {hi} | {gap:+.3f} | {2 * combined:.3f} | {verdict} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Latent variables (VJ-VCR sec. 4.3.2, Table 2, Figure 3): what z* knows

def linear_classifier(x_fit, y_fit, x_test, y_test, classes, weight_decay=1e-4):
    """Multinomial logistic regression on standardised features (full-batch L-BFGS, a small L2
    penalty), fitted on (x_fit, y_fit) -> accuracy on (x_test, y_test)."""
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-6
    xf, xt = (x_fit - mean) / std, (x_test - mean) / std
    layer = torch.nn.Linear(xf.shape[1], classes).double()
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(layer(xf.double()), y_fit) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((layer(xt.double()).argmax(1) == y_test).double().mean())


def overlap_picture(targets, preds, path, scale=2):
    """Figure 3 as a PNG. One row per clip: the target frames, their overlap with the decoded
    prediction (target in white/magenta, prediction in green), and the prediction alone.
    targets, preds: [N, T, H, W] in [0, 1]."""
    from PIL import Image

    t, p = targets.clamp(0, 1), preds.clamp(0, 1)
    grey = lambda x: x[..., None].expand(*x.shape, 3)  # noqa: E731
    overlap = torch.stack([t, p, t], -1)  # R and B: target, G: prediction
    gap = torch.ones(t.shape[0], t.shape[2], 4, 3)  # a white bar between frames
    rows = []
    for panel in (grey(t), overlap, grey(p)):
        for i in range(t.shape[1]):
            rows += [panel[:, i], gap]
    image = torch.cat(rows, dim=2)  # (N, H, W_total, 3)
    image = torch.cat([torch.cat([r, torch.ones(4, r.shape[1], 3)]) for r in image])
    pixels = (image.numpy() * 255).astype(np.uint8)
    Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale),
                                   Image.NEAREST).save(path)


@torch.no_grad()
def encode(net, clips, batch=256):
    """Frozen encodings of clips [N, C, T, H, W] -> (h_x [N, n, d], h_y [N, T - n, d])."""
    n, parts = net.cfg.mask_ctx_frames, []
    for c in clips.split(batch):
        parts.append((net.encoder(c[:, :, :n]), net.encoder(c[:, :, n:])))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def option_shares(z):
    """Discrete z* [N, K] one-hot -> the share of clips that chose each option, largest first."""
    return sorted((torch.bincount(z.argmax(1), minlength=z.shape[1]).double() / len(z)).tolist(),
                  reverse=True)


def codes_used_from(log_path, below=0.99):
    """The first logged training step at which fewer than `below` of the sparse codes' entries
    were zero (`z_zero` in log.jsonl): how long the codes stayed (almost) unused. None if
    never or without a log."""
    if not os.path.exists(log_path):
        return None
    with open(log_path) as f:
        log = [json.loads(line) for line in f if line.strip()]
    return next((r["step"] for r in log if r.get("z_zero", 1.0) < below), None)


def latent_scores(cfg, net, sets, a, ckpt):
    """One switching_mnist model, frozen: z* on the fit and test clips (`infer_latent.infer_z`,
    a.solver for sparse codes), linear classifiers from z* to the switch psi and to the digit,
    the same from the encoded target frames h_y (the ceiling), how z* is used, and the PSNR of
    a decoder trained on the frozen predictions -> (scores, (test targets, decoded, psi))."""
    n, out = cfg.mask_ctx_frames, {}
    for part in ("fit", "test"):
        clips, labels = sets[part]
        h_x, h_y = encode(net, clips)
        z = [None] * len(range(0, len(clips), 256))
        if cfg.latent != "none":
            z = [infer_latent.infer_z(net.predictor, hx, hy, cfg.latent, cfg.latent_lam,
                                      a.solver_steps, a.solver_tol, a.solver)
                 for hx, hy in tqdm(zip(h_x.split(256), h_y.split(256)), total=len(z),
                                    desc=f"z* ({part})")]
        with torch.no_grad():
            pred = torch.cat([net.predictor(hx, zc) for hx, zc in zip(h_x.split(256), z)])
        out[part] = dict(labels=labels, y=clips[:, :, n:], h_y=h_y, pred=pred,
                         z=torch.cat(z) if cfg.latent != "none" else None)
    fit, test = out["fit"], out["test"]
    r = {"ckpt": ckpt, "seed": cfg.seed,
         "pred_mse": round(float((test["pred"] - test["h_y"]).pow(2).mean()), 5),
         "psi_from_target": round(linear_classifier(
             fit["h_y"].flatten(1), fit["labels"]["k"], test["h_y"].flatten(1),
             test["labels"]["k"], 5), 4)}
    if cfg.latent != "none":
        r["zero_fraction"] = round(float((test["z"] == 0).double().mean()), 4)
        for key, label, classes in (("psi_accuracy", "k", 5), ("digit_accuracy", "digits", 10)):
            r[key] = round(linear_classifier(fit["z"], fit["labels"][label], test["z"],
                                             test["labels"][label], classes), 4)
    if cfg.latent == "discrete":
        r["option_shares"] = [round(s, 4) for s in option_shares(test["z"])]
        r["top_option_share"] = r["option_shares"][0]
    if cfg.latent == "sparse":
        r["all_zero_clips"] = round(float((test["z"] == 0).all(1).double().mean()), 4)
        r["codes_used_from_step"] = codes_used_from(
            os.path.join(os.path.dirname(os.path.abspath(ckpt)), "log.jsonl"))
    decoder = train_decoder(cfg, fit["pred"], fit["y"], a.decoder_steps, dtype=a.dtype)
    with torch.no_grad():
        recon = torch.cat([decoder(h) for h in test["pred"].split(256)])
    r["psnr"] = round(psnr(recon, test["y"]), 2)
    r["train_s"] = training_time(ckpt)
    return r, (test["y"], recon, test["labels"]["k"])


# Table 2 of VJ-VCR: accuracy of linear classifiers from z* to the switch psi and to the digit,
# and the share of zeros in z*.
PAPER_TABLE2 = {"switch_discrete": ("80%", "~10%", "-"), "switch_sparse80": ("94.7%", "31.6%", "80%"),
                "switch_sparse20": ("99.5%", "57.6%", "20%")}


def probe_latent(a, runs, out_dir, start):
    """Table 2 for the seeds of one switching_mnist row: `latent_scores` for each, mean ± std;
    Figure 3 (figure3.png) and a GIF from the first seed, one held-out clip per direction."""
    a.fit_clips, a.test_clips = a.fit_clips or 4096, a.test_clips or 1024
    cfg = runs[0][0]
    sets = vcr_sets(cfg, a.fit_clips, a.test_clips)
    per_run, pictures = [], None
    for path, (c, net) in zip(a.ckpt, runs):
        scores, pics = latent_scores(c, batch_norm_mode(net, a.bn), sets, a, path)
        per_run.append(scores)
        pictures = pictures or pics
    labels = sets["test"][1]
    results = {"ckpt": a.ckpt, "preset": cfg.preset, "latent": cfg.latent,
               "pool_grid": cfg.pool_grid, "bn": a.bn, "fit_clips": a.fit_clips,
               "test_clips": a.test_clips,
               "solver": (f"{a.solver}, lam {cfg.latent_lam}, {a.solver_steps} steps, "
                          f"tol {a.solver_tol}"
                          if cfg.latent == "sparse" else "argmin over the options"),
               "majority": {key: round(float(torch.bincount(labels[key]).max()) / a.test_clips,
                                       4) for key in ("k", "digits")},
               "summary": summarise(per_run), "runs": per_run}
    y, recon, k = pictures
    rows = torch.stack([(k == i).nonzero()[0, 0] for i in k.unique()])  # a clip per direction
    overlap_picture(y[rows, 0], recon[rows, 0], os.path.join(out_dir, "figure3.png"))
    save_gif(y[rows], recon[rows], os.path.join(out_dir, "predictions.gif"), clips=len(rows))
    results["probe_s"] = round(time.time() - start, 1)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(latent_table([results]))
    return results


def latent_table(results):
    """VJ-VCR's Table 2 from probe results (one per row, mean ± std over its seeds), the paper's
    values in brackets, with what limits them: how evenly the discrete options are used and
    how long the sparse codes stayed at zero in training."""
    lines = ["| row | seeds | psi accuracy (paper) | digit accuracy (paper) | zeros in z* (paper) "
             "| most used option | clips with z* = 0 | codes used from step | psi from h_y "
             "| prediction MSE | PSNR dB | train min | eval min |", "|" + " --- |" * 13]
    for r in results:
        s = r["summary"]
        paper = PAPER_TABLE2.get(r["preset"], ("-", "-", "-"))
        pct = lambda key: (f"{100 * s[key][0]:.1f} ± {100 * s[key][1]:.1f}%"  # noqa: E731
                           if key in s else "-")
        steps = ", ".join("never" if x.get("codes_used_from_step") is None
                          else str(x["codes_used_from_step"]) for x in r["runs"])
        lines.append(
            f"| {r['preset']} | {len(r['runs'])} | {pct('psi_accuracy')} ({paper[0]}) | "
            f"{pct('digit_accuracy')} ({paper[1]}) | {pct('zero_fraction')} ({paper[2]}) | "
            f"{pct('top_option_share')} | {pct('all_zero_clips')} | "
            f"{steps if r['latent'] == 'sparse' else '-'} | "
            f"{pct('psi_from_target')} | {_ms(s['pred_mse'], 4)} | {_ms(s['psnr'], 1)} | "
            f"{_minutes(r['runs'], 'train_s')} | {r['probe_s'] / 60 / len(r['runs']):.1f} |")
    majority = results[0]["majority"]
    lines.append(f"\nPredicting the majority class: psi {100 * majority['k']:.1f}%, digit "
                 f"{100 * majority['digits']:.1f}% of the held-out clips.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# V-JEPA: attentive and average-pooling probes on the frozen target encoder

def small_head(linear):
    """A classifier that starts near zero (std 0.01, as MAE's linear probe), so the few
    thousand steps of a laptop probe are not spent undoing random logits."""
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    return linear


class AttentiveProbe(nn.Module):
    """V-JEPA's attentive probe (appendix D.1): one learnable query attends over the frozen
    tokens, q <- q + proj(CrossAttn(q, LN(tokens))), q <- q + MLP(LN(q)), logits = Linear(q).
    The LayerNorm is on the tokens only, not on the query. [B, N, D] -> [B, classes]."""

    def __init__(self, dim, heads, classes, mlp_ratio=4.0):
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # rows [k | v]
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = model.MLP(dim, int(dim * mlp_ratio))
        self.head = nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.query, std=0.02)  # the layers keep PyTorch's default init
        small_head(self.head)

    def forward(self, tokens):
        B, N, D = tokens.shape
        h = self.heads
        q = self.q(self.query).view(1, h, 1, D // h).expand(B, -1, -1, -1)  # (B, h, 1, Dh)
        kv = self.kv(self.norm1(tokens)).view(B, N, 2, h, D // h).permute(2, 0, 3, 1, 4)
        x = model.attention(q, kv[0], kv[1]).reshape(B, 1, D)  # (B, 1, D): heads side by side
        x = self.query + self.proj(x)
        x = x + self.mlp(self.norm2(x))
        return self.head(x[:, 0])


def fit_probes(probes, tokens, labels, epochs=20, batch=16, lr=1e-3, weight_decay=0.01, seed=0,
               warmup=0.0, dtype=torch.float32):
    """Train probes side by side on frozen tokens [N, L, D]; labels: one [N] class tensor per
    probe. Their parameters are disjoint, so this equals training each one alone (AdamW, no
    weight decay on 1-D parameters, LR cosine from lr to 0 over all steps, after a linear
    warm-up from 0 over the first `warmup` fraction of them; the paper has none)."""
    opt = torch.optim.AdamW(train.param_groups(probes), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    per_epoch = -(-len(tokens) // batch)
    total = epochs * per_epoch
    probes.train()
    for step in tqdm(range(total), desc="probes", unit="step", leave=False):
        if step % per_epoch == 0:
            order = torch.randperm(len(tokens), generator=g)
        i = order[step % per_epoch * batch:(step % per_epoch + 1) * batch]
        for group in opt.param_groups:
            group["lr"] = train.warmup_cosine(step, total, warmup * total, 0.0, lr, 0.0)
        with train.autocast(torch.device("cpu"), dtype):
            x = tokens[i].to(dtype)
            loss = sum(F.cross_entropy(p(x).float(), y[i]) for p, y in zip(probes, labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probes.eval()


@torch.no_grad()
def view_probabilities(probe, views, batch=256, dtype=torch.float32):
    """Class probabilities averaged over test views: views = [tokens [N, L, D] per view] ->
    [N, classes], the softmax of each view's logits averaged (V-JEPA's multi-view test)."""
    probs = []
    for tokens in views:
        with train.autocast(torch.device("cpu"), dtype):
            logits = torch.cat([probe(t.to(dtype)) for t in tokens.split(batch)])
        probs.append(logits.float().softmax(-1))
    return torch.stack(probs).mean(0)


@torch.no_grad()
def encode_tokens(encoder, videos, segments=1, batch=32, dtype=torch.float32):
    """Frozen tokens of videos [N, C, S*T, H, W]: cut along time into S clips of T frames,
    each encoded alone (autocast to `dtype`), their tokens concatenated along the token axis
    -> [N, S*L, D] in `dtype`, the precision the probes then run in."""
    N = len(videos)
    clips = videos.unflatten(2, (segments, -1)).transpose(1, 2).flatten(0, 1)  # (N*S, C, T, H, W)
    out = []
    for c in tqdm(clips.split(batch), desc="encode", unit="batch", leave=False):
        with train.autocast(torch.device("cpu"), dtype):
            out.append(encoder(c).to(dtype))
    return torch.cat(out).view(N, -1, out[0].shape[-1])  # rows of a video are consecutive


def shifted_views(videos, views, shift=4):
    """Test-time spatial views of videos [N, C, T, H, W]: the video, then copies shifted by
    +shift and -shift pixels along the diagonal (zero fill) -> list of V tensors like videos."""
    if not 1 <= views <= 3:
        raise ValueError(f"--views {views}: expected 1, 2 or 3")
    H, W = videos.shape[-2:]
    padded = F.pad(videos, (shift, shift, shift, shift))
    return [padded[..., shift + o:shift + o + H, shift + o:shift + o + W]
            for o in (0, shift, -shift)[:views]]


def probe_tasks(labels, speed_range):
    """MovingMNIST labels (one digit per clip) -> the attentive probe's classification tasks
    {task: (class of each clip [N], classes)}: the digit; the direction of the initial
    velocity in 8 sectors of 45 degrees; the speed in 4 equal bins over speed_range."""
    vy, vx = labels["velocity"][:, 0].unbind(-1)
    sector = (torch.atan2(vy, vx) % (2 * math.pi) / (math.pi / 4)).long() % 8
    lo, hi = speed_range
    speed = ((labels["speed"][:, 0] - lo) / (hi - lo) * 4).long().clamp(0, 3)
    return {"digit": (labels["digits"][:, 0].long(), 10), "direction": (sector, 8),
            "speed": (speed, 4)}


# The linear probes' tasks: what the digit is, how it moves, where it is.
CLASS_TASKS = ("digit", "direction")  # accuracy, multinomial logistic regression
REGRESSION_TASKS = ("speed", "velocity", "position")  # R^2, ridge regression
POOLINGS = ("mean", "max", "time", "cells")
CLASS_POOLINGS = ("mean", "max")  # logistic regression on the long vectors is slow


def linear_targets(labels, speed_range):
    """MovingMNIST labels (one digit per clip) -> {task: target}: digit (class), direction of
    the initial velocity (class, 8 sectors), speed (pixels per frame), velocity (vy, vx) before
    any bounce, position (y, x) of the digit at the last frame."""
    classes = probe_tasks(labels, speed_range)
    return {"digit": classes["digit"][0], "direction": classes["direction"][0],
            "speed": labels["speed"][:, 0], "velocity": labels["velocity"][:, 0],
            "position": labels["pos"][:, 0, -1]}


def pool_tokens(tokens, grid, cells=2):
    """Frozen tokens [B, L, D] on a (T', H', W') grid -> {pooling: [B, F]}: the mean and the
    max over all tokens (D each), the mean of each time step side by side (T' x D), and the
    mean of each of cells x cells spatial cells per time step (T' x cells^2 x D)."""
    B, L, D = tokens.shape
    T, H, W = grid
    x = tokens.float().view(B, T, H, W, D)
    cell = F.adaptive_avg_pool2d(x.permute(0, 1, 4, 2, 3).reshape(B * T, D, H, W), cells)
    return {"mean": x.mean((1, 2, 3)), "max": x.amax((1, 2, 3)),
            "time": x.mean((2, 3)).flatten(1),
            "cells": cell.view(B, T, D, cells * cells).transpose(2, 3).flatten(1)}


@torch.no_grad()
def video_features(encoder, source, n, seed, batch=64, dtype=torch.float32, desc="encode"):
    """Pooled frozen features of n fixed clips of `source` (data.fixed_chunks with `seed`)
    -> ({pooling: [n, F] float32}, labels)."""
    feats, labels = [], []
    for clips, lab in tqdm(data.fixed_chunks(source, n, seed, chunk=batch), desc=desc,
                           total=-(-n // batch), unit="batch", leave=False):
        clips = clips.expand(-1, encoder.in_chans, -1, -1, -1)  # grey -> RGB for an RGB encoder
        with train.autocast(torch.device("cpu"), dtype):
            feats.append(pool_tokens(encoder(clips), encoder.grid))
        labels.append(lab)
    return ({k: torch.cat([f[k] for f in feats]) for k in feats[0]},
            {k: torch.cat([lab[k] for lab in labels]) for k in labels[0]})


def weights_key(encoder, spec):
    """A digest of an encoder's weights and of the evaluation data (`spec`, a dict): the name of
    its cached features, so the same weights on the same clips are encoded once."""
    arch = {"class": type(encoder).__name__, "input_size": list(encoder.input_size),
            "in_chans": encoder.in_chans, "heads": [b.attn.heads for b in encoder.blocks]}
    h = hashlib.sha1(json.dumps([spec, arch], sort_keys=True).encode())  # heads: no shape shows them
    for name, t in encoder.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def cached_features(encoder, spec, sources, cache_dir, desc="encode", dtype=torch.float32):
    """{part: (pooled features, labels)} for the fit and test clips of `spec`, read from
    cache_dir when these weights were encoded on these clips in `dtype` before, else encoded
    and saved (atomically). sources: {part: clip source}; spec[part] = (clips, seed)."""
    precision = str(dtype).replace("torch.", "")
    path = os.path.join(cache_dir, f"features_{weights_key(encoder, spec)}_{precision}.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    out = {part: video_features(encoder, sources[part], *spec[part], dtype=dtype,
                                desc=f"{desc} {part}")
           for part in ("fit", "test")}
    os.makedirs(cache_dir, exist_ok=True)
    torch.save(out, path + ".tmp")
    os.replace(path + ".tmp", path)
    return out


def accuracy_and_se(pred, y):
    """Accuracy and its binomial standard error sqrt(p (1 - p) / m)."""
    p = float((pred == y).float().mean())
    return p, math.sqrt(p * (1 - p) / len(y))


def r2_and_se(pred, y):
    """R^2 = 1 - MSE / Var(y), averaged over the columns of y, and its standard error from the
    spread of the per-clip squared errors (the variance taken as known)."""
    y2, p2 = y.reshape(len(y), -1).double(), pred.reshape(len(y), -1).double()
    var = y2.var(0, unbiased=False)
    per_clip = ((p2 - y2).pow(2) / var).mean(1)  # each column scaled by its own variance
    return 1 - float(per_clip.mean()), float(per_clip.std() / math.sqrt(len(y)))


def linear_probes(feats, targets, seed=0):
    """The deterministic probes of one encoder: feats = {part: {pooling: [n, F]}}, targets =
    {part: {task: target}} -> {pooling: {task: [score, standard error, penalty]}}; accuracy for
    CLASS_TASKS (logistic regression), R^2 for REGRESSION_TASKS (ridge regression)."""
    fit, test = feats["fit"], feats["test"]
    y_fit, y_test = targets["fit"], targets["test"]
    out = {}
    for pooling in POOLINGS:
        out[pooling] = {}
        regs = ridge_cv(fit[pooling], [y_fit[t] for t in REGRESSION_TASKS], test[pooling],
                        seed=seed)
        for task, (pred, lam) in zip(REGRESSION_TASKS, regs):
            out[pooling][task] = [*r2_and_se(pred, y_test[task]), lam]
        if pooling in CLASS_POOLINGS:
            for task in CLASS_TASKS:
                classes = int(max(y_fit[task].max(), y_test[task].max())) + 1
                pred, lam = logistic_cv(fit[pooling], y_fit[task], classes, test[pooling],
                                        seed=seed)
                out[pooling][task] = [*accuracy_and_se(pred, y_test[task]), lam]
    return out


def random_init_like(encoder, seed):
    """The same architecture with fresh weights (the positional table is fixed, so it stays)."""
    fresh = copy.deepcopy(encoder)
    torch.manual_seed(seed)
    model.init_weights(fresh, fresh.blocks)
    return fresh.eval()


def mean_std(values):
    """(mean, std) of a list; std 0 for a single value (the sample std, 1/(n-1), otherwise)."""
    v = torch.tensor(values, dtype=torch.float64)
    return float(v.mean()), float(v.std()) if len(v) > 1 else 0.0


def compare(trained, random, se):
    """One task and pooling: trained scores (one per checkpoint), random-init scores (one per
    init), the trained runs' test-set standard errors -> summary dict. The combined std adds
    the trained runs' spread over seeds (or, for one run, its test-set standard error) and the
    random inits' spread in quadrature; the gap counts in units of it."""
    t_mean, t_std = mean_std(trained)
    r_mean, r_std = mean_std(random)
    spread = t_std if len(trained) > 1 else max(se)
    combined = math.hypot(spread, r_std)
    gap = t_mean - r_mean
    return {"trained": [round(t_mean, 4), round(t_std, 4)], "random": [round(r_mean, 4),
            round(r_std, 4)], "se": round(max(se), 4), "gap": round(gap, 4),
            "gap_over_std": round(gap / combined, 1) if combined > 0 else None}


def clears(c, task):
    """The issue's bar: trained above random init by at least 5 points (0.1 R^2) and by at
    least 3 times the combined std."""
    return c["gap"] >= (0.05 if task in CLASS_TASKS else 0.1) and (c["gap_over_std"] or 0) >= 3


def probe_sets(config, encoder, a):
    """The fit (training digits) and test (held-out digits) clip sources and spec of the linear
    probes: one digit per clip, at the encoder's clip size, normalised as in training."""
    digits = data.load_digits(a.mnist_dir or config.get("mnist_dir", ""))
    T, H, _ = encoder.input_size
    sources = {part: data.MovingMNIST(*data.split_digits(*digits, split), T, H, num_digits=1,
                                      normalise=config.get("normalise", False),
                                      background=config.get("background", 0.0))
               for part, split in (("fit", "train"), ("test", "val"))}
    spec = {"fit": (a.fit_clips, 1), "test": (a.test_clips, 2),
            "digits": [len(digits[0]), int(digits[0][:100].float().sum())],
            "normalise": config.get("normalise", False),
            "background": config.get("background", 0.0)}
    return sources, spec


def read_config(path):
    """The training config saved in a checkpoint ({} for a release file)."""
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("config", {})


def probe_vjepa(a):
    """The V-JEPA evaluation of `python probe.py --ckpt` (module docstring) -> results dict."""
    start = time.time()
    encoders = [model.load_vjepa_checkpoint(c)[0] for c in a.ckpt]
    config = read_config(a.ckpt[0])
    shapes = {tuple(e.input_size) + (e.dim, len(e.blocks)) for e in encoders}
    if len(shapes) > 1:
        raise ValueError(f"--ckpt: the checkpoints are of different architectures {shapes}; "
                         "seeds of one run are expected")
    out_dir = a.out_dir or os.path.join(os.path.dirname(os.path.abspath(a.ckpt[0])), "probe")
    os.makedirs(out_dir, exist_ok=True)
    sources, spec = probe_sets(config, encoders[0], a)
    cache = a.cache_dir or os.path.join(os.path.dirname(os.path.abspath(a.ckpt[0])), "..",
                                        "feature_cache")
    randoms = [random_init_like(encoders[0], 1000 + i) for i in range(a.random_inits)]
    scores = {"trained": [], "random_init": []}
    for name, nets in (("trained", encoders), ("random_init", randoms)):
        for i, net in enumerate(nets):
            feats = cached_features(net, spec, sources, cache, f"{name} {i}", a.dtype)
            targets = {p: linear_targets(feats[p][1], sources[p].speed) for p in feats}
            scores[name].append(linear_probes({p: feats[p][0] for p in feats}, targets))
    summary = {pooling: {task: compare([s[pooling][task][0] for s in scores["trained"]],
                                       [s[pooling][task][0] for s in scores["random_init"]],
                                       [s[pooling][task][1] for s in scores["trained"]])
                         for task in scores["trained"][0][pooling]} for pooling in POOLINGS}
    results = {"ckpt": a.ckpt, "preset": config.get("preset", "release"),
               "objective": config.get("objective", "vjepa"), "mask": config.get("mask", ""),
               "token_vcr": config.get("token_vcr", 0.0),
               "fit_clips": a.fit_clips, "test_clips": a.test_clips,
               "random_inits": a.random_inits, "linear": summary, "linear_runs": scores}
    if a.attentive_seeds:
        results["attentive"] = attentive_probes(encoders, randoms, sources, a)
    results["probe_s"] = round(time.time() - start, 1)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(vjepa_summary(results))
    return results


def attentive_probes(encoders, randoms, sources, a):
    """V-JEPA's attentive probe (digit, direction, speed in 4 bins) on each trained encoder and
    each random init, for each of a.attentive_seeds probe seeds, fitted on the first
    a.attentive_fit_clips clips of the fit set -> {task: comparison} (as `compare`)."""
    sets = []
    for part, n, seed in (("fit", a.attentive_fit_clips, 1), ("test", a.test_clips, 2)):
        source = copy.copy(sources[part])
        source.num_frames *= a.segments  # videos of `segments` clips
        videos, labels = data.fixed_set(source, n, seed=seed)
        sets.append((videos, probe_tasks(labels, source.speed)))
    (fit, tasks_fit), (test, tasks_test) = sets
    names = list(tasks_fit)
    acc = {"trained": [], "random_init": []}
    for name, nets in (("trained", encoders), ("random_init", randoms)):
        for net in nets:
            rgb = (-1, net.in_chans, -1, -1, -1)  # grey digits in every channel
            fit_tokens = encode_tokens(net, fit.expand(*rgb), a.segments, dtype=a.dtype)
            test_tokens = [encode_tokens(net, v.expand(*rgb), a.segments, dtype=a.dtype)
                           for v in shifted_views(test, a.views)]
            heads = net.blocks[0].attn.heads
            for seed in range(a.attentive_seeds):
                torch.manual_seed(seed)  # the same probe weights for every encoder
                probes = nn.ModuleList([AttentiveProbe(net.dim, heads, tasks_fit[t][1])
                                        for t in names])
                fit_probes(probes, fit_tokens, [tasks_fit[t][0] for t in names],
                           epochs=a.epochs, lr=a.lr, seed=seed, dtype=a.dtype)
                acc[name].append({t: accuracy_and_se(
                    view_probabilities(probes[j], test_tokens, dtype=a.dtype).argmax(1),
                    tasks_test[t][0])
                    for j, t in enumerate(names)})
    return {t: compare([r[t][0] for r in acc["trained"]], [r[t][0] for r in acc["random_init"]],
                       [r[t][1] for r in acc["trained"]]) for t in names}


def _fmt(task, c, key):
    m, s = c[key]
    return f"{m:.1%} ± {s:.1%}" if task in CLASS_TASKS else f"{m:.3f} ± {s:.3f}"


def vjepa_summary(r):
    """The probe table of one V-JEPA result: every task and pooling, trained beside random
    init, mean ± std over checkpoints (seeds) and over random inits."""
    lines = [f"{len(r['ckpt'])} checkpoint(s) ({r['preset']}: {r['objective']} targets, "
             f"{r['mask']} masks) against {r['random_inits']} random-init encoders of the same "
             f"shape; fit on {r['fit_clips']} clips of training digits, scored on "
             f"{r['test_clips']} clips of held-out digits. Accuracy (digit, direction) or R^2; "
             "mean ± std; SE: the test-set standard error of one trained run.",
             "| task | pooling | trained | random init | SE | gap | gap / combined std | "
             "clears the bar |", "|" + " --- |" * 8]
    for task in CLASS_TASKS + REGRESSION_TASKS:
        for pooling in POOLINGS:
            c = r["linear"][pooling].get(task)
            if c is None:
                continue
            unit = 100 if task in CLASS_TASKS else 1
            lines.append(f"| {task} | {pooling} | {_fmt(task, c, 'trained')} | "
                         f"{_fmt(task, c, 'random')} | {c['se'] * unit:.3g} | "
                         f"{c['gap'] * unit:+.3g} | {c['gap_over_std']} | "
                         f"{'yes' if clears(c, task) else 'no'} |")
    if "attentive" in r:
        lines.append("\nattentive probe (mean ± std over probe seeds and checkpoints; random "
                     "init over probe seeds and inits):")
        lines.append("| task | trained | random init | gap / combined std |")
        lines.append("|" + " --- |" * 4)
        for task, c in r["attentive"].items():
            lines.append(f"| {task} | {c['trained'][0]:.1%} ± {c['trained'][1]:.1%} | "
                         f"{c['random'][0]:.1%} ± {c['random'][1]:.1%} | {c['gap_over_std']} |")
    lines.append(f"probe time {r['probe_s'] / 60:.1f} min")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Does the predictor use the context? (a V-JEPA diagnostic)

def content_share(targets):
    """The share of the targets' variance [B, N, D] that their positions do not explain: the
    mean squared deviation from each position's mean over the clips, over the mean square.
    A predictor that sees only positions can at best leave this share of the squared error."""
    centred = targets - targets.mean(0, keepdim=True)
    return float(centred.pow(2).mean() / targets.pow(2).mean())


def context_dependence(path, clips=64, seed=0):
    """`python probe.py --context OUT_DIR/ckpt.pt`: does the predictor use the context? For the
    checkpoint's weights and for the same run's initial weights (a function of its seed): the
    V-JEPA loss on fixed validation clips when the predictor gets each clip's own encoded
    context, another clip's (the batch rolled by one), or zeros; how much the predictions change
    with another clip's context (|p' - p| / |p|); the gradient norms of the encoder and the
    predictor; and the share of the targets' variance that their positions do not explain
    (`content_share`). Plus the run's last log line. When another clip's context costs nothing, the
    predictor predicts the targets from their positions alone, and the encoder, which only
    reaches the loss through the context, gets (almost) no gradient."""
    state = train.read_state(path)
    cfg = train.Config(**state["config"])
    if cfg.objective != "vjepa":
        raise ValueError(f"--context: {path} is a {cfg.objective} checkpoint; expected vjepa")
    run = train.setup(cfg)  # the initial weights
    videos, _ = data.fixed_set(train.make_source(cfg, "val"), clips, seed=12345)
    out = {"ckpt": path, "step": state["step"]}
    for when in ("init", "trained"):
        if when == "trained":
            for name, net in run.nets.items():
                model.load_strict(net, model.from_release(state[name]), f"{path} {name}")
        g = torch.Generator().manual_seed(seed)
        losses_ = {"own": [], "other_clip": [], "zeros": []}
        change, grads = [], {"encoder": 0.0, "predictor": 0.0}
        with torch.no_grad():
            share = content_share(train.feature_targets(run, videos)[1])
        for batch in videos.split(16):
            step_masks = run.sampler(len(batch), g)
            with torch.no_grad():
                targets = train.feature_targets(run, batch)[1]
            preds = {}
            for kind, edit in zip(losses_, (lambda z: z, lambda z: z.roll(1, 0),
                                            torch.zeros_like)):
                preds[kind] = run.module.predictor(
                    [edit(run.module.encoder(batch, keep=ctx)) for ctx, _ in step_masks],
                    step_masks)
                loss = getattr(losses, cfg.loss)(
                    preds[kind], [model.gather_tokens(targets, tgt) for _, tgt in step_masks])
                if kind == "own":
                    run.module.zero_grad(set_to_none=True)
                    loss.backward()
                    for name in grads:
                        grads[name] += sum(float(p.grad.pow(2).sum()) for p in getattr(
                            run.module, name).parameters() if p.grad is not None)
                losses_[kind].append(float(loss.detach()))
            change.append(float(sum((p - q).detach().norm() for p, q in zip(
                preds["own"], preds["other_clip"])) / sum(p.detach().norm() for p in preds["own"])))
        n = len(change)
        out[when] = {"loss": {k: round(sum(v) / n, 4) for k, v in losses_.items()},
                     "prediction_change": round(sum(change) / n, 4),
                     "target_content_share": round(share, 4),
                     "grad_norm": {k: round(math.sqrt(v / n), 5) for k, v in grads.items()}}
    log = os.path.join(os.path.dirname(path), "log.jsonl")
    if os.path.exists(log):
        with open(log) as f:
            last = [json.loads(line) for line in f if line.strip()][-1]
        out["last_log"] = {k: round(last[k], 4) for k in ("step", "loss", "emb_std", "rankme",
                                                          "drift_encoder", "drift_target")
                           if k in last}
    print(json.dumps(out))
    return out


# ----------------------------------------------------------------------------------------------
# Learning curve: a run's snapshots probed, beside the random-init level

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def draw_panels(panels, path, columns=3, size=(330, 210)):
    """A grid of line plots as a PNG, drawn with PIL. panels: [{"title": str, "x": [..],
    "lines": [(label, [y per x])], "band": optional (low, high) drawn as a grey band (the
    random-init level), "log_y": optional bool}]."""
    from PIL import Image, ImageDraw

    W, H = size
    pad_l, pad_r, pad_t, pad_b = 46, 10, 30, 34
    rows = -(-len(panels) // columns)
    img = Image.new("RGB", (columns * W, rows * H), "white")
    draw = ImageDraw.Draw(img)
    for k, p in enumerate(panels):
        x0, y0 = (k % columns) * W, (k // columns) * H
        xs = [float(v) for v in p["x"]]
        tf = math.log10 if p.get("log_y") else float
        ys = [tf(max(float(v), 1e-12)) if p.get("log_y") else float(v)
              for _, line in p["lines"] for v in line if v is not None]
        band = p.get("band")
        if band:
            ys += [tf(max(b, 1e-12)) if p.get("log_y") else b for b in band]
        if not ys:  # e.g. a log written before this quantity was logged
            ys = [0.0]
        lo, hi = min(ys), max(ys)
        lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-9 else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        xlo, xhi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        box = (x0 + pad_l, y0 + pad_t, x0 + W - pad_r, y0 + H - pad_b)

        def at(x, y):
            return (box[0] + (box[2] - box[0]) * (x - xlo) / (xhi - xlo),
                    box[3] - (box[3] - box[1]) * (y - lo) / (hi - lo))

        if band:
            b0, b1 = [tf(max(b, 1e-12)) if p.get("log_y") else b for b in band]
            draw.rectangle([box[0], at(0, b1)[1], box[2], at(0, b0)[1]], fill="#dddddd")
        draw.rectangle(box, outline="black")
        draw.text((x0 + pad_l, y0 + 6), p["title"], fill="black")
        for v in (lo, hi):
            label = f"{10 ** v:.3g}" if p.get("log_y") else f"{v:.3g}"
            draw.text((x0 + 2, at(0, v)[1] - 6), label, fill="black")
        draw.text((box[0], box[3] + 4), f"{xlo:g}", fill="black")
        draw.text((box[2] - 30, box[3] + 4), f"{xhi:g}", fill="black")
        for j, (label, line) in enumerate(p["lines"]):
            pts = [at(x, tf(max(float(v), 1e-12)) if p.get("log_y") else float(v))
                   for x, v in zip(xs, line) if v is not None]
            colour = COLOURS[j % len(COLOURS)]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for q in pts if len(pts) < 30 else []:
                draw.ellipse([q[0] - 2, q[1] - 2, q[0] + 2, q[1] + 2], fill=colour)
            draw.text((box[0] + 4 + 90 * j, box[3] + 16), label, fill=colour)
    img.save(path)


def learning_curve(a):
    """`python probe.py --curve OUT_DIR`: the linear probes of every snapshot of a run (the
    target encoder at step 0, ..., the last), the same probes on random-init encoders, and the
    run's log, drawn as OUT_DIR/curve.png; the numbers go to OUT_DIR/curve.json."""
    folder = os.path.join(a.curve, "snapshots")
    paths = sorted(glob.glob(os.path.join(folder, "step*.pt")))
    if not paths:
        raise FileNotFoundError(f"no snapshots in {folder}: train with --snapshot_every N")
    a.fit_clips, a.test_clips = a.fit_clips or 5000, a.test_clips or 2500
    config = read_config(paths[0])
    encoders = [model.load_vjepa_checkpoint(p)[0] for p in paths]
    steps = [torch.load(p, map_location="cpu", weights_only=False, mmap=True)["step"]
             for p in paths]
    sources, spec = probe_sets(config, encoders[0], a)
    cache = a.cache_dir or os.path.join(os.path.abspath(a.curve), "..", "feature_cache")
    randoms = [random_init_like(encoders[0], 1000 + i) for i in range(a.random_inits)]

    def scores(net, desc):
        feats = cached_features(net, spec, sources, cache, desc, a.dtype)
        targets = {p: linear_targets(feats[p][1], sources[p].speed) for p in feats}
        return linear_probes({p: feats[p][0] for p in feats}, targets)

    trained = [scores(net, f"step {s}") for net, s in zip(encoders, steps)]
    random = [scores(net, f"random init {i}") for i, net in enumerate(randoms)]
    # per task, the pooling where the last snapshot is furthest above random init
    best = {}
    for task in CLASS_TASKS + REGRESSION_TASKS:
        gaps = {pool: trained[-1][pool][task][0] - mean_std([r[pool][task][0] for r in random])[0]
                for pool in POOLINGS if task in trained[-1][pool]}
        best[task] = max(gaps, key=gaps.get)
    with open(os.path.join(a.curve, "log.jsonl")) as f:
        log = [json.loads(line) for line in f if line.strip()]
    x = [r["step"] for r in log]
    panels = [{"title": "loss", "x": x, "lines": [("loss", [r["loss"] for r in log])],
               "log_y": True},
              {"title": "emb_std (target, per channel)", "x": x,
               "lines": [("emb_std", [r["emb_std"] for r in log])]},
              {"title": "RankMe (target, per clip and step)", "x": x,
               "lines": [("rankme", [r["rankme"] for r in log])]},
              {"title": "|w - w0| / |w0|", "x": x,
               "lines": [("online", [r.get("drift_encoder") for r in log]),
                         ("target (EMA)", [r.get("drift_target") for r in log])]}]
    rows = []
    for task in CLASS_TASKS + REGRESSION_TASKS:
        pool = best[task]
        m, s = mean_std([r[pool][task][0] for r in random])
        line = [t[pool][task][0] for t in trained]
        rows.append({"task": task, "pooling": pool, "steps": steps, "trained": line,
                     "random": [m, s]})
        panels.append({"title": f"{task} ({pool}) {'accuracy' if task in CLASS_TASKS else 'R^2'}"
                       ", band: random init", "x": steps, "lines": [("target encoder", line)],
                       "band": (m - s, m + s)})
    draw_panels(panels, os.path.join(a.curve, "curve.png"))
    with open(os.path.join(a.curve, "curve.json"), "w") as f:
        json.dump({"steps": steps, "probes": rows, "trained": trained, "random_init": random},
                  f, indent=1)
    lines = ["| task | pooling | " + " | ".join(f"step {s}" for s in steps)
             + " | random init |", "|" + " --- |" * (len(steps) + 3)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['pooling']} | "
                     + " | ".join(f"{v:.3f}" for v in r["trained"])
                     + f" | {r['random'][0]:.3f} ± {r['random'][1]:.3f} |")
    print("\n".join(lines) + f"\nlearning curve: {os.path.join(a.curve, 'curve.png')}")
    return rows


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", nargs="+", help="checkpoint(s) to probe; several: seeds of one "
                   "run, reported as mean ± std")
    p.add_argument("--table", nargs="+", metavar="OUT_DIR", help="print probed runs as a table")
    p.add_argument("--curve", metavar="OUT_DIR",
                   help="V-JEPA: probe the run's snapshots (train.py --snapshot_every) and "
                        "draw its learning curve, OUT_DIR/curve.png")
    p.add_argument("--context", metavar="CKPT",
                   help="V-JEPA: does the predictor use the context? (context_dependence)")
    p.add_argument("--fit_clips", type=int, default=0,
                   help="clips to fit the probes on (default: 5000 V-JEPA, 2048 VJ-VCR, 4096 "
                        "VJ-VCR latent models)")
    p.add_argument("--test_clips", type=int, default=0,
                   help="held-out clips to score on (default: 2500 V-JEPA, a test-set standard "
                        "error of at most 1 point; 1024 VJ-VCR)")
    p.add_argument("--random_inits", type=int, default=3,
                   help="random-init networks to compare with (V-JEPA, VJ-VCR Table 1)")
    p.add_argument("--cache_dir", default="",
                   help="V-JEPA: where encoded features are kept (default: feature_cache/ "
                        "beside the run's folder)")
    p.add_argument("--attentive_seeds", type=int, default=0,
                   help="V-JEPA: also the attentive probe, over this many probe seeds")
    p.add_argument("--attentive_fit_clips", type=int, default=1024,
                   help="V-JEPA: clips the attentive probe is trained on")
    p.add_argument("--decoder_steps", type=int, default=300,
                   help="VJ-VCR: steps of the decoder trained on frozen predictions (models "
                        "without one, and latent models)")
    p.add_argument("--bn", default="running", choices=("running", "batch"),
                   help="VJ-VCR: BatchNorm on the running statistics (eval mode) or on each "
                        "probe batch's own (batch_norm_mode)")
    p.add_argument("--solver", default="fista", choices=("fista", "ista", "gd"),
                   help="VJ-VCR latent models, sparse codes: the solver of z*")
    p.add_argument("--solver_steps", type=int, default=300, help="sparse z*: solver iterations")
    p.add_argument("--solver_tol", type=float, default=1e-5, help="sparse z*: solver tolerance")
    p.add_argument("--epochs", type=int, default=20, help="attentive probe: training epochs")
    p.add_argument("--lr", type=float, default=1e-2,
                   help="attentive probe: peak LR (the paper's 1e-3 hardly moves it in a "
                        "laptop's 1,280 steps; docs/results.md)")
    p.add_argument("--segments", type=int, default=1,
                   help="attentive probe: clips per video, their tokens concatenated")
    p.add_argument("--views", type=int, default=1,
                   help="attentive probe: test views (1-3, shifted), softmax averaged")
    p.add_argument("--out_dir", default="",
                   help="where results go (default: the checkpoint's directory + /probe)")
    p.add_argument("--mnist_dir", default="")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                   help="autocast precision of the encoders and probes (auto: bf16 where the "
                        "CPU multiplies in it natively, AMX or AVX-512 bf16, else float32)")
    a = p.parse_args(argv)
    a.dtype = train.pick_dtype(a.dtype, torch.device("cpu"))
    if a.table:
        print(table(a.table))
        return None
    if a.curve:
        return learning_curve(a)
    if a.context:
        return context_dependence(a.context)
    if not a.ckpt:
        raise ValueError("give --ckpt OUT_DIR/ckpt.pt (or --table OUT_DIR ..., --curve OUT_DIR)")
    for path in a.ckpt:
        if not os.path.exists(path):
            raise FileNotFoundError(f"--ckpt {path} does not exist")
    config = read_config(a.ckpt[0]) or None
    if config is None or config["objective"] in ("vjepa", "pixel"):  # a release file has none
        a.fit_clips, a.test_clips = a.fit_clips or 5000, a.test_clips or 2500
        return probe_vjepa(a)
    return probe_vcr(a)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
