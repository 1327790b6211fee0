"""Evaluation seeds from the task's seed plan, checked against the demonstrations' seeds.

Every command that evaluates (main job, ``evaluate``, the real-time simulator, comparisons) takes its seeds
from here, so none can run on a seed the store records as a demonstration seed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from envs.spec import TaskSpec
from s2_policy.data.store import ReplayStore

log = logging.getLogger(__name__)


def recorded_demo_seeds(store_path: str | Path) -> set[int] | None:
    """Env seeds the store records as demonstration candidates (kept and failed); ``None`` if it records
    none."""
    path = Path(store_path)
    if not path.exists():
        return None
    attrs = ReplayStore.open(path, mode="r", validate=False).attrs
    if "episode_seeds" not in attrs:
        return None
    return {int(s) for s in (*attrs.get("episode_seeds", []), *attrs.get("failed_seeds", []))}


def check_eval_seeds(task: TaskSpec, seeds: Sequence[int], store_path: str | Path | None = None) -> None:
    """Refuse evaluation seeds that are demonstration seeds (recorded in the store or in the plan's demo
    range)."""
    demo_range = task.seeds.ranges()["demo"]
    in_plan = sorted(s for s in seeds if s in demo_range)
    recorded = recorded_demo_seeds(store_path) if store_path is not None else None
    in_store = sorted(set(seeds) & recorded) if recorded else []
    bad = sorted(set(in_plan) | set(in_store))
    if bad:
        where = f"recorded as demonstration seeds in {store_path}" if in_store else \
            f"in the task's demonstration seed range {demo_range}"
        raise ValueError(f"evaluation seeds {bad[:5]}{' ...' if len(bad) > 5 else ''} are {where}; "
                         "evaluate on "
                         f"the task's test seeds (task.seeds.test={task.seeds.test}) or selection seeds, "
                         "which "
                         "are disjoint from the demonstrations")
    if store_path is not None and recorded is None and Path(store_path).exists():
        log.info("%s records no demonstration seeds (not collected by s2_policy.collect); evaluation "
                 "seeds are "
                 "checked against the seed plan only", store_path)


def eval_seeds(task: TaskSpec, role: str, n_episodes: int, store_path: str | Path | None = None) -> list[int]:
    """The first ``n_episodes`` seeds of ``role`` (``test`` or ``selection``), checked against the demos."""
    seeds = task.seeds.seeds(role, n_episodes)
    check_eval_seeds(task, seeds, store_path)
    return seeds
