"""train.py: schedules, EMA, config parsing, short real runs, resume, torchrun, bad input."""
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import infer_latent
import losses
import model
import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num_frames", "4", "--img_size", "32", "--patch_size", "8", "--enc_dim", "32",
        "--enc_depth", "2", "--enc_heads", "2", "--pred_dim", "16", "--pred_depth", "1",
        "--batch_size", "4", "--val_clips", "8", "--num_digits", "1", "--dtype", "float32",
        "--mask", "multiblock", "--normalise", "false", "--embed_gain", "1",
        "--token_vcr", "0", "--persist", "0"]  # the paper's V-JEPA


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def run_cli(*args, env=None):
    """train.py as a user runs it: (exit code, stderr)."""
    p = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**os.environ, **(env or {})})
    return p.returncode, p.stderr


# ----------------------------------------------------------------------------------------------
# pure pieces

def test_schedule_end_points():
    cfg = train.Config(max_steps=1000, warmup_steps=100, start_lr=2e-4, lr=6e-4, final_lr=1e-6,
                       weight_decay=0.04, final_weight_decay=0.4, ema_start=0.998, ema_end=1.0,
                       ipe_scale=1.0)
    assert train.schedules(cfg, 0) == pytest.approx((2e-4, 0.04, 0.998))
    assert train.schedules(cfg, 50)[0] == pytest.approx(4e-4)  # half-way through warm-up
    assert train.schedules(cfg, 100)[0] == pytest.approx(6e-4)
    assert train.schedules(cfg, 550)[0] == pytest.approx(1e-6 + (6e-4 - 1e-6) / 2)  # cos(pi/2)
    assert train.schedules(cfg, 1000) == pytest.approx((1e-6, 0.4, 1.0))
    # ipe_scale 1.25: computed for 1250 steps and truncated at 1000
    cfg.ipe_scale = 1.25
    lr, wd, m = train.schedules(cfg, 1000)
    assert lr == pytest.approx(1e-6 + (6e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 900 / 1150)))
    assert wd == pytest.approx(0.04 + 0.36 * 0.8) and m == pytest.approx(0.998 + 0.002 * 0.8)


def test_wsd_schedule_end_points():
    cfg = train.Config(schedule="wsd", max_steps=1000, cooldown_steps=200, warmup_steps=100,
                       start_lr=2e-4, lr=6e-4, final_lr=1e-6, weight_decay=0.04, ema_start=0.999)
    assert train.schedules(cfg, 0) == pytest.approx((2e-4, 0.04, 0.999))
    assert train.schedules(cfg, 50)[0] == pytest.approx(4e-4)
    for step in (100, 500, 800):  # constant lr, weight decay and EMA until the cooldown
        assert train.schedules(cfg, step) == pytest.approx((6e-4, 0.04, 0.999))
    assert train.schedules(cfg, 900)[0] == pytest.approx((6e-4 + 1e-6) / 2)
    assert train.schedules(cfg, 1000) == pytest.approx((1e-6, 0.04, 0.999))
    cfg.cooldown_steps = 0  # constant to the end
    assert train.schedules(cfg, 999)[0] == pytest.approx(6e-4)


def test_a_cooldown_from_a_constant_rate_checkpoint_is_the_run_scheduled_to_end_there(
        tmp_path, mnist_args):
    """wsd: a long constant-rate run stopped at step 6, copied and resumed with max_steps 10 and
    cooldown_steps 4, ends with the weights of a run scheduled for 10 steps with that cooldown."""
    common = TINY + mnist_args + ["--schedule", "wsd", "--warmup_steps", "2", "--log_every", "2",
                                  "--ckpt_every", "2", "--val_clips", "0"]
    planned, long = str(tmp_path / "planned"), str(tmp_path / "long")
    train.main(common + ["--max_steps", "10", "--cooldown_steps", "4", "--out_dir", planned])
    train.main(common + ["--max_steps", "1000", "--stop_at", "6", "--out_dir", long])
    train.main(common + ["--max_steps", "10", "--cooldown_steps", "4", "--out_dir", long,
                         "--resume", "true"])
    a, b = (torch.load(os.path.join(d, "ckpt.pt"), weights_only=False) for d in (planned, long))
    assert [r["lr"] for r in read_log(long)] == [r["lr"] for r in read_log(planned)]
    for key in ("encoder", "target_encoder", "predictor"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)


def test_probe_schedule_without_and_with_warmup():
    # fit_probes' schedule: no warm-up is the plain cosine lr * (1 + cos(pi t / T)) / 2
    for t in (0, 1, 333, 999):
        assert train.warmup_cosine(t, 1000, 0, 0.0, 1e-2, 0.0) == pytest.approx(
            1e-2 * 0.5 * (1 + math.cos(math.pi * t / 1000)))
    # a 10% warm-up from 0: linear up to step 100, then the cosine over the remaining 900
    assert train.warmup_cosine(25, 1000, 100, 0.0, 1e-2, 0.0) == pytest.approx(2.5e-3)
    assert train.warmup_cosine(100, 1000, 100, 0.0, 1e-2, 0.0) == pytest.approx(1e-2)
    assert train.warmup_cosine(700, 1000, 100, 0.0, 1e-2, 0.0) == pytest.approx(
        1e-2 * 0.5 * (1 + math.cos(math.pi * 600 / 900)))


