"""V-JEPA's networks: tubelet embedding, 3D sin-cos positions or V-JEPA 2's 3D RoPE, ViT
encoder, narrow ViT predictor, also as read from a checkpoint of the original release's format;
and the devices, processes (torchrun), precision and memory they run in. (VJ-VCR's networks:
infer_latent.py; V-JEPA 2-AC's action-conditioned predictor: plan.py.)

A clip is `[B, C, T, H, W]`. A Conv3d with kernel = stride = (t, p, p) cuts it into tubelets:
a grid of T/t x H/p x W/p tokens, flattened time-major, index = (i_t * Hp + i_h) * Wp + i_w.
Parameter names follow the original V-JEPA release (without its `module.backbone.` prefix).
"""
import contextlib
import copy
import datetime
import math
import os
import signal
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

import masks

# The released sizes: (width, depth, heads); a checkpoint's shapes tell all but the heads.
VIT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
             "large": (1024, 24, 16), "huge": (1280, 32, 16)}


# ----------------------------------------------------------------------------------------------
# Positions

def sincos_1d(dim, pos):
    """[N] positions -> [N, dim]: sines then cosines, omega_i = 1 / 10000^(i / (dim/2))."""
    if dim % 2:
        raise ValueError(f"a sin-cos code needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = pos.to(torch.float64)[:, None] * omega[None, :]  # [N, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(dim, grid, uniform_power=True):
    """Fixed positional table [T*H*W, dim] for a token grid (T, H, W), time-major rows; the
    per-axis codes concatenated as (time, height, width). uniform_power (the released configs):
    each axis gets 2*ceil(dim/6) channels, cut to `dim`; else time dim/2, height and width dim/4."""
    T, H, W = grid
    if uniform_power:
        widths = (2 * math.ceil(dim / 6),) * 3
    else:
        if dim % 8:
            raise ValueError(f"the split sin-cos code needs a width divisible by 8, got {dim}")
        widths = (dim // 2, dim // 4, dim // 4)
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    codes = [sincos_1d(d, p.flatten()) for d, p in zip(widths, (t, h, w))]
    return torch.cat(codes, dim=1)[:, :dim].float()


# ----------------------------------------------------------------------------------------------
# Transformer pieces

def attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(Dh)) v; mask [N, N] (bool, True: may attend) or None. PyTorch's
    fused kernel, except for bf16 with gradients on a CPU, where the two products written out
    are faster (docs/results.md, performance)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def rope_angles(pos, head_dim, base=10000.0):
    """3D rotary positions (V-JEPA 2): positions [..., 3] as (t, h, w) -> angles [..., 3, a/2].
    Each axis rotates a = 2 floor(head_dim / 6) channels of a head, as a/2 pairs with one
    frequency each, omega_i = base^(-2i / a); the head's last head_dim - 3a channels are kept."""
    a = 2 * (head_dim // 6)
    omega = base ** (-torch.arange(a // 2, dtype=torch.float64) * 2 / a)
    return pos.to(torch.float64)[..., None] * omega


def rope_table(grid, head_dim):
    """RoPE's angles of every token of a (T, H, W) grid, time-major: [N, 3, a/2] float32."""
    idx = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    return rope_angles(torch.stack([i.flatten() for i in idx], -1), head_dim).float()


def token_angles(table, idx, batch):
    """The angles [B, K, 3, a/2] of tokens idx [B, K] (None: all N) of a table [N, 3, a/2]."""
    return table.expand(batch, -1, -1, -1) if idx is None else table[idx]


def apply_rope(x, angles):
    """Rotate x [B, heads, N, Dh] by angles [B, N, 3, a/2]: within each axis' a channels, the
    pair (i, i + a/2) turns by its angle (a rotation: norms kept, angle 0 the identity)."""
    half = angles.shape[-1]
    cos, sin = (f(angles).to(x.dtype)[:, None] for f in (torch.cos, torch.sin))
    rot, rest = x[..., :6 * half].unflatten(-1, (3, 2, half)), x[..., 6 * half:]
    x1, x2 = rot.unbind(-2)  # each [B, heads, N, 3, a/2]
    rot = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -2)
    return torch.cat([rot.flatten(-3), rest], -1)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)  # rows [all q | all k | all v], heads contiguous
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, angles=None, mask=None):
        """x: [B, N, D]; angles: each token's rotary angles [B, N, 3, a/2] or None; mask: which
        tokens each may attend to, [N, N] or None -> [B, N, D]."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if angles is not None:
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        x = attention(q, k, v, mask)  # q, k, v: each (B, heads, N, Dh)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim, heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x, angles=None, mask=None):
        x = x + self.attn(self.norm1(x), angles, mask)
        return x + self.mlp(self.norm2(x))


def init_weights(module, blocks):
    """Truncated-normal(0.02) weights, zero biases, LayerNorm (1, 0); block l's output projections
    / sqrt(2 (l+1)), so deep residual streams start alike (the release loses this; we keep it)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, PatchEmbed3D):
                m.proj.weight.mul_(m.gain)
        for layer, block in enumerate(blocks):
            block.attn.proj.weight.div_(math.sqrt(2.0 * (layer + 1)))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * (layer + 1)))


