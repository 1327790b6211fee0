"""Encoder fast paths: dynamic int8 linear layers; the CPU runtime settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from s2_policy.encoders import EncoderConfig, build_encoder, fingerprint
from s2_policy.encoders.quantize import Int8Linear, quantize_linears
from s2_policy.runtime import configure_cpu, set_realtime_priority

MAE = "builtin:s2p-tiny-mae.pth"  # trained weights: real activation ranges, not a random init


def _frames(b=2, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, 128, 128, 3), dtype=np.uint8))


@pytest.mark.parametrize("rows", [3, 16, 17, 200])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_close_to_float(rows, dtype):
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(2, rows, 64)
    x[..., 5] *= 20  # an outlier channel: per-token scales must still keep the error small
    y, yq = lin(x), q(x.to(dtype))
    assert yq.dtype == dtype and yq.shape == y.shape
    rel = ((yq.float() - y).norm() / y.norm()).item()
    assert rel < 0.03, rel
    assert q.weight_t_int8.dtype == torch.int8 and q.weight_t_int8.shape == (64, 48)


def test_int8_linear_without_bias_and_zero_rows():
    lin = nn.Linear(32, 16, bias=False)
    q = Int8Linear.from_linear(lin)
    x = torch.zeros(20, 32)
    x[3] = torch.randn(32)
    y = q(x)
    assert torch.equal(y[0], torch.zeros(16))  # an all-zero token stays exactly zero (no 0/0)
    torch.testing.assert_close(y[3], lin(x[3]), rtol=0.05, atol=0.05)


def test_quantize_linears_skips_head_and_odd_shapes():
    model = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 10))  # 10 outputs: not a multiple of 8
    model.head = nn.Linear(16, 16)
    assert quantize_linears(model) == 1
    assert isinstance(model[0], Int8Linear) and isinstance(model[2], nn.Linear)
    assert isinstance(model.head, nn.Linear)


def test_int8_encoder_matches_fp32_and_shares_fingerprint():
    cfg = {"backbone": "s2p-tiny", "checkpoint": MAE, "scales": [1, 2]}
    enc32 = build_encoder(EncoderConfig(**cfg, precision="fp32"))
    enc8 = build_encoder(EncoderConfig(**cfg, precision="int8"))
    assert enc8.int8_layers == 6 * 4  # qkv, proj, fc1, fc2 of each of the 6 blocks
    frames = _frames()
    a, b = enc32(frames), enc8(frames)
    assert b.dtype == torch.float32
    cos = nn.functional.cosine_similarity(a, b)
    assert cos.min() > 0.999, cos
    assert fingerprint(enc8) == fingerprint(enc32)
    tokens = build_encoder(EncoderConfig(**cfg, precision="int8", pooling="tokens"))
    assert tokens.encode_cameras([frames, frames]).shape == (2, 2, tokens.num_tokens, tokens.out_dim)


def test_configure_cpu():
    before = torch.get_num_threads()
    configure_cpu(None)
    configure_cpu(0)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        configure_cpu(-1)
    configure_cpu(1)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(before)


def test_set_realtime_priority_validates_and_applies_in_a_subprocess():
    import subprocess
    import sys

    with pytest.raises(ValueError, match="1..99"):
        set_realtime_priority(0)
    code = ("import os\nfrom s2_policy.runtime import set_realtime_priority\n"
            "try:\n    set_realtime_priority(5)\nexcept PermissionError as e:\n    print('denied', e)\n"
            "else:\n    print('fifo' if os.sched_getscheduler(0) == os.SCHED_FIFO else 'other')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("fifo") or ("denied" in out and "CAP_SYS_NICE" in out), out
