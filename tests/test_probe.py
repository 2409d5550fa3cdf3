"""probe.py: the probes against closed forms, and end-to-end runs on tiny checkpoints (the
tools that read probe results, tools/tables.py, curve.py and context.py: tests/test_tools.py).

The linear probes are checked against independent references: ridge regression against a
float64 least-squares solve of the augmented system [[x, 1], [sqrt(n lam) I, 0]] (numpy),
cross-validation against a brute-force loop over penalties and folds, logistic regression
against its closed-form gradient, the poolings against explicit loops over clips, time steps
and cells."""
import json
import math
import os
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import data
import masks
import model
import probe
import train
from conftest import SHARED_MNIST
from tools import attentive, tables

MNIST_ARGS = ["--mnist_dir", str(SHARED_MNIST)] if SHARED_MNIST.exists() else []


# ----------------------------------------------------------------------------------------------
# V-JEPA probes

def test_attentive_probe_learns_a_task_a_hand_made_encoder_encodes():
    """A hand-made "encoder": 16 noise tokens per clip; one of them, at a random place, carries
    the class as +3 in channel y and a marker +3 in the last channel, the others carry noise
    only. The attentive probe, with its default optimiser settings, must find that token."""
    g = torch.Generator().manual_seed(0)
    N, L, D, classes = 1024, 16, 8, 4
    y = torch.randint(classes, (N,), generator=g)
    tokens = 0.5 * torch.randn(N, L, D, generator=g)
    where = torch.randint(L, (N,), generator=g)
    tokens[torch.arange(N), where, y] += 3.0
    tokens[torch.arange(N), where, D - 1] += 3.0
    probes = torch.nn.ModuleList([attentive.AttentiveProbe(D, 2, classes)])
    attentive.fit_probes(probes, tokens[:768], [y[:768]], dtype=torch.float32)
    probs = attentive.probabilities(probes[0], tokens[768:], dtype=torch.float32)
    accuracy = float((probs.argmax(1) == y[768:]).float().mean())
    assert accuracy > 0.7  # chance is 0.25


def test_attentive_probe_against_a_per_sample_loop():
    """Cross-attention of one query, written out per sample and per head."""
    torch.manual_seed(0)
    D, heads, N = 12, 3, 5
    p = attentive.AttentiveProbe(D, heads, 7).eval()
    tokens = torch.randn(2, N, D)
    out = p(tokens)
    Dh = D // heads
    for b in range(2):
        kv = p.kv(p.norm1(tokens[b]))  # (N, 2D): rows [k | v]
        k, v = kv[:, :D], kv[:, D:]
        q = p.q(p.query[0, 0])
        heads_out = []
        for h in range(heads):
            s = slice(h * Dh, (h + 1) * Dh)
            w = torch.softmax(k[:, s] @ q[s] / Dh ** 0.5, dim=0)
            heads_out.append(w @ v[:, s])
        x = p.query[0, 0] + p.proj(torch.cat(heads_out))
        x = x + p.mlp(p.norm2(x))
        assert torch.allclose(out[b], p.head(x), atol=1e-5)


def test_encode_in_batches_equals_the_encoder():
    torch.manual_seed(0)
    enc = model.VisionTransformer(4, 16, 8, 2, 1, 16, 1, 2).eval()  # 2 x 2 x 2 = 8 tokens
    clips = torch.rand(3, 1, 4, 16, 16)
    tokens = model.encode(enc, clips, batch=2, dtype=torch.float32)
    assert tokens.shape == (3, 8, 16) and tokens.dtype == torch.float32  # the probe's
    assert torch.allclose(tokens.float(), enc(clips), atol=1e-2)


def test_probabilities_are_the_softmax_of_the_logits():
    lin = torch.nn.Linear(3, 5)
    head = lambda t: lin(t.mean(1))  # noqa: E731
    tokens = torch.randn(6, 2, 3)
    got = attentive.probabilities(head, tokens, batch=4, dtype=torch.float32)
    assert torch.allclose(got, head(tokens).softmax(-1), atol=1e-6)


def test_probe_task_labels():
    labels = {"velocity": torch.tensor([[[0.0, 2.0]], [[1.0, 1.0]], [[-1.0, 0.0]], [[0.0, -3.0]]]),
              "speed": torch.tensor([[1.0], [1.8], [3.99], [2.6]]),
              "digits": torch.tensor([[3], [1], [4], [1]])}
    tasks = probe.probe_tasks(labels, (1.0, 4.0))
    assert tasks["direction"][0].tolist() == [0, 1, 6, 4]  # (vy, vx): 0, 45, 270, 180 degrees
    assert tasks["speed"][0].tolist() == [0, 1, 3, 2]
    assert tasks["digit"][0].tolist() == [3, 1, 4, 1]


# ----------------------------------------------------------------------------------------------
# V-JEPA linear probes: ridge regression

def ref_ridge(x, y, x_new, lam):
    """Ridge with an unpenalised intercept, by float64 least squares on the augmented system
    [[x, 1], [sqrt(n lam) I, 0]] [w; b] ~ [y; 0], which minimises |x w + b - y|^2 + n lam |w|^2,
    i.e. 1/n |x w + b - y|^2 + lam |w|^2 (no centring, no normal equations). -> [m, k]."""
    x, x_new = np.asarray(x, np.float64), np.asarray(x_new, np.float64)
    y = np.asarray(y, np.float64).reshape(len(x), -1)
    n, F = x.shape
    A = np.block([[x, np.ones((n, 1))], [math.sqrt(n * lam) * np.eye(F), np.zeros((F, 1))]])
    b = np.vstack([y, np.zeros((F, y.shape[1]))])
    sol = np.linalg.lstsq(A, b, rcond=None)[0]
    return x_new @ sol[:-1] + sol[-1]


def ref_standardise(fit, *others):
    """numpy float64: the fit set's column mean and sample std (+1e-6)."""
    fit = np.asarray(fit, np.float64)
    mean, std = fit.mean(0), fit.std(0, ddof=1) + 1e-6
    return [(np.asarray(x, np.float64) - mean) / std for x in (fit, *others)]


