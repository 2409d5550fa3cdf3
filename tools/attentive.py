"""V-JEPA's attentive probe (appendix D.1) of checkpoints' target and online encoders, each
beside random-init encoders of their shape; adds its rows to probe.py's results.

    python tools/attentive.py --ckpt OUT_DIR/ckpt.pt [CKPT ...] --seeds 3

Several checkpoints: seeds of one run (mean ± std over checkpoints and probe seeds). Writes
"attentive" (target) and "online_attentive" into OUT_DIR/probe/results.json (made by
probe.py, or here when absent), where tools/tables.py reads them.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

import data  # noqa: E402
import model  # noqa: E402
import train  # noqa: E402
from probe import (accuracy_and_se, compare, load_networks, mean_std,  # noqa: E402
                   probe_sets, probe_tasks)


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
    encoder, a.seeds probe seeds each, fitted on a.fit_clips clips
    -> ({task: comparison (`compare`), with probe_seed_std: the largest std over probe seeds of
    one encoder, [trained, random init]}, {"trained" | "random_init": [{task: [accuracy, se]}]}
    encoder by encoder, probe seed by probe seed)."""
    sets = []
    for part, n, seed in (("fit", a.fit_clips, 1), ("test", a.test_clips, 2)):
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
            for seed in range(a.seeds):
                torch.manual_seed(seed)  # the same probe weights for every encoder
                probes = nn.ModuleList([AttentiveProbe(net.dim, net.blocks[0].attn.heads,
                                                       tasks_fit[t][1]) for t in names])
                fit_probes(probes, fit_tokens, [tasks_fit[t][0] for t in names],
                           epochs=a.epochs, lr=a.lr, seed=seed, dtype=a.dtype)
                acc[name].append({t: accuracy_and_se(probabilities(
                    probes[j], test_tokens, dtype=a.dtype).argmax(1), tasks_test[t][0])
                    for j, t in enumerate(names)})
    k = a.seeds  # runs of one encoder are consecutive: its spread over probe seeds
    seed_std = {name: {t: max(mean_std([r[t][0] for r in runs[i:i + k]])[1]
                              for i in range(0, len(runs), k)) for t in names}
                for name, runs in acc.items()}
    return {t: {**compare([r[t][0] for r in acc["trained"]], [r[t][0] for r in acc["random_init"]],
                          [r[t][1] for r in acc["trained"]]),
                "probe_seed_std": [round(seed_std[n][t], 4) for n in acc]} for t in names}, acc


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", nargs="+", required=True, help="checkpoint(s): seeds of one run")
    p.add_argument("--seeds", type=int, default=3, help="probe seeds per encoder")
    p.add_argument("--random_inits", type=int, default=3, help="random-init encoders beside")
    # the schedule with the smallest std over probe seeds (tools/attentive_sweep.py; results 3)
    p.add_argument("--fit_clips", type=int, default=2048, help="clips the probe is trained on")
    p.add_argument("--test_clips", type=int, default=2500, help="held-out clips scored")
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--lr", type=float, default=3e-3, help="peak LR")
    p.add_argument("--mnist_dir", default="")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))
    p.add_argument("--out_dir", default="", help="default: the first checkpoint's folder/probe")
    a = p.parse_args(argv)
    a.dtype = model.pick_dtype(a.dtype, torch.device("cpu"))
    for path in a.ckpt:
        if not os.path.exists(path):
            raise FileNotFoundError(f"--ckpt {path} does not exist")
    nets, configs = zip(*[load_networks(c) for c in a.ckpt])
    first = nets[0]["target"]
    sources, _ = probe_sets(configs[0], first, a)
    randoms = [model.random_init_like(first, 1000 + i) for i in range(a.random_inits)]
    out_dir = a.out_dir or os.path.join(os.path.dirname(os.path.abspath(a.ckpt[0])), "probe")
    path = os.path.join(out_dir, "results.json")
    results = {"ckpt": a.ckpt}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    for net in ("target", "online"):
        key = "attentive" if net == "target" else "online_attentive"
        results[key], results[f"{key}_runs"] = attentive_probes(
            [n[net] for n in nets], randoms, sources, a)
        print(f"attentive probe, {net} encoder, accuracy (mean ± std; {a.seeds} probe seeds)")
        print("| task | trained | random init | gap ± combined std |\n| --- | --- | --- | --- |")
        for t, c in results[key].items():
            print(f"| {t} | {c['trained'][0]:.3f} ± {c['trained'][1]:.3f} | {c['random'][0]:.3f}"
                  f" ± {c['random'][1]:.3f} | {c['gap']:+.3f} ± {c['combined_std']:.3f} |")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(f"written to {path}")
    return results


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
