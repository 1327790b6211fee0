"""Assemble and run the real-time loop from a config (``configs/realtime.yaml``): policy, encoder, cameras,
robot, tile batcher, loop, telemetry files.

A user's own robot or camera is built with hydra's ``instantiate`` from a mapping with ``_target_`` (the
class's dotted path) and its keyword arguments: ``robot: {_target_: my_pkg.arm.MyArm, ip: 10.0.0.2}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from envs.spec import TaskSpec
from s2_policy.evaluation.seeds import eval_seeds
from s2_policy.realtime.batcher import TileBatcher
from s2_policy.realtime.cameras import CameraSource, make_camera
from s2_policy.realtime.loop import ControlLoop, LoopConfig
from s2_policy.realtime.robot import DryRunRobot, Robot, SimRobot
from s2_policy.realtime.safety import SafetyConfig
from s2_policy.realtime.telemetry import Telemetry
from s2_policy.runtime import configure_cpu, set_realtime_priority

log = logging.getLogger(__name__)

T = TypeVar("T")


def load_policy(checkpoint: str | Path, device: str = "cpu", precision: str | None = None,
                compile: bool = False, runtime: str | None = None):
    """``Policy.load`` + its encoder rebuilt on ``device``, optionally at another precision, with
    ``torch.compile`` or through a deployment ``runtime`` (numerics only: the fingerprint is still verified;
    a runtime keeps it when its features agree with PyTorch fp32, see s2_policy.encoders.runtimes)."""
    from s2_policy.encoders import build_encoder_from_identity
    from s2_policy.policies import Policy

    policy = Policy.load(checkpoint, device=device, load_encoder=False)
    if policy.encoder_identity is None:
        raise ValueError(f"{checkpoint} stores no encoder identity; the real-time loop needs its encoder")
    overrides: dict[str, Any] = {"device": device}
    if precision:
        overrides["precision"] = precision
    if compile:
        overrides["compile"] = True
    if runtime:
        overrides["runtime"] = runtime
    policy.attach_encoder(build_encoder_from_identity(dict(policy.encoder_identity), **overrides))
    return policy.eval()


def _task(cfg: Mapping, policy: Any) -> TaskSpec:
    task = cfg.get("task") or policy.meta.get("task")
    if not task:
        raise ValueError("robot=sim needs a task: pass task=<name> (configs/task/) or use a checkpoint whose "
                         "meta stores its task config")
    spec = TaskSpec.from_config(task)
    spec.demos.path = str(Path(spec.demos.path).absolute())
    return spec


def instantiate_as(spec: Mapping, base: type[T], key: str) -> T:
    """``hydra.utils.instantiate(spec)`` for config key ``key``, checked to be a ``base``.

    Containers in the arguments arrive as plain lists/dicts (``_convert_: all``; the spec may override it).
    Errors name the key, the target and the fix.
    """
    target = spec.get("_target_")
    if not isinstance(target, str) or not target:
        raise ValueError(f"{key}: _target_ must be the dotted path of a class, e.g. my_pkg.arm.MyArm; "
                         f"got {target!r}")
    try:
        obj = instantiate({"_convert_": "all", **spec})
    except InstantiationException as e:
        if str(e).startswith("Error locating target"):
            why = " ".join(str(e.__cause__).split("\n"))  # hydra's own: what failed to import, and a guess
            raise ValueError(f"{key}: cannot import _target_ {target!r} ({why}). Give the dotted path "
                             "package.module.Class of a class importable in this Python (pip install its "
                             "package, or add its folder to PYTHONPATH)") from e
        if isinstance(e.__cause__, TypeError):
            args = {k: v for k, v in spec.items() if k != "_target_"}
            raise ValueError(f"{key}: {target}(**{args}) failed: {e.__cause__}") from e
        raise (e.__cause__ or e) from None  # the constructor's own error, as it raised it
    if not isinstance(obj, base):
        raise ValueError(f"{key}: _target_ {target} built a {type(obj).__module__}.{type(obj).__qualname__}, "
                         f"not a {base.__module__}.{base.__qualname__}: the class must subclass it and "
                         "implement its abstract methods")
    return obj


def build_camera(spec: str | Mapping, key: str = "cameras") -> CameraSource:
    """One ``cameras`` entry: ``{_target_, ...kwargs}`` is instantiated, other forms go to ``make_camera``."""
    if isinstance(spec, Mapping) and "_target_" in spec:
        return instantiate_as(spec, CameraSource, key)
    return make_camera(spec)


def build_robot(cfg: Mapping, policy: Any) -> tuple[Robot, dict[str, CameraSource]]:
    """The robot and the cameras the policy will see (the simulator's own cameras for ``robot=sim``)."""
    kind = cfg.get("robot", "sim")
    if "robot_kwargs" in cfg:
        raise ValueError("robot_kwargs is gone: put the keyword arguments next to the class, "
                         "robot={_target_: package.module.RobotClass, arg: value, ...}")
    if isinstance(kind, str) and ":" in kind:
        raise ValueError(f"robot={kind!r}: the package.module:Class form is gone; write "
                         f"robot={{_target_: {kind.replace(':', '.')}, ...keyword arguments}}")
    if isinstance(kind, str) and kind not in ("sim", "dry_run"):
        raise ValueError(f"robot={kind!r}: use sim, dry_run or "
                         "robot={_target_: package.module.RobotClass, ...keyword arguments}")
    if not isinstance(kind, str) and not (isinstance(kind, Mapping) and "_target_" in kind):
        raise ValueError(f"robot={kind!r}: use sim, dry_run or {{_target_: package.module.RobotClass, ...}}")
    specs = list(cfg.get("cameras") or [])
    if kind == "sim":
        if specs:
            raise ValueError("robot=sim renders its own cameras: leave cameras=[] (or use robot=dry_run)")
        task, sim = _task(cfg, policy), dict(cfg.get("sim") or {})
        n = sim.get("n_episodes")
        # episodes run on consecutive seeds of the chosen role, never on demonstration seeds
        first = eval_seeds(task, sim.get("seeds", "test"), int(n) if n else 100, task.demos.path)[0]
        robot = SimRobot.from_task(task, control_hz=(cfg.get("loop") or {}).get("rate_hz"), seed=first,
                                   n_episodes=n, max_episode_steps=sim.get("max_episode_steps"))
        return robot, dict(robot.cameras)
    if not specs:
        raise ValueError(f"robot={kind} needs live cameras, e.g. cameras=[front:opencv:0,wrist:opencv:2]")
    cameras = {c.name: c for c in (build_camera(s, f"cameras[{i}]") for i, s in enumerate(specs))}
    if kind == "dry_run":
        state = (cfg.get("dry_run") or {}).get("state")
        state = np.zeros(policy.state_dim, np.float32) if state is None else np.asarray(state, np.float32)
        if state.shape != (policy.state_dim,):
            raise ValueError(f"dry_run.state must have {policy.state_dim} values, got {state.shape}")
        return DryRunRobot(policy.action_dim, state), cameras
    return instantiate_as(kind, Robot, "robot"), cameras


def _wait_for_frames(cameras: Mapping[str, CameraSource], timeout_s: float) -> dict[str, tuple[int, int]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        frames = {n: c.latest() for n, c in cameras.items()}
        if all(f is not None for f in frames.values()):
            return {n: tuple(f.image.shape[:2]) for n, f in frames.items()}
        time.sleep(0.01)
    missing = [n for n, c in cameras.items() if c.latest() is None]
    errors = {n: cameras[n].error for n in missing}
    raise RuntimeError(f"no frame from cameras {missing} within {timeout_s} s (errors: {errors})")


def run_realtime(cfg: Mapping, out_dir: str | Path) -> dict[str, Any]:
    """Run the loop described by ``cfg`` until it stops; write telemetry to ``out_dir``; return a summary."""
    configure_cpu(cfg.get("threads"))
    if cfg.get("realtime_priority"):  # before the robot, cameras and loop start threads: they inherit it
        set_realtime_priority(int(cfg["realtime_priority"]))
    policy = load_policy(cfg["checkpoint"], str(cfg.get("device", "cpu")), cfg.get("precision"),
                         bool(cfg.get("compile", False)), cfg.get("runtime"))
    robot, cameras = build_robot(cfg, policy)
    missing = [c for c in policy.cameras if c not in cameras]
    if missing:
        raise ValueError(f"the policy was trained on cameras {policy.cameras}; missing sources for {missing}")
    started: list[CameraSource] = []
    try:
        for cam in cameras.values():
            started.append(cam.start())
        robot.start()
        shapes = _wait_for_frames(cameras, float(cfg.get("camera_timeout_s", 10.0)))
        batch_cfg = dict(cfg.get("batcher") or {})
        batcher = TileBatcher(policy.encoder, [shapes[c] for c in policy.cameras],
                              cuda_graph=bool(batch_cfg.get("cuda_graph", False)),
                              warmup=int(batch_cfg.get("warmup", 2)))
        loop_cfg = dict(cfg.get("loop") or {})
        if loop_cfg.get("rate_hz") is None:
            loop_cfg["rate_hz"] = getattr(robot, "control_hz", None) or policy.meta.get("control_hz")
            if not loop_cfg["rate_hz"]:
                raise ValueError("set loop.rate_hz (the rate the policy's demonstrations were recorded at)")
        if loop_cfg.get("print_every_s") is None:
            loop_cfg["print_every_s"] = float("inf")
        lc = LoopConfig(**loop_cfg, safety=SafetyConfig(**dict(cfg.get("safety") or {})))
        log.info("realtime: %d cameras %s, %d S2 tiles per step, %.1f Hz, robot=%s", len(cameras),
                 {n: shapes[n] for n in policy.cameras}, batcher.n_tiles, lc.rate_hz, cfg.get("robot"))
        loop = ControlLoop(policy, batcher, cameras, robot, lc, Telemetry(lc.period, lc.print_every_s))
        summary = loop.run()
    finally:
        robot.close()
        for cam in started:
            cam.stop()
    extra = {"stop_reason": loop.stop_reason, "robot": robot.stats(),
             "cameras": {n: c.stats() for n, c in cameras.items()},
             "encoder": {"backbone": policy.encoder.config.backbone, "img_sizes": policy.encoder.img_sizes,
                         "tiles_per_step": batcher.n_tiles, "dtype": str(policy.encoder.compute_dtype),
                         "device": str(policy.encoder.device)},
             "policy": {"head": policy.config.head, "n_obs_steps": policy.n_obs_steps,
                        "n_action_steps": policy.n_action_steps, "ensemble": loop.ensemble,
                        "ensemble_k": loop.ensemble_k, "infer_every": loop.infer_every},
             "torch_threads": torch.get_num_threads()}
    paths = loop.telemetry.write(out_dir, extra)
    summary = {**summary, **extra, "files": {k: str(v) for k, v in paths.items()}}
    print(loop.telemetry.live_line(loop.telemetry.records))
    print(f"telemetry: {paths['json']} {paths['csv']}")
    return summary
