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

The package: ``meta`` (format constants, key mapping, ``meta/info.json``, tasks, episodes), ``reader``
(import), ``writer`` (export), ``video`` (decoding, the encoder settings :class:`ExportOptions` and the mp4
writer) and ``__main__`` (the command line).
"""

from __future__ import annotations

try:  # checked once here; the modules below import these at their top
    import av  # noqa: F401
    import pyarrow  # noqa: F401
    import pyarrow.compute  # noqa: F401
    import pyarrow.parquet  # noqa: F401
except ImportError as e:  # the optional 'lerobot' extra
    raise ImportError(
        f"s2_policy.data.lerobot needs pyarrow and PyAV ({e.name} is missing): pip install -e '.[lerobot]'"
    ) from e

from s2_policy.data.lerobot.meta import CODEBASE_VERSION, LeRobotInfo, lerobot_key, read_info, store_key
from s2_policy.data.lerobot.reader import import_lerobot
from s2_policy.data.lerobot.video import ExportOptions
from s2_policy.data.lerobot.writer import export_lerobot

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
