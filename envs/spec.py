"""The typed task: one dataclass says everything the pipeline needs to know about a task.

A :class:`TaskSpec` names the gymnasium env (id, kwargs, modules that register it), where each camera's image
comes from (an observation key or ``render()``), the state/action/success keys, the episode limit and control
rate, where demonstrations come from (the task's scripted ``expert``, collected on demand, or an existing
``store`` that is only read) and a seed plan with disjoint demonstration, selection and test seeds. The
project's tasks, MetaWorld tasks and a user's own task are all instances (``configs/task/*.yaml``); nothing
else parses task dicts. :func:`make_env` is the one way to build a task's env: it wraps any gymnasium env so
that observations are ``{camera: uint8 (H, W, 3), "state": float32 (D,)}`` and ``info["is_success"]`` is set.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
from gymnasium import spaces
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

RENDER = "render"
DEMO_SOURCES = ("expert", "store")
FLIPS = ("none", "vertical", "horizontal", "both")
SEED_STRIDE = 1_000_000  # demo episode k of base seed s runs with env seed s * SEED_STRIDE + k
MAX_IMAGE_SIDE = 2048


def parse_image_size(value: Any, what: str = "image size") -> tuple[int, int]:
    """An image size as ``(h, w)``: an int (square) or a pair; the one parser every part uses."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        hw = (int(value), int(value))
    elif (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
          and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in value)):
        hw = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{what} must be an int or a [height, width] pair, got {value!r}")
    if not all(1 <= v <= MAX_IMAGE_SIDE for v in hw):
        raise ValueError(f"{what} {list(hw)} is impossible: each side must be 1..{MAX_IMAGE_SIDE} pixels")
    return hw


@dataclass
class CameraSpec:
    """One camera: where its image comes from, where it is stored, and its size.

    Args:
        obs_key: the env observation key holding the image (default: the camera's name), or ``"render"`` for
            ``env.render()`` (the env must be made with ``render_mode="rgb_array"``, e.g. in ``env.kwargs``).
        store_key: the array ``data/<store_key>`` in the demonstration store (default: the camera's name).
        size: ``[h, w]`` (or an int) of the images the policy sees. Rendered images are resized to it; an
            observation image of another size is an error. ``None``: whatever the env gives.
        flip: ``vertical`` / ``horizontal`` / ``both`` to turn images upright (MetaWorld's corner cameras are
            rolled 180 degrees: ``both``).
    """

    obs_key: str | None = None
    store_key: str | None = None
    size: Any = None
    flip: str = "none"


@dataclass
class EnvConfig:
    """How to build the task's gymnasium env.

    Args:
        id: a registered gymnasium id.
        kwargs: keyword arguments for ``gym.make``; only what the env accepts (the project's own tasks take
            ``cameras`` and ``image_size``; a plain gymnasium env takes none of them).
        import_modules: modules imported before ``gym.make`` (they register ``id``), in every worker.
        max_episode_steps: episode limit (``None``: the registration's own).
        control_hz: control rate (videos, the real-time loop).
        state_keys: observation keys concatenated into the policy's ``state``; ``[]`` for an env whose whole
            observation is the state vector (a Box space).
        success_key: the ``info`` key that says the episode succeeded.
    """

    id: str = "???"
    kwargs: dict[str, Any] = field(default_factory=dict)
    import_modules: list[str] = field(default_factory=list)
    max_episode_steps: int | None = None
    control_hz: float = 10.0
    state_keys: list[str] = field(default_factory=lambda: ["state"])
    success_key: str = "is_success"


@dataclass
class DemoSpec:
    """Where demonstrations come from.

    Args:
        source: ``expert`` (the task's scripted expert, collected on demand into ``path``) or ``store``
            (an existing store: only read and validated, never written).
        path: the zarr store (relative paths are relative to where the command is started).
        n_episodes: ``expert``: episodes to collect; ``store``: use the first ``n_episodes`` (``None``: all).
        expert: ``module:function`` that takes the env and returns an object with ``reset(seed)`` and
            ``act(obs) -> action`` (the project's tasks: ``envs.experts:make_expert``).
        state_key, action_key: the store arrays ``data/<key>`` holding the state and the actions.
        action_noise: ``expert`` only: Gaussian noise added to every executed action, its SD in units of the
            action space's half-range; the store keeps the expert's clean action as the label, so the
            demos visit states off the expert's path and show its correction from them (DART, Laskey et
            al. 2017). 0: the expert's own actions are executed.
    """

    source: str = "expert"
    path: str = "???"
    n_episodes: int | None = None
    expert: str = "envs.experts:make_expert"
    action_noise: float = 0.0
    state_key: str = "state"
    action_key: str = "action"