def token_grid(num_frames, img_size, patch_size, tubelet_size):
    """(T', H', W') of the token grid, with an error that names the offending value."""
    if num_frames % tubelet_size:
        raise ValueError(f"num_frames={num_frames} is not divisible by tubelet_size={tubelet_size}")
    if img_size % patch_size:
        raise ValueError(f"img_size={img_size} is not divisible by patch_size={patch_size}")
    return num_frames // tubelet_size, img_size // patch_size, img_size // patch_size


def run_blocks(blocks, x, angles=None, mask=None, grad_checkpoint=False):
    """x through the blocks (angles: RoPE's; mask: the attention mask; None: none);
    grad_checkpoint: recompute activations in the backward pass."""
    for block in blocks:
        if grad_checkpoint and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(block, x, angles, mask, use_reentrant=False)
        else:
            x = block(x, angles, mask)
    return x


def gather_tokens(x, idx):
    """x: [B, N, D], idx: [B, K] token indices -> [B, K, D]."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ----------------------------------------------------------------------------------------------
# Encoder and predictor

def patchify(x, patch_size, tubelet_size):
    """Pixels of each tubelet, in token order: [B, C, T, H, W] -> [B, N, C*t*p*p], each row
    flattened as (C, t, p, p) like the Conv3d weights of PatchEmbed3D."""
    B, C, T, H, W = x.shape
    t, p = tubelet_size, patch_size
    x = x.reshape(B, C, T // t, t, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, (T // t) * (H // p) * (W // p), -1)


def pixel_targets(clips, patch_size, tubelet_size, eps=1e-6):
    """V-JEPA's pixel baseline (Table 1): each tubelet's pixels normalised by its own mean and
    variance (as MAE's). [B, C, T, H, W] -> [B, N, C*t*p*p]."""
    x = patchify(clips.float(), patch_size, tubelet_size)
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / (var + eps).sqrt()


class PatchEmbed3D(nn.Module):
    """Tubelets of t x p x p pixels -> tokens: [B, C, T, H, W] -> [B, T/t * H/p * W/p, D].
    `gain` scales the initial weights: an embedding starts at ~0.02 gain sqrt(C t p p) x the
    pixels' std against the positional code's 0.71 (0.78 in the paper's geometry, 0.45 for one
    channel at patch 16). A Conv3d with kernel = stride is a linear map of each tubelet's
    pixels: its weights (in the release's shape) are applied so, as one matrix product, which
    bf16 autocast runs faster on a CPU than the convolution, with the same result."""

    def __init__(self, in_chans, dim, patch_size, tubelet_size, gain=1.0):
        super().__init__()
        self.gain = gain
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        k = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=k, stride=k)

    def forward(self, x):
        pixels = patchify(x, self.patch_size, self.tubelet_size)  # (B, N, C*t*p*p)
        return F.linear(pixels, self.proj.weight.flatten(1), self.proj.bias)  # (B, N, D)


