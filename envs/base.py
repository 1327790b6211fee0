"""Base gymnasium environment: a mocap-driven parallel-jaw gripper on a table, rendered offscreen by MuJoCo.

Tasks subclass :class:`ManipulationEnv` and provide an MJCF file, object randomisation and a success test.
The robot is the same in every task, so observations and actions have the same meaning everywhere:

* action (float32, 4): end-effector delta ``(dx, dy, dz)`` in ``[-1, 1]`` scaled by ``max_step`` metres,
  then the gripper command (-1 fully open, +1 closed). Moves are applied to the mocap target (clipped to the
  workspace) and interpolated over the physics substeps so contacts stay gentle.
* observation: one uint8 ``(H, W, 3)`` image per camera plus float32 ``state`` = measured end-effector
  position (3) and gripper opening in metres (1) — nothing a real robot could not measure.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium import spaces  # noqa: E402

from envs.spec import parse_image_size  # noqa: E402

ASSETS = Path(__file__).resolve().parent / "assets"
CAMERAS: tuple[str, ...] = ("front", "wrist")
DEFAULT_IMAGE_SIZE = 128

ImageSize = int | tuple[int, int] | Sequence[int]


def load_triton_before_gl() -> None:
    """Import triton (if installed) before the first GL context.

    Mesa's llvmpipe (the CPU renderer behind EGL here) loads LLVM; triton ships its own LLVM, and loading it
    *after* llvmpipe segfaults the process (e.g. ``import torchvision`` or ``torch.compile`` after the first
    render). Loaded first, both coexist.
    """
    gl = os.environ.get("MUJOCO_GL", "egl")
    if gl in ("egl", "osmesa") and "triton" not in sys.modules and importlib.util.find_spec("triton"):
        importlib.import_module("triton")


def offscreen_renderer(model: mujoco.MjModel, height: int, width: int) -> mujoco.Renderer:
    """A ``mujoco.Renderer`` for ``model``; a failed GL context raises an error that says how to fix it."""
    load_triton_before_gl()
    try:
        return mujoco.Renderer(model, height=height, width=width)
    except Exception as e:  # mujoco raises FatalError / GLFW errors without a hint
        backend = getattr(getattr(mujoco, "GLContext", None), "__module__", "none")
        raise RuntimeError(
            f"could not create an offscreen OpenGL context with backend {backend!r} (chosen from "
            "MUJOCO_GL when mujoco was first imported): set MUJOCO_GL=egl in the environment or "
            "import envs before mujoco, and check that libEGL (Mesa) is installed"
        ) from e


def resolve_image_sizes(
    cameras: Sequence[str], image_size: ImageSize | Mapping[str, ImageSize]
) -> dict[str, tuple[int, int]]:
    """Validate camera names and map each camera to its (h, w); raises ValueError naming the problem."""
    if isinstance(cameras, str):
        raise ValueError(f"cameras must be a sequence of names, e.g. ({cameras!r},), not a string")
    cams = list(cameras)
    unknown = [c for c in cams if c not in CAMERAS]
    if unknown:
        raise ValueError(f"unknown camera(s) {unknown}; available cameras: {list(CAMERAS)}")
    if len(set(cams)) != len(cams):
        raise ValueError(f"cameras must be distinct, got {cams}")
    if isinstance(image_size, Mapping):
        extra = sorted(set(image_size) - set(cams))
        missing = [c for c in cams if c not in image_size]
        if extra or missing:
            raise ValueError(
                f"image_size mapping must name exactly the cameras {cams}: missing {missing}, unused {extra}"
            )
        return {c: parse_image_size(image_size[c], f"image size of camera {c!r}") for c in cams}
    return {c: parse_image_size(image_size, f"image size of camera {c!r}") for c in cams}


class ManipulationEnv(gym.Env):
    """Gripper-on-a-table task base. Subclasses set ``xml_file`` and implement the task hooks."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    xml_file: ClassVar[str]
    control_hz: ClassVar[int] = 10
    max_step: ClassVar[float] = 0.01  # metres per control step at |action| = 1
    max_finger: ClassVar[float] = 0.05  # half-opening of the open gripper (m): 10 cm between the pads
    workspace_low: ClassVar[np.ndarray] = np.array([-0.2, -0.2, 0.012])
    workspace_high: ClassVar[np.ndarray] = np.array([0.2, 0.2, 0.25])
    home: ClassVar[np.ndarray] = np.array([0.0, 0.0, 0.15])
    action_meaning: ClassVar[list[str]] = ["dx", "dy", "dz", "gripper (-1 open, +1 closed)"]
    state_meaning: ClassVar[list[str]] = ["ee_x", "ee_y", "ee_z", "gripper_opening_m"]

    def __init__(
        self,
        cameras: Sequence[str] = CAMERAS,
        image_size: ImageSize | Mapping[str, ImageSize] = DEFAULT_IMAGE_SIZE,
        terminate_on_success: bool = True,
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.image_sizes = resolve_image_sizes(cameras, image_size)
        self.cameras = tuple(self.image_sizes)
        self.terminate_on_success = bool(terminate_on_success)
        self.render_mode = render_mode

        self.model = mujoco.MjModel.from_xml_path(str(ASSETS / self.xml_file))
        self.data = mujoco.MjData(self.model)
        self.n_substeps = round(1.0 / (self.control_hz * self.model.opt.timestep))
        biggest = max([max(hw) for hw in self.image_sizes.values()], default=1)
        self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, biggest)
        self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, biggest)
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}

        self._ee_site = self.model.site("ee").id
        self._finger_qpos = [self.model.joint(f"finger_{s}").qposadr[0] for s in ("left", "right")]
        self._gripper_qpos = self.model.joint("gripper").qposadr[0]
        self._mocap = self.model.body("target").mocapid[0]
        self._target = self.home.copy()

        self.action_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        obs_spaces: dict[str, spaces.Space] = {
            cam: spaces.Box(0, 255, shape=(h, w, 3), dtype=np.uint8)
            for cam, (h, w) in self.image_sizes.items()
        }
        # state bounds: the weld keeps the hand near the (clipped) target; fingers open at most 2 * max_finger
        obs_spaces["state"] = spaces.Box(
            low=np.array([-0.5, -0.5, -0.1, 0.0], np.float32),
            high=np.array([0.5, 0.5, 0.5, 0.12], np.float32),
            dtype=np.float32,
        )
        self.observation_space = spaces.Dict(obs_spaces)

    # ----------------------------------------------------------------------------------------- task hooks
    def _randomize(self, rng: np.random.Generator) -> None:
        """Place the task's objects (called after the simulator reset, before physics settles)."""
        raise NotImplementedError

    def _is_success(self) -> bool:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        start = self.home + self.np_random.uniform(-1, 1, 3) * np.array([0.02, 0.02, 0.01])
        self._target = start
        self.data.mocap_pos[self._mocap] = start
        self.data.qpos[self._gripper_qpos : self._gripper_qpos + 3] = start
        for adr in self._finger_qpos:
            self.data.qpos[adr] = self.max_finger
        self.data.ctrl[:] = self.max_finger
        self._randomize(self.np_random)
        mujoco.mj_forward(self.model, self.data)
        for _ in range(self.n_substeps // 2):  # let contacts settle
            mujoco.mj_step(self.model, self.data)
        return self._observation(), {"is_success": self._is_success()}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(
                f"action must have shape {self.action_space.shape} (dx, dy, dz, gripper), got {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf: {a}")
        a = np.clip(a, -1.0, 1.0)
        start = self._target
        goal = np.clip(start + a[:3] * self.max_step, self.workspace_low, self.workspace_high)
        self.data.ctrl[:] = self.max_finger * (1.0 - a[3]) / 2.0
        for i in range(self.n_substeps):  # the target moves during the first half of the substeps
            frac = min(1.0, 2.0 * (i + 1) / self.n_substeps)
            self.data.mocap_pos[self._mocap] = start + (goal - start) * frac
            mujoco.mj_step(self.model, self.data)
        self._target = goal
        success = self._is_success()
        terminated = success and self.terminate_on_success
        return self._observation(), float(success), terminated, False, {"is_success": success}

    def render(self) -> np.ndarray | None:
        """All cameras side by side (shorter images zero-padded at the bottom), for videos."""
        if self.render_mode is None or not self.cameras:
            return None
        imgs = [self.render_camera(c) for c in self.cameras]
        height = max(im.shape[0] for im in imgs)
        padded = [np.pad(im, ((0, height - im.shape[0]), (0, 0), (0, 0))) for im in imgs]
        return np.concatenate(padded, axis=1)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    # ----------------------------------------------------------------------------------------- helpers
    def render_camera(self, camera: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """Upright uint8 (H, W, 3) image of one camera (``mujoco.Renderer`` flips GL's bottom-up rows)."""
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; available cameras: {list(CAMERAS)}")
        hw = size if size is not None else self.image_sizes[camera]
        renderer = self._renderers.get(hw)
        if renderer is None:
            renderer = self._renderers[hw] = offscreen_renderer(self.model, *hw)
        renderer.update_scene(self.data, camera=camera)
        return renderer.render()

    def env_fingerprint(self) -> str:
        """Hash of what defines the task's physics and randomisation: MJCF files, class constants, task hooks.

        Demonstration stores record it so that data from an older version of a task is never mixed in.
        """
        h = hashlib.sha256()
        for name in ("common.xml", self.xml_file):
            h.update((ASSETS / name).read_bytes())
        cls = type(self)
        consts = {
            k: repr(getattr(cls, k))
            for k in dir(cls)
            if not k.startswith("_") and isinstance(getattr(cls, k), (int, float, str, np.ndarray))
        }
        h.update(repr(sorted(consts.items())).encode())
        for hook in (cls._randomize, cls._is_success, ManipulationEnv.step, ManipulationEnv.reset):
            h.update(inspect.getsource(hook).encode())
        return h.hexdigest()[:16]

    def ee_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._ee_site].copy()

    def gripper_opening(self) -> float:
        """Distance between the finger pads (m)."""
        return float(sum(self.data.qpos[adr] for adr in self._finger_qpos))

    def body_pos(self, name: str) -> np.ndarray:
        return self.data.body(name).xpos.copy()

    def _place_free_body(self, joint: str, pos: np.ndarray, yaw: float) -> None:
        adr = self.model.joint(joint).qposadr[0]
        self.data.qpos[adr : adr + 3] = pos
        self.data.qpos[adr + 3 : adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    def _state(self) -> np.ndarray:
        return np.concatenate([self.ee_pos(), [self.gripper_opening()]]).astype(np.float32)

    def _observation(self) -> dict[str, np.ndarray]:
        obs = {cam: self.render_camera(cam) for cam in self.cameras}
        obs["state"] = self._state()
        return obs