@dataclass
class SeedPlan:
    """Disjoint env seeds for demonstrations, selection (periodic rollouts, tuning) and the reported test.

    Demo episode ``k`` uses seed ``demo * 1_000_000 + k``; selection and test episodes ``i`` use
    ``selection + i`` and ``test + i``. ``span`` bounds each range (the most episodes any of them may use) so
    that disjointness is checked here, once, when the task is built; the store records the demo seeds it holds
    and every evaluating command refuses them.

    ``scene_pool``: for envs that draw scenes from shared pools (MetaWorld: seeds ``b * 50 .. b * 50 + 49``
    play the 50 scenes of one MT1 pool, so scene = f(seed // 50)), the pool size. Seeds in one block of
    ``scene_pool`` consecutive seeds may share scenes, seeds in different blocks do not; so the demo,
    selection and test bases must be multiples of it (no block spans two roles), and evaluation refuses every
    seed in a block that holds a demonstration seed, not only the demonstration seeds themselves.
    """

    demo: int = 0
    selection: int = 200_000
    test: int = 100_000
    span: int = 100_000
    scene_pool: int | None = None

    def block(self, seed: int) -> int:
        """The scene block of ``seed`` (``seed // scene_pool``; the seed itself without a scene pool)."""
        return int(seed) // self.scene_pool if self.scene_pool else int(seed)

    def ranges(self) -> dict[str, range]:
        """The seed range of each role."""
        start = self.demo * SEED_STRIDE
        return {"demo": range(start, start + self.span), "selection": range(self.selection,
                self.selection + self.span), "test": range(self.test, self.test + self.span)}

    def seeds(self, role: str, n: int) -> list[int]:
        """The first ``n`` seeds of ``role`` (``selection`` or ``test``)."""
        if role not in ("selection", "test"):
            raise ValueError(f"evaluation seeds come from 'selection' or 'test', not {role!r}")
        if not 1 <= n <= self.span:
            raise ValueError(f"asked for {n} {role} seeds; the seed plan allows 1..{self.span} (seeds.span)")
        return list(self.ranges()[role][:n])


