"""Task ids, their registration with gymnasium, and building an env from a ``configs/task/*.yaml`` mapping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym

TASKS: dict[str, str] = {
    "pick_cube": "s2_policy/PickCube-v0",
    "place_cube": "s2_policy/PlaceCube-v0",
    "pick_marked_cube": "s2_policy/PickMarkedCube-v0",
}
MAX_EPISODE_STEPS: dict[str, int] = {"pick_cube": 60, "place_cube": 100, "pick_marked_cube": 70}
_ENTRY_POINTS = {
    "pick_cube": "envs.tasks:PickCubeEnv",
    "place_cube": "envs.tasks:PlaceCubeEnv",
    "pick_marked_cube": "envs.tasks:PickMarkedCubeEnv",
}


def register_tasks() -> None:
    """Register every task id (idempotent)."""
    for name, env_id in TASKS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id, entry_point=_ENTRY_POINTS[name], max_episode_steps=MAX_EPISODE_STEPS[name]
            )


def _plain(cfg: Any) -> dict[str, Any]:
    """A task config (dict or omegaconf DictConfig) as a plain, resolved dict."""
    if hasattr(cfg, "_metadata"):  # omegaconf containers, without importing omegaconf for plain dicts
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if not isinstance(cfg, Mapping):
        raise ValueError(f"task config must be a mapping (configs/task/*.yaml), got {type(cfg).__name__}")
    return dict(cfg)


def make_env(task_cfg: Any, **overrides: Any) -> gym.Env:
    """``gym.make`` for a task config: ``env_id``, ``cameras``, ``max_episode_steps`` and ``env_kwargs``.

    ``overrides`` replace env kwargs (e.g. ``render_mode="rgb_array"``, ``image_size=448``).
    """
    cfg = _plain(task_cfg)
    missing = [k for k in ("env_id", "cameras") if k not in cfg]
    if missing:
        raise ValueError(f"task config lacks {missing}; see configs/task/pick_cube.yaml for the fields")
    kwargs: dict[str, Any] = {"cameras": tuple(cfg["cameras"]), **dict(cfg.get("env_kwargs") or {})}
    if cfg.get("max_episode_steps") is not None:
        kwargs["max_episode_steps"] = int(cfg["max_episode_steps"])
    kwargs.update(overrides)
    return gym.make(cfg["env_id"], **kwargs)
