"""ReplayStore: round trip, diffusion_policy/zarr-2 compatibility, crash safety, validation errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from s2_policy.data.store import ReplayStore


def make_episode(i: int, T: int, size: int = 8) -> dict[str, np.ndarray]:
    """Episode whose every value encodes its index, so torn or mixed episodes are detectable."""
    return {
        "front": np.full((T, size, size, 3), i % 256, dtype=np.uint8),
        "state": np.full((T, 3), i, dtype=np.float32),
        "action": np.full((T, 2), i, dtype=np.float32) + np.arange(T, dtype=np.float32)[:, None],
    }


def check_episodes_intact(store: ReplayStore) -> None:
    for i in range(store.n_episodes):
        ep = store.get_episode(i)
        T = len(ep["state"])
        np.testing.assert_array_equal(ep["front"], i % 256)
        np.testing.assert_array_equal(ep["state"], i)
        np.testing.assert_array_equal(ep["action"][:, 0], i + np.arange(T))


def test_round_trip(tmp_path: Path) -> None:
    attrs = {
        "env_id": "s2_policy/PickCube-v0",
        "cameras": ["front"],
        "control_hz": 10,
        "action_space": [-1, 1],
    }
    store = ReplayStore.create(tmp_path / "s.zarr", attrs=attrs)
    lengths = [5, 1, 9]
    for i, T in enumerate(lengths):
        assert store.add_episode(make_episode(i, T)) == i
    r = ReplayStore.open(tmp_path / "s.zarr")
    assert r.n_episodes == 3 and r.n_frames == 15
    np.testing.assert_array_equal(r.episode_lengths, lengths)
    np.testing.assert_array_equal(r.episode_ends, [5, 6, 15])
    np.testing.assert_array_equal(r.episode_starts, [0, 5, 6])
    assert r.keys() == ["action", "front", "state"]
    assert r.attrs["env_id"] == attrs["env_id"] and r.attrs["writer"] == "s2_policy.data.store"
    assert r.image_keys() == ["front"]
    assert r["front"].dtype == np.uint8 and r["front"].chunks[0] == 1  # images: one frame per chunk
    assert r["state"].chunks[0] >= 1000  # low-dim: large chunks
    assert r["front"].compressors  # compressed
    check_episodes_intact(r)
    assert set(r.get_episode(-1, keys=["state"])) == {"state"}
    with pytest.raises(IndexError):
        r.episode_slice(3)
    with pytest.raises(ValueError, match="read-only"):
        r.add_episode(make_episode(3, 2))
    with pytest.raises(ValueError, match="already exists"):
        ReplayStore.create(tmp_path / "s.zarr")
    again = ReplayStore.create(tmp_path / "s.zarr", overwrite=True)
    assert again.n_episodes == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_float64_is_stored_as_float32_and_append_reopens(tmp_path: Path) -> None:
    store = ReplayStore.create(tmp_path / "s.zarr")
    store.add_episode({"state": np.zeros((3, 2)), "action": np.ones((3, 1))})
    a = ReplayStore.open(tmp_path / "s.zarr", mode="a")
    a.add_episode({"state": np.zeros((2, 2)), "action": np.ones((2, 1))})
    r = ReplayStore.open(tmp_path / "s.zarr")
    assert r["state"].dtype == np.float32 and r.n_episodes == 2


def write_dp_store_v2(path: Path, lengths: list[int]) -> None:
    """A store written the way diffusion_policy's ReplayBuffer writes it: zarr format 2, plain zarr calls."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    n = sum(lengths)
    data = root.create_group("data")
    data.create_array("img", shape=(n, 6, 6, 3), chunks=(1, 6, 6, 3), dtype="uint8")[:] = np.arange(
        n, dtype=np.uint8
    )[:, None, None, None] * np.ones((1, 6, 6, 3), np.uint8)
    data.create_array("state", shape=(n, 2), chunks=(n, 2), dtype="float32")[:] = np.arange(2 * n).reshape(
        n, 2
    )
    data.create_array("action", shape=(n, 2), chunks=(n, 2), dtype="float32")[:] = -np.arange(2 * n).reshape(
        n, 2
    )
    ends = root.create_group("meta").create_array("episode_ends", shape=(len(lengths),), dtype="int64")
    ends[:] = np.cumsum(lengths)


def test_opens_and_appends_zarr2_diffusion_policy_store(tmp_path: Path) -> None:
    p = tmp_path / "dp.zarr"
    write_dp_store_v2(p, [4, 3])
    r = ReplayStore.open(p)
    assert r.root.metadata.zarr_format == 2
    assert r.n_episodes == 2 and r.image_keys() == ["img"]
    np.testing.assert_array_equal(r.get_episode(1)["img"][:, 0, 0, 0], [4, 5, 6])
    a = ReplayStore.open(p, mode="a")
    a.add_episode(
        {"img": np.zeros((2, 6, 6, 3), np.uint8), "state": np.ones((2, 2)), "action": np.ones((2, 2))}
    )
    r = ReplayStore.open(p)
    assert r.root.metadata.zarr_format == 2 and r.n_frames == 9
    np.testing.assert_array_equal(r.get_episode(2)["state"], 1)