@dataclass
class TaskSpec:
    """A task: env, cameras, demonstrations and seed plan (``configs/task/*.yaml``).

    ``env: null`` declares a task without a simulator (e.g. a store recorded on a real robot): training
    works, evaluation is off.
    """

    name: str = "???"
    env: EnvConfig | None = field(default_factory=EnvConfig)
    cameras: dict[str, CameraSpec] = field(default_factory=dict)
    demos: DemoSpec = field(default_factory=DemoSpec)
    seeds: SeedPlan = field(default_factory=SeedPlan)

    def __post_init__(self) -> None:
        self.validate()

    # -- validation --------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every value; raise ValueError naming the key and the fix."""
        def bad(key: str, msg: str) -> ValueError:
            return ValueError(f"task {self.name!r}: {key} {msg}")

        if not self.name or self.name == "???":
            raise ValueError("a task needs a name (task.name)")
        if not self.cameras:
            raise bad("cameras", "is empty; name at least one camera, e.g. cameras: "
                                 "{front: {size: [128, 128]}}")
        for cam, c in self.cameras.items():
            if c.flip not in FLIPS:
                raise bad(f"cameras.{cam}.flip", f"={c.flip!r} is not one of {FLIPS}")
            if c.size is not None:
                c.size = list(parse_image_size(c.size, f"cameras.{cam}.size"))
            if c.obs_key == RENDER and c.size is None:
                raise bad(f"cameras.{cam}.size", "is needed for a rendered camera (obs_key: render)")
        d = self.demos
        if d.source not in DEMO_SOURCES:
            raise bad("demos.source", f"={d.source!r} is not one of {DEMO_SOURCES}")
        if not d.path or d.path == "???":
            raise bad("demos.path", "is missing: the zarr store to read (source: store) or fill (expert)")
        if d.n_episodes is not None and d.n_episodes < 1:
            raise bad("demos.n_episodes", f"must be >= 1 or null, got {d.n_episodes}")
        if d.source == "expert":
            if self.env is None:
                raise bad("demos.source", "is 'expert' but the task has no env (env: null): use "
                          "source: store")
            if d.n_episodes is None:
                raise bad("demos.n_episodes", "is needed with source: expert (how many demos to collect)")
            if ":" not in d.expert:
                raise bad("demos.expert", f"={d.expert!r} must be 'module:function'")
        if not 0.0 <= d.action_noise < 1.0:
            raise bad("demos.action_noise", f"={d.action_noise} must be in [0, 1) (SD as a fraction of the "
                                            "action half-range), e.g. 0.1")
        if self.env is not None:
            e = self.env
            if not e.id or e.id == "???":
                raise bad("env.id", "is missing: a registered gymnasium id (or env: null for no simulator)")
            if e.max_episode_steps is not None and e.max_episode_steps < 1:
                raise bad("env.max_episode_steps", f"must be >= 1, got {e.max_episode_steps}")
            if e.control_hz <= 0:
                raise bad("env.control_hz", f"must be > 0, got {e.control_hz}")
        s = self.seeds
        if s.span < 1:
            raise bad("seeds.span", f"must be >= 1, got {s.span}")
        if s.scene_pool is not None:
            if s.scene_pool < 1:
                raise bad("seeds.scene_pool", f"must be >= 1 or null, got {s.scene_pool}")
            starts = {"demo": s.demo * SEED_STRIDE, "selection": s.selection, "test": s.test}
            off = {k: v for k, v in starts.items() if v % s.scene_pool}
            if off:
                raise bad("seeds", f"start seeds {off} are not multiples of seeds.scene_pool="
                          f"{s.scene_pool}, so a block of seeds sharing scenes would span two roles; round "
                          "them to multiples of it")
        r = s.ranges()
        for a, b in (("demo", "selection"), ("demo", "test"), ("selection", "test")):
            if r[a].start < r[b].stop and r[b].start < r[a].stop:
                raise bad("seeds", f"give overlapping {a} and {b} seeds ({r[a]} and {r[b]}); move "
                          f"seeds.{b} (or seeds.span) so that demonstration, selection and test seeds differ")

    # -- derived ------------------------------------------------------------------------------------------
    @property
    def camera_names(self) -> list[str]:
        return list(self.cameras)

    def store_key(self, camera: str) -> str:
        return self.cameras[camera].store_key or camera

    def image_sizes(self) -> dict[str, tuple[int, int] | None]:
        """``(h, w)`` of each camera (``None`` where the spec leaves it to the env)."""
        return {c: (tuple(s.size) if s.size is not None else None) for c, s in self.cameras.items()}

    @property
    def has_env(self) -> bool:
        return self.env is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (saved in checkpoints and results)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, cfg: Any) -> TaskSpec:
        """From a hydra node, a plain mapping or a TaskSpec; unknown keys and wrong types raise ValueError."""
        if isinstance(cfg, TaskSpec):
            return cfg
        if not isinstance(cfg, Mapping | DictConfig):
            raise ValueError("a task config must be a mapping (configs/task/*.yaml), got "
                             f"{type(cfg).__name__}")
        try:
            node = OmegaConf.merge(OmegaConf.structured(cls), cfg)
            spec = OmegaConf.to_object(node)
        except OmegaConfBaseException as e:
            name = cfg.get("name", "?") if isinstance(cfg, Mapping | DictConfig) else "?"
            raise ValueError(f"task {name!r}: {_short(e)}; see configs/task/pick_cube.yaml and "
                             "README 'Your own store and env' for the fields") from None
        assert isinstance(spec, TaskSpec)  # to_object of a TaskSpec node; for the type checker
        return spec


def _short(e: Exception) -> str:
    """OmegaConf's message in one line, prefixed with the key it concerns."""
    key = getattr(e, "full_key", None)
    return f"{key}: " * bool(key) + str(e).strip().splitlines()[0]


def _import_path(path: str) -> Callable[..., Any]:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import {path!r} ({e}); give 'module:function' of an importable "
                         "module") from e


