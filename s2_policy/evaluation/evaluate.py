"""Evaluate a saved policy in simulation: ``python -m s2_policy.evaluation.evaluate checkpoint=PATH``.

Rollouts over a fixed list of seeds (``seed_start .. seed_start + n_episodes - 1``), success rate with a
Wilson 95 % interval, mean episode length, mp4 videos of the first episodes, and a JSON result that
``s2_policy.evaluation.compare`` reads. The task (env id, cameras, obs keys) defaults to the one stored in
the checkpoint; ``task=...`` overrides it with a ``configs/task`` name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from s2_policy.atomic import atomic_write_json
from s2_policy.evaluation.rollout import EnvSpec, run_rollouts
from s2_policy.runtime import configure_cpu

log = logging.getLogger(__name__)


def evaluate_policy(policy: Any, task: Mapping[str, Any], n_episodes: int = 50, n_envs: int = 1,
                    seed_start: int = 100_000, video_dir: str | Path | None = None, n_videos: int = 2,
                    progress: bool = True) -> dict[str, Any]:
    """Roll ``policy`` out on ``task`` (a ``configs/task`` mapping) for seeds ``seed_start + i``."""
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    spec = EnvSpec.from_task(task)
    seeds = list(range(int(seed_start), int(seed_start) + int(n_episodes)))
    res = run_rollouts(policy, spec, seeds, n_envs=n_envs, video_dir=video_dir, n_videos=n_videos,
                       progress=progress)
    res["task"] = task.get("name", spec.env_id)
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


@hydra.main(config_path="../../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    """Hydra entry point (see ``configs/eval.yaml``)."""
    from s2_policy.evaluation.profile import encoder_profile, task_image_sizes
    from s2_policy.policies import Policy

    if cfg.checkpoint is None:
        raise ValueError("give the policy to evaluate: checkpoint=path/to/policy.pt")
    configure_cpu(cfg.num_threads)
    ckpt = Path(hydra.utils.to_absolute_path(str(cfg.checkpoint)))
    policy = Policy.load(ckpt, device=cfg.device, trust_pickle=bool(cfg.get("trust_pickle", False)))
    task = OmegaConf.to_container(cfg.task, resolve=True) if cfg.get("task") else policy.meta.get("task")
    if not task:
        raise ValueError(f"{ckpt} stores no task config; pass task=<configs/task name>")
    out = Path(cfg.out) if cfg.out else ckpt.parent / f"eval_{task['name']}.json"
    res = evaluate_policy(policy, task, cfg.n_episodes, cfg.n_envs, cfg.seed_start,
                          video_dir=out.parent / "videos" if cfg.n_videos else None, n_videos=cfg.n_videos)
    result = {"label": policy.meta.get("label", ckpt.stem), "checkpoint": str(ckpt), "rollout": res,
              "encoder": {"identity": policy.encoder_identity,
                          **encoder_profile(policy.encoder, task_image_sizes(task))},
              "trainable_params": policy.trainable_parameters(), "policy_config": policy.config,
              "seed": policy.meta.get("seed")}
    write_json(result, out)
    print(format_result(res))
    print(f"result: {out}")
    return result


if __name__ == "__main__":
    main()
