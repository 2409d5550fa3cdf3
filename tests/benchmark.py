"""Speed and memory of this machine running the project: training steps, masks, FISTA.

    python tests/benchmark.py                 # the table in README "Performance" (~10 min)
    python tests/benchmark.py --scaling       # also batch 4 / 8 / 16 and 1 vs 2 threads
    python tests/benchmark.py --smoke         # a few steps of everything (the test suite)
    python tests/benchmark.py --profile       # where the time of a tiny-video step goes
    python tests/benchmark.py --estimate      # vitl16 on GPUs: an estimate from FLOPs

Every measurement runs in a fresh child process (its own thread count and peak memory).
Per training config: ms/step (median and min over --steps timed steps after --warmup),
clips/s, GFLOP/step counted by torch.utils.flop_counter on one step (forward, backward and
the target encoder; not the optimizer), the achieved GFLOP/s and its share of this machine's
matmul peak (2048 x 2048 in the same precision and thread count), and the peak resident
memory. "laptop" is `python train.py` itself: data generation, logging and checkpoints
included, so its clips/s is what a user sees. Results: a Markdown table on stdout and
OUT/benchmark.json.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import infer_latent  # noqa: E402
import masks  # noqa: E402
import model  # noqa: E402
import train  # noqa: E402

# Named training configs: a preset plus overrides. "tiny-video" is the reference config of
# the issue (16 x 64 x 64, patch 8, tubelet 2, ViT 192/6/3, predictor 96/4, batch 8, both
# multi-block masks, L1, AdamW, EMA), which is also the laptop preset's network and batch.
CONFIGS = {
    "tiny-video": ["--preset", "laptop"],
    "vjvcr": ["--preset", "vjvcr"],
    "switch_sparse80": ["--preset", "switch_sparse80"],
}
FLOP_REFERENCE = {"tiny-video": 64.7}  # GFLOP/step of the original code on this config (issue)


# ----------------------------------------------------------------------------------------------
# Measurements (each runs in a child process)

def _attention_flops():
    """flop_counter counts the GPU attention kernels but not the CPU one; count that the same
    way (2 matmuls of [N, Dh] x [Dh, N] per head forward, twice that backward)."""
    from torch.utils import flop_counter
    aten = torch.ops.aten

    def forward(query, key, value, *args, **kwargs):  # shapes, as flop_counter passes them
        return flop_counter.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, **kwargs):
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)

    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = forward
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward
    return mapping


def count_flops(fn):
    """FLOPs of fn() (multiply-add = 2), by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False, custom_mapping=_attention_flops()) as counter:
        fn()
    return counter.get_total_flops()


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def bench_matmul(dtype, n=2048, repeats=10):
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return {"gflops": 2 * n ** 3 / _median(times) / 1e9}


def bench_step(config, dtype, batch, steps, warmup, extra=()):
    """ms/step of train.train_step on pre-made clips (the data pipeline is not timed)."""
    cfg = train.parse_config(CONFIGS[config] + ["--dtype", dtype, "--batch_size", str(batch),
                                                *extra])
    run = train.setup(cfg)
    source = train.make_source(cfg, "train")
    g = torch.Generator().manual_seed(0)
    pool = [source.sample(cfg.batch_size * cfg.accum_steps, g)[0] for _ in range(4)]
    for i in range(warmup):
        float(train.train_step(run, pool[i % 4], i)[0])
    times = []
    for i in range(steps):
        t = time.perf_counter()
        float(train.train_step(run, pool[i % 4], warmup + i)[0])  # waits for the device
        times.append(time.perf_counter() - t)
    ms = 1e3 * _median(times)
    try:
        gflop = count_flops(lambda: train.train_step(run, pool[0], warmup + steps)) / 1e9
    except RuntimeError:  # the counter's module hooks break autograd.grad (FISTA inside)
        gflop = None
    return {"ms_median": ms, "ms_min": 1e3 * min(times),
            "clips_per_s": 1e3 * cfg.batch_size * cfg.accum_steps / ms,
            "gflop_per_step": gflop, "gflops": gflop / (ms / 1e3) if gflop else None,
            "peak_rss_mb": train.peak_rss_mb(), "dtype": str(run.dtype).replace("torch.", "")}


