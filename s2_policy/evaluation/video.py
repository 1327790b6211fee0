"""mp4 writing for rollout videos (imageio + ffmpeg), atomic."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from s2_policy.atomic import atomic_path


def tile_cameras(obs: Mapping[str, np.ndarray], cameras: Sequence[str], height: int = 128) -> np.ndarray:
    """Side-by-side uint8 frame of several camera images, each resized (nearest) to ``height`` rows."""
    frames = []
    for c in cameras:
        img = np.asarray(obs[c])
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"camera {c!r}: expected an (H, W, 3) image, got shape {img.shape}")
        h, w = img.shape[:2]
        rows = (np.arange(height) * h // height)
        cols = (np.arange(max(1, w * height // h)) * w // max(1, w * height // h))
        frames.append(img[rows][:, cols])
    return np.concatenate(frames, axis=1).astype(np.uint8)


def write_mp4(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 10.0) -> Path:
    """Write ``frames`` (uint8 ``(H, W, 3)``) to ``path`` via a temp file and ``os.replace``."""
    path = Path(path)
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    # even sizes: yuv420p (the widely playable pixel format) needs them
    h, w = (s - s % 2 for s in frames[0].shape[:2])
    with atomic_path(path) as tmp, imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1,
                                                      pixelformat="yuv420p") as wr:
        for f in frames:
            wr.append_data(np.ascontiguousarray(f[:h, :w]))
    return path
