"""The linear probes of probe.py at every block of the encoders, trained and random alike.

    python tools/layer_probe.py --ckpt OUT_DIR/ckpt.pt [CKPT ...] --out_dir runs/layers

Physics variables often peak in a middle layer, so the last layer may undersell an encoder; a
fair readout then picks the best layer for the random inits too. Each block's output (the last
through the encoder's own norm, the others through a layer norm without parameters) is pooled as
probe.py pools tokens; per task, the trained encoders' best (layer, pooling), by the mean over
seeds, is compared with the best score of any random init at any layer and pooling (probe.py's
best_readout with layers as more poolings). Writes OUT_DIR/layers.json and prints the tables.
"""
import argparse
import json
import os
import sys
from unittest import mock

import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import model  # noqa: E402
import probe  # noqa: E402


@torch.no_grad()
def layer_features(encoder, source, n, seed, dtype):
    """{f"{pooling}@{layer}": [n, F]} for layers 1..depth, and the clips' labels."""
    outs, hooks = [], [b.register_forward_hook(lambda m, i, o: outs.append(o.float()))
                       for b in encoder.blocks]
    feats, labels = [], []
    try:
        for clips, lab in tqdm(data.fixed_chunks(source, n, seed, chunk=64), leave=False,
                               total=-(-n // 64), unit="batch"):
            outs.clear()
            with model.autocast(torch.device("cpu"), dtype):
                last = encoder(clips.expand(-1, encoder.in_chans, -1, -1, -1)).float()
            layers = [F.layer_norm(o, o.shape[-1:]) for o in outs[:-1]] + [last]
            feats.append({f"{p}@{i + 1}": v for i, h in enumerate(layers)
                          for p, v in probe.pool_tokens(h, encoder.grid).items()})
            labels.append(lab)
    finally:
        for h in hooks:
            h.remove()
    return ({k: torch.cat([f[k] for f in feats]) for k in feats[0]},
            {k: torch.cat([lab[k] for lab in labels]) for k in labels[0]})


def layer_probes(encoder, sources, a, desc):
    """probe.linear_probes of every layer's pooled tokens (POOLINGS patched to pooling@layer)."""
    print(f"{desc}: encoding, then {len(probe.POOLINGS)} readouts per task", flush=True)
    feats = {part: layer_features(encoder, sources[part], *spec, a.dtype) for part, spec in
             (("fit", (a.fit_clips, 1)), ("test", (a.test_clips, 2)))}  # probe.py's clips
    targets = {part: probe.linear_targets(feats[part][1], sources[part].speed) for part in feats}
    return probe.linear_probes({part: feats[part][0] for part in feats}, targets)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", nargs="+", required=True, help="checkpoints: seeds of one run")
    probe.linear_probe_arguments(p)
    p.add_argument("--out_dir", required=True)
    a = p.parse_args(argv)
    a.dtype = model.pick_dtype(a.dtype, torch.device("cpu"))
    trained = [probe.load_networks(c) for c in a.ckpt]
    config, first = trained[0][1], trained[0][0]["target"]
    sources, _ = probe.probe_sets(config, first, a)
    depth = len(first.blocks)
    # layers as more poolings: probe.linear_probes and best_readout then read every layer
    poolings = tuple(f"{q}@{i}" for i in range(1, depth + 1) for q in probe.POOLINGS)
    classes = tuple(q for q in poolings if q.split("@")[0] in probe.CLASS_POOLINGS)
    encoders = {"target": [n["target"] for n, _ in trained],
                "online": [n["online"] for n, _ in trained if "online" in n],
                "random_init": [model.random_init_like(first, 1000 + i)
                                for i in range(a.random_inits)]}  # probe.py's random inits
    with mock.patch.multiple(probe, POOLINGS=poolings, CLASS_POOLINGS=classes):
        runs = {name: [layer_probes(enc, sources, a, f"{name} {i}") for i, enc in enumerate(nets)]
                for name, nets in encoders.items()}
        best = {net: probe.best_readout({"trained": runs[net], "random_init": runs["random_init"]})
                for net in ("target", "online") if runs[net]}
    out = {"ckpt": a.ckpt, "depth": depth, "random_inits": a.random_inits, **best}
    # per layer: the mean over seeds (random: over inits) at its best pooling
    out["per_layer"] = {task: {f"{net}@{i}": max(probe.mean_std([r[f"{q}@{i}"][task][0]
                                                                for r in runs[net]])[0]
                                                 for q in probe.POOLINGS
                                                 if task in runs[net][0][f"{q}@{i}"])
                               for net in ("target", "online", "random_init") if runs[net]
                               for i in range(1, depth + 1)}
                        for task in probe.CLASS_TASKS + probe.REGRESSION_TASKS}
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, "layers.json"), "w") as f:
        json.dump(out, f, indent=1)
    print("\n| task | encoder | trained (best layer) | best random (layer) | gap / combined std |"
          "\n| --- | --- | --- | --- | --- |")
    for net in ("target", "online"):
        for task, c in out.get(net, {}).items():
            print(f"| {task} | {net} | {c['trained'][0]:.3f} ± {c['trained'][1]:.3f} "
                  f"({c['pooling']}) | {c['random'][0]:.3f} ({c['random_pooling']}) | "
                  f"{c['gap']:+.3f} / {c['gap_over_std']} |")
    print("\nper layer: the mean over seeds (random: over inits) at the layer's best pooling")
    for task, row in out["per_layer"].items():
        print(f"{task}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
