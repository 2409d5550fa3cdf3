"""Train V-JEPA (predict the EMA target encoder's features of masked tubes from the visible
ones) or VJ-VCR (predict the features of future frames, with variance-covariance
regularisation against collapse) and its generative baseline.

One process (CPU or one GPU), the laptop preset on synthetic MovingMNIST, about 10 minutes:
    python train.py
Any config key can be overridden, and a preset picks a set of them:
    python train.py --max_steps 200 --batch_size 16 --out_dir out/short
    python train.py --preset vitl16 --data_path /data/videos
Data parallel on one node (gloo on CPU, nccl on GPU), batch_size is per process:
    torchrun --standalone --nproc_per_node=8 train.py --preset vitl16 --data_path /data/videos
Several nodes (run on each, with its own --node_rank):
    torchrun --nnodes=16 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \
        --rdzv_endpoint=HOST:29500 train.py --preset vitl16 --data_path /data/videos
V-JEPA's ablations at laptop scale (pixel targets, random-tube and causal masks):
    python train.py --preset laptop_pixel   # also laptop_tube, laptop_causal
VJ-VCR and the generative baseline on MovingMNIST (3 frames -> 12), Table 1 of the paper:
    python train.py --preset vjvcr        # also vjvcr_dec, generative_vcr, generative
Resume a run from OUT_DIR/ckpt.pt (same config):
    python train.py --out_dir out/laptop --resume true
"""
import contextlib
import copy
import dataclasses
import datetime
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass

# oneDNN (bf16 matrix products on CPUs) compiles a kernel per shape and keeps the last ones in
# a cache. The masks' token counts are fixed (masks.py), so a laptop step needs the same ~110
# kernels at every step: they must all fit, or a fifth of the step goes into compiling them
# again (with the earlier masks' changing counts, a cache this large grew by hundreds of MB).
# oneDNN's default; read when torch first multiplies.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024")


def keep_freed_memory(largest=32 << 20):
    """Make glibc's malloc keep the memory a step frees for the next step. By default it hands
    blocks above a moving threshold straight back to the kernel (mmap / munmap) and trims the
    heap's free top, so every step's fresh activations (the predictor's [8, 3, 408, 408]
    attention scores are 8 MB) page-fault anew: 28,572 faults per tiny-video bf16 step on CPU;
    keeping the memory made that step 1.10x faster (docs/results.md, 5.1). Blocks of up to
    `largest` bytes (glibc's maximum) now come from the heap, and the heap is not trimmed below
    1 GB of free memory. The in-process form of PyTorch's CPU advice to preload jemalloc or
    tcmalloc; nothing happens where malloc is not glibc's (macOS, Windows)."""
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (TypeError: Windows)
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
    return bool(mallopt(M_MMAP_THRESHOLD, largest) and mallopt(M_TRIM_THRESHOLD, 1 << 30))


keep_freed_memory()  # before torch allocates anything

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

import data  # noqa: E402
import infer_latent  # noqa: E402
import losses  # noqa: E402
import masks  # noqa: E402
import model  # noqa: E402


