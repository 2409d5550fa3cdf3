"""Latent-variable inference for VJ-VCR with the networks frozen: discrete argmin and sparse FISTA.

With the networks fixed, a latent is inferred per sample as the minimiser of an energy: over a
finite set of options (`discrete_argmin`) or, for a continuous sparse z in R^k, as
z* = argmin_z E(z) + lam ||z||_1 (`fista`, built on `minimise_l1`). `infer_z` applies them to
a VJ-VCR predictor; train.py calls it at every step, and probe.py to evaluate a trained model
(`python probe.py --ckpt out/switch_sparse80/ckpt.pt`: what z* knows, VJ-VCR Table 2).

This file imports nothing of the project (only torch): data, masks, losses, model ->
infer_latent -> train -> probe.
"""
import torch
import torch.nn.functional as F

MAX_BACKTRACKS = 30  # halvings of a sample's step per iteration before we accept the step anyway
SHRINK = 0.5         # factor applied to a step that fails the sufficient-decrease test


def soft_threshold(v, tau):
    """Proximal operator of tau ||.||_1, elementwise: S_tau(v) = sign(v) max(|v| - tau, 0).
    tau: a scalar or a tensor broadcastable to v (e.g. [B, 1], one threshold per sample)."""
    return torch.sign(v) * torch.clamp(v.abs() - tau, min=0)


def _value(smooth_energy, z):
    """E(z) [B] without building a graph (used for objective values and backtracking tests)."""
    with torch.no_grad():
        return smooth_energy(z).detach()


def _value_and_grad(smooth_energy, z):
    """E(z) [B] and grad_z E(z) [B, k]. The samples are independent, so the gradient of the
    sum is the stack of per-sample gradients: one backward pass for the whole batch. Gradients
    are taken w.r.t. z only, so the networks' parameters never receive a .grad."""
    with torch.enable_grad():  # the caller may be inside torch.no_grad()
        z = z.detach().requires_grad_(True)
        energy = smooth_energy(z)
        (grad,) = torch.autograd.grad(energy.sum(), z)
    return energy.detach(), grad


def _proximal_step(smooth_energy, y, energy_y, grad_y, lam, eta, active):
    """x = S_{lam eta}(y - eta grad E(y)) with per-sample backtracking on eta [B, 1].

    A step is valid when E lies below its quadratic model at y (sufficient decrease):
        E(x) <= E(y) + <grad E(y), x - y> + ||x - y||^2 / (2 eta).
    This always holds for eta <= 1/L (L the Lipschitz constant of grad E), and it is all the
    convergence proofs need, so we only shrink eta until it holds, sample by sample.
    Returns x, E(x) and the accepted eta."""
    # Tiny slack for round-off: near convergence both sides are equal up to the last bits, and
    # a test failing on round-off alone would shrink eta for nothing.
    slack = 10 * torch.finfo(y.dtype).eps * energy_y.abs()
    testing = active  # converged samples are frozen and need no test
    for rounds in range(MAX_BACKTRACKS + 1):
        x = soft_threshold(y - eta * grad_y, lam * eta)
        energy_x = _value(smooth_energy, x)  # the energy takes the whole batch, always
        d = x - y
        model = energy_y + (grad_y * d).sum(1) + d.pow(2).sum(1) / (2 * eta.squeeze(1))
        failed = testing & (energy_x > model + slack)
        if rounds == MAX_BACKTRACKS or not failed.any():
            break
        eta = torch.where(failed[:, None], eta * SHRINK, eta)
        testing = failed
    return x, energy_x, eta


