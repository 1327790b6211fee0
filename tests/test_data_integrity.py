"""Stores cannot silently lie: serialised writers, per-chunk checksums, missing chunks, --verify."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import filelock
import numpy as np
import pytest
import torch
import zarr
from test_data_robomimic import make_hdf5

from s2_policy.data.feature_cache import ensure_feature_cache
from s2_policy.data.integrity import StoreIntegrityError
from s2_policy.data.robomimic_hdf5 import convert_robomimic
from s2_policy.data.store import LOCK_FILE, ReplayStore, StoreBusyError
from s2_policy.data.summary import main as summary_main
from s2_policy.data.summary import summarize, verify

REPO = Path(__file__).resolve().parents[1]


def episode(code: int, T: int, size: int = 16) -> dict[str, np.ndarray]:
    """Every value of the episode encodes ``code``: a mixed or torn episode is detectable."""
    return {
        "front": np.full((T, size, size, 3), code % 256, dtype=np.uint8),
        "state": np.full((T, 3), code, dtype=np.float32),
        "action": np.full((T, 2), code, dtype=np.float32) + np.arange(T, dtype=np.float32)[:, None],
    }


def _store(path: Path, n: int = 3, T: int = 4) -> ReplayStore:
    s = ReplayStore.create(path, attrs={"cameras": ["front"]}, lowdim_chunk_frames=4)
    for i in range(n):
        s.add_episode(episode(i + 1, T))
    return s


# ------------------------------------------------------------------ concurrent writers
WRITER = textwrap.dedent(
    """
    import time
    import numpy as np
    from s2_policy.data.store import ReplayStore

    def episode(code, T, size):  # the same as the test module's (importing it would import torch)
        return {{
            "front": np.full((T, size, size, 3), code % 256, dtype=np.uint8),
            "state": np.full((T, 3), code, dtype=np.float32),
            "action": np.full((T, 2), code, dtype=np.float32) + np.arange(T, dtype=np.float32)[:, None],
        }}

    writer, n, pause, start_at = {writer}, {n}, {pause}, {start_at}
    while time.time() < start_at:
        time.sleep(0.001)
    store = ReplayStore.open_or_create({path!r}, attrs={{"cameras": ["front"]}}, lowdim_chunk_frames=8)
    rng = np.random.default_rng(writer)
    for seq in range(n):
        code = 100 * writer + seq
        idx = store.add_episode(episode(code, int(rng.integers(1, 7)), size=16))
        print("COMMIT", code, idx, flush=True)
        time.sleep(pause * rng.random())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(3))
def test_two_writer_processes_never_mix_or_lose_episodes(tmp_path: Path, round_: int) -> None:
    """Two real processes append to one store at once (varied timing); every reported commit is stored,
    whole, exactly once, and no episode mixes the frames of both writers."""
    path = tmp_path / "shared.zarr"
    if round_ == 2:  # the store exists already (the other rounds race to create it)
        _store(path, n=1)
    pauses = [(0.0, 0.0), (0.02, 0.0), (0.0, 0.05)][round_]
    start_at = time.time() + 1.5  # both start together, after their imports
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER.format(path=str(path), writer=w, n=8, pause=pauses[w - 1],
                                                 start_at=start_at)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for w in (1, 2)
    ]
    commits = {}
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        for line in out.splitlines():
            _, code, idx = line.split()
            commits[int(code)] = int(idx)
    assert len(commits) == 16
    r = ReplayStore.open(path)
    base = 1 if round_ == 2 else 0
    assert r.n_episodes == 16 + base
    stored = {}
    for i in range(r.n_episodes):
        ep = r.get_episode(i)
        code = int(ep["state"][0, 0])
        np.testing.assert_array_equal(ep["state"], code)  # not mixed with another episode
        np.testing.assert_array_equal(ep["front"], code % 256)
        np.testing.assert_array_equal(ep["action"][:, 0], code + np.arange(len(ep["action"])))
        stored[code] = i
    assert {c: i for c, i in stored.items() if c >= 100} == commits  # each at the index its writer was told
    assert sorted(commits) == [100 + s for s in range(8)] + [200 + s for s in range(8)]