def test_create_zarr2_format(tmp_path: Path) -> None:
    s = ReplayStore.create(tmp_path / "v2.zarr", zarr_format=2, image_codec="lz4")
    s.add_episode(make_episode(0, 3))
    r = ReplayStore.open(tmp_path / "v2.zarr")
    assert r.root.metadata.zarr_format == 2
    check_episodes_intact(r)


def test_partial_episode_ignored_and_overwritten(tmp_path: Path) -> None:
    p = tmp_path / "s.zarr"
    s = ReplayStore.create(p)
    s.add_episode(make_episode(0, 4))
    # what a writer killed mid-episode leaves: some arrays grown and written, episode_ends untouched
    s["front"].resize((10, 8, 8, 3))
    s["front"][4:10] = 77
    s["state"].resize((7, 3))
    r = ReplayStore.open(p)
    assert r.n_episodes == 1 and r.n_frames == 4
    leftover = p / "data" / "front" / "c" / "5" / "0" / "0" / "0.0123abcd.partial"  # a killed file write
    leftover.write_bytes(b"torn")
    a = ReplayStore.open(p, mode="a")
    assert not leftover.exists()
    a.add_episode(make_episode(1, 3))
    r = ReplayStore.open(p)
    assert r.n_frames == 7 and all(r[k].shape[0] == 7 for k in ("front", "state", "action"))
    check_episodes_intact(r)


def test_torn_episode_ends_resize_is_uncommitted(tmp_path: Path) -> None:
    p = tmp_path / "s.zarr"
    s = ReplayStore.create(p)
    s.add_episode(make_episode(0, 4))
    s.meta["episode_ends"].resize((2,))  # killed between resizing episode_ends and writing its value
    r = ReplayStore.open(p)
    assert r.n_episodes == 1
    ReplayStore.open(p, mode="a").add_episode(make_episode(1, 2))
    r = ReplayStore.open(p)
    np.testing.assert_array_equal(r.episode_ends, [4, 6])
    check_episodes_intact(r)


