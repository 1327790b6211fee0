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
    range) or, with ``seeds.scene_pool``, share a scene block with one (they could replay a demo scene)."""
    plan = task.seeds
    demo_range = plan.ranges()["demo"]
    demo_blocks = range(plan.block(demo_range.start), plan.block(demo_range.stop - 1) + 1)
    in_plan = sorted(s for s in seeds if plan.block(s) in demo_blocks)
    recorded = recorded_demo_seeds(store_path) if store_path is not None else None
    recorded_blocks = {plan.block(s) for s in recorded} if recorded else set()
    in_store = sorted(s for s in seeds if plan.block(s) in recorded_blocks)
    bad = sorted(set(in_plan) | set(in_store))
    if bad:
        what = f"demonstration seeds or in their scene blocks (seeds.scene_pool={plan.scene_pool})" \
            if plan.scene_pool else "demonstration seeds"
        where = f"recorded as {what} in {store_path}" if in_store else \
            f"in the task's demonstration seed range {demo_range}" + \
            (f" (scene blocks of {plan.scene_pool})" if plan.scene_pool else "")
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
