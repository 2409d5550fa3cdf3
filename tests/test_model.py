"""model.py against slow, obviously-correct references."""
import math

import pytest
import torch
import torch.nn.functional as F

import infer_latent
import model


def slow_sincos_3d(dim, grid, uniform_power):
    """Per-element reference of the sin-cos formula: one token and one channel at a time."""
    T, H, W = grid
    widths = [2 * math.ceil(dim / 6)] * 3 if uniform_power else [dim // 2, dim // 4, dim // 4]
    rows = []
    for t in range(T):
        for h in range(H):
            for w in range(W):
                row = []
                for d, pos in zip(widths, (t, h, w)):
                    half = d // 2
                    row += [math.sin(pos / 10000 ** (i / half)) for i in range(half)]
                    row += [math.cos(pos / 10000 ** (i / half)) for i in range(half)]
                rows.append(row[:dim])
    return torch.tensor(rows)


@pytest.mark.parametrize("dim,grid,uniform", [(20, (2, 3, 4), True), (64, (3, 2, 2), True),
                                              (16, (2, 3, 4), False), (40, (2, 2, 3), False)])
def test_sincos_3d_matches_per_element_reference(dim, grid, uniform):
    ref = slow_sincos_3d(dim, grid, uniform)
    assert torch.allclose(model.sincos_3d(dim, grid, uniform), ref, atol=1e-6)


def test_uniform_power_1024_drops_last_two_width_cosines():
    """D=1024: 3 axes x 342 channels = 1026, cut to 1024; the dropped ones are the width axis'
    two lowest-frequency cosines, so the kept width cosines are the first 169 of 171."""
    grid = (2, 2, 3)
    table = model.sincos_3d(1024, grid)
    assert table.shape == (12, 1024)
    w = torch.tensor([0., 1., 2.] * 4)  # width index of each time-major token
    omega = 10000 ** (-torch.arange(171, dtype=torch.float64) / 171)
    expected_cos = torch.cos(w[:, None].double() * omega[None, :169]).float()
    assert torch.allclose(table[:, 684 + 171:], expected_cos, atol=1e-6)


def test_tubelet_token_order_is_time_major():
    """Tokens equal a hand-made patchify: [B, C, T, H, W] -> (i_t * Hp + i_h) * Wp + i_w."""
    B, C, T, H, W, t, p, D = 2, 3, 4, 8, 12, 2, 4, 5
    embed = model.PatchEmbed3D(C, D, p, t)
    x = torch.randn(B, C, T, H, W)
    weight = embed.proj.weight.reshape(D, -1)  # (D, C*t*p*p)
    tokens = []
    for it in range(T // t):
        for ih in range(H // p):
            for iw in range(W // p):
                cube = x[:, :, it * t:(it + 1) * t, ih * p:(ih + 1) * p, iw * p:(iw + 1) * p]
                tokens.append(cube.reshape(B, -1) @ weight.T + embed.proj.bias)
    assert torch.allclose(embed(x), torch.stack(tokens, 1), atol=1e-5)
    # the release's Conv3d (kernel = stride = tubelet) on the same weights gives the same
    assert torch.allclose(embed(x), embed.proj(x).flatten(2).transpose(1, 2), atol=1e-5)


def test_attention_matches_naive_softmax():
    attn = model.Attention(12, 3)
    x = torch.randn(2, 5, 12)
    q, k, v = attn.qkv(x).split(12, dim=-1)  # rows [all q | all k | all v]
    outs = []
    for h in range(3):  # each head a contiguous slice of 4 channels
        s = slice(4 * h, 4 * h + 4)
        a = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 2.0, dim=-1)
        outs.append(a @ v[..., s])
    ref = attn.proj(torch.cat(outs, -1))
    assert torch.allclose(attn(x), ref, atol=1e-5)


@pytest.mark.parametrize("grad", [True, False])
def test_bf16_attention_matches_a_loop_with_and_without_gradients(grad):
    """In bf16 on a CPU, attention takes the written-out products when gradients are recorded
    and the fused kernel when not: both equal a loop over (sample, head) in float64 to bf16's
    precision, and the gradient flows."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 4, generator=g).bfloat16().requires_grad_(grad)
               for _ in range(3))
    out = model.attention(q, k, v)
    ref = torch.zeros(2, 3, 7, 4, dtype=torch.float64)
    for b in range(2):
        for h in range(3):
            qd, kd, vd = (t[b, h].double() for t in (q, k, v))
            ref[b, h] = torch.softmax(qd @ kd.T / 2.0, dim=-1) @ vd
    assert out.dtype == torch.bfloat16 and torch.allclose(out.double(), ref, atol=3e-2)
    if grad:
        out.float().sum().backward()
        assert q.grad is not None and torch.isfinite(q.grad.float()).all()


def tiny_encoder():
    return model.VisionTransformer(num_frames=4, img_size=16, patch_size=4, tubelet_size=2,
                                   in_chans=1, dim=24, depth=2, heads=3)


def test_encoder_keep_all_equals_plain_forward_and_permutes():
    enc = tiny_encoder().eval()
    x = torch.randn(2, 1, 4, 16, 16)
    full = enc(x)
    N = enc.num_tokens
    assert full.shape == (2, N, 24)
    keep_all = torch.arange(N).expand(2, -1)
    assert torch.allclose(enc(x, keep=keep_all), full, atol=1e-5)
    # no attention mask and positions added before dropping: a permutation just permutes
    perm = torch.stack([torch.randperm(N), torch.randperm(N)])
    expected = torch.stack([full[b, perm[b]] for b in range(2)])
    assert torch.allclose(enc(x, keep=perm), expected, atol=1e-5)


def test_encoder_rejects_a_clip_of_the_wrong_size():
    with pytest.raises(ValueError, match="does not fit"):
        tiny_encoder()(torch.randn(1, 1, 6, 16, 16))


def test_token_grid_errors_name_the_values():
    with pytest.raises(ValueError, match="img_size=60 is not divisible by patch_size=8"):
        model.token_grid(16, 60, 8, 2)
    with pytest.raises(ValueError, match="num_frames=15 is not divisible by tubelet_size=2"):
        model.token_grid(15, 64, 8, 2)


def test_predictor_shapes_and_mask_tokens():
    enc, pred = model.build_models(4, 16, 4, 2, 1, 24, 2, 3, 12, 2, num_masks=2)
    assert all(not t.detach().any() for t in pred.mask_tokens)  # zero-initialised
    x = torch.randn(3, 1, 4, 16, 16)
    ctx = torch.tensor([[0, 5, 9]] * 3)
    tgt = torch.tensor([[1, 2, 3, 4, 6, 7, 30]] * 3)
    out = pred(enc(x, keep=ctx), ctx, tgt, mask_id=1)
    assert out.shape == (3, 7, 24)
    with torch.no_grad():
        pred.mask_tokens[1].fill_(1.0)
    assert not torch.allclose(pred(enc(x, keep=ctx), ctx, tgt, 1),
                              pred(enc(x, keep=ctx), ctx, tgt, 0))


def test_jepa_predicts_each_mask_with_its_own_mask_token():
    """JEPA.forward: per mask configuration m, the encoder on its context and the predictor
    with mask token m; a reference by hand, and the mask tokens are told apart."""
    torch.manual_seed(0)
    enc, pred = model.build_models(4, 16, 4, 2, 1, 24, 2, 3, 12, 2, num_masks=2)
    with torch.no_grad():
        for t in pred.mask_tokens:
            t.normal_()  # distinct mask tokens, so that a swapped mask id would show
    net = model.JEPA(enc, pred)
    x = torch.randn(3, 1, 4, 16, 16)
    g = torch.Generator().manual_seed(1)
    masks = [(torch.stack([torch.randperm(32, generator=g)[:kc] for _ in range(3)]),
              torch.stack([torch.randperm(32, generator=g)[:kt] for _ in range(3)]))
             for kc, kt in ((5, 9), (2, 13))]
    preds, contexts, projections = net(x, masks)
    assert projections is None  # no projector
    for m, (ctx, tgt) in enumerate(masks):
        z = enc(x, keep=ctx)
        assert torch.equal(contexts[m], z)
        assert torch.equal(preds[m], pred(z, ctx, tgt, m))
        assert not torch.allclose(preds[m], pred(z, ctx, tgt, 1 - m))


def test_parameter_names_follow_the_release():
    enc, pred = model.build_models(4, 16, 4, 2, 3, 24, 2, 3, 12, 2)
    enc_keys, pred_keys = set(enc.state_dict()), set(pred.state_dict())
    block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    expected_enc = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                    "norm.weight", "norm.bias"}
    expected_enc |= {f"blocks.{i}.{m}.{w}" for i in range(2) for m in block
                     for w in ("weight", "bias")}
    assert enc_keys == expected_enc
    expected_pred = {"predictor_pos_embed", "mask_tokens.0", "mask_tokens.1",
                     "predictor_embed.weight", "predictor_embed.bias", "predictor_norm.weight",
                     "predictor_norm.bias", "predictor_proj.weight", "predictor_proj.bias"}
    expected_pred |= {f"predictor_blocks.{i}.{m}.{w}" for i in range(2) for m in block
                      for w in ("weight", "bias")}
    assert pred_keys == expected_pred
    assert enc.state_dict()["patch_embed.proj.weight"].shape == (24, 3, 2, 4, 4)
    assert enc.state_dict()["pos_embed"].shape == (1, 2 * 4 * 4, 24)


def test_depth_scaled_init():
    """Output projections of block l have std 0.02 / sqrt(2 (l+1)); qkv keeps 0.02."""
    torch.manual_seed(0)
    enc = model.VisionTransformer(2, 16, 4, 2, 1, dim=256, depth=3, heads=4)
    for layer, block in enumerate(enc.blocks):
        expected = 0.02 / math.sqrt(2 * (layer + 1))
        assert abs(float(block.attn.proj.weight.detach().std()) / expected - 1) < 0.05
        assert abs(float(block.mlp.fc2.weight.detach().std()) / expected - 1) < 0.05
        assert abs(float(block.attn.qkv.weight.detach().std()) / 0.02 - 1) < 0.05


def test_load_strict_names_what_does_not_match():
    enc = tiny_encoder()
    sd = dict(enc.state_dict())
    sd["blocks.0.attn.qkv.weightX"] = sd.pop("blocks.0.attn.qkv.weight")
    with pytest.raises(ValueError, match=r"missing \['blocks.0.attn.qkv.weight'\]"):
        model.load_strict(tiny_encoder(), sd, "ckpt")
    sd = dict(enc.state_dict())
    sd["norm.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match="wrong shape.*norm.bias"):
        model.load_strict(tiny_encoder(), sd, "ckpt")
    other = tiny_encoder()
    model.load_strict(other, enc.state_dict(), "ckpt")
    x = torch.randn(1, 1, 4, 16, 16)
    assert torch.equal(other(x), enc(x))


@pytest.mark.parametrize("grid", [1, 2, 4])
def test_vjvcr_conv_modules_shapes(grid):
    """Encoder: one vector of dim * grid^2 per frame; predictor: 3 context steps -> 12 targets
    at once; decoder: back to frames in [0, 1]."""
    d = 16 * grid * grid
    enc = infer_latent.ConvEncoder(in_chans=1, dim=16, width=4, grid=grid)
    pred = infer_latent.MLPPredictor(ctx_steps=3, tgt_steps=12, dim=d, hidden=32)
    dec = infer_latent.ConvDecoder(in_chans=1, dim=16, width=4, img_size=64, grid=grid)
    x = torch.rand(2, 1, 3, 64, 64)
    h_x = enc(x)
    assert enc.out_dim == d and h_x.shape == (2, 3, d)
    assert enc(torch.rand(2, 1, 12, 64, 64)).shape == (2, 12, d)
    h_y = pred(h_x)
    assert h_y.shape == (2, 12, d)
    frames = dec(h_y)
    assert frames.shape == (2, 1, 12, 64, 64) and frames.min() >= 0 and frames.max() <= 1
    assert dec.__class__(1, 16, 4, img_size=32, grid=grid)(h_y).shape == (2, 1, 12, 32, 32)
    assert (dec.unpool is None) == (grid > 1)  # a learnt unpooling only for the global vector
    with pytest.raises(ValueError, match="grid=3"):
        infer_latent.ConvEncoder(1, 16, 4, grid=3)(x)


@pytest.mark.parametrize("grid", [1, 2, 4, 8])
def test_grid_pool_against_a_loop_over_cells(grid):
    """Each entry of the flattened vector is the mean of its channel over its cell's pixels,
    in the order (channel, row, column)."""
    x = torch.randn(2, 3, 4, 8, 8)  # (B, C, T, H, W)
    out = infer_latent.grid_pool(x, grid)
    k = 8 // grid
    assert out.shape == (2, 4, 3 * grid * grid)
    for b in range(2):
        for t in range(4):
            i = 0
            for c in range(3):
                for r in range(grid):
                    for q in range(grid):
                        cell = x[b, c, t, r * k:(r + 1) * k, q * k:(q + 1) * k]
                        assert torch.allclose(out[b, t, i], cell.mean(), atol=1e-6)
                        i += 1


@pytest.mark.parametrize("grid", [2, 4, 8])
def test_decoder_unpooling_mirrors_the_pooling(grid):
    """With a grid, the decoder starts from each cell's vector repeated over the positions the
    encoder averaged: every position holds its cell's values, and pooling the map again gives
    back the vector exactly."""
    dec = infer_latent.ConvDecoder(1, 5, 4, img_size=64, grid=grid)
    h = torch.randn(2, 3, 5 * grid * grid)
    m = dec.unpool_map(h)  # (B, dim, T, 8, 8)
    assert m.shape == (2, 5, 3, 8, 8)
    cells = h.view(2, 3, 5, grid, grid)
    k = 8 // grid
    for y in range(8):
        for x in range(8):
            assert torch.equal(m[:, :, :, y, x], cells[:, :, :, y // k, x // k].transpose(1, 2))
    assert torch.allclose(infer_latent.grid_pool(m, grid), h, atol=1e-6)


def test_patchify_matches_the_tubelet_embedding_and_its_conv3d():
    embed = model.PatchEmbed3D(2, 7, patch_size=4, tubelet_size=2)
    x = torch.randn(3, 2, 4, 8, 12)
    tokens = model.patchify(x, 4, 2)  # (B, N, C*t*p*p)
    assert tokens.shape == (3, 2 * 2 * 3, 2 * 2 * 4 * 4)
    linear = tokens @ embed.proj.weight.reshape(7, -1).T + embed.proj.bias
    assert torch.allclose(linear, embed(x), atol=1e-5)
    conv = embed.proj(x).flatten(2).transpose(1, 2)  # the Conv3d itself, kernel = stride
    assert torch.allclose(conv, embed(x), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# VJ-VCR predictor with a latent

def test_discrete_latent_selects_one_copy_of_the_last_layer():
    torch.manual_seed(0)
    pred = infer_latent.MLPPredictor(3, 3, dim=8, hidden=16, latent="discrete", latent_dim=5)
    h = torch.randn(4, 3, 8)
    last = pred.net[-1]
    assert last.out_features == 5 * 3 * 8  # K copies of the last linear layer
    hidden = pred.net[:-1](h.flatten(1))
    for k in range(5):
        rows = slice(k * 24, (k + 1) * 24)  # copy k: its own weights and bias
        want = (hidden @ last.weight[rows].T + last.bias[rows]).view(4, 3, 8)
        z = F.one_hot(torch.full((4,), k), 5).float()
        assert torch.allclose(pred(h, z), want, atol=1e-6)
        assert torch.allclose(pred.options(h)[:, k], want, atol=1e-6)


def test_sparse_latent_zero_is_plain_mlp_and_dictionary_is_normalised():
    torch.manual_seed(0)
    pred = infer_latent.MLPPredictor(3, 3, dim=8, hidden=16, latent="sparse", latent_dim=20)
    h = torch.randn(4, 3, 8)
    plain = pred.net(h.flatten(1)).view(4, 3, 8)
    assert torch.allclose(pred(h, torch.zeros(4, 20)), plain, atol=1e-6)
    z = torch.zeros(4, 20)
    z[:, 3] = 2.0
    # z shifts the last hidden layer (after its ReLU) by z @ (unit-norm columns)^T
    col = pred.z_in[:, 3] / pred.z_in[:, 3].norm()
    hidden = pred.net[:-1](h.flatten(1)) + 2.0 * col
    want = pred.net[-1](hidden).view(4, 3, 8)
    assert torch.allclose(pred(h, z), want, atol=1e-5)
    # ... so the prediction is affine in z: the midpoint of two codes predicts the midpoint
    z2 = torch.randn(4, 20)
    assert torch.allclose(pred(h, (z + z2) / 2), (pred(h, z) + pred(h, z2)) / 2, atol=1e-5)
    assert not torch.allclose(pred(h, z), plain, atol=1e-3)
    with torch.no_grad():
        pred.z_in.mul_(7.0)  # rescaling the dictionary changes nothing
    assert torch.allclose(pred(h, z), want, atol=1e-5)


def test_sparse_latent_map_gives_the_prediction_of_any_code():
    """Pred(h, z) = Pred(h, 0) + z M for the M that inference uses, checked on unit codes
    (row j of M is the prediction's change per unit of z_j) and a random code."""
    torch.manual_seed(0)
    pred = infer_latent.MLPPredictor(3, 2, dim=8, hidden=16, latent="sparse", latent_dim=5)
    h = torch.randn(4, 3, 8)
    base = pred(h, torch.zeros(4, 5)).flatten(1)
    M = pred.latent_map()
    assert M.shape == (5, 2 * 8)
    for j in range(5):
        unit = torch.zeros(4, 5)
        unit[:, j] = 1.0
        assert torch.allclose(pred(h, unit).flatten(1) - base, M[j].expand(4, -1), atol=1e-6)
    z = torch.randn(4, 5)
    assert torch.allclose(pred(h, z).flatten(1), base + z @ M, atol=1e-5)


def plain_conv_reference(net):
    """`net` (ConvEncoder or ConvDecoder) rebuilt from plain nn.Conv3d / nn.ConvTranspose3d /
    nn.BatchNorm3d / nn.ReLU modules in the default memory order, with a copy of its weights
    and BatchNorm statistics (a strict load: the parameter names and shapes are the same)."""
    import copy

    import torch.nn as nn

    decoder = isinstance(net, infer_latent.ConvDecoder)
    first, last = net.layers[0][0], net.layers[-1]
    dim = first.in_channels if decoder else last[0].out_channels
    in_chans = last.out_channels if decoder else first.in_channels
    width = net.layers[3][0].out_channels if decoder else first.out_channels

    def block(cin, cout, spatial):
        kernel, stride, padding = ((1, 4, 4), (1, 2, 2), (0, 1, 1)) if spatial else \
            ((3, 1, 1), 1, (1, 0, 0))
        conv = nn.ConvTranspose3d if spatial and decoder else nn.Conv3d
        return nn.Sequential(conv(cin, cout, kernel, stride, padding, bias=False),
                             nn.BatchNorm3d(cout), nn.ReLU())

    ref = nn.Module()
    if decoder:
        if net.unpool is not None:
            ref.unpool = copy.deepcopy(net.unpool)
        ref.layers = nn.Sequential(
            block(dim, dim, False), block(dim, dim, False), block(dim, 2 * width, True),
            block(2 * width, width, True),
            nn.ConvTranspose3d(width, in_chans, (1, 4, 4), (1, 2, 2), (0, 1, 1)))
    else:
        ref.layers = nn.Sequential(
            block(in_chans, width, True), block(width, 2 * width, True),
            block(2 * width, dim, True), block(dim, dim, False), block(dim, dim, False))
    ref.load_state_dict(net.state_dict(), strict=True)
    return ref


def plain_conv_forward(ref, x, decoder, side=None, grid=1):
    """The reference forward; pooling to a grid by reshape-and-mean, its mirror by indexing."""
    k = side // grid
    if not decoder:
        y = ref.layers(x)  # (B, C, T, side, side)
        B, C, T = y.shape[:3]
        cells = y.reshape(B, C, T, grid, k, grid, k).mean(dim=(4, 6))
        return cells.permute(0, 2, 1, 3, 4).reshape(B, T, C * grid * grid)
    B, T, D = x.shape
    if grid == 1:
        x = ref.unpool(x).view(B, T, D, side, side).transpose(1, 2)
    else:
        idx = torch.arange(side) // k  # position -> its cell
        x = x.view(B, T, D // grid ** 2, grid, grid)[:, :, :, idx][:, :, :, :, idx].transpose(1, 2)
    return torch.sigmoid(ref.layers(x))


@pytest.mark.parametrize("decoder,grid", [(False, 1), (True, 1), (False, 2), (True, 4)])
def test_conv_networks_match_plain_modules(decoder, grid):
    """The conv encoder and decoder (channels-last order) against plain modules with the same
    weights, in float32: the same outputs and gradients (of the input and of every parameter),
    in train mode (BatchNorm on batch statistics, which also update the running ones the same
    way) and in eval mode (on the running statistics)."""
    torch.manual_seed(0)
    dim, width, side = 16, 8, 4
    net = (infer_latent.ConvDecoder(1, dim, width, img_size=8 * side, grid=grid) if decoder
           else infer_latent.ConvEncoder(1, dim, width, grid=grid))
    with torch.no_grad():  # BatchNorm away from its identity start, so that it matters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.5)
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    ref = plain_conv_reference(net)
    x = torch.randn(3, 5, dim * grid ** 2) if decoder else torch.rand(3, 1, 5, 8 * side, 8 * side)
    for mode in ("train", "eval"):
        net.train(mode == "train")
        ref.train(mode == "train")
        outs, grads = [], []
        for m, run in ((net, net), (ref, lambda t: plain_conv_forward(ref, t, decoder, side, grid))):
            m.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_()
            out = run(xi)
            cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
            (out * cotangent).sum().backward()
            outs.append(out)
            grads.append({"input": xi.grad, **{k: p.grad for k, p in m.named_parameters()}})
        assert outs[0].shape == outs[1].shape
        assert torch.allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5), mode
        assert grads[0].keys() == grads[1].keys()
        for k, fast in grads[0].items():  # float32 sums in another order: 1e-5 of the largest
            want = grads[1][k]
            assert torch.allclose(fast, want, rtol=1e-5, atol=1e-5 * float(want.abs().max())), \
                (mode, k)
        want = ref.state_dict()  # running statistics (and num_batches_tracked)
        assert net.state_dict().keys() == want.keys()
        for k, fast in net.state_dict().items():
            assert torch.allclose(fast.double(), want[k].double(), rtol=1e-5, atol=1e-6), (mode, k)


def test_embed_gain_scales_only_the_tubelet_embedding_and_survives_reinit():
    def build(gain):
        torch.manual_seed(7)
        return model.VisionTransformer(4, 16, 4, 2, 1, dim=32, depth=2, heads=2, embed_gain=gain)
    plain, loud = build(1.0).state_dict(), build(3.0).state_dict()
    for key in plain:
        expected = 3 * plain[key] if key == "patch_embed.proj.weight" else plain[key]
        assert torch.equal(loud[key], expected), key
    fresh = build(3.0)  # re-initialising (as model.random_init_like does) keeps the gain
    torch.manual_seed(7)
    model.init_weights(fresh, fresh.blocks)
    w = fresh.patch_embed.proj.weight.detach()
    assert 3 * 0.015 < float(w.std()) < 3 * 0.02  # truncated normal(0.02) x 3


# ----------------------------------------------------------------------------------------------
# Pixel targets, device and precision (model.py's last sections)

def test_pixel_targets_are_each_tubelet_normalised():
    """Against a loop over tubelets: the C*t*p*p pixels of each, minus their mean, divided by
    sqrt(their biased variance + eps), in time-major token order."""
    clips = torch.rand(2, 1, 4, 8, 8)
    clips[0, :, :2, :4, :4] = 0.5  # a flat tubelet: all zeros after normalisation
    out = model.pixel_targets(clips, patch_size=4, tubelet_size=2)
    assert out.shape == (2, 2 * 2 * 2, 32)
    for b in range(2):
        n = 0
        for t in range(2):
            for i in range(2):
                for j in range(2):
                    x = clips[b, :, 2 * t:2 * t + 2, 4 * i:4 * i + 4, 4 * j:4 * j + 4].flatten()
                    ref = (x - x.mean()) / (x.var(unbiased=False) + 1e-6).sqrt()
                    assert torch.allclose(out[b, n], ref, atol=1e-5)
                    n += 1
    assert out[0, 0].abs().max() == 0


def test_no_weight_decay_on_biases_and_1d_parameters():
    groups = model.param_groups(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4)))
    assert [p.shape for p in groups[0]["params"]] == [(4, 3)]
    assert groups[1]["weight_decay"] == 0 and len(groups[1]["params"]) == 3


@pytest.mark.parametrize("capability,amx,avx512_bf16,cpu_class,auto", [
    ("AVX2", False, False, "AVX2", torch.float32),  # most laptops: bf16 is emulated there
    ("AVX512", False, False, "AVX-512", torch.float32),
    ("AVX512", False, True, "AVX-512 bf16", torch.bfloat16),
    ("AVX512", True, True, "AMX", torch.bfloat16),
    ("AVX2", True, True, "AVX2", torch.float32),  # an AMX CPU under ATEN_CPU_CAPABILITY=avx2
])
def test_precision_comes_from_the_cpu(monkeypatch, capability, amx, avx512_bf16, cpu_class,
                                      auto):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    cpu = torch.device("cpu")
    assert model.cpu_class() == cpu_class and model.pick_dtype("auto", cpu) == auto
    assert model.pick_dtype("float32", cpu) == torch.float32
    assert model.pick_dtype("bfloat16", cpu) == torch.bfloat16


# ----------------------------------------------------------------------------------------------
# 3D RoPE (--pos rope)

def slow_rope(x, pos, base=10000.0):
    """One token's head vector x [Dh] at grid position pos (t, h, w), pair by pair: axis j
    turns channels (j a + i, j a + i + a/2) by pos_j / base^(2i / a), a = 2 floor(Dh / 6)."""
    a, out = 2 * (len(x) // 6), x.clone()
    for j in range(3):
        for i in range(a // 2):
            theta = pos[j] / base ** (2 * i / a)
            u, v = x[j * a + i], x[j * a + i + a // 2]
            out[j * a + i] = u * math.cos(theta) - v * math.sin(theta)
            out[j * a + i + a // 2] = u * math.sin(theta) + v * math.cos(theta)
    return out


def rotate(x, pos):  # x [1, heads, N, Dh], pos [N, 3]
    return model.apply_rope(x, model.rope_angles(pos, x.shape[-1])[None])


@pytest.mark.parametrize("head_dim", [8, 32, 64, 20])
def test_rope_against_a_pair_by_pair_loop(head_dim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, head_dim, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 9, (5, 3), generator=g)
    out = rotate(x, pos)
    for h in range(2):
        for n in range(5):
            torch.testing.assert_close(out[0, h, n], slow_rope(x[0, h, n], pos[n].tolist()))
    assert torch.equal(rotate(x, torch.zeros(5, 3, dtype=torch.long)), x)  # index 0: identity
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps norms


def test_rope_scores_depend_on_relative_positions_only():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 1, 3, 12, 64, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 8, (12, 3), generator=g)
    shift = torch.tensor([5, -3, 11])
    scores = rotate(q, pos) @ rotate(k, pos).transpose(-2, -1)
    shifted = rotate(q, pos + shift) @ rotate(k, pos + shift).transpose(-2, -1)
    torch.testing.assert_close(scores, shifted)
    assert not torch.allclose(scores, q @ k.transpose(-2, -1))  # and they do depend on them


def test_rope_networks_carry_no_table_and_place_mask_tokens_by_position():
    torch.manual_seed(0)
    enc, pred = model.build_models(4, 16, 4, 2, 1, 24, 2, 2, 24, 2, pos="rope")
    assert "pos_embed" not in enc.state_dict() and "predictor_pos_embed" not in pred.state_dict()
    x = torch.randn(2, 1, 4, 16, 16)
    ctx = torch.tensor([[0, 5, 9, 17]] * 2)
    # the same mask token, alone at two target positions, predicts two different things
    a, b = (pred(enc(x, keep=ctx), ctx, torch.tensor([[t]] * 2)) for t in (3, 30))
    assert not torch.allclose(a, b)
    # a kept token is rotated by its grid index, not by its place in the kept sequence:
    # shuffled, the tokens come out shuffled and otherwise the same
    perm = torch.randperm(32)
    torch.testing.assert_close(enc(x, keep=perm[None].expand(2, -1)), enc(x)[:, perm])
