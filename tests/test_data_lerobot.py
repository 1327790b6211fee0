"""LeRobotDataset v3.0 import/export: a fixture written by LeRobot itself, round trips, resume, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the 'lerobot' extra (pyarrow, av) is not installed")
pytest.importorskip("av", reason="the 'lerobot' extra (pyarrow, av) is not installed")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import s2_policy.data.lerobot.video as lr_video  # noqa: E402
from s2_policy.data.lerobot import ExportOptions, export_lerobot, import_lerobot  # noqa: E402
from s2_policy.data.lerobot.__main__ import main  # noqa: E402
from s2_policy.data.sequence import SequenceDataset  # noqa: E402
from s2_policy.data.store import ReplayStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_v3"
FIXTURE_V21 = Path(__file__).parent / "fixtures" / "lerobot_v21"  # the same content, written by LeRobot 0.3.3
# What tests/fixtures/make_lerobot_fixture.py wrote (recomputed here, independently of the files).
LENGTHS = [12, 7, 15]
TASKS = ["pick the red cube", "push the green cube"]
EPISODE_TASK = [0, 1, 0]


def fixture_state(ep: int, t: int) -> np.ndarray:
    return np.array([np.sin(ep + 0.1 * t), np.cos(0.3 * t), ep / 3.0, t / 7.0], np.float32)


def fixture_action(ep: int, t: int) -> np.ndarray:
    return np.array([0.5 * t - ep, np.tanh(t - 5.0), 1.0 / (1 + ep + t)], np.float32)


def fixture_front(ep: int, t: int) -> np.ndarray:
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = (20 + 12 * t, 40 + 70 * ep, 200)
    img[:, 32:] = (235 - 12 * t, 200 - 70 * ep, 30)
    return img


def fixture_wrist(ep: int, t: int) -> np.ndarray:
    return np.full((32, 32, 3), (200 - 10 * t, 30 + 80 * ep, 120), np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


@pytest.mark.parametrize("src", [FIXTURE, FIXTURE_V21], ids=["v3.0", "v2.1"])
def test_import_fixture_written_by_lerobot(tmp_path: Path, src: Path) -> None:
    store = import_lerobot(src, tmp_path / "fx.zarr", progress=False)
    assert store.n_episodes == 3 and list(store.episode_lengths) == LENGTHS
    assert store.keys() == ["action", "front", "state", "task_index", "wrist"]
    a = store.attrs
    assert a["fps"] == 10 and a["control_hz"] == 10 and a["robot_type"] == "fixture_arm"
    assert a["cameras"] == ["front", "wrist"] and a["tasks"] == TASKS
    assert a["lerobot"]["keys"]["state"] == "observation.state"
    assert a["lerobot"]["features"]["observation.state"]["names"] == ["a", "b", "c", "d"]
    assert a["lerobot"]["codebase_version"] == ("v2.1" if src == FIXTURE_V21 else "v3.0")
    assert a["episode_tasks"] == [[TASKS[i]] for i in EPISODE_TASK]
    assert store["front"].dtype == np.uint8 and store["front"].shape[1:] == (48, 64, 3)
    for ep, n in enumerate(LENGTHS):
        got = store.get_episode(ep)
        np.testing.assert_array_equal(got["state"], np.stack([fixture_state(ep, t) for t in range(n)]))
        np.testing.assert_array_equal(got["action"], np.stack([fixture_action(ep, t) for t in range(n)]))
        np.testing.assert_array_equal(got["task_index"], np.full(n, EPISODE_TASK[ep]))
        for cam, draw in (("front", fixture_front), ("wrist", fixture_wrist)):
            want = np.stack([draw(ep, t) for t in range(n)]).astype(np.int16)
            err = np.abs(got[cam].astype(np.int16) - want).mean(axis=(1, 2, 3))
            assert err.max() < 4, (cam, ep, err)
            # each decoded frame is the one drawn at its own time step, not a neighbour (colours step 10-12)
            dist = np.abs(got[cam].astype(np.int16)[:, None] - want[None]).mean(axis=(2, 3, 4))
            np.testing.assert_array_equal(dist.argmin(1), np.arange(n))
    # what training reads: windows of camera frames, state and action from the imported store
    ds = SequenceDataset(
        store.path, cameras=["front", "wrist"], horizon=4, n_obs_steps=2, n_action_steps=4, val_ratio=0.0
    )
    item = ds[0]
    assert item["obs"]["front"].shape == (2, 48, 64, 3) and item["obs"]["state"].shape == (2, 4)
    assert item["action"].shape == (4, 3)
    assert len(ds) == sum(n + 1 for n in LENGTHS)  # windows per episode: n + pads (1 + 3) - horizon + 1


def smooth_episode(rng: np.random.Generator, n: int, hw: tuple[int, int], offset: float) -> np.ndarray:
    """Rendered-looking frames: a shaded background with a moving, soft-edged coloured blob."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 15 + offset)], -1) * 150 + 50
    frames = []
    for t in range(n):
        cy, cx = h / 2 + h / 4 * np.sin(0.3 * t + offset), w / 2 + w / 4 * np.cos(0.2 * t)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (h / 8) ** 2))[..., None]
        frames.append(base * (1 - blob) + blob * rng.integers(0, 255, 3))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def make_store(path: Path, lengths: list[int]) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    store = ReplayStore.create(
        path, attrs={"env_id": "s2_policy/PickCube-v0", "control_hz": 15, "cameras": ["front", "wrist"]}
    )
    eps = {}
    for e, n in enumerate(lengths):
        ep = {
            "front": smooth_episode(rng, n, (64, 80), e),
            "wrist": smooth_episode(rng, n, (32, 32), 2 * e),
            "state": rng.normal(size=(n, 5)).astype(np.float32),
            "action": rng.normal(size=(n, 2)).astype(np.float32),
        }
        store.add_episode(ep)
        eps[e] = ep
    return eps


