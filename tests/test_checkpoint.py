"""model.from_checkpoint(model.read_checkpoint(path)): release-format files, ours and hand-made,
against the models that wrote them; architecture inference; errors."""
import copy
import os
import re

import pytest
import torch

import data
import model
import train

# 16 frames (what a file without config is assumed to have), width 192 (standard: 3 heads)
GEOMETRY = dict(num_frames=16, img_size=32, patch_size=8, tubelet_size=2, in_chans=3)
WIDTHS = dict(enc_dim=192, enc_depth=2, enc_heads=3, pred_dim=48, pred_depth=1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: a second thread on a busy 2-core machine only waits (as in
    test_infer_latent.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(path, which="target_encoder"):
    return model.from_checkpoint(model.read_checkpoint(path, which), which, str(path))


def write_release(path, encoder, predictor, target=None, drop=(), **extra):
    """A checkpoint as the release writes it: no config, every key under module.backbone."""
    state = {**data.release_state({"encoder": encoder, "predictor": predictor,
                                   "target_encoder": target or encoder}),
             "opt": {}, "scaler": None, "epoch": 0, "loss": 0.5, "batch_size": 2,
             "world_size": 1, "lr": 1e-4, **extra}
    torch.save({k: v for k, v in state.items() if k not in drop}, path)
    return path


def tiny_models(uniform_power=True, **changes):
    return model.build_models(**{**GEOMETRY, **WIDTHS, **changes}, uniform_power=uniform_power)


def predictor_inputs(encoder, B=2):
    """Random clip and disjoint context / target indices over the encoder's tokens."""
    clip = torch.randn(B, encoder.in_chans, *encoder.input_size)
    order = torch.stack([torch.randperm(encoder.num_tokens) for _ in range(B)])
    return clip, order[:, :20], order[:, 20:30]


def same_outputs(enc_a, pred_a, enc_b, pred_b):
    clip, ctx, tgt = predictor_inputs(enc_a)
    with torch.no_grad():
        assert torch.equal(enc_a(clip), enc_b(clip))
        z = enc_a(clip, keep=ctx)
        assert len(pred_a.mask_tokens) == len(pred_b.mask_tokens)
        for mask_id in range(len(pred_a.mask_tokens)):
            assert torch.equal(pred_a(z, ctx, tgt, mask_id), pred_b(z, ctx, tgt, mask_id))


# ----------------------------------------------------------------------------------------------
# 1. a release file (no config) gives back the models that wrote it

def test_release_file_gives_the_same_outputs(tmp_path):
    encoder, predictor = tiny_models()
    target = copy.deepcopy(encoder)
    with torch.no_grad():  # the EMA copy has drifted away from the encoder
        for p in target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    for m in (encoder, predictor, target):
        m.eval()
    path = write_release(tmp_path / "release.pt", encoder, predictor, target)

    enc, pred = load(path)
    assert not enc.training and not pred.training
    assert (enc.grid, len(enc.blocks), enc.blocks[0].attn.heads) == ((8, 4, 4), 2, 3)
    same_outputs(target, predictor, enc, pred)  # the default reads target_encoder

    enc, _ = load(path, which="encoder")
    same_outputs(encoder, predictor, enc, pred)
    clip = torch.randn(1, 3, 16, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(enc(clip), target(clip))


def test_missing_entries(tmp_path):
    encoder, predictor = tiny_models()
    path = write_release(tmp_path / "c.pt", encoder, predictor, drop=("target_encoder",))
    with pytest.raises(ValueError, match=r"no 'target_encoder'.*'encoder', 'epoch'"):
        load(path)
    path = write_release(tmp_path / "d.pt", encoder, predictor, drop=("predictor",))
    enc, pred = load(path, which="encoder")
    assert pred is None and len(enc.blocks) == 2
    with pytest.raises(ValueError, match="no 'ema' entry"):
        load(path, which="ema")


# ----------------------------------------------------------------------------------------------
# 2. a checkpoint written by train.py

def test_trainer_checkpoint(tmp_path, mnist_args):
    out = str(tmp_path / "run")
    # width 32 is not a standard one: the heads (2) can only come from the file's config
    train.main(mnist_args + [
        "--max_steps", "2", "--batch_size", "2", "--log_every", "1", "--ckpt_every", "1",
        "--val_clips", "0", "--out_dir", out, "--enc_depth", "1", "--pred_depth", "1",
        "--num_frames", "4", "--img_size", "32", "--patch_size", "8", "--enc_dim", "32",
        "--enc_heads", "2", "--pred_dim", "16", "--dtype", "float32"])
    path = os.path.join(out, "ckpt.pt")
    enc, pred = load(path)

    # the same models built by hand from the saved config
    state = model.read_checkpoint(path)
    cfg = train.Config(**state["config"])
    ref_enc, ref_pred = model.build_models(
        cfg.num_frames, cfg.img_size, cfg.patch_size, cfg.tubelet_size, cfg.in_chans,
        cfg.enc_dim, cfg.enc_depth, cfg.enc_heads, cfg.pred_dim, cfg.pred_depth,
        num_masks=1, uniform_power=cfg.uniform_power)  # future masks: one configuration
    model.load_strict(ref_enc, state["target_encoder"], "target")
    model.load_strict(ref_pred, state["predictor"], "predictor")
    assert enc.blocks[0].attn.heads == 2 and enc.input_size == (4, 32, 32)
    same_outputs(ref_enc.eval(), ref_pred.eval(), enc, pred)


# ----------------------------------------------------------------------------------------------
# 3. strict loading

def test_renamed_key_and_wrong_shape_are_named(tmp_path):
    encoder, predictor = tiny_models()
    state = encoder.state_dict()
    state["blocks.1.attn.out.weight"] = state.pop("blocks.1.attn.proj.weight")
    path = tmp_path / "renamed.pt"
    torch.save({"target_encoder": {model.RELEASE_PREFIX + k: v for k, v in state.items()}}, path)
    with pytest.raises(ValueError, match=r"missing \['blocks\.1\.attn\.proj\.weight'\]; "
                                         r"unexpected \['blocks\.1\.attn\.out\.weight'\]"):
        load(path)

    # a bias one element short: no other tensor's shape explains it away
    for entry, key, width in (("target_encoder", "blocks.0.mlp.fc2.bias", 192),
                              ("predictor", "predictor_blocks.0.mlp.fc2.bias", 48)):
        path = write_release(tmp_path / "shape.pt", encoder, predictor)
        ckpt = torch.load(path)
        ckpt[entry][model.RELEASE_PREFIX + key] = torch.zeros(width - 1)
        torch.save(ckpt, path)
        with pytest.raises(ValueError, match=rf"{entry} .*wrong shape \['{key} \({width - 1},\) "
                                             rf"\(expected \({width},\)\)"):
            load(path)


# ----------------------------------------------------------------------------------------------
# 4. a positional table is read as it is

def test_foreign_positional_table(tmp_path):
    """A table that is not one of our sin-cos codes loads as it is."""
    encoder, predictor = tiny_models()
    with torch.no_grad():
        encoder.pos_embed.add_(0.01 * torch.randn_like(encoder.pos_embed))
    path = write_release(tmp_path / "c.pt", encoder, predictor)
    enc, _ = load(path)
    assert torch.equal(enc.pos_embed, encoder.pos_embed)


# ----------------------------------------------------------------------------------------------
# 5. the released architectures, read off shape-only tensors

@pytest.mark.parametrize("dim,depth,heads,img,tokens",
                         [(1024, 24, 16, 224, 1568), (1280, 32, 16, 384, 4608)])
def test_infer_released_architectures(dim, depth, heads, img, tokens):
    with torch.device("meta"):  # shapes without memory or compute
        encoder, predictor = model.build_models(16, img, 16, 2, 3, dim, depth, heads, 384, 12)
        enc, pred = model.from_checkpoint({"target_encoder": encoder.state_dict(),
                                           "predictor": predictor.state_dict()})
    assert enc.num_tokens == tokens and enc.input_size == (16, img, img) and enc.in_chans == 3
    assert (enc.dim, len(enc.blocks), enc.blocks[0].attn.heads) == (dim, depth, heads)
    assert enc.blocks[0].mlp.fc1.out_features == 4 * dim
    assert (pred.predictor_embed.out_features, len(pred.predictor_blocks)) == (384, 12)
    assert (pred.predictor_blocks[0].attn.heads, len(pred.mask_tokens)) == (heads, 2)
    assert pred.predictor_proj.out_features == dim


# ----------------------------------------------------------------------------------------------
# 6. what shapes cannot tell

def test_heads_of_a_non_standard_width(tmp_path):
    encoder, predictor = tiny_models(enc_dim=40, enc_heads=2, pred_dim=16)
    path = write_release(tmp_path / "c.pt", encoder, predictor)
    with pytest.raises(ValueError, match=r"width-40 encoder with no config: its heads are unknown"):
        load(path)
    write_release(path, encoder, predictor, config={"enc_heads": 2})
    enc, pred = load(path)
    assert enc.blocks[0].attn.heads == pred.predictor_blocks[0].attn.heads == 2
    same_outputs(encoder.eval(), predictor.eval(), enc, pred)


def test_a_grid_that_16_frames_cannot_explain(tmp_path):
    encoder, predictor = tiny_models(num_frames=6)  # N = 3 x 4 x 4 = 48, not 8 x a square
    path = write_release(tmp_path / "c.pt", encoder, predictor)
    with pytest.raises(ValueError, match=r"pos_embed has 48 tokens, not 16 frames / tubelet 2"):
        load(path)
    # with the frame count in a config, the same tensors load
    write_release(path, encoder, predictor, config={"num_frames": 6})
    enc, pred = load(path)
    same_outputs(encoder.eval(), predictor.eval(), enc, pred)


# ----------------------------------------------------------------------------------------------
# 7. a file that is not a checkpoint: one line saying what it is

def _gif(path):
    import imageio.v3 as iio
    import numpy as np
    iio.imwrite(path, np.zeros((2, 8, 8, 3), np.uint8), extension=".gif")


def _truncated(path):
    write_release(path, *tiny_models())
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # a copy cut off half-way


@pytest.mark.parametrize("make,expected", [
    (lambda p: p.write_text("hello"),  # torch's own error: KeyError: 101
     r"is a 5-byte file that is not a torch checkpoint \(it starts with b'hello'\)"),
    (_gif, r"is a \d+-byte file that is not a torch checkpoint \(it starts with b'GIF8"),
    (lambda p: p.write_bytes(b""), r"is an empty file"),
    (_truncated, r"is a \d+-byte zip archive that is not a whole torch checkpoint \(truncated"),
    (lambda p: torch.save(torch.zeros(3), p), r"is a torch file of a Tensor of shape \(3,\)"),
    (lambda p: torch.save(tiny_models()[0].state_dict(), p),
     r"is a bare state dict of \d+ tensors with no 'target_encoder' entry \(its keys: "
     r"\['blocks\.0\."),
    (lambda p: torch.save({"encoder": [1], "target_encoder": [2]}, p),
     r"its 'target_encoder' entry is a list that is not a state dict of tensors"),
])
def test_a_file_that_is_not_a_checkpoint(tmp_path, make, expected):
    path = tmp_path / "c.pt"
    make(path)
    with pytest.raises(ValueError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    assert re.search(expected, message), message
    assert message.endswith("expected a torch.save file of a dict with 'encoder' and "
                            "'target_encoder' state dicts (the V-JEPA release format, also what "
                            "train.py writes)")
    sizes = re.findall(r"a (\d+)-byte", message)
    assert sizes in ([], [str(os.path.getsize(path))])


def test_a_state_dict_of_another_network_is_one_line():
    """Tensors that are not a V-JEPA ViT or predictor: a ValueError naming the entry and the
    first missing tensor, not a KeyError."""
    encoder, _ = tiny_models()
    with pytest.raises(ValueError, match=r"its 'target_encoder' is not a V-JEPA network: it has "
                                         r"no 'patch_embed.proj.weight'"):
        model.from_checkpoint({"target_encoder": {"pos_embed": encoder.pos_embed}})
    with pytest.raises(ValueError, match=r"its 'predictor' is not a V-JEPA network: it has no "
                                         r"'predictor_embed.weight'"):
        model.from_checkpoint({"target_encoder": encoder.state_dict(),
                               "predictor": {"mask_tokens.0": torch.zeros(1, 1, 48)}})
