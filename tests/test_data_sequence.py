"""SequenceDataset: windows against an independent reference of the padding rules, splits, loaders."""

from __future__ import annotations

from pathlib import Path

import numcodecs
import numpy as np
import pytest
import torch
import zarr
import zarr.codecs
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from s2_policy.data.frame_reader import FrameReader
from s2_policy.data.integrity import StoreIntegrityError
from s2_policy.data.sequence import SequenceDataset, split_episodes, window_index
from s2_policy.data.store import ReplayStore

LENGTHS = [1, 2, 5, 9, 3, 12, 4]


def write_dp_layout(path: Path, lengths: list[int], zarr_format: int) -> dict[str, np.ndarray]:
    """Store written with plain zarr calls in diffusion_policy layout; frame k holds values derived from k."""
    n = sum(lengths)
    k = np.arange(n)
    arrays = {
        "front": (k % 251).astype(np.uint8)[:, None, None, None] * np.ones((1, 4, 5, 3), np.uint8),
        "wrist": ((k * 7) % 251).astype(np.uint8)[:, None, None, None] * np.ones((1, 3, 3, 3), np.uint8),
        "state": np.stack([k, -k, k * 0.5], 1).astype(np.float32),
        "action": np.stack([k + 0.25, k * 2.0], 1).astype(np.float32),
    }
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    data = root.create_group("data")
    for name, a in arrays.items():
        chunks = (1, *a.shape[1:]) if a.ndim == 4 else a.shape
        data.create_array(name, shape=a.shape, chunks=chunks, dtype=a.dtype)[:] = a
    root.create_group("meta").create_array("episode_ends", shape=(len(lengths),), dtype="int64")[:] = (
        np.cumsum(lengths)
    )
    return arrays


def reference_windows(arrays, lengths, episodes, horizon, n_obs, n_act):
    """Independent reference: pad each episode by repeating its edge frames, slide a window over it."""
    pad_before, pad_after = n_obs - 1, n_act - 1
    ends = np.cumsum(lengths)
    out = []
    for e in episodes:
        s, t = ends[e] - lengths[e], ends[e]
        padded = {}
        for name, a in arrays.items():
            ep = a[s:t]
            padded[name] = np.concatenate([ep[:1]] * pad_before + [ep] + [ep[-1:]] * pad_after)
        n_pad = lengths[e] + pad_before + pad_after
        for w in range(n_pad - horizon + 1):
            out.append({name: p[w : w + horizon] for name, p in padded.items()})
    return out


@pytest.mark.parametrize(
    "horizon,n_obs,n_act,zarr_format", [(4, 2, 2, 2), (5, 1, 5, 3), (3, 3, 1, 2), (8, 2, 4, 3), (1, 1, 1, 3)]
)
def test_windows_match_reference(
    tmp_path: Path, zarr_format: int, horizon: int, n_obs: int, n_act: int
) -> None:
    arrays = write_dp_layout(tmp_path / "s.zarr", LENGTHS, zarr_format)
    ds = SequenceDataset(
        tmp_path / "s.zarr", cameras=["front", "wrist"], horizon=horizon, n_obs_steps=n_obs,
        n_action_steps=n_act, val_ratio=0.0,
    )  # fmt: skip
    ref = reference_windows(arrays, LENGTHS, range(len(LENGTHS)), horizon, n_obs, n_act)
    assert len(ds) == len(ref)
    for i, r in enumerate(ref):
        item = ds[i]
        assert item["obs"]["front"].dtype == torch.uint8 and item["obs"]["front"].shape == (n_obs, 4, 5, 3)
        np.testing.assert_array_equal(item["obs"]["front"].numpy(), r["front"][:n_obs])
        np.testing.assert_array_equal(item["obs"]["wrist"].numpy(), r["wrist"][:n_obs])
        np.testing.assert_array_equal(item["obs"]["state"].numpy(), r["state"][:n_obs])
        assert item["action"].dtype == torch.float32 and item["action"].shape == (horizon, 2)
        np.testing.assert_array_equal(item["action"].numpy(), r["action"])
    # phase = where the last observation step lies in its episode: (frame - episode start) / episode length
    ends = np.cumsum(LENGTHS)
    last_obs = np.array([ds.frame_indices(i)[n_obs - 1] for i in range(len(ds))])
    episode = np.searchsorted(ends, last_obs, side="right")
    lengths = np.asarray(LENGTHS)[episode]
    np.testing.assert_allclose(ds.window_phase(), (last_obs - (ends[episode] - lengths)) / lengths)