def test_first_episode_torn_leaves_empty_store(tmp_path: Path) -> None:
    p = tmp_path / "s.zarr"
    s = ReplayStore.create(p)
    s.data.create_array("stale", shape=(3, 2), dtype="float32")  # a killed first write of other keys
    s.meta["episode_ends"].resize((1,))
    r = ReplayStore.open(p)
    assert r.n_episodes == 0
    a = ReplayStore.open(p, mode="a")
    a.add_episode(make_episode(0, 3))
    assert ReplayStore.open(p).keys() == ["action", "front", "state"]


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_data_store import make_episode
    from s2_policy.data.store import ReplayStore
    store = ReplayStore.open_or_create({path!r})
    mode = {mode!r}
    i = store.n_episodes
    if mode == "stall":  # stall after the first data array of a new episode is written
        for j in range(2):
            store.add_episode(make_episode(j, 5, size=32))
        import zarr
        orig = zarr.Array.__setitem__
        def slow(self, key, value):
            orig(self, key, value)
            print("mid", flush=True)
            time.sleep(60)
        zarr.Array.__setitem__ = slow
        store.add_episode(make_episode(2, 5, size=32))
    else:  # append forever; the parent kills at a random moment
        print("start", flush=True)
        while True:
            store.add_episode(make_episode(i, 3 + i % 5, size=32))
            i += 1
    """
)


def run_writer(path: Path, mode: str, wait_for: str, delay: float) -> None:
    code = WRITER.format(tests=str(Path(__file__).parent), path=str(path), mode=mode)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == wait_for, f"writer said {line!r}"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_mid_episode_leaves_complete_episodes(tmp_path: Path) -> None:
    p = tmp_path / "s.zarr"
    run_writer(p, "stall", "mid", 0.0)
    r = ReplayStore.open(p)
    assert r.n_episodes == 2
    check_episodes_intact(r)
    a = ReplayStore.open(p, mode="a")
    a.add_episode(make_episode(2, 4, size=32))
    r = ReplayStore.open(p)
    assert r.n_episodes == 3 and r.n_frames == 14
    check_episodes_intact(r)

    # random kill points while appending continuously, resuming each time
    for delay in (0.4,):
        run_writer(p, "loop", "start", delay)
        r = ReplayStore.open(p)
        check_episodes_intact(r)
    assert r.n_episodes > 3


# ---------------------------------------------------------------- validation errors
@pytest.fixture
def good(tmp_path: Path) -> Path:
    p = tmp_path / "g.zarr"
    s = ReplayStore.create(p, attrs={"cameras": ["front"]})
    s.add_episode(make_episode(0, 4))
    s.add_episode(make_episode(1, 3))
    return p


def test_error_unequal_lengths_in_episode(good: Path) -> None:
    ep = make_episode(2, 4)
    ep["state"] = ep["state"][:3]
    with pytest.raises(ValueError, match="unequal lengths"):
        ReplayStore.open(good, mode="a").add_episode(ep)


def test_error_key_shorter_than_episode_ends(good: Path) -> None:
    zarr.open_group(str(good))["data/action"].resize((5, 2))
    with pytest.raises(ValueError, match=r"data/action has 5 frames.*unequal"):
        ReplayStore.open(good)


def test_error_non_increasing_episode_ends(good: Path) -> None:
    zarr.open_group(str(good))["meta/episode_ends"][:] = [4, 4]
    with pytest.raises(ValueError, match="strictly increasing"):
        ReplayStore.open(good)


def test_error_episode_ends_out_of_range(good: Path) -> None:
    zarr.open_group(str(good))["meta/episode_ends"][:] = [4, 30]
    with pytest.raises(ValueError, match="episode_ends\\[-1\\] = 30"):
        ReplayStore.open(good)


def test_error_missing_data_or_meta(tmp_path: Path) -> None:
    zarr.open_group(str(tmp_path / "a.zarr"), mode="w").create_group("data")
    with pytest.raises(ValueError, match="missing group 'meta/'"):
        ReplayStore.open(tmp_path / "a.zarr")
    zarr.open_group(str(tmp_path / "b.zarr"), mode="w").create_group("meta")
    with pytest.raises(ValueError, match="missing group 'data/'"):
        ReplayStore.open(tmp_path / "b.zarr")
    root = zarr.open_group(str(tmp_path / "c.zarr"), mode="w")
    root.create_group("data")
    root.create_group("meta")
    with pytest.raises(ValueError, match="meta/episode_ends"):
        ReplayStore.open(tmp_path / "c.zarr")
    with pytest.raises(FileNotFoundError):
        ReplayStore.open(tmp_path / "nothing.zarr")


def test_error_image_dtype_and_shape(good: Path) -> None:
    a = ReplayStore.open(good, mode="a")
    ep = make_episode(2, 2)
    ep["front"] = ep["front"].astype(np.float32) / 255
    with pytest.raises(ValueError, match="must be uint8"):
        a.add_episode(ep)
    ep["front"] = np.zeros((2, 3, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="channel-first"):
        a.add_episode(ep)
    ep["front"] = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="frames have shape"):
        a.add_episode(ep)
    s = ReplayStore.create(good.parent / "f.zarr")
    with pytest.raises(ValueError, match="must be uint8"):
        s.add_episode({"cam": np.zeros((2, 8, 8, 3), np.float32), "action": np.zeros((2, 1), np.float32)})


def test_error_image_dtype_on_disk(tmp_path: Path) -> None:
    p = tmp_path / "dp.zarr"
    write_dp_store_v2(p, [2])
    zarr.open_group(str(p))["data"].create_array("img", shape=(2, 6, 6, 3), dtype="float32", overwrite=True)
    with pytest.raises(ValueError, match="'img' must be uint8"):
        ReplayStore.open(p)


@pytest.mark.parametrize("key", ["action", "state"])
def test_error_nan_inf(good: Path, key: str) -> None:
    ep = make_episode(2, 3)
    ep[key][1, 0] = np.nan
    with pytest.raises(ValueError, match=f"'{key}' holds NaN/inf"):
        ReplayStore.open(good, mode="a").add_episode(ep)
    zarr.open_group(str(good))[f"data/{key}"][2, 0] = np.inf
    with pytest.raises(ValueError, match=f"'{key}' holds NaN/inf \\(first at row 2\\)"):
        ReplayStore.open(good)


def test_error_key_set_changes(good: Path) -> None:
    ep = make_episode(2, 3)
    ep["extra"] = np.zeros((3, 1), np.float32)
    with pytest.raises(ValueError, match="differ from the store's keys"):
        ReplayStore.open(good, mode="a").add_episode(ep)
    with pytest.raises(ValueError, match="0 frames"):
        ReplayStore.open(good, mode="a").add_episode({k: v[:0] for k, v in make_episode(2, 3).items()})


def test_error_attrs_not_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'action_space' is not JSON-serialisable"):
        ReplayStore.create(tmp_path / "s.zarr", attrs={"action_space": np.zeros(3)})
    s = ReplayStore.create(tmp_path / "t.zarr", attrs={"action_space": np.zeros(3).tolist()})
    with pytest.raises(ValueError, match="'control_hz'"):
        s.update_attrs({"control_hz": float("nan")})