@pytest.mark.parametrize(
    "opts",
    [
        ExportOptions(),
        # tiny file limits: several data and video files, and 2 files per chunk folder
        ExportOptions(
            vcodec="libx264", crf=18, chunks_size=2, data_files_size_in_mb=1e-4, video_files_size_in_mb=1e-3
        ),
    ],
    ids=["av1-default", "h264-many-files"],
)
def test_round_trip_store_lerobot_store(tmp_path: Path, opts: ExportOptions) -> None:
    lengths = [9, 20, 4]
    eps = make_store(tmp_path / "src.zarr", lengths)
    out = export_lerobot(tmp_path / "src.zarr", tmp_path / "lr", options=opts, progress=False)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 15 and info["total_frames"] == sum(lengths)
    front = info["features"]["observation.images.front"]
    assert front["shape"] == [64, 80, 3] and front["info"]["video.pix_fmt"] == "yuv420p"
    assert front["info"]["video.codec"] == ("av1" if opts.vcodec == "libsvtav1" else "h264")
    videos = sorted((out / "videos" / "observation.images.front").rglob("*.mp4"))
    data = sorted((out / "data").rglob("*.parquet"))
    if opts.chunks_size == 2:  # the size limits forced new files, and new chunk folders after 2 files
        assert len(videos) == 3 and len(data) == 3 and videos[-1].parent.name == "chunk-001"
    else:
        assert len(videos) == 1 and len(data) == 1
    back = import_lerobot(out, tmp_path / "back.zarr", progress=False)
    assert list(back.episode_ends) == list(np.cumsum(lengths))
    assert back.attrs["tasks"] == ["s2_policy/PickCube-v0"] and back.attrs["fps"] == 15
    assert back.keys() == ["action", "front", "state", "task_index", "wrist"]
    for e in eps:
        got = back.get_episode(e)
        np.testing.assert_array_equal(got["state"], eps[e]["state"])
        np.testing.assert_array_equal(got["action"], eps[e]["action"])
        for cam in ("front", "wrist"):
            assert psnr(got[cam], eps[e][cam]) >= 35, (cam, e, psnr(got[cam], eps[e][cam]))