def test_split_by_whole_episodes(tmp_path: Path) -> None:
    lengths = [6] * 20
    write_dp_layout(tmp_path / "s.zarr", lengths, 3)
    kw = dict(cameras=["front"], horizon=4, n_obs_steps=2, n_action_steps=2, val_ratio=0.2, seed=3)
    tr = SequenceDataset(tmp_path / "s.zarr", **kw)
    va = tr.get_validation_dataset()
    assert len(va.episodes) == 4 and len(tr.episodes) == 16
    assert set(tr.episodes).isdisjoint(va.episodes) and set(tr.episodes) | set(va.episodes) == set(range(20))
    np.testing.assert_array_equal(SequenceDataset(tmp_path / "s.zarr", **kw).episodes, tr.episodes)
    other = SequenceDataset(tmp_path / "s.zarr", **{**kw, "seed": 4})
    assert set(other.val_episodes) != set(va.episodes)
    # every validation window lies inside one validation episode
    ends = np.cumsum(lengths)
    for i in range(len(va)):
        ep = np.searchsorted(ends, va.frame_indices(i), side="right")
        assert len(set(ep)) == 1 and ep[0] in va.episodes
    capped = SequenceDataset(tmp_path / "s.zarr", **kw, max_train_episodes=5)
    assert len(capped.episodes) == 5 and set(capped.episodes) <= set(tr.episodes)
    np.testing.assert_array_equal(capped.val_episodes, va.episodes)


def test_split_edge_cases() -> None:
    tr, va = split_episodes(1, 0.5, 0)
    assert list(tr) == [0] and len(va) == 0
    tr, va = split_episodes(3, 0.9, 0)
    assert len(tr) == 1 and len(va) == 2
    with pytest.raises(ValueError, match="val_ratio"):
        split_episodes(3, 1.0, 0)


def test_store_split_attribute_is_used(tmp_path: Path) -> None:
    write_dp_layout(tmp_path / "s.zarr", [5] * 6, 3)
    zarr.open_group(str(tmp_path / "s.zarr")).attrs["split"] = {"train": [0, 2, 3, 5], "valid": [1, 4]}
    ds = SequenceDataset(tmp_path / "s.zarr", cameras=[], horizon=2, n_obs_steps=1, n_action_steps=2)
    assert list(ds.episodes) == [0, 2, 3, 5] and list(ds.get_validation_dataset().episodes) == [1, 4]
    ds2 = SequenceDataset(tmp_path / "s.zarr", cameras=[], horizon=2, n_obs_steps=1, n_action_steps=2,
                          use_store_split=False, val_ratio=0.0)  # fmt: skip
    assert len(ds2.episodes) == 6


def test_low_dim_arrays_are_training_split_only(tmp_path: Path) -> None:
    arrays = write_dp_layout(tmp_path / "s.zarr", LENGTHS, 3)
    ds = SequenceDataset(tmp_path / "s.zarr", cameras=["front"], horizon=2, n_obs_steps=1, n_action_steps=1,
                         val_ratio=0.3, seed=1)  # fmt: skip
    ends = np.cumsum(LENGTHS)
    idx = np.concatenate([np.arange(ends[e] - LENGTHS[e], ends[e]) for e in ds.train_episodes])
    low = ds.low_dim_arrays()
    np.testing.assert_array_equal(low["action"], arrays["action"][idx])
    np.testing.assert_array_equal(low["state"], arrays["state"][idx])
    assert ds.action_dim == 2 and ds.state_dim == 3


