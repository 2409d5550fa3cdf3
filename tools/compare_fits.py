"""What solving the linear probes in float64 moves: the same cached features probed by this
tree's probe.py (float64 ridge and logistic fits) and by an earlier commit's (float32), on 1
and 2 threads.

    python tools/compare_fits.py out/feature_cache/features_*.pt [--before e5b3be7]

The feature files are those `python probe.py` caches (OUT_DIR/../feature_cache/). Prints, per
pooling and task, each version's score on each thread count and the largest difference.
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import probe  # noqa: E402


def module_at(commit, name="probe"):
    """`name`.py as it was at `commit`, imported beside this tree's modules."""
    text = subprocess.run(["git", "show", f"{commit}:{name}.py"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), f"{name}_{commit}.py")
    with open(path, "w") as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location(f"{name}_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scores(version, path, threads):
    torch.set_num_threads(threads)
    feats = torch.load(path, weights_only=True)
    targets = {p: probe.linear_targets(feats[p][1], (1.0, 4.0)) for p in feats}
    return version.linear_probes({p: feats[p][0] for p in feats}, targets)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features", nargs="+")
    p.add_argument("--before", default="e5b3be7", help="the commit with float32 fits")
    a = p.parse_args(argv)
    versions = {"float64 (this tree)": probe, f"float32 ({a.before})": module_at(a.before)}
    print("| features | pooling | task | " + " | ".join(
        f"{v}, {t} thread(s)" for v in versions for t in (1, 2)) + " | largest difference |")
    print("| --- " * (4 + 2 * len(versions)) + "|")
    worst = {v: 0.0 for v in versions}
    for path in a.features:
        runs = {(v, t): scores(m, path, t) for v, m in versions.items() for t in (1, 2)}
        first = runs[next(iter(runs))]
        for pooling in first:
            for task in first[pooling]:
                values = [runs[k][pooling][task][0] for k in runs]
                spread = max(values) - min(values)
                for v in versions:
                    mine = [runs[v, t][pooling][task][0] for t in (1, 2)]
                    worst[v] = max(worst[v], abs(mine[0] - mine[1]))
                print(f"| {os.path.basename(path)[:18]} | {pooling} | {task} | "
                      + " | ".join(f"{x:.4f}" for x in values) + f" | {spread:.4f} |")
    for v, w in worst.items():
        print(f"{v}: largest difference between 1 and 2 threads {w:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
