"""Speed and memory of this machine running the project: training steps, masks, FISTA.

    python tools/benchmark.py                 # everything below but the options (~10 min)
    python tools/benchmark.py --before 73dbc9b  # also that commit's steps, interleaved: ratios
    python tools/benchmark.py --configs tiny-video --dtypes auto --before A B C  # each lever
    python tools/benchmark.py --configs laptop --pin laptop --before A  # a preset A defines alike
    python tools/benchmark.py --configs tiny-video vitl16-shaped --dtypes auto --before A  # masks
    python tools/benchmark.py --variants "--compile true"  # this tree with other train.py flags
    python tools/benchmark.py --variants "OMP_WAIT_POLICY=PASSIVE"  # or other environment variables
    python tools/benchmark.py --scaling       # also batch 4 / 8 / 16 and 1 vs 2 threads
    python tools/benchmark.py --smoke         # a few steps of everything (the test suite)
    python tools/benchmark.py --profile       # where the time of a tiny-video step goes
    python tools/benchmark.py --estimate      # vitl16 on GPUs: an estimate from FLOPs

Every measurement runs in a child process (its own thread count and peak memory). The
training steps of one config, in each precision (and, with --before, at each earlier commit,
checked out in a temporary git worktree), run in child processes that stay alive and take
turns: --rounds rounds of --steps / --rounds steps each, so that a machine shared with other
work slows all variants alike. Per variant: ms/step (median and min over its timed steps,
after --warmup), clips/s, GFLOP/step counted by torch.utils.flop_counter on one step
(forward, backward and the target encoder; not the optimizer), the achieved GFLOP/s and its
share of this machine's matmul peak (2048 x 2048 in the same precision and thread count; 512
where bf16 is emulated), and the peak resident memory; also the process's CPU time per step,
which work of others on the machine inflates less than the time (with 1 thread it stays close
to the work done). A speed-up is the median over rounds of the two variants' ratio in that
round. "`python train.py`" is the laptop run itself: data generation, logging and checkpoints
included, so its clips/s is what a user sees. The CPU's name comes first. Results: a Markdown
table on stdout and OUT/benchmark.json.

An earlier commit is measured by this file, run in that commit's tree (BENCHMARK_ROOT): it
imports that tree's train, model, masks, ..., whichever folder the commit kept its own
benchmark in.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.abspath(__file__)
# The project tree measured; a child measuring an earlier commit gets that commit's worktree.
ROOT = os.environ.get("BENCHMARK_ROOT") or os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import infer_latent  # noqa: E402
import losses  # noqa: E402
import masks  # noqa: E402
import model  # noqa: E402
import train  # noqa: E402


def pick_dtype(choice, device):  # this tree's (in model.py since the restructure)
    return (getattr(model, "pick_dtype", None) or train.pick_dtype)(choice, device)


def cpu_class():
    return (getattr(model, "cpu_class", None) or train.cpu_class)()


# Named training configs: a preset plus overrides. "tiny-video" (16 x 64 x 64, patch 8,
# tubelet 2, ViT 192/6/3, predictor 96/4, batch 8, both multi-block masks, raw pixels, L1,
# AdamW, EMA) sets what the laptop preset has changed over time, so it compares commits.
# "laptop" is the preset as it is.
TINY_VIDEO = ["--preset", "laptop", "--patch_size", "8", "--mask", "multiblock",
              "--normalise", "false", "--embed_gain", "1", "--token_vcr", "0", "--persist", "0",
              "--enc_dim", "192", "--enc_heads", "3", "--pred_dim", "96"]
CONFIGS = {
    "tiny-video": TINY_VIDEO,
    "laptop": ["--preset", "laptop"],
    "laptop_vjepa": ["--preset", "laptop_vjepa"],  # the default without token_vcr
    "vjvcr": ["--preset", "vjvcr"],
    "switch_sparse80": ["--preset", "switch_sparse80"],
    # ViT-L/16's width, heads and 1,568 tokens (16 x 224 x 224) at 2 blocks, both multi-block
    # masks: the paper recipe's step shape at a size 2 cores can time
    "vitl16-shaped": TINY_VIDEO[:2] + ["--mask", "multiblock", "--normalise", "false",
                                       "--embed_gain", "1", "--token_vcr", "0", "--persist", "0",
                                       "--img_size", "224", "--enc_dim", "1024", "--enc_depth",
                                       "2", "--enc_heads", "16", "--pred_dim", "384",
                                       "--pred_depth", "2"],
}
PINNED = ("tiny-video", "vitl16-shaped")  # configs that mean the same at an earlier commit (--before): the
#                          others name a preset, which an earlier commit may define otherwise


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


def matmul_size(dtype, smoke=False):
    """The side of the peak's product: 2048, but 512 where bf16 is emulated (at ~1 GFLOP/s a
    2048^3 product takes 15 s) and 256 in smoke runs."""
    native = dtype == "float32" or pick_dtype("auto", torch.device("cpu")) != torch.float32
    return 256 if smoke else 2048 if native else 512


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


def _reply(result):
    """One line of JSON to the parent (other output of the project goes elsewhere or before)."""
    print("@@" + json.dumps(result), flush=True)


def _make_source(cfg, part):
    """The clip source, in this tree (data.make_source) or an earlier one (train.make_source)."""
    return (getattr(data, "make_source", None) or train.make_source)(cfg, part)


def known_flags(argv):
    """argv without the `--key value` pairs that this tree's train.Config does not have: an
    earlier commit measured with --before lacks the options added since (e.g. --embed_gain),
    and what it does is what their values in CONFIGS select."""
    fields = {f.name for f in dataclasses.fields(train.Config)}
    pairs = zip(argv[::2], argv[1::2])
    return [x for key, value in pairs if key[2:] in fields for x in (key, value)]


def step_worker(job):
    """Time train.train_step on pre-made clips (the data pipeline is not timed), on request:
    after --warmup steps (timed: compiling happens there), each line {"steps": n} on stdin is
    answered with n step times, CPU times and page faults, and {"finish": true} with the FLOPs
    of one step, the peak memory and the precision."""
    import resource
    cfg = train.parse_config(known_flags(CONFIGS[job["config"]] + [
        "--dtype", job["dtype"], "--batch_size", str(job["batch"]), *job.get("extra", ())]))
    run = train.setup(cfg)
    source = _make_source(cfg, "train")
    g = torch.Generator().manual_seed(0)
    pool = [source.sample(cfg.batch_size * cfg.accum_steps, g)[0] for _ in range(4)]
    step, t = 0, time.perf_counter()
    for _ in range(job["warmup"]):
        float(train.train_step(run, pool[step % 4], step)[0])
        step += 1
    _reply({"warmup_s": time.perf_counter() - t})
    for line in sys.stdin:
        request = json.loads(line)
        if "steps" in request:
            times, cpu, faults = [], [], []
            for _ in range(request["steps"]):
                t, c = time.perf_counter(), time.process_time()
                f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                float(train.train_step(run, pool[step % 4], step)[0])  # waits for the device
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
                step += 1
            _reply({"times": times, "cpu": cpu, "faults": faults})
            continue
        try:
            gflop = count_flops(lambda: train.train_step(run, pool[0], step)) / 1e9
        except RuntimeError:  # the counter's module hooks break autograd.grad (FISTA inside)
            gflop = None
        peak_rss_mb = next(getattr(m, "peak_rss_mb") for m in (model, train, data)  # by commit
                           if hasattr(m, "peak_rss_mb"))
        _reply({"gflop_per_step": gflop, "peak_rss_mb": peak_rss_mb(),
                "dtype": str(run.dtype).replace("torch.", ""),
                "clips_per_step": cfg.batch_size * cfg.accum_steps})
        return


class Worker:
    """A step_worker child process: set up at creation, then asked for steps in turn."""

    def __init__(self, job, root=None):
        self.job = job
        env = {**os.environ, "BENCHMARK_ROOT": root or ROOT, **job.get("env", {})}
        env.setdefault("VJEPA_OFFLINE", "1")  # no download: procedural digits unless
        #                                       MNIST_DIR or the cache has MNIST
        self.stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, HERE, "--worker", json.dumps(job)], cwd=root or ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.times, self.cpu, self.faults, self.round_ms, self.round_cpu_ms = [], [], [], [], []
        self.warmup_s = self.read()["warmup_s"]

    def read(self):
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        self.stderr.seek(0)
        raise RuntimeError(f"benchmark worker {self.job} failed:\n{self.stderr.read()[-3000:]}")

    def ask(self, request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def steps(self, n):
        out = self.ask({"steps": n})
        self.times += out["times"]
        self.cpu += out["cpu"]
        self.faults += out["faults"]
        self.round_ms.append(1e3 * _median(out["times"]))
        self.round_cpu_ms.append(1e3 * _median(out["cpu"]))

    def finish(self):
        out = self.ask({"finish": True})
        self.proc.wait()
        ms = 1e3 * _median(self.times)
        gflop = out["gflop_per_step"]
        return {**self.job, "kind": "step", "ms_median": ms, "ms_min": 1e3 * min(self.times),
                "round_ms": self.round_ms, "cpu_ms_median": 1e3 * _median(self.cpu),
                "round_cpu_ms": self.round_cpu_ms, "clips_per_s": 1e3 * out["clips_per_step"] / ms,
                "faults_per_step": _median(self.faults), "warmup_s": self.warmup_s,
                "gflop_per_step": gflop, "gflops": gflop / (ms / 1e3) if gflop else None,
                "peak_rss_mb": out["peak_rss_mb"], "dtype": out["dtype"]}


def interleaved(variants, rounds, steps):
    """variants: [(job, root)]. Sets them up one after another (never two busy at once), then
    `rounds` rounds of steps // rounds timed steps each, in turns, the order reversed every
    other round. -> one result per variant."""
    workers = [Worker(job, root) for job, root in variants]
    per_round = max(1, steps // rounds)
    for r in range(rounds):
        for w in workers if r % 2 == 0 else workers[::-1]:
            w.steps(per_round)
    return [w.finish() for w in workers]


def speedup(new, old, key="round_ms"):
    """The median over rounds of old ms / new ms, both measured in that round (key
    "round_cpu_ms": the processes' CPU time, which other work on the machine inflates less)."""
    return _median([o / n for n, o in zip(new[key], old[key])])


def bench_train_py(steps, extra=()):
    """`python train.py EXTRA` for `steps` steps, end to end (in the tree this child runs in:
    BENCHMARK_ROOT)."""
    with tempfile.TemporaryDirectory() as out:
        train.main(known_flags(["--max_steps", str(steps), "--log_every", str(steps),
                                "--out_dir", out, *extra]))
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
    predictor = infer_latent.MLPPredictor(3, 3, 128, latent="sparse", latent_dim=20)
    h_x, h_y = torch.randn(batch, 3, 128), torch.randn(batch, 3, 128)
    infer_latent.infer_z(predictor, h_x, h_y, "sparse", 1e-3, steps=5, tol=0, loss=losses.mse)
    t = time.perf_counter()
    infer_latent.infer_z(predictor, h_x, h_y, "sparse", 1e-3, steps=iterations, tol=0,
                         loss=losses.mse)
    dt = time.perf_counter() - t
    return {"iterations_per_s": iterations / dt, "sample_iterations_per_s": batch * iterations / dt}


def profile_step(config, dtype, batch, steps=5, warmup=3):
    """Where a training step's time goes: its parts (named here, so train.py stays plain) and
    the most expensive operators, from torch.profiler over `steps` steps."""
    from torch.profiler import profile, record_function

    def named(fn, name):
        def call(*args, **kwargs):
            with record_function(name):
                return fn(*args, **kwargs)
        return call

    cfg = train.parse_config(CONFIGS[config] + ["--dtype", dtype, "--batch_size", str(batch)])
    run = train.setup(cfg)
    run.sampler = named(run.sampler, "masks")
    run.target.forward = named(run.target.forward, "target encoder")
    run.net.forward = named(run.net.forward, "context encoder + predictor")
    run.opt.step = named(run.opt.step, "optimizer")
    clips = _make_source(cfg, "train").sample(batch, torch.Generator().manual_seed(0))[0]
    for i in range(warmup):
        train.train_step(run, clips, i)
    with profile() as prof:
        for i in range(steps):
            train.train_step(run, clips, warmup + i)
    events = prof.key_averages()
    parts = ("masks", "target encoder", "context encoder + predictor", "optimizer")
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
    kind = job["kind"]
    if kind == "matmul":
        return {**bench_matmul(getattr(torch, job["dtype"]), job["n"]), "n": job["n"]}
    if kind == "train.py":
        return bench_train_py(job["steps"], job["extra"])
    if kind == "masks":
        return bench_masks(job["batch"], job["seconds"])
    if kind == "estimate":
        return estimate_gpu(job["preset"], job["batch"])
    if kind == "profile":
        return profile_step(job["config"], job["dtype"], job["batch"])
    if kind == "fista":
        return bench_fista(job["batch"], job["iterations"])
    raise ValueError(f"unknown job kind {kind!r}")


def run_child(job, root=None):
    """Run one job in a fresh Python process (in the tree `root`, default this one);
    -> its result dict (with the job's fields)."""
    env = dict(os.environ, BENCHMARK_ROOT=root or ROOT)
    env.setdefault("VJEPA_OFFLINE", "1")  # no download: procedural digits unless MNIST_DIR
    #                                       or the cache has MNIST
    out = subprocess.run([sys.executable, HERE, "--child", json.dumps(job)],
                         capture_output=True, text=True, cwd=root or ROOT, env=env)
    if out.returncode:
        raise RuntimeError(f"benchmark job {job} failed:\n{out.stderr[-3000:]}")
    return {**job, **json.loads(out.stdout.strip().splitlines()[-1])}


class EarlierCommit:
    """A temporary git worktree of `commit` (detached), removed on exit."""

    def __init__(self, commit):
        self.commit = commit
        self.path = tempfile.mkdtemp(prefix="benchmark_before_")

    def __enter__(self):
        # forget worktrees whose directories are gone (a run killed with SIGKILL)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
        subprocess.run(["git", "worktree", "add", "--detach", "--force", self.path, self.commit],
                       cwd=ROOT, check=True, capture_output=True)
        return self.path

    def __exit__(self, *exc):
        subprocess.run(["git", "worktree", "remove", "--force", self.path], cwd=ROOT,
                       capture_output=True)


# ----------------------------------------------------------------------------------------------
# The table

def measure(args, before=()):
    """Everything the table shows, in order; with before = [(commit, worktree)], the earlier
    commits' steps and train.py runs too (marked code=commit; this tree's code="this")."""
    def tag(results, code):
        return [{**r, "code": code} for r in results]

    results = [run_child(dict(kind="matmul", dtype=d, threads=args.threads,
                              n=matmul_size(d, args.smoke))) for d in ("float32", "bfloat16")]
    step = dict(steps=args.steps, warmup=args.warmup, threads=args.threads)
    for config in args.configs:
        _log(f"{config}: steps in turns ({args.rounds} rounds)")
        jobs = [dict(step, config=config, dtype=d, batch=args.batch[config])
                for d in args.dtypes]
        # this tree; the earlier commits; this tree with each --variants' flags (code "+ FLAGS")
        variants = [("this", None, {})] + [
            (commit, root, {}) for commit, root in before if config in args.pin] + [
            (f"+ {flags}", None, variant_job(flags)) for flags in args.variants]
        out = interleaved([(dict(j, **more), root) for _, root, more in variants
                           for j in jobs], args.rounds, args.steps)
        for i, (code, _, _) in enumerate(variants):
            results += tag(out[i * len(jobs):(i + 1) * len(jobs)], code)
    # end to end: the default preset (and without token_vcr), and the tiny-video config (in
    # both trees with --before), each when among --configs
    for config in [c for c in ("laptop", "laptop_vjepa", "tiny-video") if c in args.configs]:
        train_job = dict(kind="train.py", steps=args.train_steps, threads=args.threads,
                         config=config, extra=CONFIGS[config])
        roots = [(None, "this")]  # an earlier commit's preset of that name is another config
        if config in args.pin:
            roots += [(root, commit) for commit, root in before]
        for i in range(args.train_runs):  # alternating with the earlier commits', when asked
            for root, code in roots if i % 2 == 0 else roots[::-1]:
                _log(f"python train.py {config}, {args.train_steps} steps ({code})")
                results.append({**run_child(train_job, root), "code": code, "run": i})
    for batch in (256, 24):
        results.append(run_child(dict(kind="masks", batch=batch, seconds=args.seconds,
                                      threads=args.threads)))
    results.append(run_child(dict(kind="fista", batch=256, iterations=args.fista_iterations,
                                  threads=args.threads)))
    if args.scaling:
        jobs = [dict(step, config="tiny-video", dtype="auto", batch=batch, threads=threads)
                for batch in (4, 8, 16) for threads in (1, 2) if (batch, threads) != (8, args.threads)]
        _log(f"scaling: {len(jobs)} step variants in turns")
        results += tag(interleaved([(j, None) for j in jobs], args.rounds, args.steps), "this")
        results.append(run_child(dict(kind="matmul", dtype="bfloat16", threads=1,
                                      n=matmul_size("bfloat16", args.smoke))))
    return results


def variant_job(flags):
    """A --variants string -> the step job's additions: NAME=VALUE words (upper-case names) are
    the child's environment, e.g. "OMP_WAIT_POLICY=PASSIVE"; the rest are train.py flags."""
    words = flags.split()
    env = [w for w in words if w.partition("=")[0].isupper() and "=" in w]
    return {"extra": tuple(w for w in words if w not in env),
            "env": dict(w.split("=", 1) for w in env)}


def _log(text):
    print(text, file=sys.stderr, flush=True)


def table(results):
    peak = {(r["dtype"], r["threads"]): r["gflops"] for r in results if r["kind"] == "matmul"}
    code = {r["code"]: r["code"] for r in results if "code" in r} | {"this": "this tree"}
    code |= {c: f"this tree, `{c[2:]}`" for c in code if c.startswith("+ ")}
    lines = ["| what | code | precision | threads | batch | ms/step median (min) | CPU ms/step "
             "| page faults/step | clips/s | GFLOP/step | GFLOP/s | share of matmul peak "
             "| peak RSS MB | warm-up s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
             "| --- |"]
    for r in results:
        if r["kind"] == "step":
            flop, rate, share = "n/a", "n/a", "n/a"  # n/a: not countable (see step_worker)
            if r["gflop_per_step"]:
                flop = f"{r['gflop_per_step']:.1f}"
                rate = f"{r['gflops']:.0f}"
                share = f"{r['gflops'] / peak[(r['dtype'], r['threads'])]:.0%}"
            lines.append(f"| {r['config']} step | {code[r['code']]} | {r['dtype']} | "
                         f"{r['threads']} | {r['batch']} | {r['ms_median']:.0f} ({r['ms_min']:.0f})"
                         f" | {r['cpu_ms_median']:.0f} | {r['faults_per_step']:,.0f} | "
                         f"{r['clips_per_s']:.1f} | {flop} | {rate} | {share} | "
                         f"{r['peak_rss_mb']:.0f} | {r['warmup_s']:.0f} |")
        elif r["kind"] == "train.py":
            what = "" if r["config"] == "laptop" else f" ({r['config']})"
            lines.append(f"| `python train.py`{what}, {r['steps']} steps end to end | "
                         f"{code[r['code']]} "
                         f"| default | {r['threads']} | 8 | {r['ms_median']:.0f} | | | "
                         f"{r['clips_per_s']:.1f} | | | | {r['peak_rss_mb']:.0f} | |")
    lines.append("")
    for r in results:
        if r["kind"] == "matmul":
            lines.append(f"- matmul {r['n']} x {r['n']}, {r['dtype']}, {r['threads']} thread(s): "
                         f"{r['gflops']:.0f} GFLOP/s")
        elif r["kind"] == "masks":
            lines.append(f"- multi-block masks at 16x224x224 (patch 16, tubelet 2), batch "
                         f"{r['batch']}: {r['sample_masks_per_s']:,.0f} sample-masks/s "
                         f"(2 per clip: short- and long-range)")
        elif r["kind"] == "fista":
            lines.append(f"- FISTA on a batch of {r['batch']} sparse latents (z in R^20): "
                         f"{r['iterations_per_s']:.0f} iterations/s "
                         f"({r['sample_iterations_per_s']:,.0f} sample-iterations/s)")
    steps = [r for r in results if r["kind"] == "step"]
    for new in [r for r in steps if r["code"] == "this"]:
        for old in [r for r in steps if r["code"] != "this" and all(
                r[k] == new[k] for k in ("config", "dtype", "batch", "threads"))]:
            a, b, what = new, old, f"this tree over {old['code']}"
            if old["code"].startswith("+ "):  # a variant: its speed-up over the plain tree
                a, b, what = old, new, f"`{old['code'][2:]}` over this tree without it"
            lines.append(f"- speed-up of {what}, {new['config']} step, {new['dtype']}: "
                         f"**{speedup(a, b):.2f}x** in time, {speedup(a, b, 'round_cpu_ms'):.2f}x "
                         f"in CPU time (medians over {len(new['round_ms'])} rounds; "
                         f"{b['ms_median']:.0f} -> {a['ms_median']:.0f} ms/step)")
    runs = {}  # (config, code) -> ms/step of its train.py runs
    for r in results:
        if r["kind"] == "train.py":
            runs.setdefault((r["config"], r["code"]), []).append(r["ms_median"])
    for config, commit in [k for k in runs if k[1] != "this" and (k[0], "this") in runs]:
        this, old = _median(runs[config, "this"]), _median(runs[config, commit])
        lines.append(f"- `python train.py` ({config}) end to end over {commit}: {old / this:.2f}x "
                     f"({old:.0f} -> {this:.0f} ms/step, median of "
                     f"{len(runs[config, 'this'])} runs each)")
    return "\n".join(lines)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS),
                   default=[c for c in CONFIGS if c != "vitl16-shaped"])  # ~2 s a step: asked
    p.add_argument("--steps", type=int, default=20, help="timed steps per config and variant")
    p.add_argument("--rounds", type=int, default=5, help="turns the variants take")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train_steps", type=int, default=60, help="steps of `python train.py`")
    p.add_argument("--train_runs", type=int, default=1, help="runs of `python train.py`")
    p.add_argument("--before", metavar="COMMIT", nargs="+", default=[],
                   help="also measure the steps and train.py at these commits, in turns: ratios")
    p.add_argument("--pin", nargs="+", default=list(PINNED), choices=list(CONFIGS),
                   help="configs measured at the --before commits too (default: those that "
                        "mean the same at any commit; add a preset the commits define alike)")
    p.add_argument("--variants", nargs="+", default=[], metavar="FLAGS",
                   help='this tree\'s steps with these train.py flags or environment '
                        'variables too, e.g. "--compile true", "OMP_WAIT_POLICY=PASSIVE"')
    p.add_argument("--dtypes", nargs="+", default=["auto", "float32"],
                   choices=["auto", "float32", "bfloat16"], help="precisions of the steps")
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
    if args.worker:
        job = json.loads(args.worker)
        torch.set_num_threads(job["threads"])
        return step_worker(job)
    policies = [os.environ.get("OMP_WAIT_POLICY", "")] + [
        variant_job(v)["env"].get("OMP_WAIT_POLICY", "") for v in args.variants]
    if "ACTIVE" in map(str.upper, policies):
        p.error("OMP_WAIT_POLICY=ACTIVE keeps the threads of a process that waits for its turn "
                "spinning, which slows the others: time it in runs of its own, e.g. "
                "`OMP_WAIT_POLICY=ACTIVE python train.py --max_steps 100` against the same without")
    machine = {"cpu": _cpu_name(), "torch": torch.__version__,
               "cores": os.cpu_count(), "bf16_native": pick_dtype(
                   "auto", torch.device("cpu")) == torch.bfloat16, "cpu_class": cpu_class()}
    print(f"CPU: {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}",
          flush=True)
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
        args.steps, args.rounds, args.warmup, args.train_steps = 2, 2, 1, 2
        args.seconds, args.fista_iterations = 0.2, 5
    args.batch = {"tiny-video": 8, "laptop": 8, "laptop_vjepa": 8, "vjvcr": 64,
                  "switch_sparse80": 64, "vitl16-shaped": 2}
    if args.smoke:
        args.batch, args.dtypes = {k: 4 for k in args.batch}, ("float32",)
    # `kill` (SIGTERM) unwinds like Ctrl-C, so the earlier commits' worktrees are removed
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with contextlib.ExitStack() as stack:
            before = [(c, stack.enter_context(EarlierCommit(c))) for c in args.before]
            results = measure(args, before)
    finally:
        signal.signal(signal.SIGTERM, previous)
    text = table(results)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "benchmark.json"), "w") as f:
        json.dump({"machine": machine, "before": args.before, "results": results}, f, indent=1)
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