def test_dataloader_with_workers(tmp_path: Path) -> None:
    s = ReplayStore.create(tmp_path / "s.zarr", attrs={"cameras": ["front"]})
    for T in (7, 9, 5):
        s.add_episode({"front": np.random.randint(0, 255, (T, 8, 8, 3), np.uint8),
                       "state": np.random.randn(T, 3).astype(np.float32),
                       "action": np.random.randn(T, 2).astype(np.float32)})  # fmt: skip
    ds = SequenceDataset(tmp_path / "s.zarr", cameras=["front"], horizon=4, n_obs_steps=2, n_action_steps=2,
                         val_ratio=0.0)  # fmt: skip
    batches = list(DataLoader(ds, batch_size=4, num_workers=2, shuffle=False))
    got = torch.cat([b["obs"]["front"] for b in batches])
    want = torch.stack([ds[i]["obs"]["front"] for i in range(len(ds))])
    assert got.shape == (len(ds), 2, 8, 8, 3) and torch.equal(got, want)


def test_bad_arguments(tmp_path: Path) -> None:
    write_dp_layout(tmp_path / "s.zarr", [4, 4], 3)
    with pytest.raises(ValueError, match="no data/depth"):
        SequenceDataset(tmp_path / "s.zarr", cameras=["depth"])
    with pytest.raises(ValueError, match="horizon"):
        SequenceDataset(tmp_path / "s.zarr", cameras=["front"], horizon=2, n_obs_steps=3, n_action_steps=1)
    with pytest.raises(ValueError, match="split"):
        SequenceDataset(tmp_path / "s.zarr", cameras=["front"], split="test")


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    horizon=st.integers(1, 10),
    n_obs=st.integers(1, 4),
    n_act=st.integers(1, 10),
)
def test_window_index_property(lengths: list[int], horizon: int, n_obs: int, n_act: int) -> None:
    """Vectorised index + clip rule == padding each episode by its edge frames and sliding (no store)."""
    if horizon < max(n_obs, n_act):
        return
    frames = np.arange(sum(lengths))
    ep, t0 = window_index(np.array(lengths), horizon, n_obs - 1, n_act - 1)
    starts = np.cumsum(lengths) - lengths
    got = [
        starts[e] + np.clip(np.arange(t, t + horizon), 0, lengths[e] - 1) for e, t in zip(ep, t0, strict=True)
    ]
    want = [
        w["k"] for w in reference_windows({"k": frames}, lengths, range(len(lengths)), horizon, n_obs, n_act)
    ]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


# ------------------------------------------------------- batched reads, in-memory images, FrameReader
SHORT = [1, 2, 5, 9, 3, 12, 4, 20, 6]  # several episodes shorter than the horizons below


