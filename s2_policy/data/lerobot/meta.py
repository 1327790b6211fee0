"""LeRobotDataset metadata: format versions, path templates and the key mapping (described in the package
docstring, :mod:`s2_policy.data.lerobot`); reading ``meta/info.json``, the tasks and the episode index (v3.0
and v2.x)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

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


# ---------------------------------------------------------------------------------------------- chunked files
def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) index after ``(chunk, file)`` (LeRobot's update_chunk_file_indices)."""
    return (chunk + 1, 0) if file + 1 >= chunks_size else (chunk, file + 1)
