"""tools/probe_vcr.py: VJ-VCR's frozen evaluation (Table 1's speed probe, PSNR, RankMe; Table 2
and Figure 3 of the latent models) against closed forms and on tiny checkpoints."""
import json
import os
import statistics

import pytest
import torch

import train
from tools import probe_vcr, tables


def test_speed_probe_recovers_a_linearly_encoded_speed():
    g = torch.Generator().manual_seed(0)
    speed = 1 + 3 * torch.rand(600, generator=g)
    noise = torch.randn(600, 20, generator=g)
    features = torch.cat([noise[:, :10], (2.5 * speed - 1)[:, None] + 0.01 * noise[:, 10:11],
                          noise[:, 11:]], dim=1)  # one column encodes speed linearly
    predict = probe_vcr.ridge_fit(features[:500], speed[:500])
    scores = probe_vcr.regression_scores(predict(features[500:]), speed[500:])
    assert scores["r2"] > 0.999 and scores["mse"] < 1e-3
    # and pure noise predicts nothing
    predict = probe_vcr.ridge_fit(noise[:500], speed[:500])
    assert probe_vcr.regression_scores(predict(noise[500:]), speed[500:])["r2"] < 0.1


def test_psnr_closed_form():
    frames = torch.rand(3, 1, 2, 8, 8) * 0.8
    assert probe_vcr.psnr(frames + 0.1, frames) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01


def tiny_vcr_runs(tmp_path, mnist_args, preset="vjvcr", seeds=(0, 1), extra=()):
    """Checkpoints of a few steps of a tiny VJ-VCR config, one per seed."""
    paths = []
    for seed in seeds:
        out = str(tmp_path / f"{preset}_s{seed}")
        train.main(["--preset", preset, "--enc_dim", "4", "--batch_size", "16", "--max_steps",
                    "3", "--val_clips", "0", "--seed", str(seed), "--out_dir", out,
                    *extra] + mnist_args)
        paths.append(os.path.join(out, "ckpt.pt"))
    return paths


def test_probe_end_to_end_over_seeds(tmp_path, mnist_args):
    """Two training seeds and two random inits: each run's scores, mean ± std over each (the
    sample std, as statistics.stdev)."""
    ckpts = tiny_vcr_runs(tmp_path, mnist_args, extra=("--img_size", "32", "--num_frames", "6",
                                                       "--pool_grid", "4"))
    results = probe_vcr.main(["--ckpt", *ckpts, "--fit_clips", "128", "--test_clips", "64",
                          "--decoder_steps", "2", "--random_inits", "2"])
    assert [r["seed"] for r in results["runs"]] == [0, 1] and len(results["random_init_runs"]) == 2
    for name, runs in (("trained", results["runs"]), ("random_init", results["random_init_runs"])):
        for key in ("speed_mse", "speed_r2", "rankme"):
            values = [r[key] for r in runs]
            assert results["summary"][name][key] == pytest.approx(
                [statistics.mean(values), statistics.stdev(values)], abs=1e-4)
    assert "psnr" in results["summary"]["trained"] and "psnr" not in results["random_init_runs"][0]
    test = probe_vcr.vcr_sets(probe_vcr.load_run(ckpts[0])[0], 128, 64)["test"][0][:, :, 3:]
    fit = probe_vcr.vcr_sets(probe_vcr.load_run(ckpts[0])[0], 128, 64)["fit"][0][:, :, 3:]
    mse = ((test - fit.mean(0)) ** 2).flatten(1).mean(1)  # per clip, against the mean clip
    assert results["psnr_mean_frames"] == pytest.approx(
        float((10 * torch.log10(1 / mse)).mean()), abs=0.01)
    assert results["runs"][0]["train_s"] > 0
    out = os.path.join(os.path.dirname(ckpts[0]), "probe")
    assert os.path.exists(os.path.join(out, "results.json"))
    with pytest.raises(ValueError, match="differ in preset"):
        probe_vcr.main(["--ckpt", ckpts[0], *tiny_vcr_runs(
            tmp_path, mnist_args, "generative", (0,), ("--img_size", "32", "--num_frames", "6",
                                                        "--pool_grid", "4"))])


def test_probe_refuses_what_it_cannot_evaluate(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        probe_vcr.main(["--ckpt", str(tmp_path / "none.pt")])
    with pytest.raises(ValueError, match="give --ckpt"):
        probe_vcr.main([])


def test_summarise_matches_statistics():
    runs = [{"a": 1.0, "b": 2, "c": None, "name": "x"}, {"a": 4.0, "b": 3, "c": 1.0, "name": "y"},
            {"a": 2.5, "b": 7, "c": 2.0, "name": "z"}]
    s = probe_vcr.summarise(runs)
    assert set(s) == {"a", "b"}  # c is missing in one run, name is not a number
    assert s["a"] == pytest.approx([2.5, statistics.stdev([1.0, 4.0, 2.5])], abs=1e-4)
    assert probe_vcr.summarise(runs[:1])["a"] == [1.0, 0.0]


def test_option_shares_and_codes_used_from_against_hand_counts(tmp_path):
    z = torch.nn.functional.one_hot(torch.tensor([0, 2, 2, 4, 2, 0, 2, 2]), 5).float()
    assert probe_vcr.option_shares(z) == [5 / 8, 2 / 8, 1 / 8, 0.0, 0.0]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps({"step": s, "z_zero": v})
                             for s, v in ((50, 1.0), (100, 0.995), (150, 0.97), (200, 0.999))))
    assert probe_vcr.codes_used_from(str(log)) == 150
    assert probe_vcr.codes_used_from(str(log), below=0.5) is None
    assert probe_vcr.codes_used_from(str(tmp_path / "none.jsonl")) is None