@dataclass
class Config:
    preset: str = "laptop"
    out_dir: str = "out/laptop"
    # data
    dataset: str = "movingmnist"  # movingmnist | switching_mnist (stochastic) | mmnist_file
    #                               (mnist_test_seq.npy) | video_folder
    data_path: str = ""  # the .npy file or the video folder
    mnist_dir: str = ""  # MNIST IDX files; empty: $MNIST_DIR, else download, else procedural
    num_digits: int = 2  # digits per MovingMNIST clip
    normalise: bool = False  # MovingMNIST pixels -> (x - 0.05) / 0.2, their mean and std (as
    #                          video is ImageNet-normalised): in [0, 1], a tubelet's embedding
    #                          is drowned by the positional code it is added to
    background: float = 0.0  # MovingMNIST: brightness of a smooth random background, static
    #                          within a clip (0: black)
    num_workers: int = 0  # DataLoader worker processes
    check_data: bool = False  # video_folder: read every file's header, list the unusable, exit
    # clip geometry and tokens
    num_frames: int = 16
    img_size: int = 64
    in_chans: int = 1
    patch_size: int = 8
    tubelet_size: int = 2
    uniform_power: bool = True  # positional code widths as in the released configs
    # networks
    enc_dim: int = 192
    enc_depth: int = 6
    enc_heads: int = 3
    pred_dim: int = 96
    pred_depth: int = 4
    embed_gain: float = 1.0  # the tubelet embedding's initial weights x this (model.PatchEmbed3D):
    #                          how loud a token's content starts against its positional code
    # masks
    mask: str = "multiblock"  # multiblock | random_tube | causal | future
    mask_ratio: float = 0.9  # random_tube: share of spatial positions removed
    mask_ctx_frames: int = 0  # causal / future: frames the context may come from (0: the
    #                           first half of the clip, in whole tubelets)
    # objective
    objective: str = "vjepa"  # vjepa | pixel (V-JEPA's masks, normalised pixels as targets)
    #                           | vjvcr | generative
    loss: str = "vjepa_l1"  # the prediction loss: the name of a function in losses.py
    token_vcr: float = 0.0  # vjepa / pixel: + token_vcr x (vcr_alpha l_var + vcr_beta l_cov) of
    #                         the context encoder's tokens, each token one sample: VJ-VCR's
    #                         regulariser against collapse, added to V-JEPA (not in the V-JEPA
    #                         paper; the laptop preset uses 1, docs/results.md 1.10)
    center_targets: bool = False  # vjepa: subtract from each position's target its mean over
    #                               the batch, the part a predictor gets from positions alone
    #                               (not in the paper; docs/results.md, section 1)
    vcr_alpha: float = 0.5  # vjvcr / generative / token_vcr: weight of the variance term (eq. 1)
    vcr_beta: float = 0.1  # weight of the covariance term (eq. 3)
    vcr_gamma: float = 0.0  # vjvcr: weight of the pixel reconstruction term (0: no decoder)
    vcr_arch: str = "conv"  # vjvcr / generative networks: conv (the paper's) | vit
    pool_grid: int = 4  # vjvcr / generative: each frame's feature map (conv: 8x8, vit: the
    #                     token grid) averaged to a g x g grid and flattened: the per-frame
    #                     vector has enc_dim * g^2 values. 1: the global average, which keeps
    #                     no position (the paper says only "average pooling"; docs/results.md, 3)
    latent: str = "none"  # vjvcr (conv): none | discrete (one-hot, K options) | sparse (L1)
    latent_dim: int = 0  # K options (discrete) or the size of z (sparse)
    latent_lam: float = 0.0  # sparse: the L1 weight lambda in E(z) + lambda |z|_1
    latent_steps: int = 20  # sparse: FISTA iterations per training batch
    latent_restart: int = 0  # discrete: for this many steps, an option chosen for fewer than
    #                          1/(4K) of a batch's clips restarts as a copy of the most chosen
    #                          one (restart_unused_option); 0: never
    # optimisation (batch_size per process; global batch = batch_size * world size)
    batch_size: int = 8
    max_steps: int = 600
    warmup_steps: int = 60
    start_lr: float = 2e-4
    lr: float = 6.25e-4
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    ema_start: float = 0.9995  # the paper's 0.998 collapses short laptop runs (the laptop
    #                            preset: 0.9998, docs/results.md 1.6)
    ema_end: float = 1.0
    ipe_scale: float = 1.25  # schedules are computed for ipe_scale * max_steps, then truncated
    optimizer: str = "adamw"  # adamw (decoupled weight decay) | adam (L2 penalty, VJ-VCR)
    grad_clip: float = 10.0  # 0 disables
    accum_steps: int = 1  # micro-batches per optimizer step: global batch = batch_size x
    #                       world size x accum_steps (the paper's 3072 on a few GPUs)
    dtype: str = "auto"  # auto (bf16 where the hardware multiplies in it: pick_dtype) | bfloat16
    #                      | float32
    compile: bool = False  # torch.compile the networks (first steps compile; needs a C++
    #                        compiler on CPU)
    grad_checkpoint: bool = False  # recompute each transformer block in the backward pass:
    #                                less activation memory for about 1/3 more compute
    # run
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    log_every: int = 20
    ckpt_every: int = 100
    stop_at: int = 0  # stop (and checkpoint) at this step; 0: run to max_steps
    resume: bool = False  # continue from OUT_DIR/ckpt.pt
    dist_timeout_s: int = 600  # torchrun: a collective that waits longer (a rank hung) raises
    val_clips: int = 256  # clips of the fixed validation set for the final collapse monitors
    snapshot_every: int = 0  # also keep the encoders at step 0 and every N steps in
    #                          OUT_DIR/snapshots/ (python probe.py --curve OUT_DIR); 0: none

    def __post_init__(self):
        if self.mask_ctx_frames == 0:  # the first half of the clip, at least one tubelet
            t = self.tubelet_size
            self.mask_ctx_frames = max(t, self.num_frames // 2 // t * t)


# The paper's recipe (V-JEPA Table 8) for VideoMix2M-like folders of real video. batch_size is
# per GPU: 24 x 128 GPUs = 3072 for ViT-L/16 and ViT-H/16, 10 x 240 = 2400 for ViT-H/16_384.
_PAPER = dict(dataset="video_folder", num_frames=16, img_size=224, in_chans=3, patch_size=16,
              tubelet_size=2, pred_dim=384, pred_depth=12, batch_size=24, max_steps=90_000,
              warmup_steps=12_000, start_lr=2e-4, lr=6.25e-4, final_lr=1e-6, weight_decay=0.04,
              final_weight_decay=0.4, ema_start=0.998, ema_end=1.0, ipe_scale=1.25,
              grad_clip=10.0, num_workers=8, log_every=50, ckpt_every=1000, val_clips=0,
              grad_checkpoint=True)  # 24 clips of 1568 tokens through ViT-L/H per GPU


def _size(name):
    dim, depth, heads = model.VIT_SIZES[name]
    return dict(enc_dim=dim, enc_depth=depth, enc_heads=heads)


# VJ-VCR on MovingMNIST (Drozdov et al. 2024, sec. 4.4 and appendix B): conv encoder, MLP
# predictor, one digit, 3 context frames -> 12 targets, Adam at a constant 1e-3. The paper
# trains 100 epochs of 55,000 clips at batch 256; these presets fit 15 minutes on 2 CPU cores.
_VCR = dict(objective="vjvcr", loss="mse", num_digits=1, num_frames=15, mask_ctx_frames=3,
            enc_dim=64, pool_grid=2, batch_size=64, max_steps=500, optimizer="adam", start_lr=1e-3,
            lr=1e-3, final_lr=1e-3, warmup_steps=0, weight_decay=0.0, final_weight_decay=0.0,
            ema_start=1.0, ema_end=1.0, ipe_scale=1.0, grad_clip=0.0, log_every=50,
            ckpt_every=250, vcr_alpha=0.5, vcr_beta=0.1)
# Stochastic MovingMNIST: 3 frames moving right -> 3 frames in one of 5 directions (Table 2 was
# measured with the 4x4 grid, docs/results.md 4)
_SWITCH = dict(_VCR, dataset="switching_mnist", num_frames=6, max_steps=600, pool_grid=4)
_GENERATIVE = dict(_VCR, objective="generative", weight_decay=1e-6, final_weight_decay=1e-6)

# V-JEPA on the laptop: the defaults above (ViT 192/6/3, 16x64x64 MovingMNIST) with the
# changes that make a 10-minute run learn (docs/results.md, section 1). Patch 16, normalised
# pixels and tubelet-embedding weights x3: a tubelet's content is as loud against its positional
# code as in the paper's geometry (with patch 8 and raw pixels, 99.4% of the targets' variance
# is position). Future masks (the first 8 frames predict the last 8 at every position): at
# patch 16 the paper's multi-block masks leave 1-3 of 16 positions as context. 4,000 steps, and
# an EMA from 0.9998 (0.9995 and 0.999 let the target's rank collapse within the run). That is
# V-JEPA as the paper trains it (`laptop_vjepa`); its target still collapses onto the digit's
# speed. The default adds VJ-VCR's variance-covariance term on the context tokens (token_vcr),
# which keeps their rank: the encoder then learns where the digit is and where it goes too.
_LAPTOP_VJEPA = dict(_size("cpu_small"), patch_size=16, normalise=True, embed_gain=3.0,
                     mask="future", max_steps=4000, warmup_steps=400, ema_start=0.9998)
_LAPTOP = dict(_LAPTOP_VJEPA, token_vcr=1.0)

PRESETS = {
    "laptop": _LAPTOP,
    "laptop_vjepa": {**_LAPTOP_VJEPA, "out_dir": "out/laptop_vjepa"},  # without token_vcr
    # 3x the steps (about 25 minutes on one thread): the target encoder keeps less of its
    # initialisation (24% of it at the end against 62% after 4,000 steps with this EMA); with
    # token_vcr all five probed tasks clear the bar, the digit too (docs/results.md, 1.10)
    "laptop_long": {**_LAPTOP, "max_steps": 12000, "out_dir": "out/laptop_long"},
    "laptop_vjepa_long": {**_LAPTOP_VJEPA, "max_steps": 12000,  # section 1.8, Table 3
                          "out_dir": "out/laptop_vjepa_long"},
    # V-JEPA's ablations on the laptop (of laptop_vjepa, as measured): pixel targets (Table 1),
    # masks (Table 4)
    "laptop_pixel": {**_LAPTOP_VJEPA, "objective": "pixel", "loss": "mse",
                     "out_dir": "out/laptop_pixel"},
    "laptop_multiblock": {**_LAPTOP_VJEPA, "mask": "multiblock",
                          "out_dir": "out/laptop_multiblock"},
    "laptop_tube": {**_LAPTOP_VJEPA, "mask": "random_tube", "out_dir": "out/laptop_tube"},
    "laptop_causal": {**_LAPTOP_VJEPA, "mask": "causal", "mask_ctx_frames": 6,
                      "out_dir": "out/laptop_causal"},  # causal multi-block[6]
    # the four rows of VJ-VCR's Table 1
    "vjvcr": {**_VCR, "out_dir": "out/vjvcr"},
    "vjvcr_dec": {**_VCR, "vcr_gamma": 1.0, "out_dir": "out/vjvcr_dec"},
    "generative_vcr": {**_GENERATIVE, "out_dir": "out/generative_vcr"},
    "generative": {**_GENERATIVE, "vcr_alpha": 0.0, "vcr_beta": 0.0, "out_dir": "out/generative"},
    # VJ-VCR with a latent on stochastic MovingMNIST (Table 2, Figure 3); none: the same without
    "switch_none": {**_SWITCH, "out_dir": "out/switch_none"},
    "switch_discrete": {**_SWITCH, "latent": "discrete", "latent_dim": 5, "latent_restart": 300,
                        "out_dir": "out/switch_discrete"},
    "switch_sparse80": {**_SWITCH, "latent": "sparse", "latent_dim": 20, "latent_lam": 1e-3,
                        "out_dir": "out/switch_sparse80"},
    "switch_sparse20": {**_SWITCH, "latent": "sparse", "latent_dim": 20, "latent_lam": 2e-4,
                        "out_dir": "out/switch_sparse20"},
    # VJ-VCR with the V-JEPA networks: 4 context frames -> 12 target frames, tubelets of 2,
    # patch 16 (a 4x4 token grid per time step, kept whole: pool_grid 4; patch 8 takes 4x as
    # long and does not fit 15 minutes)
    "vjvcr_vit": {**_VCR, "vcr_arch": "vit", "num_frames": 16, "mask_ctx_frames": 4,
                  "patch_size": 16, "pool_grid": 4, "enc_dim": 192, "batch_size": 32,
                  "out_dir": "out/vjvcr_vit"},
    "vitl16": {**_PAPER, **_size("large"), "out_dir": "out/vitl16"},
    "vith16": {**_PAPER, **_size("huge"), "out_dir": "out/vith16"},
    "vith16_384": {**_PAPER, **_size("huge"), "img_size": 384, "batch_size": 10,
                   "out_dir": "out/vith16_384"},
}
ARCH_KEYS = ("objective", "num_frames", "img_size", "in_chans", "patch_size", "tubelet_size",
             "uniform_power", "enc_dim", "enc_depth", "enc_heads", "pred_dim", "pred_depth",
             "mask", "mask_ctx_frames", "vcr_arch", "pool_grid", "latent", "latent_dim")


def parse_config(argv):
    """`--key value` (or `--key=value`) pairs -> Config: preset values first, then overrides."""
    pairs = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; expected --key value")
        key, _, value = arg[2:].partition("=")
        if not _:
            if not args:
                raise ValueError(f"--{key} needs a value")
            value = args.pop(0)
        pairs.append((key.replace("-", "_"), value))
    fields = {f.name: f.type for f in dataclasses.fields(Config)}
    preset = dict(pairs).get("preset", Config.preset)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    values = dict(PRESETS[preset])
    for key, value in pairs:
        if key not in fields:
            raise ValueError(f"unknown config key --{key}; known keys: {', '.join(fields)}")
        values[key] = _convert(key, value, fields[key])
    return Config(**values)


def _convert(key, value, kind):
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind, kind)
    if kind is bool:
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
    else:
        try:
            return kind(value)
        except ValueError:
            pass
    raise ValueError(f"--{key} expects a {kind.__name__}, got {value!r}")


