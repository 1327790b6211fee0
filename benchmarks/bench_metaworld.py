"""MetaWorld scripted experts: success over many seeds per task, episode lengths, time per episode.

Usage (needs the metaworld extra, mujoco 3.3.0):
``python benchmarks/bench_metaworld.py [--seeds 100] [--role test] [--tasks assembly hammer ...]``

Each task's config (``configs/task/metaworld/<task>.yaml``) gives the env and the step limit; episodes run
without rendering on the seed plan's ``test`` (or ``demo``) seeds, so with 100 seeds they cover two fresh MT1
pools (100 distinct scenes). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
from omegaconf import OmegaConf

os.environ.setdefault("MUJOCO_GL", "egl")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from envs import metaworld as mw  # noqa: E402  (after sys.path)
from envs.spec import SEED_STRIDE, TaskSpec  # noqa: E402

TASKS = ["assembly", "bin-picking", "button-press-topdown", "drawer-open", "hammer"]


def load(task: str) -> TaskSpec:
    cfg = OmegaConf.load(REPO / "configs" / "task" / "metaworld" / f"{task}.yaml")
    cfg.pop("defaults", None)
    return TaskSpec.from_config(cfg)


def run_task(task: str, seeds: list[int]) -> dict[str, float]:
    spec = load(task)
    env = gym.make(spec.env.id, **{**spec.env.kwargs, "render_mode": None},
                   max_episode_steps=spec.env.max_episode_steps)
    expert = mw.make_expert(env)
    wins, lengths, times = [], [], []
    try:
        for seed in seeds:
            env.reset(seed=seed)
            expert.reset(seed)
            t0 = time.perf_counter()
            steps, info = 0, {"success": 0.0}
            done = False
            while not done:
                _, _, terminated, truncated, info = env.step(expert.act(None))
                steps += 1
                done = terminated or truncated
            times.append(time.perf_counter() - t0)
            wins.append(bool(info["success"]))
            if wins[-1]:
                lengths.append(steps)
    finally:
        env.close()
    return {"n": len(seeds), "success": sum(wins), "len_median": statistics.median(lengths) if lengths else 0,
            "len_max": max(lengths, default=0), "limit": spec.env.max_episode_steps,
            "s_per_episode": statistics.median(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--role", choices=["test", "demo"], default="test")
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    args = ap.parse_args()
    print("| task | successes | rate | steps median | steps max | step limit | s / episode (no render) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for task in args.tasks:
        plan = load(task).seeds
        start = plan.test if args.role == "test" else plan.demo * SEED_STRIDE
        r = run_task(task, list(range(start, start + args.seeds)))
        print(f"| {task} | {r['success']}/{r['n']} | {r['success'] / r['n']:.0%} | {r['len_median']:.0f} | "
              f"{r['len_max']} | {r['limit']} | {r['s_per_episode']:.3f} |", flush=True)
    print(f"\nseeds: {args.role} seeds, {args.seeds} per task; metaworld {mw.version('metaworld')}, "
          f"mujoco {mw.version('mujoco')}")


if __name__ == "__main__":
    main()
