"""VJ-VCR and its generative baselines, frozen (VJ-VCR sec. 4.3, appendix B.2): Table 1's speed
probe of the predicted representation h~_y, RankMe and decoder PSNR, beside random-init networks;
for the switching_mnist latent models, Table 2 (what z* knows) and Figure 3.

    python tools/probe_vcr.py --ckpt OUT_DIR/ckpt.pt [CKPT ...]   # several: seeds of one row

Results go to OUT_DIR/probe/results.json; tools/tables.py sets them beside the paper's numbers.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import data  # noqa: E402
import infer_latent  # noqa: E402
import losses  # noqa: E402
import model  # noqa: E402
import train  # noqa: E402
from probe import (logistic_fit, logistic_logits, mean_std, ridge_cv,  # noqa: E402
                   save_results, standardise)

def ridge_fit(x, y):
    """Ridge regression of y [n] on x [n, F] -> predict(x_new) -> [m] (the VJ-VCR speed probe)."""
    return lambda x_new: ridge_cv(x, [y], x_new)[0][0]


def linear_classifier(x_fit, y_fit, x_test, y_test, classes, lam=2e-4):
    """Logistic regression with a fixed small penalty -> accuracy on (x_test, y_test)."""
    xf, xt = standardise(x_fit.double(), x_test.double())
    w = logistic_fit(xf, y_fit, classes, lam, iters=500)
    return float((logistic_logits(w, xt).argmax(1) == y_test).double().mean())


def regression_scores(pred, y):
    mse = float((pred - y).pow(2).mean())
    return {"mse": round(mse, 5), "r2": round(1 - mse / float(y.var(unbiased=False)), 4)}


def psnr(recon, frames):
    """Mean over clips of 10 log10(1 / MSE) for pixels in [0, 1]. recon, frames: [B, ...]."""
    mse = (recon.float() - frames.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def summarise(runs):
    """[{key: value}] over seeds -> {key: [mean, std]} for the keys every run has a number for."""
    keys = [k for k in runs[0] if k != "seed" and all(isinstance(r.get(k), (int, float))
                                                      for r in runs)]
    return {k: [round(v, 4) for v in mean_std([r[k] for r in runs])] for k in keys}



# VJ-VCR and generative models (VJ-VCR sec. 4.3, appendix B.2): Table 1; Table 2 and Figure 3
# for the latent models of stochastic MovingMNIST (switching_mnist)

def load_run(path, mnist_dir=""):
    """A VJ-VCR or generative checkpoint -> (its Config, its infer_latent.VJVCR in eval mode)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--ckpt {path} does not exist")
    state = model.read_checkpoint(path)
    config = {"pool_grid": 1, **state["config"]}  # files without pool_grid pooled globally
    cfg = train.Config(**{**config, "mnist_dir": mnist_dir or config["mnist_dir"]})
    if cfg.objective in ("vjepa", "pixel"):
        raise ValueError(f"{path} is a V-JEPA checkpoint; this evaluates VJ-VCR and "
                         "generative ones (objective vjvcr or generative)")
    net, _, _ = train.build(cfg, torch.device("cpu"))
    for name in ("encoder", "predictor", "decoder"):
        if getattr(net, name) is not None:
            model.load_strict(getattr(net, name), state[name],
                              f"{path} {name}")
    return cfg, net.eval()


@torch.no_grad()
def predict(net, clips, batch=128, decode=True):
    """Clips [N, C, T, H, W] -> (h~_y per target step [N, T_tgt, d], the frames the model's own
    decoder makes of them, or None without one or with decode=False: decoding is slow)."""
    steps, recon = [], []
    for c in clips.split(batch):
        pred = net.predictor(net.encoder(c[:, :, :net.cfg.mask_ctx_frames]))  # no latent
        steps.append(pred)
        if decode and net.decoder is not None:
            recon.append(net.decoder(pred))
    return torch.cat(steps), (torch.cat(recon) if recon else None)


