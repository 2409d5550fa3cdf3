"""Which tokens the context encoder sees and which ones the predictor must predict.

Every sampler returns, per mask configuration, a pair of LongTensors of token indices
`(ctx_idx [B, K_ctx], tgt_idx [B, K_tgt])` into the time-major token grid (T', H', W'):
index = (i_t * H' + i_h) * W' + i_w. Indices in a row are sorted and the two sets are disjoint.

Rectangular tensors need the same K in every row, but unions of random blocks differ in size.
Every row is cut to a count fixed by the geometry (`fixed_counts`), so every step has the same
shapes: CPU kernels compiled for a shape are reused, and torch.compile or CUDA graphs need no
dynamic shapes. A sample with fewer candidates than that is drawn again. A row keeps a
*uniformly random* subset of its candidates, so no time step or region is favoured; for the
multi-block and random-tube masks the subset is drawn over spatial positions and expanded
through time, so context and target are unions of full-length tubes with the same number in
every time step. Tokens cut this way are neither context nor target.

`python tools/mask_stats.py` prints statistics for the paper geometry and draws a few masks.
"""
import functools
import math

import torch

ASPECT = (0.75, 1.5)  # block aspect ratio h/w, uniform in this range
SHORT_RANGE = (8, 0.15)  # (number of blocks, spatial scale of each block)
LONG_RANGE = (2, 0.70)
STRATEGIES = ("multiblock", "random_tube", "causal", "future")


@functools.lru_cache
def _arange(n, dtype=torch.long):
    """torch.arange(n), built once: the samplers run every training step. Never modify it."""
    return torch.arange(n, dtype=dtype)


@functools.lru_cache
def _block_tables(configs, hw):
    """For the K blocks of all configurations [(num_blocks, scale), ...] together: each block's
    area s*H*W (K,) and its configuration as a one-hot row (K, C). Built once per geometry."""
    H, W = hw
    area = torch.tensor([s * H * W for n, s in configs for _ in range(n)])
    owner = torch.tensor([[float(c == k) for k in range(len(configs))]
                          for c, (n, _) in enumerate(configs) for _ in range(n)])
    return area, owner


@functools.lru_cache
def _axis_lengths(hw):
    """(H, W) as a float tensor shaped to broadcast against (2, B, K): (2, 1, 1)."""
    return torch.tensor(hw, dtype=torch.float)[:, None, None]


def block_masks(batch, hw, configs, generator, aspect=ASPECT):
    """Union of random blocks per sample, for several configurations [(num_blocks, scale), ...]
    at once -> [C, B, H*W] bool, True = masked. Block h = round(sqrt(s*H*W*a)),
    w = round(sqrt(s*H*W/a)); the top-left corner is uniform over all positions where the block
    fits, the last row and column included. The K blocks of all configurations are drawn
    together, and both axes are handled at once: index 0 = rows (h, top), 1 = columns (w, left)."""
    H, W = hw
    area, owner = _block_tables(tuple(map(tuple, configs)), hw)  # (K,), (K, C)
    length = _axis_lengths(hw)  # (2, 1, 1): H, W
    a = aspect[0] + (aspect[1] - aspect[0]) * torch.rand(batch, len(area), generator=generator)
    side = (area * torch.stack([a, 1 / a])).sqrt().round()  # (2, B, K): h, w as whole floats
    side = side.minimum(length).clamp(min=1)
    start = (torch.rand(side.shape, generator=generator) * (length + 1 - side)).floor()  # top, left
    # is row (column) i inside [start, start + side)? Both axes over the longer one, cut back
    i = _arange(max(hw), torch.float) - start[..., None]  # (2, B, K, max(H, W)): i - start
    inside = ((i >= 0) & (i < side[..., None])).float()
    in_rows, in_cols = inside[0, :, :, :H], inside[1, :, :, :W]  # (B, K, H), (B, K, W)
    # (c, i, j) is masked when some block of configuration c covers row i and column j: a count
    # of blocks > 0, one matrix product over all blocks with the other configurations' zeroed
    cols_per_config = in_cols[:, :, None, :] * owner[:, :, None]  # (B, K, C, W)
    counts = torch.einsum("bkh,bkcw->cbhw", in_rows, cols_per_config)  # (C, B, H, W)
    return (counts > 0).flatten(2)


def _sorted_rows(idx, N):
    """Rows of distinct indices in [0, N), any order [B, k] -> sorted [B, k]. Marks them in a
    [B, N] mask and lists the marks row by row; cheaper than sorting each row."""
    marks = torch.zeros(idx.shape[0], N, dtype=torch.bool).scatter_(1, idx, True)
    return marks.nonzero()[:, 1].view(idx.shape)