def regression_problem(n, m, F, k, seed, noise=0.3):
    """Features with offsets and column scales from 0.1 to 10, targets linear in them plus an
    offset of 5 and noise. -> x [n, F], y [n, k], x_new [m, F], y_new [m, k]."""
    g = torch.Generator().manual_seed(seed)
    x = 2 + torch.randn(n + m, F, generator=g) * torch.logspace(-1, 1, F)
    y = x @ torch.randn(F, k, generator=g) + 5 + noise * torch.randn(n + m, k, generator=g)
    return x[:n], y[:n], x[n:], y[n:]


def test_standardise_uses_the_fit_sets_statistics():
    g = torch.Generator().manual_seed(0)
    fit, other = 3 + 5 * torch.randn(40, 6, generator=g), torch.randn(9, 6, generator=g)
    got = probe.standardise(fit, other)
    assert len(got) == 2
    for a, b in zip(got, ref_standardise(fit.numpy(), other.numpy())):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-5)


def test_folds_partition_the_rows_and_follow_the_seed():
    for n, k in ((10, 3), (12, 4), (7, 7), (100, 3)):
        parts = probe.folds(n, k, seed=3)
        assert len(parts) == k
        assert sorted(torch.cat(parts).tolist()) == list(range(n))  # disjoint and covering
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    same = zip(probe.folds(30, 3, seed=1), probe.folds(30, 3, seed=1))
    other = zip(probe.folds(30, 3, seed=1), probe.folds(30, 3, seed=2))
    assert all(torch.equal(a, b) for a, b in same)
    assert not all(torch.equal(a, b) for a, b in other)


def test_ridge_predict_matches_least_squares():
    x, y, x_new, _ = regression_problem(50, 7, 8, 3, seed=0)
    lams = (1e-4, 0.1, 3.0)
    got = probe.ridge_predict(x, y, x_new, lams)
    assert got.shape == (3, 7, 3) and got.dtype == torch.float64
    # float64 normal equations: rounding ~ cond(gram) (< 1e8 with these column scales) x 1e-16
    for i, lam in enumerate(lams):
        np.testing.assert_allclose(got[i].numpy(), ref_ridge(x, y, x_new, lam),
                                   rtol=1e-7, atol=1e-7)