def test_a_second_writer_waits_a_bounded_time_then_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _store(path, n=1)
    store = ReplayStore.open(path, mode="a", lock_timeout_s=0.3)
    holder = filelock.FileLock(path / LOCK_FILE)  # another writer, mid-append
    with holder:
        t0 = time.monotonic()
        with pytest.raises(StoreBusyError, match=r"s.zarr is being written by another process .*timeout_s"):
            store.add_episode(episode(7, 2))
        assert 0.25 < time.monotonic() - t0 < 5
    store.add_episode(episode(7, 2))  # free again
    assert ReplayStore.open(path).n_episodes == 2


def test_a_writer_sees_episodes_another_writer_committed(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _store(path, n=1)
    a, b = ReplayStore.open(path, mode="a"), ReplayStore.open(path, mode="a")
    assert a.add_episode(episode(10, 3)) == 1
    assert b.add_episode(episode(20, 5)) == 2  # b's view was stale: it appends after a's episode
    r = ReplayStore.open(path)
    assert [int(r.get_episode(i)["state"][0, 0]) for i in range(3)] == [1, 10, 20]
    np.testing.assert_array_equal(r.episode_ends, [4, 7, 12])


# ------------------------------------------------------------------ checksums and missing chunks
def test_flipped_bytes_in_a_chunk_are_an_error_naming_array_and_chunk(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _store(path)
    chunk = path / "data" / "front" / "c" / "5" / "0" / "0" / "0"  # frame 5, in episode 1
    raw = bytearray(chunk.read_bytes())
    for i in range(10, 50):
        raw[i % (len(raw) - 4)] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    r = ReplayStore.open(path)
    np.testing.assert_array_equal(r.get_episode(0)["front"], 1)  # other chunks still read fine
    with pytest.raises(StoreIntegrityError, match=r"chunk \(5, 0, 0, 0\) of array 'data/front' .*crc32c"):
        r.get_episode(1)


def test_truncated_chunk_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _store(path)
    chunk = path / "data" / "action" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-7])
    with pytest.raises(StoreIntegrityError, match=r"chunk \(1, 0\) of array 'data/action'"):
        ReplayStore.open(path).get_episode(1)


@pytest.mark.parametrize("key", ["front", "action"])
def test_deleted_chunk_is_an_error_not_the_fill_value(tmp_path: Path, key: str) -> None:
    path = tmp_path / "s.zarr"
    _store(path)
    rel = {"front": "c/9/0/0/0", "action": "c/2/0"}[key]
    (path / "data" / key / rel).unlink()
    with pytest.raises(StoreIntegrityError, match=rf"array 'data/{key}' is missing"):
        ReplayStore.open(path).get_episode(2)


def test_all_zero_chunks_are_stored(tmp_path: Path) -> None:
    """A black frame / zero actions are real data: stored as chunks, so they do not read as 'missing'."""
    path = tmp_path / "s.zarr"
    s = ReplayStore.create(path, attrs={"cameras": ["front"]}, lowdim_chunk_frames=2)
    s.add_episode(episode(0, 4))
    ep = ReplayStore.open(path).get_episode(0)
    np.testing.assert_array_equal(ep["front"], 0)
    assert (path / "data" / "front" / "c" / "3" / "0" / "0" / "0").is_file()


def test_verify_reports_every_bad_chunk_and_exits_nonzero(tmp_path: Path, capsys) -> None:
    path = tmp_path / "s.zarr"
    _store(path)
    summary_main([str(path), "--verify"])
    out = capsys.readouterr().out
    assert "crc32c per chunk" in out and "0 bad" in out
    (path / "data" / "front" / "c" / "2" / "0" / "0" / "0").unlink()
    chunk = path / "data" / "state" / "c" / "2" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-3] + b"xyz")
    res = verify(path)
    assert res["checksums"] and res["chunks"] == 12 + 3 + 3
    bad = sorted((p["array"], p["chunk"][0]) for p in res["problems"])
    assert bad == [("data/front", 2), ("data/state", 2)]
    with pytest.raises(SystemExit) as e:
        summary_main([str(path), "--verify"])
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "BAD  data/front chunk (2,)" in out and "is missing" in out and "2 bad" in out