def test_ema_update_against_the_formula():
    a, b = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    before = [p.detach().clone() for p in a.parameters()]
    train.ema_update(a, b, 0.9)
    for t0, t1, e in zip(before, a.parameters(), b.parameters()):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * e, atol=1e-7)


def test_drift_against_a_hand_computation():
    """|w - w0| / |w0| over all parameters together: w0 = ([3, 0], [4]) has norm 5; moving to
    ([3, 4], [1]) is a step of norm sqrt(16 + 9) = 5, so the drift is 1."""
    lin = torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0]]))
        lin.bias.copy_(torch.tensor([1.0]))
    start = [torch.tensor([[3.0, 0.0]]), torch.tensor([4.0])]
    assert losses.drift(lin, start) == pytest.approx(1.0)
    assert losses.drift(lin, [p.detach().clone() for p in lin.parameters()]) == 0.0


def test_log_drift_of_the_encoder_and_of_a_frozen_target(tmp_path, mnist_args):
    """With EMA momentum 1 throughout, the target encoder never moves (drift_target 0) while
    the online encoder does; drift_encoder equals |w - w0| / |w0| computed from the final
    checkpoint and a model built afresh from the seed."""
    out = str(tmp_path / "frozen")
    train.main(TINY + mnist_args + ["--ema_start", "1.0", "--ema_end", "1.0", "--max_steps", "4",
                                    "--log_every", "2", "--val_clips", "0", "--out_dir", out])
    log = read_log(out)
    assert [r["step"] for r in log] == [2, 4]
    assert all(r["drift_target"] == 0.0 for r in log)
    assert 0 < log[0]["drift_encoder"] < log[1]["drift_encoder"]
    cfg = train.parse_config(TINY + mnist_args)
    torch.manual_seed(cfg.seed)
    _, nets, _ = train.build(cfg, torch.device("cpu"))
    state = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)
    prefix = "module.backbone."
    moved = norm = 0.0
    for name, p0 in nets["encoder"].named_parameters():
        p0 = p0.detach().double()
        moved += float((state["encoder"][prefix + name].double() - p0).pow(2).sum())
        norm += float(p0.pow(2).sum())
        assert torch.equal(state["target_encoder"][prefix + name], p0.float())  # never moved
    assert log[-1]["drift_encoder"] == pytest.approx(math.sqrt(moved / norm), rel=1e-4)


def test_rankme_closed_forms():
    q, _ = torch.linalg.qr(torch.randn(50, 10))  # 10 equal singular values
    assert losses.rankme(q) == pytest.approx(10, rel=1e-4)
    rank_one = torch.randn(50, 1) @ torch.randn(1, 10)
    assert losses.rankme(rank_one) == pytest.approx(1, rel=1e-3)


def test_parse_config():
    cfg = train.parse_config(["--lr", "1e-3", "--enc_depth=3", "--resume", "true"])
    assert (cfg.lr, cfg.enc_depth, cfg.resume) == (1e-3, 3, True)
    cfg = train.parse_config(["--preset", "vitl16"])
    assert (cfg.enc_dim, cfg.enc_depth, cfg.enc_heads, cfg.img_size) == (1024, 24, 16, 224)
    assert (cfg.pred_dim, cfg.pred_depth, cfg.max_steps, cfg.warmup_steps) == (384, 12, 90000, 12000)
    assert train.parse_config(["--preset", "vith16_384"]).img_size == 384
    laptop = train.parse_config([])  # the laptop recipe
    assert laptop == train.Config()  # Config's defaults are what `python train.py` runs
    for name, overrides in train.PRESETS.items():  # flat: a dict of Config keys, no chains
        assert set(overrides) <= {f.name for f in __import__("dataclasses").fields(train.Config)}
        assert train.parse_config(["--preset", name]).out_dir == f"out/{name}"
    assert (laptop.patch_size, laptop.normalise, laptop.embed_gain, laptop.mask) == (
        16, True, 3.0, "future")
    assert (laptop.max_steps, laptop.warmup_steps, laptop.mask_ctx_frames, laptop.ema_start) == (
        10000, 400, 8, 0.99)
    assert (laptop.enc_dim, laptop.enc_heads, laptop.pred_dim) == (96, 2, 48)
    assert (laptop.token_vcr, laptop.persist) == (0.1, 1.0)
    pure = train.parse_config(["--preset", "laptop_vjepa"])  # the slow-EMA recipe, no regulariser
    assert {k for k, v in vars(pure).items() if getattr(laptop, k) != v} == {
        "preset", "out_dir", "token_vcr", "persist", "max_steps", "ema_start", "enc_dim",
        "enc_heads", "pred_dim"}
    assert (pure.max_steps, pure.ema_start, pure.token_vcr, pure.persist) == (4000, 0.9998, 0, 0)
    assert (pure.enc_dim, pure.enc_heads, pure.pred_dim) == (192, 3, 96)  # results 2-3's ViT


