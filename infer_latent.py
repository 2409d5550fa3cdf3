"""VJ-VCR (Drozdov, Shwartz-Ziv and LeCun 2024) on MovingMNIST: its conv encoder, MLP predictor
with an optional latent and decoder, its objective, and the inference of the latent z* with the
networks frozen: the option of lowest energy (discrete) or FISTA on E(z) + lam |z|_1 (sparse).

`VJVCR` is what train.py trains for the objectives vjvcr and generative, `vjvcr_loss` their
objective (losses.vjvcr_energy); it calls `infer_z` at every step of a latent model, under the
run's own prediction loss, and tools/probe_vcr.py calls it to evaluate one.
"""
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import losses

# ----------------------------------------------------------------------------------------------
# The networks (Drozdov et al. 2024, sec. 4.4): one vector per frame

def _conv_bn_relu(cin, cout, kernel, stride, padding, transpose=False):
    conv = (nn.ConvTranspose3d if transpose else nn.Conv3d)(cin, cout, kernel, stride, padding,
                                                            bias=False)
    return nn.Sequential(conv, nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


def _channels_last(x):
    """The same values stored channels-last, the order oneDNN's CPU convolutions compute in
    (a copy: with C = 1 the default order already passes for channels-last)."""
    return x.clone(memory_format=torch.channels_last_3d)


def grid_pool(x, grid):
    """Average a feature map [B, C, T, H, W] to a grid x grid map per time step, flattened per
    frame as (channel, row, column) -> [B, T, C * grid^2]. grid 1: the global average."""
    B, C, T, H, W = x.shape
    cells = F.avg_pool3d(x, (1, H // grid, W // grid))  # (B, C, T, g, g)
    return cells.transpose(1, 2).reshape(B, T, C * grid * grid)


class ConvEncoder(nn.Module):
    """3 spatial convolutions (1x4x4, stride 2: 64 -> 8 pixels) and 2 temporal ones (3x1x1),
    each with BatchNorm and ReLU, then grid_pool of the 8x8 map.
    [B, C, T, H, W] -> [B, T, dim * grid^2] (`out_dim` wide)."""

    def __init__(self, in_chans=1, dim=128, width=32, grid=1):
        super().__init__()
        self.grid, self.out_dim = grid, dim * grid * grid
        spatial = dict(kernel=(1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1))
        temporal = dict(kernel=(3, 1, 1), stride=1, padding=(1, 0, 0))
        self.layers = nn.Sequential(
            _conv_bn_relu(in_chans, width, **spatial),
            _conv_bn_relu(width, 2 * width, **spatial),
            _conv_bn_relu(2 * width, dim, **spatial),
            _conv_bn_relu(dim, dim, **temporal),
            _conv_bn_relu(dim, dim, **temporal))

    def forward(self, x):
        if x.shape[-1] % (8 * self.grid):
            raise ValueError(f"a {x.shape[-1]}-pixel frame gives a {x.shape[-1] // 8}-wide map, "
                             f"not a multiple of grid={self.grid}")
        return grid_pool(self.layers(_channels_last(x)), self.grid)  # (B, T, dim * g^2)


class MLPPredictor(nn.Module):
    """All target steps at once from the context steps, an MLP with 2 hidden layers:
    [B, T_ctx, dim] -> [B, T_tgt, dim], optionally conditioned on a latent z (sec. 3.1):
    "discrete": z one-hot [B, K] picks one of K stacked copies of the last layer (`options`
    gives all K predictions [B, K, T_tgt, dim]); "sparse": z [B, k], L1-penalised at inference."""

    def __init__(self, ctx_steps=3, tgt_steps=12, dim=128, hidden=1024, latent="none",
                 latent_dim=0):
        super().__init__()
        self.tgt_steps, self.dim, self.latent = tgt_steps, dim, latent
        copies = latent_dim if latent == "discrete" else 1
        self.net = nn.Sequential(
            nn.Linear(ctx_steps * dim, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, copies * tgt_steps * dim))
        if latent == "sparse":
            # z shifts the last hidden layer (after its ReLU) along unit-norm columns: the
            # prediction is affine in z, so E(z) is a convex quadratic that FISTA solves exactly,
            # and the L1 penalty cannot be dodged by shrinking z and growing the weights
            self.z_in = nn.Parameter(torch.randn(hidden, latent_dim) / hidden ** 0.5)

    def options(self, h_x):
        """Discrete latent: the prediction under every option, [B, K, T_tgt, dim]."""
        return self.net(h_x.flatten(1)).view(len(h_x), -1, self.tgt_steps, self.dim)

    def latent_map(self):
        """Sparse latent: Pred(h_x, z) = Pred(h_x, 0) + z M, M = (W_last D)^T [k, T_tgt * dim]."""
        return (self.net[-1].weight @ F.normalize(self.z_in, dim=0)).T

    def forward(self, h_x, z=None):
        if self.latent == "discrete":
            return torch.einsum("bk,bktd->btd", z.to(h_x.dtype), self.options(h_x))
        x = h_x.flatten(1)
        if self.latent == "sparse":
            hidden = self.net[:-1](x) + z.to(x.dtype) @ F.normalize(self.z_in, dim=0).T.to(x.dtype)
            x = self.net[-1](hidden)
        else:
            x = self.net(x)
        return x.view(-1, self.tgt_steps, self.dim)


class ConvDecoder(nn.Module):
    """The encoder mirrored, then a sigmoid: [B, T, dim * grid^2] -> [B, C, T, H, W] in [0, 1].
    The pooling is undone by repeating each cell over the positions it averaged; a global
    vector (grid 1) would say nothing of where the digit is, so there a linear map makes the map."""

    def __init__(self, in_chans=1, dim=128, width=32, img_size=64, grid=1):
        super().__init__()
        self.dim, self.side, self.grid = dim, img_size // 8, grid
        self.unpool = nn.Linear(dim, dim * self.side ** 2) if grid == 1 else None
        spatial = dict(kernel=(1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1), transpose=True)
        temporal = dict(kernel=(3, 1, 1), stride=1, padding=(1, 0, 0))
        self.layers = nn.Sequential(
            _conv_bn_relu(dim, dim, **temporal),
            _conv_bn_relu(dim, dim, **temporal),
            _conv_bn_relu(dim, 2 * width, **spatial),
            _conv_bn_relu(2 * width, width, **spatial),
            nn.ConvTranspose3d(width, in_chans, (1, 4, 4), (1, 2, 2), (0, 1, 1)))

    def unpool_map(self, h):
        """[B, T, dim * grid^2] -> the 8x8 map [B, dim, T, side, side]."""
        B, T, _ = h.shape
        g, s = self.grid, self.side
        if g == 1:
            return self.unpool(h).view(B, T, self.dim, s, s).transpose(1, 2)
        cells = h.view(B, T, self.dim, g, g).transpose(1, 2)  # (B, dim, T, g, g)
        return cells.repeat_interleave(s // g, dim=3).repeat_interleave(s // g, dim=4)

    def forward(self, h):
        return torch.sigmoid(self.layers(_channels_last(self.unpool_map(h))))  # (B, C, T, H, W)


class VJVCR(nn.Module):
    """The networks of VJ-VCR (objective vjvcr) and of its generative baseline as one module
    (data parallelism wraps one forward); x = the first mask_ctx_frames frames, y = the rest.
    forward(clips) -> (h~_y [B, T_y, d], h_y [B, T_y, d] or None (generative: y is not
    encoded), h = [h_x; h_y or h~_y] [B, T, d], decoded frames [B, C, T_y, H, W] or None);
    vjvcr_loss turns them into losses.vjvcr_energy. With a latent, h~_y = Pred(h_x, z*),
    z* inferred under the run's loss with the networks frozen, then held fixed."""

    def __init__(self, cfg, loss_fn):
        super().__init__()
        n = cfg.mask_ctx_frames
        self.cfg, self.loss_fn = cfg, loss_fn
        self.encoder = ConvEncoder(cfg.in_chans, cfg.enc_dim, grid=cfg.pool_grid)
        self.predictor = MLPPredictor(n, cfg.num_frames - n, self.encoder.out_dim,
                                      latent=cfg.latent, latent_dim=cfg.latent_dim)
        self.decoder = None
        if cfg.objective == "generative" or cfg.vcr_gamma > 0:
            self.decoder = ConvDecoder(cfg.in_chans, cfg.enc_dim, img_size=cfg.img_size,
                                       grid=cfg.pool_grid)

    def checkpoint_nets(self):
        """{checkpoint name: module}; one encoder for x and y, under the key probes read too."""
        nets = {"encoder": self.encoder, "predictor": self.predictor,
                "target_encoder": self.encoder}
        return {**nets, **({"decoder": self.decoder} if self.decoder else {})}

    def forward(self, clips):
        cfg, n = self.cfg, self.cfg.mask_ctx_frames
        h_x = self.encoder(clips[:, :, :n])  # (B, n, d)
        h_y = self.encoder(clips[:, :, n:]) if cfg.objective == "vjvcr" else None  # (B, T_y, d)
        z = None
        if cfg.latent != "none":
            z = infer_z(self.predictor, h_x, h_y, cfg.latent, cfg.latent_lam, cfg.latent_steps,
                        loss=self.loss_fn)
            self.last_z = z  # for the log
        pred = self.predictor(h_x, z)  # (B, T_y, d)
        h = torch.cat([h_x, pred if h_y is None else h_y], dim=1)  # VCR: one vector per step
        return pred, h_y, h, None if self.decoder is None else self.decoder(pred)


def vjvcr_loss(run, clips, generator=None):
    """VJ-VCR (Drozdov et al. 2024, eq. 5) or its generative baseline (eq. 7) on clips
    [B, C, T, H, W]: x = the first mask_ctx_frames frames, y = the rest."""
    cfg = run.cfg
    # h~_y = Pred(h_x, z*) [B, T_y, d]; h_y = Enc(y) (None: generative); h = [h_x; h_y or h~_y]
    pred, h_y, h, frames = run.net(clips)  # frames: Dec(h~_y) [B, C, T_y, H, W] or None
    loss, terms = losses.vjvcr_energy(
        losses.PREDICTION_LOSSES[cfg.loss], pred, h_y, h, frames, clips[:, :, cfg.mask_ctx_frames:],
        cfg.vcr_alpha, cfg.vcr_beta, cfg.vcr_gamma if cfg.objective == "vjvcr" else 1.0)
    return loss, terms, h[:, :, None]  # one vector per clip and time step



# ----------------------------------------------------------------------------------------------
# z* with the networks frozen

MAX_BACKTRACKS = 30  # halvings of a sample's step per iteration before we accept the step anyway
SHRINK = 0.5         # factor applied to a step that fails the sufficient-decrease test


def soft_threshold(v, tau):
    """Proximal operator of tau ||.||_1, elementwise: S_tau(v) = sign(v) max(|v| - tau, 0).
    tau: a scalar or a tensor broadcastable to v (e.g. [B, 1], one threshold per sample)."""
    return torch.sign(v) * torch.clamp(v.abs() - tau, min=0)


def _value(smooth_energy, z):
    """E(z) [B] without building a graph."""
    with torch.no_grad():
        return smooth_energy(z).detach()


def _value_and_grad(smooth_energy, z):
    """E(z) [B] and grad_z E(z) [B, k] in one backward pass of the sum (the samples are
    independent); with respect to z only: the networks' parameters get no .grad."""
    with torch.enable_grad():  # the caller may be inside torch.no_grad()
        z = z.detach().requires_grad_(True)
        energy = smooth_energy(z)
        (grad,) = torch.autograd.grad(energy.sum(), z)
    return energy.detach(), grad


def _proximal_step(smooth_energy, y, energy_y, grad_y, lam, eta, active):
    """x = S_{lam eta}(y - eta grad E(y)) with per-sample backtracking on eta [B, 1]: eta
    shrinks until E(x) <= E(y) + <grad E(y), x - y> + ||x - y||^2 / (2 eta) (it holds for eta
    <= 1/L, and it is all the convergence proofs need). -> (x, E(x), the accepted eta)"""
    # slack for round-off: near convergence both sides agree to the last bits
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


def minimise_l1(smooth_energy, z0, lam, steps=200, tol=1e-6, method="fista", eta=1.0):
    """Minimise F(z) = E(z) + lam ||z||_1 for a batch of independent samples: smooth_energy
    z [B, k] -> E(z) [B], sample b's energy a function of z[b] only; z0 [B, k]; lam >= 0.
    "fista": proximal gradient steps x_k = S_{lam eta}(y_k - eta grad E(y_k)) with Nesterov
    momentum (Beck & Teboulle 2009), reset where F(x_k) > F(x_{k-1}) (O'Donoghue & Candes
    2015); "ista": without momentum. Each sample's step eta_b is halved until the
    sufficient-decrease test holds, then let grow back to its first value, so one kink of a
    ReLU energy cannot shrink it for good; a sample is frozen once s ||x_k - x_{k-1}||_inf <=
    tol max(1, ||x_k||_inf), s = max(1, eta_1 / eta_b). For a convex E with a Lipschitz
    gradient ISTA never increases F, FISTA only at a restart (then an ISTA step).
    -> z [B, k] (detached), info: "iterations", "iterations_per_sample" [B], "objective" F(z)
    [B], "converged" [B], "eta" [B], "restarts" [B]."""
    if method not in ("fista", "ista"):
        raise ValueError(f"method must be 'fista' or 'ista', not {method!r}")
    x_prev = z0.detach().clone()  # the latest iterate: x_{k-1} while computing x_k
    B = x_prev.shape[0]
    eta_b = torch.full((B, 1), float(eta), dtype=x_prev.dtype, device=x_prev.device)
    active = torch.ones(B, dtype=torch.bool, device=x_prev.device)
    iters_b = torch.zeros(B, dtype=torch.long, device=x_prev.device)
    restarts = torch.zeros(B, dtype=torch.long, device=x_prev.device)

    y = x_prev.clone()
    t = torch.ones(B, 1, dtype=x_prev.dtype, device=x_prev.device)
    objective = _value(smooth_energy, x_prev) + lam * x_prev.abs().sum(1)  # F(x_{k-1})
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
        active = active & ~done_now
        if not active.any():
            break

    converged = ~active
    iters_b = torch.where(converged, iters_b, torch.full_like(iters_b, it))
    info = {"iterations": it, "iterations_per_sample": iters_b, "objective": objective,
            "converged": converged, "eta": eta_b.squeeze(1), "restarts": restarts}
    return x_prev, info


def _small_step(x, x_prev, tol, scale):
    """Per-sample stopping test [B]: scale [B, 1] ||x - x_prev||_inf <= tol max(1, ||x||_inf)."""
    return (x - x_prev).abs().amax(1) * scale.squeeze(1) <= tol * x.abs().amax(1).clamp(min=1)


def discrete_argmin(energies):
    """Discrete latent: energies [B, K] of every option -> (one-hot z* [B, K], index [B]) of the
    minimum, z*_b = e_{argmin_j energies[b, j]}; a tie goes to the lowest index."""
    index = energies.argmin(1)  # torch returns the first minimal index
    dtype = energies.dtype if energies.is_floating_point() else torch.float32
    return F.one_hot(index, energies.shape[1]).to(dtype), index


# ----------------------------------------------------------------------------------------------
# z* for a VJ-VCR predictor

def per_clip(loss):
    """A prediction loss (lists of [B, ...] -> scalar) as the energy of each clip -> [B]."""
    return torch.func.vmap(lambda p, t: loss([p[None]], [t[None]]))


def infer_z(predictor, h_x, h_y, kind, lam=0.0, steps=20, tol=1e-4, *, loss):
    """z* = argmin_z E(z) (+ lam |z|_1 when sparse) with the networks frozen (VJ-VCR eq. 6),
    E(z) = loss(Pred(h_x, z), h_y) of each clip, `loss` the run's prediction loss.
    h_x [B, n, d], h_y [B, T, d] -> z* [B, K] (one-hot) or [B, k]. No gradient reaches the
    networks; the caller then trains them with z* held fixed."""
    dtype = torch.promote_types(h_x.dtype, torch.float32)  # at least float32, for tolerances
    h_x, h_y = h_x.detach().to(dtype), h_y.detach().to(dtype)
    energy_of = per_clip(loss)
    with torch.autocast(h_x.device.type, enabled=False):
        if kind == "discrete":
            with torch.no_grad():
                options = predictor.options(h_x)  # (B, K, T, d)
                energies = torch.func.vmap(energy_of, in_dims=(1, None), out_dims=1)(
                    options, h_y)  # (B, K)
            return discrete_argmin(energies)[0]

        # Pred(h_x, z) = Pred(h_x, 0) + z M: the MLP runs once, each iteration is one product
        z0 = h_x.new_zeros(len(h_x), predictor.z_in.shape[1])
        with torch.no_grad():
            pred0 = predictor(h_x, z0)  # (B, T, d)
            M = predictor.latent_map().to(dtype).view(len(z0[0]), *pred0.shape[1:])  # (k, T, d)

        def energy(z):  # the loss sees [T, d] per clip, as in training
            return energy_of(pred0 + torch.einsum("bk,ktd->btd", z, M), h_y)

        return minimise_l1(energy, z0, lam, steps, tol)[0]


def check_config(cfg):
    """VJ-VCR's and the latents' settings of a train.Config: ValueError naming the first bad one."""
    if cfg.objective in ("vjvcr", "generative"):
        if not 0 < cfg.mask_ctx_frames < cfg.num_frames:
            raise ValueError(f"mask_ctx_frames={cfg.mask_ctx_frames} leaves no context or no "
                             f"target among num_frames={cfg.num_frames}")
        if cfg.img_size % 8:
            raise ValueError(f"img_size={cfg.img_size}: the conv encoder needs a multiple of 8")
        side = cfg.img_size // 8
        if cfg.pool_grid < 1 or side % cfg.pool_grid:
            raise ValueError(f"pool_grid={cfg.pool_grid} does not divide the {side}x{side} map "
                             f"of each frame (img_size={cfg.img_size})")
    if cfg.latent != "none":
        if cfg.objective != "vjvcr" or cfg.vcr_gamma:
            raise ValueError(f"--latent {cfg.latent} needs --objective vjvcr and --vcr_gamma 0 "
                             "(E(z) is the feature prediction error)")
        if cfg.latent_dim < (2 if cfg.latent == "discrete" else 1) or cfg.latent_lam < 0:
            raise ValueError(f"--latent {cfg.latent}: latent_dim={cfg.latent_dim}, latent_lam="
                             f"{cfg.latent_lam}; expected latent_dim >= 2 (discrete) or >= 1 "
                             "(sparse) and latent_lam >= 0")


def z_usage(z):
    """How a batch's z* [B, k] is used, for the log: the share of zeros, and of the clips that
    chose the most chosen option (the largest |z_i|)."""
    return {"z_zero": float((z == 0).float().mean()),
            "z_top": float(torch.bincount(z.abs().argmax(1)).max()) / len(z)}


def restart_unused_option(predictor, opt, counts, generator, noise=0.01):
    """Discrete latent: only the chosen option's copy of the last layer learns, so the copy that
    wins the first batches wins all later ones. As k-means does with an empty cluster, the least
    chosen option, if it took fewer than 1/(4K) of the batch's clips (counts [K]), becomes a copy
    of the most chosen one (its rows of the last layer and their Adam moments) plus Gaussian
    noise of `noise` x the copied weights' std. -> the option restarted, or None."""
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


def restart_unused_options(net, opt, generator, world=1):
    """A discrete-latent VJVCR's last batch -> restart_unused_option on the clips per option,
    summed over processes so that every process restarts the same option with the same noise."""
    counts = net.last_z.detach().sum(0)
    if world > 1:
        dist.all_reduce(counts)
    return restart_unused_option(net.predictor, opt, counts, generator)


