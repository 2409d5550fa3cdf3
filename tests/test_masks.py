"""Mask invariants, checked by brute force over the index tensors."""
import math

import pytest
import torch

import mask_stats  # tools/mask_stats.py
import masks

GRID = (8, 14, 14)  # the paper geometry: 16x224x224, tubelet 2, patch 16
S = 14 * 14
L = 8 * S


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def spatial_sets(idx, T=8):
    """Check a row is a union of full-length tubes; return its spatial positions."""
    pos = [set() for _ in range(T)]
    for i in idx.tolist():
        pos[i // S].add(i % S)
    assert all(p == pos[0] for p in pos), "not a union of full-length tubes"
    return pos[0]


@pytest.mark.parametrize("strategy", ["multiblock", "random_tube"])
def test_tube_masks_invariants(strategy):
    sampler = masks.MaskSampler(strategy, GRID, 2)
    configs = sampler(16, gen())
    assert len(configs) == (2 if strategy == "multiblock" else 1)
    for ctx, tgt in configs:
        # rectangular LongTensors, sorted rows, valid indices
        assert ctx.dtype == tgt.dtype == torch.long and ctx.dim() == tgt.dim() == 2
        assert ctx.shape[0] == tgt.shape[0] == 16 and ctx.shape[1] > 0 and tgt.shape[1] > 0
        for idx in (ctx, tgt):
            assert bool((idx.diff(dim=1) > 0).all()) and idx.min() >= 0 and idx.max() < L
        for b in range(16):
            c, t = spatial_sets(ctx[b]), spatial_sets(tgt[b])
            assert not c & t  # disjoint
        # flat per-time-step shares: every time step holds exactly 1/8 of each row
        for idx in (ctx, tgt):
            counts = torch.stack([torch.bincount(r // S, minlength=8) for r in idx])
            assert bool((counts == idx.shape[1] // 8).all())


def test_multiblock_target_is_a_union_of_blocks_and_context_its_complement():
    """Without a cut (the batch minimum of a batch of one), target + context = the whole grid
    and the target is a union of axis-aligned rectangles of the configured size range."""
    g = gen(3)
    for _ in range(50):
        ctx, tgt = mask_stats.batch_minimum_multiblock(1, GRID, [(1, 0.15)], g)[0]
        c, t = spatial_sets(ctx[0]), spatial_sets(tgt[0])
        assert c | t == set(range(S)) and not c & t
        rows = {p // 14 for p in t}
        cols = {p % 14 for p in t}
        assert len(t) == len(rows) * len(cols)  # one block is a full rectangle
        assert rows == set(range(min(rows), max(rows) + 1))
        assert cols == set(range(min(cols), max(cols) + 1))
        # h = round(sqrt(0.15*196*a)), w = round(sqrt(0.15*196/a)) with a in [0.75, 1.5]
        assert 5 <= len(rows) <= 7 and 4 <= len(cols) <= 6


def test_block_corners_reach_the_last_row_and_column():
    """Every feasible top-left corner occurs, including H-h and W-w."""
    hw = (6, 6)
    m = masks.block_masks(4000, hw, [(1, 4 / 36)], gen(1), aspect=(1.0, 1.0))[0]  # 2x2 blocks
    tops = set()
    for row in m.view(-1, 6, 6):
        r, c = row.nonzero(as_tuple=True)
        tops.add((int(r.min()), int(c.min())))
    assert tops == {(i, j) for i in range(5) for j in range(5)}


def test_random_tube_ratio_is_exact():
    ctx, tgt = masks.random_tube(4, GRID, 0.9, gen())
    assert tgt.shape[1] == 8 * round(0.9 * S) and ctx.shape[1] == 8 * (S - round(0.9 * S))


def test_causal_multiblock():
    sampler = masks.MaskSampler("causal", GRID, 2, ctx_frames=6)  # 3 tubelet steps
    for ctx, tgt in sampler(8, gen()):
        assert int((ctx // S).max()) < 3  # context only from the first 3 steps
        assert bool(((tgt // S) >= 3).any(dim=1).all())  # the future is always a target
        for b in range(8):
            assert not set(ctx[b].tolist()) & set(tgt[b].tolist())


def test_future_prediction_is_exact():
    ctx, tgt = masks.MaskSampler("future", GRID, 2, ctx_frames=4)(3, gen())[0]
    assert torch.equal(ctx, torch.arange(2 * S).expand(3, -1))
    assert torch.equal(tgt, torch.arange(2 * S, L).expand(3, -1))


def test_seeded_reproducibility():
    sampler = masks.MaskSampler("multiblock", GRID, 2)
    a, b, c = sampler(8, gen(7)), sampler(8, gen(7)), sampler(8, gen(8))
    assert all(torch.equal(x, y) for pa, pb in zip(a, b) for x, y in zip(pa, pb))
    assert not all(torch.equal(x, y) for pa, pc in zip(a, c) for x, y in zip(pa, pc))


def test_random_split_is_uniform_over_positions():
    """The cut keeps each candidate equally often (keeping the first K would keep only the
    lowest indices); context comes only from non-targets, targets only from targets."""
    target = torch.zeros(20000, 10, dtype=torch.bool)
    target[:, 2:8] = True
    ctx, tgt = masks.random_split(target, 2, 3, gen())
    assert bool((ctx.diff(dim=1) > 0).all()) and bool((tgt.diff(dim=1) > 0).all())
    for idx, allowed in ((ctx, [0, 1, 8, 9]), (tgt, [2, 3, 4, 5, 6, 7])):
        counts = torch.bincount(idx.flatten(), minlength=10).float()
        others = [i for i in range(10) if i not in allowed]
        assert counts[others].sum() == 0
        share = counts[allowed] / counts.sum()
        assert bool(((share - 1 / len(allowed)).abs() < 0.01).all())


def test_block_mask_equals_painting_each_block():
    """The union of blocks (computed as a product of row and column indicators) equals
    painting each block's rectangle in a loop, for the same random draws."""
    B, n, (H, W), scale = 50, 8, (14, 14), 0.15
    got = masks.block_masks(B, (H, W), [(n, scale)], gen(5))[0].view(B, H, W)
    g = gen(5)  # the same draws, in the same order
    a = 0.75 + 0.75 * torch.rand(B, n, generator=g)
    rand_top, rand_left = torch.rand(B, n, generator=g), torch.rand(B, n, generator=g)
    want = torch.zeros(B, H, W, dtype=torch.bool)
    for b in range(B):
        for i in range(n):
            h = min(max(round(math.sqrt(scale * H * W * float(a[b, i]))), 1), H)
            w = min(max(round(math.sqrt(scale * H * W / float(a[b, i]))), 1), W)
            top, left = int(rand_top[b, i] * (H - h + 1)), int(rand_left[b, i] * (W - w + 1))
            want[b, top:top + h, left:left + w] = True
    assert torch.equal(got, want)


@pytest.mark.parametrize("kwargs,match", [
    (dict(strategy="random_tube", ratio=1.0), "mask_ratio=1.0"),
    (dict(strategy="random_tube", ratio=0.0), "mask_ratio=0.0"),
    (dict(strategy="future", ctx_frames=16), "mask_ctx_frames=16"),
    (dict(strategy="future", ctx_frames=0), "mask_ctx_frames=0"),
    (dict(strategy="causal", ctx_frames=5), "mask_ctx_frames=5"),
    (dict(strategy="checkerboard"), "unknown mask strategy"),
])
def test_masks_without_context_or_target_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        masks.MaskSampler(grid=GRID, tubelet_size=2, **kwargs)(2, gen())


def test_blocks_covering_everything_are_an_error():
    with pytest.raises(ValueError, match="leave no context"):
        masks.fixed_blocks(2, (2, 2), [(1, 1.0)], gen())  # always the whole 2x2 grid


@pytest.mark.parametrize("strategy", ["multiblock", "causal"])
def test_fixed_counts_give_the_same_shapes_at_every_step(strategy):
    """The token counts depend on the geometry only: the same at every seed and batch size, and
    equal to fixed_counts (spatial positions x time steps; causal: x its context steps, and
    every later token on top of the target)."""
    sampler = masks.MaskSampler(strategy, GRID, 2, ctx_frames=6)
    k_ctx, k_tgt, _ = masks.fixed_counts(GRID[1:], (masks.SHORT_RANGE, masks.LONG_RANGE))
    for batch, seed in ((8, 0), (8, 1), (3, 2), (24, 3)):
        for c, (ctx, tgt) in enumerate(sampler(batch, gen(seed))):
            if strategy == "multiblock":
                want = (8 * int(k_ctx[c]), 8 * int(k_tgt[c]))
            else:
                want = (3 * int(k_ctx[c]), 5 * S + 3 * int(k_tgt[c]))
            assert (ctx.shape, tgt.shape) == ((batch, want[0]), (batch, want[1]))


def test_fixed_counts_are_the_batch_minimum_on_average():
    """fixed_counts against the cut to the batch minimum, run 300 times at batch 8 with
    other seeds: its average counts (spatial positions) are within 1 of the fixed ones."""
    grid = (2, 8, 8)
    configs = (masks.SHORT_RANGE, masks.LONG_RANGE)
    k_ctx, k_tgt, share = masks.fixed_counts(grid[1:], configs)
    sums = torch.zeros(2, 2)
    g = gen(11)
    for _ in range(300):
        for c, (ctx, tgt) in enumerate(mask_stats.batch_minimum_multiblock(8, grid, configs, g)):
            sums[c] += torch.tensor([ctx.shape[1] / 2, tgt.shape[1] / 2])
    mean = sums / 300
    for c in range(2):
        assert abs(float(mean[c, 0]) - int(k_ctx[c])) < 1
        assert abs(float(mean[c, 1]) - int(k_tgt[c])) < 1
    assert 0.5 < share < 1


def test_fixed_counts_keep_the_realised_fractions():
    """At the laptop geometry and batch (16x64x64, patch 8, batch 8) the fixed counts hide the
    same share of the clip as the cut to the batch minimum, within 0.01; per-time-step shares
    stay flat."""
    grid = (8, 8, 8)
    samplers = {"fixed": masks.MaskSampler("multiblock", grid, 2),
                "batch": mask_stats.BatchMinimumSampler("multiblock", grid, 2)}
    rows = {cut: mask_stats.mask_stats(s, 8, 100, gen(0)) for cut, s in samplers.items()}
    for fixed, batch in zip(rows["fixed"], rows["batch"]):
        assert abs(fixed["masked_fraction"] - batch["masked_fraction"]) < 0.01
        assert abs(fixed["target_fraction"] - batch["target_fraction"]) < 0.01
        assert fixed["ctx_share_per_step"] == [0.125] * 8


def test_samples_drawn_again_leave_enough_candidates():
    """Every union of blocks that is kept leaves at least the fixed counts (a loop over the
    samples), and the kept ones are not all alike."""
    configs = (masks.SHORT_RANGE, masks.LONG_RANGE)
    k_ctx, k_tgt, share = masks.fixed_counts((8, 8), configs)
    masked = masks._blocks_with_counts(64, (8, 8), configs, gen(4), k_ctx, k_tgt, share)
    assert masked.shape == (2, 64, 64)
    for c in range(2):
        for b in range(64):
            n = int(masked[c, b].sum())
            assert n >= int(k_tgt[c]) and 64 - n >= int(k_ctx[c])
        assert len({tuple(m.tolist()) for m in masked[c]}) > 20



def test_batch_minimum_of_masks_without_blocks_is_an_error():
    with pytest.raises(ValueError, match="no blocks to cut"):
        mask_stats.BatchMinimumSampler("random_tube", GRID, 2)(2, gen())


def test_mask_stats_command(tmp_path):
    """`python tools/mask_stats.py` prints one JSON line per sampler and configuration (fixed
    and batch-minimum cuts) and writes the picture."""
    import json
    import subprocess
    import sys
    png = tmp_path / "masks.png"
    out = subprocess.run([sys.executable, mask_stats.__file__, "--img_size", "32", "--patch_size",
                          "8", "--batches", "2", "--batch", "2", "--png", str(png)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    rows = [json.loads(line) for line in out[:-1]]
    assert [(r["strategy"], r["cut"]) for r in rows] == [
        ("multiblock", "fixed"), ("multiblock", "fixed"), ("random_tube", "fixed"),
        ("causal", "fixed"), ("causal", "fixed"), ("future", "fixed"),
        ("multiblock", "batch"), ("multiblock", "batch"), ("causal", "batch"), ("causal", "batch")]
    assert out[-1] == f"wrote {png}" and png.stat().st_size > 0
