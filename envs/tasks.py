"""The three manipulation tasks: object randomisation (from the env seed) and success tests."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from envs.base import ManipulationEnv


class PickCubeEnv(ManipulationEnv):
    """Grasp a 4 cm cube (position +-5 cm, yaw +-0.2 rad) and lift it by ``lift_height``."""

    xml_file = "pick_cube.xml"
    half: ClassVar[float] = 0.02
    spread: ClassVar[float] = 0.05
    lift_height: ClassVar[float] = 0.05

    def _randomize(self, rng: np.random.Generator) -> None:
        xy = rng.uniform(-self.spread, self.spread, 2)
        self._place_free_body("cube", np.array([xy[0], xy[1], self.half]), rng.uniform(-0.2, 0.2))

    def _is_success(self) -> bool:
        return bool(self.body_pos("cube")[2] >= self.half + self.lift_height)


class PlaceCubeEnv(ManipulationEnv):
    """Precision: pick a 3 cm cube and set it down, released, its centre within ``tolerance`` of the pad's."""

    xml_file = "place_cube.xml"
    half: ClassVar[float] = 0.015
    tolerance: ClassVar[float] = 0.01

    def _randomize(self, rng: np.random.Generator) -> None:
        cube = rng.uniform(-0.06, 0.06, 2)
        while True:  # pad 8-14 cm away from the cube, inside the +-0.1 m area both cameras see
            angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.08, 0.14)
            pad = cube + dist * np.array([np.cos(angle), np.sin(angle)])
            if np.all(np.abs(pad) <= 0.1):
                break
        self._place_free_body("cube", np.array([cube[0], cube[1], self.half]), rng.uniform(-0.2, 0.2))
        self.data.mocap_pos[self.model.body("pad").mocapid[0]] = [pad[0], pad[1], 0.0]

    def pad_pos(self) -> np.ndarray:
        return self.data.mocap_pos[self.model.body("pad").mocapid[0]].copy()

    def _is_success(self) -> bool:
        cube = self.body_pos("cube")
        on_pad = np.linalg.norm(cube[:2] - self.pad_pos()[:2]) <= self.tolerance
        resting = cube[2] <= self.half + 0.004
        released = self.gripper_opening() >= 2 * self.half + 0.01
        return bool(on_pad and resting and released)


class PickMarkedCubeEnv(ManipulationEnv):
    """Fine detail: three look-alike cubes in a row; only lifting the one with the small top mark succeeds.

    The 1.4 cm mark is ~2 px wide in a 64 px front view and ~4 px at 128 px (the S2 2x scale).
    """

    xml_file = "pick_marked_cube.xml"
    n_cubes: ClassVar[int] = 3
    max_finger: ClassVar[float] = 0.04  # 8 cm opening: the open fingers must clear the neighbouring cubes
    half: ClassVar[float] = 0.02
    lift_height: ClassVar[float] = 0.05

    def _randomize(self, rng: np.random.Generator) -> None:
        centre = rng.uniform(-0.03, 0.03, 2)
        for i in range(self.n_cubes):
            x = centre[0] + (i - 1) * 0.1 + rng.uniform(-0.01, 0.01)
            y = centre[1] + rng.uniform(-0.02, 0.02)
            self._place_free_body(f"cube{i}", np.array([x, y, self.half]), rng.uniform(-0.2, 0.2))
        self.marked = int(rng.integers(self.n_cubes))
        for i in range(self.n_cubes):  # unmarked cubes hide their mark inside the cube body
            self.model.geom(f"mark{i}").pos = self._mark_pos if i == self.marked else 0.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._mark_pos = self.model.geom("mark0").pos.copy()
        self.marked = 0

    def _is_success(self) -> bool:
        z = [self.body_pos(f"cube{i}")[2] for i in range(self.n_cubes)]
        others_down = all(z[i] < self.half + 0.01 for i in range(self.n_cubes) if i != self.marked)
        return bool(z[self.marked] >= self.half + self.lift_height and others_down)