def bench_train_py(steps, extra=()):
    """`python train.py` (the laptop preset) for `steps` steps, end to end."""
    with tempfile.TemporaryDirectory() as out:
        train.main(["--max_steps", str(steps), "--log_every", str(steps), "--out_dir", out,
                    *extra])
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
    return {"clips_per_s": summary["clips_per_s"], "ms_median": 1e3 * summary["wall_s"] / steps,
            "peak_rss_mb": summary["peak_rss_mb"], "steps": steps}


def bench_masks(batch, seconds):
    """Sample-masks per second: one (context, target) pair for one clip = one sample-mask."""
    sampler = masks.MaskSampler("multiblock", (8, 14, 14), 2)  # 16 x 224 x 224, patch 16
    g = torch.Generator().manual_seed(0)
    sampler(batch, g)
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 5:
        t = time.perf_counter()
        sampler(batch, g)
        times.append(time.perf_counter() - t)
    return {"sample_masks_per_s": 2 * batch / _median(times)}


def bench_fista(batch, iterations):
    """FISTA on the sparse-latent energy of a randomly initialised switch_sparse80 predictor
    (3 -> 3 steps of 128-d features, z in R^20), all samples at once."""
    torch.manual_seed(0)
    predictor = model.MLPPredictor(3, 3, 128, latent="sparse", latent_dim=20)
    h_x, h_y = torch.randn(batch, 3, 128), torch.randn(batch, 3, 128)
    infer_latent.infer_z(predictor, h_x, h_y, "sparse", 1e-3, steps=5, tol=0)
    t = time.perf_counter()
    infer_latent.infer_z(predictor, h_x, h_y, "sparse", 1e-3, steps=iterations, tol=0)
    dt = time.perf_counter() - t
    return {"iterations_per_s": iterations / dt, "sample_iterations_per_s": batch * iterations / dt}


def profile_step(config, dtype, batch, steps=5, warmup=3):
    """Where a training step's time goes: the parts train.py names (record_function) and the
    most expensive operators, from torch.profiler over `steps` steps."""
    from torch.profiler import profile
    cfg = train.parse_config(CONFIGS[config] + ["--dtype", dtype, "--batch_size", str(batch)])
    run = train.setup(cfg)
    clips = train.make_source(cfg, "train").sample(batch, torch.Generator().manual_seed(0))[0]
    for i in range(warmup):
        train.train_step(run, clips, i)
    with profile() as prof:
        for i in range(steps):
            train.train_step(run, clips, warmup + i)
    events = prof.key_averages()
    parts = ("masks", "target encoder", "context encoder + predictor", "backward",
             "optimizer + EMA")
    total = sum(e.self_cpu_time_total for e in events)
    lines = [f"{config}, {str(run.dtype).replace('torch.', '')}, batch {batch}: "
             f"{total / steps / 1e3:.0f} ms/step under the profiler",
             "| part of the step | ms/step | share |", "| --- | --- | --- |"]
    for e in events:
        if e.key in parts:
            lines.append(f"| {e.key} | {e.cpu_time_total / steps / 1e3:.0f} | "
                         f"{e.cpu_time_total / total:.0%} |")
    lines += ["", "| operator | ms/step (self) | share |", "| --- | --- | --- |"]
    ops = sorted((e for e in events if e.key.startswith("aten::")),
                 key=lambda e: -e.self_cpu_time_total)
    for e in ops[:12]:
        lines.append(f"| {e.key} | {e.self_cpu_time_total / steps / 1e3:.0f} | "
                     f"{e.self_cpu_time_total / total:.0%} |")
    return {"text": "\n".join(lines)}


GPU_PEAK_TFLOPS = {"A100": 312, "H100": 989}  # dense bf16 tensor-core peaks (datasheets)