def check_config(cfg):
    """Raise ValueError naming the first bad value; returns the token grid (V-JEPA) or None."""
    grid = None
    masked = cfg.objective in ("vjepa", "pixel")  # V-JEPA's masks
    if masked or cfg.vcr_arch == "vit":
        grid = model.token_grid(cfg.num_frames, cfg.img_size, cfg.patch_size, cfg.tubelet_size)
        strategy = cfg.mask if masked else "future"
        masks.MaskSampler(strategy, grid, cfg.tubelet_size, cfg.mask_ratio, cfg.mask_ctx_frames)
        for dim, what in ((cfg.enc_dim, "enc_dim"), (cfg.pred_dim, "pred_dim")):
            if dim % cfg.enc_heads:
                raise ValueError(f"{what}={dim} is not divisible by enc_heads={cfg.enc_heads}")
    if not masked:
        if not 0 < cfg.mask_ctx_frames < cfg.num_frames:
            raise ValueError(f"mask_ctx_frames={cfg.mask_ctx_frames} leaves no context or no "
                             f"target among num_frames={cfg.num_frames}")
        if cfg.vcr_arch == "conv" and cfg.img_size % 8:
            raise ValueError(f"img_size={cfg.img_size}: the conv encoder needs a multiple of 8")
        side = cfg.img_size // (8 if cfg.vcr_arch == "conv" else cfg.patch_size)
        if cfg.pool_grid < 1 or side % cfg.pool_grid:
            raise ValueError(f"pool_grid={cfg.pool_grid} does not divide the {side}x{side} map "
                             f"of each frame (img_size={cfg.img_size})")
    if not callable(getattr(losses, cfg.loss, None)) or cfg.loss.startswith("_"):
        raise ValueError(f"--loss {cfg.loss!r} is not a function in losses.py")
    if cfg.latent != "none":
        if cfg.objective != "vjvcr" or cfg.vcr_arch != "conv" or cfg.vcr_gamma:
            raise ValueError(f"--latent {cfg.latent} needs --objective vjvcr, --vcr_arch conv "
                             "and --vcr_gamma 0 (E(z) is the feature prediction error)")
        if cfg.latent_dim < (2 if cfg.latent == "discrete" else 1) or cfg.latent_lam < 0:
            raise ValueError(f"--latent {cfg.latent}: latent_dim={cfg.latent_dim}, latent_lam="
                             f"{cfg.latent_lam}; expected latent_dim >= 2 (discrete) or >= 1 "
                             "(sparse) and latent_lam >= 0")
    choices = {"dataset": ("movingmnist", "switching_mnist", "mmnist_file", "video_folder"),
               "dtype": ("auto", "bfloat16", "float32"), "device": ("auto", "cpu", "cuda"),
               "objective": ("vjepa", "pixel", "vjvcr", "generative"),
               "optimizer": ("adamw", "adam"),
               "vcr_arch": ("conv", "vit"), "latent": ("none", "discrete", "sparse")}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"--{key} {getattr(cfg, key)!r}: expected one of {allowed}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but this machine has no CUDA device")
    if cfg.dataset != "video_folder" and cfg.in_chans != 1:
        raise ValueError(f"in_chans={cfg.in_chans}: MovingMNIST clips have 1 channel")
    if cfg.dataset in ("mmnist_file", "video_folder") and not cfg.data_path:
        raise ValueError(f"dataset={cfg.dataset} needs --data_path")
    if cfg.check_data and cfg.dataset != "video_folder":
        raise ValueError(f"--check_data checks a video folder; dataset={cfg.dataset} has no files "
                         "to check")
    for key in ("batch_size", "max_steps", "log_every", "ckpt_every", "accum_steps",
                "dist_timeout_s"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"--{key} must be at least 1, got {getattr(cfg, key)}")
    return grid


