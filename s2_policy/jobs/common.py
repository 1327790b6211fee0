"""What every job shares: hydra schema registration, one-line user errors, the resolved task."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import hydra
from omegaconf import DictConfig

import envs  # noqa: F401  (registers the project's gymnasium ids and the task schema; sets MUJOCO_GL)
from envs.spec import TaskSpec
from s2_policy.policies import config as policy_config

policy_config.register_schema()

F = TypeVar("F", bound=Callable[..., Any])
USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def user_errors(fn: F) -> F:
    """Report ``ValueError`` / ``FileNotFoundError`` / ``KeyError`` as one line and exit 2.

    These are how the project signals bad input (config values, files, keys); the message names the problem
    and the fix. ``HYDRA_FULL_ERROR=1`` re-raises them with the full traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"error: {msg}  (HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def task_spec(cfg: DictConfig) -> TaskSpec:
    """The job's task, validated, with ``demos.path`` made absolute (hydra may change the working dir)."""
    spec = TaskSpec.from_config(cfg.task)
    spec.demos.path = str(Path(hydra.utils.to_absolute_path(spec.demos.path)))
    return spec
