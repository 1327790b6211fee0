"""The project's task ids and their registration with gymnasium."""

from __future__ import annotations

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
