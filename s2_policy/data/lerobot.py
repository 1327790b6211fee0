"""LeRobotDataset v3.0 folders in and out of the project's replay store (pyarrow + PyAV; no ``lerobot``).

A LeRobotDataset v3.0 folder (the format of LeRobot >= 0.4)::

    meta/info.json                          codebase_version "v3.0", fps, robot_type, features, path templates
    meta/tasks.parquet                      task strings (pandas index) -> task_index
    meta/stats.json                         per-feature min/max/mean/std/count/q01..q99
    meta/episodes/chunk-000/file-000.parquet  one row per episode: length, tasks, data and video locations
    data/chunk-000/file-000.parquet         one row per frame, many episodes per file
    videos/<video key>/chunk-000/file-000.mp4  many episodes per file, one after the other in time

v2.1 and v2.0 folders (LeRobot 0.1-0.3: ``meta/episodes.jsonl``, ``meta/tasks.jsonl``, one parquet and one
mp4 per episode) are imported too; export always writes v3.0.

Key mapping (store <- LeRobot): ``observation.images.<cam>`` -> ``<cam>`` (uint8 HWC frames),
``observation.state`` -> ``state``, ``action`` -> ``action``, ``task_index`` -> ``task_index``, any other
``observation.<x>`` -> ``<x>``, any other feature -> its name with dots replaced by underscores. The
bookkeeping columns ``index``, ``episode_index``, ``frame_index`` and ``timestamp`` are checked, not stored.
fps, robot type, task strings and the original feature specs become store attributes (``fps``,
``control_hz``, ``robot_type``, ``tasks``, ``lerobot``); episode boundaries become ``meta/episode_ends``.

Video frames are decoded with PyAV (AV1 through libdav1d, h264, hevc, ... whatever its FFmpeg decodes) and
matched to each frame's timestamp (the episode's ``from_timestamp`` plus the frame's ``timestamp``) within
``tolerance_s``, as LeRobot's own loader does. Import is resumable: it writes ``OUT.partial`` and renames it
into place when complete; rerunning after an interruption continues from the last complete episode.

Export writes a v3.0 folder that LeRobot's loader reads: the same ``info.json`` schema, episode and data
parquet files, ``stats.json`` and one mp4 per camera holding many episodes, encoded like LeRobot's own
writer by default (AV1 with libsvtav1, yuv420p, a keyframe every 2 frames; crf 23 where LeRobot uses 30).
It is built beside the target and renamed into place.

Usage::

    python -m s2_policy.data.lerobot import SRC_DIR OUT.zarr
    python -m s2_policy.data.lerobot export STORE OUT_DIR [--task "pick the cube"] [--crf 23]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

try:
    import av
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
except ImportError as e:  # the optional 'lerobot' extra
    raise ImportError(
        f"s2_policy.data.lerobot needs pyarrow and PyAV ({e.name} is missing): pip install -e '.[lerobot]'"
    ) from e

from s2_policy.atomic import atomic_path, atomic_write_json
from s2_policy.cli import user_errors
from s2_policy.data.store import ReplayStore, is_image_array, resume_conversion

__all__ = [
    "CODEBASE_VERSION",
    "ExportOptions",
    "LeRobotInfo",
    "export_lerobot",
    "import_lerobot",
    "lerobot_key",
    "read_info",
    "store_key",
]

CODEBASE_VERSION = "v3.0"
# v2.x (LeRobot 0.1-0.3): one parquet and one mp4 per episode, meta/episodes.jsonl and meta/tasks.jsonl.
READ_VERSIONS = ("v3.0", "v2.1", "v2.0")
IMAGE_PREFIX = "observation.images."
# Per-frame columns every LeRobot dataset has; only task_index is kept in the store.
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
NUMERIC_DTYPES = (
    "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "bool",
)  # fmt: skip
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
WRITER = "s2_policy.data.lerobot"
TASK_INDEX_COLUMN = "__index_level_0__"  # where pandas keeps an unnamed index (the task text)


# ---------------------------------------------------------------------------------------------- key mapping
def store_key(lerobot_key: str) -> str:
    """The store key for a LeRobot feature name (see the module docstring for the mapping)."""
    if lerobot_key.startswith(IMAGE_PREFIX):
        return lerobot_key[len(IMAGE_PREFIX) :]
    if lerobot_key == "observation.state":
        return "state"
    if lerobot_key.startswith("observation."):
        return lerobot_key[len("observation.") :].replace(".", "_")
    return lerobot_key.replace(".", "_")


def lerobot_key(key: str, camera: bool) -> str:
    """The LeRobot feature name for a store key (the inverse of :func:`store_key` for stores it wrote)."""
    if camera:
        return IMAGE_PREFIX + key
    if key in ("action", "task_index"):
        return key
    return "observation." + key


# ---------------------------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class LeRobotInfo:
    """The parts of ``meta/info.json`` the converter uses (a v3.0 dataset)."""

    root: Path
    codebase_version: str
    fps: int
    robot_type: str | None
    features: dict[str, dict[str, Any]]
    data_path: str
    video_path: str | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def video_keys(self) -> list[str]:
        """Features stored as mp4 videos."""
        return [k for k, f in self.features.items() if f["dtype"] == "video"]

    @property
    def image_keys(self) -> list[str]:
        """Features stored as encoded images inside the data parquet files."""
        return [k for k, f in self.features.items() if f["dtype"] == "image"]


def read_info(root: str | os.PathLike) -> LeRobotInfo:
    """Read and check ``root/meta/info.json``; ValueError naming the problem and the fix."""
    root = Path(root)
    path = root / "meta" / "info.json"
    if not path.is_file():
        hint = (
            " (this looks like a zarr store: use `export` to go the other way)"
            if (root / "zarr.json").exists() or (root / ".zgroup").exists()
            else ""
        )
        raise ValueError(f"{root}: no meta/info.json: not a LeRobotDataset folder{hint}")
    raw = json.loads(path.read_text())
    version = raw.get("codebase_version")
    if version not in READ_VERSIONS:
        raise ValueError(
            f"{path}: codebase_version {version!r} is not supported; this importer reads "
            f"{', '.join(READ_VERSIONS)} (convert older datasets with LeRobot's conversion scripts first)"
        )
    missing = [k for k in ("fps", "features", "data_path") if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}; the file is incomplete or not LeRobot's info.json")
    fps = raw["fps"]
    if not isinstance(fps, int | float) or fps <= 0 or float(fps) != int(fps):
        raise ValueError(f"{path}: fps must be a positive integer, got {fps!r}")
    return LeRobotInfo(
        root=root,
        codebase_version=version,
        fps=int(fps),
        robot_type=raw.get("robot_type"),
        features=raw["features"],
        data_path=raw["data_path"],
        video_path=raw.get("video_path"),
        raw=raw,
    )


def _read_parquet_dir(directory: Path, what: str) -> pa.Table:
    """All ``chunk-*/file-*.parquet`` tables under ``directory``, concatenated in path order."""
    paths = sorted(directory.glob("chunk-*/file-*.parquet"))
    if not paths:
        raise ValueError(f"{directory}: no chunk-*/file-*.parquet files: the dataset has no {what}")
    tables = [pq.read_table(p) for p in paths]
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def _read_tasks(root: Path, version: str) -> list[str]:
    """Task strings ordered by task_index: ``meta/tasks.parquet`` (v3.0, the text is the pandas index) or
    ``meta/tasks.jsonl`` (v2.x)."""
    if version.startswith("v2"):
        path = root / "meta" / "tasks.jsonl"
        rows = (
            [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if path.exists()
            else []
        )
        index, text = [int(r["task_index"]) for r in rows], [str(r["task"]) for r in rows]
    else:
        path = root / "meta" / "tasks.parquet"
        if not path.exists():
            return []
        t = pq.read_table(path)
        if "task_index" not in t.column_names:
            raise ValueError(f"{path}: no task_index column (columns: {t.column_names})")
        names = [
            c
            for c in t.column_names
            if c != "task_index"
            and (
                pa.types.is_string(t.schema.field(c).type) or pa.types.is_large_string(t.schema.field(c).type)
            )
        ]
        if not names:
            raise ValueError(f"{path}: no string column holding the task text (columns: {t.column_names})")
        index, text = t.column("task_index").to_pylist(), t.column(names[0]).to_pylist()
    tasks = [""] * (max(index) + 1 if index else 0)
    for i, s in zip(index, text, strict=True):
        tasks[i] = s
    return tasks


@dataclass(frozen=True)
class _Episode:
    """Where one episode's frames are: its data parquet file and, per video key, (mp4, start time in it)."""

    index: int
    length: int
    tasks: list[str]
    data_path: Path
    videos: dict[str, tuple[Path, float]]


