"""S2Encoder: shapes, cameras in one call, frozen behaviour, preprocessing, fingerprints, identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from s2_policy.encoders import (
    EncoderConfig,
    S2Encoder,
    build_encoder,
    build_encoder_from_identity,
    fingerprint,
    weights_digest,
)
from s2_policy.encoders.fingerprint import fingerprint_payload
from s2_policy.encoders.preprocess import Preprocessor
from s2_policy.s2 import multiscale_forward


@pytest.fixture(scope="module")
def enc32() -> S2Encoder:
    return build_encoder(EncoderConfig(backbone="s2p-tiny", scales=[1, 2], precision="fp32"))


def _frames(b=2, h=96, w=128, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, h, w, 3), dtype=np.uint8))


def test_forward_shapes_and_dtype(enc32):
    assert enc32.out_dim == 2 * 192 and enc32.native_size == (64, 64)
    assert enc32.img_sizes == [(64, 64), (128, 128)] and enc32.plan.n_tiles == 5
    f = enc32(_frames())
    assert f.shape == (2, enc32.out_dim) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert not f.is_inference()  # usable as input of a trainable head


def test_matches_multiscale_forward_on_backbone(enc32):
    frames = _frames()
    x = enc32.preprocess(frames)
    ref = multiscale_forward(enc32.backbone.forward_features, x, img_sizes=[64, 128], max_split_size=64,
                             num_prefix_token=1)
    torch.testing.assert_close(enc32(frames), ref[:, 0], rtol=0, atol=1e-5)


def test_encode_cameras_one_backbone_call(enc32, monkeypatch):
    cams = [_frames(seed=1), _frames(h=64, w=64, seed=2), _frames(h=120, w=160, seed=3)]
    calls = []
    inner = enc32._features
    monkeypatch.setattr(enc32, "_features", lambda t: calls.append(t.shape) or inner(t))
    out = enc32.encode_cameras(cams)
    assert calls == [(3 * 2 * 5, 3, 64, 64)]
    assert out.shape == (2, 3, enc32.out_dim)
    for k, cam in enumerate(cams):
        torch.testing.assert_close(out[:, k], enc32(cam), rtol=0, atol=1e-4)


def test_frozen_and_stays_eval(enc32):
    parent = torch.nn.Sequential(enc32, torch.nn.Linear(enc32.out_dim, 3))
    parent.train()
    assert not enc32.training and not enc32.backbone.training
    assert not any(p.requires_grad for p in enc32.parameters())
    loss = parent(_frames()).sum()
    loss.backward()
    assert parent[1].weight.grad is not None


def test_bf16_close_to_fp32(enc32):
    enc16 = build_encoder(EncoderConfig(backbone="s2p-tiny", scales=[1, 2], precision="bf16"))
    assert next(enc16.backbone.parameters()).dtype == torch.bfloat16
    frames = _frames()
    a, b = enc32(frames), enc16(frames)
    assert b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.999
    assert fingerprint(enc16) == fingerprint(enc32)  # numerics are not part of the identity


@pytest.mark.parametrize("pooling", ["mean", "cls+mean", "tokens"])
def test_poolings(enc32, pooling):
    enc = build_encoder(EncoderConfig(backbone="s2p-tiny", scales=[1, 2], precision="fp32", pooling=pooling))
    frames = _frames()
    tokens = multiscale_forward(enc.backbone.forward_features, enc.preprocess(frames), img_sizes=[64, 128],
                                max_split_size=64, num_prefix_token=1)
    out = enc(frames)
    if pooling == "tokens":
        assert out.shape == (2, enc.num_tokens, enc.out_dim) == (2, 1 + 64, 384)
        torch.testing.assert_close(out, tokens, rtol=0, atol=1e-5)
    elif pooling == "mean":
        torch.testing.assert_close(out, tokens[:, 1:].mean(1), rtol=0, atol=1e-5)
    else:
        assert out.shape == (2, enc.out_dim) == (2, 768)
        expected = torch.cat([enc32(frames), tokens[:, 1:].mean(1)], -1)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_three_scales_for_256px_cameras():
    """``s2=s2x3`` (the fine-detail MetaWorld setting): 1 + 4 + 16 tiles in one call, as the reference."""
    enc = build_encoder(EncoderConfig(backbone="s2p-nano", scales=[1, 2, 4], precision="fp32"))
    assert enc.img_sizes == [(64, 64), (128, 128), (256, 256)] and enc.plan.n_tiles == 21
    assert enc.out_dim == 3 * 128 and enc.input_size == (256, 256)
    frames = _frames(b=2, h=256, w=256, seed=4)
    ref = multiscale_forward(enc.backbone.forward_features, enc.preprocess(frames), img_sizes=[64, 128, 256],
                             max_split_size=64, num_prefix_token=1)
    torch.testing.assert_close(enc(frames), ref[:, 0], rtol=0, atol=1e-5)


def test_non_square_scales_and_float_input():
    cfg = EncoderConfig(backbone="s2p-tiny", img_sizes=[[64, 128], [128, 256]], precision="fp32")
    enc = build_encoder(cfg)
    assert enc.plan.n_tiles == 2 + 8 and enc.input_size == (128, 256)
    x = torch.rand(2, 3, 120, 240)
    f = enc(x)
    assert f.shape == (2, 384)
    as_uint8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    torch.testing.assert_close(f, enc(as_uint8), rtol=0, atol=0.05)


def test_preprocess_crop_and_normalisation():
    pre = Preprocessor((64, 64), normalize="half", resize="crop")
    img = torch.zeros(1, 64, 128, 3, dtype=torch.uint8)
    img[:, :, 32:96] = 255  # centre square white, sides black: the crop keeps only the white part
    out = pre(img)
    assert out.shape == (1, 3, 64, 64)
    torch.testing.assert_close(out, torch.ones_like(out))
    stretched = Preprocessor((64, 64), normalize="half", resize="stretch")(img)
    assert stretched.min() < -0.9


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(64, 64, 3, dtype=torch.uint8), "batch"),
        (torch.zeros(1, 64, 64, 4, dtype=torch.uint8), "3 channels"),
        (torch.zeros(1, 64, 64, 3), r"\(B, 3, H, W\)"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.int32), "dtype"),
    ],
)
def test_bad_images(enc32, images, match):
    with pytest.raises(ValueError, match=match):
        enc32(images)


def test_bad_configs():
    with pytest.raises(ValueError, match="pooling"):
        EncoderConfig(pooling="max")
    with pytest.raises(ValueError, match="unknown encoder config keys"):
        EncoderConfig.from_dict({"backbone": "s2p-tiny", "scale": [1]})
    with pytest.raises(ValueError, match="native size"):
        build_encoder(EncoderConfig(img_sizes=[96]))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_encoder(EncoderConfig(backbone="no-such-vit"))
    with pytest.raises(ValueError, match="checkpoint"):
        build_encoder(EncoderConfig(backbone="vits-mae-hoi"))
    with pytest.raises(ValueError, match="pretrained"):
        build_encoder(EncoderConfig(backbone="s2p-tiny", pretrained=True))
    with pytest.raises(FileNotFoundError, match="s2_policy/weights/nope.pth"):
        build_encoder(EncoderConfig(checkpoint="builtin:nope.pth"))


def test_timm_backbone_with_registers():
    enc = build_encoder(EncoderConfig(
        backbone="vit_small_patch16_224", precision="fp32", scales=[1, 2],
        arch_kwargs={"img_size": 32, "depth": 1, "reg_tokens": 4, "embed_dim": 64, "num_heads": 2},
    ))
    assert enc.num_prefix_tokens == 5 and enc.native_size == (32, 32)
    x = torch.rand(1, 3, 64, 64)
    ref = multiscale_forward(enc.backbone.forward_features, enc.preprocess(x), img_sizes=[32, 64],
                             max_split_size=32, num_prefix_token=5)
    torch.testing.assert_close(enc(x), ref[:, 0], rtol=0, atol=1e-5)


_FP_SCRIPT = (
    "from s2_policy.encoders import EncoderConfig, build_encoder, fingerprint;"
    "print(fingerprint(build_encoder(EncoderConfig(backbone='s2p-tiny', scales=[1, 2]))))"
)


@pytest.mark.slow
def test_fingerprint_stable_across_processes_and_sensitive(enc32):
    fp = fingerprint(enc32)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _FP_SCRIPT]
    other = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    assert other.stdout.strip() == fp
    variants = [
        dict(scales=[1]),
        dict(scales=[1, 2], pooling="mean"),
        dict(scales=[1, 2], normalize="half"),
        dict(scales=[1, 2], resize="stretch"),
        dict(scales=[1, 2], arch_kwargs={"num_heads": 6}),  # same shapes, different features
    ]
    fps = {fingerprint(build_encoder(backbone="s2p-tiny", precision="fp32", **v)) for v in variants}
    assert fp not in fps and len(fps) == len(variants)
    changed = build_encoder(EncoderConfig(backbone="s2p-tiny", scales=[1, 2], precision="fp32"))
    with torch.no_grad():
        changed.backbone.blocks[0].mlp.fc1.bias[0] += 1e-3
    assert weights_digest(changed.backbone) != enc32.weights_digest


def test_antialiased_scales_keep_the_base_scale_of_a_single_scale_encoder(enc32):
    """With scale_antialias the S2 encoder's base-scale tokens match the single-scale encoder's (both
    low-pass the frame to 64 px); plain bicubic drifts away on fine detail. Changes the fingerprint only when
    on, so earlier caches and checkpoints stay valid."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    img = np.repeat((100 + 80 * np.sin(xx / 20) + 40 * np.cos(yy / 15))[None, ..., None], 2, 0).repeat(3, -1)
    for k in range(2):  # a smooth scene with 30 small parts of 2-3 px
        for r, c, s in zip(*rng.integers(0, 125, (2, 30)), rng.integers(2, 4, 30), strict=True):
            img[k, r:r + s, c:c + s] = rng.integers(0, 256, 3)
    frames = torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8))
    cfg = dict(backbone="s2p-tiny", precision="fp32", pooling="tokens")
    single = build_encoder(EncoderConfig(scales=[1], **cfg))(frames)
    gap = {}
    for aa in (False, True):
        s2 = build_encoder(EncoderConfig(scales=[1, 2], scale_antialias=aa, **cfg))
        base = s2(frames)[..., : single.shape[-1]]  # channels: [scale 1 | scale 2]
        gap[aa] = float((base - single).abs().mean() / single.abs().mean())
    assert gap[True] < 0.5 * gap[False]  # measured: 0.023 vs 0.058
    aa_enc = build_encoder(EncoderConfig(scales=[1, 2], scale_antialias=True, backbone="s2p-tiny",
                                         precision="fp32"))
    assert aa_enc.fingerprint() != enc32.fingerprint()
    assert "scale_antialias" not in fingerprint_payload(enc32)["s2"]


def test_identity_round_trip(enc32):
    ident = enc32.identity()
    json.dumps(ident)
    again = build_encoder_from_identity(ident)
    assert again.fingerprint() == enc32.fingerprint()
    bad = {**ident, "fingerprint": "0" * 64}
    with pytest.raises(ValueError, match="fingerprint"):
        build_encoder_from_identity(bad)


@pytest.mark.parametrize("s2_name, scales",
                         [("single", [1.0]), ("s2", [1.0, 2.0]), ("s2x3", [1.0, 2.0, 4.0])])
@pytest.mark.parametrize("encoder_name", ["s2p-nano", "s2p-tiny", "s2p-small"])
def test_yaml_configs_merge_into_encoder_config(encoder_name, s2_name, scales):
    from pathlib import Path

    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parent.parent / "configs"
    merged = OmegaConf.merge(OmegaConf.load(root / "encoder" / f"{encoder_name}.yaml"),
                             OmegaConf.load(root / "s2" / f"{s2_name}.yaml"))
    cfg = EncoderConfig.from_dict(merged)
    assert cfg.backbone == encoder_name and cfg.scales == scales