@pytest.mark.parametrize("frames,tubelet,given,expected", [
    (16, 2, 0, 8), (15, 2, 0, 6), (4, 2, 0, 2), (6, 4, 0, 4), (16, 2, 6, 6)])
def test_context_frames_default_to_the_first_half(frames, tubelet, given, expected):
    """mask_ctx_frames 0: the first half of the clip in whole tubelets, at least one."""
    cfg = train.Config(num_frames=frames, tubelet_size=tubelet, mask_ctx_frames=given)
    assert cfg.mask_ctx_frames == expected


# ----------------------------------------------------------------------------------------------
# real runs

def test_tiny_run_loss_falls(tmp_path, mnist_args):
    out = str(tmp_path / "run")
    train.main(TINY + mnist_args + ["--max_steps", "50", "--warmup_steps", "5", "--lr", "2e-3",
                                    "--log_every", "5", "--out_dir", out])
    log = read_log(out)
    assert [r["step"] for r in log] == list(range(5, 55, 5))
    first, last = log[0]["loss"], sum(r["loss"] for r in log[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    state = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)
    for key in ("encoder", "predictor", "target_encoder", "opt", "scaler", "epoch", "loss",
                "batch_size", "world_size", "lr", "config", "step", "rng"):
        assert key in state
    assert state["step"] == 50
    assert all(k.startswith("module.backbone.") for k in state["target_encoder"])


@pytest.mark.parametrize("extra", [[], ["--persist", "1", "--mask", "future"]])
def test_resume_is_exact(tmp_path, mnist_args, extra):
    """N steps, stop, resume to 2N == 2N straight, loss for loss (the persist projector too)."""
    common = TINY + mnist_args + extra + ["--max_steps", "12", "--log_every", "2", "--ckpt_every", "4",
                                  "--val_clips", "0"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    train.main(common + ["--out_dir", straight])
    train.main(common + ["--out_dir", split, "--stop_at", "6"])
    assert [r["step"] for r in read_log(split)] == [2, 4, 6]
    train.main(common + ["--out_dir", split, "--resume", "true"])
    a, b = read_log(straight), read_log(split)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(2, 14, 2))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_main_gives_back_the_signal_handlers(tmp_path, mnist_args):
    """During the loop, Ctrl-C and SIGTERM only ask for a checkpoint and a stop; afterwards a
    caller of train.main (a notebook, these tests) must be interruptible again."""
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    train.main(TINY + mnist_args + ["--max_steps", "2", "--val_clips", "0", "--out_dir",
                                    str(tmp_path)])
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before


def test_torchrun_two_processes(tmp_path, mnist_args):
    out = str(tmp_path / "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", "train.py", *TINY, *mnist_args, "--max_steps", "4",
                        "--log_every", "2", "--out_dir", out], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    log = read_log(out)
    assert [r["step"] for r in log] == [2, 4] and all(math.isfinite(r["loss"]) for r in log)
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)["world_size"] == 2


def test_the_first_line_names_the_cpu_class_and_the_precision(tmp_path, mnist_args, capsys):
    train.main(TINY + mnist_args + ["--max_steps", "1", "--val_clips", "0", "--out_dir",
                                    str(tmp_path)])
    first = capsys.readouterr().out.splitlines()[0]
    assert f"on cpu ({model.cpu_class()}), float32 (--dtype float32)" in first, first


# The paper presets at a size a CPU steps in a second: the same objective, masks, activation
# checkpointing and number of mask configurations, smaller networks and clips.
SHRINK = {p: ["--img_size", "64", "--enc_dim", "32", "--enc_depth", "2", "--enc_heads", "2",
              "--pred_dim", "16", "--pred_depth", "1", "--data_path", "clips/given/directly"]
          for p in ("vitl16", "vith16", "vith16_384")}


@pytest.fixture(scope="module")
def world_encoder(tmp_path_factory):
    """A small V-JEPA encoder of the two-rooms world, for the action-conditioned presets."""
    out = str(tmp_path_factory.mktemp("rooms"))
    train.main(["--preset", "rooms", "--num_frames", "4", "--enc_dim", "32", "--enc_depth", "1",
                "--enc_heads", "2", "--batch_size", "2", "--max_steps", "1", "--dtype",
                "float32", "--val_clips", "0", "--out_dir", out])
    return ["--encoder_ckpt", os.path.join(out, "ckpt.pt")]


