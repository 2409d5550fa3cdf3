"""V-JEPA's networks (tubelet embedding, 3D sin-cos positions, ViT encoder, narrow ViT
predictor) and loading checkpoints in the original release's format.

A clip is `[B, C, T, H, W]`. A Conv3d with kernel = stride = (t, p, p) cuts it into tubelets:
a grid of T/t x H/p x W/p tokens, flattened time-major, index = (i_t * Hp + i_h) * Wp + i_w.
Parameter names follow the original V-JEPA release (without its `module.backbone.` prefix).
"""
import math
import os
import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

# Named sizes: (width, depth, heads); cpu_small trains on a laptop CPU in minutes.
VIT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
             "large": (1024, 24, 16), "huge": (1280, 32, 16), "cpu_small": (192, 6, 3)}


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

def attention(q, k, v):
    """softmax(q k^T / sqrt(Dh)) v. PyTorch's fused kernel, except for bf16 with gradients on a
    CPU, where the two products written out are faster (docs/results.md, performance)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        return scores.softmax(dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)  # rows [all q | all k | all v], heads contiguous
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, segments=None):
        """x: [B, N, D]. segments: token counts splitting N into parts attending only within."""
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, Dh)
        parts = [(q, k, v)] if segments is None else zip(
            q.split(segments, 2), k.split(segments, 2), v.split(segments, 2))
        x = torch.cat([attention(*part).transpose(1, 2) for part in parts], dim=1)  # (B,N,h,Dh)
        return self.proj(x.reshape(B, N, D))


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

    def forward(self, x, segments=None):
        x = x + self.attn(self.norm1(x), segments)
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


def run_blocks(blocks, x, grad_checkpoint=False, segments=None):
    """x through the blocks; grad_checkpoint: recompute activations in the backward pass."""
    for block in blocks:
        if grad_checkpoint and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(block, x, segments, use_reentrant=False)
        else:
            x = block(x, segments)
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


def unpatchify(tokens, grid, channels, patch_size, tubelet_size):
    """The inverse of patchify: [B, T'*H'*W', C*t*p*p] -> [B, C, T, H, W]."""
    B = tokens.shape[0]
    (Tg, Hg, Wg), t, p = grid, tubelet_size, patch_size
    x = tokens.reshape(B, Tg, Hg, Wg, channels, t, p, p)
    return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(B, channels, Tg * t, Hg * p, Wg * p)


class PatchEmbed3D(nn.Module):
    """Tubelets of t x p x p pixels -> tokens: [B, C, T, H, W] -> [B, T/t * H/p * W/p, D].
    `gain` scales the initial weights: an embedding starts at ~0.02 gain sqrt(C t p p) x the
    pixels' std against the positional code's 0.71 (0.78 in the paper's geometry, 0.45 for one
    channel at patch 16). Conv3d weights as in the release, applied as one matrix product."""

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
                 dim=1024, depth=24, heads=16, mlp_ratio=4.0, uniform_power=True, embed_gain=1.0):
        super().__init__()
        self.in_chans, self.dim = in_chans, dim
        self.input_size = (num_frames, img_size, img_size)
        self.grid = token_grid(num_frames, img_size, patch_size, tubelet_size)
        self.patch_embed = PatchEmbed3D(in_chans, dim, patch_size, tubelet_size, embed_gain)
        # fixed, not learned; in the state dict as in the release, [1, N, D]
        self.register_buffer("pos_embed", sincos_3d(dim, self.grid, uniform_power)[None])
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.grad_checkpoint = False
        init_weights(self, self.blocks)

    @property
    def num_tokens(self):
        return self.pos_embed.shape[1]

    def forward(self, x, keep=None, segments=None):
        """x: [B, C, T, H, W]; keep: optional [B, K] indices of the tokens to encode; segments:
        optional token counts splitting the K kept tokens into separate sequences -> [B, N|K, D]"""
        if x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"clip of shape {tuple(x.shape[1:])} does not fit an encoder built "
                             f"for {(self.in_chans, *self.input_size)} (C, T, H, W)")
        x = self.patch_embed(x)  # bf16 under autocast; the residual stream stays in it
        x = x + self.pos_embed.to(x.dtype)  # positions are added before tokens are dropped
        if keep is not None:
            x = gather_tokens(x, keep)
        return self.norm(run_blocks(self.blocks, x, self.grad_checkpoint, segments))


