"""Faults a long run meets, injected for real: a checkpoint damaged on disk, a process killed
with SIGKILL or stopped with SIGTERM, unreadable files in a video folder, a rank that dies under torchrun."""
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


def untimed(out):
    """The log without its timings."""
    return [{k: v for k, v in r.items() if k not in ("step_time_s", "clips_per_s")}
            for r in read_log(out)]


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


def uninterrupted(args, out):
    """`python train.py ARGS --out_dir OUT` to its end, one thread -> OUT."""
    code, err = run_cli(*args, "--out_dir", str(out), env=ONE_THREAD)
    assert code == 0, err
    return str(out)


def start_run(args, out, lines):
    """`python train.py ARGS --out_dir OUT` in the background, returned once its log has
    `lines` lines (or it ended, or two minutes passed); its stdout is a pipe, its stderr dropped."""
    p = subprocess.Popen([sys.executable, "train.py", *args, "--out_dir", out], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env={**os.environ, **ONE_THREAD})
    log = os.path.join(out, "log.jsonl")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        if os.path.exists(log) and open(log).read().count("\n") >= lines:
            break
        time.sleep(0.01)
    return p


def test_sigkill_then_a_damaged_latest_checkpoint_resumes_exactly(tmp_path, mnist_args):
    """A run killed with SIGKILL at whatever point it has reached, its latest checkpoint then
    cut in half: the resumed run falls back to the previous checkpoint and from there on gives
    the uninterrupted run's losses exactly."""
    args = [*TINY, *mnist_args, "--max_steps", "80", "--log_every", "2", "--ckpt_every", "4",
            "--val_clips", "0"]
    straight, killed = uninterrupted(args, tmp_path / "straight"), str(tmp_path / "killed")

    p = start_run(args, killed, lines=7)  # past step 14
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL  # killed, not finished
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


def test_sigterm_checkpoints_the_step_then_resumes_exactly(tmp_path, mnist_args):
    """SIGTERM (a cluster's pre-emption) in the middle of a run: the step finishes, a checkpoint
    of it is written, the run exits normally saying it stopped early, and the resumed run gives
    the uninterrupted run's losses exactly."""
    args = [*TINY, *mnist_args, "--max_steps", "60", "--log_every", "1", "--ckpt_every", "1000",
            "--val_clips", "0"]
    straight, stopped = uninterrupted(args, tmp_path / "straight"), str(tmp_path / "stopped")

    p = start_run(args, stopped, lines=5)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0 and "done (stopped early)" in out, out
    step = saved_step(os.path.join(stopped, "ckpt.pt"))
    assert 5 <= step < 60 and losses(stopped)[-1][0] == step

    code, err = run_cli(*args, "--out_dir", stopped, "--resume", "true", env=ONE_THREAD)
    assert code == 0, err
    assert losses(stopped) == losses(straight)


# ----------------------------------------------------------------------------------------------
# 2. video folders with files that cannot be used

def write_folder(root, good, bad=()):
    """`good` .npy videos of 6 frames, file k constant at brightness 10 + 4k (so a clip tells
    its file), and the named bad files: "truncated.gif" (a real GIF cut in half: its header
    still reads), "garbage.gif" (not a GIF), "short.npy" (2 frames). -> paths of the bad ones."""
    import imageio.v3 as iio
    import numpy as np
    root.mkdir(parents=True, exist_ok=True)
    for k in range(good):
        np.save(root / f"good{k:03d}.npy", np.full((6, 20, 20), 10 + 4 * k, np.uint8))
    for name in bad:
        path = root / name
        if name == "truncated.gif":
            iio.imwrite(path, np.random.default_rng(0).integers(0, 255, (8, 20, 20, 3), np.uint8))
            damage(path)
        elif name == "garbage.gif":
            path.write_bytes(b"this is not a GIF" * 10)
        else:
            np.save(path, np.zeros((2, 20, 20), np.uint8))
    return [str(root / name) for name in bad]


