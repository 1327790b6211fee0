"""Random-shift augmentation through the feature cache: shifts by hand, cached copies, drawing in batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from s2_policy.data.augment import AugmentConfig, FrameShift
from s2_policy.data.feature_cache import ensure_feature_cache
from s2_policy.data.sequence import SequenceDataset
from s2_policy.data.store import ReplayStore


class PixelEncoder(nn.Module):
    """Feature = the whole image, flattened: any shift shows in it (the S2Encoder interface)."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.out_dim = side * side * 3
        self.calls = 0
        self.fail_after: int | None = None

    def encode_cameras(self, images: list[torch.Tensor]) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        return torch.stack([x.float().flatten(1) for x in images], dim=1)


def _store(path: Path, lengths=(6, 9), side: int = 16) -> ReplayStore:
    rng = np.random.default_rng(0)
    s = ReplayStore.create(path, attrs={"cameras": ["front"]})
    for n in lengths:
        s.add_episode({"front": rng.integers(0, 255, (n, side, side, 3), dtype=np.uint8),
                       "state": rng.normal(size=(n, 2)).astype(np.float32),
                       "action": rng.normal(size=(n, 2)).astype(np.float32)})
    return s


def test_frame_shift_moves_pixels_and_repeats_the_edges():
    frames = np.random.default_rng(1).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    shift = FrameShift(max_shift=0.25, copy=1)          # p = 4 px at 16 px
    out = shift(frames, np.arange(10, 15))
    offsets = shift.offsets(np.arange(10, 15), 16)
    assert np.abs(offsets).max() <= 4 and (offsets != 0).any()
    for j, (dy, dx) in enumerate(offsets):               # out[y, x] = frame[clip(y + dy), clip(x + dx)]
        rows = np.clip(np.arange(16) + dy, 0, 15)
        cols = np.clip(np.arange(16) + dx, 0, 15)
        np.testing.assert_array_equal(out[j], frames[j][rows][:, cols])
    # a pure function of (seed, copy, frame index): reproducible, and each copy shifts differently
    np.testing.assert_array_equal(shift(frames, np.arange(10, 15)), out)
    np.testing.assert_array_equal(FrameShift(0.25, copy=1).offsets(np.arange(100), 16),
                                  shift.offsets(np.arange(100), 16))
    assert not np.array_equal(FrameShift(0.25, copy=2).offsets(np.arange(100), 16),
                              shift.offsets(np.arange(100), 16))
    assert np.unique(shift.offsets(np.arange(400), 16)).tolist() == list(range(-4, 5))


def test_shifted_copies_are_cached_beside_the_clean_features_and_resume(tmp_path: Path):
    store = _store(tmp_path / "s.zarr")
    enc = PixelEncoder(16)
    kw = dict(batch_size=4, progress=False, fingerprint="fp", cache_dir=tmp_path / "c")
    clean = ensure_feature_cache(store.path, enc, ["front"], **kw)
    shift = FrameShift(0.25, copy=1)
    copy = ensure_feature_cache(store.path, enc, ["front"], augment=shift, **kw)
    assert copy.path != clean.path and copy.augment == shift.key and clean.augment is None
    frames = store["front"][: store.n_frames]
    np.testing.assert_array_equal(clean.get("front"), frames.reshape(len(frames), -1).astype(np.float32))
    want = shift(frames, np.arange(len(frames))).reshape(len(frames), -1).astype(np.float32)
    np.testing.assert_array_equal(copy.get("front"), want)
    # an interrupted build of another copy resumes to exactly the features of an uninterrupted one
    enc.fail_after, enc.calls = enc.calls + 2, enc.calls
    with pytest.raises(KeyboardInterrupt):
        ensure_feature_cache(store.path, enc, ["front"], augment=FrameShift(0.25, copy=2), **kw)
    enc.fail_after = None
    resumed = ensure_feature_cache(store.path, enc, ["front"], augment=FrameShift(0.25, copy=2), **kw)
    fresh = FrameShift(0.25, copy=2)(frames, np.arange(len(frames))).reshape(len(frames), -1)
    np.testing.assert_array_equal(resumed.get("front"), fresh.astype(np.float32))


def test_training_batches_draw_clean_and_shifted_frames_validation_only_clean(tmp_path: Path):
    store = _store(tmp_path / "s.zarr", lengths=(20, 20, 20, 20))
    enc = PixelEncoder(16)
    kw = dict(batch_size=32, progress=False, fingerprint="fp")
    clean = ensure_feature_cache(store.path, enc, ["front"], **kw)
    copies = [ensure_feature_cache(store.path, enc, ["front"], augment=s, **kw)
              for s in AugmentConfig(copies=2, max_shift=0.25).shifts()]
    ds = SequenceDataset(store.path, cameras=["front"], horizon=4, n_obs_steps=2, n_action_steps=2,
                         val_ratio=0.25, features=clean, augmented_features=copies)
    idx = np.arange(len(ds))
    torch.manual_seed(0)
    obs = ds.get_batch(idx)["obs"]["front"].numpy()
    frames = ds.batch_frame_indices(idx)[:, :2]
    versions = np.stack([c.get("front")[frames] for c in [clean, *copies]])   # (3, B, To, F)
    match = (obs[None] == versions).all(-1)                                   # which version each frame is
    assert match.any(0).all()                                                 # every frame is one of them
    picked = match.argmax(0)
    assert {0, 1, 2} <= set(np.unique(picked).tolist())                       # and all versions are used
    torch.manual_seed(0)
    np.testing.assert_array_equal(ds.get_batch(idx)["obs"]["front"].numpy(), obs)   # reproducible
    val = ds.get_validation_dataset()
    v = np.arange(len(val))
    np.testing.assert_array_equal(val.get_batch(v)["obs"]["front"].numpy(),
                                  clean.get("front")[val.batch_frame_indices(v)[:, :2]])
    with pytest.raises(ValueError, match="needs features="):
        SequenceDataset(store.path, cameras=["front"], horizon=8, augmented_features=copies)
    other = ensure_feature_cache(store.path, enc, ["front"], augment=FrameShift(0.25, copy=1),
                                 batch_size=32, progress=False, fingerprint="fp-other-encoder")
    for wrong, why in ((clean, "a clean cache"), (other, "from another encoder")):
        with pytest.raises(ValueError, match=why):
            SequenceDataset(store.path, cameras=["front"], horizon=8, features=clean,
                            augmented_features=[*copies, wrong])
    with pytest.raises(ValueError, match="training split"):
        SequenceDataset(store.path, cameras=["front"], horizon=8, split="val", features=clean,
                        augmented_features=copies)


def test_augment_config_errors_name_the_fix():
    assert AugmentConfig.from_dict(None) == AugmentConfig() and AugmentConfig().shifts() == []
    assert [s.key for s in AugmentConfig(copies=2).shifts()] == ["shift0.0625-copy1-seed0",
                                                                 "shift0.0625-copy2-seed0"]
    with pytest.raises(ValueError, match="copies must be >= 0"):
        AugmentConfig(copies=-1)
    with pytest.raises(ValueError, match=r"max_shift must be in \(0, 0.5\)"):
        AugmentConfig(max_shift=0.6)
    with pytest.raises(ValueError, match="no field 'copy'"):
        AugmentConfig.from_dict({"copy": 3})
