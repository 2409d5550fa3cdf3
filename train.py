"""Train V-JEPA (predict the EMA target encoder's features of hidden tokens from the visible
ones), VJ-VCR (predict the features of future frames, with variance-covariance regularisation
against collapse) or its generative baseline, or V-JEPA 2-AC's action-conditioned predictor on
a frozen encoder: the config, V-JEPA's objective, the step, the loop and its log.

    python train.py                                    # the laptop recipe, Config's defaults
    python train.py --max_steps 200 --out_dir out/short   # any Config key can be overridden
    python train.py --preset vjvcr                     # a preset: a few keys changed
    torchrun --standalone --nproc_per_node=8 train.py --preset vitl16 --data_path /data/videos
    python train.py --out_dir out/laptop --resume true  # from OUT_DIR/ckpt.pt

V-JEPA's loss is `vjepa_loss`, VJ-VCR's `infer_latent.vjvcr_loss`, V-JEPA 2-AC's
`plan.action_loss`; `train_step` is the optimizer's plumbing.
"""
import contextlib
import copy
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

# oneDNN keeps a kernel per shape: the ~110 shapes of a laptop step must fit, or it recompiles
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

import data  # noqa: E402
import infer_latent  # noqa: E402
import losses  # noqa: E402
import masks  # noqa: E402
import model  # noqa: E402
import plan  # noqa: E402


