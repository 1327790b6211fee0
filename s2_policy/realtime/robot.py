"""Robot side of the real-time loop: a small :class:`Robot` interface and a MuJoCo-backed :class:`SimRobot`.

A real robot driver implements :class:`Robot` (read proprioception, send one action per control period, hold,
stop). :class:`SimRobot` runs one of the project's gymnasium environments on its own thread at the control
rate, in real time: each period it applies the newest commanded action (or a hold action when none arrived),
renders its cameras and pushes the images to :class:`~s2_policy.realtime.cameras.SimCamera` sources, exactly
as live cameras would deliver them. The whole loop can therefore be run and tested without hardware.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.spec import TaskSpec, make_env
from s2_policy.realtime.cameras import SimCamera

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RobotState:
    """Proprioception at monotonic time ``t``. ``episode`` changes when the scene was reset (sim only)."""

    state: np.ndarray
    t: float
    episode: int = 0


class Robot(ABC):
    """What the control loop needs from a robot. Implementations must be safe to call from the loop thread."""

    action_dim: int

    @abstractmethod
    def start(self) -> Robot:
        """Connect and wait until the first state is available; returns self."""

    @abstractmethod
    def get_state(self) -> RobotState:
        """Newest proprioceptive state (never blocks on the controller)."""

    @abstractmethod
    def send_action(self, action: np.ndarray) -> None:
        """Command one action (env units, shape ``(action_dim,)``) for the current control period."""

    @abstractmethod
    def hold(self) -> None:
        """Keep the current position (the safe action while a fault lasts); later actions resume motion."""

    @abstractmethod
    def stop(self) -> None:
        """Halt motion for good; later :meth:`send_action` calls raise. Used by ``safety.on_fault=stop``."""

    @abstractmethod
    def close(self) -> None:
        """Release the hardware (or simulator)."""

    @property
    def connected(self) -> bool:
        """False when the controller link is down (the loop treats it as a fault)."""
        return True

    def finished(self) -> bool:
        """True when the robot has nothing more to do (a simulator that ran its episodes)."""
        return False

    def stats(self) -> dict[str, Any]:
        """JSON-able counters for the telemetry report."""
        return {}


@dataclass
class _Episode:
    success: bool = False
    steps: int = 0
    hold_steps: int = 0


class SimRobot(Robot):
    """A gymnasium environment stepped in real time on its own thread, publishing its cameras.

    ``make_env`` builds the environment inside the simulator thread (an EGL rendering context belongs to the
    thread that created it). ``control_hz`` defaults to the env's own ``control_hz`` attribute, the rate its
    demonstrations were recorded at (and so the spacing of the policy's action chunks).
    Actions follow the project's env contract: end-effector deltas then the gripper
    command in the last dimension, so the hold action is zero motion with the gripper kept as last commanded.
    ``n_episodes`` (optional) makes :meth:`finished` true after that many episodes; episodes that end are
    reset automatically with seeds ``seed, seed + 1, ...``.
    """

    def __init__(self, make_env: Callable[[], Any], cameras: Sequence[str], control_hz: float | None = None,
                 seed: int = 0, n_episodes: int | None = None, state_key: str = "state") -> None:
        if control_hz is not None and control_hz <= 0:
            raise ValueError(f"control_hz must be > 0 (or None: the env's own control_hz), got {control_hz}")
        if not cameras:
            raise ValueError("SimRobot needs at least one camera name (e.g. ['front', 'wrist'])")
        self._make_env = make_env
        self.camera_names = list(cameras)
        self.cameras: dict[str, SimCamera] = {c: SimCamera(c) for c in self.camera_names}
        self.control_hz = control_hz
        self.seed = seed
        self.n_episodes = n_episodes
        self.state_key = state_key
        self.action_dim = 0
        self._lock = threading.Lock()
        self._pending: np.ndarray | None = None
        self._gripper = -1.0
        self._state: RobotState | None = None
        self._halted = False
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self.episodes: list[_Episode] = [_Episode()]
        self.commands = 0
        self.overwritten_commands = 0
        self.overruns = 0

    @classmethod
    def from_task(cls, task: TaskSpec, control_hz: float | None = None, seed: int = 0,
                  n_episodes: int | None = None, max_episode_steps: int | None = None) -> SimRobot:
        """A SimRobot over a task's env (:func:`envs.spec.make_env`), at the task's control rate unless
        ``control_hz`` is given."""
        if max_episode_steps is not None:
            env = dataclasses.replace(task.env, max_episode_steps=max_episode_steps)
            task = dataclasses.replace(task, env=env)
        return cls(functools.partial(make_env, task), task.camera_names, control_hz or task.env.control_hz,
                   seed=seed, n_episodes=n_episodes)

    # -- Robot interface -------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> SimRobot:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="sim-robot", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"simulator did not produce a first observation within {timeout_s} s")
        if self._error:
            raise RuntimeError(f"simulator failed to start: {self._error}")
        return self

    def get_state(self) -> RobotState:
        with self._lock:
            if self._state is None:
                raise RuntimeError("SimRobot.get_state() before start()")
            return self._state

    def send_action(self, action: np.ndarray) -> None:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action shape {action.shape} != ({self.action_dim},) expected by the env")
        with self._lock:
            if self._halted:
                raise RuntimeError("robot was stopped (safety); restart it to send actions again")
            if self._pending is not None:
                self.overwritten_commands += 1
            self._pending = action
            self.commands += 1

    def hold(self) -> None:
        with self._lock:
            self._pending = None

    def stop(self) -> None:
        with self._lock:
            self._halted = True
            self._pending = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None
        for cam in self.cameras.values():
            cam.stop()

    @property
    def connected(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    def finished(self) -> bool:
        return self.n_episodes is not None and len(self.completed_episodes()) >= self.n_episodes

    def completed_episodes(self) -> list[_Episode]:
        return self.episodes[:-1]

    def stats(self) -> dict[str, Any]:
        done = self.completed_episodes()
        return {"episodes": len(done), "successes": sum(e.success for e in done),
                "episode_steps": [e.steps for e in done], "commands": self.commands,
                "overwritten_commands": self.overwritten_commands, "sim_overruns": self.overruns,
                "hold_steps": sum(e.hold_steps for e in self.episodes), "error": self._error}

    # -- simulator thread ------------------------------------------------------------------------------
    def _publish(self, obs: dict, episode: int) -> None:
        t = time.monotonic()
        for name, cam in self.cameras.items():
            if name not in obs:
                raise KeyError(f"env observation has no camera {name!r}; it has {sorted(obs)}")
            cam.push(np.ascontiguousarray(obs[name]), t)
        state = np.asarray(obs[self.state_key], dtype=np.float32).copy()
        with self._lock:
            self._state = RobotState(state, t, episode)

    def _hold_action(self) -> np.ndarray:
        a = np.zeros(self.action_dim, dtype=np.float32)
        a[-1] = self._gripper
        return a

    def _run(self) -> None:
        env = None
        try:
            env = self._make_env()
            self.action_dim = int(np.prod(env.action_space.shape))
            if self.control_hz is None:
                self.control_hz = float(getattr(env.unwrapped, "control_hz", 0) or 0)
                if self.control_hz <= 0:
                    raise ValueError("the env has no control_hz attribute: pass SimRobot(control_hz=...)")
            period = 1.0 / self.control_hz
            obs, _ = env.reset(seed=self.seed)
            self._publish(obs, 0)
            self._ready.set()
            next_t = time.monotonic()
            while not self._stop.is_set():
                next_t += period
                delay = next_t - time.monotonic()
                if delay < 0:
                    self.overruns += 1
                    next_t = time.monotonic()
                elif self._stop.wait(delay):
                    break
                with self._lock:
                    action, self._pending = self._pending, None
                ep = self.episodes[-1]
                if action is None:
                    action = self._hold_action()
                    ep.hold_steps += 1
                else:
                    self._gripper = float(action[-1])
                obs, _, terminated, truncated, info = env.step(action)
                ep.steps += 1
                ep.success = ep.success or bool(info.get("is_success", False))
                if terminated or truncated:
                    log.info("sim episode %d ended: success=%s steps=%d", len(self.episodes) - 1,
                             ep.success, ep.steps)
                    self.episodes.append(_Episode())
                    self._gripper = -1.0
                    obs, _ = env.reset(seed=self.seed + len(self.episodes) - 1)
                self._publish(obs, len(self.episodes) - 1)
        except Exception as e:  # report to the loop (connected -> False) instead of dying silently
            self._error = f"{type(e).__name__}: {e}"
            log.error("simulator thread failed: %s", self._error)
            for cam in self.cameras.values():
                cam.mark_disconnected(self._error)
        finally:
            self._ready.set()
            if env is not None:
                env.close()



class DryRunRobot(Robot):
    """No hardware: accepts and counts actions, reports a constant state. For latency checks on live cameras
    before an arm is connected (``robot=dry_run``) and for benchmarks."""

    def __init__(self, action_dim: int, state: np.ndarray | Sequence[float]) -> None:
        if action_dim <= 0:
            raise ValueError(f"action_dim must be > 0, got {action_dim}")
        self.action_dim = action_dim
        self._state = np.asarray(state, dtype=np.float32)
        self.actions_received = 0
        self.holds = 0
        self.last_action: np.ndarray | None = None
        self._halted = False

    def start(self) -> DryRunRobot:
        return self

    def get_state(self) -> RobotState:
        return RobotState(self._state, time.monotonic(), 0)

    def send_action(self, action: np.ndarray) -> None:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action shape {action.shape} != ({self.action_dim},)")
        if self._halted:
            raise RuntimeError("robot was stopped (safety)")
        self.actions_received += 1
        self.last_action = action

    def hold(self) -> None:
        self.holds += 1

    def stop(self) -> None:
        self._halted = True

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"actions_received": self.actions_received, "holds": self.holds}