# ----------------------------------------------------------------------------------------------
# Schedules, EMA, monitors

def warmup_cosine(step, total, warmup, start_lr, lr, final_lr):
    """Learning rate at `step` of `total`: linear start_lr -> lr over `warmup` steps, then a
    cosine from lr to final_lr at `total` (held there after it)."""
    if step < warmup:
        return start_lr + (lr - start_lr) * step / warmup
    progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return final_lr + (lr - final_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def schedules(cfg, step):
    """(lr, weight decay, EMA momentum) at `step`, computed over ipe_scale * max_steps steps.
    lr: linear warm-up start_lr -> lr, then cosine to final_lr. Weight decay and momentum:
    linear (the paper, appendix B; the original code uses a cosine for the weight decay)."""
    total = cfg.ipe_scale * cfg.max_steps
    lr = warmup_cosine(step, total, cfg.warmup_steps, cfg.start_lr, cfg.lr, cfg.final_lr)
    frac = min(1.0, step / total)
    wd = cfg.weight_decay + (cfg.final_weight_decay - cfg.weight_decay) * frac
    momentum = cfg.ema_start + (cfg.ema_end - cfg.ema_start) * frac
    return lr, wd, momentum


@torch.no_grad()
def ema_update(target, online, momentum):
    """target <- m * target + (1 - m) * online, for every parameter."""
    t, o = list(target.parameters()), list(online.parameters())
    torch._foreach_lerp_(t, o, 1.0 - momentum)


def rankme(emb, eps=1e-7):
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of an
    [N, D] embedding matrix; between 1 and min(N, D)."""
    s = torch.linalg.svdvals(emb.float())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def collapse_monitors(h, steps):
    """h: [B, N, D] target embeddings, N = steps x (tokens per step). Mean per-channel std over
    all tokens of the batch, and RankMe of the embeddings pooled over space per (clip, time
    step): B*steps rows."""
    B, N, D = h.shape
    pooled = h.float().view(B, steps, -1, D).mean(2).reshape(-1, D)
    return float(h.float().reshape(-1, D).std(0).mean()), rankme(pooled)


# ----------------------------------------------------------------------------------------------
# Setup

def setup_distributed(cfg):
    """(rank, world size, device). Data parallelism switches on when torchrun's variables are set."""
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(seconds=cfg.dist_timeout_s))
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def cpu_class():
    """The CPU's class for matrix products: "AMX", "AVX-512 bf16", "AVX-512" or "AVX2" (or
    what ATen reports). ATEN_CPU_CAPABILITY=avx2 lowers it, as it lowers ATen's kernels."""
    cap = torch.backends.cpu.get_cpu_capability()
    if not cap.startswith("AVX512"):
        return cap
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    return "AVX-512 bf16" if torch.cpu._is_avx512_bf16_supported() else "AVX-512"


def pick_dtype(choice, device):
    """"auto" -> bf16 where the hardware multiplies in it (a CUDA GPU with bf16, a CPU with AMX
    or AVX-512 bf16), else float32: elsewhere bf16 is emulated and several times slower."""
    if choice != "auto":
        return getattr(torch, choice)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_class() in ("AMX", "AVX-512 bf16") else torch.float32


def make_source(cfg, part="train", digits=None):
    """The clip source of cfg.dataset; for MovingMNIST, `digits` (images, labels) saves
    loading them again."""
    if cfg.dataset in ("movingmnist", "switching_mnist"):
        images, labels = data.split_digits(*(digits or data.load_digits(cfg.mnist_dir)), part)
        if cfg.dataset == "switching_mnist":
            return data.SwitchingMovingMNIST(images, labels, cfg.num_frames, cfg.img_size,
                                             switch_at=cfg.mask_ctx_frames)
        return data.MovingMNIST(images, labels, cfg.num_frames, cfg.img_size, cfg.num_digits,
                                normalise=cfg.normalise, background=cfg.background)
    if cfg.dataset == "mmnist_file":
        return data.MovingMNISTFile(cfg.data_path, cfg.num_frames)
    return data.VideoFolder(cfg.data_path, cfg.num_frames, cfg.img_size, cfg.in_chans)


def check_data(cfg):
    """--check_data true: every file of the video folder by its header (frame count, frame
    size), not its frames; prints those that cannot be used. ValueError if there are any."""
    folder = make_source(cfg)
    problems = folder.check()
    for why in problems.values():
        print(why)
    if problems:
        raise ValueError(f"{len(problems)} of {len(folder.files)} files under {cfg.data_path} "
                         "cannot be used (listed above); a run skips them when it draws them")
    print(f"all {len(folder.files)} files under {cfg.data_path} have a readable header and at "
          f"least num_frames={cfg.num_frames} frames (their frames are read when drawn)")


class SkippedFiles:
    """The draws of a video folder that failed and were replaced (labels["failed"] of
    data.VideoFolder): each file is named once in a warning, the count goes to the log, and
    the run stops when more than MAX_SHARE of the draws fail, since then the folder rather
    than a file or two is broken (a wrong path, a missing video decoder)."""
    MAX_SHARE = 0.05
    MIN_DRAWS = 100  # a share of fewer draws says little

    def __init__(self, source):
        self.source, self.named = source, {}  # dict: insertion order, fast lookup
        self.draws = self.failed = self.since_log = 0

    def add(self, labels, batch):
        if "failed" not in labels:  # a source without files
            return
        for i in labels["failed"].tolist():
            path = self.source.files[i]
            if path not in self.named:
                self.named[path] = self.source.why(path)
                print(f"warning: skipping {self.named[path]}; another file is drawn in its "
                      "place (each file is named once)", file=sys.stderr)
        self.draws += batch + len(labels["failed"])
        self.failed += len(labels["failed"])
        self.since_log += len(labels["failed"])
        if self.draws >= self.MIN_DRAWS and self.failed > self.MAX_SHARE * self.draws:
            first = "; ".join(list(self.named.values())[:3])
            raise ValueError(f"{self.failed} of {self.draws} draws from {self.source.root} met "
                             f"a file that cannot be used, more than {self.MAX_SHARE:.0%}; the "
                             f"first: {first}. List them all with --check_data true")


def param_groups(module):
    """AdamW groups: no weight decay on biases and other 1-D parameters."""
    decay = [p for p in module.parameters() if p.ndim > 1]
    no_decay = [p for p in module.parameters() if p.ndim <= 1]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "no_decay": True}]


def previous_path(path):
    """Where the checkpoint before the latest is kept: out/ckpt.pt -> out/ckpt_prev.pt."""
    root, ext = os.path.splitext(path)
    return f"{root}_prev{ext}"