def test_folder_skips_a_corrupt_file_deterministically(tmp_path):
    import data
    [bad] = write_folder(tmp_path, 9, ["truncated.gif"])
    seen = data.VideoFolder(str(tmp_path), num_frames=4, img_size=8, in_chans=1)
    replaced = 0
    for seed in range(12):
        clips, labels = seen.sample(4, torch.Generator().manual_seed(seed))
        assert clips.shape == (4, 1, 4, 8, 8)
        files = [seen.files[i] for i in labels["index"].tolist()]
        assert bad not in files and all(seen.files[i] == bad for i in labels["failed"].tolist())
        # the clip's brightness names the file it came from: the one in labels["index"]
        levels = (clips.mean((1, 2, 3, 4)) * 255).round().long().tolist()
        assert levels == [10 + 4 * int(f[-7:-4]) for f in files]
        # a process that has not met the bad file yet draws the same batch
        fresh = data.VideoFolder(str(tmp_path), num_frames=4, img_size=8, in_chans=1)
        clips2, labels2 = fresh.sample(4, torch.Generator().manual_seed(seed))
        assert torch.equal(clips, clips2) and torch.equal(labels["failed"], labels2["failed"])
        replaced += len(labels["failed"])
    assert replaced > 0 and list(seen.bad) == [bad]
    assert seen.bad[bad].startswith(f"cannot read {bad}: image file is truncated")


def test_folder_of_bad_files_only(tmp_path):
    import data
    write_folder(tmp_path, 0, ["garbage.gif", "short.npy"])
    folder = data.VideoFolder(str(tmp_path), num_frames=4, img_size=8, in_chans=1)
    with pytest.raises(ValueError, match=rf"50 files drawn in a row from {tmp_path} cannot be "
                                         r"used, the last: .*(garbage\.gif|short\.npy)"):
        folder.sample(2, torch.Generator().manual_seed(0))


def folder_args(path, out, *extra):
    return [*TINY, "--dataset", "video_folder", "--data_path", str(path), "--batch_size", "8",
            "--log_every", "5", "--ckpt_every", "5", "--val_clips", "0", "--out_dir", str(out),
            *extra]


def test_run_over_a_folder_with_a_corrupt_file(tmp_path, capsys):
    """40 good files and one corrupt GIF: the run finishes, names the GIF once, and a run
    resumed half-way (in a new process that has not met the GIF, with a DataLoader worker)
    gives the same losses."""
    import json
    import data
    [bad] = write_folder(tmp_path / "videos", 40, ["truncated.gif"])
    straight, split = tmp_path / "straight", tmp_path / "split"
    train.main(folder_args(tmp_path / "videos", straight, "--max_steps", "30"))
    err = capsys.readouterr().err
    assert err.count("warning: skipping") == 1
    assert f"warning: skipping cannot read {bad}: image file is truncated" in err
    # the replaced draws, as the data source reports them step by step
    batches = data.StepBatches(data.VideoFolder(str(tmp_path / "videos"), 4, 32, 1), 8, seed=0)
    per_step = [len(batches[s][1]["failed"]) for s in range(30)]
    assert sum(per_step[:15]) > 0 and sum(per_step[15:]) > 0  # before and after the split
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["steps"] == 30

    train.main(folder_args(tmp_path / "videos", split, "--max_steps", "30", "--stop_at", "15"))
    train.main(folder_args(tmp_path / "videos", split, "--max_steps", "30", "--resume", "true",
                           "--num_workers", "1"))
    # the main process reads the file again for the reason, which it did not meet itself
    assert f"warning: skipping cannot read {bad}: image file is truncated" in (
        capsys.readouterr().err)
    assert untimed(split) == untimed(straight)


def test_check_videos_lists_the_unusable_files(tmp_path, capsys):
    """tools/check_videos.py: the unusable files from their headers, and nothing written."""
    from tools import check_videos
    bad = write_folder(tmp_path / "videos", 4, ["garbage.gif", "short.npy", "truncated.gif"])
    args = ["--data_path", str(tmp_path / "videos"), "--num_frames", "4"]
    with pytest.raises(ValueError, match=r"^2 of 7 files under .* cannot be used \(listed above"):
        check_videos.main(args)
    out = capsys.readouterr().out.splitlines()
    # the headers show the garbage and the short file; the cut GIF's header is whole
    assert len(out) == 2 and out[0].startswith(f"cannot read {bad[0]}: ")
    assert out[1] == f"{bad[1]} has 2 frames; expected at least num_frames=4"
    for name in ("garbage.gif", "short.npy"):
        os.remove(tmp_path / "videos" / name)
    assert check_videos.main(args) is None
    assert capsys.readouterr().out.startswith(f"all 5 files under {tmp_path / 'videos'} have a "
                                              "readable header and at least num_frames=4 frames")