def test_ridge_dual_equals_primal_and_least_squares_with_more_features_than_samples():
    x, y, x_new, _ = regression_problem(20, 6, 60, 2, seed=1)
    x, x_new = x.double(), x_new.double()
    lams = (1e-3, 0.1, 10.0)
    dual = probe.ridge_dual(x @ x.T, x_new @ x.T, y, lams)
    primal = probe.ridge_predict(x, y, x_new, lams)
    assert dual.shape == primal.shape == (3, 6, 2)
    for i, lam in enumerate(lams):
        ref = ref_ridge(x, y, x_new, lam)
        scale = np.abs(ref).max()
        np.testing.assert_allclose(dual[i].numpy(), ref, rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(primal[i].numpy(), ref, rtol=1e-4, atol=1e-5 * scale)


def test_ridge_intercept_is_not_penalised():
    """A huge penalty sends w to 0 but leaves the intercept free: every prediction is the mean
    of y (about 5 here), where a penalised intercept would predict 0."""
    x, y, x_new, _ = regression_problem(30, 5, 4, 2, seed=2)
    mean = y.double().mean(0).expand(5, -1)
    assert mean.abs().min() > 1
    x, x_new = x.double(), x_new.double()
    for pred in (probe.ridge_predict(x, y, x_new, [1e9])[0],
                 probe.ridge_dual(x @ x.T, x_new @ x.T, y, [1e9])[0]):
        assert torch.allclose(pred, mean, atol=1e-3)


def brute_ridge_cv(x, targets, x_new, lams, k, seed):
    """The cross-validated ridge written out: features standardised once with the whole fit
    set's mean and std; for each target, each penalty and each fold, the reference fitted on
    the fold's fit rows, its squared errors summed over the held-out rows and columns.
    -> per target (summed errors per penalty, the argmin penalty, predict(lam) at x_new)."""
    xs, xn = ref_standardise(x, x_new)
    n = len(xs)
    out = []
    for t in targets:
        y = t.double().numpy().reshape(n, -1)
        errors = []
        for lam in lams:
            e = 0.0
            for val in probe.folds(n, k, seed):
                val = val.numpy()
                fit = np.setdiff1d(np.arange(n), val)
                e += ((ref_ridge(xs[fit], y[fit], xs[val], lam) - y[val]) ** 2).sum()
            errors.append(e)
        out.append((np.array(errors), lams[int(np.argmin(errors))],
                    lambda lam, y=y: ref_ridge(xs, y, xn, lam)))
    return out


def check_ridge_cv(x, targets, x_new, lams, monkeypatch, unused):
    """ridge_cv against brute_ridge_cv; `unused`: the solver the problem's shape must not call
    (the primal one with more features than samples, the dual one otherwise)."""
    def boom(*args, **kwargs):
        raise AssertionError(f"{unused} called")

    monkeypatch.setattr(probe, unused, boom)
    got = probe.ridge_cv(x, targets, x_new, lams, k=3, seed=5)
    ref = brute_ridge_cv(x, targets, x_new, lams, k=3, seed=5)
    assert len(got) == len(targets)
    for t, (pred, lam), (errors, best, predict) in zip(targets, got, ref):
        assert pred.shape == (len(x_new), *t.shape[1:])
        # the brute force's choice, or one tied with it up to rounding
        assert lam == best or errors[lams.index(lam)] <= errors.min() * (1 + 1e-6), (lam, best)
        ref_pred = predict(lam)
        np.testing.assert_allclose(pred.reshape(len(x_new), -1).numpy(), ref_pred, rtol=1e-4,
                                   atol=1e-5 * np.abs(ref_pred).max())
    return [best for _, best, _ in ref]


LAMS = tuple(float(v) for v in torch.logspace(-3, 1, 13))  # a fine grid: mistakes in the
#                                                           fold errors move some argmin


def cv_targets(x, seed):
    """Targets of decreasing signal-to-noise on the standardised features: 1-D and 2-D ones,
    the last pure noise, so that they choose different penalties."""
    g = torch.Generator().manual_seed(seed)
    signal = (x - x.mean(0)) / x.std(0)
    targets = []
    for j, strength in enumerate((3.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.0)):
        columns = 2 if j % 3 == 1 else 1
        w = torch.randn(x.shape[1], columns, generator=g) / math.sqrt(x.shape[1])
        y = strength * signal @ w + torch.randn(len(x), columns, generator=g)
        targets.append(y if columns == 2 else y[:, 0])
    return targets


def test_ridge_cv_matches_a_brute_force_loop_fewer_features_than_samples(monkeypatch):
    g = torch.Generator().manual_seed(3)
    n, m, F = 90, 30, 12
    x = 2 + torch.randn(n + m, F, generator=g) * torch.logspace(-1, 1, F)
    targets = cv_targets(x, seed=3)
    best = check_ridge_cv(x[:n], [t[:n] for t in targets], x[n:], LAMS, monkeypatch,
                          unused="ridge_dual")
    assert len(set(best)) >= 4, best  # the targets get their own penalties


def test_ridge_cv_matches_a_brute_force_loop_more_features_than_samples(monkeypatch):
    g = torch.Generator().manual_seed(4)
    n, m, F = 45, 15, 120
    x = torch.randn(n + m, F, generator=g) * torch.logspace(-1, 1, F) + 1
    targets = cv_targets(x, seed=4)
    best = check_ridge_cv(x[:n], [t[:n] for t in targets], x[n:], LAMS, monkeypatch,
                          unused="ridge_predict")
    assert len(set(best)) >= 4, best


@pytest.mark.parametrize("F", [10, 150])  # the primal and the dual path
def test_ridge_cv_on_pure_noise_predicts_nothing(F):
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(200, F, generator=g), torch.randn(200, generator=g)
    (pred, lam), = probe.ridge_cv(x[:100], [y[:100]], x[100:])
    r2 = 1 - float((pred - y[100:]).pow(2).mean()) / float(y[100:].var(unbiased=False))
    assert r2 < 0.05 and lam in probe.RIDGE_LAMS


# ----------------------------------------------------------------------------------------------
# V-JEPA linear probes: logistic regression

CENTRES = torch.tensor([[3.0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0], [0, 0, 3.0, 0, 0]])


def blobs(n, spread, seed):
    """Three Gaussian classes around CENTRES (5 features); spread 0.5 separates them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(3, (n,), generator=g)
    return CENTRES[y] + spread * torch.randn(n, 5, generator=g), y


def ref_gradient(w, x, y, lam):
    """The gradient of mean cross-entropy + lam/2 |W[:-1]|^2 in closed form (float64 numpy):
    X^T (softmax(X W) - onehot(y)) / n + lam W, the bias row (last) without the lam term."""
    X = np.c_[x.double().numpy(), np.ones(len(x))]
    W = w.double().numpy()
    z = X @ W
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = X.T @ (p - np.eye(W.shape[1])[y.numpy()]) / len(x)
    grad[:-1] += lam * W[:-1]
    return grad


def test_logistic_fit_separates_separable_classes():
    x, y = blobs(300, 0.5, seed=0)
    w = probe.logistic_fit(x[:200], y[:200], 3, lam=1e-4)
    assert w.shape == (6, 3)
    def accuracy(a, b):
        return float((probe.logistic_logits(w, a).argmax(1) == b).float().mean())

    assert accuracy(x[:200], y[:200]) == 1.0 and accuracy(x[200:], y[200:]) >= 0.99
    # logits: x W[:-1] + bias, the bias being the last row
    assert torch.allclose(probe.logistic_logits(w, x[:4]), x[:4].double() @ w[:-1] + w[-1],
                          atol=1e-12)


@pytest.mark.parametrize("lam", [1e-1, 1e-2, 1e-3])
def test_logistic_fit_is_a_stationary_point_of_its_objective(lam):
    x, y = blobs(300, 1.5, seed=1)  # overlapping classes: a finite optimum for every lam
    w = probe.logistic_fit(x, y, 3, lam)
    # L-BFGS stops once every gradient entry is below 1e-6 (float64: rounding adds ~1e-15)
    assert np.abs(ref_gradient(w, x, y, lam)).max() < 1e-5


def test_logistic_bias_is_not_penalised():
    """With a huge penalty the weights vanish and the free bias alone fits the classes: the
    softmax of the bias row is the classes' frequencies."""
    x, y = blobs(300, 1.5, seed=2)
    w = probe.logistic_fit(x, y, 3, lam=1e3)
    assert w[:-1].abs().max() < 2e-3
    freq = torch.bincount(y, minlength=3).double() / len(y)
    assert torch.allclose(w[-1].softmax(0), freq, atol=2e-3)


def test_logistic_warm_start_does_not_change_the_answer():
    """The objective is convex: a random warm start ends where a cold one does. The bias is
    unpenalised and softmax ignores a constant added to every class's bias, so the bias row is
    compared up to its mean (and the class probabilities in full). Tolerance: both fits stop
    with gradient entries below 1e-6 (float64) on an objective lam-strongly convex in W, so
    each lies within ~1e-6 / lam = 1e-4 of the optimum."""
    x, y = blobs(300, 1.5, seed=3)
    cold = probe.logistic_fit(x, y, 3, 1e-2)
    warm = probe.logistic_fit(x, y, 3, 1e-2, init=torch.randn(6, 3, generator=torch.Generator()
                                                               .manual_seed(0)))
    assert (cold[:-1] - warm[:-1]).abs().max() < 1e-4
    centred = lambda b: b - b.mean()  # noqa: E731
    assert (centred(cold[-1]) - centred(warm[-1])).abs().max() < 1e-4
    probs = [probe.logistic_logits(w, x).softmax(1) for w in (cold, warm)]
    assert (probs[0] - probs[1]).abs().max() < 1e-4


def test_logistic_cv_on_an_easy_problem():
    """Every penalty classifies the held-out folds perfectly, so the tie goes to the strongest
    penalty (LOGISTIC_LAMS[0]), as the docstring says."""
    x, y = blobs(260, 0.5, seed=4)
    x = 10 + 4 * x  # standardisation inside logistic_cv takes care of offset and scale
    pred, lam = probe.logistic_cv(x[:200], y[:200], 3, x[200:])
    assert pred.shape == (60,) and lam in probe.LOGISTIC_LAMS
    assert float((pred == y[200:]).float().mean()) >= 0.98
    assert lam == probe.LOGISTIC_LAMS[0]


# ----------------------------------------------------------------------------------------------
# V-JEPA linear probes: poolings, targets, scores

def ref_pool(tokens, grid, cells=2):
    """The poolings written out per clip, time step and cell; token index (t H' + h) W' + w.
    Cell (i, j) covers rows floor(i H'/c) .. ceil((i+1) H'/c) - 1 (and columns likewise): the
    adaptive-average-pooling definition, which for sides not divisible by c overlaps."""
    B, L, D = tokens.shape
    T, H, W = grid
    out = {k: [] for k in ("mean", "max", "time", "cells")}
    for b in range(B):
        rows = {(t, h, w): tokens[b, (t * H + h) * W + w].double()
                for t in range(T) for h in range(H) for w in range(W)}
        every = torch.stack(list(rows.values()))
        out["mean"].append(every.mean(0))
        out["max"].append(every.max(0).values)
        per_t, per_cell = [], []
        for t in range(T):
            per_t.append(torch.stack([rows[t, h, w] for h in range(H) for w in range(W)]).mean(0))
            for i in range(cells):
                for j in range(cells):
                    hs = range(math.floor(i * H / cells), math.ceil((i + 1) * H / cells))
                    ws = range(math.floor(j * W / cells), math.ceil((j + 1) * W / cells))
                    per_cell.append(torch.stack([rows[t, h, w] for h in hs for w in ws]).mean(0))
        out["time"].append(torch.cat(per_t))
        out["cells"].append(torch.cat(per_cell))
    return {k: torch.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("grid", [(3, 4, 4), (2, 3, 5)])  # sides divisible by 2, and not
def test_pool_tokens_against_loops(grid):
    T, H, W = grid
    B, D = 2, 3
    tokens = torch.randn(B, T * H * W, D)
    got = probe.pool_tokens(tokens, grid)
    ref = ref_pool(tokens, grid)
    sizes = {"mean": D, "max": D, "time": T * D, "cells": T * 4 * D}
    assert set(got) == set(sizes)
    for k, size in sizes.items():
        assert got[k].shape == (B, size) and got[k].dtype == torch.float32
        assert torch.allclose(got[k].double(), ref[k], atol=1e-6), k


def test_accuracy_and_r2_with_their_standard_errors_closed_forms():
    p, se = probe.accuracy_and_se(torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 1, 1]))
    assert p == pytest.approx(0.75) and se == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    # one column: y = 1..4 (variance 1.25), errors (0.5, 0, 0, -0.5): MSE 0.125, R^2 0.9;
    # per-clip scaled errors (0.2, 0, 0, 0.2): sample std sqrt(0.04 / 3), over sqrt(4)
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    r2, se = probe.r2_and_se(y + torch.tensor([0.5, 0, 0, -0.5]), y)
    assert r2 == pytest.approx(0.9) and se == pytest.approx(math.sqrt(0.04 / 3) / 2)
    # two columns of variance 1.25 and 1: per-clip means of the scaled squared errors are
    # (0.1, 0.5, 0, 0.1), so R^2 = 1 - 0.175 (the mean of the columns' R^2, 0.9 and 0.75)
    y = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 2.0], [4.0, 2.0]])
    e = torch.tensor([[0.5, 0.0], [0.0, 1.0], [0.0, 0.0], [-0.5, 0.0]])
    r2, se = probe.r2_and_se(y + e, y)
    assert r2 == pytest.approx(0.825)
    assert se == pytest.approx(statistics.stdev([0.1, 0.5, 0.0, 0.1]) / 2)


