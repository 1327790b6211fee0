"""Import: a LeRobotDataset folder (v3.0, v2.1 or v2.0) into a new replay store, resumable
(:func:`import_lerobot`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from s2_policy.data.lerobot.meta import (
    BOOKKEEPING,
    NUMERIC_DTYPES,
    LeRobotInfo,
    _Episode,
    _read_episodes,
    _read_tasks,
    read_info,
    store_key,
)
from s2_policy.data.lerobot.video import _check_decodable, _VideoCursor
from s2_policy.data.store import ReplayStore, resume_conversion

WRITER = "s2_policy.data.lerobot"


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
