"""Scripted experts: phase machines on privileged object poses (read through ``env.unwrapped``).

Each expert draws per-episode waypoint offsets and adds small Gaussian action noise from its own seed, so
demonstrations vary while staying >= 95% successful. Phases advance on measured progress (not on step counts
alone) and fall back to re-approaching if the object slips, which keeps the experts robust.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs.base import ManipulationEnv
from envs.tasks import PickCubeEnv, PickMarkedCubeEnv, PlaceCubeEnv

OPEN, CLOSE = -1.0, 1.0


class _Expert:
    """Shared machinery: phase state, per-episode randomness, and 'move towards goal' actions."""

    noise_std = 0.05

    def __init__(self, env: gym.Env) -> None:
        self.env: ManipulationEnv = env.unwrapped  # type: ignore[assignment]
        self.rng = np.random.default_rng()
        self.phase = "approach"
        self.timer = 0

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; ``seed`` makes the expert's noise and waypoint offsets reproducible."""
        self.rng = np.random.default_rng(seed)
        self.phase = "approach"
        self.timer = 0
        self._draw_params()

    def _draw_params(self) -> None:
        self.hover = self.rng.uniform(0.05, 0.08)
        self.grasp_dz = self.rng.uniform(-0.004, 0.004)
        self.grasp_dxy = self.rng.uniform(-0.003, 0.003, 2)
        self.lift_z = self.rng.uniform(0.12, 0.16)

    def _move(self, ee: np.ndarray, goal: np.ndarray, grip: float, noise: float | None = None) -> np.ndarray:
        delta = np.clip((goal - ee) / self.env.max_step, -1.0, 1.0)
        std = self.noise_std if noise is None else noise
        delta = delta + self.rng.normal(0.0, std, 3)
        return np.clip(np.append(delta, grip), -1.0, 1.0).astype(np.float32)

    def _set(self, phase: str) -> None:
        self.phase, self.timer = phase, 0

    def _pick(self, ee: np.ndarray, obj: np.ndarray, half: float) -> np.ndarray | None:
        """Approach, descend, close and lift; returns None once the object is held at ``lift_z``."""
        self.timer += 1
        grasp = np.array([obj[0] + self.grasp_dxy[0], obj[1] + self.grasp_dxy[1], obj[2] + self.grasp_dz])
        if self.phase == "approach":
            goal = grasp + [0.0, 0.0, self.hover]
            if np.linalg.norm((goal - ee)[:2]) < 0.008 and abs(goal[2] - ee[2]) < 0.02:
                self._set("descend")
            return self._move(ee, goal, OPEN)
        if self.phase == "descend":
            if np.linalg.norm((grasp - ee)[:2]) > 0.02:  # object was pushed: go round again
                self._set("approach")
            elif abs(grasp[2] - ee[2]) < 0.006 or self.timer > 12:
                self._set("close")
            return self._move(ee, grasp, OPEN, noise=0.02)
        if self.phase == "close":
            if self.timer >= 3 and self.env.gripper_opening() < 2 * half + 0.008:
                self._set("lift")
            elif self.timer > 8:  # missed: open and retry
                self._set("approach")
            return self._move(ee, grasp, CLOSE, noise=0.0)
        if self.phase == "lift":
            if obj[2] < ee[2] - 0.03 or self.env.gripper_opening() < 2 * half - 0.01:  # dropped it
                self._set("approach")
                return self._move(ee, ee + [0.0, 0.0, 0.03], OPEN)
            if ee[2] >= self.lift_z - 0.01:
                return None
            return self._move(ee, np.array([ee[0], ee[1], self.lift_z]), CLOSE)
        return None


class PickCubeExpert(_Expert):
    """Pick the cube and lift it."""

    cube = "cube"

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        ee = np.asarray(obs["state"][:3], dtype=np.float64)
        obj = self.env.body_pos(self._cube_name())
        action = self._pick(ee, obj, self.env.half)
        if action is None:  # held high: keep lifting gently (success ends the episode)
            action = self._move(ee, ee + [0.0, 0.0, 0.02], CLOSE)
        return action

    def _cube_name(self) -> str:
        return self.cube


class PickMarkedCubeExpert(PickCubeExpert):
    """Pick the cube that carries the mark (privileged: the env's ``marked`` index)."""

    def _cube_name(self) -> str:
        return f"cube{self.env.marked}"


class PlaceCubeExpert(_Expert):
    """Pick the cube, carry it over the pad, lower it until it touches, release, retreat."""

    def _draw_params(self) -> None:
        super()._draw_params()
        self.lift_z = self.rng.uniform(0.06, 0.09)

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        env: PlaceCubeEnv = self.env  # type: ignore[assignment]
        ee = np.asarray(obs["state"][:3], dtype=np.float64)
        cube, pad = env.body_pos("cube"), env.pad_pos()
        if self.phase in ("approach", "descend", "close", "lift"):
            action = self._pick(ee, cube, env.half)
            if action is not None:
                return action
            self._set("carry")
        self.timer += 1
        err = pad[:2] - cube[:2]
        if self.phase in ("carry", "lower") and cube[2] < ee[2] - 0.03:  # dropped on the way: pick again
            self._set("approach")
            return self._move(ee, ee + [0.0, 0.0, 0.03], OPEN)
        if self.phase == "carry":
            goal = np.array([ee[0] + err[0], ee[1] + err[1], self.lift_z])
            if np.linalg.norm(err) < 0.003:
                self._set("lower")
            return self._move(ee, goal, CLOSE, noise=0.02 if np.linalg.norm(err) < 0.02 else None)
        if self.phase == "lower":
            drop = cube[2] - env.half - 0.001
            goal = np.array([ee[0] + err[0], ee[1] + err[1], ee[2] - drop])
            if drop < 0.003 or self.timer > 15:
                self._set("release")
            return self._move(ee, goal, CLOSE, noise=0.005)
        if self.phase == "release":
            if self.timer > 3:
                self._set("retreat")
            return self._move(ee, ee, OPEN, noise=0.0)
        # retreat: straight up, open (the episode ends on success)
        return self._move(ee, np.array([ee[0], ee[1], ee[2] + 0.03]), OPEN, noise=0.01)


_EXPERTS: dict[type, type[_Expert]] = {
    PickCubeEnv: PickCubeExpert,
    PlaceCubeEnv: PlaceCubeExpert,
    PickMarkedCubeEnv: PickMarkedCubeExpert,
}


def make_expert(env: gym.Env) -> _Expert:
    """Scripted expert for ``env`` (a task env, wrapped or not): ``reset(seed)`` and ``act(obs)``."""
    task = type(env.unwrapped)
    for cls, expert in _EXPERTS.items():
        if issubclass(task, cls):
            return expert(env)
    raise ValueError(f"no scripted expert for {task.__name__}; known tasks: {[c.__name__ for c in _EXPERTS]}")