def _read_episodes(info: LeRobotInfo, video_keys: list[str]) -> list[_Episode]:
    """The episodes in index order, from ``meta/episodes/`` (v3.0) or ``meta/episodes.jsonl`` (v2.x)."""
    root = info.root
    if info.codebase_version.startswith("v2"):
        path = root / "meta" / "episodes.jsonl"
        if not path.exists():
            raise ValueError(f"{path} is missing: the dataset has no episode metadata")
        rows = sorted(
            (json.loads(line) for line in path.read_text().splitlines() if line.strip()),
            key=lambda r: r["episode_index"],
        )
        chunks = int(info.raw.get("chunks_size", 1000))
        eps = []
        for r in rows:
            e = int(r["episode_index"])
            loc = {"episode_chunk": e // chunks, "episode_index": e}
            eps.append(
                _Episode(
                    index=e,
                    length=int(r["length"]),
                    tasks=list(r.get("tasks", [])),
                    data_path=root / info.data_path.format(**loc),
                    videos={k: (root / info.video_path.format(video_key=k, **loc), 0.0) for k in video_keys},
                )
            )
    else:
        table = _read_parquet_dir(root / "meta" / "episodes", "episode metadata (meta/episodes)")
        cols = [c for c in table.column_names if not c.startswith("stats/")]
        eps = []
        for r in sorted(table.select(cols).to_pylist(), key=lambda r: r["episode_index"]):
            missing = [
                f"videos/{k}/from_timestamp" for k in video_keys if f"videos/{k}/from_timestamp" not in r
            ]
            if missing:
                raise ValueError(
                    f"{root}/meta/episodes: no columns {missing}; the episode metadata is incomplete"
                )
            eps.append(
                _Episode(
                    index=int(r["episode_index"]),
                    length=int(r["length"]),
                    tasks=list(r.get("tasks") or []),
                    data_path=root
                    / info.data_path.format(
                        chunk_index=int(r["data/chunk_index"]), file_index=int(r["data/file_index"])
                    ),
                    videos={
                        k: (
                            root
                            / info.video_path.format(
                                video_key=k,
                                chunk_index=int(r[f"videos/{k}/chunk_index"]),
                                file_index=int(r[f"videos/{k}/file_index"]),
                            ),
                            float(r[f"videos/{k}/from_timestamp"]),
                        )
                        for k in video_keys
                    },
                )
            )
    got = [ep.index for ep in eps]
    if got != list(range(len(got))):
        raise ValueError(f"{root}: episode indices are not 0..{len(got) - 1} (got {got[:10]}...)")
    return eps


def _column_array(col: pa.ChunkedArray | pa.Array, n: int, shape: Sequence[int], key: str) -> np.ndarray:
    """A (fixed-size) list column as a numpy array of shape ``(n, *shape)``."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(arr.type, pa.ExtensionType):
        arr = arr.storage
    while (
        pa.types.is_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
        or pa.types.is_large_list(arr.type)
    ):
        arr = arr.flatten()
    values = arr.to_numpy(zero_copy_only=False)
    want = (n,) if [int(s) for s in shape] == [1] else (n, *[int(s) for s in shape])
    if values.size != int(np.prod(want)):
        raise ValueError(
            f"data column {key!r} holds {values.size} values for {n} frames, but its feature shape is "
            f"{list(shape)}; the data files disagree with meta/info.json"
        )
    return values.reshape(want)


# ---------------------------------------------------------------------------------------------- decoding
def _check_decodable(codec: str, where: str) -> None:
    try:
        av.codec.Codec(codec, "r")
    except Exception as e:
        raise ValueError(
            f"{where}: video codec {codec!r} cannot be decoded by this PyAV build (av {av.__version__}); "
            "re-encode the videos to AV1 or h264 (e.g. ffmpeg -c:v libsvtav1 -pix_fmt yuv420p) or install a "
            "PyAV whose FFmpeg has that decoder"
        ) from e


class _VideoCursor:
    """Decodes one camera's mp4 files forward, handing out the frames nearest to requested timestamps.

    Episodes are read in order, and a file holds consecutive episodes, so each file is decoded once from
    start to end; a jump backwards or into a new file reopens and seeks to the nearest earlier keyframe.
    """

    def __init__(self, key: str, shape: tuple[int, int, int], tolerance_s: float) -> None:
        self.key, self.shape, self.tolerance_s = key, shape, tolerance_s
        self.path: Path | None = None
        self.container: av.container.InputContainer | None = None
        self.frames: Iterator[tuple[float, av.VideoFrame]] | None = None
        self.pending: tuple[float, av.VideoFrame] | None = None

    def _open(self, path: Path, start_s: float) -> None:
        self.close()
        if not path.exists():
            raise ValueError(f"missing video file {path} for {self.key!r}; the dataset is incomplete")
        self.container = av.open(str(path))
        if not self.container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = self.container.streams.video[0]
        _check_decodable(stream.codec_context.codec.name, str(path))
        stream.thread_type = "AUTO"
        if start_s > 0:
            self.container.seek(max(0, int(start_s / stream.time_base) - 1), stream=stream, backward=True)
        self.path = path

        def frames() -> Iterator[tuple[float, av.VideoFrame]]:
            for fr in self.container.decode(stream):
                if fr.pts is not None:
                    yield float(fr.pts * stream.time_base), fr

        self.frames = frames()
        self.pending = None

    def read(self, path: Path, timestamps: np.ndarray) -> np.ndarray:
        """Frames (T, H, W, 3) uint8 at ``timestamps`` (seconds, increasing) of the video ``path``."""
        first, last, tol = float(timestamps[0]), float(timestamps[-1]), self.tolerance_s
        if path != self.path or (self.pending is not None and self.pending[0] > first + tol):
            self._open(path, first)
        got_ts: list[float] = []
        got: list[np.ndarray] = []
        while True:
            item = self.pending if self.pending is not None else next(self.frames, None)
            self.pending = None
            if item is None:
                break
            ts, frame = item
            if ts > last + tol:
                self.pending = item
                break
            if ts >= first - tol:  # frames before it (from the keyframe a seek lands on) are not converted
                got_ts.append(ts)
                got.append(frame.to_ndarray(format="rgb24"))
        if not got:
            raise ValueError(
                f"{path}: no frame of {self.key!r} between {first:.4f} s and {last:.4f} s; the episode's "
                "from_timestamp/to_timestamp do not match the video"
            )
        loaded = np.asarray(got_ts)
        nearest = np.abs(timestamps[:, None] - loaded[None, :]).argmin(1)
        err = np.abs(loaded[nearest] - timestamps)
        if err.max() > tol:
            bad = int(err.argmax())
            raise ValueError(
                f"{path}: frame {bad} of {self.key!r} wants t={timestamps[bad]:.4f} s but the nearest "
                f"decoded frame is at {loaded[nearest[bad]]:.4f} s (more than tolerance_s={tol} away); the "
                "timestamps and the video disagree (raise --tolerance-s only if you accept nearest frames)"
            )
        out = np.stack([got[i] for i in nearest])
        if out.shape[1:] != self.shape:
            raise ValueError(
                f"{path}: frames of {self.key!r} are {out.shape[1:]} but meta/info.json says {self.shape}"
            )
        return out

    def close(self) -> None:
        """Close the open file, if any."""
        if self.container is not None:
            self.container.close()
        self.container = self.frames = self.pending = self.path = None


# ---------------------------------------------------------------------------------------------- import
def _plan_features(info: LeRobotInfo, drop: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(video keys, image keys, low-dim keys) to import; ValueError for features we cannot convert."""
    unknown = [k for k in drop if k not in info.features]
    if unknown:
        raise ValueError(
            f"--drop names {unknown}, which are not features (features: {sorted(info.features)})"
        )
    videos, images, lowdim = [], [], []
    for key, ft in info.features.items():
        if key in drop or (key in BOOKKEEPING and key != "task_index"):
            continue
        dtype, shape = ft.get("dtype"), list(ft.get("shape", []))
        ft_info = ft.get("info") or {}
        if dtype in ("video", "image"):
            if ft_info.get("video.is_depth_map") or ft_info.get("is_depth_map"):
                raise ValueError(
                    f"feature {key!r} is a depth map, which the store does not hold; pass --drop {key}"
                )
            if len(shape) != 3 or 3 not in (shape[0], shape[-1]):
                raise ValueError(
                    f"feature {key!r} ({dtype}) has shape {shape}; only RGB (H, W, 3) cameras are supported; "
                    f"pass --drop {key}"
                )
            if dtype == "video":
                codec = ft_info.get("video.codec")
                if codec:
                    _check_decodable(codec, f"feature {key!r}")
            (videos if dtype == "video" else images).append(key)
        elif dtype in NUMERIC_DTYPES:
            lowdim.append(key)
        else:
            raise ValueError(
                f"feature {key!r} has dtype {dtype!r}, which the store does not hold (numeric arrays, "
                f"video and image cameras only); pass --drop {key} to leave it out"
            )
    names = [store_key(k) for k in videos + images + lowdim]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"features map to the same store keys {dup}; --drop one of each pair")
    return videos, images, lowdim