def estimate_gpu(preset, batch, mfu=(0.3, 0.5)):
    """An estimate, not a measurement: FLOPs of one training step of `preset` counted on the
    meta device (no memory, no compute), turned into clips/s and tokens/s per GPU at an
    assumed model-FLOP utilisation between mfu[0] and mfu[1]."""
    meta = torch.device("meta")
    cfg = train.parse_config(["--preset", preset, "--batch_size", str(batch), "--dtype",
                              "float32", "--data_path", "unused"])
    with meta:
        run = train.setup(cfg, device=meta)
    clips = torch.empty(batch, cfg.in_chans, cfg.num_frames, cfg.img_size, cfg.img_size,
                        device=meta)
    flop_per_clip = count_flops(lambda: train.train_step(run, clips, 0)) / batch
    tokens = run.module.encoder.num_tokens
    out = {"preset": preset, "batch": batch, "tflop_per_clip": flop_per_clip / 1e12,
           "tokens_per_clip": tokens}
    for gpu, peak in GPU_PEAK_TFLOPS.items():
        clips_s = [peak * 1e12 * u / flop_per_clip for u in mfu]
        out[gpu] = {"clips_per_s": clips_s, "tokens_per_s": [c * tokens for c in clips_s]}
    return out


def child(job):
    torch.set_num_threads(job["threads"])
    os.environ.setdefault("VJEPA_OFFLINE", "1")  # no download: procedural digits unless
    #                                              MNIST_DIR or the cache has MNIST
    kind = job["kind"]
    if kind == "matmul":
        return bench_matmul(getattr(torch, job["dtype"]))
    if kind == "step":
        return bench_step(job["config"], job["dtype"], job["batch"], job["steps"], job["warmup"],
                          job.get("extra", ()))
    if kind == "train.py":
        return bench_train_py(job["steps"], job.get("extra", ()))
    if kind == "masks":
        return bench_masks(job["batch"], job["seconds"])
    if kind == "estimate":
        return estimate_gpu(job["preset"], job["batch"])
    if kind == "profile":
        return profile_step(job["config"], job["dtype"], job["batch"])
    if kind == "fista":
        return bench_fista(job["batch"], job["iterations"])
    raise ValueError(f"unknown job kind {kind!r}")


