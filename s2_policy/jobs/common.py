"""What every job shares: hydra schema registration, one-line user errors, the resolved task."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

import envs  # noqa: F401  (registers the project's gymnasium ids and the task schema; sets MUJOCO_GL)
from envs.spec import TaskSpec
from s2_policy.cli import user_errors
from s2_policy.policies import config as policy_config

policy_config.register_schema()

__all__ = ["task_spec", "user_errors"]


def task_spec(cfg: DictConfig) -> TaskSpec:
    """The job's task, validated, with ``demos.path`` made absolute (hydra may change the working dir)."""
    spec = TaskSpec.from_config(cfg.task)
    spec.demos.path = str(Path(hydra.utils.to_absolute_path(spec.demos.path)))
    return spec