@pytest.mark.parametrize("preset", sorted(train.PRESETS))
def test_one_step_of_every_preset_gives_every_parameter_a_gradient(preset, world_encoder):
    """DDP stops at the second step when a trainable parameter got no gradient in the first
    (an unused mask token once did that to the default preset under torchrun)."""
    cfg = train.parse_config(["--preset", preset, "--batch_size", "2", "--dtype", "float32",
                              *SHRINK.get(preset, []),
                              *(world_encoder if preset == "rooms_ac" else [])])
    run = train.setup(cfg)
    clips = torch.randn(cfg.batch_size, cfg.in_chans, cfg.num_frames, cfg.img_size,
                        cfg.img_size)
    train.train_step(run, clips, 0, torch.rand(cfg.batch_size, cfg.num_frames // 2, 2))
    unused = [n for n, p in run.module.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == [], f"{preset}: no gradient for {unused}"


# the default, and a preset of every other objective, mask strategy, latent and world
TORCHRUN_PRESETS = ["laptop", "laptop_pixel", "laptop_multiblock", "laptop_tube",
                    "laptop_causal", "vjvcr_dec", "generative", "switch_discrete", "rooms",
                    "rooms_ac"]


@pytest.mark.parametrize("preset", TORCHRUN_PRESETS)
def test_torchrun_trains_every_kind_of_preset(tmp_path, mnist_args, preset, world_encoder):
    """Two processes (gloo) for 4 steps at the preset's own geometry (batch 2 per process):
    both logged steps are finite and the checkpoint says world_size 2; the default also
    resumes under torchrun."""
    out = str(tmp_path / preset)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(*extra):
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             "train.py", "--preset", preset, *mnist_args, "--batch_size", "2", "--log_every",
             "2", "--ckpt_every", "2", "--val_clips", "4", "--out_dir", out, *extra,
             *(world_encoder if preset == "rooms_ac" else [])],
            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)

    p = torchrun("--max_steps", "4", "--dtype", "float32")
    assert p.returncode == 0, p.stderr[-3000:]
    log = read_log(out)
    assert [r["step"] for r in log] == [2, 4] and all(math.isfinite(r["loss"]) for r in log)
    state = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)
    assert state["world_size"] == 2 and state["step"] == 4 and state["config"]["preset"] == preset
    if preset == "laptop":
        p = torchrun("--max_steps", "6", "--dtype", "float32", "--resume", "true")
        assert p.returncode == 0, p.stderr[-3000:]
        assert [r["step"] for r in read_log(out)] == [2, 4, 6]
        assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)["step"] == 6


# ----------------------------------------------------------------------------------------------
# bad input: one line naming the value, exit code 2, no traceback

