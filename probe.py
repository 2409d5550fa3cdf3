"""Frozen evaluation of a VJ-VCR or generative checkpoint on MovingMNIST (VJ-VCR paper,
sec. 4.3.1 and appendix B.2).

    python probe.py --ckpt out/vjvcr/ckpt.pt

- Speed probe: a linear (ridge) regression from the predicted target representation h~_y
  (all 12 predicted steps, flattened; the ViT route's tokens averaged per step) to the digit's
  speed, fitted on clips of the training
  digits, scored (MSE, R^2) on clips of the held-out digits; beside it the predict-the-mean
  baseline and the same probe on a randomly initialised network.
- Decoder PSNR of the predicted frames: the model's own decoder when it has one, else a decoder
  trained here on the frozen predictions.
- RankMe and the singular-value spectrum of h~_y, saved as JSON and drawn as a PNG, and a GIF
  of target frames beside decoded predicted frames.
Results go to OUT_DIR/probe/ (OUT_DIR = the checkpoint's folder) and to stdout as JSON.

    python probe.py --table out/vjvcr out/vjvcr_dec out/generative_vcr out/generative

prints the probed runs side by side with the paper's Table 1.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

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


def table(out_dirs):
    """A markdown table of probed runs (OUT_DIR/summary.json and OUT_DIR/probe/results.json)."""
    lines = ["| row | speed MSE (paper) | speed R^2 | MSE, random init | MSE, predict the mean "
             "| PSNR dB (paper) | RankMe | train min | probe min |", "|" + " --- |" * 9]
    for d in out_dirs:
        paths = [os.path.join(d, "summary.json"), os.path.join(d, "probe", "results.json")]
        for path in paths:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} is missing: train and probe {d} first")
        with open(paths[0]) as f:
            summary = json.load(f)
        with open(paths[1]) as f:
            r = json.load(f)
        mse, db = PAPER_TABLE1.get(r["preset"], ("-", "-"))
        lines.append(f"| {r['preset']} | {r['speed_trained']['mse']:.3f} ({mse}) | "
                     f"{r['speed_trained']['r2']:.3f} | {r['speed_random_init']['mse']:.3f} | "
                     f"{r['speed_mean_baseline']['mse']:.3f} | {r['psnr']:.1f} ({db}) | "
                     f"{r['rankme']:.1f} | {summary['wall_s'] / 60:.1f} | "
                     f"{r['probe_s'] / 60:.1f} |")
    return "\n".join(lines)


@torch.no_grad()
def predict(net, clips, batch=128):
    """Frozen predictions for clips [N, C, T, H, W]: h~_y per target step [N, T_tgt, d] (the
    ViT route averages each step's tokens), and the frames the model's own decoder makes of
    them (None without a decoder)."""
    steps, recon = [], []
    for c in clips.split(batch):
        _, pred, pred_steps = net.predict(c)
        steps.append(pred_steps)
        if net.decoder is not None:
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


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", help="checkpoint to probe")
    p.add_argument("--table", nargs="+", metavar="OUT_DIR", help="print probed runs as a table")
    p.add_argument("--train_clips", type=int, default=4096, help="clips to fit the probes on")
    p.add_argument("--test_clips", type=int, default=1024, help="held-out clips to score on")
    p.add_argument("--decoder_steps", type=int, default=300,
                   help="steps of the decoder trained on frozen predictions (models without one)")
    p.add_argument("--mnist_dir", default="")
    a = p.parse_args(argv)
    if a.table:
        print(table(a.table))
        return None
    if not a.ckpt:
        raise ValueError("give --ckpt OUT_DIR/ckpt.pt (or --table OUT_DIR ...)")
    start = time.time()
    cfg, trained = load_run(a.ckpt, a.mnist_dir)
    if cfg.latent != "none":
        raise ValueError(f"{a.ckpt} has a {cfg.latent} latent; evaluate it with "
                         f"python infer_latent.py --ckpt {a.ckpt}")
    out_dir = os.path.join(os.path.dirname(os.path.abspath(a.ckpt)), "probe")
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
        (h_fit, _), (h_test, decoded) = predict(net, fit_clips), predict(net, test_clips)
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