def save_checkpoint(path, nets, opt, cfg, step, loss, world):
    """Release-format checkpoint (SPEC section 5) plus config, step and RNG states. Written to
    a temporary file, flushed to the disk and only then renamed into place, so neither a crash
    nor a power loss leaves half a checkpoint at `path`; the one it replaces is kept at
    previous_path(path), for a resume when the latest cannot be read.
    nets: {"encoder", "predictor", "target_encoder"[, "decoder"]} -> modules."""
    state = {
        **{name: model.to_release(net.state_dict()) for name, net in nets.items()},
        "opt": opt.state_dict(), "scaler": None,
        "epoch": 0,  # batches are indexed by step, not by epoch; kept for the release format
        "loss": loss, "batch_size": cfg.batch_size, "world_size": world,
        "lr": schedules(cfg, step)[0],
        "config": dataclasses.asdict(cfg), "step": step,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                "python": random.getstate()},
    }
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # else some filesystems may store the rename before the data
    if os.path.exists(path):
        os.replace(path, previous_path(path))
    os.replace(tmp, path)
    # and the renames, by syncing the folder (POSIX; Windows cannot open one, nor needs to)
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_state(path):
    """A checkpoint written by save_checkpoint -> its dict; ValueError naming the file when it
    cannot be read or lacks what a resume needs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several kinds for a damaged file
        raise ValueError(f"--resume: cannot read {path} ({' '.join(str(e).split())})") from None
    missing = [k for k in ("config", "step", "opt", "rng")
               if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"--resume: {path} is not a checkpoint of train.py: no {missing}")
    return state


def load_checkpoint(path, nets, opt, cfg):
    """Strict resume: same architecture, every tensor present and of the same shape. When
    `path` cannot be read (say a disk filled up while it was written), the previous checkpoint
    is used, with a warning. -> (step, the file used)"""
    prev = previous_path(path)
    if not os.path.exists(path) and not os.path.exists(prev):
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    try:
        state = read_state(path)
    except ValueError as e:
        if not os.path.exists(prev):
            raise
        print(f"warning: {e}; resuming from the previous checkpoint {prev}", file=sys.stderr)
        path, state = prev, read_state(prev)
    saved = state.get("config", {})
    diff = [f"{k}={saved.get(k)!r} (this run: {getattr(cfg, k)!r})" for k in ARCH_KEYS
            if saved.get(k) != getattr(cfg, k)]
    if diff:
        raise ValueError(f"--resume: {path} is from another architecture: {', '.join(diff)}")
    for name, net in nets.items():
        if name not in state:
            raise ValueError(f"--resume: {path} has no {name!r}")
        model.load_strict(net, model.from_release(state[name]), f"{path} {name}")
    opt.load_state_dict(state["opt"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["step"], path


def save_snapshot(out_dir, nets, cfg, step):
    """OUT_DIR/snapshots/stepNNNNNN.pt: the encoders only (release format, with the config),
    for probing the run at several points of its training."""
    folder = os.path.join(out_dir, "snapshots")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step{step:06d}.pt")
    state = {name: model.to_release(nets[name].state_dict())
             for name in ("encoder", "target_encoder")}
    torch.save({**state, "config": dataclasses.asdict(cfg), "step": step}, path + ".tmp")
    os.replace(path + ".tmp", path)


@torch.no_grad()
def drift(module, start):
    """How far a network has moved from its initial weights: |w - w0| / |w0| over all
    parameters together. start: the initial parameters, in module.parameters() order."""
    params = list(module.parameters())
    moved = sum(float((p.float() - p0).pow(2).sum()) for p, p0 in zip(params, start))
    return math.sqrt(moved / sum(float(p0.pow(2).sum()) for p0 in start))


def trim_log(path, step):
    """Drop log lines written after the checkpoint we resume from, and a line cut short by a
    crash while it was written."""
    if os.path.exists(path):
        keep = []
        with open(path) as f:
            for line in f:
                try:
                    if json.loads(line)["step"] <= step:
                        keep.append(line)
                except (ValueError, KeyError, TypeError):
                    pass
        with open(path, "w") as f:
            f.writelines(keep)


# ----------------------------------------------------------------------------------------------
# Training

class NonFiniteLoss(RuntimeError):
    pass


class VCRObjective(torch.nn.Module):
    """VJ-VCR energy (Drozdov et al. 2024, eq. 5) or the generative one (eq. 7) as one module,
    so data parallelism wraps a single forward. x = the first n frames, y = the rest.

    vjvcr:      D(h~_y, h_y) + alpha l_var([h_x, h_y]) + beta l_cov([h_x, h_y])
                + gamma |Dec(h~_y) - y|^2, with h_x, h_y from the same encoder.
                With a latent, h~_y = Pred(h_x, z*): z* minimises the energy with the networks
                frozen (sec. 3.3), then the networks are updated with z* held fixed.
    generative: |Dec(h~_y) - y|^2 + alpha l_var([h_x, h~_y]) + beta l_cov([h_x, h~_y]); y is
                never encoded, so VCR acts on what the model does compute.

    Two routes (vcr_arch). conv: the paper's MovingMNIST networks, one vector per frame.
    vit: the V-JEPA encoder and predictor on future-prediction masks (mask tokens at the
    target frames), VCR on each time step's spatially averaged tokens, and a per-token pixel
    decoder. forward(clips) -> (energy, {term: value}, per-step embeddings [B, T, d])."""

    def __init__(self, cfg, loss_fn):
        super().__init__()
        n = cfg.mask_ctx_frames
        self.cfg, self.loss_fn = cfg, loss_fn
        has_decoder = cfg.objective == "generative" or cfg.vcr_gamma > 0
        self.decoder = None
        if cfg.vcr_arch == "conv":
            self.encoder = model.ConvEncoder(cfg.in_chans, cfg.enc_dim, grid=cfg.pool_grid)
            self.predictor = model.MLPPredictor(n, cfg.num_frames - n, self.encoder.out_dim,
                                                latent=cfg.latent, latent_dim=cfg.latent_dim)
            if has_decoder:
                self.decoder = model.ConvDecoder(cfg.in_chans, cfg.enc_dim, img_size=cfg.img_size,
                                                 grid=cfg.pool_grid)
            return
        self.encoder, self.predictor = model.build_models(
            cfg.num_frames, cfg.img_size, cfg.patch_size, cfg.tubelet_size, cfg.in_chans,
            cfg.enc_dim, cfg.enc_depth, cfg.enc_heads, cfg.pred_dim, cfg.pred_depth,
            num_masks=1, uniform_power=cfg.uniform_power)
        if has_decoder:
            self.decoder = model.PixelDecoder(cfg.enc_dim, cfg.in_chans, cfg.patch_size,
                                              cfg.tubelet_size)
        # context = the tokens of the first n frames, target = the others (time-major order)
        ctx, tgt = masks.future(1, self.encoder.grid, n // cfg.tubelet_size)
        self.register_buffer("ctx_idx", ctx, persistent=False)
        self.register_buffer("tgt_idx", tgt, persistent=False)

    def per_step(self, tokens):
        """[B, K, D] tokens of whole time steps -> one vector per step [B, K / S, D * g^2]:
        each step's Hp x Wp tokens averaged to a g x g grid (g = pool_grid) and flattened,
        as the conv encoder pools its map (model.grid_pool)."""
        B, K, D = tokens.shape
        _, Hp, Wp = self.encoder.grid
        steps = tokens.view(B, K // (Hp * Wp), Hp, Wp, D).permute(0, 4, 1, 2, 3)
        return model.grid_pool(steps, self.cfg.pool_grid)  # (B, K / S, D * g^2)

    def predict(self, clips, h_y=None):
        """-> (h_x, h~_y, per-step h~_y), h_x and h~_y per step (conv) or per token (vit).
        With a latent, h~_y = Pred(h_x, z*), z* inferred against the encoded targets h_y."""
        n = self.cfg.mask_ctx_frames
        if self.cfg.vcr_arch == "conv":
            h_x = self.encoder(clips[:, :, :n])  # (B, n, d)
            z = None
            if self.cfg.latent != "none":
                z = infer_latent.infer_z(self.predictor, h_x, h_y, self.cfg.latent,
                                         self.cfg.latent_lam, self.cfg.latent_steps)
                self.last_z = z  # for the log
            pred = self.predictor(h_x, z)  # (B, T - n, d)
            return h_x, pred, pred
        B = clips.shape[0]
        ctx, tgt = self.ctx_idx.expand(B, -1), self.tgt_idx.expand(B, -1)
        h_x = self.encoder(clips, keep=ctx)  # (B, K_ctx, D)
        pred = self.predictor([h_x], [(ctx, tgt)])[0]  # (B, K_tgt, D)
        return h_x, pred, self.per_step(pred)

    def decode(self, pred):
        """Predicted representation -> frames [B, C, T - n, H, W]."""
        if self.cfg.vcr_arch == "conv":
            return self.decoder(pred)
        cfg = self.cfg
        grid = (pred.shape[1] // (self.encoder.grid[1] * self.encoder.grid[2]),
                *self.encoder.grid[1:])
        return model.unpatchify(self.decoder(pred), grid, cfg.in_chans, cfg.patch_size,
                                cfg.tubelet_size)

    def forward(self, clips):
        cfg, n = self.cfg, self.cfg.mask_ctx_frames
        vit = cfg.vcr_arch == "vit"
        h_y = None
        if cfg.objective == "vjvcr":  # y encoded on its own
            h_y = (self.encoder(clips, keep=self.tgt_idx.expand(len(clips), -1)) if vit
                   else self.encoder(clips[:, :, n:]))
        h_x, pred, pred_steps = self.predict(clips, h_y)
        x_steps = self.per_step(h_x) if vit else h_x
        terms = {}
        if cfg.objective == "vjvcr":
            terms["pred"] = self.loss_fn([pred], [h_y])
            h = torch.cat([x_steps, self.per_step(h_y) if vit else h_y], dim=1)
        else:
            h = torch.cat([x_steps, pred_steps], dim=1)
        if self.decoder is not None:
            weight = cfg.vcr_gamma if cfg.objective == "vjvcr" else 1.0
            terms["pixel"] = weight * losses.pixel_mse(self.decode(pred), clips[:, :, n:])
        if cfg.vcr_alpha or cfg.vcr_beta:
            l_var, l_cov = losses.vcr_terms(h)
            terms["var"], terms["cov"] = cfg.vcr_alpha * l_var, cfg.vcr_beta * l_cov
        return sum(terms.values()), terms, h


def restart_unused_option(predictor, opt, counts, generator, noise=0.01):
    """Discrete latent: z* is the option of lowest energy and only the chosen option's copy of
    the last layer is trained, so the copy that wins the first batches improves on every clip
    and wins all later ones (docs/results.md, 4). As k-means does with an empty cluster: the
    least chosen option, if it took fewer than 1/(4K) of the batch's clips (counts [K]: clips
    per option), becomes a copy of the most chosen one (its rows of the last layer and their
    Adam moments) plus Gaussian noise of `noise` x the copied weights' std. The two copies then
    split that option's clips between them and drift apart. -> the option restarted, or None."""
    K = len(counts)
    low, high = int(counts.argmin()), int(counts.argmax())
    if counts[low] >= counts.sum() / (4 * K):
        return None
    last = predictor.net[-1]
    rows = last.weight.shape[0] // K  # the K copies are stacked along the output rows
    dst, src = slice(low * rows, (low + 1) * rows), slice(high * rows, (high + 1) * rows)
    with torch.no_grad():
        for p in (last.weight, last.bias):
            p[dst] = p[src] + noise * p[src].std() * torch.randn(
                p[src].shape, generator=generator).to(p)
            for moment in opt.state.get(p, {}).values():
                if torch.is_tensor(moment) and moment.shape == p.shape:
                    moment[dst] = moment[src]
    return low


