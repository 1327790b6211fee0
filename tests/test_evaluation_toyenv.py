"""Toy gymnasium env for the rollout tests, in its own light module so spawned vector-env workers import
only gymnasium and numpy (no torch)."""

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ToyEnv(gym.Env):
    """1-D walk: starts at -seed, success at pos >= 1; obs keys differ from the policy's names."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = spaces.Dict({"cam": spaces.Box(0, 255, (8, 8, 3), np.uint8),
                                              "pos": spaces.Box(-np.inf, np.inf, (1,), np.float32)})
        self.action_space = spaces.Box(-1, 1, (1,), np.float32)

    def _obs(self):
        return {"cam": np.full((8, 8, 3), int(np.clip(self.pos * 10 + 100, 0, 255)), np.uint8),
                "pos": np.array([self.pos], np.float32)}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = -float(seed)
        return self._obs(), {"is_success": False}

    def step(self, action):
        self.pos += 0.5 * float(np.clip(action[0], -1, 1))
        ok = self.pos >= 1
        return self._obs(), float(ok), ok, False, {"is_success": ok, "pos": self.pos}


if "ToyWalk-v0" not in gym.registry:
    gym.register("ToyWalk-v0", entry_point=ToyEnv, max_episode_steps=6)
