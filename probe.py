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

VJ-VCR and generative (VJ-VCR paper, sec. 4.3.1 and appendix B.2):

- Speed probe: a linear (ridge) regression from the predicted target representation h~_y
  (all 12 predicted steps, flattened; the ViT route's tokens averaged per step) to the digit's
  speed, fitted on clips of the training
  digits, scored (MSE, R^2) on clips of the held-out digits; beside it the predict-the-mean
  baseline and the same probe on a randomly initialised network.
- Decoder PSNR of the predicted frames: the model's own decoder when it has one, else a decoder
  trained here on the frozen predictions.
- RankMe and the singular-value spectrum of h~_y, saved as JSON and drawn as a PNG, and a GIF
  of target frames beside decoded predicted frames.
Results go to OUT_DIR/probe/ (OUT_DIR = the checkpoint's folder; `--out_dir` elsewhere) and to
stdout as JSON.

    python probe.py --table out/vjvcr out/vjvcr_dec out/generative_vcr out/generative
    python probe.py --table out/laptop out/laptop_pixel out/laptop_tube out/laptop_causal

prints probed runs side by side with the paper's numbers (VJ-VCR Table 1, or V-JEPA Tables
1, 3 and 4).
"""
import argparse
import copy
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
import losses
import model
import train


def ridge_fit(x, y, lams=(1e-3, 1e-2, 1e-1, 1.0, 10.0)):
    """Linear regression with an L2 penalty picked on the last 20% of the fitting data.
    x: [N, F], y: [N] -> predict(x_new) -> [M]. Features are standardised first."""
    x, y = x.double(), y.double()
    mean, std = x.mean(0), x.std(0) + 1e-8

    def solve(xs, ys, lam):
        xs = torch.cat([(xs - mean) / std, torch.ones(len(xs), 1, dtype=xs.dtype)], 1)
        reg = lam * len(xs) * torch.eye(xs.shape[1], dtype=xs.dtype)
        reg[-1, -1] = 0  # no penalty on the intercept
        return torch.linalg.solve(xs.T @ xs + reg, xs.T @ ys)

    def apply(w, xs):
        return torch.cat([(xs.double() - mean) / std, torch.ones(len(xs), 1).double()], 1) @ w

    cut = int(0.8 * len(x))
    errors = [float((apply(solve(x[:cut], y[:cut], lam), x[cut:]) - y[cut:]).pow(2).mean())
              for lam in lams]
    w = solve(x, y, lams[int(np.argmin(errors))])
    return lambda xs: apply(w, xs).float()


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


# VJ-VCR Table 1, MovingMNIST: speed-probe MSE and decoder PSNR per row.
PAPER_TABLE1 = {"vjvcr": (0.04, 19.5), "vjvcr_dec": (0.04, 21.2), "generative_vcr": (0.10, 22.9),
                "generative": (0.15, 22.8)}


# V-JEPA's frozen-evaluation findings (K400 top-1, attentive probe unless noted): feature vs.
# pixel targets (Table 1), attentive vs. average pooling (Table 3), masks (Table 4).
PAPER_VJEPA = {("vjepa", "multiblock", "attentive"): "73.7 (T1, T3); 72.9 (T4)",
               ("vjepa", "multiblock", "average"): "56.7 (T3)",
               ("pixel", "multiblock", "attentive"): "68.6 (T1)",
               ("vjepa", "random_tube", "attentive"): "51.5 (T4)",
               ("vjepa", "causal", "attentive"): "61.3 (T4, causal[6])"}


def _load_results(d):
    paths = [os.path.join(d, "summary.json"), os.path.join(d, "probe", "results.json")]
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing: train and probe {d} first")
    with open(paths[0]) as f, open(paths[1]) as g:
        return json.load(f), json.load(g)


def table(out_dirs):
    """A markdown table of probed runs (OUT_DIR/summary.json and OUT_DIR/probe/results.json):
    VJ-VCR's Table 1, or V-JEPA's findings when the runs are V-JEPA ones."""
    runs = [_load_results(d) for d in out_dirs]
    if "trained" in runs[0][1]:
        return vjepa_table(runs)
    lines = ["| row | speed MSE (paper) | speed R^2 | MSE, random init | MSE, predict the mean "
             "| PSNR dB (paper) | RankMe | train min | probe min |", "|" + " --- |" * 9]
    for summary, r in runs:
        mse, db = PAPER_TABLE1.get(r["preset"], ("-", "-"))
        lines.append(f"| {r['preset']} | {r['speed_trained']['mse']:.3f} ({mse}) | "
                     f"{r['speed_trained']['r2']:.3f} | {r['speed_random_init']['mse']:.3f} | "
                     f"{r['speed_mean_baseline']['mse']:.3f} | {r['psnr']:.1f} ({db}) | "
                     f"{r['rankme']:.1f} | {summary['wall_s'] / 60:.1f} | "
                     f"{r['probe_s'] / 60:.1f} |")
    return "\n".join(lines)


def vjepa_table(runs):
    """One row per (run, pooling): accuracy per task, the same probe on a random-init encoder
    in brackets, the mean over tasks, the paper's K400 number for that setting, and the
    collapse monitors of the trained encoder's tokens (random-init encoder in brackets)."""
    tasks = list(runs[0][1]["majority"])
    lines = ["| run | targets | masks | pooling | " + " | ".join(tasks) + " | mean | paper "
             "K400 | emb std | RankMe | train min | probe min |",
             "|" + " --- |" * (len(tasks) + 10)]
    for summary, r in runs:
        for pooling in ("attentive", "average"):
            acc, rnd = r["trained"][pooling], r["random_init"][pooling]
            mean = sum(acc.values()) / len(acc)
            paper = PAPER_VJEPA.get((r["objective"], r["mask"], pooling), "-")
            lines.append(f"| {r['preset']} | {r['objective'].replace('vjepa', 'features')} | "
                         f"{r['mask']} | {pooling} | "
                         + " | ".join(f"{acc[t]:.1%} ({rnd[t]:.1%})" for t in tasks)
                         + f" | {mean:.1%} ({sum(rnd.values()) / len(rnd):.1%}) | {paper} | "
                         f"{r['trained']['emb_std']:.3f} ({r['random_init']['emb_std']:.3f}) | "
                         f"{r['trained']['rankme']:.1f} ({r['random_init']['rankme']:.1f}) | "
                         f"{summary['wall_s'] / 60:.1f} | {r['probe_s'] / 60:.1f} |")
    lines.append("| majority class | | | | " + " | ".join(
        f"{runs[0][1]['majority'][t]:.1%}" for t in tasks) + " | | | | | | |")
    return "\n".join(lines)


@torch.no_grad()
def predict(net, clips, batch=128, decode=True):
    """Frozen predictions for clips [N, C, T, H, W]: h~_y per target step [N, T_tgt, d] (the
    ViT route averages each step's tokens), and the frames the model's own decoder makes of
    them (None without a decoder, or with decode=False: decoding is most of the cost)."""
    steps, recon = [], []
    for c in clips.split(batch):
        _, pred, pred_steps = net.predict(c)
        steps.append(pred_steps)
        if decode and net.decoder is not None:
            recon.append(net.decode(pred))
    return torch.cat(steps), (torch.cat(recon) if recon else None)


def train_decoder(cfg, h, frames, steps, seed=0):
    """A decoder fitted to frozen predictions h [N, T, d] -> frames [N, C, T, H, W]."""
    torch.manual_seed(seed)
    dec = model.ConvDecoder(cfg.in_chans, cfg.enc_dim, img_size=cfg.img_size)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(h), (64,), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = losses.pixel_mse(dec(h[i]), frames[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return dec.eval()


def load_run(path, mnist_dir=""):
    """A VJ-VCR or generative checkpoint -> (its Config, its networks as one
    train.VCRObjective in eval mode). mnist_dir overrides the one it was trained with."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--ckpt {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=False)
    cfg = train.Config(**{**state["config"], "mnist_dir": mnist_dir or state["config"]["mnist_dir"]})
    if cfg.objective == "vjepa":
        raise ValueError(f"{path} is a V-JEPA checkpoint; this evaluates VJ-VCR and "
                         "generative ones (objective vjvcr or generative)")
    net, _, _ = train.build(cfg, None, torch.device("cpu"))
    for name in ("encoder", "predictor", "decoder"):
        if getattr(net, name) is not None:
            model.load_strict(getattr(net, name), model.from_release(state[name]),
                              f"{path} {name}")
    return cfg, net.eval()


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


class AveragePoolProbe(nn.Module):
    """The mean token, standardised per channel (BatchNorm without affine parameters, as in
    MAE's linear probe), then a linear head. [B, N, D] -> [B, classes]."""

    def __init__(self, dim, classes):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.head = small_head(nn.Linear(dim, classes))

    def forward(self, tokens):
        return self.head(self.norm(tokens.float().mean(1)))


def fit_probes(probes, tokens, labels, epochs=20, batch=16, lr=1e-3, weight_decay=0.01, seed=0,
               warmup=0.0, dtype=torch.bfloat16):
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
            x = tokens[i].to(dtype)  # stored in bf16; float32 probes need float32 tokens
            loss = sum(F.cross_entropy(p(x).float(), y[i]) for p, y in zip(probes, labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probes.eval()


@torch.no_grad()
def view_probabilities(probe, views, batch=256, dtype=torch.bfloat16):
    """Class probabilities averaged over test views: views = [tokens [N, L, D] per view] ->
    [N, classes], the softmax of each view's logits averaged (V-JEPA's multi-view test)."""
    probs = []
    for tokens in views:
        with train.autocast(torch.device("cpu"), dtype):
            logits = torch.cat([probe(t.to(dtype)) for t in tokens.split(batch)])
        probs.append(logits.float().softmax(-1))
    return torch.stack(probs).mean(0)


@torch.no_grad()
def encode_tokens(encoder, videos, segments=1, batch=32, dtype=torch.bfloat16):
    """Frozen tokens of videos [N, C, S*T, H, W]: cut along time into S clips of T frames,
    each encoded alone, their tokens concatenated along the token axis -> [N, S*L, D],
    stored in bfloat16 (half the memory; the probes run in bfloat16 anyway)."""
    N = len(videos)
    clips = videos.unflatten(2, (segments, -1)).transpose(1, 2).flatten(0, 1)  # (N*S, C, T, H, W)
    out = []
    for c in tqdm(clips.split(batch), desc="encode", unit="batch", leave=False):
        with train.autocast(torch.device("cpu"), dtype):
            out.append(encoder(c).to(torch.bfloat16))
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
    """MovingMNIST labels (one digit per clip) -> {task: (class of each clip [N], classes)}.
    direction: the angle of the initial velocity in 8 sectors of 45 degrees; speed: 4 equal
    bins over speed_range (pixels per frame)."""
    vy, vx = labels["velocity"][:, 0].unbind(-1)
    sector = (torch.atan2(vy, vx) % (2 * math.pi) / (math.pi / 4)).long() % 8
    lo, hi = speed_range
    speed = ((labels["speed"][:, 0] - lo) / (hi - lo) * 4).long().clamp(0, 3)
    return {"digit": (labels["digits"][:, 0].long(), 10), "direction": (sector, 8),
            "speed": (speed, 4)}


def random_init_like(encoder, seed):
    """The same architecture with fresh weights (the positional table is fixed, so it stays)."""
    fresh = copy.deepcopy(encoder)
    torch.manual_seed(seed)
    model.init_weights(fresh, fresh.blocks)
    return fresh.eval()


def probe_encoder(encoder, fit, test, tasks_fit, tasks_test, a):
    """Attentive and average-pooling probes of every task on one frozen encoder.
    fit, test: videos [N, C, S*T, H, W] -> ({pooling: {task: accuracy}}, monitors)."""
    heads = encoder.blocks[0].attn.heads
    fit_tokens = encode_tokens(encoder, fit, a.segments)
    views = [encode_tokens(encoder, v, a.segments) for v in shifted_views(test, a.views)]
    names = list(tasks_fit)
    torch.manual_seed(a.seed)  # the same probe weights for every encoder
    probes = nn.ModuleList([AttentiveProbe(encoder.dim, heads, tasks_fit[t][1]) for t in names]
                           + [AveragePoolProbe(encoder.dim, tasks_fit[t][1]) for t in names])
    fit_probes(probes, fit_tokens, [tasks_fit[t][0] for t in names] * 2, epochs=a.epochs,
               lr=a.lr, seed=a.seed, warmup=a.warmup)
    accuracy = {}
    for k, pooling in enumerate(("attentive", "average")):
        accuracy[pooling] = {
            t: round(float((view_probabilities(probes[k * len(names) + j], views).argmax(1)
                            == tasks_test[t][0]).float().mean()), 4)
            for j, t in enumerate(names)}
    steps = a.segments * encoder.grid[0]  # time steps per video in the concatenated tokens
    emb_std, rank_me = train.collapse_monitors(views[0][:256].float(), steps)
    return accuracy, {"emb_std": round(emb_std, 4), "rankme": round(rank_me, 2)}


def probe_vjepa(a):
    """The V-JEPA evaluation of `python probe.py --ckpt` (module docstring) -> results dict."""
    start = time.time()
    encoder, _ = model.load_vjepa_checkpoint(a.ckpt)
    config = torch.load(a.ckpt, map_location="cpu", weights_only=False, mmap=True).get("config", {})
    out_dir = a.out_dir or os.path.join(os.path.dirname(os.path.abspath(a.ckpt)), "probe")
    os.makedirs(out_dir, exist_ok=True)
    digits = data.load_digits(a.mnist_dir or config.get("mnist_dir", ""))
    T, H, _ = encoder.input_size
    sets = []
    for part, n, seed in (("train", a.train_clips or 1024, 1), ("val", a.test_clips or 512, 2)):
        source = data.MovingMNIST(*data.split_digits(*digits, part), T * a.segments, H,
                                  num_digits=1)
        videos, labels = data.fixed_set(source, n, seed=seed)
        # grey digits; an encoder of RGB video (a released one) sees them in every channel
        sets.append((videos.expand(-1, encoder.in_chans, -1, -1, -1),
                     probe_tasks(labels, source.speed)))
    (fit, tasks_fit), (test, tasks_test) = sets
    results = {"ckpt": a.ckpt, "preset": config.get("preset", "release"),
               "objective": config.get("objective", "vjepa"), "mask": config.get("mask", ""),
               "segments": a.segments, "views": a.views, "epochs": a.epochs, "lr": a.lr,
               "warmup": a.warmup, "seed": a.seed,
               "fit_clips": len(fit), "test_clips": len(test),
               "majority": {t: round(float(torch.bincount(y).max()) / len(y), 4)
                            for t, (y, _) in tasks_test.items()}}
    for name, net in (("trained", encoder), ("random_init", random_init_like(encoder, a.seed + 1))):
        accuracy, monitors = probe_encoder(net, fit, test, tasks_fit, tasks_test, a)
        results[name] = {**accuracy, **monitors}
    results["probe_s"] = round(time.time() - start, 1)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(vjepa_summary(results))
    return results


def vjepa_summary(r):
    """A readable printout of one V-JEPA probe result."""
    lines = [f"{r['ckpt']}: {r['objective']} targets, {r['mask']} masks; accuracy on "
             f"{r['test_clips']} held-out clips (random-init encoder in brackets)",
             "| pooling | " + " | ".join(r["majority"]) + " | mean |", "|" + " --- |" * 5]
    for pooling in ("attentive", "average"):
        acc, rnd = r["trained"][pooling], r["random_init"][pooling]
        lines.append(f"| {pooling} | " + " | ".join(f"{acc[t]:.1%} ({rnd[t]:.1%})" for t in acc)
                     + f" | {sum(acc.values()) / len(acc):.1%} "
                       f"({sum(rnd.values()) / len(rnd):.1%}) |")
    lines.append("| majority class | " + " | ".join(f"{v:.1%}" for v in r["majority"].values())
                 + " | |")
    for name in ("trained", "random_init"):
        lines.append(f"{name} encoder: per-channel std {r[name]['emb_std']}, RankMe "
                     f"{r[name]['rankme']} (collapse shows as a std falling towards 0)")
    lines.append(f"probe time {r['probe_s'] / 60:.1f} min")
    return "\n".join(lines)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", help="checkpoint to probe")
    p.add_argument("--table", nargs="+", metavar="OUT_DIR", help="print probed runs as a table")
    p.add_argument("--train_clips", type=int, default=0,
                   help="clips to fit the probes on (default: 1024 V-JEPA, 4096 VJ-VCR)")
    p.add_argument("--test_clips", type=int, default=0,
                   help="held-out clips to score on (default: 512 V-JEPA, 1024 VJ-VCR)")
    p.add_argument("--decoder_steps", type=int, default=300,
                   help="VJ-VCR: steps of the decoder trained on frozen predictions (models "
                        "without one)")
    p.add_argument("--epochs", type=int, default=20, help="V-JEPA: epochs of probe training")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="V-JEPA: peak LR of the probes (the paper's 1e-3; see README)")
    p.add_argument("--warmup", type=float, default=0.0,
                   help="V-JEPA: fraction of probe steps with a linear LR warm-up (paper: 0)")
    p.add_argument("--segments", type=int, default=1,
                   help="V-JEPA: clips per video, their tokens concatenated")
    p.add_argument("--views", type=int, default=1,
                   help="V-JEPA: test views (1-3, shifted), softmax averaged")
    p.add_argument("--seed", type=int, default=0,
                   help="probe weights and batch order, and the random-init encoder")
    p.add_argument("--out_dir", default="",
                   help="where results go (default: the checkpoint's directory + /probe)")
    p.add_argument("--mnist_dir", default="")
    a = p.parse_args(argv)
    if a.table:
        print(table(a.table))
        return None
    if not a.ckpt:
        raise ValueError("give --ckpt OUT_DIR/ckpt.pt (or --table OUT_DIR ...)")
    if not os.path.exists(a.ckpt):
        raise FileNotFoundError(f"--ckpt {a.ckpt} does not exist")
    config = torch.load(a.ckpt, map_location="cpu", weights_only=False, mmap=True).get("config")
    if config is None or config["objective"] in ("vjepa", "pixel"):  # a release file has none
        return probe_vjepa(a)
    start = time.time()
    a.train_clips, a.test_clips = a.train_clips or 4096, a.test_clips or 1024
    cfg, trained = load_run(a.ckpt, a.mnist_dir)
    if cfg.latent != "none":
        raise ValueError(f"{a.ckpt} has a {cfg.latent} latent; evaluate it with "
                         f"python infer_latent.py --ckpt {a.ckpt}")
    out_dir = a.out_dir or os.path.join(os.path.dirname(os.path.abspath(a.ckpt)), "probe")
    os.makedirs(out_dir, exist_ok=True)

    digits = data.load_digits(cfg.mnist_dir)
    fit_clips, fit_labels = data.fixed_set(train.make_source(cfg, "train", digits),
                                           a.train_clips, seed=1)
    test_clips, test_labels = data.fixed_set(train.make_source(cfg, "val", digits),
                                             a.test_clips, seed=2)
    speed_fit, speed_test = fit_labels["speed"][:, 0], test_labels["speed"][:, 0]
    n = cfg.mask_ctx_frames
    y_fit, y_test = fit_clips[:, :, n:], test_clips[:, :, n:]

    torch.manual_seed(cfg.seed + 1)
    random_net, _, _ = train.build(cfg, None, torch.device("cpu"))

    results = {"ckpt": a.ckpt, "preset": cfg.preset, "objective": cfg.objective,
               "speed_mean_baseline": regression_scores(
                   torch.full_like(speed_test, float(speed_fit.mean())), speed_test)}
    for name, net in (("trained", trained), ("random_init", random_net.eval())):
        # only the trained network's test predictions are ever decoded (PSNR, GIF)
        h_fit, _ = predict(net, fit_clips, decode=False)
        h_test, decoded = predict(net, test_clips, decode=name == "trained")
        probe = ridge_fit(h_fit.flatten(1), speed_fit)
        results[f"speed_{name}"] = regression_scores(probe(h_test.flatten(1)), speed_test)
        if name == "trained":
            flat = h_test.flatten(1)
            results["rankme"] = round(train.rankme(flat), 2)
            results["rankme_max"] = min(flat.shape)
            s, explained = spectrum(flat)
            recon = decoded
            if recon is None:
                decoder = train_decoder(cfg, h_fit, y_fit, a.decoder_steps)
                results["decoder"] = f"trained on frozen predictions, {a.decoder_steps} steps"
                with torch.no_grad():
                    recon = torch.cat([decoder(h) for h in h_test.split(128)])
            else:
                results["decoder"] = "the model's own"
            results["psnr"] = round(psnr(recon, y_test), 2)
    with open(os.path.join(out_dir, "spectrum.json"), "w") as f:
        json.dump({"singular_values": s.tolist(), "cumulative_explained": explained.tolist()}, f)
    draw_spectrum(s, explained, os.path.join(out_dir, "spectrum.png"))
    save_gif(y_test, recon, os.path.join(out_dir, "predictions.gif"))
    results["probe_s"] = round(time.time() - start, 1)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
