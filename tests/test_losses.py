"""losses.py against loops and closed forms."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import losses


def test_vjepa_l1_against_a_loop():
    preds = [torch.randn(2, 3, 4), torch.randn(2, 5, 4)]
    targets = [torch.randn(2, 3, 4), torch.randn(2, 5, 4)]
    per_mask = []
    for p, t in zip(preds, targets):
        total = sum(abs(float(p[b, k, c] - t[b, k, c]))
                    for b in range(2) for k in range(p.shape[1]) for c in range(4))
        per_mask.append(total / p.numel())
    assert float(losses.vjepa_l1(preds, targets)) == pytest.approx(sum(per_mask) / 2, rel=1e-5)


def naive_vcr(h, tau, eps):
    """Eq. 1-3 with loops over time steps, components and component pairs."""
    N, T, d = h.shape
    l_var, l_cov = 0.0, 0.0
    for t in range(T):
        for k in range(d):
            col = [float(h[n, t, k]) for n in range(N)]
            mean = sum(col) / N
            var = sum((x - mean) ** 2 for x in col) / (N - 1)
            l_var += max(0.0, tau - (var + eps) ** 0.5)
        for i in range(d):
            for j in range(d):
                if i != j:
                    mi = sum(float(h[n, t, i]) for n in range(N)) / N
                    mj = sum(float(h[n, t, j]) for n in range(N)) / N
                    c = sum((float(h[n, t, i]) - mi) * (float(h[n, t, j]) - mj)
                            for n in range(N)) / (N - 1)
                    l_cov += c * c
    return l_var / (T * d), l_cov / (T * d)


def test_vcr_terms_against_naive_loops():
    h = torch.randn(7, 3, 4) * torch.tensor([0.3, 1.0, 2.0, 0.7])  # some stds below tau
    l_var, l_cov = losses.vcr_terms(h, tau=1.0, eps=1e-4)
    ref_var, ref_cov = naive_vcr(h, 1.0, 1e-4)
    assert float(l_var) == pytest.approx(ref_var, rel=1e-5)
    assert float(l_cov) == pytest.approx(ref_cov, rel=1e-5)


def test_persist_term_on_a_hand_worked_pair():
    """a = (0, 2), b = (0, 0), one channel: |a - b|^2 = 2; std(a) = sqrt(2) > 1, so its
    variance term is 0; b's is 1 - sqrt(1e-4) = 0.99; no covariance with one channel."""
    a, b = torch.tensor([[0.0], [2.0]]), torch.zeros(2, 1)
    pred = [torch.ones(2, 3, 4)], [torch.zeros(2, 3, 4)]  # L1 = 1
    loss, terms = losses.vjepa_energy(losses.vjepa_l1, *pred, None, 0.0, 0.5, 0.1, 3.0, (a, b))
    assert float(terms["persist"]) == pytest.approx(3.0 * 2.0)
    assert float(terms["clip_vc"]) == pytest.approx(3.0 * 0.5 * 0.99)
    assert float(loss) == pytest.approx(1.0 + 6.0 + 1.485)


def test_variance_term_zero_iff_every_std_reaches_tau():
    h = torch.randn(64, 2, 5)
    h = (h - h.mean(0)) / h.std(0)  # every std exactly 1
    assert float(losses.vcr_terms(2.0 * h, tau=1.0)[0]) == 0.0
    small = h.clone()
    small[:, 1, 3] *= 0.5  # one component of one time step below tau
    l_var = float(losses.vcr_terms(small, tau=1.0, eps=0.0)[0])
    assert l_var == pytest.approx(0.5 / (2 * 5), rel=1e-4)


def test_covariance_term_zero_for_decorrelated_features():
    N, T, d = 32, 3, 6
    h = torch.empty(N, T, d, dtype=torch.float64)
    for t in range(T):  # orthogonal, centred columns: the sample covariance is diagonal
        x = torch.randn(N, d, dtype=torch.float64)
        h[:, t] = torch.linalg.qr(x - x.mean(0))[0] * 5
    assert float(losses.vcr_terms(h)[1]) < 1e-12
    mixed = h.clone()
    mixed[:, :, 1] += mixed[:, :, 0]
    assert float(losses.vcr_terms(mixed)[1]) > 0.1


def test_gradients_reach_both_context_and_target_embeddings():
    h_x = torch.randn(16, 3, 8, requires_grad=True)
    h_y = torch.randn(16, 12, 8, requires_grad=True)
    l_var, l_cov = losses.vcr_terms(0.5 * torch.cat([h_x, h_y], dim=1))
    (l_var + l_cov).backward()
    assert h_x.grad.abs().sum() > 0 and h_y.grad.abs().sum() > 0


def _vcr_rank(rank, world, init_file, h, out):
    """One data-parallel rank: VCR on its slice of the global batch, statistics gathered."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    part = h.chunk(world)[rank].clone().requires_grad_(True)
    l_var, l_cov = losses.vcr_terms(part)
    (l_var + l_cov).backward()
    torch.save({"l_var": l_var.detach(), "l_cov": l_cov.detach(), "grad": part.grad},
               os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_process_statistics_equal_one_process(tmp_path):
    """Each rank sees the global-batch statistics; after DDP's gradient averaging (divide by
    the world size) each rank holds the single-process gradient of its slice."""
    torch.manual_seed(0)
    h = torch.randn(12, 2, 5) * 0.6
    full = h.clone().requires_grad_(True)
    l_var, l_cov = losses.vcr_terms(full)
    (l_var + l_cov).backward()
    mp.spawn(_vcr_rank, args=(2, str(tmp_path / "init"), h, str(tmp_path)), nprocs=2)
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(r["l_var"], l_var.detach(), atol=1e-6)
        assert torch.allclose(r["l_cov"], l_cov.detach(), atol=1e-6)
        assert torch.allclose(r["grad"] / 2, full.grad.chunk(2)[rank], atol=1e-6)
