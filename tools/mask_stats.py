"""Statistics of the mask samplers (masked and target fractions, the share of context and
target tokens in each time step) and a picture of a few masks. The multi-block and causal
masks are also measured with each batch cut to its minimum instead of masks.fixed_counts
(the "cut": "batch" lines): the counts fixed_counts average, and with --batch 1 the blocks
themselves, uncut.

    python tools/mask_stats.py                               # the paper geometry, masks.png
    python tools/mask_stats.py --img_size 64 --patch_size 8 --batch 8
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import masks  # noqa: E402


def batch_minimum_blocks(batch, hw, configs, generator):
    """Like masks.fixed_blocks, but every row keeps as many positions as the row with the fewest
    -> (masked [C, B, S], context positions (C,), target positions (C,)); these counts change
    from batch to batch."""
    masked = masks._blocks_with_counts(batch, hw, tuple(map(tuple, configs)), generator, 1, 1)
    n_tgt = masked.sum(2)  # (C, B)
    return masked, masked.shape[2] - n_tgt.amax(1), n_tgt.amin(1)


def batch_minimum_multiblock(batch, grid, configs, generator):
    """Multi-block masks with the cut to the batch minimum -> [(ctx, tgt), ...]."""
    T, H, W = grid
    return masks.multiblock_split(*batch_minimum_blocks(batch, (H, W), configs, generator), T,
                                  generator)


class BatchMinimumSampler(masks.MaskSampler):
    """A multiblock or causal MaskSampler whose rows are cut to the batch minimum."""
    cut = "batch"

    def __call__(self, batch, generator):
        configs = (masks.SHORT_RANGE, masks.LONG_RANGE)
        if self.strategy == "multiblock":
            return batch_minimum_multiblock(batch, self.grid, configs, generator)
        if self.strategy == "causal":
            T, H, W = self.grid
            return masks.causal_split(*batch_minimum_blocks(batch, (H, W), configs, generator),
                                      T, self.ctx_steps, generator)
        raise ValueError(f"{self.strategy} masks have no blocks to cut")


def mask_stats(sampler, batch, batches, generator):
    """Realised masked fraction (share of tokens hidden from the context encoder), target
    fraction, and the share of context / target tokens that falls in each time step."""
    T, H, W = sampler.grid
    L = T * H * W
    n = len(sampler.names)
    hidden, target = torch.zeros(n), torch.zeros(n)
    ctx_steps, tgt_steps = torch.zeros(n, T), torch.zeros(n, T)
    for _ in range(batches):
        for i, (ctx, tgt) in enumerate(sampler(batch, generator)):
            hidden[i] += 1 - ctx.shape[1] / L
            target[i] += tgt.shape[1] / L
            ctx_steps[i] += torch.bincount(ctx.flatten() // (H * W), minlength=T) / ctx.numel()
            tgt_steps[i] += torch.bincount(tgt.flatten() // (H * W), minlength=T) / tgt.numel()
    cut = getattr(sampler, "cut", "fixed")
    return [{"strategy": sampler.strategy, "cut": cut, "config": name,
             "masked_fraction": round(float(hidden[i] / batches), 4),
             "target_fraction": round(float(target[i] / batches), 4),
             "ctx_share_per_step": [round(float(v), 4) for v in ctx_steps[i] / batches],
             "tgt_share_per_step": [round(float(v), 4) for v in tgt_steps[i] / batches]}
            for i, name in enumerate(sampler.names)]


def draw_masks(samplers, path, samples=3, cell=6, seed=0):
    """PNG: one row per (configuration, sample), one tile per time step;
    grey = context, orange = target, black = neither."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    rows = []
    for sampler in samplers:
        T, H, W = sampler.grid
        for ctx, tgt in sampler(samples, g):
            for b in range(samples):
                role = torch.zeros(T * H * W, dtype=torch.long)
                role[ctx[b]], role[tgt[b]] = 1, 2
                rows.append(role.view(T, H, W))
    palette = torch.tensor([[0, 0, 0], [170, 170, 170], [255, 140, 0]], dtype=torch.uint8)
    T, H, W = rows[0].shape
    gap = 2
    canvas = torch.full((len(rows) * (H * cell + gap), T * (W * cell + gap), 3), 255,
                        dtype=torch.uint8)
    for r, role in enumerate(rows):
        tiles = palette[role].repeat_interleave(cell, 1).repeat_interleave(cell, 2)  # (T,Hc,Wc,3)
        for t in range(T):
            y, x = r * (H * cell + gap), t * (W * cell + gap)
            canvas[y:y + H * cell, x:x + W * cell] = tiles[t]
    Image.fromarray(canvas.numpy()).save(path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--img_size", type=int, default=224)
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--tubelet_size", type=int, default=2)
    p.add_argument("--batch", type=int, default=24, help="clips per batch (per GPU in the paper)")
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--ctx_frames", type=int, default=8, help="context frames of causal/future")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", default="masks.png")
    a = p.parse_args()
    grid = (a.frames // a.tubelet_size, a.img_size // a.patch_size, a.img_size // a.patch_size)
    samplers = [masks.MaskSampler(s, grid, a.tubelet_size, ctx_frames=a.ctx_frames)
                for s in masks.STRATEGIES]
    batch_minimum = [BatchMinimumSampler(s, grid, a.tubelet_size, ctx_frames=a.ctx_frames)
                     for s in ("multiblock", "causal")]
    g = torch.Generator().manual_seed(a.seed)
    for sampler in samplers + batch_minimum:
        for row in mask_stats(sampler, a.batch, a.batches, g):
            print(json.dumps(row))
    draw_masks(samplers, a.png)
    print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
