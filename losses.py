"""The objectives as functions of tensors: prediction losses, VJ-VCR's variance-covariance
regulariser, the two energies train.py's objectives return (`vjepa_energy`, `vjvcr_energy`), and
the collapse monitors its log records.

A prediction loss takes the predictions and the targets as two lists of [B, K, D] tensors (one
entry per mask configuration; VJ-VCR has one, [B, T, d]) and returns a scalar. To try another,
write one here with that signature, decorate it with @prediction_loss and run `python train.py
--loss my_loss`: it is then the energy of training and of the latent inference (z*) alike, where
it is applied to one clip at a time under torch.func.vmap, so it must not call .item() or branch
on values (README, "Adding a loss").
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F

PREDICTION_LOSSES = {}  # name -> function: what --loss accepts


def wide(x):
    """x in at least float32: bf16 (autocast) -> float32, float64 stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def prediction_loss(fn):
    """Register fn(preds, targets) -> scalar under its name, for --loss."""
    PREDICTION_LOSSES[fn.__name__] = fn
    return fn


@prediction_loss
def vjepa_l1(preds, targets):
    """V-JEPA loss (Bardes et al. 2024, eq. 1 with the L1 distance of sec. 3.1):

        L = 1/M sum_m  mean_{k in target_m, c} | P(z_m)_{k,c} - sg(LN(E_bar(x)))_{k,c} |

    preds, targets: lists over the M mask configurations of [B, K_m, D] tensors (the targets
    already layer-normed and without gradient). Each mask's mean is over its target tokens and
    channels; the masks then count equally."""
    per_mask = [(wide(p) - wide(t)).abs().mean() for p, t in zip(preds, targets)]
    return torch.stack(per_mask).mean()


@prediction_loss
def mse(preds, targets):
    """VJ-VCR prediction term D(h~_y, h_y) of eq. 5 (Drozdov et al. 2024), the mean squared
    error, averaged over the list entries: L = 1/M sum_m mean (h~_y - h_y)^2.
    Gradients flow into both sides (the same encoder makes h_x and h_y; no EMA)."""
    per_mask = [(wide(p) - wide(t)).pow(2).mean() for p, t in zip(preds, targets)]
    return torch.stack(per_mask).mean()


