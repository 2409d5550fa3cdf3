"""The fast paths of the training step give the plain float32 path's numbers, the FLOP
counter counts what closed forms say, and the benchmark runs (smoke mode)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import benchmark  # tools/benchmark.py
import train

TINY = ["--num_frames", "4", "--img_size", "32", "--patch_size", "8", "--enc_dim", "64",
        "--enc_depth", "2", "--enc_heads", "2", "--pred_dim", "32", "--pred_depth", "2",
        "--batch_size", "8", "--dtype", "float32", "--grad_clip", "0"]


def clips(n=8, frames=4, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, frames, size, size, generator=g)


def one_step(argv, x):
    """-> (loss, {name: gradient}) after one train_step from the seeded initial weights."""
    run = train.setup(train.parse_config(argv))
    loss = float(train.train_step(run, x, 0)[0])
    return loss, {n: p.grad.clone() for n, p in run.module.named_parameters()
                  if p.grad is not None}


def test_bf16_autocast_loss_is_close_to_float32():
    """Tolerance: 1% of the loss. bf16 keeps 8 significant bits per number, but the L1 loss
    averages thousands of them; the gap measured here is about 5e-5 of the loss."""
    x = clips()
    loss32, _ = one_step(TINY, x)
    loss16, _ = one_step(TINY + ["--dtype", "bfloat16"], x)
    print(f"loss float32 {loss32:.6f}, bfloat16 autocast {loss16:.6f}")
    assert loss16 == pytest.approx(loss32, rel=0.01)


def test_activation_checkpointing_changes_nothing():
    x = clips()
    loss, grads = one_step(TINY, x)
    loss_ckpt, grads_ckpt = one_step(TINY + ["--grad_checkpoint", "true"], x)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 10
    for name in grads:
        assert torch.allclose(grads[name], grads_ckpt[name], rtol=1e-5, atol=1e-8), name


def test_gradient_accumulation_equals_one_large_batch():
    """V-JEPA with deterministic future masks, without the token regulariser (whose batch
    statistics differ per micro-batch): 2 micro-batches of 4 clips give the gradient of one
    batch of 8."""
    vit = TINY + ["--preset", "laptop_vjepa", "--mask", "future", "--mask_ctx_frames", "2"]
    x = clips()
    loss, grads = one_step(vit + ["--batch_size", "8"], x)
    loss_acc, grads_acc = one_step(vit + ["--batch_size", "4", "--accum_steps", "2"], x)
    assert loss_acc == pytest.approx(loss, rel=1e-5)
    for name in grads:
        assert torch.allclose(grads[name], grads_acc[name], rtol=1e-4, atol=1e-7), name


def test_flop_counter_against_closed_forms():
    """A linear layer: 2 B n m forward; attention (the CPU kernel, counted by our mapping):
    QK^T and AV, 2 x 2 B H N^2 Dh forward."""
    B, n, m = 5, 7, 11
    lin = torch.nn.Linear(n, m)
    assert benchmark.count_flops(lambda: lin(torch.randn(B, n))) == 2 * B * n * m
    H, N, Dh = 2, 9, 4
    q, k, v = (torch.randn(B, H, N, Dh) for _ in range(3))
    assert benchmark.count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == \
        2 * 2 * B * H * N * N * Dh


def test_benchmark_smoke(tmp_path, capsys):
    """Every kind of measurement, --before (the same steps at a commit, here HEAD, in a
    temporary worktree, in turns with this tree's, and the ratio) and --variants (this tree's
    steps with other flags)."""
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=benchmark.ROOT, capture_output=True)
    before = ["--before", "HEAD"] if git.returncode == 0 else []
    results = benchmark.main(["--smoke", "--configs", "tiny-video", "--out", str(tmp_path),
                              "--variants", "--grad_checkpoint true", *before])
    kinds = {r["kind"] for r in results}
    assert kinds == {"matmul", "step", "train.py", "masks", "fista"}
    steps = [r for r in results if r["kind"] == "step"]
    assert {r["dtype"] for r in steps} >= {"float32"}
    assert {r["code"] for r in steps} == ({"this", "+ --grad_checkpoint true"} |
                                          ({"HEAD"} if before else set()))
    for r in steps:
        assert r["ms_min"] <= r["ms_median"] and r["clips_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["gflop_per_step"] > 0 and len(r["round_ms"]) == 2
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert len(saved["results"]) == len(results)
    out = capsys.readouterr().out
    assert "clips/s" in out and out.startswith("CPU: ")
    assert "speed-up of `--grad_checkpoint true` over this tree without it" in out
    if before:
        assert "speed-up of this tree over HEAD" in out


def test_speedup_is_the_median_of_paired_ratios():
    new = {"round_ms": [100, 50, 200]}
    old = {"round_ms": [150, 100, 220]}  # ratios 1.5, 2.0, 1.1
    assert benchmark.speedup(new, old) == pytest.approx(1.5)


def test_flops_counted_on_the_meta_device_equal_a_real_step():
    """The GPU estimate counts FLOPs of large presets on the meta device, without running
    them; on a small config that count equals the one of a real step on the CPU. (On meta,
    attention runs as its plain matrix products, so the CPU step uses them too: the fused
    CPU kernel's backward also recomputes the scores and counts one product more.)"""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    argv = TINY + ["--batch_size", "2"]
    run = train.setup(train.parse_config(argv))
    with sdpa_kernel(SDPBackend.MATH):
        real = benchmark.count_flops(lambda: train.train_step(run, clips(2), 0))
    meta = torch.device("meta")
    with meta:
        run = train.setup(train.parse_config(argv), device=meta)
    counted = benchmark.count_flops(lambda: train.train_step(run, clips(2).to(meta), 0))
    assert counted == real > 0


def test_known_flags_drops_options_an_earlier_commit_lacks():
    argv = ["--preset", "laptop", "--no_such_option", "3", "--patch_size", "8"]
    assert benchmark.known_flags(argv) == ["--preset", "laptop", "--patch_size", "8"]


FAULTS = """
import resource, sys, torch
sys.path.insert(0, sys.argv[1])
import model, train
if sys.argv[2] == "without":  # the same run with glibc's default thresholds
    model.keep_freed_memory = lambda: False
run = train.setup(train.parse_config(sys.argv[3:]))
x = torch.rand(8, 1, 16, 64, 64)
faults = []
for step in range(12):
    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    train.train_step(run, x, step)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
print(sorted(faults[4:])[4])  # the median of the last 8 steps
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_training_steps_reuse_freed_memory():
    """After a few steps a training step gets its memory from what the previous step freed:
    a typical step page-faults a small fraction of what the same step does with glibc's default
    thresholds (thousands to tens of thousands of 4 KB pages per step; with model.keep_freed_memory
    0 to a few hundred, when a step still grows the heap by a few MB). In the precision
    `python train.py` picks here: bf16 where it is native, else float32."""
    argv = benchmark.CONFIGS["tiny-video"] + ["--dtype", "auto"]
    median = {}
    for mode in ("with", "without"):
        out = subprocess.run([sys.executable, "-c", FAULTS, benchmark.ROOT, mode, *argv],
                             capture_output=True, text=True, check=True)
        median[mode] = int(out.stdout.split()[-1])
    assert median["without"] > 1000, median  # else this config no longer shows the effect
    assert median["with"] < median["without"] / 10, median


def test_benchmark_killed_with_sigterm_removes_its_worktrees(tmp_path):
    """`kill` of a --before run while it measures leaves no git worktree registered (else each
    killed run would leave one per commit in /tmp)."""
    def worktrees():
        out = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=benchmark.ROOT,
                             capture_output=True, text=True)
        return [line for line in out.stdout.splitlines() if line.startswith("worktree ")]

    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=benchmark.ROOT,
                      capture_output=True).returncode:
        pytest.skip("not a git checkout")
    start = len(worktrees())
    log = tmp_path / "log.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, benchmark.HERE, "--smoke", "--configs",
                                 "tiny-video", "--before", "HEAD", "--out", str(tmp_path)],
                                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 120
        while "steps in turns" not in log.read_text() and time.time() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert len(worktrees()) == start + 1  # measuring, with HEAD checked out beside us
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert len(worktrees()) == start


def test_benchmark_variants_split_flags_from_environment(tmp_path):
    assert benchmark.variant_job("--compile true OMP_WAIT_POLICY=PASSIVE --lr=3 A_B=x=y") == {
        "extra": ("--compile", "true", "--lr=3"), "env": {"OMP_WAIT_POLICY": "PASSIVE",
                                                           "A_B": "x=y"}}
    # the environment reaches the child: pointed at an empty tree, it cannot import the project
    job = dict(kind="step", config="tiny-video", dtype="float32", batch=2, threads=1, warmup=1,
               env={"BENCHMARK_ROOT": str(tmp_path)})
    with pytest.raises(RuntimeError, match="No module named"):
        benchmark.Worker(job)
    # idle threads that spin would slow the variants taking turns with them: refused
    with pytest.raises(SystemExit):
        benchmark.main(["--smoke", "--variants", "OMP_WAIT_POLICY=active", "--out", str(tmp_path)])
