"""Probed runs side by side, beside the papers' numbers, with the verdict of each ordering.

    python tools/tables.py OUT_DIR [OUT_DIR ...]
    python tools/tables.py --recipes OUT_DIR [OUT_DIR ...]   # a recipe search, row per run

Each OUT_DIR is a folder with results.json (probe.py --out_dir) or probe/results.json (a run's
folder). V-JEPA runs: the findings table (V-JEPA Tables 1, 3 and 4), each run's probes in full
below it. VJ-VCR and generative runs: VJ-VCR Table 1; latent models (switch_*): its Table 2.
"""
import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from probe import CLASS_TASKS, POOLINGS, REGRESSION_TASKS  # noqa: E402

# V-JEPA's frozen-evaluation findings (K400 top-1, attentive probe unless noted): feature vs.
# pixel targets (Table 1), attentive vs. average pooling (Table 3), masks (Table 4).
PAPER_VJEPA = {("vjepa", "multiblock", "attentive"): "73.7 (T1, T3); 72.9 (T4)",
               ("vjepa", "multiblock", "average"): "56.7 (T3)",
               ("pixel", "multiblock", "attentive"): "68.6 (T1)",
               ("vjepa", "random_tube", "attentive"): "51.5 (T4)",
               ("vjepa", "causal", "attentive"): "61.3 (T4, causal[6])"}
# The paper's orderings, (lower preset, higher preset, paper table); each is judged only
# between runs of the same token_vcr ("laptop" probed before token_vcr existed is laptop_vjepa).
VJEPA_ORDERINGS = [("laptop_pixel", "laptop_vjepa", "T1"), ("laptop_pixel", "laptop", "T1"),
                   ("laptop_tube", "laptop_multiblock", "T4"),
                   ("laptop_causal", "laptop_multiblock", "T4")]
# The pooling each task is read with in the findings table, fixed for every run.
HEADLINE = {"digit": "max", "direction": "max", "speed": "mean", "velocity": "time",
            "position": "cells"}
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
# VJ-VCR Table 2: accuracy of linear classifiers from z* to the switch psi and to the digit,
# and the share of zeros in z*.
PAPER_TABLE2 = {"switch_discrete": ("80%", "~10%", "-"),
                "switch_sparse80": ("94.7%", "31.6%", "80%"),
                "switch_sparse20": ("99.5%", "57.6%", "20%")}


def _load_results(d):
    """results.json of a probe-results folder or of a run folder (OUT_DIR/probe/results.json)."""
    for path in (os.path.join(d, "results.json"), os.path.join(d, "probe", "results.json")):
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    raise FileNotFoundError(f"{os.path.join(d, 'probe', 'results.json')} is missing: train and "
                            f"probe {d} first")


def table(out_dirs):
    """The markdown tables of probed runs: V-JEPA's findings, VJ-VCR's Table 1 or Table 2."""
    runs = [_load_results(d) for d in out_dirs]
    if "linear" in runs[0]:
        return "\n\n".join([vjepa_table(runs)] + [s for s in map(vjepa_summary, runs) if s])
    if "psi_from_target" in runs[0]["summary"]:
        return latent_table(runs)
    return vcr_table(runs)


def ordering(low, high):
    """Is the first below the second? low, high: [mean, std] over seeds -> (gap = high - low,
    combined std, verdict): "match" only where the gap exceeds twice the combined std,
    "reversed" where the opposite gap does, else "not distinguishable"."""
    gap, combined = high[0] - low[0], math.hypot(low[1], high[1])
    verdict = ("match" if gap > 2 * combined else "reversed" if -gap > 2 * combined
               else "not distinguishable")
    return gap, combined, verdict


def fmt(task, c, key):
    m, s = c[key]
    return f"{m:.1%} ± {s:.1%}" if task in CLASS_TASKS else f"{m:.3f} ± {s:.3f}"


def clears(c, task):
    """Trained above random init by at least 5 points (0.1 R^2) and 3 combined stds."""
    return c["gap"] >= (0.05 if task in CLASS_TASKS else 0.1) and (c["gap_over_std"] or 0) >= 3


def vjepa_table(runs):
    """V-JEPA's findings: a row per run (mean ± std over its seeds), each task at its HEADLINE
    pooling with random init beside, the average-pooling (mean) and, when measured, the
    attentive digit and direction probes (Table 3), the paper's K400 number; then the paper's
    orderings: Table 1 (features above pixels), Table 4 (multi-block above random-tube and
    causal), and Table 3 (attentive above average pooling) within each run."""
    lines = ["| run | targets | masks | seeds | " + " | ".join(
        f"{t} ({p})" for t, p in HEADLINE.items()) + " | digit / direction, average pooling | "
        "digit / direction, attentive | paper K400 (attentive) |", "|" + " --- |" * 11]

    def cell(c, task):
        return f"{fmt(task, c, 'trained')} ({fmt(task, c, 'random')})"

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


