"""infer_latent.py against hand-computed values, an independent coordinate-descent Lasso solver
and a brute-force choice among generating options; the one-way imports of the project's files.
(The evaluation of latent models, probe.py, is tested in test_probe.py.)"""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import infer_latent
import losses
from infer_latent import discrete_argmin, minimise_l1, soft_threshold

K = 20  # latent size of VJ-VCR


@pytest.fixture(autouse=True)
def _one_thread():
    """The problems are tiny: with a second thread on a busy 2-core machine, each small matmul
    waits for the other thread (ms instead of us), so run them on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# Test problems and the reference solver

def lasso_problem(B, m, k=K, seed=0):
    """Random batched Lasso data A [B, m, k], b [B, m] (float64) and its smooth energy
    E(z) = 0.5 ||A z - b||^2 per sample."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, m, k, generator=g, dtype=torch.float64)
    b = torch.randn(B, m, generator=g, dtype=torch.float64)
    return A, b, quadratic_energy(A, b)


def quadratic_energy(A, b):
    return lambda z: 0.5 * (torch.einsum("bmk,bk->bm", A, z) - b).pow(2).sum(1)


def ill_conditioned_problem(m=40, k=K, cond=100.0, seed=0):
    """One Lasso problem whose A [1, m, k] has singular values log-spaced from 1 to 1/cond
    (so cond(A) = cond, cond(A^T A) = cond^2) and b = A z_true + noise with a 5-sparse z_true."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -np.log10(cond), k, dtype=torch.float64)
    A = ((U * s) @ V.T)[None]
    z_true = torch.zeros(1, k, dtype=torch.float64)
    z_true[0, :5] = torch.randn(5, generator=g, dtype=torch.float64)
    b = torch.einsum("bmk,bk->bm", A, z_true) + 0.01 * torch.randn(1, m, generator=g,
                                                                    dtype=torch.float64)
    return A, b, quadratic_energy(A, b)


def lasso_objective(A, b, z, lam):
    return 0.5 * np.sum((A @ z - b) ** 2) + lam * np.abs(z).sum()


def coordinate_descent(A, b, lam, max_sweeps=100_000, tol=1e-15):
    """Reference Lasso solver, independent of infer_latent: cyclic coordinate descent on
    0.5 ||A z - b||^2 + lam ||z||_1 (numpy float64). With the residual r = b - A z, the exact
    minimiser over coordinate j alone is z_j = S_lam(A_j^T r + ||A_j||^2 z_j) / ||A_j||^2."""
    m, k = A.shape
    z, r, col_sq = np.zeros(k), b.copy(), (A * A).sum(0)
    for _ in range(max_sweeps):
        biggest = 0.0
        for j in range(k):
            rho = A[:, j] @ r + col_sq[j] * z[j]
            new = np.sign(rho) * max(abs(rho) - lam, 0.0) / col_sq[j]
            if new != z[j]:
                r += A[:, j] * (z[j] - new)
                biggest = max(biggest, abs(new - z[j]))
                z[j] = new
        if biggest < tol:
            return z
    raise AssertionError("coordinate descent did not converge")


def zeros(B, k=K):
    return torch.zeros(B, k, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# soft_threshold

def test_soft_threshold_by_hand():
    v = torch.tensor([3.0, -2.0, 0.5, -0.5, 0.0, 1.0, -1.25])
    expected = torch.tensor([2.0, -1.0, 0.0, 0.0, 0.0, 0.0, -0.25])  # tau = 1
    assert torch.equal(soft_threshold(v, 1.0), expected)
    # one threshold per row, [B, 1]
    v = torch.tensor([[3.0, -3.0, 0.2], [3.0, -3.0, 0.2]])
    tau = torch.tensor([[0.5], [2.5]])
    expected = torch.tensor([[2.5, -2.5, 0.0], [0.5, -0.5, 0.0]])
    assert torch.allclose(soft_threshold(v, tau), expected)


# ----------------------------------------------------------------------------------------------
# FISTA against coordinate descent

@pytest.mark.parametrize("m, lam", [(30, 2.0), (10, 0.5), (40, 3.0)])
def test_fista_matches_coordinate_descent(m, lam):
    """Over-determined (m = 30, 40) and under-determined (m = 10 < k = 20) Lasso problems: the
    objectives agree to 1e-5 relative (they agree to ~1e-15), the solutions to 1e-6, and FISTA
    finds the exact zeros that coordinate descent finds."""
    A, b, energy = lasso_problem(4, m, seed=m)
    z, info = minimise_l1(energy, zeros(4), lam, steps=5000, tol=1e-10)
    assert info["converged"].all()
    for i in range(4):
        An, bn = A[i].numpy(), b[i].numpy()
        z_ref = coordinate_descent(An, bn, lam)
        f_ref = lasso_objective(An, bn, z_ref, lam)
        assert float(info["objective"][i]) == pytest.approx(f_ref, rel=1e-5)
        assert lasso_objective(An, bn, z[i].numpy(), lam) == pytest.approx(f_ref, rel=1e-5)
        np.testing.assert_allclose(z[i].numpy(), z_ref, atol=1e-6)
        assert 0 < (z_ref == 0).sum() < K  # a sparse, non-trivial solution ...
        np.testing.assert_array_equal(z[i].numpy() == 0, z_ref == 0)  # ... found exactly


def test_fista_needs_fewer_iterations_than_ista():
    """Lasso with cond(A) = 100: both reach the step tolerance, FISTA much sooner, and both
    land on the coordinate-descent objective. The printed line is quoted in reports
    (`pytest -s` shows it)."""
    A, b, energy = ill_conditioned_problem(cond=100.0)
    lam, tol = 1e-2, 1e-6
    _, info_f = minimise_l1(energy, zeros(1), lam, steps=5000, tol=tol, method="fista")
    _, info_i = minimise_l1(energy, zeros(1), lam, steps=5000, tol=tol, method="ista")
    assert info_f["converged"].all() and info_i["converged"].all()
    n_f, n_i = info_f["iterations"], info_i["iterations"]
    print(f"FISTA {n_f} iterations, ISTA {n_i} iterations (tol {tol:g}, problem: "
          f"0.5||Az-b||^2 + {lam:g}||z||_1, A 40x20 with cond(A)=100, z0=0, eta0=1)")
    assert 2 * n_f < n_i
    f_ref = lasso_objective(A[0].numpy(), b[0].numpy(),
                            coordinate_descent(A[0].numpy(), b[0].numpy(), lam), lam)
    assert float(info_f["objective"][0]) == pytest.approx(f_ref, rel=1e-6)
    assert float(info_i["objective"][0]) == pytest.approx(f_ref, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Monotonicity, restarts and step validity

def objectives(energy, lam, method, n):
    """F at iterates 0..n and the restarts so far, each from a run cut after k iterations
    (the iterates do not depend on where a run stops)."""
    runs = [minimise_l1(energy, zeros(1), lam, steps=k, tol=0, method=method)[1]
            for k in range(n + 1)]
    return (torch.stack([r["objective"][0] for r in runs]),
            torch.stack([r["restarts"][0] for r in runs]))


def test_ista_monotone_and_fista_increases_only_at_restarts():
    A, b, energy = ill_conditioned_problem(cond=100.0, seed=1)
    lam = 1e-2
    tr, restarts = objectives(energy, lam, "ista", 150)
    assert (tr[1:] <= tr[:-1] + 1e-12 * tr[:-1].abs()).all()  # ISTA: never up
    assert restarts.sum() == 0

    tr, restarts = objectives(energy, lam, "fista", 150)
    assert tr[-1] <= tr[0]
    went_up = (tr[1:] > tr[:-1] + 1e-12 * tr[:-1].abs()).nonzero().flatten() + 1
    # FISTA is not monotone on this problem: every increase triggered a restart at that step
    assert len(went_up) > 0 and (restarts[went_up] == restarts[went_up - 1] + 1).all()
    # ... and the step after it (a plain proximal step) goes down again
    for k in went_up.tolist():
        if k + 1 < len(tr):
            assert tr[k + 1] <= tr[k] * (1 + 1e-12)


def test_backtracking_makes_a_too_large_step_valid():
    """E = 0.5 ||A z - b||^2 has grad-Lipschitz constant L = lambda_max(A^T A). Starting from
    eta = 100 / L the first step fails the sufficient-decrease test; after backtracking it holds
    (checked here with the gradient A^T (A z0 - b) computed independently)."""
    A, b, energy = lasso_problem(1, 30, seed=3)
    lam = 0.5
    An, bn = A[0], b[0]
    L = float(torch.linalg.eigvalsh(An.T @ An).max())
    z0 = torch.randn(1, K, dtype=torch.float64)
    grad = An.T @ (An @ z0[0] - bn)

    def sufficient_decrease(eta):
        x = soft_threshold(z0[0] - eta * grad, lam * eta)
        d = x - z0[0]
        model = energy(z0)[0] + grad @ d + d @ d / (2 * eta)
        return bool(energy(x[None])[0] <= model), x

    assert not sufficient_decrease(100 / L)[0]  # the check can fail
    z1, info = minimise_l1(energy, z0, lam, steps=1, tol=0, method="ista", eta=100 / L)
    eta = float(info["eta"][0])
    assert eta < 100 / L
    ok, x = sufficient_decrease(eta)
    assert ok
    assert torch.allclose(z1[0], x)

    # and the full solve from the too-large step reaches the reference optimum
    _, info = minimise_l1(energy, z0, lam, steps=5000, tol=1e-10, eta=100 / L)
    assert info["converged"].all()
    f_ref = lasso_objective(An.numpy(), bn.numpy(),
                            coordinate_descent(An.numpy(), bn.numpy(), lam), lam)
    assert float(info["objective"][0]) == pytest.approx(f_ref, rel=1e-8)


# ----------------------------------------------------------------------------------------------
# Batching and frozen networks

def mlp_energy(targets, hidden=32):
    """A non-convex energy E(z) = ||dec(z) - target||^2 with a small frozen MLP decoder."""
    dec = nn.Sequential(nn.Linear(K, hidden), nn.Tanh(), nn.Linear(hidden, targets.shape[1]))
    dec = dec.double()
    return dec, lambda z: (dec(z) - targets).pow(2).sum(1)


def test_batch_equals_each_sample_alone():
    """A non-convex energy whose curvature differs by 100x across the batch: every sample
    backtracks to its own step size and stops on its own, exactly as when solved alone."""
    targets = torch.randn(5, 16, dtype=torch.float64)
    scale = torch.tensor([1.0, 10.0, 100.0, 3.0, 30.0], dtype=torch.float64)
    dec, _ = mlp_energy(targets)
    z0 = 0.1 * torch.randn(5, K, dtype=torch.float64)

    def energy_of(i):
        return lambda z: scale[i] * (dec(z) - targets[i]).pow(2).sum(1)

    z_batch, info = minimise_l1(energy_of(slice(None)), z0, 1.0, steps=2000, tol=1e-10)
    assert info["converged"].all()
    assert info["iterations_per_sample"].unique().numel() > 1  # samples stop on their own
    assert info["eta"].unique().numel() > 1                    # and step on their own
    for i in range(5):
        z_one, info_one = minimise_l1(energy_of(slice(i, i + 1)), z0[i:i + 1], 1.0,
                                      steps=2000, tol=1e-10)
        assert torch.allclose(z_batch[i], z_one[0], atol=1e-6)
        assert float(info["objective"][i]) == pytest.approx(float(info_one["objective"][0]),
                                                            abs=1e-6)
        assert float(info["eta"][i]) == float(info_one["eta"][0])


def test_under_no_grad_with_trainable_network():
    targets = torch.randn(3, 16, dtype=torch.float64)
    dec, energy = mlp_energy(targets)
    assert all(p.requires_grad for p in dec.parameters())
    z0 = zeros(3)
    with torch.no_grad():
        z, info = minimise_l1(energy, z0, 0.05, steps=100, tol=1e-8)
    assert all(p.grad is None for p in dec.parameters())
    assert not z.requires_grad
    assert (info["objective"] < energy(z0).detach()).all()
    z_grad_on, _ = minimise_l1(energy, z0, 0.05, steps=100, tol=1e-8)
    assert torch.equal(z, z_grad_on)
    assert all(p.grad is None for p in dec.parameters())


# ----------------------------------------------------------------------------------------------
# The discrete argmin

def test_unknown_method():
    with pytest.raises(ValueError):
        minimise_l1(lambda z: z.pow(2).sum(1), zeros(1), 0.1, method="adam")


def test_discrete_argmin_recovers_the_generating_option():
    B, n_options, d_in, d_out = 64, 6, 8, 12
    maps = torch.randn(n_options, d_out, d_in)
    x = torch.randn(B, d_in)
    option = torch.randint(n_options, (B,))
    targets = torch.einsum("bij,bj->bi", maps[option], x) + 0.01 * torch.randn(B, d_out)
    preds = torch.einsum("kij,bj->bki", maps, x)                       # [B, K, d_out]
    energies = (preds - targets[:, None]).pow(2).sum(-1)               # [B, K]
    one_hot, index = discrete_argmin(energies)
    assert torch.equal(index, option)
    assert one_hot.dtype == torch.float32 and one_hot.shape == (B, n_options)
    assert torch.equal(one_hot.argmax(1), option) and torch.equal(one_hot.sum(1), torch.ones(B))


def test_discrete_argmin_tie_goes_to_lowest_index():
    one_hot, index = discrete_argmin(torch.tensor([[2.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert index.tolist() == [1, 0]
    assert one_hot.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


# ----------------------------------------------------------------------------------------------
# z* for a VJ-VCR predictor, the classifiers, and the evaluation command

def test_infer_z_discrete_picks_the_option_that_made_the_target():
    import model
    from infer_latent import infer_z

    torch.manual_seed(0)
    pred = infer_latent.MLPPredictor(3, 3, dim=8, hidden=32, latent="discrete", latent_dim=5)
    h_x = torch.randn(40, 3, 8)
    k = torch.arange(40) % 5
    with torch.no_grad():
        h_y = pred.options(h_x)[torch.arange(40), k] + 0.01 * torch.randn(40, 3, 8)
    z = infer_z(pred, h_x, h_y, "discrete", loss=losses.mse)
    assert torch.equal(z.argmax(1), k) and torch.equal(z.sum(1), torch.ones(40))


def test_infer_z_sparse_is_optimal_and_respects_lambda():
    import model
    from infer_latent import infer_z

    torch.manual_seed(0)
    pred = infer_latent.MLPPredictor(3, 3, dim=8, hidden=32, latent="sparse", latent_dim=K).double()
    h_x = torch.randn(16, 3, 8, dtype=torch.float64)
    z_true = torch.zeros(16, K, dtype=torch.float64)
    z_true[torch.arange(16), torch.arange(16) % K] = 3.0  # one active component each
    with torch.no_grad():
        h_y = pred(h_x, z_true)
    lam = 1e-3

    def objective(z):
        with torch.no_grad():
            return (pred(h_x, z) - h_y).pow(2).flatten(1).mean(1) + lam * z.abs().sum(1)

    z = infer_z(pred, h_x, h_y, "sparse", lam=lam, steps=2000, tol=1e-8, loss=losses.mse)
    # E is a convex quadratic in z (the prediction is affine in z), so z* must satisfy the
    # optimality conditions of E + lam |z|_1, checked with a gradient computed here. Active
    # components: dE/dz_i = -lam sign(z_i); zero components: |dE/dz_i| <= lam.
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((pred(h_x, zz) - h_y).pow(2).flatten(1).mean(1).sum(), zz)
    active = z != 0
    assert active.any() and (~active).any()
    assert (grad[active] + lam * z[active].sign()).abs().max() < 1e-6
    assert (grad[~active].abs() <= lam + 1e-6).all()
    assert (objective(z) < objective(torch.zeros(16, K, dtype=torch.float64))).all()
    assert (objective(z) <= objective(z_true) + 1e-12).all()  # the global minimum
    assert pred.z_in.grad is None  # the networks are frozen during inference
    # a penalty larger than the energy can gain makes z* = 0 exactly
    assert torch.equal(infer_z(pred, h_x, h_y, "sparse", lam=10.0, steps=50, loss=losses.mse),
                       torch.zeros(16, K, dtype=torch.float64))


def test_sparse_z_is_inferred_under_the_training_energy_of_a_per_vector_loss(monkeypatch):
    """A loss that reduces over the last dimension (one minus the cosine of each predicted and
    target vector): the energy FISTA minimises is, clip by clip, the loss training computes on
    the same predictions, [1, T, d] each (a flattened [1, T * d] would give another cosine)."""
    from infer_latent import infer_z

    def cosine(preds, targets):
        return torch.stack([1 - torch.nn.functional.cosine_similarity(p, t, dim=-1).mean()
                            for p, t in zip(preds, targets)]).mean()

    torch.manual_seed(0)
    pred = infer_latent.MLPPredictor(3, 4, dim=6, hidden=32, latent="sparse", latent_dim=5)
    pred = pred.double()
    h_x, h_y = torch.randn(8, 3, 6, dtype=torch.float64), torch.randn(8, 4, 6, dtype=torch.float64)
    seen = []

    def spy(energy, z0, lam, *args, **kwargs):
        seen.append(energy)
        return minimise_l1(energy, z0, lam, *args, **kwargs)

    monkeypatch.setattr(infer_latent, "minimise_l1", spy)
    z_star = infer_z(pred, h_x, h_y, "sparse", lam=1e-3, steps=50, loss=cosine)
    [energy] = seen
    z = torch.randn(8, 5, dtype=torch.float64)
    with torch.no_grad():
        training = torch.stack([cosine([pred(h_x[b:b + 1], z[b:b + 1])], [h_y[b:b + 1]])
                                for b in range(8)])  # a loop over clips, as training sees one
        assert torch.allclose(energy(z), training, atol=1e-10)
        flat = torch.stack([cosine([pred(h_x[b:b + 1], z[b:b + 1]).flatten(1)],
                                   [h_y[b:b + 1].flatten(1)]) for b in range(8)])
        assert not torch.allclose(energy(z), flat, atol=1e-3)  # the test can tell them apart
    assert z_star.shape == (8, 5)


def test_imports_flow_one_way():
    """masks, losses -> model, infer_latent -> plan -> data -> probe -> train: each file imports
    only files to its left (read from the source, every import statement anywhere in the file),
    and no core file imports tools/."""
    import ast
    from pathlib import Path

    order = {"masks": 0, "losses": 0, "model": 1, "infer_latent": 1, "plan": 2, "data": 3,
             "probe": 4, "train": 5}
    tools = {p.stem for p in (Path(__file__).resolve().parents[1] / "tools").glob("*.py")}
    root = Path(__file__).resolve().parents[1]
    for name, level in order.items():
        tree = ast.parse((root / f"{name}.py").read_text())
        imported = {a.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for a in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        project = imported & set(order)
        assert all(order[m] < level for m in project), (name, sorted(project))
        assert not imported & (tools | {"tools"}), (name, sorted(imported & tools))
