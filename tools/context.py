"""Does a V-JEPA predictor use the context? A diagnostic of one checkpoint.

    python tools/context.py OUT_DIR/ckpt.pt [--clips N]

For the checkpoint's weights and for the same run's initial weights (a function of its seed):
the V-JEPA loss on fixed validation clips when the predictor gets each clip's own encoded
context, another clip's (the batch rolled by one), or zeros; how much the predictions change
with another clip's context (|p' - p| / |p|); the gradient norms of the encoder and the
predictor; and the share of the targets' variance that their positions do not explain. Plus the
run's last log line. When another clip's context costs nothing, the predictor predicts the
targets from their positions alone, and the encoder, which reaches the loss only through the
context, gets (almost) no gradient. Prints one JSON line.
"""
import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import data  # noqa: E402
import losses  # noqa: E402
import model  # noqa: E402
import train  # noqa: E402


def content_share(targets):
    """The share of the targets' variance [B, N, D] that their positions do not explain: the
    mean squared deviation from each position's mean over the clips, over the mean square. A
    predictor that sees only positions can at best leave this share of the squared error."""
    centred = targets - targets.mean(0, keepdim=True)
    return float(centred.pow(2).mean() / targets.pow(2).mean())


def context_dependence(path, clips=64, seed=0):
    """The measurements of the module docstring for checkpoint `path` -> dict (also printed)."""
    state = model.read_checkpoint(path)
    cfg = train.Config(**state["config"])
    if cfg.objective != "vjepa":
        raise ValueError(f"{path} is a {cfg.objective} checkpoint; expected vjepa")
    run = train.setup(cfg)  # the initial weights
    videos, _ = data.fixed_set(data.make_source(cfg, "val"), clips, seed=12345)
    out = {"ckpt": path, "step": state["step"]}
    for when in ("init", "trained"):
        if when == "trained":
            for name, net in run.nets.items():
                model.load_strict(net, state[name], f"{path} {name}")
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
                preds[kind] = [run.module.predictor(
                    edit(run.module.encoder(batch, keep=ctx)), ctx, tgt, m)
                    for m, (ctx, tgt) in enumerate(step_masks)]
                loss = losses.PREDICTION_LOSSES[cfg.loss](
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


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", metavar="CKPT", help="a V-JEPA checkpoint (objective vjepa)")
    p.add_argument("--clips", type=int, default=64, help="validation clips")
    a = p.parse_args(argv)
    return context_dependence(a.ckpt, a.clips)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
