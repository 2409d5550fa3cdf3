"""Clips in, checkpoint files out: MNIST digits, MovingMNIST made on the fly (also VJ-VCR's
stochastic one, and clips that break its physics for the probe), folders of real video, the
batch of every step (the two-rooms world of V-JEPA 2-AC: plan.py); checkpoints written and
resumed.

Every source has `sample(batch, generator) -> (clips [B, C, T, H, W] float32, labels dict)`,
and draws all of its randomness from `generator`. `StepBatches` seeds that generator from
(seed, rank, step), so the batch of a step is a pure function of those three numbers: a resumed
run sees exactly the batches it would have seen, and DataLoader workers need no shared state.

Digits come from MNIST IDX files in a directory (`mnist_dir` or $MNIST_DIR), else from a
one-time download into ~/.cache/vjepa-mnist checked against the published MD5s, else (offline)
from digits drawn procedurally here, with a one-line warning. Checkpoints are written
atomically; model.read_checkpoint reads them without running pickled code.
"""
import contextlib
import gzip
import hashlib
import http.client
import math
import os
import random
import shutil
import sys
import tempfile
import urllib.request

import numpy as np
import torch
import torch.nn.functional as F

import model
import plan

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_MD5 = {  # the checksums published with the MNIST distribution
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "vjepa-mnist")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pixel mean and std of two-digit MovingMNIST clips (64x64 canvas): 93% of the pixels are 0.
MMNIST_MEAN, MMNIST_STD = 0.05, 0.2


# ----------------------------------------------------------------------------------------------
# Digits

