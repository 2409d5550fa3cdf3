"""The GPU check: what a CPU cannot test, in one run of about 8 minutes on a CUDA machine.

    python tools/gpu_check.py           # on a machine with CUDA GPUs
    python tools/gpu_check.py --dry     # anywhere: the same checks, tiny, on the CPU (CI runs it)

1. tests/test_device.py on the GPU (VJEPA_TEST_DEVICE=cuda): a step's loss and gradients equal
   the float32 CPU step's, bf16 autocast stays close to float32, a resumed run repeats an
   uninterrupted one.
2. The vitl16 preset's training step at 16x224x224 on synthetic clips, batch 24 per GPU, bf16,
   with and without `--compile true` and activation checkpointing: ms/step (median), clips/s,
   peak GPU memory, FLOPs per step (counted on the meta device, without the recomputation of
   checkpointing) and their share of the GPU's bf16 matmul peak measured here.
3. torchrun over every GPU (nccl) for 20 steps of vitl16 on a folder of synthetic videos: 10
   steps, stop, resume, 10 more; the log and the checkpoint are checked. With one GPU torchrun
   runs one process, which needs no process group, so nccl is exercised only with two or more.
4. One Markdown table on stdout, and OUT/gpu_check.json.
--dry shrinks every size (the ViT to width 32 at 64x64, a few steps, torchrun with 2 CPU
processes over gloo, no compiling) so that the script itself is tested where no GPU is.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import benchmark  # noqa: E402  (tools/benchmark.py: the FLOP counter)
import model  # noqa: E402
import train  # noqa: E402

DRY_SIZE = ["--img_size", "64", "--enc_dim", "32", "--enc_depth", "2", "--enc_heads", "2",
            "--pred_dim", "16", "--pred_depth", "1"]


def device_tests(dry, timeout):
    """tests/test_device.py on the GPU (or, dry, on the CPU) -> row."""
    env = {**os.environ, "VJEPA_TEST_DEVICE": "cpu" if dry else "cuda"}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        os.path.join(ROOT, "tests", "test_device.py")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    summary = (p.stdout.strip().splitlines() or ["no output"])[-1]
    return {"check": "tests/test_device.py", "ok": p.returncode == 0, "result": summary,
            "s": round(time.perf_counter() - t, 1),
            **({} if p.returncode == 0 else {"tail": p.stdout[-3000:] + p.stderr[-2000:]})}


def step_argv(dry, batch, compile_, checkpoint):
    return ["--preset", "vitl16", "--data_path", "synthetic", "--batch_size", str(batch),
            "--compile", str(compile_).lower(), "--grad_checkpoint", str(checkpoint).lower(),
            *(DRY_SIZE if dry else [])]


def time_step(job):
    """In a child process: warm-up steps (compiling, when asked), then `steps` timed steps on
    fixed synthetic clips -> {ms/step, clips/s, peak memory, warm-up seconds}."""
    cuda = torch.cuda.is_available() and not job["dry"]
    device = torch.device("cuda" if cuda else "cpu")
    cfg = train.parse_config(job["argv"] + ["--device", device.type])
    run = train.setup(cfg, device=device)
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(cfg.batch_size, cfg.in_chans, cfg.num_frames, cfg.img_size,
                        cfg.img_size, generator=g).to(device)

    def step(i):
        t = time.perf_counter()
        loss = train.train_step(run, clips, i)[0]
        float(loss)  # waits for the device
        return time.perf_counter() - t

    t = time.perf_counter()
    for i in range(job["warmup"]):
        step(i)
    warmup_s = time.perf_counter() - t
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = sorted(step(job["warmup"] + i) for i in range(job["steps"]))
    ms = 1e3 * times[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else model.peak_rss_mb() / 1024
    return {"ms": ms, "clips_per_s": cfg.batch_size * 1e3 / ms, "peak_gib": peak,
            "warmup_s": warmup_s, "dtype": str(run.dtype).replace("torch.", "")}


def step_flops(argv):
    """FLOPs of one training step (forward, backward, target encoder; multiply-add = 2) counted
    on the meta device: no memory, no compute. Without checkpointing's recomputation."""
    cfg = train.parse_config(argv + ["--dtype", "float32", "--grad_checkpoint", "false",
                                     "--compile", "false"])
    meta = torch.device("meta")
    with meta:
        run = train.setup(cfg, device=meta)
    clips = torch.empty(cfg.batch_size, cfg.in_chans, cfg.num_frames, cfg.img_size,
                        cfg.img_size, device=meta)
    return benchmark.count_flops(lambda: train.train_step(run, clips, 0))