def _hw3(shape: Sequence[int], names: Sequence[str] | None) -> tuple[int, int, int]:
    """(H, W, 3) from a camera feature's shape, which LeRobot writes HWC (older exports: CHW)."""
    shape = [int(s) for s in shape]
    if (names and list(names)[:1] == ["channels"]) or (shape[0] == 3 and shape[-1] != 3):
        return shape[1], shape[2], 3
    return shape[0], shape[1], 3


def _source_id(info: LeRobotInfo, episodes: list[_Episode], options: dict[str, Any]) -> str:
    blob = json.dumps(
        {"info": info.raw, "lengths": [ep.length for ep in episodes], "options": options},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def import_lerobot(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    drop: Sequence[str] = (),
    tolerance_s: float = 1e-4,
    overwrite: bool = False,
    progress: bool = True,
) -> ReplayStore:
    """Import the LeRobotDataset folder ``src`` (v3.0, or v2.1/v2.0) into a new store at ``out`` (read-only).

    ``drop`` lists features to leave out; ``tolerance_s`` is how far (seconds) a decoded video frame may be
    from the timestamp it stands for (LeRobot's loader default: 1e-4).
    """
    src, out = Path(src), Path(out)
    info = read_info(src)
    if out.exists():
        if not overwrite:
            raise ValueError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out)
    videos, images, lowdim = _plan_features(info, drop)
    if videos and not info.video_path:
        raise ValueError(f"{src}/meta/info.json has video features {videos} but no video_path template")
    episodes = _read_episodes(info, videos)
    tasks = _read_tasks(src, info.codebase_version)
    cameras = [store_key(k) for k in videos + images]
    keys = {store_key(k): k for k in videos + images + lowdim}
    options = {"drop": sorted(drop), "tolerance_s": tolerance_s}
    source_id = _source_id(info, episodes, options)
    attrs = {
        "writer": WRITER,
        "source": str(src),
        "source_id": source_id,
        "fps": info.fps,
        "control_hz": info.fps,
        "robot_type": info.robot_type,
        "cameras": cameras,
        "tasks": tasks,
        "episode_tasks": [ep.tasks for ep in episodes],
        "lerobot": {
            "codebase_version": info.codebase_version,
            "keys": keys,
            "features": {k: info.features[k] for k in keys.values()},
        },
    }
    partial = out.with_name(out.name + ".partial")
    store = resume_conversion(partial, attrs, source_id)
    cursors = {
        k: _VideoCursor(k, _hw3(info.features[k]["shape"], info.features[k].get("names")), tolerance_s)
        for k in videos
    }
    data_file: _DataFile | None = None
    try:
        for ep in tqdm(
            episodes[store.n_episodes :], desc="LeRobot -> zarr", unit="episode", disable=not progress
        ):
            e, n, path = ep.index, ep.length, ep.data_path
            if data_file is None or data_file.path != path:
                data_file = _DataFile(path, e)
            table = data_file.episode(e)
            if table.num_rows != n:
                raise ValueError(
                    f"{path}: episode {e} has {table.num_rows} rows but meta/episodes says length {n}"
                )
            frame_index = table.column("frame_index").to_numpy()
            if not np.array_equal(frame_index, np.arange(n)):
                raise ValueError(f"{path}: episode {e} frame_index is not 0..{n - 1}")
            out_ep: dict[str, np.ndarray] = {}
            for k in lowdim:
                if k not in table.column_names:
                    raise ValueError(f"{path}: no column {k!r}, although meta/info.json lists it")
                ft = info.features[k]
                arr = _column_array(table.column(k), n, ft["shape"], k)
                if arr.ndim == 1 and store_key(k) in ("state", "action"):
                    arr = arr[:, None]
                out_ep[store_key(k)] = arr
            ts = table.column("timestamp").to_numpy().astype(np.float64)
            for k in videos:
                vpath, start = ep.videos[k]
                out_ep[store_key(k)] = cursors[k].read(vpath, start + ts)
            for k in images:
                out_ep[store_key(k)] = _decode_images(table.column(k), k, path)
            store.add_episode(out_ep)
    finally:
        for c in cursors.values():
            c.close()
    os.replace(partial, out)
    return ReplayStore.open(out, mode="r")