def md5(path):
    """The file's MD5 as hex, read in 1 MB chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_idx(path):
    """An IDX file (gzip) -> uint8 array. Checks the checksum, the magic number and the size."""
    name = os.path.basename(path)
    if MNIST_MD5.get(name) and md5(path) != MNIST_MD5[name]:
        raise ValueError(f"{path} is corrupt: its MD5 {md5(path)} is not the published "
                         f"{MNIST_MD5[name]}; delete it or replace it with a good copy")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable gzip file ({e})") from None
    ndim = raw[3] if len(raw) > 4 and raw[:3] == b"\x00\x00\x08" else 0
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if not ndim or len(raw) != 4 + 4 * ndim + math.prod(shape):
        raise ValueError(f"{path} is not an IDX file of unsigned bytes with a consistent size")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _split_files(directory):
    """The first MNIST split (train, else t10k) whose two files are both in `directory`."""
    for split in ("train", "t10k"):
        files = [os.path.join(directory, f"{split}-{kind}-idx{n}-ubyte.gz")
                 for kind, n in (("images", 3), ("labels", 1))]
        if all(os.path.exists(f) for f in files):
            return files
    return None


def _download(directory):
    """Download the MNIST training split into `directory`, verified, written atomically."""
    os.makedirs(directory, exist_ok=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        target = os.path.join(directory, name)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, \
                    urllib.request.urlopen(MNIST_URL + name, timeout=20) as r:
                shutil.copyfileobj(r, out)
            if md5(tmp) != MNIST_MD5[name]:
                raise OSError(f"downloaded {name} does not match its published MD5")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def load_digits(mnist_dir=""):
    """MNIST digits as (images uint8 [N, 28, 28], labels int64 [N]).

    mnist_dir (or $MNIST_DIR) given: its files are used and must be there and intact.
    Otherwise the default cache, filled by a download on first use; offline (or with
    $VJEPA_OFFLINE=1) the procedural digits of `procedural_digits`."""
    explicit = mnist_dir or os.environ.get("MNIST_DIR", "")
    offline = os.environ.get("VJEPA_OFFLINE", "0") not in ("", "0")
    directory = explicit or DEFAULT_CACHE
    files = _split_files(directory)
    if files is None and explicit:
        raise FileNotFoundError(f"no MNIST files in mnist_dir={directory!r}: expected "
                                "train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz "
                                "(or the t10k-* pair)")
    if files is None and not offline:
        try:
            _download(directory)
            files = _split_files(directory)
        except (OSError, http.client.HTTPException) as e:
            print(f"warning: MNIST download failed ({e}); using procedural digits",
                  file=sys.stderr)
    if files is None:
        if offline:
            print("warning: no MNIST files and VJEPA_OFFLINE is set; using procedural digits",
                  file=sys.stderr)
        return procedural_digits()
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise ValueError(f"{files[0]} holds images of shape {images.shape}, with labels "
                         f"{labels.shape}; expected [N, 28, 28] and [N]")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def split_digits(images, labels, part):
    """The paper's split: the last 1/12 of the digits is held out ('val'), the rest is 'train'
    (55,000 / 5,000 for the MNIST training set)."""
    if part not in ("train", "val"):
        raise ValueError(f"part={part!r}: expected 'train' or 'val'")
    cut = len(images) - len(images) // 12
    return (images[:cut], labels[:cut]) if part == "train" else (images[cut:], labels[cut:])


# Strokes of the ten digits in a unit box (x right, y down): polylines, arcs given as
# ("arc", cx, cy, rx, ry, start_deg, end_deg).
_STROKES = {
    0: [("arc", .5, .5, .28, .4, 0, 360)],
    1: [[(.38, .24), (.55, .1), (.55, .9)]],
    2: [("arc", .5, .32, .27, .22, 200, 380), [(.77, .36), (.22, .9), (.82, .9)]],
    3: [("arc", .48, .3, .25, .2, 200, 450), ("arc", .48, .7, .28, .2, 270, 520)],
    4: [[(.65, .9), (.65, .1), (.18, .65), (.85, .65)]],
    5: [[(.78, .1), (.32, .1), (.27, .45)], ("arc", .5, .66, .28, .24, 220, 500)],
    6: [("arc", .52, .68, .26, .22, 0, 360), [(.27, .66), (.4, .3), (.66, .1)]],
    7: [[(.2, .12), (.8, .12), (.42, .9)]],
    8: [("arc", .5, .3, .22, .19, 0, 360), ("arc", .5, .7, .27, .21, 0, 360)],
    9: [("arc", .5, .32, .25, .22, 0, 360), [(.75, .34), (.62, .9)]],
}


def _stroke_points(stroke):
    if isinstance(stroke, list):
        return np.array(stroke, dtype=np.float64)
    _, cx, cy, rx, ry, a0, a1 = stroke
    a = np.deg2rad(np.linspace(a0, a1, 32))
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1)


def procedural_digits(per_class=600, seed=0):
    """Offline stand-in for MNIST: strokes of the ten digits under a random affine jitter
    (rotation, shear, scale, shift) and line width, drawn at 4x and averaged down to 28x28."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    big = 112
    images, labels = [], []
    for digit in range(10):
        for _ in range(per_class):
            rot, shear = rng.normal(0, 0.15), rng.normal(0, 0.15)
            sx, sy = rng.uniform(0.85, 1.1, 2)
            A = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
            A = A @ np.array([[sx, shear], [0, sy]])
            shift = rng.normal(0, 0.03, 2)
            img = Image.new("L", (big, big))
            draw = ImageDraw.Draw(img)
            width = int(rng.uniform(7, 12))
            for stroke in _STROKES[digit]:
                p = (_stroke_points(stroke) - 0.5) @ A.T + 0.5 + shift  # jitter about the centre
                p = (p * 20 + 4) * (big / 28)  # a 20x20 box inside 28x28, like MNIST
                draw.line([tuple(q) for q in p], fill=255, width=width, joint="curve")
            images.append(np.asarray(img.resize((28, 28), Image.BOX)))
            labels.append(digit)
    order = rng.permutation(len(images))
    return (torch.from_numpy(np.stack(images)[order]),
            torch.tensor(labels, dtype=torch.int64)[order])


# ----------------------------------------------------------------------------------------------
# MovingMNIST

def bounce(x, low, high):
    """Positions on a straight line folded into [low, high] as if reflected by walls."""
    span = high - low
    if span == 0:  # a canvas the size of the digit: it cannot move
        return torch.full_like(x, low)
    m = torch.remainder(x - low, 2 * span)
    return low + span - (span - m).abs()