class TaskObservation(gym.Wrapper):
    """Any gymnasium env as a task env: dict observations ``{camera: uint8 HxWx3, "state": float32}``.

    Cameras are read from observation keys or ``render()`` (resized to the spec's size and flipped upright),
    ``state`` concatenates the spec's state keys (or is the whole observation for a Box space), and
    ``info["is_success"]`` mirrors ``info[env.success_key]``. The raw observation stays in ``raw_obs`` for
    experts that need privileged state (e.g. MetaWorld's scripted policies).
    """

    def __init__(self, env: gym.Env, spec: TaskSpec) -> None:
        super().__init__(env)
        assert spec.env is not None  # make_env checks it
        self.task = spec
        self.raw_obs: Any = None
        inner = env.observation_space
        obs_spaces: dict[str, spaces.Space] = {}
        for cam, c in spec.cameras.items():
            key = c.obs_key or cam
            if key != RENDER and not (isinstance(inner, spaces.Dict) and key in inner.spaces):
                have = sorted(inner.spaces) if isinstance(inner, spaces.Dict) else f"a {type(inner).__name__}"
                raise ValueError(f"task {spec.name!r}: camera {cam!r} reads observation key {key!r}, but env "
                                 f"{spec.env.id} observes {have}; set cameras.{cam}.obs_key to one of its "
                                 "image keys, or to 'render' to use env.render()")
            if c.size is not None:
                h, w = c.size
            elif key != RENDER:
                h, w = inner.spaces[key].shape[:2]
            obs_spaces[cam] = spaces.Box(0, 255, (int(h), int(w), 3), np.uint8)
        dim = self._state_dim(inner)
        obs_spaces["state"] = spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.observation_space = spaces.Dict(obs_spaces)

    def _state_dim(self, inner: spaces.Space) -> int:
        keys = self.task.env.state_keys
        if not keys:
            if not isinstance(inner, spaces.Box):
                raise ValueError(f"task {self.task.name!r}: env.state_keys is empty, which needs a Box "
                                 f"observation, but the env observes a {type(inner).__name__}; list the "
                                 "state "
                                 "keys (env.state_keys)")
            return int(np.prod(inner.shape))
        if not isinstance(inner, spaces.Dict) or any(k not in inner.spaces for k in keys):
            have = sorted(inner.spaces) if isinstance(inner, spaces.Dict) else f"a {type(inner).__name__}"
            raise ValueError(f"task {self.task.name!r}: env.state_keys {keys} are not all observation "
                             "keys of "
                             f"{self.task.env.id} (it observes {have}); fix env.state_keys ([] for a Box "
                             "observation)")
        return int(sum(np.prod(inner.spaces[k].shape) for k in keys))

    def _convert(self, obs: Any) -> dict[str, np.ndarray]:
        self.raw_obs = obs
        out: dict[str, np.ndarray] = {}
        for cam, c in self.task.cameras.items():
            key = c.obs_key or cam
            img = np.asarray(self.env.render() if key == RENDER else obs[key])
            if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
                raise ValueError(f"task {self.task.name!r}: camera {cam!r} ({key}) gave an array of shape "
                                 f"{img.shape} and dtype {img.dtype}; cameras must be uint8 (H, W, 3)")
            if c.flip in ("vertical", "both"):
                img = img[::-1]
            if c.flip in ("horizontal", "both"):
                img = img[:, ::-1]
            if c.size is not None and img.shape[:2] != tuple(c.size):
                if key != RENDER:
                    raise ValueError(f"task {self.task.name!r}: camera {cam!r} gives {img.shape[:2]} images "
                                     f"but cameras.{cam}.size is {c.size}; make them agree")
                img = cv2.resize(img, (c.size[1], c.size[0]), interpolation=cv2.INTER_AREA)
            out[cam] = np.ascontiguousarray(img)
        keys = self.task.env.state_keys
        parts = [np.asarray(obs[k], np.float32).ravel() for k in keys] if keys else [np.asarray(obs).ravel()]
        out["state"] = np.concatenate(parts).astype(np.float32)
        return out

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        key = self.task.env.success_key
        info = dict(info)
        info["is_success"] = bool(info.get(key, False))
        return info

    def reset(self, **kwargs: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return self._convert(obs), self._info(info)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._convert(obs), reward, terminated, truncated, self._info(info)


def make_env(spec: TaskSpec | Mapping[str, Any], **overrides: Any) -> TaskObservation:
    """Build the task's env: import its modules, ``gym.make(env.id, **env.kwargs)``, wrap it.

    ``overrides`` replace env kwargs (e.g. ``render_mode="rgb_array"``). Picklable through
    ``functools.partial(make_env, spec)`` for spawned vector-env workers.
    """
    spec = TaskSpec.from_config(spec)
    if spec.env is None:
        raise ValueError(f"task {spec.name!r} has no simulator (env: null): it can train, not be evaluated")
    e = spec.env
    for mod in e.import_modules:
        importlib.import_module(mod)
    kwargs = {**e.kwargs, **overrides}
    if e.max_episode_steps is not None:
        kwargs["max_episode_steps"] = int(e.max_episode_steps)
    try:
        env = gym.make(e.id, **kwargs)
    except gym.error.NameNotFound as err:
        raise ValueError(f"task {spec.name!r}: gymnasium id {e.id!r} is not registered ({err}); list the "
                         "module "
                         "that registers it in env.import_modules") from None
    except TypeError as err:
        raise ValueError(f"task {spec.name!r}: gym.make({e.id!r}, **{sorted(kwargs)}) failed: {err}; "
                         "env.kwargs "
                         "must hold only arguments the env accepts") from None
    return TaskObservation(env, spec)


def make_expert(spec: TaskSpec, env: gym.Env) -> Any:
    """The task's scripted expert for ``env`` (``demos.expert``)."""
    return _import_path(spec.demos.expert)(env)


def register_schema() -> None:
    """Register :class:`TaskSpec` as the hydra schema ``task/schema`` (task YAMLs list it in ``defaults``)."""
    ConfigStore.instance().store(group="task", name="schema", node=TaskSpec)
