"""Picklable env constructor for spawned vector-env workers (kept free of torch imports: fast to spawn)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence

import gymnasium as gym


def make_env(env_id: str, env_kwargs: Mapping | None = None, import_modules: Sequence[str] = ("envs",),
             max_episode_steps: int | None = None) -> gym.Env:
    """Import the modules that register ``env_id`` (e.g. ``envs``), then ``gym.make`` it."""
    for mod in import_modules:
        importlib.import_module(mod)
    kwargs = dict(env_kwargs or {})
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = int(max_episode_steps)
    return gym.make(env_id, **kwargs)