def run_child(job):
    """Run one job in a fresh Python process; -> its result dict (with the job's fields)."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(job)],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"benchmark job {job} failed:\n{out.stderr[-3000:]}")
    return {**job, **json.loads(out.stdout.strip().splitlines()[-1])}


# ----------------------------------------------------------------------------------------------
# The table

def jobs(args):
    step = dict(kind="step", steps=args.steps, warmup=args.warmup, threads=args.threads)
    todo = [dict(kind="matmul", dtype=d, threads=args.threads) for d in ("float32", "bfloat16")]
    for config in args.configs:
        for dtype in ("auto", "float32"):
            todo.append(dict(step, config=config, dtype=dtype, batch=args.batch.get(config)))
    todo.append(dict(kind="train.py", steps=args.train_steps, threads=args.threads))
    todo.append(dict(kind="masks", batch=256, seconds=args.seconds, threads=args.threads))
    todo.append(dict(kind="masks", batch=24, seconds=args.seconds, threads=args.threads))
    todo.append(dict(kind="fista", batch=256, iterations=args.fista_iterations,
                     threads=args.threads))
    if args.scaling:
        for batch in (4, 8, 16):
            for threads in (1, 2):
                if (batch, threads) != (8, args.threads):
                    todo.append(dict(step, config="tiny-video", dtype="auto", batch=batch,
                                     threads=threads))
        todo.append(dict(kind="matmul", dtype="bfloat16", threads=1))
    return todo


def table(results):
    peak = {(r["dtype"], r["threads"]): r["gflops"] for r in results if r["kind"] == "matmul"}
    lines = ["| what | precision | threads | batch | ms/step median (min) | clips/s | GFLOP/step "
             "| GFLOP/s | share of matmul peak | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if r["kind"] == "step":
            ref = FLOP_REFERENCE.get(r["config"])
            flop, rate, share = "n/a", "n/a", "n/a"  # n/a: not countable (see bench_step)
            if r["gflop_per_step"]:
                flop = f"{r['gflop_per_step']:.1f}" + (f" (reference {ref})" if ref else "")
                rate = f"{r['gflops']:.0f}"
                share = f"{r['gflops'] / peak[(r['dtype'], r['threads'])]:.0%}"
            lines.append(f"| {r['config']} step | {r['dtype']} | {r['threads']} | {r['batch']} | "
                         f"{r['ms_median']:.0f} ({r['ms_min']:.0f}) | {r['clips_per_s']:.1f} | "
                         f"{flop} | {rate} | {share} | {r['peak_rss_mb']:.0f} |")
        elif r["kind"] == "train.py":
            lines.append(f"| `python train.py`, {r['steps']} steps end to end | default | "
                         f"{r['threads']} | 8 | {r['ms_median']:.0f} | {r['clips_per_s']:.1f} | "
                         f"| | | {r['peak_rss_mb']:.0f} |")
    lines.append("")
    for r in results:
        if r["kind"] == "matmul":
            lines.append(f"- matmul 2048 x 2048, {r['dtype']}, {r['threads']} thread(s): "
                         f"{r['gflops']:.0f} GFLOP/s")
        elif r["kind"] == "masks":
            lines.append(f"- multi-block masks at 16x224x224 (patch 16, tubelet 2), batch "
                         f"{r['batch']}: {r['sample_masks_per_s']:,.0f} sample-masks/s "
                         f"(2 per clip: short- and long-range)")
        elif r["kind"] == "fista":
            lines.append(f"- FISTA on a batch of {r['batch']} sparse latents (z in R^20): "
                         f"{r['iterations_per_s']:.0f} iterations/s "
                         f"({r['sample_iterations_per_s']:,.0f} sample-iterations/s)")
    return "\n".join(lines)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--steps", type=int, default=20, help="timed steps per config")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train_steps", type=int, default=60, help="steps of `python train.py`")
    p.add_argument("--seconds", type=float, default=3.0, help="time per mask measurement")
    p.add_argument("--fista_iterations", type=int, default=200)
    p.add_argument("--scaling", action="store_true", help="batch 4/8/16 x 1/2 threads")
    p.add_argument("--estimate", action="store_true",
                   help="only: GPU throughput estimate for vitl16 from its FLOP count")
    p.add_argument("--profile", action="store_true",
                   help="only: where the time of a tiny-video step goes (bf16 and float32)")
    p.add_argument("--smoke", action="store_true", help="a few steps of everything")
    p.add_argument("--out", default="out/benchmark", help="where benchmark.json goes")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return None
    if args.estimate:
        r = run_child(dict(kind="estimate", preset="vitl16", batch=24, threads=args.threads))
        print(f"ESTIMATE (not measured): vitl16, batch 24 per GPU: {r['tflop_per_clip']:.2f} "
              f"TFLOP per clip per training step ({r['tokens_per_clip']} tokens per clip)")
        for gpu in GPU_PEAK_TFLOPS:
            lo, hi = r[gpu]["tokens_per_s"]
            c_lo, c_hi = r[gpu]["clips_per_s"]
            print(f"- {gpu} (bf16 peak {GPU_PEAK_TFLOPS[gpu]} TFLOP/s) at 30-50% utilisation: "
                  f"{c_lo:.0f}-{c_hi:.0f} clips/s, {lo / 1e3:.0f}k-{hi / 1e3:.0f}k tokens/s per GPU")
        return r
    if args.profile:
        for dtype in ("auto", "float32"):
            job = dict(kind="profile", config="tiny-video", dtype=dtype, batch=8,
                       threads=args.threads)
            print(run_child(job)["text"] + "\n")
        return None
    if args.smoke:
        args.steps, args.warmup, args.train_steps, args.seconds, args.fista_iterations = 2, 1, 2, 0.2, 5
    args.batch = {"tiny-video": 8, "vjvcr": 64, "switch_sparse80": 64}
    if args.smoke:
        args.batch = {k: 4 for k in args.batch}
    todo = jobs(args)
    results = []
    for job in todo:
        print(f"[{len(results) + 1}/{len(todo)}] {job}", file=sys.stderr, flush=True)
        results.append(run_child(job))
    text = table(results)
    machine = {"cpu": _cpu_name(), "torch": torch.__version__,
               "cores": os.cpu_count(), "bf16_native": train.pick_dtype(
                   train.Config(), torch.device("cpu")) == torch.bfloat16}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "benchmark.json"), "w") as f:
        json.dump({"machine": machine, "results": results}, f, indent=1)
    print(f"{machine}\n\n{text}\n\nJSON: {os.path.join(args.out, 'benchmark.json')}")
    return results


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main(sys.argv[1:])