@dataclass
class Config:
    """The defaults are the laptop recipe (`python train.py`, docs/results.md 1.7): V-JEPA on
    16x64x64 MovingMNIST, ViT 96/6/2, future masks (8 frames predict the next 8), patch 16,
    10,000 steps, EMA from 0.99, plus VJ-VCR's variance-covariance of the context tokens
    (token_vcr) and VICReg of the clip's projected mean context and future target (persist)."""
    preset: str = "laptop"
    out_dir: str = "out/laptop"
    # data
    dataset: str = "movingmnist"  # movingmnist | switching_mnist | video_folder | two_rooms
    data_path: str = ""  # video_folder: the folder
    mnist_dir: str = ""  # MNIST IDX files; empty: $MNIST_DIR, else download, else procedural
    num_digits: int = 2  # digits per MovingMNIST clip
    normalise: bool = True  # MovingMNIST pixels -> (x - 0.05) / 0.2, as video is normalised
    num_workers: int = 0  # DataLoader worker processes
    # clip geometry and tokens
    num_frames: int = 16
    img_size: int = 64
    in_chans: int = 1
    patch_size: int = 16
    tubelet_size: int = 2
    uniform_power: bool = True  # positional code widths as in the released configs
    pos: str = "sincos"  # sincos (V-JEPA: tables added to the tokens) | rope (V-JEPA 2: 3D RoPE)
    # networks
    enc_dim: int = 96
    enc_depth: int = 6
    enc_heads: int = 2
    pred_dim: int = 48
    pred_depth: int = 4
    embed_gain: float = 3.0  # the tubelet embedding's initial weights x this (model.PatchEmbed3D)
    # masks
    mask: str = "future"  # multiblock | random_tube | causal | future
    mask_ratio: float = 0.9  # random_tube: share of spatial positions removed
    mask_ctx_frames: int = 0  # causal / future / VJ-VCR: context frames (0: the first half)
    # objective
    objective: str = "vjepa"  # vjepa | pixel (pixel targets) | vjvcr | generative | action (plan)
    loss: str = "vjepa_l1"  # a prediction loss of losses.py (@prediction_loss)
    encoder_ckpt: str = ""  # action: the frozen V-JEPA encoder's checkpoint
    token_vcr: float = 0.1  # vjepa / pixel: weight of losses.token_vcr (0: the paper's V-JEPA)
    persist: float = 1.0  # vjepa: weight of VICReg between the clip's context and future target
    vcr_alpha: float = 0.5  # weight of the variance term (VJ-VCR eq. 1)
    vcr_beta: float = 0.1  # weight of the covariance term (eq. 3)
    vcr_gamma: float = 0.0  # vjvcr: weight of the pixel reconstruction term (0: no decoder)
    pool_grid: int = 4  # vjvcr / generative: each frame's map averaged to a g x g grid
    latent: str = "none"  # vjvcr (conv): none | discrete (one-hot, K options) | sparse (L1)
    latent_dim: int = 0  # K options (discrete) or the size of z (sparse)
    latent_lam: float = 0.0  # sparse: lambda in E(z) + lambda |z|_1
    latent_steps: int = 20  # sparse: FISTA iterations per training batch
    latent_restart: int = 0  # discrete: restart unused options for this many steps
    # optimisation (batch_size per process; global batch = batch_size x world x accum_steps)
    batch_size: int = 8
    max_steps: int = 10000  # 7.3 emulated AVX2 float32 minutes on 2 cores (docs/results.md 1.7)
    warmup_steps: int = 400
    start_lr: float = 2e-4
    lr: float = 6.25e-4
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    ema_start: float = 0.99  # ~60 EMA time constants in 10,000 steps: the target moves
    ema_end: float = 1.0
    ipe_scale: float = 1.25  # schedules computed for ipe_scale x max_steps, then truncated
    schedule: str = "cosine"  # cosine (V-JEPA) | wsd (V-JEPA 2: warm-up, constant, cooldown)
    cooldown_steps: int = 0  # wsd: the last steps, lr linear to final_lr (0: constant to the end)
    optimizer: str = "adamw"  # adamw | adam (L2 penalty, VJ-VCR)
    grad_clip: float = 10.0  # 0 disables
    accum_steps: int = 1  # micro-batches per optimizer step
    dtype: str = "auto"  # auto (bf16 where the hardware multiplies in it) | bfloat16 | float32
    compile: bool = False  # torch.compile the networks (needs a C++ compiler on CPU)
    grad_checkpoint: bool = False  # recompute blocks in the backward pass: less memory
    # run
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    log_every: int = 20
    ckpt_every: int = 100
    stop_at: int = 0  # stop (and checkpoint) at this step; 0: run to max_steps
    resume: bool = False  # continue from OUT_DIR/ckpt.pt
    dist_timeout_s: int = 600  # torchrun: a collective that waits longer (a rank hung) raises
    val_clips: int = 256  # fixed validation clips for the final collapse monitors
    snapshot_every: int = 0  # also keep the encoders every N steps (python tools/curve.py)

    def __post_init__(self):
        if self.mask_ctx_frames == 0:  # the first half of the clip, at least one tubelet
            t = self.tubelet_size
            self.mask_ctx_frames = max(t, self.num_frames // 2 // t * t)


# The paper's recipe (V-JEPA Table 8) on folders of real video; batch_size per GPU (x 128 GPUs).
PAPER = dict(dataset="video_folder", img_size=224, in_chans=3, normalise=False, embed_gain=1.0,
             mask="multiblock", token_vcr=0.0, persist=0.0, pred_dim=384, pred_depth=12,
             batch_size=24, max_steps=90_000, warmup_steps=12_000, ema_start=0.998, num_workers=8,
             log_every=50, ckpt_every=1000, val_clips=0, grad_checkpoint=True)
# VJ-VCR on MovingMNIST (Drozdov et al. 2024, sec. 4.4): conv networks, one digit, 3 frames
# -> 12, Adam at a constant 1e-3; shortened to fit 15 minutes on 2 CPU cores.
VCR = dict(objective="vjvcr", loss="mse", normalise=False, token_vcr=0.0, persist=0.0,
           num_digits=1, num_frames=15, mask_ctx_frames=3, enc_dim=64, pool_grid=2, batch_size=64,
           max_steps=500, optimizer="adam", start_lr=1e-3, lr=1e-3, final_lr=1e-3,
           warmup_steps=0, weight_decay=0.0, final_weight_decay=0.0, ema_start=1.0,
           ipe_scale=1.0, grad_clip=0.0, log_every=50, ckpt_every=250)
# stochastic MovingMNIST: 3 frames moving right -> 3 frames in one of 5 directions (Table 2)
SWITCH = dict(VCR, dataset="switching_mnist", num_frames=6, max_steps=600, pool_grid=4)
GENERATIVE = dict(VCR, objective="generative", weight_decay=1e-6, final_weight_decay=1e-6)
NET192 = dict(enc_dim=192, enc_heads=3, pred_dim=96, token_vcr=1.0, persist=0.0)  # results 2, 3, 8
SLOW_EMA = dict(NET192, max_steps=4000, ema_start=0.9998)  # 4,000 steps, an EMA from 0.9998
ROOMS = dict(NET192, dataset="two_rooms", max_steps=1500)  # V-JEPA 2-AC's world: plan.py
PRESETS = {
    "laptop": {},
    "rooms": ROOMS,  # the world's V-JEPA encoder, then its action-conditioned predictor:
    "rooms_ac": dict(ROOMS, objective="action", encoder_ckpt="out/rooms/ckpt.pt", batch_size=16),
    "laptop_vjepa": dict(SLOW_EMA, token_vcr=0.0),  # the paper's V-JEPA, without the regulariser
    "laptop_long": dict(SLOW_EMA, max_steps=12000),
    "laptop_vjepa_long": dict(SLOW_EMA, token_vcr=0.0, max_steps=12000),
    # V-JEPA's ablations (of laptop_vjepa): pixel targets (Table 1), masks (Table 4)
    "laptop_pixel": dict(SLOW_EMA, token_vcr=0.0, objective="pixel", loss="mse"),
    "laptop_multiblock": dict(SLOW_EMA, token_vcr=0.0, mask="multiblock"),
    "laptop_tube": dict(SLOW_EMA, token_vcr=0.0, mask="random_tube"),
    "laptop_causal": dict(SLOW_EMA, token_vcr=0.0, mask="causal", mask_ctx_frames=6),
    # the four rows of VJ-VCR's Table 1
    "vjvcr": VCR,
    "vjvcr_dec": dict(VCR, vcr_gamma=1.0),
    "generative_vcr": GENERATIVE,
    "generative": dict(GENERATIVE, vcr_alpha=0.0, vcr_beta=0.0),
    # VJ-VCR with a latent on stochastic MovingMNIST (Table 2, Figure 3); none: without
    "switch_none": SWITCH,
    "switch_discrete": dict(SWITCH, latent="discrete", latent_dim=5, latent_restart=300),
    "switch_sparse80": dict(SWITCH, latent="sparse", latent_dim=20, latent_lam=1e-3),
    "switch_sparse20": dict(SWITCH, latent="sparse", latent_dim=20, latent_lam=2e-4),
    "vitl16": dict(PAPER, enc_dim=1024, enc_depth=24, enc_heads=16),
    "vith16": dict(PAPER, enc_dim=1280, enc_depth=32, enc_heads=16),
    "vith16_384": dict(PAPER, enc_dim=1280, enc_depth=32, enc_heads=16, img_size=384,
                       batch_size=10),
}
ARCH_KEYS = ("objective", "num_frames", "img_size", "in_chans", "patch_size", "tubelet_size",
             "uniform_power", "pos", "enc_dim", "enc_depth", "enc_heads", "pred_dim",
             "pred_depth", "mask", "mask_ctx_frames", "pool_grid", "latent", "latent_dim")
CHOICES = {"dataset": ("movingmnist", "switching_mnist", "video_folder", "two_rooms"),
           "pos": ("sincos", "rope"), "schedule": ("cosine", "wsd"),
           "dtype": ("auto", "bfloat16", "float32"), "device": ("auto", "cpu", "cuda"),
           "objective": ("vjepa", "pixel", "vjvcr", "generative", "action"),
           "optimizer": ("adamw", "adam"), "latent": ("none", "discrete", "sparse")}


# ----------------------------------------------------------------------------------------------
# The objectives: clips -> (loss, {term: value}, embeddings [B, T, S, D] for the monitors)

def feature_targets(run, clips):
    """V-JEPA's targets for every token -> (the EMA target encoder's features h [B, N, D], their
    layer norm without affine parameters [B, N, D] float32); pixel targets: (None, pixels)."""
    if run.target is None:
        return None, model.pixel_targets(clips, run.cfg.patch_size, run.cfg.tubelet_size)
    h = run.target(clips)
    return h, F.layer_norm(h.float(), h.shape[-1:])


def vjepa_loss(run, clips, generator):
    """V-JEPA (Bardes et al. 2024, eq. 1) on clips [B, C, T, H, W]: from the tokens each mask
    keeps, predict the target encoder's features at the tokens it hides."""
    cfg, device = run.cfg, run.device
    masks = [(ctx.to(device), tgt.to(device))  # token indices ctx [B, Kc], tgt [B, Kt],
             for ctx, tgt in run.sampler(len(clips), generator)]  # one pair per mask config
    with torch.no_grad():  # the targets get no gradient
        h, full = feature_targets(run, clips)  # EMA encoder [B, N, D], its layer norm
        targets = [model.gather_tokens(full, tgt) for _, tgt in masks]  # [B, Kt, D]
        pooled = torch.stack([t.float().mean(1) for t in targets]).mean(0) if cfg.persist else None
    # encoder(kept) [B, Kc, D] -> predictor [B, Kt, D]; persist: projections [B, P] of both means
    preds, contexts, projections = run.net(clips, masks, pooled)
    loss, terms = losses.vjepa_energy(  # prediction + token_vcr x VCR of the contexts + persist
        losses.PREDICTION_LOSSES[cfg.loss], preds, targets, contexts,
        cfg.token_vcr, cfg.vcr_alpha, cfg.vcr_beta, cfg.persist, projections)
    return loss, terms, None if h is None else h.unflatten(1, (run.grid[0], -1))


OBJECTIVES = {"vjepa": vjepa_loss, "pixel": vjepa_loss, "vjvcr": infer_latent.vjvcr_loss,
              "generative": infer_latent.vjvcr_loss, "action": plan.action_loss}


# ----------------------------------------------------------------------------------------------
# The step

def train_step(run, clips, step, actions=None):
    """One optimizer step of the run's objective on clips: accum_steps micro-batches, gradient
    clipping, AdamW, the EMA of the target encoder. No host sync, but a latent's z* and restarts.
    -> (mean loss, terms, embeddings [B, T, S, D] for the monitors or None, gradient norm)"""
    cfg = run.cfg
    lr, wd, momentum = schedules(cfg, step)
    for group in run.opt.param_groups:
        group["lr"], group["weight_decay"] = lr, 0.0 if group.get("no_decay") else wd
    g = torch.Generator().manual_seed(data.step_seed(cfg.seed, run.rank, step, stream=1))
    run.opt.zero_grad(set_to_none=True)
    total, chunks = 0.0, clips.to(run.device, non_blocking=True).chunk(cfg.accum_steps)
    extra = (actions.to(run.device).chunk(cfg.accum_steps) if cfg.objective == "action"
             else [g] * len(chunks))  # the actions, or the generator of the masks
    for i, (x, e) in enumerate(zip(chunks, extra)):  # DDP averages gradients on the last only
        last = i == len(chunks) - 1 or run.world == 1
        with contextlib.nullcontext() if last else run.net.no_sync():  # also around backward
            with model.autocast(run.device, run.dtype):
                loss, terms, h = OBJECTIVES[cfg.objective](run, x, e)
            (loss / len(chunks)).backward()
        total += loss.detach() / len(chunks)
    grad_norm = (torch.nn.utils.clip_grad_norm_(run.module.parameters(), cfg.grad_clip)
                 if cfg.grad_clip > 0 else torch.zeros(()))
    run.opt.step()
    if run.target is not None:
        ema_update(run.target, run.module.encoder, momentum)
    if cfg.latent == "discrete" and step < cfg.latent_restart:  # VJ-VCR: unused options restart
        g = torch.Generator().manual_seed(data.step_seed(cfg.seed, 0, step, stream=2))
        infer_latent.restart_unused_options(run.module, run.opt, g, run.world)
    return total, terms, None if h is None else h.detach(), grad_norm


@torch.no_grad()
def ema_update(target, online, momentum):
    """target <- m * target + (1 - m) * online, for every parameter."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), 1.0 - momentum)


def warmup_cosine(step, total, warmup, start_lr, lr, final_lr):
    """Linear start_lr -> lr over `warmup` steps, then a cosine to final_lr at `total`."""
    if step < warmup:
        return start_lr + (lr - start_lr) * step / warmup
    progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return final_lr + (lr - final_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def schedules(cfg, step):
    """(lr, weight decay, EMA momentum) at `step`. cosine (V-JEPA, app. B): over ipe_scale x
    max_steps steps the lr warms up then follows a cosine, weight decay and momentum are linear.
    wsd (V-JEPA 2): warm-up, constant, then linear to final_lr over the last cooldown_steps;
    weight decay and momentum constant, so any step's checkpoint can be cooled down."""
    if cfg.schedule == "wsd":
        cool = cfg.max_steps - cfg.cooldown_steps  # the warm-up, then a "cosine" from lr to lr
        lr = warmup_cosine(min(step, cool), cool, cfg.warmup_steps, cfg.start_lr, cfg.lr, cfg.lr)
        lr += (cfg.final_lr - cfg.lr) * max(0, step - cool) / max(1, cfg.cooldown_steps)
        return lr, cfg.weight_decay, cfg.ema_start
    total = cfg.ipe_scale * cfg.max_steps
    lr = warmup_cosine(step, total, cfg.warmup_steps, cfg.start_lr, cfg.lr, cfg.final_lr)
    frac = min(1.0, step / total)
    wd = cfg.weight_decay + (cfg.final_weight_decay - cfg.weight_decay) * frac
    return lr, wd, cfg.ema_start + (cfg.ema_end - cfg.ema_start) * frac


# ----------------------------------------------------------------------------------------------
# The loop

def main(argv):
    cfg = parse_config(argv)
    check_config(cfg)  # before torchrun's process group starts
    rank, world, device = model.setup_distributed(cfg.device, cfg.dist_timeout_s)
    run = setup(cfg, rank, world, device)
    master = rank == 0
    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_path, log_path = (os.path.join(cfg.out_dir, f) for f in ("ckpt.pt", "log.jsonl"))
    log = Log(run, log_path)  # before a resume: the drift is from the initial weights
    start = resume(run, ckpt_path, log_path) if cfg.resume else 0
    if master and not cfg.resume and os.path.exists(log_path):  # a fresh run, a fresh log
        os.remove(log_path)
    end = min(cfg.max_steps, cfg.stop_at or cfg.max_steps)
    digits = (data.load_digits(cfg.mnist_dir)
              if cfg.dataset in ("movingmnist", "switching_mnist") else None)
    source = data.make_source(cfg, "train", digits)
    loader = torch.utils.data.DataLoader(
        data.StepBatches(source, cfg.batch_size * cfg.accum_steps, cfg.seed, rank),
        batch_size=None, sampler=range(start, end), num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda")
    if master:
        announce(run, start, end)
    if master and cfg.snapshot_every and start == 0:
        save_snapshot(run, 0)
    bar = tqdm(total=end, initial=start, disable=not master, dynamic_ncols=True, unit="step")
    t_start, step = time.perf_counter(), start
    with model.stop_on_signals() as stop:  # SIGTERM (pre-emption) or Ctrl-C: checkpoint, stop
        for clips, labels in loader:
            if "failed" in labels:  # a video folder's unusable files, replaced: name them
                source.warn(labels["failed"])
            loss, terms, h, grad_norm = train_step(run, clips, step, labels.get("actions"))
            step += 1
            bar.update(1)
            log.add(loss)
            log_now, asked = step % cfg.log_every == 0 or step == end, stop["asked"]
            stopping = False  # with several ranks a stop waits for a sync step
            if log_now or step % cfg.ckpt_every == 0 or (asked and world == 1):
                stopping = log.must_stop(step, asked, ckpt_path)
            if log_now:
                if h is None:  # pixel targets: encode this batch for the monitors
                    h = model.encode(run.nets["target_encoder"], clips, len(clips), run.dtype)
                    h = h.unflatten(1, (run.grid[0], -1))
                log.write(step, terms, h, grad_norm, bar)
            if master and (step % cfg.ckpt_every == 0 or step == end or stopping):
                data.save_checkpoint(ckpt_path, run.nets, run.opt, dataclasses.asdict(cfg),
                                     step, log.last, world, schedules(cfg, step)[0])
            if master and cfg.snapshot_every and (step % cfg.snapshot_every == 0 or step == end):
                save_snapshot(run, step)
            if stopping:
                break
    bar.close()
    if master:
        seen = (step - start) * cfg.batch_size * cfg.accum_steps * world  # all processes' clips
        write_summary(run, step, time.perf_counter() - t_start, log.last, seen,
                      data.make_source(cfg, "val", digits))
    if world > 1:  # the ranks leave together, DDP's hold on the group released first
        dist.barrier()
        run.net = None
        dist.destroy_process_group()
        sys.stdout.flush()  # then leave at once: gloo's threads can abort the interpreter's
        os._exit(0)  # teardown ("terminate called without an active exception", SIGABRT)


def save_snapshot(run, step):
    """OUT_DIR/snapshots/stepNNNNNN.pt: the encoders and the config (python tools/curve.py)."""
    os.makedirs(folder := os.path.join(run.cfg.out_dir, "snapshots"), exist_ok=True)
    data.atomic_save({**data.release_state({k: run.nets[k] for k in ("encoder", "target_encoder")}),
                      "config": dataclasses.asdict(run.cfg), "step": step},
                     os.path.join(folder, f"step{step:06d}.pt"))


def announce(run, start, end):  # the run's opening line
    cfg, device, n = run.cfg, run.device, sum(p.numel() for p in run.module.parameters())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else model.cpu_class()
    print(f"{cfg.objective} ({cfg.preset}): {n / 1e6:.2f}M parameters, grid {run.grid}, "
          f"{run.world} process(es) on {device} ({where}), {str(run.dtype)[6:]} (--dtype "
          f"{cfg.dtype}), global batch {cfg.batch_size * run.world * cfg.accum_steps}, "
          f"steps {start}->{end}")


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite: the run stops rather than train on garbage."""


class Log:
    """The loss summed on the device between log lines; one host sync per log/checkpoint step
    (any rank's non-finite loss or stop request, all-reduced: the ranks stop together); log.jsonl"""

    def __init__(self, run, path):
        self.run, self.path = run, path
        self.start_weights = [p.detach().float().clone() for p in run.nets["encoder"].parameters()]
        self.loss_sum = torch.zeros((), device=run.device)
        self.bad = torch.zeros((), dtype=torch.bool, device=run.device)
        self.n, self.t, self.last = 0, time.perf_counter(), None

    def add(self, loss):
        self.loss_sum += loss
        self.bad |= ~torch.isfinite(loss)
        self.n += 1

    def must_stop(self, step, asked, ckpt_path):
        flags = torch.stack([self.bad, torch.tensor(asked, device=self.run.device)])
        if self.run.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        any_bad, stopping = flags.tolist()
        if any_bad:
            raise NonFiniteLoss(f"non-finite loss by step {step}; stopped. The last good "
                                f"checkpoint (if any) is {ckpt_path}")
        return bool(stopping)

    def write(self, step, terms, h, grad_norm, bar):
        """One line: the mean loss since the last, its terms, the schedule, speed, and the
        collapse monitors of the embeddings h [B, T, S, D]."""
        run, cfg, world = self.run, self.run.cfg, self.run.world
        if world > 1:
            dist.all_reduce(self.loss_sum)
        self.last = float(self.loss_sum) / (self.n * world)
        dt = (time.perf_counter() - self.t) / self.n
        emb_std, rank_me = losses.collapse_monitors(h)
        record = {"step": step, "loss": self.last,
                  **{k: float(v.detach()) for k, v in terms.items()},
                  **dict(zip(("lr", "wd", "momentum"), schedules(cfg, step - 1))),
                  "grad_norm": float(grad_norm), "step_time_s": dt,
                  "clips_per_s": cfg.batch_size * cfg.accum_steps * world / dt,
                  "emb_std": emb_std, "rankme": rank_me,
                  "drift_encoder": losses.drift(run.nets["encoder"], self.start_weights)}
        if run.target is not None:
            record["drift_target"] = losses.drift(run.target, self.start_weights)
        if cfg.latent != "none":  # VJ-VCR: how z* is used
            record.update(infer_latent.z_usage(run.module.last_z))
        if run.rank == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{self.last:.4f}", std=f"{emb_std:.3f}", rankme=f"{rank_me:.1f}")
        self.loss_sum.zero_()
        self.n, self.t = 0, time.perf_counter()


def write_summary(run, step, wall, last, clips, val_source):
    """OUT_DIR/summary.json and the closing lines: time, speed, final loss, peak memory, and the
    target encoder's per-channel std and RankMe of the mean token on cfg.val_clips fixed clips."""
    cfg, rss = run.cfg, model.peak_rss_mb()
    summary = {"steps": step, "wall_s": round(wall, 1), "final_loss": last,
               "clips_per_s": round(clips / wall, 2), "peak_rss_mb": rss and round(rss)}
    if cfg.val_clips and cfg.objective != "action":  # (its encoder is frozen)
        x, _ = data.fixed_set(val_source, cfg.val_clips, seed=12345)
        h = model.encode(run.nets["target_encoder"].eval(), x, 32, run.dtype)  # [n, N, D]
        std, rank = losses.collapse_monitors(h[:, None])  # VJ-VCR: [n, T, d] above
        summary.update(val_emb_std=round(std, 4), val_rankme=round(rank, 2),
                       val_rankme_max=min(h.shape[0], h.shape[-1]))
    with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f)
    print(f"done{' (stopped early)' if step < cfg.max_steps else ''}: {step} steps in "
          f"{wall / 60:.1f} min, {summary['clips_per_s']} clips/s, final loss {last:.4f}, "
          f"peak memory {rss or 0:.0f} MB")
    if "val_rankme" in summary:
        print(f"target encoder on {cfg.val_clips} validation clips: per-channel std {std:.4f}, "
              f"RankMe {rank:.2f} of at most {summary['val_rankme_max']}")
    print(f"checkpoint, log, summary: {cfg.out_dir}/{{ckpt.pt, log.jsonl, summary.json}}")


def resume(run, ckpt_path, log_path):
    """data.resume into the run's networks and optimizer; the log cut back to its step."""
    step, used = data.resume(ckpt_path, run.nets, run.opt, dataclasses.asdict(run.cfg), ARCH_KEYS)
    if run.rank == 0 and os.path.exists(log_path):  # keep the lines up to that step
        with open(log_path) as f:
            lines = f.readlines()
        with open(log_path, "w") as f:
            f.writelines(line for line in lines  # a line a crash cut short has no "}\n"
                         if line.endswith("}\n") and json.loads(line)["step"] <= step)
    if run.rank == 0 and used != ckpt_path and os.path.exists(ckpt_path):  # else the next
        os.replace(ckpt_path, ckpt_path + ".unreadable")  # save rotates it over the good one
    return step


# ----------------------------------------------------------------------------------------------
# Configuration

def parse_config(argv):
    """`--key value` (or `--key=value`) pairs -> Config: the preset's values, then overrides."""
    pairs, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; expected --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if not args:
                raise ValueError(f"--{key} needs a value")
            value = args.pop(0)
        pairs.append((key.replace("-", "_"), value))
    fields = {f.name: f.type for f in dataclasses.fields(Config)}
    preset = dict(pairs).get("preset", Config.preset)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    values = {"out_dir": f"out/{preset}", **PRESETS[preset]}
    for key, value in pairs:
        if key not in fields:
            raise ValueError(f"unknown config key --{key}; known keys: {', '.join(fields)}")
        values[key] = _convert(key, value, fields[key])
    return Config(**values)


def _convert(key, value, kind):
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind, kind)
    if kind is bool and value.lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes")
    if kind is not bool:
        with contextlib.suppress(ValueError):
            return kind(value)
    raise ValueError(f"--{key} expects a {kind.__name__}, got {value!r}")


def check_config(cfg):
    """Raise ValueError naming the first bad value; returns the token grid (V-JEPA) or None."""
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"--{key} {getattr(cfg, key)!r}: expected one of {allowed}")
    grid = mask_sampler(cfg).grid if cfg.objective in ("vjepa", "pixel") else None
    infer_latent.check_config(cfg)
    plan.check_config(cfg)
    if cfg.loss not in losses.PREDICTION_LOSSES:
        raise ValueError(f"--loss {cfg.loss!r} is not a prediction loss of losses.py; expected "
                         f"one of {sorted(losses.PREDICTION_LOSSES)}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but this machine has no CUDA device")
    if cfg.dataset != "video_folder" and cfg.in_chans != 1:
        raise ValueError(f"in_chans={cfg.in_chans}: MovingMNIST clips have 1 channel")
    if cfg.dataset == "video_folder" and not cfg.data_path:
        raise ValueError(f"dataset={cfg.dataset} needs --data_path")
    for key in ("batch_size", "max_steps", "log_every", "ckpt_every", "accum_steps",
                "dist_timeout_s"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"--{key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.persist and cfg.objective != "vjepa":
        raise ValueError(f"--persist {cfg.persist} needs --objective vjepa; set --persist 0")
    if not 0 <= cfg.cooldown_steps <= cfg.max_steps:
        raise ValueError(f"--cooldown_steps {cfg.cooldown_steps}: expected 0 to max_steps")
    return grid


def mask_sampler(cfg):
    grid = model.token_grid(cfg.num_frames, cfg.img_size, cfg.patch_size, cfg.tubelet_size)
    return masks.MaskSampler(cfg.mask, grid, cfg.tubelet_size, cfg.mask_ratio, cfg.mask_ctx_frames)


# ----------------------------------------------------------------------------------------------
# Setup

def build(cfg, device):
    """-> (trainable module, {checkpoint name: module}, EMA target encoder or None)."""
    if cfg.objective in ("vjvcr", "generative"):
        net = infer_latent.VJVCR(cfg, losses.PREDICTION_LOSSES[cfg.loss]).to(device)
        return net, net.checkpoint_nets(), None
    if cfg.objective == "action":  # V-JEPA 2-AC: a world's frozen V-JEPA encoder, a new predictor
        return plan.build(cfg, device)
    # one mask token per mask configuration (an unused one would get no gradient: DDP refuses)
    encoder, predictor = model.build_models(
        cfg.num_frames, cfg.img_size, cfg.patch_size, cfg.tubelet_size, cfg.in_chans,
        cfg.enc_dim, cfg.enc_depth, cfg.enc_heads, cfg.pred_dim, cfg.pred_depth,
        num_masks=len(mask_sampler(cfg).names), uniform_power=cfg.uniform_power,
        out_dim=cfg.in_chans * cfg.tubelet_size * cfg.patch_size ** 2
        if cfg.objective == "pixel" else None, embed_gain=cfg.embed_gain, pos=cfg.pos)
    net = model.JEPA(encoder, predictor, 2 * cfg.enc_dim if cfg.persist else 0).to(device)
    # pixel targets: no target encoder, probes read the encoder itself
    target = None if cfg.objective == "pixel" else copy.deepcopy(encoder).requires_grad_(False)
    nets = {"encoder": encoder, "predictor": predictor, "target_encoder": target or encoder}
    return net, nets if net.proj is None else {**nets, "persist_proj": net.proj}, target


@dataclass
class Run:
    """Everything one training process holds."""
    cfg: Config
    module: torch.nn.Module  # the trainable module
    net: torch.nn.Module  # what the step calls: the module, wrapped by DDP and/or compiled
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
    """The networks, optimizer and masks of a checked config -> Run."""
    grid = check_config(cfg)
    model.keep_freed_memory()  # before the first step allocates
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    module, nets, target = build(cfg, device)
    for m in module.modules():
        if hasattr(m, "grad_checkpoint"):
            m.grad_checkpoint = cfg.grad_checkpoint
    optimizer = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel for all parameters instead of ~10 operations per tensor
    opt = optimizer(model.param_groups(module), lr=cfg.lr, weight_decay=cfg.weight_decay,
                    fused=device.type in ("cpu", "cuda"))
    sampler = mask_sampler(cfg) if grid else None
    net = module
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # the masks' token counts are fixed: static shapes
        net = torch.compile(net)
    return Run(cfg, module, net, nets, target, opt, sampler, grid, rank, world, device,
               model.pick_dtype(cfg.dtype, device))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