class VisionTransformer(nn.Module):
    """The x-encoder (and, as an EMA copy, the y-encoder). No [cls] token."""

    def __init__(self, num_frames=16, img_size=224, patch_size=16, tubelet_size=2, in_chans=3,
                 dim=1024, depth=24, heads=16, mlp_ratio=4.0, uniform_power=True, embed_gain=1.0,
                 pos="sincos"):
        super().__init__()
        self.in_chans, self.dim = in_chans, dim
        self.input_size = (num_frames, img_size, img_size)
        self.grid = token_grid(num_frames, img_size, patch_size, tubelet_size)
        self.patch_embed = PatchEmbed3D(in_chans, dim, patch_size, tubelet_size, embed_gain)
        self.register_buffer("rope", rope_table(self.grid, dim // heads) if pos == "rope" else None,
                             persistent=False)  # RoPE's angles, or None: sin-cos added
        if pos != "rope":  # fixed, not learned; in the state dict as in the release, [1, N, D]
            self.register_buffer("pos_embed", sincos_3d(dim, self.grid, uniform_power)[None])
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.grad_checkpoint = False
        init_weights(self, self.blocks)

    @property
    def num_tokens(self):
        return math.prod(self.grid)

    def forward(self, x, keep=None):
        """x: [B, C, T, H, W]; keep: [B, K] indices of the tokens to encode -> [B, N or K, D].
        Fewer frames (whole tubelets) take the first time steps' positions: V-JEPA 2-AC
        encodes each state of a trajectory alone."""
        T, t = x.shape[2], self.patch_embed.tubelet_size
        if (x.shape[1] != self.in_chans or tuple(x.shape[3:]) != self.input_size[1:]
                or T > self.input_size[0] or T % t):
            raise ValueError(f"clip of shape {tuple(x.shape[1:])} does not fit an encoder built "
                             f"for {(self.in_chans, *self.input_size)} (C, T, H, W)")
        x = self.patch_embed(x)  # bf16 under autocast; the residual stream stays in it
        n = x.shape[1]
        if self.rope is None:  # positions are added before tokens are dropped
            x = x + self.pos_embed[:, :n].to(x.dtype)
        if keep is not None:
            x = gather_tokens(x, keep)
        angles = None if self.rope is None else token_angles(self.rope[:n], keep, len(x))
        return self.norm(run_blocks(self.blocks, x, angles, grad_checkpoint=self.grad_checkpoint))


class Predictor(nn.Module):
    """Narrow ViT that predicts the encoder's features at the target positions. Its sequence is
    [context tokens; one mask token per target], a mask token being a learned vector (one per
    mask configuration, zero at init) plus its target's sin-cos position. No attention mask;
    only the mask tokens' outputs are projected back (to out_dim: pixels for pixel targets)."""

    def __init__(self, grid, enc_dim=1024, dim=384, depth=12, heads=16, num_mask_tokens=2,
                 mlp_ratio=4.0, uniform_power=True, out_dim=None, pos="sincos"):
        super().__init__()
        self.predictor_embed = nn.Linear(enc_dim, dim)
        self.mask_tokens = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, 1, dim)) for _ in range(num_mask_tokens)])
        self.register_buffer("rope", rope_table(grid, dim // heads) if pos == "rope" else None,
                             persistent=False)
        if pos != "rope":
            self.register_buffer("predictor_pos_embed", sincos_3d(dim, grid, uniform_power)[None])
        self.predictor_blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.predictor_norm = nn.LayerNorm(dim, eps=1e-6)
        self.predictor_proj = nn.Linear(dim, out_dim or enc_dim)
        self.grad_checkpoint = False
        init_weights(self, self.predictor_blocks)

    def forward(self, context, ctx_idx, tgt_idx, mask_id=0):
        """context [B, Kc, D] encoded at ctx_idx [B, Kc]; tgt_idx [B, Kt] -> predictions
        [B, Kt, out_dim], mask token `mask_id` (its mask configuration) at every target."""
        ctx = self.predictor_embed(context)  # (B, Kc, Dp)
        tgt = self.mask_tokens[mask_id].to(ctx.dtype).expand(len(ctx), tgt_idx.shape[1], -1)
        angles = None  # RoPE: each token, mask tokens too, turned by its grid position
        if self.rope is None:
            pos = self.predictor_pos_embed.to(ctx.dtype).expand(len(ctx), -1, -1)  # (B, N, Dp)
            ctx, tgt = ctx + gather_tokens(pos, ctx_idx), tgt + gather_tokens(pos, tgt_idx)
        else:
            angles = token_angles(self.rope, torch.cat([ctx_idx, tgt_idx], 1), len(ctx))
        x = run_blocks(self.predictor_blocks, torch.cat([ctx, tgt], dim=1), angles,
                       grad_checkpoint=self.grad_checkpoint)
        return self.predictor_proj(self.predictor_norm(x[:, ctx.shape[1]:]))  # the targets'


class JEPA(nn.Module):
    """Context encoder + predictor as one module (data parallelism wraps one forward).
    clip [B, C, T, H, W], masks [(ctx_idx [B, Kc], tgt_idx [B, Kt]), ...] (one per mask
    configuration) -> (predictions [B, Kt, D], contexts [B, Kc, D]), one of each per mask, and,
    with a projector (proj_dim > 0) and the pooled targets [B, D], the projections [B, P] of the
    clip's mean context token and of its pooled targets (train.Config.persist); else None."""

    def __init__(self, encoder, predictor, proj_dim=0):
        super().__init__()
        self.encoder, self.predictor = encoder, predictor
        d = encoder.dim
        self.proj = nn.Sequential(nn.Linear(d, proj_dim), nn.GELU(), nn.Linear(
            proj_dim, proj_dim)) if proj_dim else None

    def forward(self, clip, masks, pooled_targets=None):
        contexts = [self.encoder(clip, keep=ctx_idx) for ctx_idx, _ in masks]
        preds = [self.predictor(z, ctx_idx, tgt_idx, m)
                 for m, (z, (ctx_idx, tgt_idx)) in enumerate(zip(contexts, masks))]
        if self.proj is None or pooled_targets is None:
            return preds, contexts, None
        pooled = torch.stack([z.float().mean(1) for z in contexts]).mean(0)  # [B, D]
        return preds, contexts, (self.proj(pooled), self.proj(pooled_targets))


def build_models(num_frames, img_size, patch_size, tubelet_size, in_chans, enc_dim, enc_depth,
                 enc_heads, pred_dim, pred_depth, num_masks=2, uniform_power=True, out_dim=None,
                 embed_gain=1.0, pos="sincos"):
    """Encoder and predictor for one geometry; predictor heads = encoder heads (the paper)."""
    encoder = VisionTransformer(num_frames, img_size, patch_size, tubelet_size, in_chans,
                                enc_dim, enc_depth, enc_heads, uniform_power=uniform_power,
                                embed_gain=embed_gain, pos=pos)
    predictor = Predictor(encoder.grid, enc_dim, pred_dim, pred_depth, enc_heads, num_masks,
                          uniform_power=uniform_power, out_dim=out_dim, pos=pos)
    return encoder, predictor


# ----------------------------------------------------------------------------------------------
# Networks from a checkpoint of the release's format (written: data.py)

RELEASE_PREFIX = "module.backbone."  # DDP's `module.` + the release's `backbone.`
CHECKPOINT_LAYOUT = ("a torch.save file of a dict with 'encoder' and 'target_encoder' state "
                     "dicts (the V-JEPA release format, also what train.py writes)")


def _what_file(path, error):
    """What a file torch.load cannot read is, from its first bytes (torch says `KeyError: 101`)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
    detail = " ".join(str(error).split())[:300] or type(error).__name__
    if size == 0:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):  # torch.save writes a zip archive
        return (f"a {size}-byte zip archive that is not a whole torch checkpoint (truncated, "
                f"another kind of zip, or objects only running its code can load: {detail})")
    if head.startswith(b"\x80"):  # pickle protocol 2+, also the old torch.save format
        return f"a {size}-byte pickle that torch cannot read without running code ({detail})"
    return f"a {size}-byte file that is not a torch checkpoint (it starts with {head!r})"


def read_checkpoint(path, which="target_encoder"):
    """A checkpoint (ours or the release's) -> its dict, state dicts' keys without the release's
    prefix, loaded without running pickled code (numpy's RNG state allowed); a one-line
    ValueError saying what the file is when it has no `which` state dict."""
    array = np.zeros(1, np.uint32)
    rebuild = array.__reduce__()[0]  # numpy's array rebuilder, wherever this numpy keeps it
    try:
        with torch.serialization.safe_globals([rebuild, np.ndarray, np.dtype, type(array.dtype)]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # no such file, a directory, no permission: these name the path already
        raise
    except Exception as e:  # KeyError, EOFError, RuntimeError, UnpicklingError, ...
        raise ValueError(f"{path} is {_what_file(path, e)}; expected {CHECKPOINT_LAYOUT}") from None
    if not isinstance(ckpt, dict):
        shape = f" of shape {tuple(ckpt.shape)}" if isinstance(ckpt, torch.Tensor) else ""
        raise ValueError(f"{path} is a torch file of a {type(ckpt).__name__}{shape}; expected "
                         f"{CHECKPOINT_LAYOUT}")
    if which not in ckpt:
        bare = ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())
        kind = f"a bare state dict of {len(ckpt)} tensors" if bare else "a dict"
        raise ValueError(f"{path} is {kind} with no {which!r} entry (its keys: "
                         f"{sorted(map(str, ckpt))[:8]}); expected {CHECKPOINT_LAYOUT}")
    entry = ckpt[which]
    if not isinstance(entry, dict) or not all(isinstance(v, torch.Tensor) for v in entry.values()):
        raise ValueError(f"{path}: its {which!r} entry is a {type(entry).__name__} that is not a "
                         f"state dict of tensors; expected {CHECKPOINT_LAYOUT}")
    return {name: {k.removeprefix(RELEASE_PREFIX): t for k, t in v.items()}
            if isinstance(v, dict) and v and all(torch.is_tensor(t) for t in v.values()) else v
            for name, v in ckpt.items()}


def load_strict(module, state_dict, what):
    """load_state_dict(strict=True) with a one-line error that lists what does not match."""
    own = module.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})"
             for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    problems = [f"{label} {sorted(items)[:5]}" for label, items in (
        ("missing", set(own) - set(state_dict)), ("unexpected", set(state_dict) - set(own)),
        ("wrong shape", wrong)) if items]
    if problems:
        raise ValueError(f"{what} does not match this architecture: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)
    return module


def from_checkpoint(ckpt, which="target_encoder", what="the checkpoint"):
    """(encoder, predictor or None) of a checkpoint dict as read_checkpoint returns it, in
    eval mode, the architecture read from the tensors' shapes; the heads, which no shape shows,
    from its config or the released sizes; the frames from its config, else 16 (every released
    model). which: "target_encoder" (frozen evaluation) or "encoder"."""
    if not isinstance(ckpt.get(which), dict):
        raise ValueError(f"{what} has no {which!r} state dict (its keys: {sorted(ckpt)[:8]})")
    enc, config, name = ckpt[which], ckpt.get("config") or {}, which
    try:
        dim, in_chans, t, p, _ = enc["patch_embed.proj.weight"].shape  # [D, C, t, p, p]
        heads = config.get("enc_heads") or {d: h for d, _, h in VIT_SIZES.values()}.get(dim)
        if heads is None:
            raise ValueError(f"{what}: a width-{dim} encoder with no config: its heads are unknown")
        frames, pos = config.get("num_frames", 16), config.get("pos", "sincos")
        n, steps = enc["pos_embed"].shape[1] if pos == "sincos" else 0, frames // t
        side = math.isqrt(n // max(steps, 1)) if pos == "sincos" else config["img_size"] // p
        if pos == "sincos" and steps * side * side != n:  # pos_embed [1, N, D]
            raise ValueError(f"{what}: pos_embed has {n} tokens, not {frames} frames / tubelet "
                             f"{t} x a square grid")
        uniform = config.get("uniform_power", True)
        encoder = VisionTransformer(frames, side * p, p, t, in_chans, dim, _depth(enc, "blocks."),
                                    heads, enc["blocks.0.mlp.fc1.weight"].shape[0] / dim, uniform,
                                    config.get("embed_gain", 1.0), pos)  # the gain: for re-inits
        load_strict(encoder, enc, f"{what} {which}")
        predictor, pred, name = None, ckpt.get("predictor"), "predictor"
        if isinstance(pred, dict):
            pred_dim = pred["predictor_embed.weight"].shape[0]  # [Dp, D]
            predictor = Predictor(
                encoder.grid, dim, pred_dim, _depth(pred, "predictor_blocks."), heads,
                sum(k.startswith("mask_tokens.") for k in pred),
                pred["predictor_blocks.0.mlp.fc1.weight"].shape[0] / pred_dim, uniform,
                pred["predictor_proj.weight"].shape[0], pos)
            load_strict(predictor, pred, f"{what} predictor").eval()
    except KeyError as e:
        raise ValueError(f"{what}: its {name!r} is not a V-JEPA network: it has no {e}") from None
    return encoder.eval(), predictor


def _depth(state, prefix):
    """1 + the largest block index i of `{prefix}{i}.*` (a gap shows up as missing keys)."""
    return 1 + max((int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)),
                   default=-1)


def random_init_like(net, seed):
    """The same architecture with fresh weights (the fixed positional tables stay; a
    predictor's mask tokens zero, as at the start of training)."""
    fresh = copy.deepcopy(net)
    torch.manual_seed(seed)
    init_weights(fresh, fresh.blocks if hasattr(fresh, "blocks") else fresh.predictor_blocks)
    for token in getattr(fresh, "mask_tokens", []):
        token.data.zero_()
    return fresh.eval()


def predict_future(online, predictor, clips, ctx_steps):
    """V-JEPA's forecast from the future mask: the online encoder on the first ctx_steps time
    steps of clips [B, C, T, H, W], the predictor at every later token -> (predictions
    [B, L - Lc, D] float32, the context's features [B, Lc, D] float32)."""
    ctx, tgt = masks.future(len(clips), online.grid, ctx_steps)
    z = online(clips, keep=ctx)
    return predictor(z, ctx, tgt).float(), z.float()


@torch.no_grad()
def encode(encoder, clips, batch=32, dtype=torch.float32):
    """A frozen encoder's features of clips [N, C, T, H, W], `batch` clips at a time under
    autocast in `dtype` -> [N, L, D] float32."""
    device = next(encoder.parameters()).device
    with autocast(device, dtype):
        return torch.cat([encoder(c.to(device)).float() for c in clips.split(batch)])


# ----------------------------------------------------------------------------------------------
# Devices, processes and precision

def setup_distributed(choice="auto", timeout_s=600):
    """(rank, world size, device); torchrun's variables set: its process group (nccl on GPUs,
    gloo on CPUs), whose collectives raise after waiting timeout_s (a rank hung)."""
    cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def cpu_class():
    """"AMX", "AVX-512 bf16", "AVX-512" or what ATen reports ("AVX2", ...); lowered by
    ATEN_CPU_CAPABILITY=avx2 as ATen's kernels are."""
    cap = torch.backends.cpu.get_cpu_capability()
    if not cap.startswith("AVX512"):
        return cap
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    return "AVX-512 bf16" if torch.cpu._is_avx512_bf16_supported() else "AVX-512"


def pick_dtype(choice, device):
    """"auto" -> bf16 where the hardware multiplies in it (CUDA with bf16, a CPU with AMX or
    AVX-512 bf16), else float32: elsewhere bf16 is emulated and several times slower."""
    if choice != "auto":
        return getattr(torch, choice)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_class() in ("AMX", "AVX-512 bf16") else torch.float32


def autocast(device, dtype):
    """Mixed precision in `dtype`, or nothing for float32 (also on the meta device)."""
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type,
                                                                                  dtype=dtype)


def param_groups(module):
    """AdamW groups: no weight decay on biases and other 1-D parameters."""
    decay = [p for p in module.parameters() if p.ndim > 1]
    no_decay = [p for p in module.parameters() if p.ndim <= 1]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "no_decay": True}]


def keep_freed_memory(largest=32 << 20):
    """Let glibc's malloc keep the memory a step frees for the next one, else each step's
    activations page-fault anew (docs/results.md, section 7). No-op elsewhere than glibc."""
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (TypeError: Windows)
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
    return bool(mallopt(M_MMAP_THRESHOLD, largest) and mallopt(M_TRIM_THRESHOLD, 1 << 30))


def peak_rss_mb():
    """Peak resident memory of this process so far, in MB (None on Windows)."""
    if sys.platform == "win32":
        return None
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10  # bytes / KB


@contextlib.contextmanager
def stop_on_signals():
    """While open, SIGTERM (a cluster's pre-emption) and Ctrl-C only set stop["asked"]: the
    loop finishes its step, checkpoints and stops. The previous handlers come back on exit."""
    stop = {"asked": False}
    previous = {sig: signal.signal(sig, lambda *_: stop.update(asked=True))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
