"""Feature cache: encode once, resume after interruption, invalidation, dataset features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from s2_policy.data.feature_cache import FeatureCache, ensure_feature_cache
from s2_policy.data.sequence import SequenceDataset
from s2_policy.data.store import ReplayStore

CAMS = ["front", "wrist"]


class StandInEncoder(nn.Module):
    """Follows the S2Encoder interface (out_dim, encode_cameras); counts calls and can fail on demand."""

    def __init__(self, out_dim: int = 6, seed: int = 0) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.proj = nn.Linear(3, out_dim)
        torch.manual_seed(seed)
        nn.init.normal_(self.proj.weight)
        self.calls = 0
        self.fail_after: int | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images.float().mean(dim=(1, 2)) / 255)

    def encode_cameras(self, images: list[torch.Tensor]) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        return torch.stack([self.forward(x) for x in images], dim=1)


def make_store(path: Path, lengths=(5, 7, 4), seed: int = 0) -> ReplayStore:
    rng = np.random.default_rng(seed)
    s = ReplayStore.create(path, attrs={"cameras": CAMS})
    for T in lengths:
        s.add_episode(
            {
                "front": rng.integers(0, 255, (T, 8, 8, 3), dtype=np.uint8),
                "wrist": rng.integers(0, 255, (T, 6, 6, 3), dtype=np.uint8),
                "state": rng.normal(size=(T, 3)).astype(np.float32),
                "action": rng.normal(size=(T, 2)).astype(np.float32),
            }
        )
    return s


def expected(enc: StandInEncoder, store: ReplayStore, cam: str) -> np.ndarray:
    with torch.no_grad():
        return enc(torch.from_numpy(store[cam][: store.n_frames])).numpy()


def test_encodes_every_frame_once_and_reuses(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr")
    enc = StandInEncoder()
    cache = ensure_feature_cache(store.path, enc, CAMS, batch_size=4, progress=False, fingerprint="fp-a")
    assert enc.calls == 4  # 16 frames / 4, both cameras per call
    assert cache.cameras == CAMS and cache.n_frames == 16 and cache.out_dim == 6
    for cam in CAMS:
        np.testing.assert_allclose(cache.get(cam), expected(enc, store, cam), rtol=1e-5, atol=1e-6)
    assert cache.path.parent == Path(f"{store.path}.features")
    again = ensure_feature_cache(store.path, enc, CAMS, batch_size=4, progress=False, fingerprint="fp-a")
    assert enc.calls == 4 and again.path == cache.path
    assert not list(cache.path.parent.glob("*.partial")) and not list(cache.path.parent.glob("*.lock"))


def test_resumes_after_interruption(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr")
    enc = StandInEncoder()
    enc.fail_after = 2
    with pytest.raises(KeyboardInterrupt):
        ensure_feature_cache(store.path, enc, CAMS, batch_size=3, cache_dir=tmp_path / "c", fingerprint="fp")
    assert len(list((tmp_path / "c").glob("*.partial"))) == 1
    enc.fail_after, enc.calls = None, 0
    cache = ensure_feature_cache(
        store.path, enc, CAMS, batch_size=3, cache_dir=tmp_path / "c", fingerprint="fp"
    )
    assert enc.calls == 4  # frames 6..15 only: ceil(10 / 3)
    for cam in CAMS:
        np.testing.assert_allclose(cache.get(cam), expected(enc, store, cam), rtol=1e-5, atol=1e-6)
    assert not list((tmp_path / "c").glob("*.partial"))


def test_invalidated_by_encoder_store_and_cameras(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr")
    enc = StandInEncoder()
    kw = dict(batch_size=8, cache_dir=tmp_path / "c", progress=False)
    a = ensure_feature_cache(store.path, enc, CAMS, fingerprint="fp-a", **kw)
    b = ensure_feature_cache(store.path, enc, CAMS, fingerprint="fp-b", **kw)  # other weights / S2 settings
    c = ensure_feature_cache(store.path, enc, ["front"], fingerprint="fp-a", **kw)
    assert len({a.path, b.path, c.path}) == 3
    ReplayStore.open(store.path, mode="a").add_episode(
        {k: v[:2] for k, v in ReplayStore.open(store.path).get_episode(0).items()}
    )
    d = ensure_feature_cache(store.path, enc, CAMS, fingerprint="fp-a", **kw)
    assert d.path != a.path and d.n_frames == 18
    with pytest.raises(ValueError, match="different store"):
        SequenceDataset(store.path, cameras=CAMS, horizon=2, n_obs_steps=1, n_action_steps=1, features=a)
    # the same lengths but rewritten frames at an episode edge change the store identity
    root = ReplayStore.open(store.path, mode="a")
    root["front"][0] = 255 - root["front"][0]
    e = ensure_feature_cache(store.path, enc, CAMS, fingerprint="fp-a", **kw)
    assert e.path != d.path


def test_dataset_yields_cached_features(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr")
    enc = StandInEncoder()
    cache = ensure_feature_cache(store.path, enc, CAMS, batch_size=5, progress=False, fingerprint="fp")
    kw = dict(cameras=CAMS, horizon=4, n_obs_steps=2, n_action_steps=2, val_ratio=0.0)
    img = SequenceDataset(store.path, **kw)
    feat = SequenceDataset(store.path, **kw, features=FeatureCache(cache.path))
    assert len(img) == len(feat)
    for i in range(len(img)):
        a, b = img[i], feat[i]
        assert b["obs"]["front"].dtype == torch.float32 and b["obs"]["front"].shape == (2, 6)
        for cam in CAMS:
            with torch.no_grad():
                want = enc(a["obs"][cam])
            torch.testing.assert_close(b["obs"][cam], want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a["action"], b["action"])
    with pytest.raises(ValueError, match="no features for cameras"):
        SequenceDataset(store.path, **{**kw, "cameras": ["front", "state"]}, features=cache)


def test_bad_encoder_output_and_arguments(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr")
    enc = StandInEncoder()
    enc.out_dim = 5  # lies about its width
    with pytest.raises(ValueError, match="encode_cameras returned shape"):
        ensure_feature_cache(store.path, enc, CAMS, progress=False, fingerprint="x")
    with pytest.raises(ValueError, match="no camera array"):
        ensure_feature_cache(store.path, StandInEncoder(), ["top"], progress=False, fingerprint="x")
    with pytest.raises(ValueError, match="at least one camera"):
        ensure_feature_cache(store.path, StandInEncoder(), [], progress=False, fingerprint="x")


def test_real_s2_encoder(tmp_path: Path) -> None:
    """The project's S2Encoder (s2p-tiny, depth cut to 1 for speed): fingerprint keying, features match."""
    from s2_policy.encoders import EncoderConfig, build_encoder

    store = make_store(tmp_path / "s.zarr", lengths=(3, 2))
    cfg = dict(backbone="s2p-tiny", checkpoint=None, precision="fp32", arch_kwargs={"depth": 1})
    single = build_encoder(EncoderConfig(**cfg, scales=[1]))
    s2 = build_encoder(EncoderConfig(**cfg, scales=[1, 2]))
    a = ensure_feature_cache(store.path, single, CAMS, batch_size=4, progress=False)
    b = ensure_feature_cache(store.path, s2, CAMS, batch_size=4, progress=False)
    assert a.path != b.path and b.out_dim == s2.out_dim == 2 * single.out_dim
    for cam in CAMS:
        want = s2(torch.from_numpy(store[cam][:5])).numpy()
        np.testing.assert_allclose(b.get(cam), want, rtol=1e-4, atol=1e-4)
    ds = SequenceDataset(store.path, cameras=CAMS, horizon=2, n_obs_steps=2, n_action_steps=1, features=b)
    assert ds[0]["obs"]["wrist"].shape == (2, s2.out_dim)


def test_cache_dir_elsewhere_for_read_only_stores(tmp_path: Path) -> None:
    import shutil

    store = make_store(tmp_path / "s.zarr")
    enc = StandInEncoder()
    caches = tmp_path / "caches"
    cache = ensure_feature_cache(store.path, enc, CAMS, batch_size=8, cache_dir=caches, progress=False,
                                 fingerprint="fp-a")
    assert cache.path.parent == caches and enc.calls == 2
    assert not Path(f"{store.path}.features").exists()   # nothing written beside the store
    # the key does not depend on the store's path: a copy of the store finds the same cache
    shutil.copytree(store.path, tmp_path / "copy.zarr")
    again = ensure_feature_cache(tmp_path / "copy.zarr", enc, CAMS, batch_size=8, cache_dir=caches,
                                 progress=False, fingerprint="fp-a")
    assert again.path == cache.path and enc.calls == 2
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=r"cache\.dir=<writable folder>"):
        ensure_feature_cache(store.path, enc, CAMS, cache_dir=blocker / "caches", progress=False,
                             fingerprint="fp-a")