@pytest.mark.parametrize("args,expected", [
    (["--img_size", "60"], "img_size=60 is not divisible by patch_size=16"),
    (["--num_frames", "15"], "num_frames=15 is not divisible by tubelet_size=2"),
    (["--mask", "random_tube", "--mask_ratio", "1.0"], "mask_ratio=1.0"),
    (["--mask", "future", "--mask_ctx_frames", "16"], "mask_ctx_frames=16"),
    (["--preset", "vitxl"], "unknown preset 'vitxl'"),
    (["--learning_rate", "1"], "unknown config key --learning_rate"),
    (["--lr", "fast"], "--lr expects a float, got 'fast'"),
    (["--resume", "maybe"], "--resume expects a bool, got 'maybe'"),
    (["--loss", "l7"], "--loss 'l7' is not a prediction loss of losses.py; expected one of"),
    (["--loss", "vcr_terms"], "--loss 'vcr_terms' is not a prediction loss of losses.py"),
    (["--dataset", "kinetics"], "--dataset 'kinetics': expected one of"),
    (["--preset", "vjvcr", "--pool_grid", "3"], "pool_grid=3 does not divide the 8x8 map"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA device")]))
def test_bad_config_is_one_clear_line(args, expected):
    code, err = run_cli(*args, "--out_dir", "/nonexistent/never-written")
    assert code == 2 and "Traceback" not in err
    assert err.strip().startswith("error:") and expected in err and len(err.strip().splitlines()) == 1


def test_bad_mnist_dirs(tmp_path):
    code, err = run_cli("--mnist_dir", str(tmp_path), "--out_dir", str(tmp_path / "o"))
    assert code == 2 and "no MNIST files in mnist_dir" in err and "Traceback" not in err
    broken = tmp_path / "broken"
    broken.mkdir()
    for kind in ("images-idx3", "labels-idx1"):
        (broken / f"train-{kind}-ubyte.gz").write_bytes(b"not a gzip file")
    code, err = run_cli("--mnist_dir", str(broken), "--out_dir", str(tmp_path / "o"))
    assert code == 2 and "is corrupt" in err and "Traceback" not in err


def test_resume_errors_and_non_finite_loss(tmp_path, mnist_args):
    out = str(tmp_path / "run")
    code, err = run_cli(*TINY, "--out_dir", out, "--resume", "true")
    assert code == 2 and "no checkpoint" in err and "Traceback" not in err
    code, err = run_cli(*TINY, *mnist_args, "--out_dir", out, "--max_steps", "4",
                        "--stop_at", "2", "--val_clips", "0")
    assert code == 0, err
    code, err = run_cli(*TINY, *mnist_args, "--out_dir", out, "--resume", "true",
                        "--enc_dim", "64")
    assert code == 2 and "another architecture: enc_dim=32" in err and "Traceback" not in err
    # a blown-up learning rate: the run stops and the step-2 checkpoint stays
    code, err = run_cli(*TINY, *mnist_args, "--out_dir", out, "--resume", "true",
                        "--max_steps", "4", "--log_every", "1", "--lr", "1e38",
                        "--warmup_steps", "0", "--grad_clip", "0")
    assert code == 2 and "non-finite loss" in err and "Traceback" not in err
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)["step"] == 2


@pytest.mark.parametrize("extra", [
    ["--mask", "causal", "--mask_ctx_frames", "2"],
    ["--mask", "future", "--mask_ctx_frames", "2", "--uniform_power", "false"],
    ["--dataset", "video_folder", "--in_chans", "3", "--mask", "random_tube",
     "--num_workers", "1"],
])
def test_other_datasets_and_masks_train(tmp_path, extra, mnist_args):
    """Every dataset, mask strategy and worker setting runs end to end for a few steps."""
    import numpy as np
    rng = np.random.default_rng(0)
    videos = tmp_path / "videos"
    videos.mkdir()
    np.save(videos / "a.npy", rng.integers(0, 255, (12, 40, 48, 3), dtype=np.uint8))
    out = str(tmp_path / "run")
    train.main(TINY + mnist_args + extra + ["--data_path", str(videos), "--max_steps", "4",
                                            "--log_every", "2", "--out_dir", out])
    assert [r["step"] for r in read_log(out)] == [2, 4]
    assert all(math.isfinite(r["loss"]) for r in read_log(out))


VCR_TINY = ["--preset", "vjvcr", "--img_size", "32", "--num_frames", "6", "--enc_dim", "32",
            "--batch_size", "32", "--val_clips", "0", "--dtype", "float32"]


def test_vcr_prevents_the_collapse_of_a_short_run(tmp_path, mnist_args):
    """The same 150 steps with and without variance-covariance regularisation: without it
    the embedding std shrinks towards 0; with it, it does not (global pooling, the per-frame
    vector of the paper's encoder as we first read it)."""
    stds = {}
    for name, extra in (("plain", ["--vcr_alpha", "0", "--vcr_beta", "0"]), ("vcr", [])):
        out = str(tmp_path / name)
        train.main(VCR_TINY + mnist_args + extra + ["--pool_grid", "1", "--max_steps", "150",
                                                    "--log_every", "1",
                                                    "--out_dir", out])
        log = read_log(out)
        stds[name] = (log[0]["emb_std"], log[-1]["emb_std"])
    print(f"embedding std (first, last logged step): {stds}")  # shown with pytest -s
    assert stds["plain"][0] == stds["vcr"][0]  # the same start
    assert stds["plain"][1] < 0.3 * stds["plain"][0], stds
    assert stds["vcr"][1] > stds["vcr"][0], stds


def test_vcr_acts_per_time_step_on_the_flattened_grid_vector(mnist_args):
    """The objective's variance and covariance terms equal eq. 1-3 written out with numpy, per
    time step, on per-frame vectors pooled here by a loop over the cells of the encoder's
    feature map: VCR sees each frame's whole flattened grid (channels x cells), not the cells
    apart, and the context and target frames side by side in time."""
    import numpy as np
    cfg = train.parse_config(VCR_TINY + mnist_args + ["--pool_grid", "2", "--enc_dim", "4",
                                                      "--vcr_alpha", "1", "--vcr_beta", "1"])
    run = train.setup(cfg)
    net = run.module  # train mode: BatchNorm on batch statistics
    clips, _ = data.fixed_set(data.make_source(cfg), 16, seed=0)
    with torch.no_grad():
        _, terms, h = infer_latent.vjvcr_loss(run, clips)  # h: [B, T, 1, d], one vector per step
        h = h[:, :, 0]
        n = cfg.mask_ctx_frames
        maps = [net.encoder.layers(c).numpy() for c in (clips[:, :, :n], clips[:, :, n:])]
    frames = []  # (N, d) per time step: the context's, then the target's
    for m in maps:  # (N, C, T, 4, 4): cells of 2x2 pixels
        for t in range(m.shape[2]):
            frames.append(np.stack([m[:, c, t, 2 * r:2 * r + 2, 2 * q:2 * q + 2].mean((1, 2))
                                    for c in range(4) for r in range(2) for q in range(2)], 1))
    assert h.shape == (16, cfg.num_frames, 16)
    assert np.allclose(h.numpy(), np.stack(frames, 1), rtol=1e-4, atol=1e-4)
    T, d = len(frames), frames[0].shape[1]
    l_var = sum(np.maximum(0, 1 - np.sqrt(f.var(0, ddof=1) + 1e-4)).sum() for f in frames) / (T * d)
    l_cov = sum((np.cov(f, rowvar=False) ** 2).sum() - (np.var(f, 0, ddof=1) ** 2).sum()
                for f in frames) / (T * d)
    assert float(terms["var"].detach()) == pytest.approx(l_var, rel=1e-3)
    assert float(terms["cov"].detach()) == pytest.approx(l_cov, rel=1e-3)


def test_generative_and_decoder_objectives_log_their_terms(tmp_path, mnist_args):
    for preset, terms in (("vjvcr_dec", {"pred", "pixel", "var", "cov"}),
                          ("generative", {"pixel"}), ("generative_vcr", {"pixel", "var", "cov"})):
        out = str(tmp_path / preset)
        train.main(VCR_TINY + mnist_args + ["--preset", preset, "--max_steps", "2",
                                            "--log_every", "1", "--out_dir", out])
        record = read_log(out)[-1]
        assert terms <= set(record) and math.isfinite(record["loss"])
        assert record["loss"] == pytest.approx(sum(record[t] for t in terms), rel=1e-4)
        assert not ({"pred", "pixel", "var", "cov"} - terms) & set(record)  # no other term
        state = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)
        assert "decoder" in state


def test_the_readme_loss_example_runs(tmp_path, mnist_args, monkeypatch):
    """README "Adding a loss": its code, added to losses.py, trains with --loss smooth_l1."""
    import re
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Adding a loss", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.setattr(losses, "PREDICTION_LOSSES", dict(losses.PREDICTION_LOSSES))
    namespace = dict(vars(losses))  # the README's code registers into the copy
    exec(code, namespace)
    monkeypatch.setattr(losses, "smooth_l1", namespace["smooth_l1"], raising=False)
    p, t = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    expected = torch.nn.functional.smooth_l1_loss(p, t)  # the reference it should equal
    assert torch.allclose(losses.smooth_l1([p], [t]), expected)
    out = str(tmp_path / "smooth")
    train.main(VCR_TINY + mnist_args + ["--loss", "smooth_l1", "--max_steps", "3",
                                        "--log_every", "1", "--out_dir", out])
    assert all(math.isfinite(r["pred"]) for r in read_log(out))
    # V-JEPA: the first step's logged loss is smooth_l1 of that step's predictions and targets
    out = str(tmp_path / "smooth_vjepa")
    argv = TINY + mnist_args + ["--loss", "smooth_l1", "--max_steps", "2", "--log_every", "1",
                                "--val_clips", "0", "--out_dir", out]
    train.main(argv)
    cfg = train.parse_config(argv)
    run = train.setup(cfg)  # the same initial weights
    clips, _ = data.StepBatches(data.make_source(cfg, "train"), cfg.batch_size, cfg.seed)[0]
    g = torch.Generator().manual_seed(data.step_seed(cfg.seed, 0, 0, stream=1))
    masks = run.sampler(len(clips), g)
    with torch.no_grad():
        _, full = train.feature_targets(run, clips)
        preds, _, _ = run.net(clips, masks)
        targets = [model.gather_tokens(full, t) for _, t in masks]
        expected = namespace["smooth_l1"](preds, targets)
    assert read_log(out)[0]["loss"] == pytest.approx(float(expected), rel=1e-5)
    plain = losses.vjepa_l1(preds, targets)  # the default L1: another number
    assert float(plain) != pytest.approx(float(expected), rel=1e-3)


# ----------------------------------------------------------------------------------------------
# V-JEPA with pixel targets (the paper's Table 1 baseline)

def test_pixel_objective_trains_and_its_checkpoint_loads(tmp_path, mnist_args):
    out = str(tmp_path / "pix")
    train.main(["--preset", "laptop_pixel", *TINY, "--max_steps", "3", "--log_every", "1",
                "--out_dir", out] + mnist_args)
    log = read_log(out)
    assert all(math.isfinite(r["loss"]) and r["emb_std"] > 0 for r in log)
    encoder, predictor = model.from_checkpoint(model.read_checkpoint(os.path.join(out, "ckpt.pt")))
    assert predictor.predictor_proj.out_features == 1 * 2 * 8 * 8  # the pixels of a tubelet
    state = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)
    assert torch.equal(state["encoder"]["module.backbone.pos_embed"], encoder.pos_embed)


