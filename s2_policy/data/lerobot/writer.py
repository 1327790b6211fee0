"""Export: a replay store as a LeRobotDataset v3.0 folder (data and episode parquet files, ``stats.json``,
one mp4 per camera) that LeRobot's loader reads (:func:`export_lerobot`)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from s2_policy.atomic import atomic_path, atomic_write_json
from s2_policy.data.lerobot.meta import (
    BOOKKEEPING,
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_FEATURES,
    EPISODES_PATH,
    NUMERIC_DTYPES,
    TASK_INDEX_COLUMN,
    VIDEO_PATH,
    _next_file,
    lerobot_key,
)
from s2_policy.data.lerobot.video import ExportOptions, _video_info, _VideoWriter
from s2_policy.data.store import ReplayStore, is_image_array

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


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
