"""What changes with the device: one training step's loss and gradients equal the float32
CPU step's, bf16 autocast stays close to float32, and a resumed run repeats an uninterrupted
one. On the CPU by default (the CPU against itself: the harness); tools/gpu_check.py runs this
file with VJEPA_TEST_DEVICE=cuda, where the GPU's kernels are compared with the CPU's."""
import json
import os

import pytest
import torch

import train

DEVICE = torch.device(os.environ.get("VJEPA_TEST_DEVICE", "cpu"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                                reason="VJEPA_TEST_DEVICE=cuda without a CUDA device")
SMALL = ["--enc_dim", "64", "--enc_depth", "2", "--enc_heads", "2", "--pred_dim", "32",
         "--pred_depth", "1", "--batch_size", "4", "--grad_clip", "0"]
PRESETS = {  # the default (future masks, token_vcr), two-configuration masks, VJ-VCR's convs
    "laptop": ["--preset", "laptop", *SMALL],
    "laptop_multiblock": ["--preset", "laptop_multiblock", *SMALL],
    "vjvcr": ["--preset", "vjvcr", "--batch_size", "4"],
}


@pytest.fixture(autouse=True)
def exact_float32():
    """No TF32 on the GPU: float32 products in float32, as on the CPU."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def one_step(argv, device, dtype, clips):
    """-> (loss, {parameter: gradient on the CPU in float64}) of one step from the seeded init."""
    cfg = train.parse_config(argv + ["--dtype", dtype, "--device", device.type])
    run = train.setup(cfg, device=device)
    loss = float(train.train_step(run, clips, 0)[0])
    return loss, {n: p.grad.double().cpu() for n, p in run.module.named_parameters()}


def clips_for(argv, seed=1):
    cfg = train.parse_config(argv)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(cfg.batch_size, cfg.in_chans, cfg.num_frames, cfg.img_size,
                       cfg.img_size, generator=g)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_step_on_the_device_equals_the_float32_cpu_step(preset):
    """Tolerance: float32 sums in another order (GPU kernels split them differently), ~1e-6
    relative per operation, grown by a few layers and a backward pass to ~1e-5; 1e-4 of each
    gradient's largest entry leaves room, and a wrong kernel misses it by orders of magnitude."""
    x = clips_for(PRESETS[preset])
    ref_loss, ref = one_step(PRESETS[preset], torch.device("cpu"), "float32", x)
    loss, grads = one_step(PRESETS[preset], DEVICE, "float32", x)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref.keys()
    for name, g in grads.items():
        scale = float(ref[name].abs().max()) or 1.0
        assert (g - ref[name]).abs().max() <= 1e-4 * scale, name


def test_bf16_autocast_on_the_device_stays_close_to_float32():
    """Tolerance: 1% of the loss. bf16 keeps 8 significant bits, but the L1 loss averages
    thousands of them (the CPU test in test_performance.py measures ~5e-5 of the loss)."""
    argv = PRESETS["laptop"]
    x = clips_for(argv)
    loss32, _ = one_step(argv, DEVICE, "float32", x)
    loss16, grads16 = one_step(argv, DEVICE, "bfloat16", x)
    assert loss16 == pytest.approx(loss32, rel=0.01)
    assert all(torch.isfinite(g).all() for g in grads16.values())


def test_a_resumed_run_on_the_device_repeats_the_uninterrupted_one(tmp_path, mnist_args):
    """4 steps straight against 2, a checkpoint, and 2 more after --resume. On the CPU the
    losses are equal to the bit; on a GPU, index backward passes add with atomics in any
    order, so they agree to float32 rounding over 4 steps (1e-6 relative)."""
    common = PRESETS["laptop"] + mnist_args + [
        "--device", DEVICE.type, "--dtype", "float32", "--max_steps", "4", "--log_every", "1",
        "--ckpt_every", "2", "--val_clips", "0"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    train.main(common + ["--out_dir", straight])
    train.main(common + ["--out_dir", split, "--stop_at", "2"])
    train.main(common + ["--out_dir", split, "--resume", "true"])

    def losses(out):
        with open(os.path.join(out, "log.jsonl")) as f:
            return [json.loads(line)["loss"] for line in f]

    a, b = losses(straight), losses(split)
    assert len(a) == len(b) == 4
    if DEVICE.type == "cpu":
        assert a == b
    else:
        assert b == pytest.approx(a, rel=1e-6)