@pytest.mark.parametrize("preset,mask", [("laptop_tube", "random_tube"),
                                         ("laptop_causal", "causal"),
                                         ("laptop_multiblock", "multiblock")])
def test_mask_ablation_presets(preset, mask):
    """The ablations change the masks and nothing else of the laptop recipe."""
    cfg, base = (train.parse_config(["--preset", preset]),
                 train.parse_config(["--preset", "laptop_vjepa"]))
    assert cfg.mask == mask and cfg.objective == "vjepa" and cfg.enc_dim == 192
    changed = {k for k, v in vars(cfg).items() if getattr(base, k) != v}
    assert changed <= {"preset", "mask", "mask_ctx_frames", "out_dir"}, changed


def test_feature_targets_are_the_layer_normed_target_features(mnist_args):
    """V-JEPA's targets: the EMA encoder's features, layer-normed without affine parameters."""
    cfg = train.parse_config(TINY + mnist_args)
    run = train.setup(cfg)
    clips, _ = data.fixed_set(data.make_source(cfg, "train"), 4, seed=3)
    with torch.no_grad():
        h, full = train.feature_targets(run, clips)
        plain = torch.nn.functional.layer_norm(run.target(clips).float(), h.shape[-1:])
    assert torch.equal(full, plain) and full.abs().max() > 1e-2  # not all zeros