def test_mean_std_compare_and_the_bar():
    assert probe.mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert probe.mean_std([5.0]) == (5.0, 0.0)
    c = probe.compare([0.8, 0.82, 0.84], [0.5, 0.52, 0.54], [0.01] * 3)
    assert c["trained"] == pytest.approx([0.82, 0.02])
    assert c["random"] == pytest.approx([0.52, 0.02])
    assert c["gap"] == pytest.approx(0.3) and c["se"] == pytest.approx(0.01)
    assert c["gap_over_std"] == pytest.approx(round(0.3 / math.hypot(0.02, 0.02), 1))  # 10.6
    # one trained run: its test-set standard error stands in for the spread over seeds
    c1 = probe.compare([0.9], [0.5, 0.6], [0.03])
    assert c1["trained"] == pytest.approx([0.9, 0.0])
    assert c1["gap_over_std"] == pytest.approx(round(0.35 / math.hypot(0.03, math.sqrt(0.005)), 1))
    assert probe.compare([0.5], [0.5], [0.0])["gap_over_std"] is None  # no spread at all
    # the bar that tools/tables.py judges these comparisons by
    assert tables.clears(c, "digit") and tables.clears(c, "speed")
    small = {"gap": 0.06, "gap_over_std": 5.0}  # 6 points, 0.06 R^2
    assert tables.clears(small, "direction") and not tables.clears(small, "velocity")
    assert not tables.clears({"gap": 0.3, "gap_over_std": 2.9}, "digit")
    assert not tables.clears({"gap": 0.3, "gap_over_std": None}, "digit")