def paste(canvas_size, images, top_left):
    """Draw digits onto black frames, overlaps combined by max.
    images: [B, n, h, w] in [0, 1]; top_left: [B, n, T, 2] integer (y, x) -> [B, T, S, S]."""
    B, n, h, w = images.shape
    T = top_left.shape[2]
    S = canvas_size
    dy, dx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    y = top_left[..., 0, None, None] + dy  # (B, n, T, h, w)
    x = top_left[..., 1, None, None] + dx
    index = (y * S + x).permute(0, 2, 1, 3, 4).reshape(B, T, n * h * w)
    src = images[:, :, None].expand(B, n, T, h, w).permute(0, 2, 1, 3, 4).reshape(B, T, -1)
    canvas = torch.zeros(B, T, S * S)
    canvas.scatter_reduce_(2, index, src, reduce="amax")
    return canvas.view(B, T, S, S)


class MovingMNIST:
    """Deterministic MovingMNIST (Srivastava et al. 2015): digits on a black square canvas, each
    from a uniformly random position with a constant velocity (uniform direction, speed
    uniform in `speed` pixels per frame), bouncing off the walls.

    Labels: speed [B, n] and velocity [B, n, 2] (pixels per frame, (vy, vx)) before any
    bounce, digit identities [B, n], and where each digit is: its top-left corner per frame,
    pos [B, n, T, 2] as (y, x), unrounded (the digit is drawn at the rounded corner)."""

    def __init__(self, images, labels, num_frames=20, img_size=64, num_digits=2,
                 speed=(1.0, 4.0), normalise=False):
        if img_size < images.shape[-1]:
            raise ValueError(f"img_size={img_size} is smaller than a digit ({images.shape[-1]})")
        self.images, self.labels = images, labels
        self.num_frames, self.img_size, self.num_digits, self.speed = (
            num_frames, img_size, num_digits, speed)
        self.normalise = normalise  # (x - MMNIST_MEAN) / MMNIST_STD, as video gets ImageNet's

    def sample(self, batch, generator):
        B, n, T, g = batch, self.num_digits, self.num_frames, generator
        which = torch.randint(len(self.images), (B, n), generator=g)
        room = self.img_size - self.images.shape[-1]  # top-left corner range [0, room]
        start = torch.rand(B, n, 2, generator=g) * room
        angle = torch.rand(B, n, generator=g) * 2 * math.pi
        speed = self.speed[0] + (self.speed[1] - self.speed[0]) * torch.rand(B, n, generator=g)
        velocity = speed[..., None] * torch.stack([angle.sin(), angle.cos()], -1)  # (B, n, 2)
        t = torch.arange(T, dtype=torch.float32)[None, None, :, None]
        pos = bounce(start[:, :, None] + velocity[:, :, None] * t, 0, room)  # (B, n, T, 2)
        digits = self.images[which].float() / 255
        clips = paste(self.img_size, digits, pos.round().long())
        labels = {"speed": speed, "velocity": velocity, "digits": self.labels[which], "pos": pos}
        if self.normalise:
            clips = (clips - MMNIST_MEAN) / MMNIST_STD
        return clips[:, None], labels  # (B, 1, T, S, S)


