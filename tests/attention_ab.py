"""Levers of issue 18 that were measured and dropped: other attention for the training passes.

    MNIST_DIR=../shared/data/mnist python tests/attention_ab.py --rounds 8
    MNIST_DIR=../shared/data/mnist python tests/attention_ab.py --rounds 12 --threads 2

The written-out attention of model.attention (CPU, bf16, with gradients) keeps the whole
[B, H, N, N] score tensor in memory. Two alternatives: BlockedAttention processes `rows` of the
B x H (batch, head) pairs at a time and recomputes their scores in the backward pass, so each
block's scores stay in cache; "fused" is PyTorch's scaled_dot_product_attention (its CPU flash
kernel) in the training passes too, not only in the target encoder's. One process: the
tiny-video training step with each implementation in turns (2 steps per turn, the order
reversed every other round); per variant the median over rounds after the first of the time
and of the process's CPU time per step, and the median of the paired ratios against the
written-out attention. Results in docs/results.md, section 5 (slower: not kept).
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchmark  # noqa: E402
import model  # noqa: E402
import train  # noqa: E402


class BlockedAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(Dh)) v, `rows` (batch, head) pairs at a time; the backward pass
    recomputes each block's probabilities P and uses dS = P (dP - rowsum(dP P))."""

    @staticmethod
    def forward(ctx, q, k, v, rows):
        shape, scale = q.shape, q.shape[-1] ** -0.5
        q, k, v = (x.reshape(-1, *shape[-2:]) for x in (q, k, v))
        out = torch.empty_like(q)
        for i in range(0, len(q), rows):  # a handful of blocks, each a batched product
            b = slice(i, i + rows)
            out[b] = torch.softmax((q[b] * scale) @ k[b].transpose(1, 2), -1) @ v[b]
        ctx.save_for_backward(q, k, v)
        ctx.rows, ctx.shape = rows, shape
        return out.view(shape)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        scale = ctx.shape[-1] ** -0.5
        grad_out = grad_out.reshape(q.shape)
        dq, dk, dv = (torch.empty_like(x) for x in (q, k, v))
        for i in range(0, len(q), ctx.rows):
            b = slice(i, i + ctx.rows)
            p = torch.softmax((q[b] * scale) @ k[b].transpose(1, 2), -1)
            dv[b] = p.transpose(1, 2) @ grad_out[b]
            ds = torch._softmax_backward_data(grad_out[b] @ v[b].transpose(1, 2), p, -1, p.dtype)
            dq[b] = (ds @ k[b]) * scale
            dk[b] = (ds.transpose(1, 2) @ q[b]) * scale
        return dq.view(ctx.shape), dk.view(ctx.shape), dv.view(ctx.shape), None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--rows", type=int, default=3, help="(batch, head) pairs per block")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    written = model.attention

    def blocked(q, k, v):
        if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad:
            return BlockedAttention.apply(q, k, v, a.rows)
        return written(q, k, v)

    cfg = train.parse_config(benchmark.CONFIGS["tiny-video"])
    run = train.setup(cfg)
    clips = train.make_source(cfg, "train").sample(8, torch.Generator().manual_seed(0))[0]
    variants = {"written out": written, "blocked": blocked,
                "fused": F.scaled_dot_product_attention}
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    step = 0
    for r in range(a.rounds):
        for name in variants if r % 2 == 0 else list(variants)[::-1]:
            model.attention = variants[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(2):
                float(train.train_step(run, clips, step)[0])
                step += 1
            wall[name].append((time.perf_counter() - start) / 2)
            cpu[name].append((time.process_time() - start_cpu) / 2)
    model.attention = written
    peaks = {d: benchmark.bench_matmul(getattr(torch, d))["gflops"]
             for d in ("float32", "bfloat16")}
    print(f"CPU: {benchmark._cpu_name()}, {a.threads} thread(s), matmul 2048^3 peaks "
          f"{peaks['float32']:.0f} GFLOP/s float32, {peaks['bfloat16']:.0f} bf16; "
          "tiny-video step, bf16, batch 8")
    for name in variants:
        ratio = {kind: statistics.median(w / x for w, x in zip(t["written out"][1:], t[name][1:]))
                 for kind, t in (("time", wall), ("CPU time", cpu))}
        print(f"{name}: {1e3 * statistics.median(wall[name][1:]):.0f} ms/step, "
              f"{1e3 * statistics.median(cpu[name][1:]):.0f} ms CPU/step; speed-up over written "
              f"out {ratio['time']:.2f}x ({ratio['CPU time']:.2f}x in CPU time)")

if __name__ == "__main__":
    main()
