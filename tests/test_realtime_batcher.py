"""Tile batcher: one backbone call for every tile of every scale and camera == per-camera per-scale calls."""

import numpy as np
import pytest
import torch

from s2_policy.encoders import EncoderConfig, build_encoder
from s2_policy.realtime.batcher import TileBatcher, encode_naive


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    # non-square and square cameras of different sizes: both are cropped/resized to the S2 input size
    return [rng.integers(0, 256, s, dtype=np.uint8) for s in [(96, 128, 3), (128, 128, 3), (80, 80, 3)]]


def count_backbone_calls(enc):
    """Record the batch size of every backbone call (a hook on the patch embedding, run once per call)."""
    batches = []
    enc.backbone.patch_embed.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    return batches


@pytest.mark.parametrize("pooling", ["cls", "cls+mean"])
def test_batched_equals_per_camera_per_scale(frames, pooling):
    enc = build_encoder(EncoderConfig(backbone="s2p-tiny", scales=[1, 2], pooling=pooling, precision="fp32"))
    calls = count_backbone_calls(enc)
    batcher = TileBatcher(enc, [f.shape[:2] for f in frames], warmup=0)
    assert batcher.n_tiles == 3 * 5
    batched = batcher.encode(frames)
    assert calls == [15]  # ONE backbone call: 3 cameras x (1 + 4) tiles
    calls.clear()
    naive = encode_naive(enc, frames)
    assert calls == [1, 4] * 3  # one call per camera per scale
    assert batched.shape == naive.shape == (3, enc.out_dim) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, naive, rtol=1e-5, atol=1e-5)
    # and both equal the encoder's own per-camera path
    torch.testing.assert_close(batched[1], enc(frames[1][None])[0], rtol=1e-5, atol=1e-5)


def test_buffers_are_reused_and_shapes_fixed(frames):
    enc = build_encoder(EncoderConfig(backbone="s2p-tiny", scales=[1, 2], precision="fp32"))
    batcher = TileBatcher(enc, [f.shape[:2] for f in frames[:2]], warmup=1)
    buffers = [t.data_ptr() for t in batcher._inputs]
    a = batcher.encode(frames[:2])
    b = batcher.encode([frames[1][:96], frames[1][::-1].copy()])  # same shapes, other content
    assert [t.data_ptr() for t in batcher._inputs] == buffers
    assert not torch.allclose(a, b)
    torch.testing.assert_close(batcher.encode(frames[:2]), a)  # results do not alias the buffers
    with pytest.raises(ValueError, match="does not match the fixed"):
        batcher.encode([frames[1], frames[1]])
    with pytest.raises(ValueError, match="expected 2 camera frames"):
        batcher.encode(frames)
    with pytest.raises(ValueError, match="cuda_graph"):
        TileBatcher(enc, [(64, 64)], cuda_graph=True)