class SwitchingMovingMNIST:
    """VJ-VCR's stochastic MovingMNIST (Drozdov et al. 2024, appendix A): one digit starts at
    the centre of the canvas and moves right for the first `switch_at` frames (3), then turns
    to one of `options` (5) directions psi_k = 2 pi k / options, chosen at random, for the rest.
    psi is measured counter-clockwise from "right" with the y axis pointing up the screen, so
    psi = pi / 2 is "up"; k = 0 keeps going right. Nothing in the first frames tells k.

    Labels: k [B], psi [B], digit identity [B], and the exact (unrounded) top-left corner per
    frame, pos [B, T, 2] as (y, x); the digit is drawn at the rounded corner."""

    def __init__(self, images, labels, num_frames=6, img_size=64, speed=3.0, switch_at=3,
                 options=5):
        room = img_size - images.shape[-1]
        reach = room / 2 - speed * (num_frames - 1)  # the farthest corner stays on the canvas
        if not 0 < switch_at < num_frames or reach < 0:
            raise ValueError(f"a switch after frame {switch_at} of {num_frames} at speed {speed} "
                             f"does not fit a {img_size}-pixel canvas")
        self.images, self.labels = images, labels
        self.num_frames, self.img_size, self.speed = num_frames, img_size, speed
        self.switch_at, self.options = switch_at, options

    def sample(self, batch, generator):
        T, s = self.num_frames, self.speed
        which = torch.randint(len(self.images), (batch,), generator=generator)
        k = torch.randint(self.options, (batch,), generator=generator)
        psi = 2 * math.pi * k.double() / self.options
        t = torch.arange(T, dtype=torch.float64)
        before = t.clamp(max=self.switch_at - 1)  # frames spent moving right
        after = (t - (self.switch_at - 1)).clamp(min=0)  # frames spent in direction psi
        # (y, x) with y down the screen: "right" is (0, 1), direction psi is (-sin, cos)
        direction = torch.stack([-psi.sin(), psi.cos()], -1)  # (B, 2)
        centre = (self.img_size - self.images.shape[-1]) / 2
        pos = (centre + s * before[None, :, None] * torch.tensor([0.0, 1.0], dtype=torch.float64)
               + s * after[None, :, None] * direction[:, None])  # (B, T, 2)
        digits = self.images[which].float()[:, None] / 255
        clips = paste(self.img_size, digits, pos.round().long()[:, None])  # (B, T, S, S)
        labels = {"k": k, "psi": psi.float(), "digits": self.labels[which], "pos": pos.float()}
        return clips[:, None], labels


def check_video_shape(path, shape, num_frames, counted=True):
    """ValueError naming the file unless `shape` is a video [T, H, W(, C)] of >= num_frames
    frames (counted=False, T = 0: a header that does not store the count; not checked)."""
    if len(shape) not in (3, 4) or 0 in shape[1:3]:
        raise ValueError(f"{path} holds an array of shape {tuple(shape)}; expected a video "
                         "[T, H, W] or [T, H, W, C]")
    if (counted or shape[0]) and shape[0] < num_frames:
        raise ValueError(f"{path} has {shape[0]} frames; expected at least "
                         f"num_frames={num_frames}")


