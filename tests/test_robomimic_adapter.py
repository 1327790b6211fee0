"""The S2 encoder inside robomimic 0.3: VisualCore by backbone name, ObservationEncoder by core name."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

pytest.importorskip("robomimic")

from robomimic.models.obs_core import VisualCore  # noqa: E402
from robomimic.models.obs_nets import ObservationEncoder  # noqa: E402

import s2_policy.integrations.robomimic as adapter  # noqa: E402
from s2_policy.encoders import build_encoder  # noqa: E402

_KW = {"backbone": "s2p-tiny", "scales": [1, 2], "precision": "fp32"}



def test_visual_core_resolves_backbone_by_name():
    core = VisualCore(input_shape=(3, 84, 84), backbone_class="S2Backbone", pool_class=None,
                      backbone_kwargs=dict(_KW), feature_dimension=32)
    assert isinstance(core.backbone, adapter.S2Backbone)
    x = torch.rand(2, 3, 84, 84)
    assert core.output_shape((3, 84, 84)) == [32]
    assert core(x).shape == (2, 32)
    # the backbone features are exactly our encoder's
    ours = build_encoder(**_KW)
    torch.testing.assert_close(core.backbone(x), ours(x), rtol=0, atol=1e-5)


def test_observation_encoder_with_core_name():
    enc = ObservationEncoder(feature_activation=None)
    enc.register_obs_key(name="agentview_image", shape=(3, 84, 84), net_class="S2VisualCore",
                         net_kwargs={"input_shape": (3, 84, 84), "backbone_kwargs": dict(_KW),
                                     "feature_dimension": 16})
    enc.register_obs_key(name="robot0_eef_pos", shape=(3,))
    enc.make()
    enc.train()
    core = enc.obs_nets["agentview_image"]
    assert not core.backbone.encoder.training  # frozen encoder stays in eval mode
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all("backbone" not in n for n in trainable)
    obs = OrderedDict(agentview_image=torch.rand(4, 3, 84, 84), robot0_eef_pos=torch.rand(4, 3))
    out = enc(obs)
    assert out.shape == (4, 16 + 3) == (4, enc.output_shape()[0])
    out.sum().backward()
    assert core.nets[-1].weight.grad is not None


def test_bad_backbone_arguments():
    with pytest.raises(ValueError, match="3 channels"):
        adapter.S2Backbone(input_channel=1, **_KW)
    with pytest.raises(ValueError, match="tokens"):
        adapter.S2Backbone(pooling="tokens", **_KW)
    adapter.register()  # idempotent