def test_export_matches_lerobot_schema(tmp_path: Path) -> None:
    """Re-exporting the LeRobot-written fixture gives LeRobot's own info.json features and parquet schemas."""
    import_lerobot(FIXTURE, tmp_path / "fx.zarr", progress=False)
    out = export_lerobot(tmp_path / "fx.zarr", tmp_path / "lr", progress=False)
    ours, theirs = (json.loads((d / "meta" / "info.json").read_text()) for d in (out, FIXTURE))
    assert ours.keys() == theirs.keys()
    assert ours["features"] == theirs["features"]
    for k in (
        "total_episodes",
        "total_frames",
        "total_tasks",
        "fps",
        "robot_type",
        "data_path",
        "video_path",
        "splits",
    ):
        assert ours[k] == theirs[k], k
    for rel in ("data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet"):
        s_ours, s_theirs = (pq.read_schema(d / rel) for d in (out, FIXTURE))
        assert {f.name: f.type for f in s_ours if not f.name.startswith("stats/")} == {
            f.name: f.type for f in s_theirs if not f.name.startswith("stats/")
        }, rel
        assert set(s_ours.names) == set(s_theirs.names), rel
    t_ours, t_theirs = (pq.read_table(d / "meta/episodes/chunk-000/file-000.parquet") for d in (out, FIXTURE))
    assert t_ours.column("tasks").to_pylist() == t_theirs.column("tasks").to_pylist()
    for col in (
        "length",
        "dataset_from_index",
        "dataset_to_index",
        "videos/observation.images.front/from_timestamp",
        "videos/observation.images.wrist/to_timestamp",
    ):
        assert t_ours.column(col).to_pylist() == pytest.approx(t_theirs.column(col).to_pylist()), col
    stats_ours, stats_theirs = (json.loads((d / "meta" / "stats.json").read_text()) for d in (out, FIXTURE))
    assert stats_ours.keys() == stats_theirs.keys()
    for stat in ("min", "max", "mean", "count"):
        np.testing.assert_allclose(
            stats_ours["observation.state"][stat],
            stats_theirs["observation.state"][stat],
            rtol=1e-6,
            atol=1e-7,
        )
    assert np.shape(stats_ours["observation.images.front"]["mean"]) == (3, 1, 1)
    tasks = pq.read_table(out / "meta" / "tasks.parquet")
    assert tasks.schema.pandas_metadata["index_columns"] == ["__index_level_0__"]
    assert tasks.column("__index_level_0__").to_pylist() == TASKS