def test_old_stores_without_checksums_still_open(tmp_path: Path) -> None:
    """A store written before checksums (zarr 3, no crc32c, no attribute) opens, reads and says so."""
    path = tmp_path / "old.zarr"
    root = zarr.open_group(zarr.storage.LocalStore(path), mode="w")
    root.create_group("data").create_array("state", data=np.arange(6, dtype=np.float32).reshape(3, 2))
    root.create_group("meta").create_array("episode_ends", data=np.array([1, 3], dtype=np.int64))
    r = ReplayStore.open(path)
    assert not r.checked and r.n_episodes == 2
    np.testing.assert_array_equal(r.get_episode(1)["state"], [[2, 3], [4, 5]])
    s = summarize(path)
    assert s["checksums"] is None and s["keys"]["state"]["checksum"] is False
    assert verify(path) == {"chunks": 1, "problems": [], "checksums": False}
    a = ReplayStore.open(path, mode="a")
    a.add_episode({"state": np.ones((2, 2), np.float32)})  # appends keep its format
    assert ReplayStore.open(path).n_frames == 5


def test_corrupt_array_metadata_names_the_array(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _store(path)
    (path / "data" / "state" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "arr')
    with pytest.raises(ValueError, match=r"metadata of array data/state is corrupt"):
        ReplayStore.open(path)


def test_float_images_get_a_how_to_fix_message(tmp_path: Path) -> None:
    s = ReplayStore.create(tmp_path / "s.zarr", attrs={"cameras": ["front"]})
    ep = episode(1, 2)
    with pytest.raises(ValueError, match=r"in 0\.\.255 .*astype\(np.uint8\)"):
        s.add_episode({**ep, "front": ep["front"].astype(np.float32) * 200})
    with pytest.raises(ValueError, match=r"in \[0, 1\] with \(x \* 255\)"):
        s.add_episode({**ep, "front": ep["front"].astype(np.float32) / 255})
    bad = ep["front"].astype(np.float32) / 255
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN/inf"):
        s.add_episode({**ep, "front": bad})
    assert ReplayStore.open(tmp_path / "s.zarr").n_episodes == 0


# ------------------------------------------------------------------ feature cache
class _MeanEncoder(torch.nn.Module):
    out_dim = 3

    def encode_cameras(self, imgs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([x.float().mean(dim=(1, 2)) for x in imgs], dim=1)


def test_feature_cache_chunks_are_checksummed(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _store(path)
    cache = ensure_feature_cache(path, _MeanEncoder(), ["front"], batch_size=4, progress=False,
                                 fingerprint="mean")
    np.testing.assert_allclose(cache.get("front")[:4], 1.0)
    chunk = cache.path / "front" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[3] ^= 0x55
    chunk.write_bytes(bytes(raw))
    again = ensure_feature_cache(path, _MeanEncoder(), ["front"], batch_size=4, progress=False,
                                 fingerprint="mean")
    with pytest.raises(StoreIntegrityError, match=r"chunk \(1, 0\) of array 'front'"):
        again.get("front")


def test_feature_cache_waits_for_another_builder_then_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _store(path)
    cache_dir = tmp_path / "cache"
    key = ensure_feature_cache(path, _MeanEncoder(), ["front"], batch_size=4, progress=False,
                               fingerprint="mean", cache_dir=cache_dir).key
    shutil.rmtree(cache_dir / f"{key}.zarr")
    kw = {"batch_size": 4, "progress": False, "fingerprint": "mean", "cache_dir": cache_dir}
    with filelock.FileLock(cache_dir / f"{key}.lock"):  # another process is building it
        with pytest.raises(TimeoutError, match="building the feature cache"):
            ensure_feature_cache(path, _MeanEncoder(), ["front"], lock_timeout_s=0.2, **kw)
        assert not (cache_dir / f"{key}.zarr").exists()
    rebuilt = ensure_feature_cache(path, _MeanEncoder(), ["front"], lock_timeout_s=0.2, **kw)
    np.testing.assert_allclose(rebuilt.get("front")[-4:], 3.0)


# ------------------------------------------------------------------ HDF5 inputs
def test_truncated_or_foreign_hdf5_is_named(tmp_path: Path) -> None:
    good = tmp_path / "demo.hdf5"
    make_hdf5(good)
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut.hdf5 cannot be opened as HDF5 .*truncated"):
        convert_robomimic(cut, tmp_path / "out.zarr", progress=False)
    text = tmp_path / "notes.hdf5"
    text.write_text("not hdf5\n" * 100)
    with pytest.raises(ValueError, match=r"notes.hdf5 cannot be opened as HDF5"):
        convert_robomimic(text, tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists()
