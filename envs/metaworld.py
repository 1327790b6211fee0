"""MetaWorld (v3) tasks as project tasks: scenes picked from the reset seed, state a real robot measures.

MetaWorld's ``Meta-World/MT1`` draws a pool of 50 scenes ("tasks": object and goal positions) from its
construction seed and then picks one at random on every reset, ignoring ``reset(seed=...)``: which scene an
episode gets depends on the episodes before it, and two seeds can give the same scene. :class:`MetaWorldEnv`
makes the scene a function of the reset seed alone, using MT1's own pools::

    scene(seed) = metaworld.MT1(env_name, seed=seed // 50).train_tasks[seed % 50]

so every block of 50 consecutive seeds is one MT1 pool. Seeds in different blocks come from independent
pools (continuous random positions: distinct scenes); the task's seed plan sets ``seeds.scene_pool: 50`` so
that demonstration, selection and test seeds never share a block (``envs.spec.SeedPlan``).

Observation: ``hand_pos`` (3, m), ``gripper`` (1, finger opening as MetaWorld measures it) and the full
39-dim MetaWorld vector ``metaworld_obs`` (object poses and goal: privileged, for the scripted experts, not
for the policy's state). Images come from ``render()``: MetaWorld's corner cameras are rolled 180 degrees, so
the task's camera spec turns them upright (``flip: both``). More cameras (``extra_cameras``, e.g. the
gripper view ``gripperPOV``) are rendered into the observation under their own names, as a robot with several
cameras delivers them.
``info["success"]`` is MetaWorld's success flag; episodes end on success with ``terminate_on_success``.
Requires the ``metaworld`` extra (``pip install -e ".[dev,robomimic,metaworld]"``, mujoco 3.3.0).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache
from importlib.metadata import version
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from envs.base import load_triton_before_gl, offscreen_renderer

try:
    import metaworld
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    from metaworld.policies import ENV_POLICY_MAP
except ImportError as e:  # the optional extra is missing
    raise ImportError(f"MetaWorld tasks need the metaworld extra ({e}); install it with "
                      "pip install mujoco==3.3.0 && pip install -e \".[dev,robomimic,metaworld]\"") from e

ENV_ID = "s2_policy/MetaWorld-v0"
SCENE_POOL = 50  # MT1's pool size (metaworld._N_GOALS)
MAX_PATH_LENGTH = 500  # MetaWorld raises on a step past this
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")


@lru_cache(maxsize=4)
def _pool(env_name: str, block: int) -> tuple[Any, ...]:
    """MT1's 50 scenes for construction seed ``block`` (about 1 s to build; cached per process)."""
    return tuple(metaworld.MT1(env_name, seed=block).train_tasks)


def scene_of(seed: int) -> tuple[int, int]:
    """``(block, index)``: seed ``s`` plays scene ``index`` of the MT1 pool built with seed ``block``."""
    if seed < 0:
        raise ValueError(f"MetaWorld scenes need a seed >= 0, got {seed}")
    return divmod(int(seed), SCENE_POOL)


