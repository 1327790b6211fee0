"""Vectorised policy rollouts: fixed seeds, policy batched over envs, action chunks, success statistics.

Works on any gymnasium env a :class:`~envs.spec.TaskSpec` describes: :func:`envs.spec.make_env` turns its
observations into ``{camera: image, "state": vector}`` and its success flag into ``info["is_success"]``.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from envs.spec import TaskSpec, make_env
from s2_policy.evaluation.stats import wilson_interval
from s2_policy.evaluation.video import tile_cameras, write_mp4
from s2_policy.policies.temporal_ensemble import TemporalEnsembler


def make_vector_env(task: TaskSpec, n_envs: int) -> gym.vector.VectorEnv:
    """``SyncVectorEnv`` for one env, else ``AsyncVectorEnv`` with spawned workers (EGL must not fork)."""
    fn = functools.partial(make_env, task)
    mode = gym.vector.AutoresetMode.DISABLED
    if n_envs == 1:
        return gym.vector.SyncVectorEnv([fn], autoreset_mode=mode)
    return gym.vector.AsyncVectorEnv([fn] * n_envs, context="spawn", autoreset_mode=mode)


def run_rollouts(policy: Any, task: TaskSpec, seeds: Sequence[int], n_envs: int = 2,
                 video_dir: str | Path | None = None, n_videos: int = 2, progress: bool = True,
                 sample_seed: int = 0, info_keys: Sequence[str] = ()) -> dict[str, Any]:
    """Roll ``policy`` out once per seed and return success statistics (JSON-able dict).

    ``policy`` needs ``cameras``, ``n_obs_steps`` and ``predict_action(obs) -> (B, n_action_steps, A)``.
    Each env keeps its own observation history (the first frame repeated at reset, as in training padding)
    and action queue; the policy runs once, batched, over every env whose queue is empty. A policy whose
    ``temporal_ensemble_m`` is not ``None`` runs at every step instead, and each env executes the
    temporally ensembled action of its chunks (:class:`TemporalEnsembler`, reset at each episode start). A
    policy whose ``inpaints`` is true gets ``env_ids`` with each query and a ``reset([env])`` at each episode
    start, so it can tie an env's new chunk to its previous one.
    Videos of the first ``n_videos`` seeds go to ``video_dir``. Each numeric ``info_keys`` entry the env
    reports is kept per episode as its ``last`` and ``max`` value (``episodes[i]["info"]``: for telling
    failure modes apart, e.g. MetaWorld's ``grasp_success`` and ``obj_to_target``).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("run_rollouts needs at least one seed")
    n_envs = max(1, min(int(n_envs), len(seeds)))
    missing = [c for c in policy.cameras if c not in task.cameras]
    if missing:
        raise ValueError(f"the policy sees cameras {policy.cameras} but task {task.name!r} has "
                         f"{task.camera_names}"
                         f" (missing {missing}); evaluate on the task it was trained on")
    keys = {k: k for k in (*policy.cameras, "state")}
    to = policy.n_obs_steps
    max_steps = task.env.max_episode_steps
    venv = make_vector_env(task, n_envs)
    gen = torch.Generator(device=policy.device).manual_seed(sample_seed)
    ensemble_m = getattr(policy, "temporal_ensemble_m", None)
    ensembler = TemporalEnsembler(n_envs, ensemble_m) if ensemble_m is not None else None
    inpaints = bool(getattr(policy, "inpaints", False))  # the policy remembers each env's last chunk
    if inpaints:
        policy.reset()
    lo, hi = venv.single_action_space.low, venv.single_action_space.high
    results: list[dict] = []
    videos: list[str] = []
    t0 = time.perf_counter()
    policy_s = 0.0
    policy_calls = 0
    try:
        obs, _ = venv.reset(seed=seeds[:n_envs])
        slot_ep = list(range(n_envs))        # episode index (into seeds) each env slot is running
        next_ep = n_envs
        active = np.ones(n_envs, bool)
        hist = [deque([_slice(obs, keys, i)] * to, maxlen=to) for i in range(n_envs)]
        queues: list[deque] = [deque() for _ in range(n_envs)]
        length = np.zeros(n_envs, int)
        success = np.zeros(n_envs, bool)
        tracked: list[dict[str, dict[str, float]]] = [{} for _ in range(n_envs)]
        frames: dict[int, list[np.ndarray]] = {e: [] for e in range(min(n_videos, len(seeds)))}
        for i in range(n_envs):
            _record(frames, slot_ep[i], hist[i][-1], policy.cameras)
        bar = tqdm(total=len(seeds), desc="rollouts", disable=not progress, leave=False)
        while active.any():
            need = [i for i in range(n_envs) if active[i] and (ensembler is not None or not queues[i])]
            if need:
                batch = {k: np.stack([np.stack([h[k] for h in hist[i]]) for i in need]) for k in keys}
                ts = time.perf_counter()
                act = (policy.predict_action(batch, generator=gen, env_ids=need) if inpaints
                       else policy.predict_action(batch, generator=gen))
                policy_s += time.perf_counter() - ts
                policy_calls += 1
                act = act.cpu().numpy() if isinstance(act, torch.Tensor) else np.asarray(act)
                for j, i in enumerate(need):
                    if ensembler is not None:
                        ensembler.add(i, np.clip(act[j], lo, hi))
                    else:
                        queues[i].extend(np.clip(act[j], lo, hi))
            action = np.zeros((n_envs, *venv.single_action_space.shape), np.float32)
            for i in range(n_envs):
                if active[i]:
                    action[i] = ensembler.pop(i) if ensembler is not None else queues[i].popleft()
            obs, _, term, trunc, info = venv.step(action)
            succ = np.asarray(info.get("is_success", np.zeros(n_envs, bool)), bool)
            done_slots = []
            for i in range(n_envs):
                if not active[i]:
                    continue
                length[i] += 1
                success[i] |= bool(succ[i])
                _track(tracked[i], info, info_keys, i)
                hist[i].append(_slice(obs, keys, i))
                _record(frames, slot_ep[i], hist[i][-1], policy.cameras)
                limit = max_steps is not None and length[i] >= max_steps
                if term[i] or trunc[i] or limit:
                    results.append({"seed": seeds[slot_ep[i]], "success": bool(success[i]),
                                    "length": int(length[i]), **({"info": tracked[i]} if info_keys else {})})
                    bar.update(1)
                    ep = slot_ep[i]
                    if ep in frames and video_dir is not None:
                        name = f"episode_{ep:03d}_seed{seeds[ep]}.mp4"
                        path = write_mp4(frames.pop(ep), Path(video_dir) / name, fps=task.env.control_hz)
                        videos.append(str(path))
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
                        if ensembler is not None:
                            ensembler.reset(i)
                        if inpaints:
                            policy.reset([i])
                        length[i], success[i], tracked[i] = 0, False, {}
                        _record(frames, slot_ep[i], hist[i][-1], policy.cameras)
        bar.close()
    finally:
        venv.close()
    results.sort(key=lambda r: seeds.index(r["seed"]))
    k, n = sum(r["success"] for r in results), len(results)
    ci = wilson_interval(k, n)
    return {"env_id": task.env.id, "task": task.name, "n_episodes": n, "successes": k,
            "success_rate": k / n, "ci95": list(ci),
            "mean_episode_length": float(np.mean([r["length"] for r in results])),
            "episodes": results, "videos": videos, "seconds": time.perf_counter() - t0,
            "policy_seconds": policy_s, "policy_calls": policy_calls, "n_envs": n_envs,
            "temporal_ensemble_m": ensemble_m}


def _track(kept: dict[str, dict[str, float]], info: Mapping[str, Any], keys: Sequence[str], i: int) -> None:
    """Update env ``i``'s ``last`` / ``max`` of each numeric info key it reported this step."""
    for k in keys:
        if k not in info or not info.get(f"_{k}", np.ones(i + 1, bool))[i]:
            continue
        v = float(np.asarray(info[k])[i])
        old = kept.get(k)
        kept[k] = {"last": v, "max": v if old is None else max(old["max"], v)}


def _slice(obs: Mapping[str, np.ndarray], keys: Mapping[str, str], i: int) -> dict[str, np.ndarray]:
    return {k: np.asarray(obs[v][i]) for k, v in keys.items()}


def _record(frames: dict[int, list[np.ndarray]], ep: int, ob: Mapping[str, np.ndarray],
            cams: Sequence[str]) -> None:
    if ep in frames:
        frames[ep].append(tile_cameras(ob, cams))
