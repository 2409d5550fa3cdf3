"""probe.py: the probes against closed forms, and one end-to-end run on a tiny checkpoint."""
import json
import os

import numpy as np
import pytest
import torch

import probe
import train


def test_speed_probe_recovers_a_linearly_encoded_speed():
    g = torch.Generator().manual_seed(0)
    speed = 1 + 3 * torch.rand(600, generator=g)
    noise = torch.randn(600, 20, generator=g)
    features = torch.cat([noise[:, :10], (2.5 * speed - 1)[:, None] + 0.01 * noise[:, 10:11],
                          noise[:, 11:]], dim=1)  # one column encodes speed linearly
    predict = probe.ridge_fit(features[:500], speed[:500])
    scores = probe.regression_scores(predict(features[500:]), speed[500:])
    assert scores["r2"] > 0.999 and scores["mse"] < 1e-3
    # and pure noise predicts nothing
    predict = probe.ridge_fit(noise[:500], speed[:500])
    assert probe.regression_scores(predict(noise[500:]), speed[500:])["r2"] < 0.1


def test_psnr_closed_form():
    frames = torch.rand(3, 1, 2, 8, 8) * 0.8
    assert probe.psnr(frames + 0.1, frames) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01


def test_spectrum_matches_numpy():
    emb = torch.randn(50, 6) @ torch.randn(6, 6)
    s, explained = probe.spectrum(emb)
    ref = np.linalg.svd(emb.numpy() - emb.numpy().mean(0), compute_uv=False)
    assert np.allclose(s.numpy(), ref, rtol=1e-4)
    assert np.allclose(explained.numpy(), np.cumsum(ref ** 2) / np.sum(ref ** 2), rtol=1e-4)


def test_probe_end_to_end(tmp_path, mnist_args):
    out = str(tmp_path / "run")
    train.main(["--preset", "vjvcr", "--img_size", "32", "--num_frames", "6", "--enc_dim", "16",
                "--batch_size", "16", "--max_steps", "3", "--val_clips", "0", "--out_dir", out]
               + mnist_args)
    results = probe.main(["--ckpt", os.path.join(out, "ckpt.pt"), "--train_clips", "128",
                          "--test_clips", "64", "--decoder_steps", "2"])
    for key in ("speed_trained", "speed_random_init", "speed_mean_baseline", "psnr", "rankme"):
        assert key in results
    for name in ("results.json", "spectrum.json", "spectrum.png", "predictions.gif"):
        assert os.path.exists(os.path.join(out, "probe", name))
    with open(os.path.join(out, "probe", "spectrum.json")) as f:
        assert len(json.load(f)["singular_values"]) == 16 * 3  # 3 predicted steps x 16


def test_probe_refuses_what_it_cannot_evaluate(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        probe.main(["--ckpt", str(tmp_path / "none.pt")])


def test_table_lists_each_run_beside_the_paper(tmp_path, capsys):
    run = tmp_path / "vjvcr"
    (run / "probe").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"wall_s": 90.0}))
    (run / "probe" / "results.json").write_text(json.dumps({
        "preset": "vjvcr", "speed_trained": {"mse": 0.05, "r2": 0.9},
        "speed_random_init": {"mse": 0.3}, "speed_mean_baseline": {"mse": 0.75}, "psnr": 18.25,
        "rankme": 12.5, "probe_s": 30.0}))
    probe.main(["--table", str(run)])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row == "| vjvcr | 0.050 (0.04) | 0.900 | 0.300 | 0.750 | 18.2 (19.5) | 12.5 | 1.5 | 0.5 |"
    with pytest.raises(FileNotFoundError, match="train and probe"):
        probe.main(["--table", str(tmp_path / "missing")])