def test_import_resumes_after_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = import_lerobot(FIXTURE, tmp_path / "full.zarr", progress=False)
    calls: list[int] = []
    real_add = ReplayStore.add_episode

    def add_then_die(self: ReplayStore, episode: dict) -> int:
        calls.append(len(episode["state"]))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while writing the second episode
        return real_add(self, episode)

    monkeypatch.setattr(ReplayStore, "add_episode", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        import_lerobot(FIXTURE, tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists()
    assert ReplayStore.open(tmp_path / "out.zarr.partial").n_episodes == 1
    calls.clear()
    monkeypatch.setattr(
        ReplayStore, "add_episode", lambda self, ep: calls.append(len(ep["state"])) or real_add(self, ep)
    )
    store = import_lerobot(FIXTURE, tmp_path / "out.zarr", progress=False)
    assert calls == LENGTHS[1:]  # resumed at episode 1 (mid-video: the decoder seeks), episode 0 kept
    assert not (tmp_path / "out.zarr.partial").exists()
    for k in full:
        np.testing.assert_array_equal(store[k][:], full[k][:])


KILLED_IMPORT = textwrap.dedent(
    """
    from s2_policy.data.lerobot import import_lerobot
    from s2_policy.data.store import ReplayStore

    real_add = ReplayStore.add_episode

    def add(self, episode):
        i = real_add(self, episode)
        print(f"committed {{i}}", flush=True)  # the parent kills while episode i + 1 is being read
        return i

    ReplayStore.add_episode = add
    import_lerobot({src!r}, {out!r}, progress=False)
    """
)


@pytest.mark.slow
def test_import_resumes_after_sigkill(tmp_path: Path) -> None:
    make_store(tmp_path / "src.zarr", [6, 9, 5, 8, 7])
    src = export_lerobot(tmp_path / "src.zarr", tmp_path / "lr", progress=False)
    full = import_lerobot(src, tmp_path / "full.zarr", progress=False)
    out = tmp_path / "out.zarr"
    code = KILLED_IMPORT.format(src=str(src), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.strip() == "committed 1":
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    assert 2 <= ReplayStore.open(out.with_name("out.zarr.partial")).n_episodes < 5
    store = import_lerobot(src, out, progress=False)
    assert list(store.episode_ends) == list(full.episode_ends)
    for k in full:
        np.testing.assert_array_equal(store[k][:], full[k][:])


def copy_fixture(tmp_path: Path, edit_info=None) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(FIXTURE, dst)
    if edit_info:
        p = dst / "meta" / "info.json"
        info = json.loads(p.read_text())
        edit_info(info)
        p.write_text(json.dumps(info))
    return dst


def test_import_errors(tmp_path: Path) -> None:
    def v16(info: dict) -> None:
        info["codebase_version"] = "v1.6"

    with pytest.raises(ValueError, match=r"'v1.6' is not supported; this importer reads v3.0, v2.1, v2.0"):
        import_lerobot(copy_fixture(tmp_path / "a", v16), tmp_path / "o.zarr")

    def strange_codec(info: dict) -> None:
        info["features"]["observation.images.wrist"]["info"]["video.codec"] = "nosuchcodec"

    with pytest.raises(ValueError, match="'nosuchcodec' cannot be decoded"):
        import_lerobot(copy_fixture(tmp_path / "b", strange_codec), tmp_path / "o.zarr")

    def text_feature(info: dict) -> None:
        info["features"]["language_instruction"] = {"dtype": "string", "shape": [1], "names": None}

    src = copy_fixture(tmp_path / "c", text_feature)
    with pytest.raises(
        ValueError, match="'language_instruction' has dtype 'string'.*--drop language_instruction"
    ):
        import_lerobot(src, tmp_path / "o.zarr")
    store = import_lerobot(
        src, tmp_path / "o.zarr", drop=["language_instruction", "observation.images.wrist"], progress=False
    )
    assert store.keys() == ["action", "front", "state", "task_index"] and store.attrs["cameras"] == ["front"]
    with pytest.raises(ValueError, match="already exists"):
        import_lerobot(src, tmp_path / "o.zarr")
    with pytest.raises(ValueError, match="no meta/info.json"):
        import_lerobot(tmp_path / "o.zarr", tmp_path / "p.zarr")

    # a video shorter than the timestamps say: the frame-to-timestamp check names the frame
    src = copy_fixture(tmp_path / "d")
    ep_path = src / "meta/episodes/chunk-000/file-000.parquet"
    t = pq.read_table(ep_path)
    col = "videos/observation.images.front/from_timestamp"
    t = t.set_column(t.column_names.index(col), col, pa.array([0.0, 1.25, 1.9]))
    pq.write_table(t, ep_path)
    with pytest.raises(ValueError, match="nearest decoded frame"):
        import_lerobot(src, tmp_path / "q.zarr", progress=False)


def test_export_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ReplayStore.create(tmp_path / "s.zarr", attrs={"cameras": ["cam"]})
    store.add_episode({"cam": np.zeros((3, 16, 16, 3), np.uint8), "action": np.zeros((3, 2), np.float32)})
    with pytest.raises(ValueError, match="no integer fps/control_hz"):
        export_lerobot(tmp_path / "s.zarr", tmp_path / "out", progress=False)
    export_lerobot(tmp_path / "s.zarr", tmp_path / "out", fps=5, progress=False)
    with pytest.raises(ValueError, match="already exists"):
        export_lerobot(tmp_path / "s.zarr", tmp_path / "out", fps=5, progress=False)
    with pytest.raises(ValueError, match="no encoder"):
        ExportOptions(vcodec="nosuchcodec")
    info = json.loads((tmp_path / "out" / "meta" / "info.json").read_text())
    assert info["fps"] == 5 and set(info["features"]) >= {"observation.images.cam", "action", "task_index"}
    assert not list(tmp_path.glob(".out.exporting-*"))  # the build folder is gone

    pose = ReplayStore.create(tmp_path / "pose.zarr", attrs={"control_hz": 5})
    pose.add_episode({"pose": np.zeros((2, 2, 3), np.float32)})
    with pytest.raises(ValueError, match="data/pose has per-frame shape \\[2, 3\\]"):
        export_lerobot(pose.path, tmp_path / "o1", progress=False)
    odd = ReplayStore.create(tmp_path / "odd.zarr", attrs={"control_hz": 5})
    odd.add_episode({"cam": np.zeros((2, 15, 16, 3), np.uint8), "action": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="'cam' is 15x16; yuv420p video needs even"):
        export_lerobot(odd.path, tmp_path / "o1", progress=False)

    def fail(self: object, frames: np.ndarray) -> dict:
        raise RuntimeError("disk full")

    monkeypatch.setattr(lr_video._VideoWriter, "add_episode", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_lerobot(tmp_path / "s.zarr", tmp_path / "o2", fps=5, progress=False)
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o2.exporting-*"))


def test_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "import" in capsys.readouterr().out
    main(["import", str(FIXTURE), str(tmp_path / "fx.zarr")])
    assert "3 episodes, 34 frames" in capsys.readouterr().out
    main(["export", str(tmp_path / "fx.zarr"), str(tmp_path / "lr"), "--vcodec", "libx264", "--crf", "20"])
    assert (tmp_path / "lr" / "meta" / "info.json").exists()
    info = json.loads((tmp_path / "lr" / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.front"]["info"]["video.codec"] == "h264"


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m s2_policy.data.lerobot ARGS`` as its own process, from the repository root."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    cmd = [sys.executable, "-m", "s2_policy.data.lerobot", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_command_line_as_a_process(tmp_path: Path) -> None:
    """The real command (``python -m s2_policy.data.lerobot import|export``, flags included) on the fixture
    written by LeRobot, checked against the values the fixture was drawn from."""
    res = run_command("import", str(FIXTURE), str(tmp_path / "fx.zarr"), "--drop", "observation.images.wrist")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "3 episodes, 34 frames, keys ['action', 'front', 'state', 'task_index']" in res.stdout
    store = ReplayStore.open(tmp_path / "fx.zarr")
    assert list(store.episode_lengths) == LENGTHS and store.attrs["cameras"] == ["front"]
    for ep, n in enumerate(LENGTHS):
        got = store.get_episode(ep)
        np.testing.assert_array_equal(got["state"], np.stack([fixture_state(ep, t) for t in range(n)]))
        np.testing.assert_array_equal(got["task_index"], np.full(n, EPISODE_TASK[ep]))
        want = np.stack([fixture_front(ep, t) for t in range(n)]).astype(np.int16)
        assert np.abs(got["front"].astype(np.int16) - want).mean() < 4

    out = tmp_path / "lr"
    res = run_command("export", str(tmp_path / "fx.zarr"), str(out), "--robot-type", "cli_arm", "--gop", "4")
    assert res.returncode == 0 and f"wrote {out}" in res.stdout, res.stderr[-2000:]
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and info["robot_type"] == "cli_arm"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 34, 2)
    assert info["features"]["observation.images.front"]["info"]["video.codec"] == "av1"  # the default encoder
    assert "observation.images.wrist" not in info["features"]
    back = import_lerobot(out, tmp_path / "back.zarr", progress=False)
    assert back.attrs["tasks"] == TASKS and list(back.episode_lengths) == LENGTHS
    for k in ("state", "action", "task_index"):
        np.testing.assert_array_equal(back[k][:], store[k][:])
    assert psnr(back["front"][:], store["front"][:]) >= 35

    res = run_command("export", str(tmp_path / "fx.zarr"), str(out))  # a user error: one line, status 2
    assert res.returncode == 2 and "already exists" in res.stderr and "Traceback" not in res.stderr
