"""S2Encoder: shapes, cameras in one call, frozen behaviour, preprocessing, fingerprints, identity."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from s2_policy.encoders import EncoderConfig, S2Encoder, build_encoder, build_encoder_from_identity, fingerprint
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
