"""Test helper: the project's task specs from configs/task, shrunk for fast tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from envs.spec import TaskSpec

REPO = Path(__file__).resolve().parents[1]


def load_task(name: str = "pick_cube", size: int | list[int] | None = None, **dotted: Any) -> TaskSpec:
    """``configs/task/<name>.yaml`` as a TaskSpec; ``size`` sets every camera's image size; ``dotted`` keys
    (``"env.max_episode_steps"``) override fields."""
    cfg = OmegaConf.load(REPO / "configs" / "task" / f"{name}.yaml")
    cfg.pop("defaults", None)
    if size is not None:
        cfg.env.kwargs.image_size = size
        for cam in cfg.cameras:
            cfg.cameras[cam].size = [size, size] if isinstance(size, int) else list(size)
    for key, value in dotted.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return TaskSpec.from_config(cfg)