class _DataFile:
    """One data parquet file, read whole, with each episode's row range found once."""

    def __init__(self, path: Path, episode: int) -> None:
        if not path.exists():
            raise ValueError(f"missing data file {path} for episode {episode}; the dataset is incomplete")
        self.path, self.table = path, pq.read_table(path)
        for col in ("episode_index", "frame_index", "timestamp"):
            if col not in self.table.column_names:
                raise ValueError(f"{path}: no {col!r} column; not a LeRobot data file")
        eps = self.table.column("episode_index").to_numpy()
        ids, first, counts = np.unique(eps, return_index=True, return_counts=True)
        self.rows = {int(i): (int(f), int(c)) for i, f, c in zip(ids, first, counts, strict=True)}

    def episode(self, e: int) -> pa.Table:
        """The rows of episode ``e`` in frame order (LeRobot writes them contiguous; others are gathered)."""
        first, count = self.rows.get(e, (0, 0))
        table = self.table.slice(first, count)
        if not pc.all(pc.equal(table.column("episode_index"), e)).as_py():
            table = self.table.filter(pc.equal(self.table.column("episode_index"), e))
        frames = table.column("frame_index").to_numpy()
        if np.any(np.diff(frames) < 0):
            table = table.sort_by("frame_index")
        return table


def _decode_images(col: pa.ChunkedArray, key: str, path: Path) -> np.ndarray:
    """PNG/JPEG images embedded in a parquet struct column ({bytes, path}) as (T, H, W, 3) uint8."""
    out = []
    for i, item in enumerate(col.to_pylist()):
        blob = item.get("bytes") if isinstance(item, dict) else None
        if not blob:
            raise ValueError(
                f"{path}: image {i} of {key!r} has no embedded bytes (external files unsupported)"
            )
        img = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{path}: image {i} of {key!r} could not be decoded")
        out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return np.stack(out)