@pytest.mark.parametrize(
    "horizon,n_obs,n_act,zarr_format", [(4, 2, 2, 2), (5, 1, 5, 3), (3, 3, 1, 3), (8, 2, 4, 2), (16, 2, 8, 3)]
)
@pytest.mark.parametrize("in_memory", [False, True])
def test_batched_and_in_memory_match_reference(
    tmp_path: Path, horizon: int, n_obs: int, n_act: int, zarr_format: int, in_memory: bool
) -> None:
    arrays = write_dp_layout(tmp_path / "s.zarr", SHORT, zarr_format)
    ds = SequenceDataset(tmp_path / "s.zarr", cameras=["front", "wrist"], horizon=horizon, n_obs_steps=n_obs,
                         n_action_steps=n_act, val_ratio=0.0, images_in_memory=in_memory)  # fmt: skip
    ref = reference_windows(arrays, SHORT, range(len(SHORT)), horizon, n_obs, n_act)
    assert len(ds) == len(ref) > 0
    order = np.random.default_rng(horizon).permutation(len(ds))
    order = np.concatenate([order, order[:3], [-1]])  # repeated windows and a negative index in one batch
    batch = ds.get_batch(order)
    items = ds.__getitems__(order.tolist())
    assert batch["obs"]["front"].shape == (len(order), n_obs, 4, 5, 3)
    assert batch["obs"]["front"].dtype == torch.uint8
    for j, i in enumerate(order):
        r, single = ref[i], ds[int(i)]
        for k in ("front", "wrist", "state"):
            np.testing.assert_array_equal(batch["obs"][k][j].numpy(), r[k][:n_obs])
            np.testing.assert_array_equal(items[j]["obs"][k].numpy(), r[k][:n_obs])
            np.testing.assert_array_equal(single["obs"][k].numpy(), r[k][:n_obs])
        for got in (batch["action"][j], items[j]["action"], single["action"]):
            np.testing.assert_array_equal(got.numpy(), r["action"])
    with pytest.raises(IndexError, match="out of range"):
        ds.get_batch([0, len(ds)])


def test_in_memory_and_disk_give_identical_items(tmp_path: Path) -> None:
    """Real ReplayStore (zarr 3, checksummed, 3 frames per image chunk): every item equal in both modes."""
    s = ReplayStore.create(tmp_path / "s.zarr", attrs={"cameras": ["front"]}, image_chunk_frames=3)
    rng = np.random.default_rng(0)
    for T in (7, 2, 11):
        s.add_episode({"front": rng.integers(0, 255, (T, 6, 6, 3), dtype=np.uint8),
                       "state": rng.standard_normal((T, 3)).astype(np.float32),
                       "action": rng.standard_normal((T, 2)).astype(np.float32)})  # fmt: skip
    kw = dict(cameras=["front"], horizon=4, n_obs_steps=3, n_action_steps=2, val_ratio=0.0)
    disk, mem = SequenceDataset(s.path, **kw), SequenceDataset(s.path, **kw, images_in_memory=True)
    assert disk.reader("front").direct and len(disk) == len(mem)
    front = np.asarray(s["front"][:])
    for i in range(len(disk)):
        a, b = disk[i], mem[i]
        np.testing.assert_array_equal(a["obs"]["front"].numpy(), front[disk.frame_indices(i)[:3]])
        assert all(torch.equal(a["obs"][k], b["obs"][k]) for k in a["obs"])
        assert torch.equal(a["action"], b["action"])


