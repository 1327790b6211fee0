"""MuJoCo manipulation tasks (gymnasium) with cameras and scripted experts.

Importing this package registers ``s2_policy/PickCube-v0``, ``s2_policy/PlaceCube-v0`` and
``s2_policy/PickMarkedCube-v0`` and makes ``MUJOCO_GL`` default to ``egl`` (offscreen rendering without a
display; must happen before ``mujoco`` is imported).
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from envs.base import CAMERAS, ManipulationEnv, resolve_image_sizes  # noqa: E402
from envs.experts import make_expert  # noqa: E402
from envs.registry import MAX_EPISODE_STEPS, TASKS, register_tasks  # noqa: E402
from envs.spec import TaskSpec, make_env, register_schema  # noqa: E402
from envs.tasks import PickCubeEnv, PickMarkedCubeEnv, PlaceCubeEnv  # noqa: E402

register_tasks()
register_schema()

__all__ = [
    "CAMERAS",
    "MAX_EPISODE_STEPS",
    "TASKS",
    "ManipulationEnv",
    "PickCubeEnv",
    "PickMarkedCubeEnv",
    "PlaceCubeEnv",
    "TaskSpec",
    "make_env",
    "make_expert",
    "register_schema",
    "register_tasks",
    "resolve_image_sizes",
]