# ---------------------------------------------------------------------------------------------- export
@dataclass(frozen=True)
class ExportOptions:
    """How :func:`export_lerobot` writes videos and files.

    Args:
        vcodec: encoder name for PyAV. ``libsvtav1`` (AV1, LeRobot's default) or ``libx264``/``h264`` (H.264);
            both are read by LeRobot's torchcodec and PyAV decoders.
        crf: constant rate factor (lower = better quality, bigger files). 23 keeps 96 px sim renders above
            35 dB PSNR (LeRobot's own default, 30, gives 35.5/34.9 dB; BENCHMARKS.md, "LeRobot conversion").
        gop: keyframe interval in frames (LeRobot writes 2 so that any frame decodes fast).
        pix_fmt: pixel format of the video stream (yuv420p: what LeRobot writes and every player reads).
        chunks_size: files per chunk folder (LeRobot: 1000).
        data_files_size_in_mb: a data parquet file is closed after this many MB (LeRobot: 100).
        video_files_size_in_mb: a camera's mp4 is closed after this many MB (LeRobot: 200).
    """

    vcodec: str = "libsvtav1"
    crf: int = 23
    gop: int = 2
    pix_fmt: str = "yuv420p"
    chunks_size: int = 1000
    data_files_size_in_mb: float = 100
    video_files_size_in_mb: float = 200

    def __post_init__(self) -> None:
        try:
            av.codec.Codec(self.vcodec, "w")
        except Exception as e:
            raise ValueError(
                f"vcodec {self.vcodec!r} has no encoder in this PyAV build (av {av.__version__}); use "
                "'libsvtav1' (AV1, LeRobot's default) or 'libx264'"
            ) from e
        if not 0 <= self.crf <= 63:
            raise ValueError(f"crf must be in 0..63, got {self.crf}")
        if self.gop < 1 or self.chunks_size < 1:
            raise ValueError(f"gop and chunks_size must be >= 1, got {self.gop} and {self.chunks_size}")
        if self.data_files_size_in_mb <= 0 or self.video_files_size_in_mb <= 0:
            raise ValueError("data_files_size_in_mb and video_files_size_in_mb must be > 0")


