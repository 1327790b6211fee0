"""MuJoCo manipulation tasks (gymnasium) with cameras and scripted experts.

Importing this package registers ``s2_policy/PickCube-v0``, ``s2_policy/PlaceCube-v0`` and
``s2_policy/PickMarkedCube-v0`` and makes ``MUJOCO_GL`` default to ``egl`` (offscreen rendering without a
display; must happen before ``mujoco`` is imported).
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import gymnasium as gym  # noqa: E402

from envs.base import CAMERAS, ManipulationEnv, resolve_image_sizes  # noqa: E402
from envs.experts import make_expert  # noqa: E402
from envs.tasks import PickCubeEnv, PickMarkedCubeEnv, PlaceCubeEnv  # noqa: E402

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
for _name, _id in TASKS.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_ENTRY_POINTS[_name], max_episode_steps=MAX_EPISODE_STEPS[_name])

__all__ = [
    "CAMERAS",
    "MAX_EPISODE_STEPS",
    "TASKS",
    "ManipulationEnv",
    "PickCubeEnv",
    "PickMarkedCubeEnv",
    "PlaceCubeEnv",
    "make_expert",
    "resolve_image_sizes",
]