class Predictor(nn.Module):
    """Narrow ViT that predicts the encoder's features at the target positions. Its sequence is
    [context tokens; one mask token per target], a mask token being a learned vector (one per
    mask configuration, zero at init) plus its target's sin-cos position. No attention mask;
    only the mask tokens' outputs are projected back (to out_dim: pixels for pixel targets)."""

    def __init__(self, grid, enc_dim=1024, dim=384, depth=12, heads=16, num_mask_tokens=2,
                 mlp_ratio=4.0, uniform_power=True, out_dim=None):
        super().__init__()
        self.predictor_embed = nn.Linear(enc_dim, dim)
        self.mask_tokens = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, 1, dim)) for _ in range(num_mask_tokens)])
        self.register_buffer("predictor_pos_embed", sincos_3d(dim, grid, uniform_power)[None])
        self.predictor_blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.predictor_norm = nn.LayerNorm(dim, eps=1e-6)
        self.predictor_proj = nn.Linear(dim, out_dim or enc_dim)
        self.grad_checkpoint = False
        init_weights(self, self.predictor_blocks)

    def forward(self, contexts, masks, mask_ids=None):
        """contexts: one encoded context [B, Kc, D] per mask of masks = [(ctx_idx [B, Kc],
        tgt_idx [B, Kt]), ...]; mask m uses mask token mask_ids[m] (default m).
        -> one prediction [B, Kt, out_dim] per mask. All masks' sequences run packed in one
        pass, [ctx_1; tgt_1; ctx_2; tgt_2; ...], each attending only within itself."""
        mask_ids = range(len(masks)) if mask_ids is None else mask_ids
        ctx = self.predictor_embed(torch.cat(contexts, dim=1))  # (B, sum Kc, Dp)
        pos = self.predictor_pos_embed.to(ctx.dtype).expand(len(ctx), -1, -1)
        parts = []  # [ctx_1, tgt_1, ctx_2, tgt_2, ...], each (B, K, Dp)
        for c, (ctx_idx, tgt_idx), m in zip(ctx.split([z.shape[1] for z in contexts], dim=1),
                                            masks, mask_ids):
            parts += [c + gather_tokens(pos, ctx_idx),
                      self.mask_tokens[m].to(c.dtype) + gather_tokens(pos, tgt_idx)]
        lengths = [p.shape[1] for p in parts]
        segments = [kc + kt for kc, kt in zip(lengths[::2], lengths[1::2])]  # one per mask
        x = run_blocks(self.predictor_blocks, torch.cat(parts, dim=1), self.grad_checkpoint,
                       segments)
        x = torch.cat(x.split(lengths, dim=1)[1::2], dim=1)  # the mask tokens' outputs
        return list(self.predictor_proj(self.predictor_norm(x)).split(lengths[1::2], dim=1))


class JEPA(nn.Module):
    """Context encoder + predictor as one module (data parallelism wraps one forward).
    (clip, masks [(ctx_idx, tgt_idx), ...]) -> (predictions [B, Kt, D], contexts [B, Kc, D])."""

    def __init__(self, encoder, predictor):
        super().__init__()
        self.encoder, self.predictor = encoder, predictor

    def forward(self, clip, masks):
        sizes = [ctx_idx.shape[1] for ctx_idx, _ in masks]
        keep = torch.cat([ctx_idx for ctx_idx, _ in masks], dim=1)
        contexts = list(self.encoder(clip, keep=keep, segments=sizes).split(sizes, dim=1))
        return self.predictor(contexts, masks), contexts