class MetaWorldEnv(gym.Env):
    """One MetaWorld v3 task whose scene is picked by the reset seed (see the module docstring).

    Args:
        env_name: a MetaWorld v3 name, e.g. ``assembly-v3``.
        camera_name: the camera ``render()`` uses (one of :data:`CAMERAS`).
        width, height: rendered image size in pixels.
        render_mode: ``rgb_array`` (the default) or ``None`` (no images).
        terminate_on_success: end the episode on the first successful step.
        extra_cameras: more cameras (from :data:`CAMERAS`) rendered into every observation as uint8
            ``(height, width, 3)`` images under their own names, whatever ``render_mode`` is.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}  # frame_skip 5 x 2.5 ms

    def __init__(self, env_name: str, camera_name: str = "corner", width: int = 128, height: int = 128,
                 render_mode: str | None = "rgb_array", terminate_on_success: bool = True,
                 extra_cameras: Sequence[str] = ()) -> None:
        if env_name not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"{env_name!r} is not a MetaWorld v3 task; known: {sorted(ALL_V3_ENVIRONMENTS)}")
        if camera_name not in CAMERAS:
            raise ValueError(f"camera_name={camera_name!r} is not a MetaWorld camera; use one of {CAMERAS}")
        extra_cameras = tuple(extra_cameras)
        for cam in extra_cameras:
            if cam not in CAMERAS or cam == camera_name or extra_cameras.count(cam) > 1:
                raise ValueError(f"extra_cameras has {cam!r}: each must be a MetaWorld camera ({CAMERAS}), "
                                 f"named once and not the render camera {camera_name!r}")
        self.env_name = env_name
        self.render_mode = render_mode
        self.terminate_on_success = terminate_on_success
        if render_mode is not None or extra_cameras:
            load_triton_before_gl()  # MetaWorld's renderer opens a GL context too (envs.base: why)
        self._env = ALL_V3_ENVIRONMENTS[env_name](render_mode=render_mode, camera_name=camera_name,
                                                  width=width, height=height)
        # Shadows, multisampling and reflections off before the renderer's context exists: each frame renders
        # ~10x faster on a CPU (llvmpipe; 128 px: ~240 ms -> ~25 ms). The images lose shadows, not content.
        model = self._env.model
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        model.mat_reflectance[:] = 0.0
        self.action_space = self._env.action_space
        self.observation_space = spaces.Dict({
            "hand_pos": spaces.Box(-np.inf, np.inf, (3,), np.float64),
            "gripper": spaces.Box(-np.inf, np.inf, (1,), np.float64),
            "metaworld_obs": spaces.Box(-np.inf, np.inf, self._env.observation_space.shape, np.float64),
            **{cam: spaces.Box(0, 255, (height, width, 3), np.uint8) for cam in extra_cameras},
        })
        self.extra_cameras = extra_cameras
        self._size = (height, width)
        self._renderer: mujoco.Renderer | None = None  # made on first use: it opens a GL context
        self.last_obs: np.ndarray | None = None
        self.scene: tuple[int, int] | None = None

    def _obs(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        self.last_obs = raw
        obs = {"hand_pos": raw[:3].copy(), "gripper": raw[3:4].copy(), "metaworld_obs": raw}
        if self.extra_cameras:
            if self._renderer is None:
                self._renderer = offscreen_renderer(self._env.model, *self._size)
            for cam in self.extra_cameras:
                self._renderer.update_scene(self._env.data, camera=cam)
                obs[cam] = self._renderer.render().copy()
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Play scene :func:`scene_of` ``(seed)``; without a seed, a random one from the env's generator."""
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        self.scene = scene_of(seed)
        block, index = self.scene
        self._env.set_task(_pool(self.env_name, block)[index])
        raw, info = self._env.reset()
        return self._obs(raw), {**info, "scene": self.scene}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        raw, reward, _, truncated, info = self._env.step(np.asarray(action, np.float32))
        terminated = self.terminate_on_success and bool(info["success"])
        return self._obs(raw), float(reward), terminated, bool(truncated), info

    def render(self) -> np.ndarray | None:
        """The camera image as MetaWorld renders it: uint8 (height, width, 3), rotated 180 degrees."""
        return self._env.render()

    def scene_vector(self) -> np.ndarray:
        """The scene's object/goal positions (MetaWorld's ``rand_vec``): equal vectors, equal scenes."""
        return np.array(self._env._last_rand_vec, copy=True)

    def env_fingerprint(self) -> str:
        """Identifies the simulation (stores compare it when resuming a collection)."""
        return (f"metaworld-{version('metaworld')}-mujoco-{version('mujoco')}-{self.env_name}"
                f"-scene_pool{SCENE_POOL}")

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()  # frees the EGL renderer (left open it logs EGLError tracebacks at exit)


class MetaWorldExpert:
    """MetaWorld's scripted policy for the env's task (``Sawyer<Task>V3Policy``), on the raw 39-dim obs."""

    def __init__(self, env: gym.Env) -> None:
        inner = env.unwrapped
        if not isinstance(inner, MetaWorldEnv):
            raise ValueError(f"envs.metaworld:make_expert needs a {ENV_ID} env, got {type(inner).__name__}")
        if inner.env_name not in ENV_POLICY_MAP:
            raise ValueError(f"MetaWorld has no scripted policy for {inner.env_name!r}")
        self.env = inner
        self.policy = ENV_POLICY_MAP[inner.env_name]()

    def reset(self, seed: int | None = None) -> None:
        """Nothing to reset: the scripted policies are deterministic functions of the observation."""

    def act(self, obs: Any) -> np.ndarray:
        """The action for the env's current raw observation (``obs``, the task's view, lacks objects)."""
        with warnings.catch_warnings():  # every policy warns that its gains exceed the [-1, 1] action box
            warnings.filterwarnings("ignore", message="Constant", category=UserWarning)
            action = self.policy.get_action(self.env.last_obs)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def make_expert(env: gym.Env) -> MetaWorldExpert:
    """The expert factory for ``demos.expert: envs.metaworld:make_expert``."""
    return MetaWorldExpert(env)


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point="envs.metaworld:MetaWorldEnv", max_episode_steps=MAX_PATH_LENGTH)
