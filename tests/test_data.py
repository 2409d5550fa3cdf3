"""Tests of data.py: MNIST loading, procedural digits, MovingMNIST, the MovingMNIST file,
video folders and step-seeded batches. Every check is against an independent reference
(a hand-written IDX parser, a brute-force bouncing simulation, a naive paste loop, ...)."""
import gzip
import math
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import data
from conftest import SHARED_MNIST

# The MNIST test set (t10k-*.gz): $VJEPA_TEST_MNIST, else the shared copy beside the project
# (conftest.SHARED_MNIST); the tests that read real digits skip without it.
MNIST_DIR = Path(os.environ.get("VJEPA_TEST_MNIST") or SHARED_MNIST).resolve()
T10K = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# Class counts of the MNIST test set (published with the data set).
T10K_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """No test may download or touch ~/.cache: offline, no $MNIST_DIR, an empty cache dir."""
    monkeypatch.setenv("VJEPA_OFFLINE", "1")
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setattr(data, "DEFAULT_CACHE", str(tmp_path_factory.mktemp("empty_cache")))
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def mnist_dir():
    if not all((MNIST_DIR / f).exists() for f in T10K):
        pytest.skip(f"no MNIST test set at {MNIST_DIR} (set $VJEPA_TEST_MNIST)")
    return MNIST_DIR


@pytest.fixture(scope="module")
def small_digits():
    """A few procedural digits (fast), for the sources that need digit images."""
    return data.procedural_digits(per_class=5, seed=0)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Independent references

