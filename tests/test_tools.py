"""tools/: tables.py (probed runs beside the papers' numbers), curve.py (a run's learning
curve), context.py (does the predictor use the context?), layer_probe.py (the probes at every
layer), run on hand-made results and on tiny checkpoints."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import model
import probe
import train
from test_probe import MNIST_ARGS, tiny_vjepa, two_seeds  # noqa: F401 (a fixture)
from tools import context, curve, layer_probe, tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("tool", ["tables", "curve", "context", "layer_probe"])
def test_each_tool_starts_with_its_command(tool):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{tool}.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage:")
    assert f"python tools/{tool}.py" in getattr({"tables": tables, "curve": curve,
                                                  "context": context,
                                                  "layer_probe": layer_probe}[tool], "__doc__")


# ----------------------------------------------------------------------------------------------
# tables.py

def test_ordering_verdicts_by_hand():
    """gap = high - low; combined std = sqrt(s_low^2 + s_high^2); a match needs gap > 2x it."""
    gap, combined, verdict = tables.ordering([1.0, 0.3], [2.0, 0.4])
    assert (gap, combined, verdict) == (pytest.approx(1.0), pytest.approx(0.5), "not distinguishable")
    assert tables.ordering([1.0, 0.3], [2.1, 0.4])[2] == "match"
    assert tables.ordering([2.1, 0.3], [1.0, 0.4])[2] == "reversed"
    assert tables.ordering([1.0, 0.0], [1.0, 0.0])[2] == "not distinguishable"



def vcr_results(preset, mse, psnr_db, seeds=3):
    """A results.json of `probe_vcr` with given [mean, std] per measure."""
    t = {"speed_mse": mse, "speed_r2": [0.5, 0.01], "rankme": [12.5, 0.5]}
    if psnr_db:
        t["psnr"] = psnr_db
    return {"preset": preset, "summary": {"trained": t, "random_init": {
        "speed_mse": [0.3, 0.02], "speed_r2": [0.6, 0.02], "rankme": [40.0, 1.0]}},
        "speed_mean_baseline": {"mse": 0.75, "r2": 0.0}, "psnr_mean_frames": 17.1,
        "probe_s": 90.0,
        "runs": [{"train_s": 60.0 * (i + 1)} for i in range(seeds)]}



def test_recipes_table_marks_the_tasks_that_clear_the_bar(tmp_path, capsys):
    """A gap clears with at least 5 points (0.1 R^2) and 3 combined stds; the row counts them
    per encoder and carries the forecast at the last horizon and two surprise shares."""
    def c(gap, stds):
        return {"gap": gap, "gap_over_std": stds}
    best = {"digit": c(0.06, 3.0), "direction": c(0.06, 2.9), "speed": c(0.1, 4.0),
            "velocity": c(0.09, 9.0), "position": c(-0.001, -0.5)}
    online = dict(best, digit=c(0.049, 10.0), direction=c(0.2, 5.0))
    r = {"ckpt": ["a", "b"], "best": best, "online_best": online,
         "forecast": {"predicted": [[0.9, 0], [0.5, 0.01]],
                      "predicted, own readout": [[0.9, 0], [0.625, 0.01]]},
         "surprise": {"teleport": {"trained": [0.97, 0.01]}, "identity": {"trained": [0.5, 0]}}}
    d = tmp_path / "run_a"
    d.mkdir()
    (d / "results.json").write_text(json.dumps(r))
    tables.main(["--recipes", str(d)])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row == ("| run_a | 2 | **+6.0 (3.0)** / +4.9 (10.0) | +6.0 (2.9) / **+20.0 (5.0)** | "
                   "**+0.100 (4.0)** / **+0.100 (4.0)** | +0.090 (9.0) / +0.090 (9.0) | "
                   "-0.001 (-0.5) / -0.001 (-0.5) | 2 / 2 | 0.50 / 0.62 | 97% / 50% |")


def test_table_lists_each_row_beside_the_paper_with_its_orderings(tmp_path, capsys):
    dirs = []
    for preset, mse, db in (("vjvcr", [0.05, 0.01], [18.25, 0.1]),
                            ("generative", [0.40, 0.02], [18.0, 0.3])):
        d = tmp_path / preset / "probe"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(vcr_results(preset, mse, db)))
        dirs.append(str(tmp_path / preset))
    tables.main(dirs)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[2] == ("| vjvcr | 3 | 0.050 ± 0.010 (0.04) | 0.500 ± 0.010 | 0.300 ± 0.020 | "
                        "0.600 ± 0.020 | 0.750 | 18.2 ± 0.1 (19.5) | 17.1 | 12.5 ± 0.5 | "
                        "40.0 ± 1.0 | 2.0 | 0.5 |")
    # speed: 0.40 - 0.05 = 0.35 > 2 sqrt(0.01^2 + 0.02^2) = 0.045; PSNR: 18.0 - 18.25 < 0
    assert "| speed_mse: vjvcr < generative | +0.350 | 0.045 | match |" in lines
    assert "| psnr: vjvcr < generative | -0.250 | 0.632 | not distinguishable |" in lines
    # 0.3 - 0.05 = 0.25 > 2 sqrt(0.01^2 + 0.02^2)
    assert "| speed_mse: vjvcr < random init | +0.250 | 0.045 | match |" in lines
    with pytest.raises(FileNotFoundError, match="train and probe"):
        tables.main([str(tmp_path / "missing")])



def vjepa_results(preset, objective, mask, digit_max, attentive=None):
    """A results.json of `probe_vjepa` whose every task scores 0.5 ± 0.01 except the digit read
    from the max token, given as [mean, std]."""
    linear = {p: {t: {"trained": [0.5, 0.01], "random": [0.4, 0.01]}
                  for t in probe.REGRESSION_TASKS + probe.CLASS_TASKS} for p in probe.POOLINGS}
    linear["max"]["digit"]["trained"] = digit_max
    r = {"preset": preset, "objective": objective, "mask": mask, "ckpt": ["a", "b", "c"],
         "linear": linear}
    if attentive:
        r["attentive"] = {t: {"trained": attentive, "random": [0.1, 0.0]} for t in probe.CLASS_TASKS}
    return r



def test_vjepa_findings_table_judges_the_papers_orderings(tmp_path, capsys):
    dirs = []
    for preset, objective, digit, att in (("laptop", "vjepa", [0.60, 0.02], [0.7, 0.01]),
                                          ("laptop_pixel", "pixel", [0.50, 0.03], None)):
        d = tmp_path / preset
        d.mkdir()
        (d / "results.json").write_text(json.dumps(vjepa_results(preset, objective, "future",
                                                                 digit, att)))
        dirs.append(str(d))
    tables.main(dirs)
    lines = capsys.readouterr().out.strip().splitlines()
    # 0.60 - 0.50 = 0.1 > 2 sqrt(0.02^2 + 0.03^2) = 0.0721: the paper's Table 1 ordering holds
    assert "| T1, digit (max): laptop_pixel < laptop | +0.1000 | 0.0721 | match |" in lines
    # equal scores elsewhere: 2 sqrt(2) 0.01 = 0.0283
    assert "| T1, speed (mean): laptop_pixel < laptop | +0.0000 | 0.0283 | not distinguishable |" \
        in lines
    # Table 3 within the run that has the attentive probe: 0.7 - 0.5 > 0.0283
    assert "| T3, digit: average < attentive, laptop | +0.2000 | 0.0283 | match |" in lines
    assert not any("laptop_pixel" in line and "T3" in line for line in lines)
    # a row of one seed has no spread to judge a gap against
    one = vjepa_results("laptop_pixel", "pixel", "future", [0.10, 0.0])
    one["ckpt"] = ["a"]
    (tmp_path / "laptop_pixel" / "results.json").write_text(json.dumps(one))
    tables.main(dirs)
    lines = capsys.readouterr().out.strip().splitlines()
    assert "| T1, digit (max): laptop_pixel < laptop | +0.5000 | 0.0400 | not judged: one seed |" \
        in lines
    # a laptop run with token_vcr against pixel targets without it: not Table 1's comparison
    vcr = vjepa_results("laptop", "vjepa", "future", [0.60, 0.02])
    vcr["token_vcr"] = 1.0
    (tmp_path / "laptop" / "results.json").write_text(json.dumps(vcr))
    tables.main(dirs)
    lines = capsys.readouterr().out.strip().splitlines()
    assert not any("T1" in line for line in lines)
    assert any(line.startswith("| laptop + token_vcr 1 | features |") for line in lines)



# ----------------------------------------------------------------------------------------------
# curve.py

def test_draw_panels_writes_a_grid_with_its_bands(tmp_path):
    from PIL import Image

    panels = [{"title": "loss", "x": [1, 2, 3], "lines": [("loss", [1.0, 0.1, 0.01])],
               "log_y": True},
              {"title": "two lines, one with gaps", "x": [0, 5, 10],
               "lines": [("a", [0.1, 0.2, 0.3]), ("b", [None, 0.0, None])]},
              {"title": "accuracy", "x": [0, 2, 4], "lines": [("trained", [0.2, 0.5, 0.9])],
               "band": (0.25, 0.35)},
              {"title": "flat", "x": [7], "lines": [("one point", [0.5])]}]
    path = tmp_path / "panels.png"
    curve.draw_panels(panels, str(path))
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (2 * 210, 3 * 330, 3)  # 4 panels in 3 columns
    assert (img != 255).any(-1).sum() > 1000  # axes, text and lines drawn
    band = (img == 0xDD).all(-1)  # the band's grey #dddddd
    # in panel 3 (a few pixels of text elsewhere may be anti-aliased to that grey)
    assert band[:210, 660:].sum() > 1000 and band[:, :660].sum() < 50



def test_snapshots_and_the_learning_curve(tmp_path):
    out = str(tmp_path / "run")
    ckpt = tiny_vjepa(out, "--snapshot_every", "2", "--log_every", "2")
    names = sorted(os.listdir(os.path.join(out, "snapshots")))
    assert names == ["step000000.pt", "step000002.pt", "step000004.pt"]
    snaps = [model.read_checkpoint(os.path.join(out, "snapshots", n)) for n in names]
    assert [s["step"] for s in snaps] == [0, 2, 4]
    # step 0 is the initialisation: a model built afresh from the run's seed
    cfg = train.Config(**snaps[0]["config"])
    torch.manual_seed(cfg.seed)
    _, nets, _ = train.build(cfg, torch.device("cpu"))
    for name in ("encoder", "target_encoder"):
        state = snaps[0][name]
        fresh = nets[name].state_dict()
        assert state.keys() == fresh.keys()
        assert all(torch.equal(state[k], fresh[k]) for k in fresh), name
    # the last snapshot holds the final weights
    final = model.read_checkpoint(ckpt)
    for name in ("encoder", "target_encoder"):
        assert all(torch.equal(snaps[2][name][k], v) for k, v in final[name].items())
    # the log's drift of the target encoder at step 4, from the snapshots
    params = [k for k, _ in nets["encoder"].named_parameters()]
    w0, w4 = (s["target_encoder"] for s in (snaps[0], snaps[2]))
    moved = sum(float((w4[k].double() - w0[k].double()).pow(2).sum()) for k in params)
    norm = sum(float(w0[k].double().pow(2).sum()) for k in params)
    with open(os.path.join(out, "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    assert log[-1]["step"] == 4
    assert log[-1]["drift_target"] == pytest.approx(math.sqrt(moved / norm), rel=1e-4)

    rows = curve.main([out, "--fit_clips", "48", "--test_clips", "32", "--random_inits", "2",
                       "--cache_dir", str(tmp_path / "cache")] + MNIST_ARGS)
    with open(os.path.join(out, "curve.json")) as f:
        saved = json.load(f)
    assert saved["steps"] == [0, 2, 4] and len(saved["trained"]) == 3
    assert len(saved["random_init"]) == 2
    assert [r["task"] for r in rows] == list(probe.CLASS_TASKS + probe.REGRESSION_TASKS)
    for r in saved["probes"]:
        assert r["steps"] == [0, 2, 4] and len(r["trained"]) == 3
        assert r["trained"] == [t[r["pooling"]][r["task"]][0] for t in saved["trained"]]
    from PIL import Image
    assert Image.open(os.path.join(out, "curve.png")).size == (3 * 330, 3 * 210)  # 9 panels



# ----------------------------------------------------------------------------------------------
# context.py

def test_context_dependence_tells_a_blind_predictor_from_one_that_reads(tmp_path, two_seeds):
    """A predictor whose context embedding is zeroed cannot see the context: another clip's
    context, or zeros, give exactly its loss, its predictions do not change, and the encoder
    gets no gradient. The same checkpoint unmodified reads its context (a change above 0)."""
    state = torch.load(two_seeds[0], map_location="cpu", weights_only=False)
    reads = context.main([two_seeds[0], "--clips", "16"])
    for key in [k for k in state["predictor"] if "predictor_embed." in k]:
        state["predictor"][key] = torch.zeros_like(state["predictor"][key])
    blind_path = str(tmp_path / "blind.pt")
    torch.save(state, blind_path)
    blind = context.context_dependence(blind_path, clips=16)["trained"]
    assert blind["loss"]["own"] == blind["loss"]["other_clip"] == blind["loss"]["zeros"]
    assert blind["prediction_change"] == 0 and blind["grad_norm"]["encoder"] == 0
    assert blind["grad_norm"]["predictor"] > 0
    assert reads["trained"]["prediction_change"] > 0 and reads["trained"]["grad_norm"]["encoder"] > 0
    assert reads["init"] == context.context_dependence(blind_path, clips=16)["init"]  # the seed's init



def test_content_share_against_a_loop():
    g = torch.Generator().manual_seed(3)
    targets = torch.randn(5, 7, 4, generator=g) + 3 * torch.randn(1, 7, 4, generator=g)
    num = den = 0.0
    for n in range(7):  # per position: deviations from that position's mean over the clips
        for d in range(4):
            col = [float(targets[b, n, d]) for b in range(5)]
            mean = sum(col) / 5
            num += sum((c - mean) ** 2 for c in col)
            den += sum(c ** 2 for c in col)
    assert abs(context.content_share(targets) - num / den) < 1e-6
    assert context.content_share(targets[:1].expand(5, -1, -1)) < 1e-10  # positions explain all


def test_attentive_sweep_reports_the_spread_over_probe_seeds(tmp_path, two_seeds, capsys):
    """tools/attentive_sweep.py: per setting and encoder, the accuracies of each probe seed
    and their mean ± sample std in the printed table; smaller fit sets use the first clips."""
    from tools import attentive_sweep
    out = tmp_path / "sweep.json"
    results = attentive_sweep.main(["--ckpt", two_seeds[0], "--settings", "24:1e-2:1:8",
                                    "16:1e-3:1:8", "--seeds", "2", "--test_clips", "20",
                                    "--dtype", "float32", "--out", str(out)] + MNIST_ARGS)
    assert [(r["encoder"], r["setting"]) for r in results] == [
        ("trained", (24, 0.01, 1, 8)),
        ("trained", (16, 0.001, 1, 8)), ("random init", (24, 0.01, 1, 8)),
        ("random init", (16, 0.001, 1, 8))]
    table = capsys.readouterr().out.splitlines()
    assert table[1] == "| encoder | fit:lr:epochs:batch | digit | direction | speed | minutes |"
    for r, row in zip(results, table[3:]):
        acc = r["acc"]["digit"]
        assert len(acc) == 2 and all(0 <= x <= 1 for x in acc)
        mean, std = 100 * float(np.mean(acc)), 100 * float(np.std(acc, ddof=1))
        assert row.split(" | ")[2] == f"{mean:.1f} ± {std:.1f}"
    assert json.loads(out.read_text())[0]["setting"] == [24, 0.01, 1, 8]


# ----------------------------------------------------------------------------------------------
# layer_probe.py

def test_layer_features_are_the_blocks_run_by_hand():
    """Each layer's mean token equals a loop over the blocks: the layer-normed residual stream
    after block l, and after the last block the encoder's own output (its norm)."""
    torch.manual_seed(0)
    enc = model.VisionTransformer(4, 32, 16, 2, 1, 32, 3, 2).eval()
    source = data.MovingMNIST(*data.procedural_digits(per_class=3), 4, 32, 1)
    feats, labels = layer_probe.layer_features(enc, source, 6, 0, torch.float32)
    clips = next(data.fixed_chunks(source, 6, 0, chunk=64))[0]
    with torch.no_grad():
        x = enc.patch_embed(clips) + enc.pos_embed
        for i, block in enumerate(enc.blocks, 1):
            x = block(x)
            ref = enc.norm(x) if i == 3 else torch.nn.functional.layer_norm(x, x.shape[-1:])
            torch.testing.assert_close(feats[f"mean@{i}"], ref.mean(1))
            torch.testing.assert_close(feats[f"max@{i}"], ref.amax(1))
    assert len(labels["digits"]) == 6 and set(feats) == {f"{p}@{i}" for p in probe.POOLINGS
                                                          for i in (1, 2, 3)}


def test_layer_probe_reads_every_layer_of_both_encoders(tmp_path, two_seeds, capsys):
    out = layer_probe.main(["--ckpt", *two_seeds, "--fit_clips", "48", "--test_clips", "32",
                            "--random_inits", "2", "--out_dir", str(tmp_path)] + MNIST_ARGS)
    assert probe.POOLINGS == ("mean", "max", "time", "cells")  # patched only inside main
    assert set(out["target"]) == set(out["online"]) == set(probe.CLASS_TASKS +
                                                           probe.REGRESSION_TASKS)
    assert out["target"]["digit"]["pooling"].split("@")[0] in probe.CLASS_POOLINGS
    for task in ("digit", "speed"):  # the best init at its best layer and pooling >= the mean
        assert out["target"][task]["random"][0] >= out["per_layer"][task]["random_init@1"]
    assert set(out["per_layer"]["digit"]) == {f"{n}@1" for n in ("target", "online",
                                                                 "random_init")}
    with open(tmp_path / "layers.json") as f:
        assert json.load(f)["target"] == out["target"]
    assert "| digit | target |" in capsys.readouterr().out
