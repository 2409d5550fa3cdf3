"""probe.py: the probes against closed forms, and one end-to-end run on a tiny checkpoint."""
import json
import os

import numpy as np
import pytest
import torch

import model
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


# ----------------------------------------------------------------------------------------------
# V-JEPA probes

def test_attentive_probe_learns_a_task_a_hand_made_encoder_encodes():
    """A hand-made "encoder": 16 noise tokens per clip; one of them, at a random place, carries
    the class as +3 in channel y and a marker +3 in the last channel, the others carry noise
    only. The attentive probe, with its default optimiser settings, must find that token."""
    g = torch.Generator().manual_seed(0)
    N, L, D, classes = 1024, 16, 8, 4
    y = torch.randint(classes, (N,), generator=g)
    tokens = 0.5 * torch.randn(N, L, D, generator=g)
    where = torch.randint(L, (N,), generator=g)
    tokens[torch.arange(N), where, y] += 3.0
    tokens[torch.arange(N), where, D - 1] += 3.0
    probes = torch.nn.ModuleList([probe.AttentiveProbe(D, 2, classes)])
    probe.fit_probes(probes, tokens[:768], [y[:768]], dtype=torch.float32)
    probs = probe.view_probabilities(probes[0], [tokens[768:]], dtype=torch.float32)
    accuracy = float((probs.argmax(1) == y[768:]).float().mean())
    assert accuracy > 0.7  # chance is 0.25


def test_attentive_probe_against_a_per_sample_loop():
    """Cross-attention of one query, written out per sample and per head."""
    torch.manual_seed(0)
    D, heads, N = 12, 3, 5
    p = probe.AttentiveProbe(D, heads, 7).eval()
    tokens = torch.randn(2, N, D)
    out = p(tokens)
    Dh = D // heads
    for b in range(2):
        kv = p.kv(p.norm1(tokens[b]))  # (N, 2D): rows [k | v]
        k, v = kv[:, :D], kv[:, D:]
        q = p.q(p.query[0, 0])
        heads_out = []
        for h in range(heads):
            s = slice(h * Dh, (h + 1) * Dh)
            w = torch.softmax(k[:, s] @ q[s] / Dh ** 0.5, dim=0)
            heads_out.append(w @ v[:, s])
        x = p.query[0, 0] + p.proj(torch.cat(heads_out))
        x = x + p.mlp(p.norm2(x))
        assert torch.allclose(out[b], p.head(x), atol=1e-5)


def test_multiclip_tokens_are_the_segments_side_by_side():
    torch.manual_seed(0)
    enc = model.VisionTransformer(4, 16, 8, 2, 1, 16, 1, 2).eval()  # 2 x 2 x 2 = 8 tokens
    videos = torch.rand(3, 1, 12, 16, 16)  # 3 segments of 4 frames
    tokens = probe.encode_tokens(enc, videos, segments=3, batch=2, dtype=torch.float32)
    assert tokens.shape == (3, 3 * 8, 16) and tokens.dtype == torch.bfloat16
    for s in range(3):
        ref = enc(videos[:, :, 4 * s:4 * (s + 1)])
        assert torch.allclose(tokens[:, 8 * s:8 * (s + 1)].float(), ref, atol=1e-2)


def test_views_shift_and_softmax_average():
    videos = torch.rand(2, 1, 4, 16, 16)
    views = probe.shifted_views(videos, 3, shift=4)
    assert len(views) == 3 and all(v.shape == videos.shape for v in views)
    assert torch.equal(views[0], videos)
    assert torch.equal(views[1][..., :12, :12], videos[..., 4:, 4:])  # moved up-left by 4
    assert torch.equal(views[2][..., 4:, 4:], videos[..., :12, :12])  # moved down-right by 4
    assert views[1][..., 12:, :].abs().sum() == 0  # zero fill
    with pytest.raises(ValueError, match="views 4"):
        probe.shifted_views(videos, 4)
    lin = torch.nn.Linear(3, 5)
    head = lambda t: lin(t.mean(1))  # noqa: E731
    views = [torch.randn(6, 2, 3) for _ in range(3)]
    expected = sum(head(v).softmax(-1) for v in views) / 3
    got = probe.view_probabilities(head, views, dtype=torch.float32)
    assert torch.allclose(got, expected, atol=1e-6)


def test_probe_task_labels():
    labels = {"velocity": torch.tensor([[[0.0, 2.0]], [[1.0, 1.0]], [[-1.0, 0.0]], [[0.0, -3.0]]]),
              "speed": torch.tensor([[1.0], [1.8], [3.99], [2.6]]),
              "digits": torch.tensor([[3], [1], [4], [1]])}
    tasks = probe.probe_tasks(labels, (1.0, 4.0))
    assert tasks["direction"][0].tolist() == [0, 1, 6, 4]  # (vy, vx): 0, 45, 270, 180 degrees
    assert tasks["speed"][0].tolist() == [0, 1, 3, 2]
    assert tasks["digit"][0].tolist() == [3, 1, 4, 1]


def test_vjepa_probe_end_to_end_and_findings_table(tmp_path, mnist_args, capsys):
    out = str(tmp_path / "laptop")
    train.main(["--num_frames", "4", "--img_size", "32", "--patch_size", "8", "--enc_dim", "32",
                "--enc_depth", "1", "--enc_heads", "2", "--pred_dim", "16", "--pred_depth", "1",
                "--batch_size", "4", "--max_steps", "2", "--val_clips", "0", "--dtype", "float32",
                "--out_dir", out] + mnist_args)
    r = probe.main(["--ckpt", os.path.join(out, "ckpt.pt"), "--train_clips", "64",
                    "--test_clips", "32", "--epochs", "1", "--segments", "2", "--views", "2"]
                   + mnist_args)
    for name in ("trained", "random_init"):
        assert set(r[name]["attentive"]) == {"digit", "direction", "speed"}
        assert 0 <= r[name]["average"]["digit"] <= 1 and r[name]["emb_std"] > 0
    assert os.path.exists(os.path.join(out, "probe", "results.json"))
    assert "per-channel std" in capsys.readouterr().out
    probe.main(["--table", out])
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[2].startswith("| laptop | features | multiblock | attentive |")
    assert "73.7" in rows[2] and "56.7" in rows[3]