class VideoFolder:
    """Real video: every .gif, .mp4, .avi, .webm or .npy ([T, H, W] or [T, H, W, C]) under
    `root`. A clip is `num_frames` frames `stride` apart from a random start (the last frame
    repeats for videos shorter than that span), then one random-resized crop (area scale
    0.3-1, aspect 0.75-1.35) shared by all frames, resized to img_size, a horizontal flip with
    p = 0.5, and ImageNet normalisation. Reading mp4/avi/webm needs `pip install imageio[ffmpeg]`.

    A file that cannot be read, or has fewer than num_frames frames, is skipped: another file
    is drawn in its place from the same generator, so a batch stays a function of the generator
    and of which files are bad (a resumed run sees the same batches). labels["failed"] holds
    the file indices of the replaced draws, labels["index"] those of the clips."""

    EXTENSIONS = (".gif", ".mp4", ".avi", ".webm", ".npy")
    MAX_TRIES = 50  # failed draws in a row for one clip: the folder is broken, not a file

    def __init__(self, root, num_frames=16, img_size=224, in_chans=3, stride=4,
                 scale=(0.3, 1.0), ratio=(0.75, 1.35)):
        self.files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                            if f.lower().endswith(self.EXTENSIONS))
        if not self.files:
            raise FileNotFoundError(f"data_path={root!r} holds no video "
                                    f"({', '.join(self.EXTENSIONS)})")
        self.root, self.num_frames, self.img_size, self.in_chans = (root, num_frames, img_size,
                                                                    in_chans)
        self.stride, self.scale, self.ratio = stride, scale, ratio
        self.bad = {}  # path -> why it cannot be used, so that this process reads it only once
        self.named = set()  # the files warned about

    def read(self, path):
        """-> uint8 array [T, H, W, C]. ValueError naming the file if it cannot be read, holds
        no video, or has fewer than num_frames frames."""
        try:
            if path.endswith(".npy"):
                video = np.load(path)
            else:
                import imageio.v3 as iio
                video = iio.imread(path, index=None)
        except Exception as e:  # numpy and imageio raise many kinds; name the file either way
            raise ValueError(f"cannot read {path}: {' '.join(str(e).split())}") from None
        check_video_shape(path, video.shape, self.num_frames)
        return video[..., None] if video.ndim == 3 else video

    def warn(self, failed):
        """Name each replaced file (labels["failed"]) once, in the training process (a
        DataLoader worker's notes die with it: the file is read again here for its reason)."""
        for path in sorted({self.files[i] for i in failed.tolist()} - self.named):
            self.named.add(path)
            why = self.bad[path] if self.video(path) is None else f"{path} (it reads now)"
            print(f"warning: skipping {why}; another file is drawn in its place (each file is "
                  "named once; all: python tools/check_videos.py --data_path DIR)", file=sys.stderr)

    def video(self, path):
        """read(path), or None if it cannot be used; a bad file is not read again."""
        if path not in self.bad:
            try:
                return self.read(path)
            except ValueError as e:
                self.bad[path] = str(e)
        return None

    def clip(self, video, g):
        """uint8 video [T, H, W, C] -> one augmented clip [C, num_frames, img_size, img_size]."""
        span = (self.num_frames - 1) * self.stride + 1
        start = int(torch.randint(max(len(video) - span, 0) + 1, (1,), generator=g))
        t = np.minimum(start + self.stride * np.arange(self.num_frames), len(video) - 1)
        x = torch.from_numpy(np.ascontiguousarray(video[t][..., :3])).float() / 255  # (T,H,W,C)
        x = x.permute(3, 0, 1, 2)  # (C, T, H, W)
        if x.shape[0] != self.in_chans:  # grey <-> colour
            x = x.mean(0, keepdim=True).expand(self.in_chans, -1, -1, -1)
        H, W = x.shape[-2:]  # area uniform in scale, aspect log-uniform in ratio
        u = float(torch.rand(1, generator=g))
        area = H * W * (self.scale[0] + (self.scale[1] - self.scale[0]) * u)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        log_r = log_lo + (log_hi - log_lo) * float(torch.rand(1, generator=g))
        w = min(W, max(1, round(math.sqrt(area * math.exp(log_r)))))
        h = min(H, max(1, round(math.sqrt(area / math.exp(log_r)))))
        top = int(torch.randint(H - h + 1, (1,), generator=g))
        left = int(torch.randint(W - w + 1, (1,), generator=g))
        x = F.interpolate(x[:, :, top:top + h, left:left + w], size=(self.img_size,) * 2,
                          mode="bilinear", align_corners=False)
        if float(torch.rand(1, generator=g)) < 0.5:
            x = x.flip(-1)
        if self.in_chans == 3:
            mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
            x = (x - mean[:, None, None, None]) / std[:, None, None, None]
        return x

    def sample(self, batch, generator):
        idx = torch.randint(len(self.files), (batch,), generator=generator)
        clips, used, failed = [], [], []
        for i in idx.tolist():
            for _ in range(self.MAX_TRIES):
                video = self.video(self.files[i])  # file IO per clip
                if video is not None:
                    break
                failed.append(i)  # and a replacement from the same generator (see above)
                i = int(torch.randint(len(self.files), (1,), generator=generator))
            else:
                raise ValueError(f"{self.MAX_TRIES} files drawn in a row from {self.root} "
                                 f"cannot be used, the last: {self.bad[self.files[failed[-1]]]}")
            used.append(i)
            clips.append(self.clip(video, generator))
        return torch.stack(clips), {"index": torch.tensor(used),
                                    "failed": torch.tensor(failed, dtype=torch.int64)}