def train_decoder(cfg, h, frames, steps, seed=0, batch=32, dtype=torch.float32):
    """A model.ConvDecoder fitted to frozen predictions h [N, T, d] -> frames [N, C, T, H, W]
    (Adam 1e-3, `steps` batches): the PSNR of models without a decoder of their own."""
    torch.manual_seed(seed)
    dec = infer_latent.ConvDecoder(cfg.in_chans, h.shape[-1] // cfg.pool_grid ** 2,
                            img_size=cfg.img_size, grid=cfg.pool_grid)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(h), (batch,), generator=g)
        with model.autocast(torch.device("cpu"), dtype):
            loss = losses.pixel_mse(dec(h[i]), frames[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return dec.eval()


def vcr_sets(cfg, fit_clips, test_clips):
    """{"fit": (clips, labels) of the training digits, "test": of the held-out digits}."""
    digits = data.load_digits(cfg.mnist_dir)
    return {part: data.fixed_set(data.make_source(cfg, split, digits), n, seed=seed)
            for part, split, n, seed in (("fit", "train", fit_clips, 1),
                                         ("test", "val", test_clips, 2))}


def vcr_scores(cfg, net, sets, decoder_steps=None, dtype=torch.float32):
    """One frozen network: the speed probe (ridge from the flattened h~_y to the speed; MSE,
    R^2), RankMe of h~_y and, with decoder_steps, the PSNR of the decoded predictions (on the
    ViT route, one vector per tubelet, of each tubelet's mean frame) -> scores."""
    n = cfg.mask_ctx_frames
    (fit, fit_labels), (test, test_labels) = sets["fit"], sets["test"]
    h_fit, _ = predict(net, fit, decode=False)
    h_test, recon = predict(net, test, decode=decoder_steps is not None)
    speed = regression_scores(ridge_fit(h_fit.flatten(1), fit_labels["speed"][:, 0])(
        h_test.flatten(1)), test_labels["speed"][:, 0])
    scores = {"speed_mse": speed["mse"], "speed_r2": speed["r2"],
              "rankme": round(losses.rankme(h_test.flatten(1)), 2)}
    if decoder_steps is None:
        return scores
    y_fit, y_test = fit[:, :, n:], test[:, :, n:]
    if recon is None:
        if h_fit.shape[1] < y_fit.shape[2]:  # ViT route: one vector per tubelet of frames
            y_fit, y_test = (y.unflatten(2, (h_fit.shape[1], -1)).mean(3) for y in (y_fit, y_test))
        decoder = train_decoder(cfg, h_fit, y_fit, decoder_steps, dtype=dtype)
        with torch.no_grad():
            recon = torch.cat([decoder(h) for h in h_test.split(128)])
    return {**scores, "psnr": round(psnr(recon, y_test), 2)}


@torch.no_grad()
def encode(net, clips, batch=256):
    """Clips [N, C, T, H, W] -> (h_x [N, n, d], h_y [N, T - n, d]), encoded apart."""
    n, parts = net.cfg.mask_ctx_frames, []
    for c in clips.split(batch):
        parts.append((net.encoder(c[:, :, :n]), net.encoder(c[:, :, n:])))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def option_shares(z):
    """Discrete z* [N, K] one-hot -> the share of clips that chose each option, largest first."""
    return sorted((torch.bincount(z.argmax(1), minlength=z.shape[1]).double() / len(z)).tolist(),
                  reverse=True)


def codes_used_from(log_path, below=0.99):
    """The first logged step at which fewer than `below` of the sparse codes' entries were zero
    (`z_zero` in log.jsonl): how long the codes stayed unused. None if never or without a log."""
    if not os.path.exists(log_path):
        return None
    with open(log_path) as f:
        log = [json.loads(line) for line in f if line.strip()]
    return next((r["step"] for r in log if r.get("z_zero", 1.0) < below), None)


SOLVER_STEPS, SOLVER_TOL = 300, 1e-5  # FISTA on the sparse z*: tighter than in training


def latent_scores(cfg, net, sets, a, ckpt):
    """One frozen switching_mnist model: z* of the fit and test clips, linear classifiers from
    z* to the switch psi and to the digit, psi from the encoded targets h_y (the ceiling), how
    z* is used, the PSNR of a decoder trained on the predictions
    -> (scores, the test clips' (targets, decoded, psi))."""
    n, out = cfg.mask_ctx_frames, {}
    for part in ("fit", "test"):
        clips, labels = sets[part]
        h_x, h_y = encode(net, clips)
        z = [None] * len(range(0, len(clips), 256))
        if cfg.latent != "none":
            z = [infer_latent.infer_z(net.predictor, hx, hy, cfg.latent, cfg.latent_lam,
                                      SOLVER_STEPS, SOLVER_TOL, loss=net.loss_fn)
                 for hx, hy in tqdm(zip(h_x.split(256), h_y.split(256)), total=len(z),
                                    desc=f"z* ({part})")]
        with torch.no_grad():
            pred = torch.cat([net.predictor(hx, zc) for hx, zc in zip(h_x.split(256), z)])
        out[part] = dict(labels=labels, y=clips[:, :, n:], h_y=h_y, pred=pred,
                         z=torch.cat(z) if cfg.latent != "none" else None)
    fit, test = out["fit"], out["test"]
    r = {"pred_mse": round(float((test["pred"] - test["h_y"]).pow(2).mean()), 5),
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
    return r, (test["y"], recon, test["labels"]["k"])


def overlap_picture(targets, preds, path, scale=2):
    """Figure 3 as a PNG, a row per clip: the target frames, their overlap with the decoded
    prediction (target magenta, prediction green), the prediction. [N, T, H, W] in [0, 1]."""
    from PIL import Image

    t, p = targets.clamp(0, 1), preds.clamp(0, 1)
    grey = lambda x: x[..., None].expand(*x.shape, 3)  # noqa: E731
    gap = torch.ones(t.shape[0], t.shape[2], 4, 3)  # a white bar between frames
    rows = []
    for panel in (grey(t), torch.stack([t, p, t], -1), grey(p)):
        for i in range(t.shape[1]):
            rows += [panel[:, i], gap]
    image = torch.cat(rows, dim=2)  # (N, H, W_total, 3)
    image = torch.cat([torch.cat([r, torch.ones(4, r.shape[1], 3)]) for r in image])
    pixels = (image.numpy() * 255).astype(np.uint8)
    Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale),
                                   Image.NEAREST).save(path)


def training_time(ckpt):
    """Training wall time in seconds from summary.json beside a checkpoint (None if absent)."""
    path = os.path.join(os.path.dirname(os.path.abspath(ckpt)), "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("wall_s")


def probe_vcr(a):
    """VJ-VCR and generative checkpoints, the seeds of one row: Table 1's measurements of each
    and of a.random_inits random-init networks; for switching_mnist, Table 2 and Figure 3."""
    start = time.time()
    runs = [load_run(c, a.mnist_dir) for c in a.ckpt]
    cfg = runs[0][0]
    latent = cfg.dataset == "switching_mnist"
    if len({(c.preset, c.dataset) + tuple(getattr(c, k) for k in train.ARCH_KEYS)
            for c, _ in runs}) > 1:
        raise ValueError("--ckpt: the checkpoints differ in preset, data or architecture; "
                         "give the seeds of one run")
    if cfg.latent != "none" and not latent:
        raise ValueError(f"{a.ckpt[0]} has a {cfg.latent} latent but was trained on "
                         f"{cfg.dataset}; latents are evaluated on switching_mnist")
    out_dir = a.out_dir or os.path.join(os.path.dirname(os.path.abspath(a.ckpt[0])), "probe")
    os.makedirs(out_dir, exist_ok=True)
    a.fit_clips, a.test_clips = a.fit_clips or (4096 if latent else 2048), a.test_clips or 1024
    sets = vcr_sets(cfg, a.fit_clips, a.test_clips)
    per_run, first = [], None
    for path, (c, net) in zip(a.ckpt, runs):
        scores, test = (latent_scores(c, net, sets, a, path) if latent
                        else (vcr_scores(c, net, sets, a.decoder_steps, a.dtype), None))
        per_run.append({"ckpt": path, "seed": c.seed, **scores, "train_s": training_time(path)})
        first = first or test
    results = {"ckpt": a.ckpt, "preset": cfg.preset, "objective": cfg.objective,
               "latent": cfg.latent, "pool_grid": cfg.pool_grid, "enc_dim": cfg.enc_dim,
               "fit_clips": a.fit_clips, "test_clips": a.test_clips, "runs": per_run}
    if latent:
        labels = sets["test"][1]
        results["solver"] = (f"fista, lam {cfg.latent_lam}, {SOLVER_STEPS} steps, tol "
                             f"{SOLVER_TOL}" if cfg.latent == "sparse" else "argmin over options")
        results["majority"] = {k: round(float(torch.bincount(labels[k]).max()) / a.test_clips, 4)
                               for k in ("k", "digits")}  # predicting the majority class
        results["summary"] = summarise(per_run)
        y, recon, k = first
        rows = torch.stack([(k == i).nonzero()[0, 0] for i in k.unique()])  # one per direction
        overlap_picture(y[rows, 0], recon[rows, 0], os.path.join(out_dir, "figure3.png"))
        save_results(results, out_dir, start, {"VJ-VCR": {"trained": results["summary"]}})
        return results
    random = []
    for i in range(a.random_inits):
        torch.manual_seed(1000 + i)
        net, _, _ = train.build(cfg, torch.device("cpu"))
        random.append(vcr_scores(cfg, net.eval(), sets))
    speed_fit, speed_test = sets["fit"][1]["speed"][:, 0], sets["test"][1]["speed"][:, 0]
    y_fit, y_test = (sets[p][0][:, :, cfg.mask_ctx_frames:] for p in ("fit", "test"))
    results.update(random_inits=a.random_inits, random_init_runs=random,
                   summary={"trained": summarise(per_run), "random_init": summarise(random)},
                   speed_mean_baseline=regression_scores(
                       torch.full_like(speed_test, float(speed_fit.mean())), speed_test),
                   psnr_mean_frames=round(psnr(y_fit.mean(0, keepdim=True).expand_as(y_test),
                                               y_test), 2))  # the average target clip
    save_results(results, out_dir, start, {"VJ-VCR": results["summary"]})
    return results


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", nargs="+", help="checkpoint(s); several: seeds of one row")
    p.add_argument("--fit_clips", type=int, default=0,
                   help="clips the probes are fitted on (default 2048; latent models 4096)")
    p.add_argument("--test_clips", type=int, default=1024, help="held-out clips scored")
    p.add_argument("--random_inits", type=int, default=3, help="random-init networks beside")
    p.add_argument("--decoder_steps", type=int, default=300, help="steps of the decoder "
                   "trained on frozen predictions, for models without their own")
    p.add_argument("--out_dir", default="", help="default: the first checkpoint's folder/probe")
    p.add_argument("--mnist_dir", default="")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                   help="autocast precision (auto: bf16 where the CPU multiplies in it natively)")
    a = p.parse_args(argv)
    a.dtype = model.pick_dtype(a.dtype, torch.device("cpu"))
    if not a.ckpt:
        raise ValueError("give --ckpt OUT_DIR/ckpt.pt [CKPT ...]")
    return probe_vcr(a)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