def random_split(target, n_ctx, n_tgt, generator):
    """Uniformly random subsets of each row: n_ctx of its False entries (context candidates)
    and n_tgt of its True entries (target candidates). target: [B, N] bool -> (ctx [B, n_ctx],
    tgt [B, n_tgt]) sorted indices. Random integer keys, below 2^30 for context candidates and
    above for targets: the n_ctx smallest keys are random context candidates and the n_tgt
    largest random targets. topk only selects them (cheaper than sorting the whole row)."""
    keys = torch.randint(1 << 30, target.shape, generator=generator, dtype=torch.int32)
    keys.add_(target, alpha=1 << 30)
    ctx = keys.topk(n_ctx, dim=1, largest=False, sorted=False).indices
    tgt = keys.topk(n_tgt, dim=1, sorted=False).indices
    return _sorted_rows(ctx, target.shape[1]), _sorted_rows(tgt, target.shape[1])


@functools.lru_cache
def _step_starts(T, S):
    """The first token of every time step: (T, 1) = [[0], [S], [2S], ...]."""
    return _arange(T)[:, None] * S


def tubes(pos, T, S):
    """Spatial positions [B, K] -> their tokens at every time step [B, T*K], sorted."""
    return (pos[:, None, :] + _step_starts(T, S)).flatten(1)  # (B, T, K) -> (B, T*K)


def _blocks_with_counts(batch, hw, configs, generator, min_ctx, min_tgt, accept=1.0, tries=100):
    """block_masks of the samples where every configuration c leaves at least min_ctx[c] context
    candidates and min_tgt[c] target candidates (ints or (C,) tensors). About batch / accept
    samples are drawn at once (accept: the share expected to leave enough), the first `batch`
    that do are kept, and more are drawn if some are missing. Keeping or dropping all
    configurations of a sample together keeps them independent, each with the distribution
    conditioned on leaving enough. -> [C, B, H*W] bool"""
    S = hw[0] * hw[1]
    min_ctx, min_tgt = torch.as_tensor(min_ctx).view(-1, 1), torch.as_tensor(min_tgt).view(-1, 1)
    kept, missing = [], batch
    for _ in range(tries):
        masked = block_masks(math.ceil(missing / accept), hw, configs, generator)  # (C, n, S)
        n_tgt = masked.sum(2)  # (C, n)
        good = ((n_tgt >= min_tgt) & (S - n_tgt >= min_ctx)).all(0).nonzero()[:missing, 0]
        kept.append(masked[:, good])
        missing -= len(good)
        if not missing:
            return torch.cat(kept, 1)
    blocks = ", ".join(f"{n} blocks of scale {s}" for n, s in configs)
    raise ValueError(f"{blocks} on a {hw[0]}x{hw[1]} grid leave no context or no target (too "
                     "often); use fewer or smaller blocks")


REFERENCE_BATCH = 8  # the laptop batch, at which fixed_counts average the batch minimum


@functools.lru_cache
def fixed_counts(hw, configs, batch=REFERENCE_BATCH, draws=8192):
    """The spatial positions every sample keeps, per configuration, and the share of samples
    that have that many -> (context (C,), target (C,), share). Each count is the batch minimum
    at `batch`, averaged over `draws` seeded draws (the same on every machine and run) and
    rounded, so it does not depend on the step, batch size or number of processes. At least 1."""
    masked = _blocks_with_counts(draws, hw, configs, torch.Generator().manual_seed(0), 1, 1)
    n_tgt = masked.sum(2)  # (C, draws)
    n_ctx = masked.shape[2] - n_tgt
    k_ctx, k_tgt = (n.view(len(configs), -1, batch).amin(2).float().mean(1).round().long()
                    .clamp(min=1) for n in (n_ctx, n_tgt))
    share = ((n_ctx >= k_ctx[:, None]) & (n_tgt >= k_tgt[:, None])).all(0).float().mean()
    return k_ctx, k_tgt, max(float(share), 0.01)


def fixed_blocks(batch, hw, configs, generator):
    """Unions of blocks that leave at least fixed_counts candidates, and those counts
    -> (masked [C, B, S], context positions (C,), target positions (C,))."""
    configs = tuple(map(tuple, configs))
    k_ctx, k_tgt, share = fixed_counts(tuple(hw), configs)
    # 10% more than the share expected to qualify, so that one draw is nearly always enough
    masked = _blocks_with_counts(batch, hw, configs, generator, k_ctx, k_tgt, share / 1.1)
    return masked, k_ctx, k_tgt


