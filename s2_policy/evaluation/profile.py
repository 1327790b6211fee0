"""Encoder cost figures for result files: FLOPs per control step (torch flop counter) and latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from envs.spec import TaskSpec, make_env


def encoder_profile(encoder: torch.nn.Module, image_sizes: Mapping[str, Sequence[int]], repeats: int = 10,
                    warmup: int = 2) -> dict[str, Any]:
    """FLOPs and median latency of encoding ONE control step (one frame of every camera, one backbone call).

    ``image_sizes`` maps camera name -> (h, w) of the env images. FLOPs come from
    ``torch.utils.flop_counter`` (matmuls/convs, counted as 2 per multiply-add).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    imgs = [torch.randint(0, 256, (1, int(h), int(w), 3), dtype=torch.uint8) for h, w in image_sizes.values()]
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            encoder.encode_cameras(imgs)
        flops = int(counter.get_total_flops())
        for _ in range(warmup):
            encoder.encode_cameras(imgs)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            encoder.encode_cameras(imgs)
            times.append(time.perf_counter() - t)
    return {"flops_per_step": flops, "flops_per_image": flops // len(imgs), "n_cameras": len(imgs),
            "latency_ms_median": 1000 * statistics.median(times), "threads": torch.get_num_threads()}


def task_image_sizes(task: TaskSpec) -> dict[str, tuple[int, int]]:
    """(h, w) of each camera of a task: the spec's sizes, else what its env observes."""
    sizes = task.image_sizes()
    if all(v is not None for v in sizes.values()):
        return sizes  # type: ignore[return-value]
    env = make_env(task)
    try:
        return {c: tuple(env.observation_space[c].shape[:2]) for c in task.camera_names}
    finally:
        env.close()