# ----------------------------------------------------------------------------------------------
# VJ-VCR latent models (Table 2): moved here from infer_latent.py with their evaluation

def test_linear_classifier_separable_and_chance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(900, 5, generator=g)
    x = x[(x[:, :2].abs() > 0.2).all(1)][:600]  # keep a margin around the class boundaries
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()  # 4 linearly separable classes
    assert probe_vcr.linear_classifier(x[:500], y[:500], x[500:], y[500:], 4) > 0.95
    noise = torch.randint(4, (len(x),), generator=g)
    assert abs(probe_vcr.linear_classifier(x[:500], noise[:500], x[500:], noise[500:], 4) - 0.25) < 0.12


@pytest.mark.parametrize("latent", ["discrete", "sparse", "none"])
def test_latent_evaluation_end_to_end(tmp_path, mnist_args, latent):
    """`python tools/probe_vcr.py --ckpt` on switching_mnist models (two seeds for the discrete latent):
    what z* knows, mean ± std over seeds, Figure 3 of the first seed, the Table 2 of
    tools/tables.py."""
    preset = {"discrete": "switch_discrete", "sparse": "switch_sparse80",
              "none": "switch_none"}[latent]
    ckpts = tiny_vcr_runs(tmp_path, mnist_args, preset, (0, 1) if latent == "discrete" else (0,))
    results = probe_vcr.main(["--ckpt", *ckpts, "--fit_clips", "96", "--test_clips", "64",
                          "--decoder_steps", "2"] + mnist_args)
    assert results["preset"] == preset and len(results["runs"]) == len(ckpts)
    runs, s = results["runs"], results["summary"]
    assert all(r["pred_mse"] > 0 and 0 <= r["psi_from_target"] <= 1 for r in runs)
    if latent != "none":
        for key in ("psi_accuracy", "digit_accuracy", "zero_fraction"):
            assert all(0 <= r[key] <= 1 for r in runs)
            assert s[key][0] == pytest.approx(statistics.mean(r[key] for r in runs), abs=1e-4)
    if latent == "discrete":
        assert s["zero_fraction"] == [0.8, 0.0]  # one-hot of 5
        for r in runs:
            assert sum(r["option_shares"]) == pytest.approx(1) and r["top_option_share"] >= 0.2
        assert s["psi_accuracy"][1] == pytest.approx(
            statistics.stdev(r["psi_accuracy"] for r in runs), abs=1e-4)
    if latent == "sparse":
        assert 0 <= runs[0]["all_zero_clips"] <= 1 and "codes_used_from_step" in runs[0]
    out = os.path.join(os.path.dirname(ckpts[0]), "probe")
    for name in ("results.json", "figure3.png"):
        assert os.path.exists(os.path.join(out, name))
    from PIL import Image
    with Image.open(os.path.join(out, "figure3.png")) as im:
        # 5 rows (one per direction), 9 frames of 64 pixels plus gaps, drawn at scale 2
        assert im.size == (2 * 9 * (64 + 4), 2 * 5 * (64 + 4))
    lines = tables.table([os.path.dirname(ckpts[0])]).splitlines()  # tools/tables.py
    assert lines[2].startswith(f"| {preset} | {len(ckpts)} |")
    assert lines[-1].startswith("Predicting the majority class: psi")


def test_latent_evaluation_refuses_a_latent_without_switches(tmp_path, mnist_args):
    ckpt = tiny_vcr_runs(tmp_path, mnist_args, "vjvcr", (0,), (
        "--img_size", "32", "--num_frames", "6", "--latent", "discrete", "--latent_dim", "5"))
    with pytest.raises(ValueError, match="latents are evaluated on switching_mnist"):
        probe_vcr.main(["--ckpt", *ckpt])
    with pytest.raises(ValueError, match="needs --objective vjvcr"):
        train.main(["--preset", "switch_sparse80", "--objective", "generative"])


def test_probe_py_sends_a_vjvcr_checkpoint_here(tmp_path, mnist_args):
    import probe
    ckpt = tiny_vcr_runs(tmp_path, mnist_args, "vjvcr", (0,))
    with pytest.raises(ValueError, match=r"is a vjvcr checkpoint; probe it with python "
                                         r"tools/probe_vcr.py"):
        probe.main(["--ckpt", *ckpt])