def minimise_l1(smooth_energy, z0, lam, steps=200, tol=1e-6, method="fista", eta=1.0,
                trace=False):
    """Minimise F(z) = E(z) + lam ||z||_1 for a batch of independent samples.

    smooth_energy: z [B, k] -> E(z) [B], differentiable; sample b's energy may depend only on
        z[b]. It may close over networks (put them in eval mode; their parameters are not
        touched). z0: the start [B, k]. lam >= 0: a float.
    method:
      "fista": x_k = S_{lam eta}(y_k - eta grad E(y_k)),
               t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2,
               y_{k+1} = x_k + (t_k - 1) / t_{k+1} (x_k - x_{k-1})   (Beck & Teboulle 2009),
               with function-value adaptive restart (O'Donoghue & Candes 2015): when
               F(x_k) > F(x_{k-1}), that sample's momentum is reset (t_k = 1, so y_{k+1} = x_k).
      "ista":  the same proximal step without momentum (y_{k+1} = x_k).
      "gd":    plain subgradient descent z <- z - eta (grad E(z) + lam sign(z)) with the fixed
               step eta, no backtracking; for comparison only. It never lands on exact zeros
               (coordinates that should be 0 oscillate around it) and usually runs all steps.
    Every sample has its own step eta_b, starting at `eta`. For fista/ista it is halved until the
    sufficient-decrease test holds (at most MAX_BACKTRACKS times per iteration). Each later
    iteration first lets it double back, up to eta_1, the step accepted at the first iteration
    (the sample's first local 1/L estimate). Without the regrowth (Beck & Teboulle's version)
    one kink of a ReLU network, where no quadratic bound holds, could shrink eta for good and
    leave the sample crawling.
    Stopping, per sample: s ||x_k - x_{k-1}||_inf <= tol max(1, ||x_k||_inf), where
    s = max(1, eta_1 / eta_b): the step as it would be at the sample's normal step size, so a
    sample whose step was just cut short at a kink is not taken for converged. A converged sample is frozen. The loop ends when all have converged
    or after `steps` iterations.

    What is guaranteed (fista/ista, given the test passed, i.e. the backtracking cap was not hit):
    ISTA never increases F. FISTA may increase F, but only at an iteration that triggers a
    restart, and the step after a restart is an ISTA step, so F(x_{k+1}) <= F(x_k) right after.
    For convex E with L-smooth gradient, ISTA converges to a global minimiser with
    F - F* = O(1/k). FISTA's O(1/k^2) (Beck & Teboulle) is proved for non-increasing steps; with
    the regrowth and the restart we rely on practice, not on that proof. What is not: the restart has no general rate proof (O'Donoghue & Candes analyse quadratics; in
    practice it is much faster); F(final) <= F(z0) for FISTA holds in practice, not by proof;
    for a non-convex E (a network) one gets at best a stationary point near z0; and the stopping
    rule measures the step length, not the distance to the minimiser.

    Returns z [B, k] (detached) and info: "iterations" (int, until all converged),
    "iterations_per_sample" [B], "objective" F(z) [B], "converged" [B] (bool), "eta" [B] (final
    steps), "restarts" [B] (fista), and with trace=True "trace" [iterations + 1, B], F at every
    iterate starting with z0.
    """
    if method not in ("fista", "ista", "gd"):
        raise ValueError(f"method must be 'fista', 'ista' or 'gd', not {method!r}")
    x_prev = z0.detach().clone()  # the latest iterate: x_{k-1} while computing x_k
    B = x_prev.shape[0]
    eta_b = torch.full((B, 1), float(eta), dtype=x_prev.dtype, device=x_prev.device)
    active = torch.ones(B, dtype=torch.bool, device=x_prev.device)
    iters_b = torch.zeros(B, dtype=torch.long, device=x_prev.device)
    restarts = torch.zeros(B, dtype=torch.long, device=x_prev.device)

    if method == "gd":
        history = []
        it = 0
        for it in range(1, steps + 1):
            energy, grad = _value_and_grad(smooth_energy, x_prev)
            history.append(energy + lam * x_prev.abs().sum(1))
            x = x_prev - eta_b * (grad + lam * torch.sign(x_prev))
            done_now = active & _small_step(x, x_prev, tol)
            iters_b[done_now] = it
            x_prev = torch.where(active[:, None], x, x_prev)
            active = active & ~done_now
            if not active.any():
                break
        objective = _value(smooth_energy, x_prev) + lam * x_prev.abs().sum(1)
        history.append(objective)
    else:
        y = x_prev.clone()
        t = torch.ones(B, 1, dtype=x_prev.dtype, device=x_prev.device)
        objective = _value(smooth_energy, x_prev) + lam * x_prev.abs().sum(1)  # F(x_{k-1})
        history = [objective]
        it = 0
        for it in range(1, steps + 1):
            if it > 1:  # let a step cut short at a kink grow back, up to the first estimate
                eta_b = torch.minimum(eta_b / SHRINK, eta_first)
            energy_y, grad_y = _value_and_grad(smooth_energy, y)
            x, energy_x, eta_b = _proximal_step(smooth_energy, y, energy_y, grad_y, lam, eta_b,
                                                active)
            objective_x = energy_x + lam * x.abs().sum(1)
            if method == "fista":
                # Restart: momentum carried us uphill, so forget it (t = 1 gives y_{k+1} = x_k).
                restart = active & (objective_x > objective)
                restarts += restart
                t = torch.where(restart[:, None], torch.ones_like(t), t)
                t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
                y_next = x + (t - 1) / t_next * (x - x_prev)
            else:
                t_next, y_next = t, x
            if it == 1:
                eta_first = eta_b.clone()
            done_now = active & _small_step(x, x_prev, tol, (eta_first / eta_b).clamp(min=1))
            iters_b[done_now] = it
            # The active samples (including those converging now) take the step; the rest stay.
            x_prev = torch.where(active[:, None], x, x_prev)
            y = torch.where(active[:, None], y_next, y)
            t = torch.where(active[:, None], t_next, t)
            objective = torch.where(active, objective_x, objective)
            history.append(objective)
            active = active & ~done_now
            if not active.any():
                break

    converged = ~active
    iters_b = torch.where(converged, iters_b, torch.full_like(iters_b, it))
    info = {"iterations": it, "iterations_per_sample": iters_b, "objective": objective,
            "converged": converged, "eta": eta_b.squeeze(1), "restarts": restarts}
    if trace:
        info["trace"] = torch.stack(history)
    return x_prev, info