def build_models(num_frames, img_size, patch_size, tubelet_size, in_chans, enc_dim, enc_depth,
                 enc_heads, pred_dim, pred_depth, num_masks=2, uniform_power=True, out_dim=None,
                 embed_gain=1.0):
    """Encoder and predictor for one geometry; predictor heads = encoder heads (the paper)."""
    encoder = VisionTransformer(num_frames, img_size, patch_size, tubelet_size, in_chans,
                                enc_dim, enc_depth, enc_heads, uniform_power=uniform_power,
                                embed_gain=embed_gain)
    predictor = Predictor(encoder.grid, enc_dim, pred_dim, pred_depth, enc_heads, num_masks,
                          uniform_power=uniform_power, out_dim=out_dim)
    return encoder, predictor


# ----------------------------------------------------------------------------------------------
# Checkpoints in the release format (its key prefix: DDP's `module.` + `backbone.`)
RELEASE_PREFIX = "module.backbone."


def to_release(state_dict):
    return {RELEASE_PREFIX + k: v for k, v in state_dict.items()}


def from_release(state_dict):
    return {k[len(RELEASE_PREFIX):] if k.startswith(RELEASE_PREFIX) else k: v
            for k, v in state_dict.items()}


def load_strict(module, state_dict, what):
    """load_state_dict(strict=True) with a one-line error that lists what does not match."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(own[k].shape)})"
             for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    problems = [f"{label} {items[:5]}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
    if problems:
        raise ValueError(f"{what} does not match this architecture: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


STANDARD_HEADS = {dim: heads for dim, _, heads in VIT_SIZES.values()}  # no shape tells heads


def _count(state, prefix):
    """1 + the largest i of `{prefix}{i}.*` (a gap shows up as missing keys)."""
    ids = [int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)]
    return max(ids) + 1 if ids else 0


def _shape(state, key, what):
    if key not in state:
        raise ValueError(f"{what} has no {key!r}: not a V-JEPA ViT (its first keys: "
                         f"{sorted(state)[:5]})")
    return tuple(state[key].shape)


def _mlp_ratio(state, first_block, dim):
    key = f"{first_block}.mlp.fc1.weight"  # [hidden, dim]
    return state[key].shape[0] / dim if key in state else 4.0


def infer_architecture(encoder_state, predictor_state=None, config=None, heads=None,
                       trained_frames=None, trained_img_size=None):
    """The hyper-parameters of a release-format encoder (and predictor) from tensor shapes.
    Heads: `heads`, else config["enc_heads"], else STANDARD_HEADS. Frames: `trained_frames`,
    else config["num_frames"], else N / (trained_img_size/p)^2 time steps, else 16 (every
    released model); the side follows from N = (T/t) (H/p)^2.
    -> {"encoder": VisionTransformer kwargs, "num_tokens": N, "predictor": kwargs or None}."""
    enc, config = from_release(encoder_state), config or {}
    dim, in_chans, t, p, _ = _shape(enc, "patch_embed.proj.weight", "the encoder")  # [D,C,t,p,p]
    n = _shape(enc, "pos_embed", "the encoder")[1]  # [1, N, D]
    heads = heads or config.get("enc_heads") or STANDARD_HEADS.get(dim)
    if heads is None:
        raise ValueError(f"cannot tell the heads of a width-{dim} encoder (the file has no config "
                         f"and {dim} is not a standard width {sorted(STANDARD_HEADS)}): "
                         f"pass heads=")
    if trained_frames and config.get("num_frames", trained_frames) != trained_frames:
        raise ValueError(f"trained_frames={trained_frames}, but the file's config says "
                         f"num_frames={config['num_frames']}")
    if trained_frames:
        frames, origin = trained_frames, "given as trained_frames"
    elif "num_frames" in config:
        frames, origin = config["num_frames"], "from the file's config"
    elif trained_img_size:
        frames = n // max(1, (trained_img_size // p) ** 2) * t
        origin = f"from trained_img_size={trained_img_size}"
    else:
        frames, origin = 16, "assumed: no config"
    steps = frames // t
    side = math.isqrt(n // steps) if steps else 0
    if (frames % t or side == 0 or steps * side ** 2 != n
            or trained_img_size and trained_img_size != side * p):
        size = f" of trained_img_size={trained_img_size} / patch {p}" if trained_img_size else ""
        hint = "; pass trained_frames= (the frames the file was trained with)" if (
            origin.startswith("assumed")) else ""
        raise ValueError(f"pos_embed has N={n} tokens, which is not num_frames={frames} ({origin})"
                         f" / tubelet {t} time steps times a square grid of patches{size}{hint}")
    arch = {"num_tokens": n, "predictor": None,
            "encoder": dict(num_frames=frames, img_size=side * p, patch_size=p, tubelet_size=t,
                            in_chans=in_chans, dim=dim, depth=_count(enc, "blocks."),
                            heads=heads, mlp_ratio=_mlp_ratio(enc, "blocks.0", dim),
                            # not in the weights: how a re-initialisation scales the embedding
                            embed_gain=config.get("embed_gain", 1.0))}
    if predictor_state is not None:
        pred = from_release(predictor_state)
        pred_dim = _shape(pred, "predictor_embed.weight", "the predictor")[0]  # [Dp, D]
        arch["predictor"] = dict(
            enc_dim=dim, dim=pred_dim, depth=_count(pred, "predictor_blocks."), heads=heads,
            num_mask_tokens=_count(pred, "mask_tokens."),
            mlp_ratio=_mlp_ratio(pred, "predictor_blocks.0", pred_dim),
            out_dim=_shape(pred, "predictor_proj.weight", "the predictor")[0])  # [out, Dp]
    return arch


def _uniform_power(table, grid):
    """Which of our sin-cos variants a stored [1, N, D] table is (True / False), or None."""
    for uniform in (True, False):
        if not uniform and table.shape[-1] % 8:  # the split variant needs D divisible by 8
            continue
        ours = sincos_3d(table.shape[-1], grid, uniform)[None]
        if ours.shape == table.shape and torch.allclose(table.float(), ours, atol=1e-4):
            return uniform
    return None


CHECKPOINT_LAYOUT = ("a torch.save file of a dict with 'encoder' and 'target_encoder' state "
                     "dicts (the V-JEPA release format, also what train.py writes)")


def _what_file(path, error):
    """What a file torch.load cannot read is, from its first bytes (torch says `KeyError: 101`)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
    detail = " ".join(str(error).split())
    refused = re.search(r"WeightsUnpickler error: (.*?) Check the documentation", detail)
    detail = re.sub(r"^\[enforce fail at [^]]*\] \.? *", "", detail).split(". ")[0]
    detail = refused.group(1) if refused else detail or type(error).__name__
    if size == 0:
        return "an empty file"
    if head.startswith(b"PK\x03\x04") and refused:  # torch.save writes a zip archive
        return (f"a torch file of objects other than tensors and plain containers, which "
                f"loading without running its code refuses ({detail})")
    if head.startswith(b"PK\x03\x04"):
        return (f"a {size}-byte zip archive that is not a whole torch checkpoint (truncated, "
                f"or another kind of zip: {detail})")
    if head.startswith(b"\x80"):  # pickle protocol 2+, also the old torch.save format
        return f"a {size}-byte pickle that torch cannot read without running code ({detail})"
    return f"a {size}-byte file that is not a torch checkpoint (it starts with {head!r})"


