"""Evaluate a policy in simulation on the task's seed plan (the command: ``s2_policy.jobs.evaluate``).

Rollouts over the first ``n_episodes`` test (or selection) seeds of the task, refused if any is a
demonstration seed; success rate with a Wilson 95 % interval, mean episode length, mp4 videos of the first
episodes, and a JSON-able result that ``s2_policy.evaluation.compare`` reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from envs.spec import TaskSpec
from s2_policy.atomic import atomic_write_json
from s2_policy.evaluation.rollout import run_rollouts
from s2_policy.evaluation.seeds import eval_seeds


def evaluate_policy(policy: Any, task: TaskSpec, n_episodes: int = 50, n_envs: int = 1, role: str = "test",
                    video_dir: str | Path | None = None, n_videos: int = 2,
                    progress: bool = True, info_keys: Sequence[str] = ()) -> dict[str, Any]:
    """Roll ``policy`` out on the first ``n_episodes`` ``role`` seeds of ``task`` (never demonstration
    seeds); ``info_keys``: env info values kept per episode (:func:`run_rollouts`)."""
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    seeds = eval_seeds(task, role, n_episodes, task.demos.path)
    res = run_rollouts(policy, task, seeds, n_envs=n_envs, video_dir=video_dir, n_videos=n_videos,
                       progress=progress, info_keys=info_keys)
    res["seed_role"] = role
    res["demo_store"] = task.demos.path  # compare re-checks the seeds against the store's demo seeds
    return res


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Atomic JSON write (temp file + ``os.replace``)."""
    return atomic_write_json(path, obj, default=_json_default)


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def format_result(res: Mapping[str, Any]) -> str:
    """One line: success rate with its 95 % interval and the mean episode length."""
    lo, hi = res["ci95"]
    return (f"{res.get('task', res['env_id'])}: success {res['success_rate']:.1%} "
            f"({res['successes']}/{res['n_episodes']}, Wilson 95% CI [{lo:.1%}, {hi:.1%}]), "
            f"mean episode length {res['mean_episode_length']:.1f}")
