"""``python -m s2_policy.jobs.collect task=pick_cube``: scripted-expert demonstrations into the task's store.

Runs the task's expert (``task.demos.expert``) on the demo seeds of its seed plan in spawned workers and
appends successful episodes (resumable: re-running adds only the missing ones). See :mod:`s2_policy.collect`.
"""

from __future__ import annotations

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from s2_policy.collect import collect_demos
from s2_policy.jobs.common import task_spec, user_errors


@hydra.main(config_path="../../configs", config_name="collect", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> None:
    """Hydra entry point (see ``configs/collect.yaml``)."""
    task = task_spec(cfg)
    n = int(cfg.n_episodes) if cfg.n_episodes is not None else task.demos.n_episodes
    out = to_absolute_path(cfg.out) if cfg.out else task.demos.path
    path = collect_demos(task, out, n, int(cfg.n_workers))
    print(f"store: {path}")


if __name__ == "__main__":
    main()