def build(cfg, grid, device):
    """-> (trainable module, {checkpoint name: module}, EMA target encoder or None)."""
    loss_fn = getattr(losses, cfg.loss)
    if cfg.objective in ("vjvcr", "generative"):
        net = VCRObjective(cfg, loss_fn).to(device)
        nets = {"encoder": net.encoder, "predictor": net.predictor,
                "target_encoder": net.encoder}  # one encoder for x and y; probes read this key
        if net.decoder is not None:
            nets["decoder"] = net.decoder
        return net, nets, None
    pixels = cfg.in_chans * cfg.tubelet_size * cfg.patch_size ** 2  # per tubelet
    # one mask token per mask configuration: an unused token would get no gradient, which
    # DDP refuses (multi-block and causal masks have two configurations, future and tube one)
    grid = grid or model.token_grid(cfg.num_frames, cfg.img_size, cfg.patch_size,
                                    cfg.tubelet_size)
    num_masks = len(masks.MaskSampler(cfg.mask, grid, cfg.tubelet_size, cfg.mask_ratio,
                                      cfg.mask_ctx_frames).names)
    encoder, predictor = model.build_models(
        cfg.num_frames, cfg.img_size, cfg.patch_size, cfg.tubelet_size, cfg.in_chans,
        cfg.enc_dim, cfg.enc_depth, cfg.enc_heads, cfg.pred_dim, cfg.pred_depth,
        num_masks=num_masks, uniform_power=cfg.uniform_power,
        out_dim=pixels if cfg.objective == "pixel" else None, embed_gain=cfg.embed_gain)
    net = model.JEPA(encoder, predictor).to(device)
    if cfg.objective == "pixel":  # no target encoder: probes read the encoder itself
        return net, {"encoder": net.encoder, "predictor": net.predictor,
                     "target_encoder": net.encoder}, None
    target = copy.deepcopy(net.encoder).requires_grad_(False)  # the EMA y-encoder
    return net, {"encoder": net.encoder, "predictor": net.predictor,
                 "target_encoder": target}, target


@dataclass
class Run:
    """Everything one training process holds: the config, the networks, the optimizer."""
    cfg: Config
    module: torch.nn.Module  # the trainable module (parameters, attributes)
    net: torch.nn.Module  # what the step calls: module, wrapped by DDP and/or compiled
    nets: dict  # {checkpoint name: module}
    target: torch.nn.Module  # V-JEPA's EMA target encoder (None for the other objectives)
    opt: torch.optim.Optimizer
    sampler: masks.MaskSampler  # V-JEPA's masks (None for VJ-VCR and generative)
    grid: tuple
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype


def setup(cfg, rank=0, world=1, device=torch.device("cpu")):
    """Build the networks, optimizer and masks of a checked config -> Run."""
    grid = check_config(cfg)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    module, nets, target = build(cfg, grid, device)
    for m in module.modules():  # the target encoder runs without gradients: nothing to save
        if hasattr(m, "grad_checkpoint"):
            m.grad_checkpoint = cfg.grad_checkpoint
    optimizer = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel for all parameter tensors instead of ~10 operations per tensor; the
    # same update (the tiny-video CPU step 1.12x faster, docs/results.md 5.1)
    opt = optimizer(param_groups(module), lr=cfg.lr, weight_decay=cfg.weight_decay,
                    fused=device.type in ("cpu", "cuda"))
    sampler = None
    if cfg.objective in ("vjepa", "pixel"):
        sampler = masks.MaskSampler(cfg.mask, grid, cfg.tubelet_size, cfg.mask_ratio,
                                    cfg.mask_ctx_frames)
    net = module
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # the masks' token counts are fixed (masks.py): static shapes
        net = torch.compile(net)
    return Run(cfg, module, net, nets, target, opt, sampler, grid, rank, world, device,
               pick_dtype(cfg.dtype, device))


def autocast(device, dtype):
    """Mixed precision in `dtype` (bf16), or nothing for float32 (also on the meta device,
    where tests/benchmark.py counts the FLOPs of models too large to run here)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


record = torch.profiler.record_function  # names a part of the step in a profile (else free)


def pixel_targets(clips, patch_size, tubelet_size, eps=1e-6):
    """V-JEPA's pixel-prediction baseline (Table 1): the pixels of every tubelet, normalised by
    that tubelet's own mean and variance (as MAE's normalised-pixel target), so the model
    predicts local structure rather than brightness. [B, C, T, H, W] -> [B, N, C*t*p*p]."""
    x = model.patchify(clips.float(), patch_size, tubelet_size)
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / (var + eps).sqrt()


def feature_targets(run, clips):
    """V-JEPA's targets for every token: the EMA target encoder's features, layer-normalised
    without affine parameters -> (the encoder's output h [B, N, D], targets [B, N, D] float32).
    Computed once per clip and shared by all masks."""
    h = run.target(clips)
    full = F.layer_norm(h.float(), h.shape[-1:])
    if run.cfg.center_targets:  # what is left cannot be predicted from positions alone
        full = full - full.mean(0, keepdim=True)
    return h, full


def forward(run, clips, g):
    """The energy of one (micro-)batch -> (loss, {term: value}, embeddings for the collapse
    monitors [B, N, D] (None for pixel targets: no encoder sees the whole clip), time steps
    per clip of those embeddings)."""
    cfg = run.cfg
    if cfg.objective in ("vjvcr", "generative"):
        loss, terms, h = run.net(clips)
        return loss, terms, h, h.shape[1]
    with record("masks"):
        step_masks = [(c.to(run.device, non_blocking=True), t.to(run.device, non_blocking=True))
                      for c, t in run.sampler(len(clips), g)]
    with torch.no_grad(), record("target encoder"):
        if cfg.objective == "pixel":
            h, full = None, pixel_targets(clips, cfg.patch_size, cfg.tubelet_size)
        else:
            h, full = feature_targets(run, clips)
        targets = [model.gather_tokens(full, tgt) for _, tgt in step_masks]
    with record("context encoder + predictor"):
        preds, contexts = run.net(clips, step_masks)
    loss, terms = getattr(losses, cfg.loss)(preds, targets), {}
    if cfg.token_vcr:  # every context token of every mask is one sample of its D channels
        tokens = torch.cat([z.reshape(-1, 1, z.shape[-1]) for z in contexts])
        l_var, l_cov = losses.vcr_terms(tokens)
        terms = {"pred": loss, "var": cfg.token_vcr * cfg.vcr_alpha * l_var,
                 "cov": cfg.token_vcr * cfg.vcr_beta * l_cov}
        loss = sum(terms.values())
    return loss, terms, h, run.grid[0]


def train_step(run, clips, step):
    """One optimizer step on `clips` (accum_steps micro-batches of batch_size), then the EMA.
    No host-device synchronisation: everything returned stays on the device (one exception:
    a discrete latent's option restarts, during their first `latent_restart` steps).
    -> (mean loss, terms and embeddings of the last micro-batch, time steps per clip, grad norm)"""
    cfg = run.cfg
    lr, wd, momentum = schedules(cfg, step)
    for group in run.opt.param_groups:
        group["lr"] = lr
        if not group.get("no_decay"):
            group["weight_decay"] = wd
    g = torch.Generator().manual_seed(data.step_seed(cfg.seed, run.rank, step, stream=1))
    run.opt.zero_grad(set_to_none=True)
    total = torch.zeros((), device=run.device)
    chunks = clips.to(run.device, non_blocking=True).chunk(cfg.accum_steps)
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1  # DDP averages gradients across processes only here
        with contextlib.nullcontext() if last or run.world == 1 else run.net.no_sync():
            with autocast(run.device, run.dtype):
                loss, terms, h, steps = forward(run, chunk, g)
            with record("backward"):
                (loss / len(chunks)).backward()
        total += loss.detach() / len(chunks)
    with record("optimizer + EMA"):
        grad_norm = (torch.nn.utils.clip_grad_norm_(run.module.parameters(), cfg.grad_clip)
                     if cfg.grad_clip > 0 else torch.zeros(()))
        run.opt.step()
        if run.target is not None:
            ema_update(run.target, run.module.encoder, momentum)
        if cfg.latent == "discrete" and step < cfg.latent_restart:
            counts = run.module.last_z.detach().sum(0)  # clips per option
            if run.world > 1:  # every process restarts the same option with the same noise
                dist.all_reduce(counts)
            g = torch.Generator().manual_seed(data.step_seed(cfg.seed, 0, step, stream=2))
            restart_unused_option(run.module.predictor, run.opt, counts, g)
    return total, terms, None if h is None else h.detach(), steps, grad_norm


def peak_rss_mb():
    """Peak resident memory of this process so far, in MB (None where unknown)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10  # bytes / KB


@contextlib.contextmanager
def stop_on_signals():
    """While open, SIGTERM (a cluster's pre-emption) and Ctrl-C only set stop["asked"]: the
    training loop finishes its step, checkpoints and stops. The previous handlers are restored
    on exit, so that a caller of main (a notebook, the tests) can still be interrupted."""
    stop = {"asked": False}
    previous = {sig: signal.signal(sig, lambda *_: stop.update(asked=True))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv):
    cfg = parse_config(argv)
    check_config(cfg)
    if cfg.check_data:
        return check_data(cfg)
    rank, world, device = setup_distributed(cfg)
    master = rank == 0
    run = setup(cfg, rank, world, device)
    module, nets, dtype = run.module, run.nets, run.dtype

    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    log_path = os.path.join(cfg.out_dir, "log.jsonl")
    # the initial weights (a function of cfg.seed, also when resuming): the log's drift
    start_weights = [p.detach().float().clone() for p in nets["encoder"].parameters()]
    start = 0
    if cfg.resume:
        start, used = load_checkpoint(ckpt_path, nets, run.opt, cfg)
        if master:
            trim_log(log_path, start)
        if master and used != ckpt_path and os.path.exists(ckpt_path):
            # set aside, so that the next save does not rotate it over the good previous one
            os.replace(ckpt_path, ckpt_path + ".unreadable")
    elif master and os.path.exists(log_path):
        os.remove(log_path)  # a fresh run starts a fresh log

    digits = (data.load_digits(cfg.mnist_dir)
              if cfg.dataset in ("movingmnist", "switching_mnist") else None)
    source = make_source(cfg, "train", digits)
    end = min(cfg.max_steps, cfg.stop_at or cfg.max_steps)
    loader = torch.utils.data.DataLoader(
        data.StepBatches(source, cfg.batch_size * cfg.accum_steps, cfg.seed, rank),
        batch_size=None, sampler=range(start, end), num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=False)

    if master:
        n_params = sum(p.numel() for p in module.parameters())
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_class()
        print(f"{cfg.objective} ({cfg.preset}): {n_params / 1e6:.2f}M parameters, grid "
              f"{run.grid}, {world} process(es) on {device} ({where}), "
              f"{str(dtype).replace('torch.', '')} (--dtype {cfg.dtype}), global batch "
              f"{cfg.batch_size * world * cfg.accum_steps}, steps {start}->{end}")
    if master and cfg.snapshot_every and start == 0:
        save_snapshot(cfg.out_dir, nets, cfg, 0)
    bar = tqdm(total=end, initial=start, disable=not master, dynamic_ncols=True, unit="step")
    skipped = SkippedFiles(source)
    loss_sum = torch.zeros((), device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)  # any non-finite loss since last check
    n_logged, t_log, t_start, last = 0, time.perf_counter(), time.perf_counter(), None
    step = start
    with stop_on_signals() as stop:  # SIGTERM (pre-emption) or Ctrl-C: checkpoint, stop
        for clips, labels in loader:
            skipped.add(labels, len(clips))
            loss, terms, h, steps_per_clip, grad_norm = train_step(run, clips, step)
            step += 1
            bar.update(1)
            loss_sum += loss
            bad |= ~torch.isfinite(loss)
            n_logged += 1

            log_now = step % cfg.log_every == 0 or step == end
            asked = stop["asked"]  # read once: a later signal is handled at a later step
            # the only host syncs of the loop; with several ranks a stop waits for one, so that
            # all ranks stop at the same step (one stopping alone would leave the others in the
            # next step's gradient all-reduce)
            sync = log_now or step % cfg.ckpt_every == 0 or (asked and world == 1)
            stopping = False
            if sync:
                flags = torch.stack([bad, torch.tensor(asked, device=device)])
                if world > 1:
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # any rank's
                any_bad, stopping = flags.tolist()
                if any_bad:
                    raise NonFiniteLoss(f"non-finite loss by step {step}; stopped. The last good "
                                        f"checkpoint (if any) is {ckpt_path}")
            ckpt_now = step % cfg.ckpt_every == 0 or step == end or stopping
            if log_now:
                if world > 1:
                    dist.all_reduce(loss_sum)
                last = float(loss_sum) / (n_logged * world)
                dt = (time.perf_counter() - t_log) / n_logged
                if h is None:  # pixel targets: encode this batch for the monitors
                    with torch.no_grad(), autocast(device, dtype):
                        h = nets["target_encoder"](clips.to(device))
                emb_std, rank_me = collapse_monitors(h, steps_per_clip)
                lr, wd, momentum = schedules(cfg, step - 1)
                record = {"step": step, "loss": last,
                          **{k: float(v.detach()) for k, v in terms.items()},
                          "lr": lr, "wd": wd, "momentum": momentum,
                          "grad_norm": float(grad_norm), "step_time_s": dt,
                          "clips_per_s": cfg.batch_size * cfg.accum_steps * world / dt,
                          "emb_std": emb_std, "rankme": rank_me,
                          "drift_encoder": drift(nets["encoder"], start_weights)}
                if run.target is not None:
                    record["drift_target"] = drift(run.target, start_weights)
                if skipped.draws:  # a video folder: the draws replaced since the last line
                    n_skipped = torch.tensor(skipped.since_log, device=device)
                    if world > 1:
                        dist.all_reduce(n_skipped)  # on all ranks
                    record["skipped"], skipped.since_log = int(n_skipped), 0
                if cfg.latent != "none":  # how z* is used: share of zeros, most chosen option
                    z = module.last_z
                    record["z_zero"] = float((z == 0).float().mean())
                    record["z_top"] = float(torch.bincount(z.abs().argmax(1)).max()) / len(z)
                if master:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    bar.set_postfix(loss=f"{last:.4f}", std=f"{emb_std:.3f}",
                                    rankme=f"{rank_me:.1f}")
                loss_sum.zero_()
                n_logged, t_log = 0, time.perf_counter()
            if ckpt_now and master:
                save_checkpoint(ckpt_path, nets, run.opt, cfg, step, last, world)
            if master and cfg.snapshot_every and (step % cfg.snapshot_every == 0 or step == end):
                save_snapshot(cfg.out_dir, nets, cfg, step)
            if stopping:
                break
    bar.close()
    wall = time.perf_counter() - t_start

    if master:
        summary = {"steps": step, "wall_s": round(wall, 1), "final_loss": last,
                   "clips_per_s": round((step - start) * cfg.batch_size * cfg.accum_steps
                                        * world / wall, 2)}
        if cfg.val_clips:
            val_clips, _ = data.fixed_set(make_source(cfg, "val", digits), cfg.val_clips,
                                         seed=12345)  # the same clips in every run
            encoder = nets["target_encoder"].eval()
            with torch.no_grad(), autocast(device, dtype):
                h = torch.cat([encoder(c.to(device)) for c in val_clips.split(32)]).float()
            summary["val_emb_std"] = round(float(h.reshape(-1, h.shape[-1]).std(0).mean()), 4)
            summary["val_rankme"] = round(rankme(h.mean(1)), 2)  # one pooled vector per clip
            summary["val_rankme_max"] = min(h.shape[0], h.shape[-1])
        rss = peak_rss_mb()
        if rss is not None:
            summary["peak_rss_mb"] = round(rss)
        if skipped.named:
            summary["skipped_files"] = list(skipped.named)  # drawn on rank 0 and unusable
        with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
            json.dump(summary, f)
        stopped = " (stopped early)" if step < cfg.max_steps else ""
        print(f"done{stopped}: {step} steps in {wall / 60:.1f} min, "
              f"{summary['clips_per_s']} clips/s, final loss {last:.4f}"
              + (f", peak memory {rss:.0f} MB" if rss is not None else ""))
        if cfg.val_clips:
            print(f"target encoder on {cfg.val_clips} validation clips: per-channel std "
                  f"{summary['val_emb_std']}, RankMe {summary['val_rankme']} of at most "
                  f"{summary['val_rankme_max']}")
        print(f"checkpoint {ckpt_path}, log {log_path}, summary "
              f"{os.path.join(cfg.out_dir, 'summary.json')}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