def parse_idx(path):
    """A plain IDX reader written from the format description (big-endian header)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    assert zero == 0 and dtype == 0x08
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    assert len(body) == math.prod(shape)
    return np.frombuffer(body, np.uint8).reshape(shape)


def brute_bounce(x0, v, T, low, high, substeps=50):
    """A point starting at x0 in [low, high] moving with velocity v, advanced in small
    sub-steps; whenever it leaves [low, high] it is mirrored back and its velocity flips.
    Returns the positions at integer times 0..T-1 as [..., T] (float64, elementwise)."""
    p = np.array(x0, dtype=np.float64, copy=True)
    v = np.broadcast_to(np.asarray(v, dtype=np.float64), p.shape).copy()
    dt = 1.0 / substeps
    assert np.all(np.abs(v) * dt < high - low), "sub-step too large for this simulation"
    out = [p.copy()]
    for _ in range(1, T):
        for _ in range(substeps):
            p += v * dt
            over, under = p > high, p < low
            p[over] = 2 * high - p[over]
            v[over] = -v[over]
            p[under] = 2 * low - p[under]
            v[under] = -v[under]
        out.append(p.copy())
    return np.stack(out, -1)


def naive_paste(S, images, top_left):
    """Loop version of paste: each digit written into a zero canvas with np.maximum."""
    images, top_left = np.asarray(images), np.asarray(top_left)
    B, n, h, w = images.shape
    T = top_left.shape[2]
    canvas = np.zeros((B, T, S, S), dtype=np.float32)
    for b in range(B):
        for t in range(T):
            for k in range(n):
                y, x = top_left[b, k, t]
                region = canvas[b, t, y:y + h, x:x + w]
                canvas[b, t, y:y + h, x:x + w] = np.maximum(region, images[b, k])
    return canvas


# ----------------------------------------------------------------------------------------------
# 1. Loading the real MNIST files

def test_read_idx_matches_hand_parser(mnist_dir):
    """read_idx gives the same arrays as a hand-written IDX parser: [10000,28,28] and [10000]."""
    images = data.read_idx(str(mnist_dir / T10K[0]))
    labels = data.read_idx(str(mnist_dir / T10K[1]))
    assert images.dtype == np.uint8 and images.shape == (10000, 28, 28)
    assert labels.dtype == np.uint8 and labels.shape == (10000,)
    np.testing.assert_array_equal(images, parse_idx(mnist_dir / T10K[0]))
    np.testing.assert_array_equal(labels, parse_idx(mnist_dir / T10K[1]))


def test_load_digits_explicit_dir(mnist_dir):
    """load_digits(mnist_dir): uint8 [10000,28,28] images, int64 labels, known first labels
    and the published per-class counts of the test set."""
    images, labels = data.load_digits(str(mnist_dir))
    assert isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
    assert images.dtype == torch.uint8 and images.shape == (10000, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (10000,)
    assert labels.min() >= 0 and labels.max() <= 9
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(labels, minlength=10).tolist() == T10K_COUNTS
    np.testing.assert_array_equal(images.numpy(), parse_idx(mnist_dir / T10K[0]))
    # a Path works as well as a str
    images2, labels2 = data.load_digits(mnist_dir)
    assert torch.equal(images, images2) and torch.equal(labels, labels2)


def test_load_digits_from_env_var(mnist_dir, monkeypatch):
    """With no argument, $MNIST_DIR names the directory to read."""
    monkeypatch.setenv("MNIST_DIR", str(mnist_dir))
    images, labels = data.load_digits("")
    assert images.shape == (10000, 28, 28)
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]


# ----------------------------------------------------------------------------------------------
# 2. Corrupt or missing files

@pytest.mark.parametrize("which", [0, 1])
def test_load_digits_corrupt_file(mnist_dir, tmp_path, which):
    """One flipped byte in either file -> ValueError naming that file."""
    for f in T10K:
        shutil.copy(mnist_dir / f, tmp_path / f)
    bad = tmp_path / T10K[which]
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError) as e:
        data.load_digits(str(tmp_path))
    assert str(bad) in str(e.value)


def test_load_digits_missing_files(tmp_path, monkeypatch):
    """An explicit directory (argument or $MNIST_DIR) without both files of a split ->
    FileNotFoundError naming the directory, never a silent fallback."""
    with pytest.raises(FileNotFoundError) as e:
        data.load_digits(str(tmp_path))
    assert str(tmp_path) in str(e.value)
    # only one of the two files of a split is not enough either
    (tmp_path / T10K[0]).write_bytes(b"")
    with pytest.raises(FileNotFoundError) as e:
        data.load_digits(str(tmp_path))
    assert str(tmp_path) in str(e.value)
    monkeypatch.setenv("MNIST_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        data.load_digits("")
    assert str(tmp_path) in str(e.value)


# ----------------------------------------------------------------------------------------------
# 3. Offline fallback: procedural digits

def test_load_digits_offline_fallback(tmp_path, monkeypatch, capsys):
    """No files, no $MNIST_DIR, offline: procedural digits (600 a class by default), a one-line
    warning on stderr, and nothing written to the cache directory."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(data, "DEFAULT_CACHE", str(cache))
    images, labels = data.load_digits("")
    assert images.dtype == torch.uint8 and images.shape == (6000, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (6000,)
    assert torch.bincount(labels, minlength=10).tolist() == [600] * 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n") and "warning" in err.lower()
    assert list(cache.iterdir()) == []


def test_procedural_digits_content():
    """procedural_digits: uint8 [10*per_class,28,28], every class, every image has ink with a
    sane mean, and the classes are told apart by a nearest-class-mean rule on a new seed."""
    images, labels = data.procedural_digits(per_class=20, seed=0)
    assert images.dtype == torch.uint8 and images.shape == (200, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (200,)
    assert torch.bincount(labels, minlength=10).tolist() == [20] * 10
    f = images.float()
    assert (f.amax((1, 2)) > 100).all()
    mean = f.mean((1, 2))
    assert ((mean > 5) & (mean < 90)).all()
    # the border (as in MNIST, digits sit in a 20x20 box) is nearly empty
    assert f[:, :2].mean() < 5 and f[:, -2:].mean() < 5
    # classes are distinguishable: nearest class mean, fitted on seed 0, tested on seed 1
    centroids = torch.stack([f[labels == c].mean(0) for c in range(10)])
    test_images, test_labels = data.procedural_digits(per_class=20, seed=1)
    d = ((test_images.float()[:, None] - centroids[None]) ** 2).sum((2, 3))
    assert (d.argmin(1) == test_labels).float().mean() > 0.8


def test_procedural_digits_seeded():
    """Same seed -> identical digits; another seed -> different digits."""
    a = data.procedural_digits(per_class=20, seed=3)
    b = data.procedural_digits(per_class=20, seed=3)
    c = data.procedural_digits(per_class=20, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


# ----------------------------------------------------------------------------------------------
# 4. split_digits

def test_split_digits_mnist_counts():
    """60000 digits -> 55000 train (the first) and 5000 val (the last)."""
    images = torch.zeros(60000, 1)
    labels = torch.arange(60000)
    ti, tl = data.split_digits(images, labels, "train")
    vi, vl = data.split_digits(images, labels, "val")
    assert len(ti) == len(tl) == 55000 and len(vi) == len(vl) == 5000
    assert torch.equal(tl, torch.arange(55000)) and torch.equal(vl, torch.arange(55000, 60000))


@pytest.mark.parametrize("n", list(range(1, 40)) + [119, 120, 121, 10000])
def test_split_digits_partition(n):
    """The last n//12 are held out; train and val are disjoint and together are everything."""
    images = torch.arange(n)[:, None]
    labels = torch.arange(n) * 7
    ti, tl = data.split_digits(images, labels, "train")
    vi, vl = data.split_digits(images, labels, "val")
    held = n // 12
    assert torch.equal(ti[:, 0], torch.arange(n - held))
    assert torch.equal(vi[:, 0], torch.arange(n - held, n))
    assert torch.equal(tl, ti[:, 0] * 7) and torch.equal(vl, vi[:, 0] * 7)
    assert set(ti[:, 0].tolist()).isdisjoint(vi[:, 0].tolist())


# ----------------------------------------------------------------------------------------------
# 5. bounce

@pytest.mark.parametrize("low,high", [(0.0, 36.0), (-3.0, 5.0), (2.0, 2.5)])
def test_bounce_matches_simulation(low, high):
    """bounce(start + v t) equals a point reflected off the walls by a sub-stepped simulation,
    for many random starts and velocities; all positions lie in [low, high]."""
    rng = np.random.default_rng(0)
    span = high - low
    n, T = 400, 30
    start = rng.uniform(low, high, n)
    v = rng.uniform(-3, 3, n) * span / 4  # up to 0.75 spans a frame: several bounces
    v[:5] = 0.0  # still points
    substeps = int(np.ceil(np.abs(v).max() / span * 4)) + 1
    expected = brute_bounce(start, v, T, low, high, substeps=max(substeps, 20))
    t = torch.arange(T, dtype=torch.float64)
    got = data.bounce(torch.from_numpy(start)[:, None] + torch.from_numpy(v)[:, None] * t,
                      low, high).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(span, 1), rtol=0)
    assert got.min() >= low and got.max() <= high


def test_bounce_walls_and_far_points():
    """Closed-form points: the walls are fixed, mirror images beyond them, and whole periods."""
    x = torch.tensor([0.0, 10.0, 13.0, -3.0, 20.0, 23.0, 40.0, -17.0])
    expected = [0.0, 10.0, 7.0, 3.0, 0.0, 3.0, 0.0, 3.0]
    assert torch.allclose(data.bounce(x, 0, 10), torch.tensor(expected))
    # a shifted interval
    assert torch.allclose(data.bounce(x + 5, 5, 15), torch.tensor(expected) + 5)


# ----------------------------------------------------------------------------------------------
# 6. paste

@pytest.mark.parametrize("h,w,S", [(5, 5, 12), (3, 4, 9), (28, 28, 64)])
def test_paste_matches_loop(h, w, S):
    """paste equals writing each digit into a zero canvas with np.maximum at its (y, x)."""
    g = gen(1)
    B, n, T = 2, 3, 3
    images = torch.rand(B, n, h, w, generator=g)
    images[images < 0.3] = 0  # some background, like real digits
    ty = torch.randint(0, S - h + 1, (B, n, T, 1), generator=g)
    tx = torch.randint(0, S - w + 1, (B, n, T, 1), generator=g)
    top_left = torch.cat([ty, tx], -1)
    top_left[0, 1] = top_left[0, 0]  # two digits exactly on top of each other
    got = data.paste(S, images, top_left)
    assert got.shape == (B, T, S, S)
    np.testing.assert_array_equal(got.numpy(), naive_paste(S, images.numpy(), top_left.numpy()))


# ----------------------------------------------------------------------------------------------
# 7. MovingMNIST

def test_moving_mnist_shapes_values_and_seeding(small_digits):
    """Clips [B,1,T,64,64] in [0,1]; same generator seed -> same clips and labels, another seed
    -> different; speed = |velocity| inside the speed range."""
    images, labels = small_digits
    mm = data.MovingMNIST(images, labels, num_frames=10, img_size=64, num_digits=2,
                          speed=(1.5, 3.0))
    clips, lab = mm.sample(4, gen(0))
    assert clips.shape == (4, 1, 10, 64, 64) and clips.dtype == torch.float32
    assert clips.min() >= 0 and clips.max() <= 1 and clips.max() > 0.5
    assert lab["speed"].shape == (4, 2) and lab["velocity"].shape == (4, 2, 2)
    assert lab["digits"].shape == (4, 2)
    assert torch.allclose(lab["velocity"].norm(dim=-1), lab["speed"], atol=1e-5)
    assert ((lab["speed"] >= 1.5) & (lab["speed"] <= 3.0)).all()
    clips2, lab2 = mm.sample(4, gen(0))
    assert torch.equal(clips, clips2)
    assert all(torch.equal(lab[k], lab2[k]) for k in lab)
    clips3, lab3 = mm.sample(4, gen(1))
    assert not torch.equal(clips, clips3)
    assert not torch.equal(lab["velocity"], lab3["velocity"])


def squares(levels):
    """'Digits' that are full 28x28 squares of the given grey levels."""
    return torch.stack([torch.full((28, 28), v, dtype=torch.uint8) for v in levels])


def test_moving_mnist_digit_labels():
    """labels['digits'] are the labels of the images drawn: each image is a square of its own
    grey level, so the grey levels in a clip tell which images were drawn."""
    perm = [3, 7, 0, 9, 1, 5, 2, 8, 4, 6]
    images = squares([25 * (i + 1) for i in range(10)])
    labels = torch.tensor(perm)
    level_of_label = {perm[i]: 25 * (i + 1) for i in range(10)}
    mm = data.MovingMNIST(images, labels, num_frames=6, img_size=64, num_digits=2)
    clips, lab = mm.sample(12, gen(2))
    for b in range(12):
        levels = set((clips[b] * 255).round().long().unique().tolist()) - {0}
        assert levels == {level_of_label[d] for d in lab["digits"][b].tolist()}


@pytest.mark.parametrize("num_digits", [1, 2])
def test_moving_mnist_motion_matches_brute_force(num_digits):
    """Each 'digit' is a full square of its own grey level, so the brightest one drawn in a clip
    is fully visible and its top-left in each frame is the bounding box of its level. That
    top-left must follow a point moving with that digit's label velocity (vy, vx), reflected
    off the walls [0, 64-28] and rounded. The exact sub-pixel start is unknown (frame 0 shows it
    rounded), so we check that some start within half a pixel of frame 0's top-left explains
    every frame. With two digits this also ties the order of 'digits' to that of 'velocity'."""
    perm = [3, 7, 0, 9, 1, 5, 2, 8, 4, 6]
    level_of_label = {perm[i]: 25 * (i + 1) for i in range(10)}
    mm = data.MovingMNIST(squares([25 * (i + 1) for i in range(10)]), torch.tensor(perm),
                          num_frames=40, img_size=64, num_digits=num_digits, speed=(2.0, 4.0))
    B, T, room = 10, 40, 64 - 28
    clips, lab = mm.sample(B, gen(3))
    grey = (clips[:, 0] * 255).round().long().numpy()
    top_left, velocity = [], []
    for b in range(B):
        levels = [level_of_label[d] for d in lab["digits"][b].tolist()]
        if len(set(levels)) < num_digits:
            continue  # the same image twice: cannot tell which velocity is whose
        k = int(np.argmax(levels))
        tl = np.zeros((T, 2), dtype=np.int64)
        for t in range(T):
            ys, xs = np.nonzero(grey[b, t] == levels[k])
            assert len(ys) == 28 * 28 and ys.max() - ys.min() == 27 and xs.max() - xs.min() == 27
            tl[t] = ys.min(), xs.min()
        top_left.append(tl)
        velocity.append(lab["velocity"][b, k].double().numpy())
    assert len(top_left) >= B - 2
    top_left, velocity = np.stack(top_left), np.stack(velocity)  # (b, T, 2), (b, 2) as (vy, vx)
    assert top_left.min() >= 0 and top_left.max() <= room
    offsets = np.linspace(-0.5, 0.5, 2001)
    starts = top_left[:, 0, :, None] + offsets  # (b, 2, G)
    paths = brute_bounce(starts, velocity[:, :, None], T, 0.0, float(room), substeps=20)
    consistent = (np.round(paths) == top_left.transpose(0, 2, 1)[:, :, None, :]).all(-1)
    assert consistent.any(-1).all(), consistent.any(-1)
    # the test is only meaningful if the squares did bounce
    direction_changes = np.diff(np.sign(np.diff(top_left, axis=1)), axis=1)
    assert (np.abs(direction_changes) == 2).any()


def test_moving_mnist_pos_label_is_where_the_digit_is_drawn():
    """labels['pos'] [B, n, T, 2] is each digit's unrounded top-left (y, x) per frame: with solid
    squares of distinct grey levels, the brightest square of a clip is fully visible and its
    rounded pos is the top-left of the pixels of its level, in every frame."""
    perm = [3, 7, 0, 9, 1, 5, 2, 8, 4, 6]
    level_of_label = {perm[i]: 25 * (i + 1) for i in range(10)}
    for n in (1, 2):
        mm = data.MovingMNIST(squares([25 * (i + 1) for i in range(10)]), torch.tensor(perm),
                              num_frames=6, img_size=64, num_digits=n)
        clips, lab = mm.sample(8, gen(5))
        pos = lab["pos"]
        assert pos.shape == (8, n, 6, 2) and pos.dtype == torch.float32
        assert pos.min() >= 0 and pos.max() <= 64 - 28
        assert (pos != pos.round()).any()  # unrounded
        grey = (clips[:, 0] * 255).round().long()
        checked = 0
        for b in range(8):
            levels = [level_of_label[d] for d in lab["digits"][b].tolist()]
            if len(set(levels)) < n:
                continue  # the same image twice: cannot tell which pos is whose
            k = int(np.argmax(levels))
            checked += 1
            for t in range(6):
                ys, xs = torch.nonzero(grey[b, t] == levels[k], as_tuple=True)
                assert len(ys) == 28 * 28
                assert pos[b, k, t].round().long().tolist() == [ys.min().item(), xs.min().item()]
        assert checked >= 6


def test_moving_mnist_normalise(small_digits):
    """normalise=True: the same clips (same generator seed) as (x - MMNIST_MEAN) / MMNIST_STD,
    with the same labels."""
    images, labels = small_digits
    kwargs = dict(num_frames=5, img_size=40, num_digits=2)
    raw, lab = data.MovingMNIST(images, labels, **kwargs).sample(3, gen(7))
    norm, lab2 = data.MovingMNIST(images, labels, normalise=True, **kwargs).sample(3, gen(7))
    assert torch.allclose(norm, (raw - data.MMNIST_MEAN) / data.MMNIST_STD, atol=1e-6)
    assert all(torch.equal(lab[k], lab2[k]) for k in lab)
    assert not data.MovingMNIST(images, labels, **kwargs).normalise  # off by default


def test_mmnist_mean_and_std_are_those_of_two_digit_clips(mnist_dir):
    """MMNIST_MEAN and MMNIST_STD are the pixel mean and std of two-digit 64x64 MovingMNIST
    clips of real MNIST digits (to about 5%)."""
    images, labels = data.load_digits(str(mnist_dir))
    clips, _ = data.MovingMNIST(images, labels, num_frames=10, img_size=64,
                                num_digits=2).sample(200, gen(8))
    assert float(clips.mean()) == pytest.approx(data.MMNIST_MEAN, rel=0.05)
    assert float(clips.std()) == pytest.approx(data.MMNIST_STD, rel=0.05)


def test_moving_mnist_start_and_velocity_distribution():
    """Over many clips: the start (top-left in frame 0) covers the whole range [0, 64-28] with
    mean at its middle, speeds are uniform in the range (mean in the middle), and directions are
    uniform (a quarter in each quadrant)."""
    mm = data.MovingMNIST(squares([255]), torch.tensor([1]), num_frames=1, img_size=64,
                          num_digits=1, speed=(1.0, 4.0))
    N, room = 4000, 36
    clips, lab = mm.sample(N, gen(11))
    ink = clips[:, 0, 0] > 0  # (N, 64, 64)
    y0 = ink.any(2).float().argmax(1)
    x0 = ink.any(1).float().argmax(1)
    for c in (y0, x0):
        assert c.min() == 0 and c.max() == room
        assert abs(c.float().mean().item() - room / 2) < 0.6  # sd of the mean: 0.16
    speed = lab["speed"][:, 0]
    assert speed.min() >= 1.0 and speed.max() <= 4.0
    assert abs(speed.mean().item() - 2.5) < 0.06  # sd of the mean: 0.014
    vy, vx = lab["velocity"][:, 0].unbind(-1)
    for qy in (vy > 0, vy <= 0):
        for qx in (vx > 0, vx <= 0):
            assert abs((qy & qx).float().mean().item() - 0.25) < 0.03  # sd: 0.007


def test_moving_mnist_too_small_canvas(small_digits):
    """A canvas smaller than a digit is refused."""
    images, labels = small_digits
    with pytest.raises(ValueError):
        data.MovingMNIST(images, labels, img_size=27)


def test_moving_mnist_canvas_equal_to_digit(small_digits):
    """A canvas exactly the size of a digit is accepted by the constructor (only smaller ones
    are refused), so sampling must work: the digit then simply sits still at (0, 0)."""
    images, labels = small_digits
    mm = data.MovingMNIST(images, labels, num_frames=3, img_size=28, num_digits=1)
    clips, lab = mm.sample(2, gen(0))
    assert clips.shape == (2, 1, 3, 28, 28)
    digits = images.float() / 255
    for b in range(2):
        frame = clips[b, 0, 0]
        assert torch.equal(clips[b, 0], frame.expand(3, 28, 28))
        matches = [j for j in range(len(images)) if torch.equal(frame, digits[j])]
        assert matches and lab["digits"][b, 0].item() in labels[matches].tolist()


# ----------------------------------------------------------------------------------------------
# 9. VideoFolder

LEVEL = 8  # frame k of the test videos has constant brightness LEVEL * k


def constant_frames(T, H, W, C=None):
    shape = (H, W) if C is None else (H, W, C)
    return np.stack([np.full(shape, LEVEL * k, dtype=np.uint8) for k in range(T)])


def frame_indices(clip, in_chans):
    """Recover the source frame index of each output frame of a clip [C, T, S, S] made from
    constant-brightness frames (undoing the ImageNet normalisation for 3 channels)."""
    x = clip.double()
    if in_chans == 3:
        mean = torch.tensor(data.IMAGENET_MEAN, dtype=torch.float64)[:, None, None, None]
        std = torch.tensor(data.IMAGENET_STD, dtype=torch.float64)[:, None, None, None]
        x = x * std + mean
    level = x * 255 / LEVEL
    per_frame = level.mean((0, 2, 3))
    # every pixel of every channel of a frame has the same value
    assert (level - per_frame[None, :, None, None]).abs().max() < 1e-3
    idx = per_frame.round()
    assert (per_frame - idx).abs().max() < 1e-3
    return idx.long().tolist()


@pytest.fixture
def video_dir(tmp_path):
    import imageio.v3 as iio
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    iio.imwrite(root / "a.gif", constant_frames(30, 40, 48, 3))
    np.save(root / "sub" / "b.npy", constant_frames(30, 36, 44))
    (root / "notes.txt").write_text("not a video")
    return root


def test_video_folder_reads_files(video_dir):
    """Both files (one in a sub-folder) are found, the .txt is not; read gives [T,H,W,C] uint8
    with the written frames."""
    vf = data.VideoFolder(str(video_dir), num_frames=4, img_size=16)
    assert [Path(f).name for f in vf.files] == ["a.gif", "b.npy"]
    gif = vf.read(vf.files[0])
    assert gif.shape[:3] == (30, 40, 48) and gif.shape[3] in (3, 4)
    np.testing.assert_array_equal(gif[..., :3], constant_frames(30, 40, 48, 3))
    npy = vf.read(vf.files[1])
    assert npy.shape == (30, 36, 44, 1)
    np.testing.assert_array_equal(npy[..., 0], constant_frames(30, 36, 44))


@pytest.mark.parametrize("in_chans", [3, 1])
def test_video_folder_sample_stride(video_dir, in_chans):
    """sample -> [B, C, num_frames, S, S]; output frames are `stride` source frames apart
    from a start that leaves room for the whole span; same seed -> same clips."""
    num_frames, stride, T = 8, 3, 30
    vf = data.VideoFolder(str(video_dir), num_frames=num_frames, img_size=20, in_chans=in_chans,
                          stride=stride)
    clips, lab = vf.sample(6, gen(0))
    assert clips.shape == (6, in_chans, num_frames, 20, 20) and clips.dtype == torch.float32
    assert set(lab["index"].tolist()) <= {0, 1}
    starts = set()
    for b in range(6):
        idx = frame_indices(clips[b], in_chans)
        start = idx[0]
        assert 0 <= start <= T - ((num_frames - 1) * stride + 1)
        assert idx == [start + stride * j for j in range(num_frames)]
        starts.add(start)
    assert len(starts) > 1  # the start is random
    clips2, lab2 = vf.sample(6, gen(0))
    assert torch.equal(clips, clips2) and torch.equal(lab["index"], lab2["index"])
    clips3, _ = vf.sample(6, gen(1))
    assert not torch.equal(clips, clips3)


def test_video_folder_short_video_repeats_last_frame(tmp_path):
    """When the span is longer than the video, frames start at 0 and the last one repeats."""
    np.save(tmp_path / "v.npy", constant_frames(30, 24, 24))
    vf = data.VideoFolder(str(tmp_path), num_frames=12, img_size=8, in_chans=1, stride=3)
    clips, _ = vf.sample(3, gen(0))
    assert clips.shape == (3, 1, 12, 8, 8)
    for b in range(3):
        assert frame_indices(clips[b], 1) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29, 29]


def test_video_folder_crop_shared_and_flip(tmp_path):
    """One crop for all frames of a clip (a still video gives identical frames), and a random
    horizontal flip: an image bright on the right comes out increasing in x or decreasing in x,
    and both happen over a batch."""
    ramp = (np.arange(48) * 5).astype(np.uint8)
    still = np.broadcast_to(ramp, (10, 40, 48)).copy()
    np.save(tmp_path / "ramp.npy", still)
    vf = data.VideoFolder(str(tmp_path), num_frames=4, img_size=16, in_chans=1, stride=2)
    clips, _ = vf.sample(16, gen(5))
    directions = set()
    for b in range(16):
        c = clips[b, 0]
        assert torch.allclose(c, c[:1].expand_as(c), atol=1e-6)  # same crop in every frame
        assert torch.allclose(c, c[:, :1].expand_as(c), atol=1e-5)  # rows stay equal
        d = c[0, 0, 1:] - c[0, 0, :-1]
        assert (d > 0).all() or (d < 0).all()
        directions.add(bool((d > 0).all()))
    assert directions == {True, False}


def test_video_folder_empty(tmp_path):
    """A folder with no video -> FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        data.VideoFolder(str(tmp_path))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(FileNotFoundError):
        data.VideoFolder(str(tmp_path))


# ----------------------------------------------------------------------------------------------
# 10. StepBatches, step_seed, fixed_set

def test_step_seed_range_and_distinct():
    """step_seed is a non-negative int < 2**63, and distinct across seeds, ranks, steps and
    streams (no collisions over a grid); deterministic."""
    seen = {}
    for seed in range(3):
        for rank in range(3):
            for step in range(6):
                for stream in range(2):
                    s = data.step_seed(seed, rank, step, stream)
                    assert type(s) is int and 0 <= s < 2 ** 63
                    assert s == data.step_seed(seed, rank, step, stream)
                    seen[(seed, rank, step, stream)] = s
    assert len(set(seen.values())) == len(seen)
    assert data.step_seed(0, 0, 5) == data.step_seed(0, 0, 5, 0)
    assert data.step_seed(0, 0, 5, 0) != data.step_seed(0, 0, 5, 1)


def test_step_batches(small_digits):
    """The batch of a step is a pure function of (seed, rank, step)."""
    images, labels = small_digits
    src = data.MovingMNIST(images, labels, num_frames=4, img_size=40)
    sb = data.StepBatches(src, 4, seed=0, rank=0)
    a, la = sb[5]
    b, lb = sb[5]
    assert a.shape == (4, 1, 4, 40, 40)
    assert torch.equal(a, b) and all(torch.equal(la[k], lb[k]) for k in la)
    assert torch.equal(a, data.StepBatches(src, 4, seed=0, rank=0)[5][0])  # a new object
    assert not torch.equal(a, sb[6][0])
    assert not torch.equal(a, data.StepBatches(src, 4, seed=0, rank=1)[5][0])
    assert not torch.equal(a, data.StepBatches(src, 4, seed=1, rank=0)[5][0])
    # independent of what was drawn before (no shared generator state)
    torch.rand(100)
    sb[0], sb[1]
    assert torch.equal(a, sb[5][0])


def test_fixed_set(small_digits):
    """fixed_set(n=70, chunk=32): 70 clips with labels concatenated over the chunks
    (32 + 32 + 6 drawn from one generator in turn), reproducible, seed-dependent."""
    images, labels = small_digits
    src = data.MovingMNIST(images, labels, num_frames=3, img_size=32)
    clips, lab = data.fixed_set(src, 70, seed=7, chunk=32)
    assert clips.shape == (70, 1, 3, 32, 32)
    assert lab["speed"].shape == (70, 2) and lab["velocity"].shape == (70, 2, 2)
    assert lab["digits"].shape == (70, 2)
    clips2, lab2 = data.fixed_set(src, 70, seed=7, chunk=32)
    assert torch.equal(clips, clips2) and all(torch.equal(lab[k], lab2[k]) for k in lab)
    g = gen(7)
    parts = [src.sample(k, g) for k in (32, 32, 6)]
    assert torch.equal(clips, torch.cat([p[0] for p in parts]))
    for k in lab:
        assert torch.equal(lab[k], torch.cat([p[1][k] for p in parts]))
    clips3, _ = data.fixed_set(src, 70, seed=8, chunk=32)
    assert not torch.equal(clips, clips3)


# ----------------------------------------------------------------------------------------------
# Stochastic (switching) MovingMNIST

def test_switching_mnist_directions_and_first_frames(small_digits):
    images, labels = small_digits
    src = data.SwitchingMovingMNIST(images, labels, num_frames=6, img_size=64, speed=3.0,
                                    switch_at=3)
    clips, lab = src.sample(500, gen(3))
    assert clips.shape == (500, 1, 6, 64, 64)
    pos, k = lab["pos"].double(), lab["k"]
    assert set(k.tolist()) == {0, 1, 2, 3, 4}
    assert torch.equal(lab["psi"], (2 * math.pi * k.double() / 5).float())
    assert torch.allclose(pos[:, 0], torch.full((500, 2), 18.0, dtype=torch.float64))  # centre
    step = pos[:, 1:] - pos[:, :-1]  # (B, 5, 2) as (dy, dx)
    # the first 3 frames move right by exactly 3 pixels a frame
    assert torch.allclose(step[:, :2], torch.tensor([0.0, 3.0], dtype=torch.float64), atol=1e-5)
    # then every step has length 3 and angle 2 pi k / 5, counter-clockwise with y up
    assert torch.allclose(step[:, 2:].norm(dim=-1), torch.full((500, 3), 3.0, dtype=torch.float64),
                          atol=1e-5)
    angle = torch.remainder(torch.atan2(-step[:, 2:, 0], step[:, 2:, 1]), 2 * math.pi)
    want = (2 * math.pi * k / 5).double()[:, None].expand(-1, 3)
    gap = torch.remainder(angle - want + math.pi, 2 * math.pi) - math.pi
    assert gap.abs().max() < 1e-5
    # k = 1 (72 degrees) goes up the screen (y decreases)
    assert (step[k == 1, 2:, 0] < 0).all()


def test_switching_mnist_pixels_match_loop(small_digits):
    images, labels = small_digits
    src = data.SwitchingMovingMNIST(images, labels)
    clips, lab = src.sample(6, gen(4))
    for b in range(6):
        for t in range(6):
            y, x = (int(v) for v in lab["pos"][b, t].round())
            frame = clips[b, 0, t].numpy()
            # the frame is black outside the 28 x 28 window at the rounded corner
            outside = frame.copy()
            outside[y:y + 28, x:x + 28] = 0
            assert outside.max() == 0
            assert frame[y:y + 28, x:x + 28].max() > 0
        # the digit is the same image in every frame (only moved)
        y0, x0 = (int(v) for v in lab["pos"][b, 0].round())
        y5, x5 = (int(v) for v in lab["pos"][b, 5].round())
        first = clips[b, 0, 0, y0:y0 + 28, x0:x0 + 28]
        assert np.array_equal(first.numpy(), clips[b, 0, 5, y5:y5 + 28, x5:x5 + 28].numpy())
        # ... and one of the images whose label is the clip's digit label
        same_label = images[labels == lab["digits"][b]].float() / 255
        assert (same_label - first).abs().flatten(1).max(1).values.min() < 1e-6


def test_switching_mnist_k_uniform_and_seeded(small_digits):
    images, labels = small_digits
    src = data.SwitchingMovingMNIST(images, labels)
    _, lab = src.sample(5000, gen(5))
    counts = torch.bincount(lab["k"], minlength=5).double() / 5000
    assert (counts - 0.2).abs().max() < 0.03
    a, b = src.sample(8, gen(6)), src.sample(8, gen(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["k"], b[1]["k"])


def test_switching_mnist_too_fast_for_canvas(small_digits):
    images, labels = small_digits
    with pytest.raises(ValueError, match="does not fit"):
        data.SwitchingMovingMNIST(images, labels, num_frames=6, img_size=64, speed=4.0)