def test_linear_targets_of_a_moving_mnist_batch():
    """'Digits' that are solid 28x28 squares, so a digit's top-left corner is the top-left of
    the non-zero pixels of a frame."""
    images = torch.full((10, 28, 28), 200, dtype=torch.uint8)
    labels = torch.tensor([3, 7, 0, 9, 1, 5, 2, 8, 4, 6])
    mm = data.MovingMNIST(images, labels, num_frames=6, img_size=64, num_digits=1)
    clips, lab = mm.sample(16, torch.Generator().manual_seed(0))
    t = probe.linear_targets(lab, mm.speed)
    assert set(t) == set(probe.CLASS_TASKS + probe.REGRESSION_TASKS)
    assert torch.equal(t["digit"], lab["digits"][:, 0])
    assert torch.equal(t["speed"], lab["speed"][:, 0])
    assert torch.equal(t["velocity"], lab["velocity"][:, 0]) and t["velocity"].shape == (16, 2)
    for b in range(16):
        vy, vx = lab["velocity"][b, 0].tolist()
        degrees = math.degrees(math.atan2(vy, vx)) % 360
        assert int(t["direction"][b]) == int(degrees // 45)
        assert math.hypot(vy, vx) == pytest.approx(float(t["speed"][b]), rel=1e-5)
        # position: where the square is in the last frame (drawn at the rounded corner)
        ys, xs = torch.nonzero(clips[b, 0, -1], as_tuple=True)
        assert t["position"][b].round().tolist() == [ys.min().item(), xs.min().item()]


# ----------------------------------------------------------------------------------------------
# V-JEPA: the feature cache

def tiny_encoder(heads=2, seed=0):
    torch.manual_seed(seed)
    return model.VisionTransformer(num_frames=4, img_size=32, patch_size=8, tubelet_size=2,
                                   in_chans=1, dim=24, depth=1, heads=heads).eval()


@pytest.fixture
def tiny_sets():
    """Fit and test sources of one-digit clips at 4 x 32 x 32 (probe_sets), and their spec."""
    a = SimpleNamespace(fit_clips=10, test_clips=6, mnist_dir=str(SHARED_MNIST)
                        if SHARED_MNIST.exists() else "")
    return probe.probe_sets({}, tiny_encoder(), a)


def test_cached_features_equal_fresh_ones_and_are_read_back(tmp_path, tiny_sets, monkeypatch):
    sources, spec = tiny_sets
    enc = tiny_encoder()
    got = probe.cached_features({"target": enc}, spec, sources, str(tmp_path))
    for part, (n, seed) in (("fit", spec["fit"]), ("test", spec["test"])):
        feats, labels = probe.video_features({"target": enc}, sources[part], n, seed)
        assert set(got[part][0]) == {"target"}
        assert set(got[part][0]["target"]) == set(probe.POOLINGS)
        assert all(torch.equal(got[part][0]["target"][k], v) for k, v in feats["target"].items())
        assert all(torch.equal(got[part][1][k], labels[k]) for k in labels)
        assert len(got[part][0]["target"]["mean"]) == n
    path = tmp_path / f"features_{probe.weights_key({'target': enc}, spec)}_float32.pt"
    assert path.exists() and len(list(tmp_path.iterdir())) == 1  # no .tmp left behind

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(probe, "video_features", no_encoding)
    again = probe.cached_features({"target": enc}, spec, sources, str(tmp_path))
    assert all(torch.equal(again["test"][0]["target"][k], got["test"][0]["target"][k])
               for k in probe.POOLINGS)
    monkeypatch.undo()
    # other weights: another file, other features
    other = model.random_init_like(enc, 5)
    feats = probe.cached_features({"target": other}, spec, sources, str(tmp_path))
    assert len(list(tmp_path.glob("features_*.pt"))) == 2
    assert not torch.equal(feats["fit"][0]["target"]["mean"], got["fit"][0]["target"]["mean"])


def test_weights_key_follows_weights_and_spec():
    enc, spec = tiny_encoder(), {"fit": (10, 1), "test": (6, 2)}
    key = probe.weights_key({"target": enc}, spec)
    assert key == probe.weights_key({"target": tiny_encoder()}, dict(reversed(list(spec.items()))))
    assert key != probe.weights_key({"target": enc}, {"fit": (11, 1), "test": (6, 2)})
    assert key != probe.weights_key({"online": enc}, spec)
    with torch.no_grad():
        enc.blocks[0].mlp.fc1.weight[0, 0] += 1e-3
    assert key != probe.weights_key({"target": enc}, spec)


def test_weights_key_tells_apart_encoders_that_differ_only_in_heads(tmp_path, tiny_sets):
    """The number of attention heads is not in any tensor's shape: two encoders of width 24
    with 2 and with 3 heads built from the same seed have identical state dicts, yet compute
    different features. (probe_vjepa builds its random-init encoders from fixed seeds 1000+i,
    so a heads ablation sharing the default feature_cache/ would score the second run's random
    inits on the first run's features.)"""
    sources, spec = tiny_sets
    two, three = tiny_encoder(heads=2), tiny_encoder(heads=3)
    with torch.no_grad():  # sharper attention than at init, so that heads matter
        for enc in (two, three):
            enc.blocks[0].attn.qkv.weight.mul_(30)
    clips = torch.rand(2, 1, 4, 32, 32)
    with torch.no_grad():
        assert (two(clips) - three(clips)).abs().max() > 0.05  # different functions
    probe.cached_features({"target": two}, spec, sources, str(tmp_path))
    got = probe.cached_features({"target": three}, spec, sources, str(tmp_path))
    fresh, _ = probe.video_features({"target": three}, sources["test"], *spec["test"])
    assert torch.equal(got["test"][0]["target"]["mean"], fresh["target"]["mean"]), \
        "the 3-head encoder was given the 2-head encoder's cached features"
    assert probe.weights_key({"target": two}, spec) != probe.weights_key({"target": three}, spec)


# ----------------------------------------------------------------------------------------------
# V-JEPA: end-to-end runs

def tiny_vjepa(out, *extra):
    train.main(["--num_frames", "4", "--img_size", "32", "--patch_size", "8", "--enc_dim", "24",
                "--enc_depth", "1", "--enc_heads", "2", "--pred_dim", "24", "--pred_depth", "1",
                "--batch_size", "2", "--max_steps", "4", "--val_clips", "0", "--out_dir", out,
                *extra] + MNIST_ARGS)
    return os.path.join(out, "ckpt.pt")


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """Two tiny V-JEPA checkpoints (seeds 0 and 1), trained once for the tests that probe them."""
    root = tmp_path_factory.mktemp("vjepa")
    return [tiny_vjepa(str(root / f"seed{s}"), "--seed", str(s)) for s in (0, 1)]


def check_summary(r):
    """'linear' is the mean and std (over checkpoints, over random inits) of 'linear_runs'."""
    for pooling in probe.POOLINGS:
        tasks = probe.REGRESSION_TASKS + (probe.CLASS_TASKS if pooling in probe.CLASS_POOLINGS
                                          else ())
        assert set(r["linear"][pooling]) == set(tasks)
        for task in tasks:
            c = r["linear"][pooling][task]
            runs = {name: [s[pooling][task] for s in r["linear_runs"][name]]
                    for name in ("trained", "random_init")}
            for key, name in (("trained", "trained"), ("random", "random_init")):
                scores = [s[0] for s in runs[name]]
                std = statistics.stdev(scores) if len(scores) > 1 else 0.0
                assert c[key] == pytest.approx([statistics.mean(scores), std], abs=1e-4)
            assert c["se"] == pytest.approx(max(s[1] for s in runs["trained"]), abs=1e-4)
            penalties = probe.LOGISTIC_LAMS if task in probe.CLASS_TASKS else probe.RIDGE_LAMS
            assert all(s[2] in penalties for name in runs for s in runs[name])
            if task in probe.CLASS_TASKS:
                assert all(0 <= s[0] <= 1 for name in runs for s in runs[name])


def test_vjepa_probe_end_to_end(tmp_path, two_seeds, capsys):
    ckpts, cache = two_seeds, str(tmp_path / "cache")
    out = str(tmp_path / "probe")
    r = probe.main(["--ckpt", ckpts[0], "--fit_clips", "64", "--test_clips", "48",
                    "--random_inits", "2", "--cache_dir", cache, "--out_dir", out,
                    "--pairs", "16"] + MNIST_ARGS)
    assert r["ckpt"] == [ckpts[0]] and (r["fit_clips"], r["test_clips"]) == (64, 48)
    assert len(r["linear_runs"]["trained"]) == 1 and len(r["linear_runs"]["random_init"]) == 2
    check_summary(r)
    assert "attentive" not in r
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["linear"] == r["linear"]
    assert len(list(Path(cache).glob("features_*.pt"))) == 3  # 1 trained + 2 random inits
    printed = capsys.readouterr().out
    assert "| digit (mean) |" in printed and "| position (cells) |" in printed
    assert "linear probes, online encoder" in printed and "What the run learned" in printed
    check_summary({"linear": r["online_linear"], "linear_runs": {
        "trained": r["linear_runs"]["online"], "random_init": r["linear_runs"]["random_init"]}})
    assert set(r["surprise"]) == set(probe.VIOLATIONS) and len(r["forecast"]["predicted"]) == 1
    assert os.path.exists(os.path.join(out, "forecast.png"))
    printed = tables.table([out])  # tools/tables.py: every task and pooling in full
    assert "| digit | mean |" in printed and "| position | cells |" in printed


@pytest.mark.parametrize("cpu_class,flag,expected", [
    ("AVX2", "auto", torch.float32), ("AMX", "auto", torch.bfloat16),
    ("AMX", "float32", torch.float32), ("AVX2", "bfloat16", torch.bfloat16)])
def test_the_probe_encodes_in_the_precision_of_the_cpu(tmp_path, two_seeds, monkeypatch,
                                                       cpu_class, flag, expected):
    """Without native bf16 (AVX2) the encoders run in float32, with it (AMX) in bf16: read from
    the dtype of the encoder's output in every encoding pass, trained and random alike."""
    monkeypatch.setattr(model, "cpu_class", lambda: cpu_class)
    seen, encode = [], probe.video_features

    def recording(nets, *args, **kwargs):
        hooks = [n.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
                 for n in {id(n): n for n in nets.values()}.values()]  # random: online = target
        try:
            return encode(nets, *args, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()

    monkeypatch.setattr(probe, "video_features", recording)
    probe.main(["--ckpt", two_seeds[0], "--fit_clips", "16", "--test_clips", "16",
                "--random_inits", "1", "--cache_dir", str(tmp_path / "cache"), "--out_dir",
                str(tmp_path), "--dtype", flag, "--pairs", "8"] + MNIST_ARGS)
    # (fit, test) x (target, online, its context, predictor; random: target, context, predictor)
    assert len(seen) == 14 and set(seen) == {expected}


def test_vjepa_probe_two_checkpoints_and_the_attentive_probe(tmp_path, two_seeds):
    ckpts, cache = two_seeds, str(tmp_path / "cache")
    r = probe.main(["--ckpt", *ckpts, "--fit_clips", "64", "--test_clips", "48",
                    "--random_inits", "1", "--cache_dir", cache, "--out_dir", str(tmp_path),
                    "--pairs", "16"] + MNIST_ARGS)
    assert r["ckpt"] == ckpts
    assert len(r["linear_runs"]["trained"]) == 2 and len(r["linear_runs"]["random_init"]) == 1
    check_summary(r)  # trained: mean and sample std over the two checkpoints
    stds = [r["linear"][p][t]["trained"][1] for p in probe.POOLINGS for t in r["linear"][p]]
    assert max(stds) > 0  # two different seeds do not score exactly alike everywhere
    r = attentive.main(["--ckpt", *ckpts, "--seeds", "2", "--random_inits", "1", "--fit_clips",
                        "32", "--test_clips", "48", "--epochs", "1", "--out_dir", str(tmp_path)]
                       + MNIST_ARGS)
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["linear"] == r["linear"]  # probe.py's rows kept beside
    for key in ("attentive", "online_attentive"):
        assert set(r[key]) == {"digit", "direction", "speed"}
        for c in r[key].values():
            assert 0 <= c["trained"][0] <= 1 and 0 <= c["random"][0] <= 1
        runs = r[f"{key}_runs"]  # 2 trained x 2 probe seeds, 1 random init x 2 probe seeds
        assert [len(runs["trained"]), len(runs["random_init"])] == [4, 2]
        for t, c in r[key].items():
            acc = [x[t][0] for x in runs["trained"]]
            assert c["probe_seed_std"][0] == pytest.approx(
                max(statistics.stdev(acc[:2]), statistics.stdev(acc[2:])), abs=1e-4)
            assert c["probe_seed_std"][1] == pytest.approx(
                statistics.stdev([x[t][0] for x in runs["random_init"]]), abs=1e-4)
            assert c["trained"][0] == pytest.approx(statistics.mean(acc), abs=1e-4)
    assert r["attentive_runs"]["random_init"] == r["online_attentive_runs"]["random_init"]


def test_random_init_of_a_loaded_checkpoint_keeps_its_embed_gain(tmp_path):
    """The baseline must start like the run did: a checkpoint trained with embed_gain 3, loaded
    and re-initialised, has the tubelet weights of a fresh gain-3 network of that seed (the
    gain is not in the weights; the loader reads it from the file's config)."""
    torch.manual_seed(0)
    enc = model.VisionTransformer(num_frames=4, img_size=32, patch_size=8, tubelet_size=2,
                                  in_chans=1, dim=24, depth=1, heads=2, embed_gain=3.0)
    state = {f"module.backbone.{k}": v for k, v in enc.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"encoder": state, "target_encoder": state,
                "config": {"embed_gain": 3.0, "enc_heads": 2, "num_frames": 4}}, path)
    loaded = probe.load_networks(str(path))[0]["target"]
    fresh = model.random_init_like(loaded, 7)
    reference = model.VisionTransformer(num_frames=4, img_size=32, patch_size=8, tubelet_size=2,
                                        in_chans=1, dim=24, depth=1, heads=2, embed_gain=1.0)
    torch.manual_seed(7)
    model.init_weights(reference, reference.blocks)  # the same draw at gain 1, times 3 by hand
    assert torch.allclose(fresh.patch_embed.proj.weight, 3 * reference.patch_embed.proj.weight)
    assert torch.equal(fresh.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)


def test_best_readout_against_a_hand_worked_example():
    """Trained: the pooling with the best mean over seeds; random: the single best score over
    inits and poolings, its spread over inits at that pooling; gap over their combined std."""
    def run(digit, speed):  # digit: (mean, max); speed: (mean, max, time, cells)
        r = {p: {"speed": [v, 0.02, 1.0]} for p, v in zip(probe.POOLINGS, speed)}
        for p, v in zip(("mean", "max"), digit):
            r[p]["digit"] = [v, 0.01, 0.1]
        return r
    runs = {"trained": [run((0.40, 0.45), (0.30, 0.50, 0.60, 0.55)),
                        run((0.42, 0.41), (0.35, 0.45, 0.62, 0.70))],
            "random_init": [run((0.30, 0.47), (0.10, 0.50, 0.58, 0.40)),
                            run((0.31, 0.44), (0.10, 0.52, 0.50, 0.60)),
                            run((0.29, 0.46), (0.10, 0.51, 0.55, 0.66))]}
    best = probe.best_readout(runs)
    d, s = best["digit"], best["speed"]
    assert (d["pooling"], d["random_pooling"]) == ("max", "max")  # mean 0.43 > 0.41; 0.47 best
    assert (s["pooling"], s["random_pooling"]) == ("cells", "cells")  # 0.625 > 0.61; 0.66
    sd = statistics.stdev
    assert d["trained"] == pytest.approx([0.43, sd([0.45, 0.41])], abs=1e-4)
    assert d["random"] == pytest.approx([0.47, sd([0.47, 0.44, 0.46])], abs=1e-4)
    assert d["gap"] == pytest.approx(-0.04, abs=1e-4)
    assert d["combined_std"] == pytest.approx(math.hypot(sd([0.45, 0.41]), sd([0.47, 0.44, 0.46])),
                                              abs=1e-4)
    assert d["gap_over_std"] == pytest.approx(-0.04 / d["combined_std"], abs=0.05)
    assert s["random"] == pytest.approx([0.66, sd([0.40, 0.60, 0.66])], abs=1e-4)
    assert s["gap"] == pytest.approx(0.625 - 0.66, abs=1e-4) and s["random_se"] == 0.02
    # one trained seed and one init: the standard errors stand in for the spreads
    one = probe.best_readout({k: v[:1] for k, v in runs.items()})["digit"]
    assert one["combined_std"] == pytest.approx(math.hypot(0.01, 0.01), abs=1e-4)


# ----------------------------------------------------------------------------------------------
# The predictor as a world model: forecast and surprise

def world_features(g, n, T=6, c=3, F=5):
    """Hand-made features: F-dim step features whose first two channels are the digit's (y, x)
    plus noise, and positions moving at a random constant velocity -> (feats, positions)."""
    start, v = torch.rand(n, 1, 2, generator=g) * 30, torch.randn(n, 1, 2, generator=g) * 3
    pos = start + v * torch.arange(T)[None, :, None]
    target = torch.cat([pos, torch.randn(n, T, F - 2, generator=g)], -1)
    target += 0.5 * torch.randn(target.shape, generator=g)
    return {"target": target, "context": target[:, :c]}, pos


@pytest.mark.parametrize("predictor", ["perfect", "copy_last", "constant"])
def test_forecast_against_hand_worked_predictors(predictor):
    """A predictor that outputs the true future's features scores the oracle's R^2; one that
    copies the last context step scores persistence's; a constant one scores at most 0."""
    g, c = torch.Generator().manual_seed(0), 3
    (fit, pos_fit), (test, pos_test) = world_features(g, 300), world_features(g, 200)
    for f in (fit, test):
        f["pred"] = {"perfect": f["target"][:, c:], "copy_last": f["target"][:, c - 1:c].expand(
            -1, 3, -1), "constant": torch.ones_like(f["target"][:, c:])}[predictor].clone()
    r2, positions = probe.forecast_scores(fit, test, pos_fit, pos_test, c)
    assert set(r2) == {"predicted", "oracle", "persistence", "predicted, own readout",
                       "context readout"} and all(len(v) == 3 for v in r2.values())
    if predictor == "perfect":
        assert r2["predicted"] == r2["oracle"] and min(r2["oracle"]) > 0.9
    elif predictor == "copy_last":
        assert r2["predicted"] == pytest.approx(r2["persistence"], abs=1e-12)
        assert r2["persistence"][0] > r2["persistence"][2]  # the digit moves on
    else:
        assert max(r2["predicted"]) <= 0 and max(r2["predicted, own readout"]) <= 1e-3
    # the context readout extrapolates a straight line: it beats persistence at every step
    assert all(a > b for a, b in zip(r2["context readout"], r2["persistence"]))
    # R^2 is 1 - MSE / Var per coordinate, averaged, as a loop writes it
    h = 2
    p, y = positions["persistence"][:, h], pos_test[:, c + h]
    loop = sum(1 - float(((p[:, k] - y[:, k]) ** 2).mean() / y[:, k].var(unbiased=False))
               for k in range(2)) / 2
    assert r2["persistence"][h] == pytest.approx(loop, abs=1e-6)


def test_surprise_share_closed_forms():
    same = torch.rand(10)
    assert probe.surprise_share(same, same.clone())[0] == 0.5  # nothing changed: chance
    p, se = probe.surprise_share(torch.tensor([1.0, 1, 1, 1]), torch.tensor([2.0, 0, 2, 1]))
    assert p == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert se == pytest.approx(math.sqrt(p * (1 - p) / 4))


def digit_sources():
    a = SimpleNamespace(fit_clips=8, test_clips=8, mnist_dir=str(SHARED_MNIST)
                        if SHARED_MNIST.exists() else "")
    enc = model.VisionTransformer(16, 64, 16, 2, 1, 24, 1, 2)
    sources, _ = probe.probe_sets({"normalise": True}, enc, a)
    return sources["test"]


def test_violation_pairs_break_movingmnist_only_after_the_context():
    source, c, n = digit_sources(), 8, 64
    clips = data.violation_pairs(source, n, seed=0, ctx_frames=c)
    assert set(clips) == {"normal", *probe.VIOLATIONS}
    raw = {k: v * data.MMNIST_STD + data.MMNIST_MEAN for k, v in clips.items()}  # normalised
    normal = raw["normal"]
    ink = normal.sum((-1, -2))  # [n, 1, T]
    for kind, x in raw.items():
        assert x.shape == (n, 1, 16, 64, 64)
        assert torch.equal(x[:, :, :c], normal[:, :, :c])  # identical contexts
        if kind != "normal":
            moved = (x[:, :, c:] - normal[:, :, c:]).abs().amax((1, 2, 3, 4)) > 0.5
            assert moved.float().mean() > 0.9
    # stop: every later frame is the last context frame
    stop = raw["stop"]
    assert torch.equal(stop[:, :, c:], stop[:, :, c - 1:c].expand_as(normal[:, :, c:]))
    # pass-through: the digit leaves the canvas (less ink), the normal one bounces back (all of it)
    less = raw["pass_through"][:, 0, -1].sum((-1, -2)) < 0.9 * ink[:, 0, -1]
    assert less.float().mean() > 0.9
    # teleport: the same glyph, the same amount of ink, elsewhere; identity: another glyph
    assert torch.allclose(raw["teleport"].sum((-1, -2)), ink, rtol=1e-4)
    assert not torch.allclose(raw["identity"][:, :, c:].sum((-1, -2)), ink[:, :, c:])
    # the normal clips are MovingMNIST's: no bounce before the context ends, one after
    centre = lambda v: (v * torch.arange(64.0)).sum() / v.sum()  # noqa: E731
    y = torch.tensor([[centre(normal[i, 0, t].sum(1)) for t in range(16)] for i in range(4)])
    x = torch.tensor([[centre(normal[i, 0, t].sum(0)) for t in range(16)] for i in range(4)])
    step = torch.stack([y.diff(), x.diff()], -1)[:, :c - 1]
    assert (step - step[:, :1]).abs().max() < 1.5  # straight in the context (rounding only)


def test_surprise_is_the_vjepa_loss_of_the_future_mask():
    """The predictor's surprise at a clip, averaged over clips, is train.vjepa_loss with the
    future mask and no token_vcr or persist (an independent path: the training objective)."""
    args = ["--num_frames", "4", "--img_size", "32", "--patch_size", "8", "--enc_dim", "24",
            "--enc_depth", "1", "--enc_heads", "2", "--pred_dim", "24", "--pred_depth", "1",
            "--token_vcr", "0", "--persist", "0", "--device", "cpu", "--dtype", "float32"]
    run = train.setup(train.parse_config(args))
    clips = torch.rand(5, 1, 4, 32, 32)
    loss, _, _ = train.vjepa_loss(run, clips, torch.Generator().manual_seed(0))
    nets = {"target": run.target, "online": run.net.encoder, "predictor": run.net.predictor}
    got = probe.surprise(nets, {"normal": clips, "other": clips.flip(0)}, ctx_steps=1)
    assert got["normal"].shape == (5,) and float(got["normal"].mean()) == pytest.approx(
        loss.item(), rel=1e-5)
    # another clip's future against this clip's context: the error of each pairing by hand
    ctx, tgt = masks.future(5, run.target.grid, 1)
    with torch.no_grad():
        pred = run.net.predictor(run.net.encoder(clips, keep=ctx), ctx, tgt)
        h = torch.nn.functional.layer_norm(run.target(clips.flip(0))[:, 16:], (24,))
    assert torch.allclose(got["other"], (pred - h).abs().mean((1, 2)), atol=1e-6)