def vjepa_summary(r):
    """One V-JEPA result in full: every task and pooling, trained beside random init, the
    test-set standard error, the gap and whether it clears the bar (`clears`)."""
    if "se" not in next(iter(r["linear"]["mean"].values())):
        return ""  # a results.json without the comparisons' details
    lines = [f"{r['preset']} ({os.path.dirname(r['ckpt'][0])}): {len(r['ckpt'])} checkpoint(s) "
             f"({r['objective']} targets, "
             f"{r['mask']} masks) against {r['random_inits']} random-init encoders; fit on "
             f"{r['fit_clips']} clips of training digits, scored on {r['test_clips']} clips of "
             "held-out digits. Accuracy (digit, direction) or R^2, mean ± std; SE: the "
             "test-set standard error of one trained run.",
             "| task | pooling | trained | random init | SE | gap | gap / combined std | "
             "clears the bar |", "|" + " --- |" * 8]
    for task in CLASS_TASKS + REGRESSION_TASKS:
        for pooling in POOLINGS:
            c = r["linear"][pooling].get(task)
            if c is None:
                continue
            unit = 100 if task in CLASS_TASKS else 1
            lines.append(f"| {task} | {pooling} | {fmt(task, c, 'trained')} | "
                         f"{fmt(task, c, 'random')} | {c['se'] * unit:.3g} | "
                         f"{c['gap'] * unit:+.3g} | {c['gap_over_std']} | "
                         f"{'yes' if clears(c, task) else 'no'} |")
    for task, c in r.get("best", {}).items():  # the best pooling against the best random one
        unit = 100 if task in CLASS_TASKS else 1
        lines.append(f"| **{task}** | **best: {c['pooling']} / {c['random_pooling']}** | "
                     f"{fmt(task, c, 'trained')} | {fmt(task, c, 'random')} | "
                     f"{c['se'] * unit:.3g} | {c['gap'] * unit:+.3g} | {c['gap_over_std']} | "
                     f"{'yes' if clears(c, task) else 'no'} |")
    if "attentive" in r:
        lines += ["\nattentive probe (mean ± std over probe seeds and checkpoints; random init "
                  "over probe seeds and inits):", "| task | trained | random init | "
                  "gap / combined std | largest std over probe seeds (trained / random) |",
                  "|" + " --- |" * 5]
        for task, c in r["attentive"].items():
            seed_std = " | " + (" / ".join(f"{x:.1%}" for x in c["probe_seed_std"])
                                if "probe_seed_std" in c else "-")
            lines.append(f"| {task} | {c['trained'][0]:.1%} ± {c['trained'][1]:.1%} | "
                         f"{c['random'][0]:.1%} ± {c['random'][1]:.1%} | {c['gap_over_std']}"
                         f"{seed_std} |")
    return "\n".join(lines)


def _ms(c, digits=3):
    return f"{c[0]:.{digits}f} ± {c[1]:.{digits}f}" if c else "-"


def _minutes(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return f"{sum(values) / len(values) / 60:.1f}" if values else "-"


def vcr_table(results):
    """VJ-VCR's Table 1, a row per probed run (mean ± std over its seeds), the paper's values in
    brackets, random init, predict-the-mean and the PSNR of the fitting set's average target
    clip beside; then every ordering of the paper's table that both rows are there for, and
    each row against random init, with its verdict (`ordering`)."""
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


def latent_table(results):
    """VJ-VCR's Table 2, a row per probed run (mean ± std over its seeds), the paper's values
    in brackets, with what limits them: how evenly the discrete options are used and how long
    the sparse codes stayed at zero in training."""
    lines = ["| row | seeds | psi accuracy (paper) | digit accuracy (paper) | zeros in z* (paper) "
             "| most used option | clips with z* = 0 | codes used from step | psi from h_y "
             "| prediction MSE | PSNR dB | train min | eval min |", "|" + " --- |" * 13]
    for r in results:
        s = r["summary"]
        paper = PAPER_TABLE2.get(r["preset"], ("-", "-", "-"))

        def pct(key):
            return f"{100 * s[key][0]:.1f} ± {100 * s[key][1]:.1f}%" if key in s else "-"

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


def recipes_table(out_dirs):
    """A row per probed run of a recipe search: per task, the best readout of the target / the
    online encoder minus the best random init (points for digit and direction, R^2 otherwise),
    gap / combined std in brackets, in bold where it clears the bar (`clears`); how many tasks
    each clears; the forecast 8 frames ahead (the target's readout / the predictions' own);
    the share of teleport and identity-swap pairs that surprise it."""
    tasks = CLASS_TASKS + REGRESSION_TASKS
    lines = ["| run | seeds | " + " | ".join(tasks) + " | clears (target / online) | forecast "
             "R^2 +4 | surprise: teleport / identity |", "|" + " --- |" * (len(tasks) + 5)]
    for d in out_dirs:
        r = _load_results(d)
        keys = [k for k in ("best", "online_best") if k in r]
        won = [[t for t in tasks if clears(r[k][t], t)] for k in keys]

        def cell(c, t, bold):
            gap = f"{100 * c['gap']:+.1f}" if t in CLASS_TASKS else f"{c['gap']:+.3f}"
            return f"**{gap} ({c['gap_over_std']})**" if bold else f"{gap} ({c['gap_over_std']})"

        cells = [" / ".join(cell(r[k][t], t, t in w) for k, w in zip(keys, won)) for t in tasks]
        f, s = r.get("forecast"), r.get("surprise")
        lines.append(f"| {os.path.basename(os.path.normpath(d))} | {len(r['ckpt'])} | "
                     + " | ".join(cells) + f" | {' / '.join(str(len(w)) for w in won)} | "
                     + (f"{f['predicted'][-1][0]:.2f} / {f['predicted, own readout'][-1][0]:.2f}"
                        if f else "-") + " | "
                     + (f"{s['teleport']['trained'][0]:.0%} / {s['identity']['trained'][0]:.0%}"
                        if s else "-") + " |")
    return "\n".join(lines)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dirs", nargs="+", metavar="OUT_DIR",
                   help="a probed run's folder (results.json or probe/results.json)")
    p.add_argument("--recipes", action="store_true", help="V-JEPA runs as a recipe search: "
                   "both encoders' best readouts against the bar, forecast and surprise")
    a = p.parse_args(argv)
    text = recipes_table(a.out_dirs) if a.recipes else table(a.out_dirs)
    print(text)
    return text


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