# ----------------------------------------------------------------------------------------------
# 3. torchrun: a rank that dies, a rank that hangs

def worker_pid(parent, rank):
    """The pid of the torchrun worker of `rank` (a child of `parent`, RANK in its environment)."""
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):  # not a pid, or gone meanwhile
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry)
    raise AssertionError(f"no rank-{rank} worker under pid {parent}")


def alive(pid):
    """Running, neither gone nor a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_torchrun(tmp_path, mnist_args, *extra):
    """Two CPU ranks training for long enough to be interrupted; returns once three log lines
    (step 6, checkpointed) are written. -> (Popen, out_dir, file of torchrun's stderr)"""
    out, err = tmp_path / "ddp", tmp_path / "stderr.txt"
    with open(err, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              "--nproc_per_node=2", "train.py", *TINY, *mnist_args,
                              "--max_steps", "5000", "--log_every", "2", "--ckpt_every", "2",
                              "--val_clips", "0", "--out_dir", str(out), *extra],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f,
                             env={**os.environ, **ONE_THREAD}, start_new_session=True)
    log, deadline = out / "log.jsonl", time.monotonic() + 120
    while not (log.exists() and log.read_text().count("\n") >= 3):
        assert p.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
        time.sleep(0.05)
    return p, out, err


def intact_checkpoints(out):
    latest, prev = (saved_step(out / name) for name in ("ckpt.pt", "ckpt_prev.pt"))
    assert latest >= 6 and latest % 2 == 0 and prev == latest - 2


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="finds ranks in /proc")
def test_torchrun_exits_when_a_rank_is_killed(tmp_path, mnist_args):
    p, out, err = start_torchrun(tmp_path, mnist_args)
    try:
        os.kill(worker_pid(p.pid, 1), signal.SIGKILL)
        t0 = time.monotonic()
        code = p.wait(timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert code != 0 and elapsed < 60, (code, elapsed, err.read_text()[-3000:])
    intact_checkpoints(out)


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="finds ranks in /proc")
def test_sigterm_to_one_rank_stops_both_with_a_checkpoint(tmp_path, mnist_args):
    """SIGTERM reaching only rank 1 (as a pre-emption's signal may reach the ranks on either side
    of a step): the ranks agree to stop at the next logged step, rank 0 checkpoints it, and
    torchrun exits normally instead of rank 0 waiting in an all-reduce that rank 1 left."""
    p, out, err = start_torchrun(tmp_path, mnist_args, "--dist_timeout_s", "60")
    try:
        os.kill(worker_pid(p.pid, 1), signal.SIGTERM)
        code = p.wait(timeout=50)  # less than the collectives' timeout
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert code == 0, err.read_text()[-3000:]
    step = saved_step(out / "ckpt.pt")
    assert 6 <= step < 5000 and step % 2 == 0 and read_log(out)[-1]["step"] == step


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="finds ranks in /proc")
def test_a_hung_rank_times_the_others_out(tmp_path, mnist_args):
    """Rank 1 stopped (SIGSTOP: alive, its sockets open, so nothing tells rank 0 it is gone):
    rank 0's next collective waits --dist_timeout_s, then fails, and rank 0 exits."""
    timeout = 10
    p, out, err = start_torchrun(tmp_path, mnist_args, "--dist_timeout_s", str(timeout))
    try:
        rank0, rank1 = worker_pid(p.pid, 0), worker_pid(p.pid, 1)
        os.kill(rank1, signal.SIGSTOP)
        t0 = time.monotonic()
        while alive(rank0) and time.monotonic() - t0 < 120:
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
        os.kill(rank1, signal.SIGKILL)  # what the agent does 30 s after rank 0 failed
        code = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    text = err.read_text()
    assert code != 0 and timeout - 1 < elapsed < timeout + 30, (code, elapsed, text[-3000:])
    assert "Timed out" in text or "timed out" in text, text[-3000:]
    intact_checkpoints(out)