def violation_pairs(source, n, seed, ctx_frames):
    """n one-digit clips of `source` that go straight until frame ctx_frames and bounce off a
    wall after it, and the same clips breaking MovingMNIST from that frame on: the digit jumps
    elsewhere (teleport), becomes another digit's glyph (identity), goes on through the wall
    (pass_through) or stops -> {"normal" | violation: clips [n, 1, T, S, S]}."""
    g, T, c, side = (torch.Generator().manual_seed(seed), source.num_frames, ctx_frames,
                     source.images.shape[-1])
    room, m, lo, hi = source.img_size - side, 16 * n, *source.speed  # m candidates
    angle, speed = torch.rand(m, generator=g) * 2 * math.pi, torch.rand(m, generator=g)
    speed, start = lo + (hi - lo) * speed, torch.rand(m, 2, generator=g) * room
    v = speed[:, None] * torch.stack([angle.sin(), angle.cos()], -1)  # [m, 2]
    line = start[:, None] + v[:, None] * torch.arange(T)[None, :, None]  # unfolded [m, T, 2]
    pos = bounce(line, 0, room)
    sign = torch.randint(2, (m, 1, 2), generator=g) * 2 - 1
    jump = (torch.rand(m, 1, 2, generator=g) * 0.5 + 0.25) * room * sign
    which, other = torch.randint(len(source.images), (2, m), generator=g)
    paths = {"normal": pos, "teleport": bounce(line + jump, 0, room),
             "pass_through": line.clamp(-side, room + side), "stop": pos[:, c - 1:c].expand_as(pos)}
    paths = {k: torch.cat([pos[:, :c], p[:, c:]], 1) for k, p in paths.items()}
    past = torch.maximum(-line[:, -1], line[:, -1] - room).amax(1)  # how far through the wall
    ok = (((line[:, :c] >= 0) & (line[:, :c] <= room)).flatten(1).all(1)
          & (past > min(side, room) / 3)
          & (source.labels[which] != source.labels[other])
          & ((paths["teleport"][:, c] - pos[:, c]).abs().amax(1) > room / 4))
    if int(ok.sum()) < n:
        raise ValueError(f"only {int(ok.sum())} of {m} candidate clips go straight for {c} "
                         f"frames, then bounce in {T - c}; {n} asked: the future is too short")
    keep = ok.nonzero()[:n, 0]

    def draw(path, digit):  # on a canvas one digit wider each side: a digit past a wall is cut
        glyphs = source.images[digit[keep], None].float() / 255
        corner = (path[keep, None] + side).round().long()
        clip = paste(source.img_size + 2 * side, glyphs, corner)
        clip = clip[:, None, :, side:-side, side:-side]
        return (clip - MMNIST_MEAN) / MMNIST_STD if source.normalise else clip

    clips = {k: draw(path, which) for k, path in paths.items()}
    clips["identity"] = torch.cat([clips["normal"][:, :, :c], draw(pos, other)[:, :, c:]], 2)
    return clips


# ----------------------------------------------------------------------------------------------
# Batches by step

def step_seed(seed, rank, step, stream=0):
    """A well-mixed 63-bit seed for one (run seed, rank, step); `stream` separates independent
    uses in one step (0: the clips, 1: the masks, 2: infer_latent.restart_unused_options)."""
    state = np.random.SeedSequence([seed, rank, step, stream]).generate_state(1, np.uint64)
    return int(state[0] >> 1)


class StepBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item `step` is the whole batch of that step on this rank.
    Use with DataLoader(batch_size=None, sampler=range(first_step, last_step))."""

    def __init__(self, source, batch_size, seed, rank=0):
        self.source, self.batch_size, self.seed, self.rank = source, batch_size, seed, rank

    def __getitem__(self, step):
        g = torch.Generator().manual_seed(step_seed(self.seed, self.rank, step))
        return self.source.sample(self.batch_size, g)


def fixed_chunks(source, n, seed, chunk=256):
    """The clips of `fixed_set` one chunk at a time: yields (clips, labels) of at most `chunk`
    clips, so a large evaluation set never has to be held in memory at once."""
    g = torch.Generator().manual_seed(seed)
    for i in range(0, n, chunk):
        yield source.sample(min(chunk, n - i), g)


def fixed_set(source, n, seed, chunk=256):
    """A fixed seeded set of n clips (for validation), made in chunks. -> (clips, labels)."""
    clips, labels = zip(*fixed_chunks(source, n, seed, chunk))
    return torch.cat(clips), {k: torch.cat([lab[k] for lab in labels]) for k in labels[0]}


def make_source(cfg, part="train", digits=None):
    """The clip source of cfg.dataset; `digits` (images, labels) saves loading MNIST again."""
    if cfg.dataset == "two_rooms":  # V-JEPA 2-AC's world lives with its planner
        return plan.TwoRooms(cfg.num_frames, cfg.tubelet_size)
    if cfg.dataset in ("movingmnist", "switching_mnist"):
        images, labels = split_digits(*(digits or load_digits(cfg.mnist_dir)), part)
        if cfg.dataset == "switching_mnist":
            return SwitchingMovingMNIST(images, labels, cfg.num_frames, cfg.img_size,
                                        switch_at=cfg.mask_ctx_frames)
        return MovingMNIST(images, labels, cfg.num_frames, cfg.img_size, cfg.num_digits,
                           normalise=cfg.normalise)
    return VideoFolder(cfg.data_path, cfg.num_frames, cfg.img_size, cfg.in_chans)


# ----------------------------------------------------------------------------------------------
# Checkpoint files: the release's format ({"encoder" | "target_encoder" | "predictor": state
# dict, keys prefixed as the release's}, ...), plus what a resume needs (read: model.py)

def previous_path(path):
    """Where the checkpoint before the latest is kept: out/ckpt.pt -> out/ckpt_prev.pt."""
    return "{}_prev{}".format(*os.path.splitext(path))


def atomic_save(obj, path, keep_previous=False):
    """torch.save to a temporary file, synced, then renamed: neither a crash nor a power loss
    leaves half a file at `path`; keep_previous: the file it replaces goes to previous_path."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())  # else some filesystems may store the rename before the data
    if keep_previous and os.path.exists(path):
        os.replace(path, previous_path(path))
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # the renames too (POSIX; Windows cannot open a folder)
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def release_state(nets):
    """{name: module} -> {name: its state dict, keys prefixed as the release's}."""
    return {name: {model.RELEASE_PREFIX + k: v for k, v in net.state_dict().items()}
            for name, net in nets.items()}


def save_checkpoint(path, nets, opt, config, step, loss, world, lr):
    """The release format (networks, opt, epoch, loss, batch_size, world_size, lr) plus config,
    step and RNG states; the checkpoint it replaces is kept at previous_path(path)."""
    atomic_save({**release_state(nets), "opt": opt.state_dict(), "scaler": None,
                 "epoch": 0,  # the release format has it; batches here are indexed by step
                 "loss": loss, "batch_size": config["batch_size"], "world_size": world,
                 "lr": lr, "config": config, "step": step,
                 "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                         "python": random.getstate()}}, path, keep_previous=True)


def resume(path, nets, opt, config, arch_keys):
    """Load OUT_DIR/ckpt.pt, or the one before it (with a warning) when it cannot be read, into
    `nets` and `opt`, strictly: the same values of `arch_keys` as `config`, every tensor of the
    same shape; the RNG states too. -> (its step, the path read)"""
    prev = previous_path(path)
    if not os.path.exists(path) and not os.path.exists(prev):
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    for used in (path, prev):
        try:
            state = model.read_checkpoint(used)
            missing = [k for k in ("config", "step", "opt", "rng") if k not in state]
            if missing:
                raise ValueError(f"{used} is not a checkpoint of train.py: no {missing}")
            break
        except (ValueError, OSError) as e:
            why = f"cannot read {used} ({' '.join(str(e).split()).removeprefix(used + ' ')})"
            if used == prev or not os.path.exists(prev):
                raise ValueError(f"--resume: {why}") from None
            print(f"warning: --resume: {why}; resuming from the previous checkpoint {prev}",
                  file=sys.stderr)
    diff = [f"{k}={state['config'].get(k)!r} (this run: {config[k]!r})" for k in arch_keys
            if state["config"].get(k) != config[k]]
    if diff:
        raise ValueError(f"--resume: {used} is from another architecture: {', '.join(diff)}")
    try:
        for name, net in nets.items():
            net.load_state_dict(state[name], strict=True)
    except (KeyError, RuntimeError) as e:  # a file edited by hand: the architecture matches
        raise ValueError(f"--resume: {used}: {' '.join(str(e).split())}") from None
    opt.load_state_dict(state["opt"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["step"], used