def _energy(run, clips, seed):
    """The V-JEPA energy of one batch as train_step computes it (the same masks and targets)."""
    step_masks = run.sampler(len(clips), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        _, full = train.feature_targets(run, clips)
    targets = [model.gather_tokens(full, t) for _, t in step_masks]
    pooled = torch.stack([t.mean(1) for t in targets]).mean(0)
    preds, contexts, projections = run.net(clips, step_masks, pooled)
    cfg = run.cfg
    return losses.vjepa_energy(losses.PREDICTION_LOSSES[cfg.loss], preds, targets, contexts,
                               cfg.token_vcr, cfg.vcr_alpha, cfg.vcr_beta, cfg.persist,
                               projections), step_masks


def test_token_vcr_adds_vcr_of_the_context_tokens(mnist_args):
    """--token_vcr w: the loss is the V-JEPA loss + w (alpha l_var + beta l_cov), with the
    statistics over every context token of every mask (numpy's covariance as the reference)."""
    w, alpha, beta = 2.0, 0.5, 0.1
    cfg = train.parse_config(TINY + mnist_args + ["--token_vcr", str(w)])
    run = train.setup(cfg)
    clips, _ = data.fixed_set(data.make_source(cfg, "train"), 4, seed=3)
    (loss, terms), step_masks = _energy(run, clips, 7)
    with torch.no_grad():
        tokens = np.concatenate([run.module.encoder(clips, keep=ctx).reshape(-1, cfg.enc_dim)
                                 .double().numpy() for ctx, _ in step_masks])
    cov = np.cov(tokens, rowvar=False)  # 1 / (N - 1)
    d = cfg.enc_dim
    l_var = np.maximum(0.0, 1.0 - np.sqrt(np.diag(cov) + 1e-4)).sum() / d
    l_cov = ((cov ** 2).sum() - (np.diag(cov) ** 2).sum()) / d
    assert float(terms["var"].detach()) == pytest.approx(w * alpha * l_var, rel=1e-4)
    assert float(terms["cov"].detach()) == pytest.approx(w * beta * l_cov, rel=1e-4)
    run.cfg.token_vcr = 0.0
    (plain, none), _ = _energy(run, clips, 7)
    plain = float(plain.detach())
    assert none == {} and float(terms["pred"].detach()) == pytest.approx(plain, rel=1e-6)
    expected = plain + w * (alpha * l_var + beta * l_cov)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_persist_is_vicreg_of_the_projected_mean_context_and_mean_future_target(mnist_args):
    """--persist w: the loss adds w (|a - b|^2 + alpha (l_var(a) + l_var(b)) + beta (...)) with
    a = proj(each clip's mean context token), b = proj(the mean of its layer-normed target
    features at the future tokens), computed here by hand from the encoders; the projector is
    checkpointed with the networks."""
    w, alpha, beta = 2.0, 0.5, 0.1
    cfg = train.parse_config(TINY + mnist_args + ["--persist", str(w), "--mask", "future"])
    run = train.setup(cfg)
    assert run.nets["persist_proj"] is run.module.proj
    clips, _ = data.fixed_set(data.make_source(cfg, "train"), 6, seed=3)
    (loss, terms), step_masks = _energy(run, clips, 7)
    (ctx, tgt), = step_masks
    with torch.no_grad():
        h = run.target(clips).double()
        h = (h - h.mean(-1, keepdim=True)) / (h.var(-1, unbiased=False, keepdim=True)
                                              + 1e-5).sqrt()
        future = torch.stack([h[i, tgt[i]].mean(0) for i in range(len(clips))])
        context = torch.stack([run.module.encoder(clips[i:i + 1], keep=ctx[i:i + 1])[0].mean(0)
                               for i in range(len(clips))])
        a, b = (run.module.proj(v.float()).double().numpy() for v in (context, future))
    reference = (a - b) ** 2
    vc = 0.0
    for x in (a, b):
        cov = np.cov(x, rowvar=False)
        vc += alpha * np.maximum(0.0, 1.0 - np.sqrt(np.diag(cov) + 1e-4)).mean()
        vc += beta * ((cov ** 2).sum() - (np.diag(cov) ** 2).sum()) / len(cov)
    terms = {k: float(v.detach()) for k, v in terms.items()}
    assert terms["persist"] == pytest.approx(w * reference.mean(), rel=1e-4)
    assert terms["clip_vc"] == pytest.approx(w * vc, rel=1e-4)
    assert float(loss.detach()) == pytest.approx(terms["pred"] + w * (reference.mean() + vc),
                                                 rel=1e-5)
    with pytest.raises(ValueError, match="--persist 2.0 needs --objective vjepa"):
        train.check_config(train.parse_config(TINY + ["--persist", "2", "--objective", "pixel"]))


def test_a_custom_loss_is_the_energy_of_training_and_of_z_inference(mnist_args, monkeypatch):
    """--loss NAME (registered with @prediction_loss): one training step of a latent model
    calls it, and z* is the option of lowest energy under it, not under the MSE."""
    monkeypatch.setattr(losses, "PREDICTION_LOSSES", dict(losses.PREDICTION_LOSSES))
    calls = []

    @losses.prediction_loss
    def cube(preds, targets):  # minus the MSE: its argmin is the MSE's argmax
        calls.append(len(preds))
        return -torch.stack([(p.float() - t.float()).pow(2).mean()
                             for p, t in zip(preds, targets)]).mean()

    cfg = train.parse_config(["--preset", "switch_discrete", "--enc_dim", "16",
                              "--batch_size", "16", "--dtype", "float32", "--loss", "cube",
                              "--latent_restart", "0"] + mnist_args)
    run = train.setup(cfg)
    clips, _ = data.fixed_set(data.make_source(cfg, "train"), cfg.batch_size, seed=3)
    used, infer_z = [], infer_latent.infer_z

    def spy(*args, **kwargs):
        used.append(kwargs["loss"])
        return infer_z(*args, **kwargs)

    monkeypatch.setattr(infer_latent, "infer_z", spy)
    train.train_step(run, clips, 0)
    assert calls and used == [cube]  # the training energy, and z* under the same loss
    monkeypatch.setattr(infer_latent, "infer_z", infer_z)
    net = run.module.eval()
    with torch.no_grad():
        h_x, h_y = net.encoder(clips[:, :, :3]), net.encoder(clips[:, :, 3:])
        options = net.predictor.options(h_x)  # (B, K, T, d)
    calls.clear()
    z = infer_latent.infer_z(net.predictor, h_x, h_y, "discrete", loss=cube)
    assert calls  # z* calls the loss itself
    by_loop = [min(range(options.shape[1]), key=lambda k: float(cube([options[b, k][None]],
                                                                      [h_y[b][None]])))
               for b in range(len(clips))]
    assert z.argmax(1).tolist() == by_loop
    mse_z = infer_latent.infer_z(net.predictor, h_x, h_y, "discrete", loss=losses.mse)
    assert not torch.equal(mse_z, z)  # the test can tell the two energies apart


def _adam_after_one_step(predictor):
    opt = torch.optim.Adam(predictor.parameters(), lr=1e-3)
    predictor(torch.randn(4, 3, 8), torch.eye(3)[[0, 1, 2, 0]]).pow(2).sum().backward()
    opt.step()
    return opt


def test_restart_copies_the_most_chosen_option_into_the_unused_one():
    """Counts [10, 0, 2]: option 1 (0 < 12 / (4 * 3)) becomes option 0's rows of the last layer
    plus small noise, with option 0's Adam moments; options 0 and 2 are untouched."""
    torch.manual_seed(0)
    pred = infer_latent.MLPPredictor(ctx_steps=3, tgt_steps=2, dim=8, hidden=16, latent="discrete",
                              latent_dim=3)
    opt = _adam_after_one_step(pred)
    last = pred.net[-1]
    before = {n: p.detach().clone().view(3, 16, *p.shape[1:]) for n, p in
              (("w", last.weight), ("b", last.bias))}
    moments = {n: opt.state[p]["exp_avg_sq"].clone().view(3, 16, *p.shape[1:])
               for n, p in (("w", last.weight), ("b", last.bias))}
    out = infer_latent.restart_unused_option(pred, opt, torch.tensor([10.0, 0.0, 2.0]),
                                      torch.Generator().manual_seed(1), noise=0.01)
    assert out == 1
    for n, p in (("w", last.weight), ("b", last.bias)):
        after = p.detach().view(3, 16, *p.shape[1:])
        assert torch.equal(after[0], before[n][0]) and torch.equal(after[2], before[n][2])
        gap = (after[1] - before[n][0]).abs().max()
        assert 0 < gap < 0.1 * before[n][0].std()  # a copy, and not an exact one
        assert torch.equal(opt.state[p]["exp_avg_sq"].view(3, 16, *p.shape[1:])[1], moments[n][0])


def test_restart_leaves_options_in_use_alone():
    torch.manual_seed(0)
    pred = infer_latent.MLPPredictor(ctx_steps=3, tgt_steps=2, dim=8, hidden=16, latent="discrete",
                              latent_dim=3)
    opt = _adam_after_one_step(pred)
    w = pred.net[-1].weight.detach().clone()
    # the least chosen option has 1 of 12 clips = exactly 1 / (4 * 3): not below the threshold
    assert infer_latent.restart_unused_option(pred, opt, torch.tensor([6.0, 5.0, 1.0]),
                                       torch.Generator().manual_seed(1)) is None
    assert torch.equal(pred.net[-1].weight, w)


def test_a_rope_run_records_its_positions_and_loads_for_the_probe(tmp_path, mnist_args):
    out = str(tmp_path / "rope")
    train.main(TINY + mnist_args + ["--pos", "rope", "--max_steps", "2", "--val_clips", "0",
                                    "--out_dir", out])
    ckpt = model.read_checkpoint(os.path.join(out, "ckpt.pt"))
    assert ckpt["config"]["pos"] == "rope"
    encoder, predictor = model.from_checkpoint(ckpt)
    assert encoder.rope is not None and predictor.rope is not None
    run = train.setup(train.parse_config(TINY + ["--pos", "rope"]))
    for name, t in ckpt["target_encoder"].items():  # the trained weights, not a fresh init
        assert torch.equal(encoder.state_dict()[name], t)
    clips = torch.randn(2, 1, 4, 32, 32)
    with torch.no_grad():
        run.target.load_state_dict(encoder.state_dict())
        torch.testing.assert_close(encoder(clips), run.target(clips))
    with pytest.raises(ValueError, match="--resume: .* another architecture: pos='rope'"):
        train.main(TINY + mnist_args + ["--max_steps", "4", "--out_dir", out, "--resume", "true"])