def _small_step(x, x_prev, tol, scale=1.0):
    """Per-sample stopping test [B]: scale ||x - x_prev||_inf <= tol max(1, ||x||_inf)."""
    step = (x - x_prev).abs().amax(1) * (scale.squeeze(1) if torch.is_tensor(scale) else scale)
    return step <= tol * x.abs().amax(1).clamp(min=1)


def fista(smooth_energy, z0, lam, steps=200, tol=1e-6):
    """Sparse latent z* = argmin_z E(z) + lam ||z||_1 by FISTA with backtracking and adaptive
    restart; z0 [B, k] -> z* [B, k]. See `minimise_l1` for the details and guarantees."""
    z, _ = minimise_l1(smooth_energy, z0, lam, steps=steps, tol=tol, method="fista")
    return z


def discrete_argmin(energies):
    """Discrete latent: energies [B, K] of every option -> (one-hot z* [B, K], index [B]) of the
    minimum, z*_b = e_{argmin_j energies[b, j]}; a tie goes to the lowest index."""
    index = energies.argmin(1)  # torch returns the first minimal index
    dtype = energies.dtype if energies.is_floating_point() else torch.float32
    return F.one_hot(index, energies.shape[1]).to(dtype), index


# ----------------------------------------------------------------------------------------------
# z* for a VJ-VCR predictor (used by train.py at every step and by probe.py's evaluation)

def infer_z(predictor, h_x, h_y, kind, lam=0.0, steps=20, tol=1e-4, method="fista"):
    """z* = argmin_z E(z) (+ lam |z|_1 when sparse) with the networks frozen (VJ-VCR eq. 6),
    E(z) = D(Pred(h_x, z), h_y), the mean squared error of one clip's predicted target steps.
    h_x [B, n, d], h_y [B, T, d] -> z* [B, K] (one-hot) or [B, k]. No gradient reaches the
    networks; the caller then trains them with z* held fixed."""
    dtype = torch.promote_types(h_x.dtype, torch.float32)  # at least float32, for tolerances
    h_x, h_y = h_x.detach().to(dtype), h_y.detach().to(dtype)
    with torch.autocast(h_x.device.type, enabled=False):
        if kind == "discrete":
            with torch.no_grad():
                energies = (predictor.options(h_x) - h_y[:, None]).pow(2).flatten(2).mean(2)
            return discrete_argmin(energies)[0]

        # Pred(h_x, z) = Pred(h_x, 0) + z M: the MLP runs once, each iteration is one product
        z0 = h_x.new_zeros(len(h_x), predictor.z_in.shape[1])
        with torch.no_grad():
            residual = predictor(h_x, z0).flatten(1) - h_y.flatten(1)  # (B, T * d)
            M = predictor.latent_map().to(dtype)  # (k, T * d)

        def energy(z):
            return (residual + z @ M).pow(2).mean(1)

        return minimise_l1(energy, z0, lam, steps, tol, method)[0]