def matmul_peak(dry):
    """The bf16 matrix-product rate this device reaches (TFLOP/s): the denominator of the
    step's share, measured rather than taken from a datasheet."""
    cuda = torch.cuda.is_available() and not dry
    n, reps = (8192, 50) if cuda else (512, 10)
    dtype = torch.bfloat16 if cuda else torch.float32  # dry: no bf16 on most CPUs
    a, b = (torch.randn(n, n, device="cuda" if cuda else "cpu", dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12, str(dtype).replace("torch.", "")


def write_videos(folder, dry, files=8):
    """Synthetic videos for the video-folder loader: smooth moving blobs, [T, H, W, 3] uint8."""
    os.makedirs(folder, exist_ok=True)
    T, H, W = (20, 72, 80) if dry else (40, 240, 320)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :W]
    for i in range(files):
        cy, cx, vy, vx = rng.uniform(0, H), rng.uniform(0, W), *rng.uniform(-3, 3, 2)
        frames = [np.exp(-((yy - cy - vy * t) ** 2 + (xx - cx - vx * t) ** 2) / (0.02 * H * W))
                  for t in range(T)]
        video = (255 * np.stack(frames)[..., None] * rng.uniform(0.3, 1, 3)).astype(np.uint8)
        np.save(os.path.join(folder, f"video{i}.npy"), video)


def torchrun_check(dry, work, timeout):
    """vitl16 under torchrun over every GPU (dry: 2 CPU processes): 10 steps and a stop, then a
    resume to 20 (dry: 2 + 2) -> row."""
    procs = 2 if dry else max(1, torch.cuda.device_count())
    half = 2 if dry else 10
    folder, out = os.path.join(work, "videos"), os.path.join(work, "torchrun")
    write_videos(folder, dry)
    argv = ["--preset", "vitl16", "--data_path", folder, "--out_dir", out, "--max_steps",
            str(2 * half), "--log_every", str(half // 2), "--ckpt_every", str(half),
            "--batch_size", str(2 if dry else 4), "--num_workers", str(0 if dry else 4),
            *(DRY_SIZE + ["--dtype", "float32"] if dry else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    for more in (["--stop_at", str(half)], ["--resume", "true"]):
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={procs}", os.path.join(ROOT, "train.py"), *argv,
                            *more], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=timeout)
        if p.returncode:
            return {"check": f"torchrun x{procs}", "ok": False, "result": f"exit {p.returncode}",
                    "s": round(time.perf_counter() - t, 1), "tail": p.stderr[-3000:]}
    with open(os.path.join(out, "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    state = model.read_checkpoint(os.path.join(out, "ckpt.pt"))
    steps = [r["step"] for r in log]
    expected = list(range(half // 2, 2 * half + 1, half // 2))
    ok = (steps == expected and all(np.isfinite(r["loss"]) for r in log)
          and state["step"] == 2 * half and state["world_size"] == procs)
    backend = "gloo" if dry else "nccl" if procs > 1 else "one process, no process group"
    return {"check": f"torchrun x{procs} ({backend})", "ok": ok,
            "result": f"logged steps {steps}, checkpoint at step {state['step']}, world size "
                      f"{state['world_size']}, last loss {log[-1]['loss']:.4f}",
            "s": round(time.perf_counter() - t, 1)}


def table(rows, steps, peak, flops, machine):
    peak, peak_dtype = peak
    lines = [f"GPU check on {machine}", "",
             "| check | result | ok | seconds |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['check']} | {r['result']} | {'yes' if r['ok'] else 'NO'} | {r['s']} |"
              for r in rows]
    lines += ["", f"vitl16 step, {steps[0]['batch']} clips of 16x224x224 per GPU "
              f"(dry: tiny), {flops / 1e12:.3g} TFLOP per step, {peak_dtype} matmul peak "
              f"measured here {peak:.3g} TFLOP/s", "",
              "| --compile | --grad_checkpoint | precision | ms/step | clips/s | peak memory "
              "GiB | TFLOP/s | share of peak | warm-up s |", "| --- | --- | --- | --- | --- | "
              "--- | --- | --- | --- |"]
    for s in steps:
        if "ms" not in s:
            lines.append(f"| {s['compile']} | {s['checkpoint']} | | {s['error']} | | | | | |")
            continue
        rate = flops / (s["ms"] / 1e3) / 1e12
        lines.append(f"| {s['compile']} | {s['checkpoint']} | {s['dtype']} | {s['ms']:.0f} | "
                     f"{s['clips_per_s']:.1f} | {s['peak_gib']:.1f} | {rate:.3g} | "
                     f"{rate / peak:.0%} | {s['warmup_s']:.0f} |")
    return "\n".join(lines)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="tiny, on the CPU (no GPU needed)")
    p.add_argument("--batch", type=int, default=24, help="clips per GPU of the timed step")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="steps before timing (compiling)")
    p.add_argument("--no_compile", action="store_true", help="skip the --compile variants")
    p.add_argument("--out", default="out/gpu_check")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print("@@" + json.dumps(time_step(json.loads(a.child))))
        return None
    if not a.dry and not torch.cuda.is_available():
        p.error("no CUDA device here: run with --dry, or on a GPU machine")
    if a.dry:
        a.batch, a.steps, a.warmup = 2, 2, 1
    machine = ("CPU (dry run), " + model.cpu_class() if a.dry else
               f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
    machine += f", torch {torch.__version__}"
    print(f"GPU check on {machine}", flush=True)
    rows, steps = [device_tests(a.dry, timeout=60 if a.dry else 120)], []
    print(f"tests: {rows[-1]['result']}", flush=True)
    peak = matmul_peak(a.dry)
    flops = step_flops(step_argv(a.dry, a.batch, False, False))
    for compile_ in (False,) if a.dry or a.no_compile else (False, True):
        for checkpoint in (False, True):
            job = {"dry": a.dry, "argv": step_argv(a.dry, a.batch, compile_, checkpoint),
                   "steps": a.steps, "warmup": a.warmup}
            r = {"compile": compile_, "checkpoint": checkpoint, "batch": a.batch}
            try:
                c = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                                    json.dumps(job)], cwd=ROOT, capture_output=True, text=True,
                                   timeout=240 if compile_ else 120)
                reply = [line for line in c.stdout.splitlines() if line.startswith("@@")]
                r.update(json.loads(reply[-1][2:]) if reply else
                         {"error": " ".join(c.stderr.strip().splitlines()[-1:])[:200]})
            except subprocess.TimeoutExpired:
                r["error"] = "timed out"
            steps.append(r)
            print(f"step compile={compile_} checkpoint={checkpoint}: "
                  f"{r.get('ms', r.get('error'))}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        rows.append(torchrun_check(a.dry, work, timeout=120 if a.dry else 180))
    rows.append({"check": "timed step variants", "ok": all("ms" in s for s in steps),
                 "result": f"{sum('ms' in s for s in steps)} of {len(steps)} ran", "s": ""})
    text = table(rows, steps, peak, flops, machine)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gpu_check.json"), "w") as f:
        json.dump({"machine": machine, "rows": rows, "steps": steps, "tflop_per_step":
                   flops / 1e12, "matmul_peak_tflops": peak[0], "peak_dtype": peak[1]}, f,
                  indent=1)
    print("\n" + text)
    for r in rows:
        if not r["ok"] and "tail" in r:
            print(f"\n{r['check']} failed:\n{r['tail']}", file=sys.stderr)
    return {"ok": all(r["ok"] for r in rows), "rows": rows, "steps": steps, "text": text}


if __name__ == "__main__":
    result = main(sys.argv[1:])
    sys.exit(0 if result is None or result["ok"] else 1)
