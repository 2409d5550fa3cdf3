"""Faults a long run meets, injected for real: a checkpoint damaged on disk, a process killed
with SIGKILL, unreadable files in a video folder, a rank that dies under torchrun."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from test_train import ROOT, TINY, read_log, run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the same arithmetic in every process of a comparison


def saved_step(path):
    return torch.load(path, map_location="cpu", weights_only=False)["step"]


def damage(path):
    """Cut a file off half-way, as a crash or a full disk does to a file being written."""
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def losses(out):
    return [(r["step"], r["loss"]) for r in read_log(out)]


# ----------------------------------------------------------------------------------------------
# 1. checkpoints: the previous one is kept, and used when the latest cannot be read

def test_resume_from_the_previous_checkpoint_when_the_latest_is_damaged(tmp_path, mnist_args,
                                                                       capsys):
    common = TINY + mnist_args + ["--max_steps", "12", "--log_every", "2", "--ckpt_every", "4",
                                  "--val_clips", "0"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    train.main(common + ["--out_dir", straight])
    train.main(common + ["--out_dir", split, "--stop_at", "10"])
    latest, prev = os.path.join(split, "ckpt.pt"), os.path.join(split, "ckpt_prev.pt")
    assert (saved_step(latest), saved_step(prev)) == (10, 8)
    damage(latest)
    with open(os.path.join(split, "log.jsonl"), "a") as f:
        f.write('{"step": 12, "lo')  # a line the crash cut short
    capsys.readouterr()

    train.main(common + ["--out_dir", split, "--resume", "true"])
    err = capsys.readouterr().err
    assert f"warning: --resume: cannot read {latest}" in err
    assert f"resuming from the previous checkpoint {prev}" in err
    assert losses(split) == losses(straight)  # steps 10 and 12 recomputed from step 8
    # the damaged file is set aside, so the good step-8 file is still the previous one
    assert os.path.exists(latest + ".unreadable")
    assert (saved_step(latest), saved_step(prev)) == (12, 8)


def test_resume_with_no_readable_checkpoint_is_one_line(tmp_path, mnist_args):
    out = str(tmp_path / "run")
    code, err = run_cli(*TINY, *mnist_args, "--out_dir", out, "--max_steps", "4",
                        "--ckpt_every", "2", "--val_clips", "0", env=ONE_THREAD)
    assert code == 0, err
    for name in ("ckpt.pt", "ckpt_prev.pt"):
        damage(os.path.join(out, name))
    code, err = run_cli(*TINY, *mnist_args, "--out_dir", out, "--resume", "true",
                        env=ONE_THREAD)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err and len(lines) == 2, err
    assert lines[0].startswith("warning: --resume: cannot read") and "ckpt.pt" in lines[0]
    assert lines[1].startswith(f"error: --resume: cannot read {os.path.join(out, 'ckpt_prev.pt')}")


def test_sigkill_then_a_damaged_latest_checkpoint_resumes_exactly(tmp_path, mnist_args):
    """A run killed with SIGKILL at whatever point it has reached, its latest checkpoint then
    cut in half: the resumed run falls back to the previous checkpoint and from there on gives
    the uninterrupted run's losses exactly."""
    args = [*TINY, *mnist_args, "--max_steps", "80", "--log_every", "2", "--ckpt_every", "4",
            "--val_clips", "0"]
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    code, err = run_cli(*args, "--out_dir", straight, env=ONE_THREAD)
    assert code == 0, err

    p = subprocess.Popen([sys.executable, "train.py", *args, "--out_dir", killed], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, **ONE_THREAD})
    log = os.path.join(killed, "log.jsonl")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        if os.path.exists(log) and open(log).read().count("\n") >= 7:  # past step 14
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=30) == -signal.SIGKILL  # killed, not finished
    logged = [step for step, _ in losses(killed)]
    assert 14 <= logged[-1] < 80, logged

    latest, prev = os.path.join(killed, "ckpt.pt"), os.path.join(killed, "ckpt_prev.pt")
    if os.path.exists(latest):  # absent if the kill came between the two renames of a save
        damage(latest)
    prev_step = saved_step(prev)
    assert prev_step % 4 == 0 and prev_step >= 8

    code, err = run_cli(*args, "--out_dir", killed, "--resume", "true", env=ONE_THREAD)
    assert code == 0, err
    assert f"resuming from the previous checkpoint {prev}" in err
    assert losses(killed) == losses(straight)