def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) index after ``(chunk, file)`` (LeRobot's update_chunk_file_indices)."""
    return (chunk + 1, 0) if file + 1 >= chunks_size else (chunk, file + 1)


def _lowdim_stats(x: np.ndarray) -> dict[str, Any]:
    """LeRobot's per-feature statistics over axis 0 of ``x`` (N, D)."""
    x = x.astype(np.float64).reshape(len(x), -1)
    stats = {
        "min": x.min(0),
        "max": x.max(0),
        "mean": x.mean(0),
        "std": x.std(0),
        "count": np.array([len(x)]),
    }
    for q, v in zip(QUANTILES, np.quantile(x, QUANTILES, axis=0), strict=True):
        stats[f"q{round(q * 100):02d}"] = v
    return stats


class _ImageStats:
    """Per-channel statistics of uint8 frames in LeRobot's layout (values in [0, 1], shape (3, 1, 1)).

    Channel histograms make the quantiles exact at no extra cost.
    """

    def __init__(self) -> None:
        self.hist = np.zeros((3, 256), np.int64)

    def update(self, frames: np.ndarray) -> None:
        """Add (T, H, W, 3) uint8 frames."""
        for c in range(3):
            self.hist[c] += np.bincount(frames[..., c].ravel(), minlength=256)

    def result(self, n_frames: int) -> dict[str, Any]:
        """The statistics; ``count`` is the number of frames, as LeRobot records it."""
        levels = np.arange(256) / 255.0
        total = self.hist.sum(1)
        mean = (self.hist * levels).sum(1) / total
        std = np.sqrt(np.maximum((self.hist * levels**2).sum(1) / total - mean**2, 0))
        nz = self.hist > 0
        stats = {
            "min": np.array([levels[np.argmax(nz[c])] for c in range(3)]),
            "max": np.array([levels[255 - np.argmax(nz[c][::-1])] for c in range(3)]),
            "mean": mean,
            "std": std,
        }
        cdf = np.cumsum(self.hist, 1) / total[:, None]
        for q in QUANTILES:
            stats[f"q{round(q * 100):02d}"] = np.array([levels[np.searchsorted(cdf[c], q)] for c in range(3)])
        stats = {k: v.reshape(3, 1, 1) for k, v in stats.items()}
        stats["count"] = np.array([n_frames])
        return stats


class _VideoWriter:
    """One camera's mp4 files: episodes appended one after another, a new file past the size limit."""

    def __init__(self, root: Path, key: str, fps: int, hw: tuple[int, int], opts: ExportOptions) -> None:
        self.root, self.key, self.fps, self.hw, self.opts = root, key, fps, hw, opts
        self.chunk, self.file = 0, -1
        self.container: av.container.OutputContainer | None = None
        self.frames_in_file = 0
        self.bytes_in_file = 0

    def _new_file(self) -> None:
        self.close()
        self.chunk, self.file = (
            (0, 0) if self.file < 0 else _next_file(self.chunk, self.file, self.opts.chunks_size)
        )
        path = self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk, file_index=self.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w")
        options = {"g": str(self.opts.gop), "crf": str(self.opts.crf)}
        self.stream = self.container.add_stream(self.opts.vcodec, rate=self.fps, options=options)
        self.stream.pix_fmt = self.opts.pix_fmt
        self.stream.height, self.stream.width = self.hw
        self.frame_time_base = self.stream.time_base = Fraction(1, self.fps)
        self.frames_in_file = self.bytes_in_file = 0

    def _mux(self, packets: list[av.Packet]) -> None:
        for p in packets:
            self.bytes_in_file += p.size
            self.container.mux(p)

    def add_episode(self, frames: np.ndarray) -> dict[str, Any]:
        """Encode an episode's frames; returns its ``videos/<key>/...`` episode metadata."""
        if self.container is None or self.bytes_in_file >= self.opts.video_files_size_in_mb * 2**20:
            self._new_file()
        start = self.frames_in_file
        for img in frames:
            fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            fr.pts = self.frames_in_file
            fr.time_base = self.frame_time_base  # not stream.time_base: the muxer changes that
            self.frames_in_file += 1
            self._mux(self.stream.encode(fr))
        p = f"videos/{self.key}/"
        return {
            p + "chunk_index": self.chunk,
            p + "file_index": self.file,
            p + "from_timestamp": start / self.fps,
            p + "to_timestamp": self.frames_in_file / self.fps,
        }

    def close(self) -> None:
        """Flush the encoder and close the current file."""
        if self.container is not None:
            self._mux(self.stream.encode())
            self.discard()

    def discard(self) -> None:
        """Close the current file without flushing the encoder."""
        if self.container is not None:
            self.container.close()
            self.container = None


def _video_info(path: Path) -> dict[str, Any]:
    """The ``info`` block LeRobot records for a video feature, read back from the written file."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return {
            "video.height": s.height,
            "video.width": s.width,
            "video.codec": s.codec_context.codec.canonical_name if s.codec_context.codec else s.codec.name,
            "video.pix_fmt": s.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(s.base_rate or s.average_rate),
            "video.channels": 3,
            "has_audio": False,
        }


def _arrow_column(x: np.ndarray, shape: Sequence[int]) -> pa.Array:
    """A numpy (T, ...) array as the arrow type ``datasets`` uses for that LeRobot feature shape."""
    if list(shape) == [1]:
        return pa.array(x.reshape(len(x)))
    flat = pa.array(np.ascontiguousarray(x).reshape(-1))
    arr: pa.Array = flat
    for size in reversed(list(shape)):
        arr = pa.FixedSizeListArray.from_arrays(arr, int(size))
    return arr


def _feature_dtype(dtype: np.dtype) -> str:
    name = np.dtype(dtype).name
    if name not in NUMERIC_DTYPES:
        raise ValueError(f"dtype {name} has no LeRobot feature dtype")
    return name


def export_lerobot(
    store_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    task: str | None = None,
    fps: int | None = None,
    robot_type: str | None = None,
    options: ExportOptions | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the store at ``store_path`` as a LeRobotDataset v3.0 folder ``out_dir``; returns its path.

    Cameras become ``observation.images.<cam>`` videos, ``state`` becomes ``observation.state`` and
    ``action`` stays ``action`` (a store imported from LeRobot keeps its original names). Tasks come from
    the store's ``tasks`` attribute and ``task_index`` array, else ``task`` (one task for every frame,
    default: the store's ``env_id``). ``fps`` defaults to the store's ``fps`` or ``control_hz`` attribute.
    """
    opts = options or ExportOptions()
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner per file unless told to log errors only
    store = ReplayStore.open(store_path, mode="r")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    if store.n_episodes == 0:
        raise ValueError(f"{store.path} holds no complete episode; nothing to export")
    a = store.attrs
    fps = fps or a.get("fps") or a.get("control_hz")
    if not fps or float(fps) != int(fps) or fps <= 0:
        raise ValueError(
            f"{store.path} has no integer fps/control_hz attribute ({fps!r}); pass fps= (--fps) to export"
        )
    fps = int(fps)
    keys = store.keys()
    cameras = store.image_keys()
    cameras += [
        k for k in keys if k not in cameras and is_image_array(store[k].shape) and store[k].dtype == np.uint8
    ]
    lowdim = [k for k in keys if k not in cameras]
    names = (a.get("lerobot") or {}).get("keys") or {}
    old_features = (a.get("lerobot") or {}).get("features") or {}
    lr = {k: names.get(k) or lerobot_key(k, k in cameras) for k in keys}
    if "task_index" in store and a.get("tasks"):
        tasks: list[str] = list(a["tasks"])
    else:
        tasks = [task or a.get("task") or a.get("env_id") or "default task"]
        lowdim = [k for k in lowdim if k != "task_index"]
    bad = [lr[k] for k in lowdim if lr[k] in BOOKKEEPING and k != "task_index"]
    if bad:
        raise ValueError(
            f"store keys map to LeRobot's reserved columns {bad}; rename them in the store first"
        )

    features: dict[str, dict[str, Any]] = {}
    for k in lowdim:
        arr = store[k]
        shape = list(arr.shape[1:]) or [1]
        if len(shape) > 1:
            raise ValueError(
                f"data/{k} has per-frame shape {shape}; export writes vectors and scalars only: reshape it "
                "to (N, D) in the store first"
            )
        old = old_features.get(lr[k], {})
        features[lr[k]] = {"dtype": _feature_dtype(arr.dtype), "shape": shape, "names": old.get("names")}
    for k in cameras:
        h, w, c = store[k].shape[1:]
        if c != 3:
            raise ValueError(f"camera {k!r} has {c} channels; LeRobot videos are RGB (3 channels)")
        if h % 2 or w % 2:
            raise ValueError(
                f"camera {k!r} is {h}x{w}; yuv420p video needs even heights and widths: resize or crop it "
                "first"
            )
        features[lr[k]] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"]}
    for k, v in DEFAULT_FEATURES.items():
        features.setdefault(k, dict(v))

    tmp = out.with_name(f".{out.name}.exporting-{uuid.uuid4().hex[:8]}")
    writers = {k: _VideoWriter(tmp, lr[k], fps, store[k].shape[1:3], opts) for k in cameras}
    image_stats = {k: _ImageStats() for k in cameras}
    ep_rows: list[dict[str, Any]] = []
    all_values: dict[str, list[np.ndarray]] = {}  # low-dim columns, for the dataset statistics
    data_tables: list[pa.Table] = []
    data_chunk, data_file, data_bytes = 0, 0, 0
    try:
        for e in tqdm(range(store.n_episodes), desc="zarr -> LeRobot", unit="episode", disable=not progress):
            sl = store.episode_slice(e)
            n = sl.stop - sl.start
            ep = store.get_episode(e)
            task_index = (
                ep["task_index"].reshape(n).astype(np.int64)
                if "task_index" in lowdim
                else np.zeros(n, np.int64)
            )
            if task_index.min() < 0 or task_index.max() >= len(tasks):
                raise ValueError(
                    f"episode {e}: task_index outside 0..{len(tasks) - 1} (the 'tasks' attribute)"
                )
            values = {lr[k]: ep[k] for k in lowdim if k != "task_index"}
            values.update(
                {
                    "timestamp": (np.arange(n) / fps).astype(np.float32),
                    "frame_index": np.arange(n, dtype=np.int64),
                    "episode_index": np.full(n, e, np.int64),
                    "index": np.arange(sl.start, sl.stop, dtype=np.int64),
                    "task_index": task_index,
                }
            )
            cols = {name: _arrow_column(v, features[name]["shape"]) for name, v in values.items()}
            table = pa.table(cols)
            if data_tables and data_bytes + table.nbytes >= opts.data_files_size_in_mb * 2**20:
                _write_data(tmp, data_chunk, data_file, data_tables)
                data_chunk, data_file = _next_file(data_chunk, data_file, opts.chunks_size)
                data_tables, data_bytes = [], 0
            data_tables.append(table)
            data_bytes += table.nbytes
            row: dict[str, Any] = {
                "episode_index": e,
                "tasks": [tasks[i] for i in sorted(set(task_index.tolist()))],
                "length": n,
                "data/chunk_index": data_chunk,
                "data/file_index": data_file,
                "dataset_from_index": sl.start,
                "dataset_to_index": sl.stop,
            }
            for k in cameras:
                row.update(writers[k].add_episode(ep[k]))
                image_stats[k].update(ep[k])
                st = _ImageStats()
                st.update(ep[k])
                for s, v in st.result(n).items():
                    row[f"stats/{lr[k]}/{s}"] = v.reshape(-1).tolist() if s != "count" else v.tolist()
            for name, v in values.items():
                all_values.setdefault(name, []).append(v)
                for s, st in _lowdim_stats(v).items():
                    row[f"stats/{name}/{s}"] = st.tolist()
            row["meta/episodes/chunk_index"] = 0
            row["meta/episodes/file_index"] = 0
            ep_rows.append(row)
        _write_data(tmp, data_chunk, data_file, data_tables)
        for w in writers.values():
            w.close()
        for k in cameras:
            features[lr[k]]["info"] = _video_info(
                tmp / VIDEO_PATH.format(video_key=lr[k], chunk_index=0, file_index=0)
            )
        _write_parquet(tmp / EPISODES_PATH.format(chunk_index=0, file_index=0), pa.Table.from_pylist(ep_rows))
        _write_parquet(tmp / "meta" / "tasks.parquet", _tasks_table(tasks))
        stats: dict[str, Any] = {
            name: {s: v.tolist() for s, v in _lowdim_stats(np.concatenate(vs)).items()}
            for name, vs in all_values.items()
        }
        for k in cameras:
            stats[lr[k]] = {s: v.tolist() for s, v in image_stats[k].result(store.n_frames).items()}
        atomic_write_json(tmp / "meta" / "stats.json", stats)
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type or a.get("robot_type"),
            "total_episodes": store.n_episodes,
            "total_frames": store.n_frames,
            "total_tasks": len(tasks),
            "chunks_size": opts.chunks_size,
            "data_files_size_in_mb": opts.data_files_size_in_mb,
            "video_files_size_in_mb": opts.video_files_size_in_mb,
            "fps": fps,
            "splits": {"train": f"0:{store.n_episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if cameras else None,
            "features": features,
        }
        atomic_write_json(tmp / "meta" / "info.json", info)
        if out.exists():  # overwrite=True
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        for w in writers.values():  # after an error: close without flushing (the folder is discarded)
            w.discard()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_parquet(path: Path, table: pa.Table) -> None:
    """Write ``table`` atomically (snappy, as LeRobot does)."""
    with atomic_path(path) as p:
        pq.write_table(table, p, compression="snappy")


def _tasks_table(tasks: list[str]) -> pa.Table:
    """``meta/tasks.parquet`` as pandas writes LeRobot's DataFrame: task_index, the text as the index."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), TASK_INDEX_COLUMN: tasks})
    pandas_meta = {
        "index_columns": [TASK_INDEX_COLUMN],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": TASK_INDEX_COLUMN,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})


def _write_data(root: Path, chunk: int, file: int, tables: list[pa.Table]) -> None:
    _write_parquet(root / DATA_PATH.format(chunk_index=chunk, file_index=file), pa.concat_tables(tables))


# ---------------------------------------------------------------------------------------------- command
@user_errors
def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m s2_policy.data.lerobot {import,export} ...`` (see ``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m s2_policy.data.lerobot",
        description="Convert between LeRobotDataset folders (v3.0; import also v2.1/v2.0) and zarr "
        "replay stores.",
        epilog="Key mapping: observation.images.<cam> <-> <cam>, observation.state <-> state, "
        "action <-> action; other observation.<x> <-> <x>.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser(
        "import",
        help="LeRobotDataset folder (v3.0, v2.1, v2.0) -> zarr store",
        description="Import a local LeRobotDataset folder (v3.0, v2.1 or v2.0) into a zarr replay store "
        "(resumable: rerun the same command after an interruption).",
    )
    pi.add_argument("src", type=Path, help="LeRobotDataset folder (holds meta/info.json)")
    pi.add_argument("out", type=Path, help="output store directory, e.g. datasets/pusht.zarr")
    pi.add_argument("--drop", default="", help="comma-separated LeRobot features to leave out")
    pi.add_argument(
        "--tolerance-s",
        type=float,
        default=1e-4,
        help="max distance between a frame's timestamp and the decoded video frame (default 1e-4 s)",
    )
    pi.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    pe = sub.add_parser(
        "export",
        help="zarr store -> LeRobotDataset v3.0 folder",
        description="Export a zarr replay store as a LeRobotDataset v3.0 folder that LeRobot's loader reads.",
    )
    pe.add_argument("store", type=Path, help="store directory")
    pe.add_argument("out", type=Path, help="output folder (created; must not exist unless --overwrite)")
    pe.add_argument("--task", help="task text for every frame (default: the store's tasks or env_id)")
    pe.add_argument("--fps", type=int, help="frame rate (default: the store's fps or control_hz attribute)")
    pe.add_argument("--robot-type", help="robot_type recorded in info.json")
    pe.add_argument(
        "--vcodec", default="libsvtav1", help="video encoder: libsvtav1 (AV1, default) or libx264"
    )
    pe.add_argument("--crf", type=int, default=23, help="video quality, lower is better (default 23)")
    pe.add_argument("--gop", type=int, default=2, help="keyframe interval in frames (default 2)")
    pe.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    a = p.parse_args(argv)
    if a.command == "import":
        store = import_lerobot(
            a.src,
            a.out,
            drop=[x for x in a.drop.split(",") if x],
            tolerance_s=a.tolerance_s,
            overwrite=a.overwrite,
        )
        print(
            f"wrote {store.path}: {store.n_episodes} episodes, {store.n_frames} frames, keys {store.keys()}"
        )
    else:
        out = export_lerobot(
            a.store,
            a.out,
            task=a.task,
            fps=a.fps,
            robot_type=a.robot_type,
            options=ExportOptions(vcodec=a.vcodec, crf=a.crf, gop=a.gop),
            overwrite=a.overwrite,
        )
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