def _read_checkpoint(path):
    """torch.load that runs no pickled code; numpy's RNG state (ours) is allowed explicitly."""
    array = np.zeros(1, np.uint32)
    rebuild = array.__reduce__()[0]  # numpy's array rebuilder, wherever this numpy keeps it
    try:
        with torch.serialization.safe_globals([rebuild, np.ndarray, np.dtype, type(array.dtype)]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # no such file, a directory, no permission: these name the path already
        raise
    except Exception as e:  # KeyError, EOFError, RuntimeError, UnpicklingError, ...
        raise ValueError(f"{path} is {_what_file(path, e)}; expected {CHECKPOINT_LAYOUT}") from None


def load_vjepa_checkpoint(path, num_frames=None, img_size=None, heads=None,
                          which="target_encoder", trained_frames=None, trained_img_size=None):
    """Encoder and predictor (None if absent) of a release-format checkpoint, in eval mode.
    which: "target_encoder" (frozen evaluation) or "encoder". The architecture comes from the
    shapes (infer_architecture). num_frames / img_size: build at another clip size, the sin-cos
    tables recomputed for the new grid. Loading is strict; errors name the tensor."""
    if which not in ("target_encoder", "encoder"):
        raise ValueError(f"which={which!r}: expected 'target_encoder' or 'encoder'")
    ckpt = _read_checkpoint(path)
    if not isinstance(ckpt, dict):
        shape = f" of shape {tuple(ckpt.shape)}" if isinstance(ckpt, torch.Tensor) else ""
        raise ValueError(f"{path} is a torch file of a {type(ckpt).__name__}{shape}; expected "
                         f"{CHECKPOINT_LAYOUT}")
    if which not in ckpt:
        bare = ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())
        kind = f"a bare state dict of {len(ckpt)} tensors" if bare else "a dict"
        raise ValueError(f"{path} is {kind} with no {which!r} entry (its keys: "
                         f"{sorted(map(str, ckpt))[:8]}); expected {CHECKPOINT_LAYOUT}")
    for name in (which, "predictor"):
        entry = ckpt.get(name, {})
        if not isinstance(entry, dict) or not all(isinstance(v, torch.Tensor)
                                                  for v in entry.values()):
            raise ValueError(f"{path}: its {name!r} entry is a {type(entry).__name__} that is "
                             f"not a state dict of tensors; expected {CHECKPOINT_LAYOUT}")
    enc_state = from_release(ckpt[which])
    pred_state = from_release(ckpt["predictor"]) if "predictor" in ckpt else None
    arch = infer_architecture(enc_state, pred_state, ckpt.get("config"), heads, trained_frames,
                              trained_img_size)
    enc = arch["encoder"]
    old_grid = token_grid(enc["num_frames"], enc["img_size"], enc["patch_size"],
                          enc["tubelet_size"])
    enc = dict(enc, num_frames=num_frames or enc["num_frames"],
               img_size=img_size or enc["img_size"])
    new_grid = token_grid(enc["num_frames"], enc["img_size"], enc["patch_size"],
                          enc["tubelet_size"])

    def build_and_load(build, state, table_key, what):
        table = state.get(table_key)  # a missing one is reported by load_strict
        uniform = None if table is None else _uniform_power(table, old_grid)
        net = build(True if uniform is None else uniform)
        if new_grid != old_grid:
            if uniform is None:
                raise ValueError(f"{path} {what}: {table_key} is not one of our sin-cos tables "
                                 f"for the grid {old_grid}, so it cannot be recomputed for "
                                 f"{new_grid}")
            state = {**state, table_key: getattr(net, table_key)}  # exact, unlike interpolation
        load_strict(net, state, f"{path} {what}")
        return net.eval()

    encoder = build_and_load(lambda u: VisionTransformer(**enc, uniform_power=u),
                             enc_state, "pos_embed", which)
    predictor = None
    if pred_state is not None:
        predictor = build_and_load(
            lambda u: Predictor(encoder.grid, **arch["predictor"], uniform_power=u),
            pred_state, "predictor_pos_embed", "predictor")
    return encoder, predictor