def pixel_mse(recon, frames):
    """Reconstruction term D(Dec(h~_y), y) of eq. 5 and the generative energy of eq. 7:
    the mean squared error between decoded and true target frames [B, C, T, H, W]."""
    return (recon.float() - frames.float()).pow(2).mean()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums, over ranks, the gradients each rank computed for each
    slice and hands every rank its own (an all-reduce: simple, any backend, and the embeddings
    are small). Every rank must hold the same number of rows. (torch.distributed.nn's
    all_gather gave wrong gradients on gloo here, cf. pytorch/pytorch#120386.)"""

    @staticmethod
    def forward(ctx, h):
        parts = [torch.empty_like(h) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, h.contiguous())
        ctx.rows = h.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_batch(h):
    """Concatenate `h` [n, ...] over all data-parallel ranks along dim 0, keeping gradients.
    A no-op in a single process. Each rank's loss then sees the global batch, and each rank
    gets world_size x the gradient of its slice, which DDP's averaging turns back into the
    single-process gradient."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return h
    return _GatherWithGrad.apply(h)


def vcr_terms(h, tau=1.0, eps=1e-4):
    """Variance-covariance regularisation of VJ-VCR (Drozdov et al. 2024, eq. 1-3).

    h: [N, T, d], one d-vector per time step for each of N clips; under data parallelism the
    statistics are over the global batch. With Var and Cov the unbiased 1/(N-1) estimators:

        l_var = 1/(T d) sum_t sum_k max(0, tau - sqrt(Var(H_{t,k}) + eps))          (eq. 1)
        C_t   = Cov(H_{t,:}) in R^{d x d}                                            (eq. 2)
        l_cov = 1/(T d) sum_t sum_{i != j} C_t[i, j]^2                               (eq. 3)

    Returns (l_var, l_cov) as scalar tensors."""
    h = gather_batch(h).float()
    N, T, d = h.shape
    centred = h - h.mean(dim=0)  # (N, T, d)
    var = centred.pow(2).sum(dim=0) / (N - 1)  # (T, d)
    l_var = F.relu(tau - torch.sqrt(var + eps)).sum() / (T * d)
    cov = torch.einsum("ntd,nte->tde", centred, centred) / (N - 1)  # (T, d, d)
    off_diagonal = cov.pow(2).sum() - cov.diagonal(dim1=1, dim2=2).pow(2).sum()
    return l_var, off_diagonal / (T * d)


def token_vcr(contexts):
    """VJ-VCR's regulariser on V-JEPA's context tokens (not in the V-JEPA paper): every context
    token of every mask is one sample of its D channels. contexts: [B, Kc, D] per mask
    -> (l_var, l_cov) of vcr_terms."""
    return vcr_terms(torch.cat([z.reshape(-1, 1, z.shape[-1]) for z in contexts]))


def vjepa_energy(loss, preds, targets, contexts, token_vcr_weight=0.0, alpha=0.5, beta=0.1,
                 persist_weight=0.0, projections=None):
    """V-JEPA's objective: loss = prediction + token regulariser + clip-level term,
        loss(preds, targets) + token_vcr_weight (alpha l_var + beta l_cov)(context tokens)
        + persist_weight (|a - b|^2 + alpha (l_var(a) + l_var(b)) + beta (l_cov(a) + l_cov(b))),
    the last VICReg (Bardes et al. 2022) between projections a, b [B, P] of each clip's mean
    context token and of its mean target: what the context says of the clip must hold in its
    future, and differ between clips. -> (loss, {term: value}; empty without the extra terms)."""
    if not (token_vcr_weight or persist_weight):
        return loss(preds, targets), {}
    terms = {"pred": loss(preds, targets)}
    if token_vcr_weight:
        l_var, l_cov = token_vcr(contexts)
        terms.update(var=token_vcr_weight * alpha * l_var, cov=token_vcr_weight * beta * l_cov)
    if persist_weight:
        a, b = projections
        (var_a, cov_a), (var_b, cov_b) = vcr_terms(a[:, None]), vcr_terms(b[:, None])
        terms["persist"] = persist_weight * (a - b).pow(2).mean()
        terms["clip_vc"] = persist_weight * (alpha * (var_a + var_b) + beta * (cov_a + cov_b))
    return sum(terms.values()), terms


def vjvcr_energy(loss, pred, h_y, h, recon=None, frames=None, alpha=0.5, beta=0.1, gamma=1.0):
    """VJ-VCR (Drozdov et al. 2024, eq. 5), with h = [h_x, h_y] one vector per time step:
        loss(h~_y, h_y) + alpha l_var(h) + beta l_cov(h) + gamma |Dec(h~_y) - y|^2.
    The generative baseline (eq. 7) has no h_y: |Dec(h~_y) - y|^2 + VCR of h = [h_x, h~_y].
    recon / frames: decoded and true target frames, or None without a decoder.
    -> (energy, {term: value})."""
    terms = {} if h_y is None else {"pred": loss([pred], [h_y])}
    if recon is not None:
        terms["pixel"] = gamma * pixel_mse(recon, frames)
    if alpha or beta:
        l_var, l_cov = vcr_terms(h)
        terms["var"], terms["cov"] = alpha * l_var, beta * l_cov
    return sum(terms.values()), terms


# ----------------------------------------------------------------------------------------------
# Monitors (logged, not minimised)

def rankme(emb, eps=1e-7):
    """RankMe (Garrido et al. 2023) of [N, D]: exp of the entropy of the normalised singular
    values; between 1 and min(N, D)."""
    s = torch.linalg.svdvals(emb.float())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def drift(module, start):
    """|w - w0| / |w0| over all parameters; start: the initial parameters in order."""
    moved = sum(float((p.float() - p0).pow(2).sum()) for p, p0 in zip(module.parameters(), start))
    return (moved / sum(float(p0.pow(2).sum()) for p0 in start)) ** 0.5


def collapse_monitors(h):
    """h: [B, T, S, D], S vectors per clip and time step -> (mean per-channel std over all
    vectors, RankMe of the vectors averaged per clip and time step)."""
    h = h.float()
    return float(h.flatten(0, 2).std(0).mean()), rankme(h.mean(2).flatten(0, 1))