@pytest.mark.parametrize("in_memory", [False, True])
def test_dataloader_workers_batched_equal_workers0(tmp_path: Path, in_memory: bool) -> None:
    write_dp_layout(tmp_path / "s.zarr", SHORT, 3)
    ds = SequenceDataset(tmp_path / "s.zarr", cameras=["front", "wrist"], horizon=5, n_obs_steps=2,
                         n_action_steps=3, val_ratio=0.0, images_in_memory=in_memory)  # fmt: skip
    order = np.random.default_rng(1).permutation(len(ds)).tolist()
    runs = [list(DataLoader(ds, batch_size=7, sampler=order, num_workers=w)) for w in (0, 2)]
    assert len(runs[0]) == len(runs[1]) == -(-len(ds) // 7)
    for b0, b2 in zip(*runs, strict=True):
        for k in ("front", "wrist", "state"):
            assert torch.equal(b0["obs"][k], b2["obs"][k])
        assert torch.equal(b0["action"], b2["action"])
    want = ds.get_batch(order[:7])
    assert torch.equal(runs[1][0]["obs"]["front"], want["obs"]["front"])


def _codec_arrays(root: zarr.Group, a: np.ndarray) -> dict[str, tuple[zarr.Array, bool]]:
    """The same frames under several chunkings/codecs; value: (array, whether the direct path applies)."""
    fmt = root.metadata.zarr_format
    blosc = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle")
    if fmt == 2:
        specs = {"blosc1": ((1,), numcodecs.Blosc(cname="lz4"), None),
                 "zstd3": ((3,), numcodecs.Zstd(), None), "raw2": ((2,), None, None),
                 "gzip1": ((1,), numcodecs.GZip(), None),
                 "bz2": ((1,), numcodecs.BZ2(), None)}  # fmt: skip  (not decoded directly: through zarr)
    else:
        specs = {"blosc1": ((1,), (blosc, zarr.codecs.Crc32cCodec()), None),
                 "zstd3": ((3,), zarr.codecs.ZstdCodec(), None), "raw2": ((2,), None, None),
                 "gzip1": ((1,), zarr.codecs.GzipCodec(), None), "shard": ((1,), blosc, (4,))}  # fmt: skip
    out = {}
    for name, (c0, comp, shard) in specs.items():
        kw: dict = {"shards": (*shard, *a.shape[1:])} if shard else {}
        arr = root.create_array(name, shape=a.shape, chunks=(*c0, *a.shape[1:]), dtype=a.dtype,
                                compressors=comp, **kw)  # fmt: skip
        arr[:] = a
        out[name] = (arr, shard is None and name != "bz2")
    split = root.create_array("split_w", shape=a.shape, chunks=(1, 2, *a.shape[2:]), dtype=a.dtype)
    split[:] = a
    out["split_w"] = (split, False)  # chunks that split a frame: through zarr
    return out


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_frame_reader_matches_zarr(tmp_path: Path, zarr_format: int) -> None:
    a = np.random.default_rng(0).integers(0, 255, (11, 4, 5, 3), dtype=np.uint8)
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=zarr_format)
    frames = np.array([10, 0, 3, 3, 7, 4, 10, 1, 2, 5])
    for name, (arr, direct) in _codec_arrays(root, a).items():
        reader = FrameReader(arr, tmp_path / "g.zarr" / name, name, checked=False)
        assert reader.direct == direct, name
        np.testing.assert_array_equal(reader.read(frames), a[frames], err_msg=name)
        np.testing.assert_array_equal(reader.read(np.arange(11)), a, err_msg=name)


def test_frame_reader_missing_and_corrupt_chunks(tmp_path: Path) -> None:
    s = ReplayStore.create(tmp_path / "s.zarr", attrs={"cameras": ["front"]})
    s.add_episode({"front": np.full((4, 3, 3, 3), 9, np.uint8), "action": np.zeros((4, 2), np.float32)})
    ds = SequenceDataset(s.path, cameras=["front"], state_key=None, horizon=2, n_obs_steps=1,
                         n_action_steps=2, val_ratio=0.0)  # fmt: skip
    reader = ds.reader("front")
    assert reader.direct and reader.checked
    chunk = tmp_path / "s.zarr" / "data" / "front" / "c" / "2" / "0" / "0" / "0"
    good = chunk.read_bytes()
    chunk.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(StoreIntegrityError, match="chunk 2 of array 'data/front'.*crc32c"):
        reader.read(np.array([2]))
    chunk.unlink()
    with pytest.raises(StoreIntegrityError, match="chunk 2 of array 'data/front' is missing"):
        ds.get_batch([1, 2])
    # an unchecked (zarr 2) store reads a missing chunk as the fill value, as zarr does
    write_dp_layout(tmp_path / "p.zarr", [4], 2)
    (tmp_path / "p.zarr" / "data" / "front" / "1.0.0.0").unlink()
    plain = SequenceDataset(tmp_path / "p.zarr", cameras=["front"], horizon=2, n_obs_steps=1,
                            n_action_steps=2, val_ratio=0.0)  # fmt: skip
    assert plain.reader("front").direct and not plain.reader("front").checked
    np.testing.assert_array_equal(plain[1]["obs"]["front"].numpy(), np.zeros((1, 4, 5, 3), np.uint8))
