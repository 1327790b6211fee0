"""Inputs are checked at the boundaries: encoder images, policy observations (the store writer: elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s2_policy.encoders import EncoderConfig, build_encoder
from s2_policy.encoders.preprocess import check_images
from s2_policy.policies import LinearNormalizer, Policy


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder(EncoderConfig(backbone="s2p-nano", scales=[1, 2], precision="fp32"))


def _frames(b: int = 2, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=g)


def test_check_images_accepts_good_inputs_and_names_the_fix():
    check_images(_frames())
    check_images(_frames().permute(0, 3, 1, 2).float() / 255)
    with pytest.raises(ValueError, match=r"up to 255: they look like 0\.\.255 .*Divide by 255.*uint8"):
        check_images(_frames().permute(0, 3, 1, 2).float(), where="images")
    x = torch.rand(2, 3, 8, 8)
    x[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="hold 1 NaN/inf values"):
        check_images(x)
    x[1, 2, 3, 4] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        check_images(x)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\], got values in \[-0.5"):
        check_images(torch.full((1, 3, 4, 4), -0.5))
    with pytest.raises(ValueError, match="empty frame"):
        check_images(torch.zeros(2, 0, 8, 3, dtype=torch.uint8))


def test_encoder_rejects_0_255_floats_and_nan_pixels(encoder):
    good = encoder(_frames())
    assert torch.isfinite(good).all()
    float255 = _frames().permute(0, 3, 1, 2).float()
    with pytest.raises(ValueError, match=r"camera 0 of 1: .*look like 0\.\.255"):
        encoder(float255)
    torch.testing.assert_close(encoder(float255 / 255), good, rtol=1e-5, atol=1e-5)  # the advertised fix
    nan = float255 / 255
    nan[0, 1, 10, 10] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        encoder.encode_cameras([_frames(), nan])


def test_checks_can_be_turned_off(encoder):
    """Without the checks a single NaN pixel silently poisons every feature of its image (the bug)."""
    unchecked = build_encoder(EncoderConfig(backbone="s2p-nano", scales=[1, 2], precision="fp32",
                                            check_inputs=False))
    unchecked.load_state_dict(encoder.state_dict())
    assert unchecked.fingerprint() == encoder.fingerprint()  # a runtime switch, not a feature setting
    nan = _frames().permute(0, 3, 1, 2).float() / 255
    nan[0, 1, 10, 10] = float("nan")
    feats = unchecked(nan)
    assert torch.isnan(feats[0]).all() and torch.isfinite(feats[1]).all()


def test_policy_checks_state_features_and_images(encoder):
    g = np.random.default_rng(0)
    norm = LinearNormalizer().fit({"state": g.normal(size=(40, 3)), "action": g.normal(size=(40, 2))})
    cfg = {"head": "mlp", "horizon": 4, "n_obs_steps": 1, "n_action_steps": 2, "obs_proj_dim": 8,
           "mlp": {"hidden_dim": 16, "n_layers": 2}}
    p = Policy(cfg, encoder.out_dim, ["front", "wrist"], 3, 2, norm, encoder=encoder)
    imgs = _frames().reshape(2, 1, 64, 64, 3)
    state = torch.zeros(2, 1, 3)
    assert torch.isfinite(p.predict_action({"front": imgs, "wrist": imgs, "state": state})).all()
    bad_state = state.clone()
    bad_state[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="state hold 1 NaN/inf"):
        p.predict_action({"front": imgs, "wrist": imgs, "state": bad_state})
    with pytest.raises(ValueError, match=r"state must be \(B, To, 3\), got \(2, 1, 4\)"):
        p.predict_action({"front": imgs, "wrist": imgs, "state": torch.zeros(2, 1, 4)})
    wrist = imgs.permute(0, 1, 4, 2, 3).float()  # float CHW in 0..255
    with pytest.raises(ValueError, match=r"camera 'wrist' images range up to 2\d\d: .*Divide by 255"):
        p.predict_action({"front": imgs, "wrist": wrist, "state": state})
    feats = torch.randn(2, 1, encoder.out_dim)
    feats[0, 0, 5] = float("inf")
    with pytest.raises(ValueError, match="observation features hold 1 NaN/inf"):
        p.predict_action({"front": feats, "wrist": torch.zeros_like(feats), "state": state})
