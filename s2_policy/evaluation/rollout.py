"""Vectorised policy rollouts: fixed seeds, policy batched over envs, action chunks, success statistics.

Works on any gymnasium env whose observation is a dict holding camera images and a state vector; which env
key feeds which policy input comes from ``obs_keys`` (config), and success from ``info[success_key]``.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from s2_policy.evaluation.envfactory import make_env
from s2_policy.evaluation.stats import wilson_interval
from s2_policy.evaluation.video import tile_cameras, write_mp4


@dataclass
class EnvSpec:
    """How to build and read an evaluation env.

    ``obs_keys`` maps each policy input (camera names and ``state``) to the env observation key; empty means
    identical names. ``import_modules`` are imported in every worker before ``gym.make`` (registration).
    """

    env_id: str
    env_kwargs: dict = field(default_factory=dict)
    obs_keys: dict = field(default_factory=dict)
    max_episode_steps: int | None = None
    import_modules: list[str] = field(default_factory=lambda: ["envs"])
    success_key: str = "is_success"
    fps: float = 10.0

    @classmethod
    def from_task(cls, task: Mapping[str, Any], **overrides: Any) -> EnvSpec:
        """From a ``configs/task/*.yaml`` mapping (``env_id``, ``env_kwargs``, ``cameras``, ``state_key``)."""
        cams = list(task.get("cameras", []))
        env_kwargs = dict(task.get("env_kwargs") or {})
        env_kwargs.setdefault("cameras", tuple(cams))
        obs_keys = {c: c for c in cams}
        obs_keys["state"] = task.get("state_key", "state")
        obs_keys.update(dict(task.get("obs_keys") or {}))
        kw = dict(env_id=task["env_id"], env_kwargs=env_kwargs, obs_keys=obs_keys,
                  max_episode_steps=task.get("max_episode_steps"),
                  import_modules=list(task.get("import_modules", ["envs"])),
                  success_key=task.get("success_key", "is_success"), fps=float(task.get("control_hz", 10)))
        kw.update(overrides)
        return cls(**kw)


def make_vector_env(spec: EnvSpec, n_envs: int) -> gym.vector.VectorEnv:
    """``SyncVectorEnv`` for one env, else ``AsyncVectorEnv`` with spawned workers (EGL must not fork)."""
    fn = functools.partial(make_env, spec.env_id, spec.env_kwargs, tuple(spec.import_modules),
                           spec.max_episode_steps)
    mode = gym.vector.AutoresetMode.DISABLED
    if n_envs == 1:
        return gym.vector.SyncVectorEnv([fn], autoreset_mode=mode)
    return gym.vector.AsyncVectorEnv([fn] * n_envs, context="spawn", autoreset_mode=mode)


def run_rollouts(policy: Any, spec: EnvSpec, seeds: Sequence[int], n_envs: int = 2,
                 video_dir: str | Path | None = None, n_videos: int = 2, progress: bool = True,
                 sample_seed: int = 0) -> dict[str, Any]:
    """Roll ``policy`` out once per seed and return success statistics (JSON-able dict).

    ``policy`` needs ``cameras``, ``n_obs_steps`` and ``predict_action(obs) -> (B, n_action_steps, A)``.
    Each env keeps its own observation history (the first frame repeated at reset, as in training padding)
    and action queue; the policy runs once, batched, over every env whose queue is empty. Videos of the
    first ``n_videos`` seeds go to ``video_dir``.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("run_rollouts needs at least one seed")
    n_envs = max(1, min(int(n_envs), len(seeds)))
    keys = {k: spec.obs_keys.get(k, k) for k in (*policy.cameras, "state")}
    to = policy.n_obs_steps
    venv = make_vector_env(spec, n_envs)
    gen = torch.Generator(device=policy.device).manual_seed(sample_seed)
    lo, hi = venv.single_action_space.low, venv.single_action_space.high
    results: list[dict] = []
    videos: list[str] = []
    t0 = time.perf_counter()
    policy_s = 0.0
    policy_calls = 0
    try:
        obs, _ = venv.reset(seed=seeds[:n_envs])
        _check_keys(obs, keys, spec.env_id)
        slot_ep = list(range(n_envs))        # episode index (into seeds) each env slot is running
        next_ep = n_envs
        active = np.ones(n_envs, bool)
        hist = [deque([_slice(obs, keys, i)] * to, maxlen=to) for i in range(n_envs)]
        queues: list[deque] = [deque() for _ in range(n_envs)]
        length = np.zeros(n_envs, int)
        success = np.zeros(n_envs, bool)
        frames: dict[int, list[np.ndarray]] = {e: [] for e in range(min(n_videos, len(seeds)))}
        for i in range(n_envs):
            _record(frames, slot_ep[i], hist[i][-1], policy.cameras)
        bar = tqdm(total=len(seeds), desc="rollouts", disable=not progress, leave=False)
        while active.any():
            need = [i for i in range(n_envs) if active[i] and not queues[i]]
            if need:
                batch = {k: np.stack([np.stack([h[k] for h in hist[i]]) for i in need]) for k in keys}
                ts = time.perf_counter()
                act = policy.predict_action(batch, generator=gen)
                policy_s += time.perf_counter() - ts
                policy_calls += 1
                act = act.cpu().numpy() if isinstance(act, torch.Tensor) else np.asarray(act)
                for j, i in enumerate(need):
                    queues[i].extend(np.clip(act[j], lo, hi))
            action = np.zeros((n_envs, *venv.single_action_space.shape), np.float32)
            for i in range(n_envs):
                if active[i]:
                    action[i] = queues[i].popleft()
            obs, _, term, trunc, info = venv.step(action)
            succ = np.asarray(info.get(spec.success_key, np.zeros(n_envs, bool)), bool)
            done_slots = []
            for i in range(n_envs):
                if not active[i]:
                    continue
                length[i] += 1
                success[i] |= bool(succ[i])
                hist[i].append(_slice(obs, keys, i))
                _record(frames, slot_ep[i], hist[i][-1], policy.cameras)
                limit = spec.max_episode_steps is not None and length[i] >= spec.max_episode_steps
                if term[i] or trunc[i] or limit:
                    results.append({"seed": seeds[slot_ep[i]], "success": bool(success[i]),
                                    "length": int(length[i])})
                    bar.update(1)
                    ep = slot_ep[i]
                    if ep in frames and video_dir is not None:
                        name = f"episode_{ep:03d}_seed{seeds[ep]}.mp4"
                        videos.append(str(write_mp4(frames.pop(ep), Path(video_dir) / name, fps=spec.fps)))
                    done_slots.append(i)
            if done_slots:
                restart = [i for i in done_slots if next_ep < len(seeds)]
                for i in done_slots:
                    if i not in restart:
                        active[i] = False
                if restart:
                    mask = np.zeros(n_envs, bool)
                    seed_list: list[int | None] = [None] * n_envs
                    for i in restart:
                        mask[i], seed_list[i], slot_ep[i] = True, seeds[next_ep], next_ep
                        next_ep += 1
                    if n_envs == 1:
                        obs, _ = venv.reset(seed=seed_list)
                    else:
                        obs, _ = venv.reset(seed=seed_list, options={"reset_mask": mask})
                    for i in restart:
                        hist[i] = deque([_slice(obs, keys, i)] * to, maxlen=to)
                        queues[i].clear()
                        length[i], success[i] = 0, False
                        _record(frames, slot_ep[i], hist[i][-1], policy.cameras)
        bar.close()
    finally:
        venv.close()
    results.sort(key=lambda r: seeds.index(r["seed"]))
    k, n = sum(r["success"] for r in results), len(results)
    ci = wilson_interval(k, n)
    return {"env_id": spec.env_id, "n_episodes": n, "successes": k, "success_rate": k / n, "ci95": list(ci),
            "mean_episode_length": float(np.mean([r["length"] for r in results])),
            "episodes": results, "videos": videos, "seconds": time.perf_counter() - t0,
            "policy_seconds": policy_s, "policy_calls": policy_calls, "n_envs": n_envs}


def _slice(obs: Mapping[str, np.ndarray], keys: Mapping[str, str], i: int) -> dict[str, np.ndarray]:
    return {k: np.asarray(obs[v][i]) for k, v in keys.items()}


def _record(frames: dict[int, list[np.ndarray]], ep: int, ob: Mapping[str, np.ndarray],
            cams: Sequence[str]) -> None:
    if ep in frames:
        frames[ep].append(tile_cameras(ob, cams))


def _check_keys(obs: Mapping, keys: Mapping[str, str], env_id: str) -> None:
    missing = sorted(v for v in keys.values() if v not in obs)
    if missing:
        raise KeyError(f"env {env_id} observations lack keys {missing} (has {sorted(obs)}); set the task's "
                       f"cameras/state_key or obs_keys mapping to match the env")
