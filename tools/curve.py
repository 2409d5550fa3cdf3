"""A V-JEPA run's learning curve: the linear probes of every snapshot beside random init.

    python tools/curve.py OUT_DIR [--fit_clips N --test_clips N --random_inits N --dtype ...]

OUT_DIR is a run trained with `train.py --snapshot_every N`: each snapshot's target encoder
(step 0, ..., the last) gets probe.py's linear probes, and so do random-init encoders of its
shape; per task, the pooling where the last snapshot is furthest above random init is drawn
beside the run's log (loss, emb_std, RankMe, weight drift) as OUT_DIR/curve.png. The numbers go
to OUT_DIR/curve.json and a table to stdout.
"""
import argparse
import glob
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import model  # noqa: E402
from probe import (CLASS_TASKS, POOLINGS, REGRESSION_TASKS, cached_features,  # noqa: E402
                   linear_probe_arguments, linear_probes, linear_targets, mean_std, probe_sets,
                   load_networks)

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def draw_panels(panels, path, columns=3, size=(330, 210)):
    """A grid of line plots as a PNG, drawn with PIL. panels: [{"title": str, "x": [..],
    "lines": [(label, [y per x, or None])], "band": optional (low, high) drawn grey (the
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

        def tf(v):
            return math.log10(max(float(v), 1e-12)) if p.get("log_y") else float(v)

        ys = [tf(v) for _, line in p["lines"] for v in line if v is not None]
        band = p.get("band")
        if band:
            ys += [tf(b) for b in band]
        if not ys:  # e.g. a log written before this quantity was logged
            ys = [0.0]
        lo, hi = min(ys), max(ys)
        lo, hi = ((lo - 0.5, hi + 0.5) if hi - lo < 1e-9
                  else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)))
        xlo, xhi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        box = (x0 + pad_l, y0 + pad_t, x0 + W - pad_r, y0 + H - pad_b)

        def at(x, y):
            return (box[0] + (box[2] - box[0]) * (x - xlo) / (xhi - xlo),
                    box[3] - (box[3] - box[1]) * (y - lo) / (hi - lo))

        if band:
            draw.rectangle([box[0], at(0, tf(band[1]))[1], box[2], at(0, tf(band[0]))[1]],
                           fill="#dddddd")
        draw.rectangle(box, outline="black")
        draw.text((x0 + pad_l, y0 + 6), p["title"], fill="black")
        for v in (lo, hi):
            label = f"{10 ** v:.3g}" if p.get("log_y") else f"{v:.3g}"
            draw.text((x0 + 2, at(0, v)[1] - 6), label, fill="black")
        draw.text((box[0], box[3] + 4), f"{xlo:g}", fill="black")
        draw.text((box[2] - 30, box[3] + 4), f"{xhi:g}", fill="black")
        for j, (label, line) in enumerate(p["lines"]):
            pts = [at(x, tf(v)) for x, v in zip(xs, line) if v is not None]
            colour = COLOURS[j % len(COLOURS)]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for q in pts if len(pts) < 30 else []:
                draw.ellipse([q[0] - 2, q[1] - 2, q[0] + 2, q[1] + 2], fill=colour)
            draw.text((box[0] + 4 + 90 * j, box[3] + 16), label, fill=colour)
    img.save(path)


def learning_curve(a):
    """The probes of every snapshot of run a.out_dir and of a.random_inits random inits, drawn
    as OUT_DIR/curve.png beside the log; -> one row per task (its pooling, scores per step)."""
    folder = os.path.join(a.out_dir, "snapshots")
    paths = sorted(glob.glob(os.path.join(folder, "step*.pt")))
    if not paths:
        raise FileNotFoundError(f"no snapshots in {folder}: train with --snapshot_every N")
    nets, configs = zip(*[load_networks(p) for p in paths])
    encoders, config = [n["target"] for n in nets], configs[0]
    steps = [model.read_checkpoint(p)["step"] for p in paths]
    sources, spec = probe_sets(config, encoders[0], a)
    cache = a.cache_dir or os.path.join(os.path.abspath(a.out_dir), "..", "feature_cache")
    randoms = [model.random_init_like(encoders[0], 1000 + i) for i in range(a.random_inits)]

    def scores(net, desc):
        feats = cached_features({"target": net}, spec, sources, cache, desc, a.dtype)
        targets = {p: linear_targets(feats[p][1], sources[p].speed) for p in feats}
        return linear_probes({p: feats[p][0]["target"] for p in feats}, targets)

    trained = [scores(net, f"step {s}") for net, s in zip(encoders, steps)]
    random = [scores(net, f"random init {i}") for i, net in enumerate(randoms)]
    best = {}  # per task, the pooling where the last snapshot is furthest above random init
    for task in CLASS_TASKS + REGRESSION_TASKS:
        gaps = {pool: trained[-1][pool][task][0] - mean_std([r[pool][task][0] for r in random])[0]
                for pool in POOLINGS if task in trained[-1][pool]}
        best[task] = max(gaps, key=gaps.get)
    with open(os.path.join(a.out_dir, "log.jsonl")) as f:
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
    draw_panels(panels, os.path.join(a.out_dir, "curve.png"))
    with open(os.path.join(a.out_dir, "curve.json"), "w") as f:
        json.dump({"steps": steps, "probes": rows, "trained": trained, "random_init": random},
                  f, indent=1)
    lines = ["| task | pooling | " + " | ".join(f"step {s}" for s in steps)
             + " | random init |", "|" + " --- |" * (len(steps) + 3)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['pooling']} | "
                     + " | ".join(f"{v:.3f}" for v in r["trained"])
                     + f" | {r['random'][0]:.3f} ± {r['random'][1]:.3f} |")
    print("\n".join(lines) + f"\nlearning curve: {os.path.join(a.out_dir, 'curve.png')}")
    return rows


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", metavar="OUT_DIR", help="a run trained with --snapshot_every N")
    linear_probe_arguments(p)
    a = p.parse_args(argv)
    a.dtype = model.pick_dtype(a.dtype, torch.device("cpu"))
    return learning_curve(a)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