def multiblock_split(masked, k_ctx, k_tgt, T, generator):
    """Spatial unions of blocks [C, B, S] -> [(ctx, tgt), ...]: k_ctx[c] random unmasked and
    k_tgt[c] random masked positions per row, each as a tube through all T time steps."""
    S = masked.shape[2]
    out = []
    for m, n_ctx, n_tgt in zip(masked, k_ctx.tolist(), k_tgt.tolist()):
        ctx, tgt = random_split(m, n_ctx, n_tgt, generator)
        out.append((tubes(ctx, T, S), tubes(tgt, T, S)))
    return out


def _tube_count(ratio, S):
    """Number of spatial positions random_tube removes; both parts must be non-empty."""
    n_tgt = int(round(ratio * S))
    if not 0 < n_tgt < S:
        raise ValueError(f"mask_ratio={ratio} on {S} spatial positions leaves no context or no "
                         "target; expected a ratio strictly between 0 and 1")
    return n_tgt


def random_tube(batch, grid, ratio, generator):
    """Drop a random fraction `ratio` of the spatial positions for all time steps."""
    T, H, W = grid
    S = H * W
    n_tgt = _tube_count(ratio, S)
    order = torch.rand(batch, S, generator=generator).argsort(dim=1)  # first n_tgt are removed
    tgt = order[:, :n_tgt].sort(dim=1).values
    ctx = order[:, n_tgt:].sort(dim=1).values
    return tubes(ctx, T, S), tubes(tgt, T, S)


def causal_split(masked, k_ctx, k_tgt, T, ctx_steps, generator):
    """Spatial unions of blocks [C, B, S] -> [(ctx, tgt), ...]: context from the first
    `ctx_steps` time steps minus the blocks; target = the blocks within those steps and every
    token after them. The counts follow the spatial ones: ctx_steps x k_ctx context tokens, and
    every later token plus ctx_steps x k_tgt target tokens."""
    S = masked.shape[2]
    early = (_arange(T) < ctx_steps).repeat_interleave(S)  # (L,) time-major
    in_tgt = ~early | masked.repeat(1, 1, T)  # (C, B, L)
    k_ctx, k_tgt = ctx_steps * k_ctx, (T - ctx_steps) * S + ctx_steps * k_tgt
    return [random_split(m, n_ctx, n_tgt, generator)
            for m, n_ctx, n_tgt in zip(in_tgt, k_ctx.tolist(), k_tgt.tolist())]


def future(batch, grid, ctx_steps):
    """Context = the first `ctx_steps` time steps, target = all later ones."""
    T, H, W = grid
    S = H * W
    ctx = torch.arange(ctx_steps * S).expand(batch, -1)
    tgt = torch.arange(ctx_steps * S, T * S).expand(batch, -1)
    return ctx, tgt


class MaskSampler:
    """All mask configurations of one strategy. sampler(batch, generator) -> [(ctx, tgt), ...].

    multiblock / causal: two configurations (short-range, long-range); each gets its own mask
    token in the predictor. random_tube / future: one configuration.
    ctx_frames (causal, future) counts video frames and must be a multiple of the tubelet size.
    """

    def __init__(self, strategy, grid, tubelet_size, ratio=0.9, ctx_frames=0):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown mask strategy {strategy!r}; expected one of {STRATEGIES}")
        self.strategy, self.grid, self.ratio = strategy, grid, ratio
        self.ctx_steps = 0
        if strategy == "random_tube":
            _tube_count(ratio, grid[1] * grid[2])
        if strategy in ("causal", "future"):
            T = grid[0] * tubelet_size
            if ctx_frames % tubelet_size or not 0 < ctx_frames < T:
                raise ValueError(f"mask_ctx_frames={ctx_frames} leaves no context or no target: "
                                 f"expected a multiple of tubelet_size={tubelet_size} between 1 "
                                 f"and {T - 1} frames")
            self.ctx_steps = ctx_frames // tubelet_size

    @property
    def names(self):
        if self.strategy in ("multiblock", "causal"):
            return [f"short-range {SHORT_RANGE[0]}x{SHORT_RANGE[1]:.0%}",
                    f"long-range {LONG_RANGE[0]}x{LONG_RANGE[1]:.0%}"]
        return [f"{self.strategy}"]

    def __call__(self, batch, generator):
        T, H, W = self.grid
        if self.strategy in ("multiblock", "causal"):  # unions of spatial blocks, then tokens
            blocks = fixed_blocks(batch, (H, W), (SHORT_RANGE, LONG_RANGE), generator)
            if self.strategy == "multiblock":  # tubes: a block spans every time step
                return multiblock_split(*blocks, T, generator)
            return causal_split(*blocks, T, self.ctx_steps, generator)
        if self.strategy == "random_tube":
            return [random_tube(batch, self.grid, self.ratio, generator)]
        return [future(batch, self.grid, self.ctx_steps)]
