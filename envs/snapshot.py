"""Write one PNG per task showing every camera at the start of an episode and mid-way through the expert's.

python -m envs.snapshot --out docs/images --size 256
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np

import envs
from s2_policy.atomic import atomic_path


def _frames(env_id: str, size: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Observations at reset and at the step where the expert has just lifted the object (or half-way)."""
    env = gym.make(env_id, image_size=size)
    expert = envs.make_expert(env)
    obs, _ = env.reset(seed=seed)
    expert.reset(seed=seed)
    first, steps = obs, []
    for _ in range(env.spec.max_episode_steps):
        obs, _, term, trunc, _ = env.step(expert.act(obs))
        steps.append(obs)
        if term or trunc:
            break
    env.close()
    k = max(0, len(steps) - 4)  # a few steps before the end: object in the gripper
    return first, steps[k], k + 1


def save_task_png(name: str, out_dir: Path, size: int = 256, seed: int = 0) -> Path:
    """Grid of camera views (columns) at reset and late in an expert episode (rows) for task ``name``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, later, step = _frames(envs.TASKS[name], size, seed)
    cams = [k for k in first if k != "state"]
    fig, axes = plt.subplots(2, len(cams), figsize=(3 * len(cams), 6.2), squeeze=False)
    for row, (obs, label) in enumerate([(first, "reset"), (later, f"expert, step {step}")]):
        for col, cam in enumerate(cams):
            ax = axes[row][col]
            ax.imshow(obs[cam])
            ax.set_title(f"{cam} ({label})", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"{envs.TASKS[name]}  (seed {seed}, {size} px)", fontsize=10)
    fig.tight_layout()
    path = out_dir / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for name in envs.TASKS:
        print(save_task_png(name, args.out, args.size, args.seed))


if __name__ == "__main__":
    main()
