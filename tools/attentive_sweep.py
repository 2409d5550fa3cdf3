"""The attentive probe's spread over probe seeds, for a few training schedules: which one is
stable enough to decide (std over seeds at most 2 points on the digit).

    python tools/attentive_sweep.py --ckpt OUT_DIR/ckpt.pt --seeds 3 \
        --settings 1024:1e-2:20:16 4096:1e-3:20:64 ...   # fit clips : peak lr : epochs : batch

For each setting, the probe of the trained encoder and of one random-init encoder of its shape
(model.random_init_like, seed 1000), `--seeds` probe seeds each, on the tokens encoded once
(the largest fit set; smaller settings use its first clips). Prints a Markdown table of
mean ± std over probe seeds per task, and the minutes each setting took; --out writes JSON.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import data  # noqa: E402
import model  # noqa: E402
import probe  # noqa: E402
from tools import attentive  # noqa: E402


def spread(encoder, fit, test, setting, seeds, dtype):
    """Attentive probes of one encoder under one setting over probe seeds -> {task: [acc]}."""
    n, lr, epochs, batch = setting
    (fit_tokens, fit_tasks), (test_tokens, test_tasks) = fit, test
    names = list(fit_tasks)
    out = {t: [] for t in names}
    for seed in range(seeds):
        torch.manual_seed(seed)
        probes = nn.ModuleList([attentive.AttentiveProbe(encoder.dim, encoder.blocks[0].attn.heads,
                                                     fit_tasks[t][1]) for t in names])
        attentive.fit_probes(probes, fit_tokens[:n], [fit_tasks[t][0][:n] for t in names],
                         epochs=epochs, batch=batch, lr=lr, seed=seed, dtype=dtype)
        for j, t in enumerate(names):
            pred = attentive.probabilities(probes[j], test_tokens, dtype=dtype).argmax(1)
            out[t].append(probe.accuracy_and_se(pred, test_tasks[t][0])[0])
    return out


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--settings", nargs="+", default=["1024:1e-2:20:16"],
                   help="fit_clips:lr:epochs:batch per setting")
    p.add_argument("--seeds", type=int, default=3, help="probe seeds per setting")
    p.add_argument("--test_clips", type=int, default=2500)
    p.add_argument("--mnist_dir", default="")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))
    p.add_argument("--out", default="", help="also write the results as JSON here")
    a = p.parse_args(argv)
    a.dtype = model.pick_dtype(a.dtype, torch.device("cpu"))
    settings = [(int(n), float(lr), int(e), int(b)) for n, lr, e, b in
                (s.split(":") for s in a.settings)]
    nets, config = probe.load_networks(a.ckpt)
    encoder = nets["target"]
    a.fit_clips = max(s[0] for s in settings)
    sources, _ = probe.probe_sets(config, encoder, a)
    rows, results = [], []
    for name, net in (("trained", encoder), ("random init", model.random_init_like(encoder, 1000))):
        sets = []
        for part, n, seed in (("fit", a.fit_clips, 1), ("test", a.test_clips, 2)):
            clips, labels = data.fixed_set(sources[part], n, seed=seed)
            tokens = model.encode(net, clips.expand(-1, net.in_chans, -1, -1, -1),
                                  dtype=a.dtype).to(a.dtype)
            sets.append((tokens, probe.probe_tasks(labels, sources[part].speed)))
        for setting in settings:
            start = time.time()
            acc = spread(net, sets[0], sets[1], setting, a.seeds, a.dtype)
            minutes = (time.time() - start) / 60
            stats = {t: probe.mean_std(v) for t, v in acc.items()}
            results.append({"encoder": name, "setting": setting, "acc": acc,
                            "minutes": round(minutes, 2)})
            rows.append(f"| {name} | {':'.join(map(str, setting))} | " + " | ".join(
                f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in stats.values())
                + f" | {minutes:.1f} |")
    tasks = list(results[0]["acc"])
    print(f"attentive probe of {a.ckpt}, {a.seeds} probe seeds, {a.test_clips} test clips, "
          f"{str(a.dtype).replace('torch.', '')}, accuracy % (mean ± std over probe seeds)")
    print("| encoder | fit:lr:epochs:batch | " + " | ".join(tasks) + " | minutes |")
    print("|" + " --- |" * (len(tasks) + 3))
    print("\n".join(rows))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
