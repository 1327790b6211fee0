"""Environment throughput and scripted-expert success; prints markdown tables.

    python benchmarks/bench_envs.py                       # throughput + 100-seed expert success
    python benchmarks/bench_envs.py --expert-episodes 0   # throughput only

Throughput: env steps/s (10 Hz control, 25 physics substeps per step) of PickCube with random actions, without
rendering, with 1 and 2 cameras at 128 and 448 px, single env and an AsyncVectorEnv of 2 spawned workers, plus
the cost of turning shadows and 4x multisampling on. Each row is the median of ``--repeats`` timed runs; the
repeats cycle through all rows so that load changes on a shared machine affect every row alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
from tqdm import tqdm

import envs

ENV_ID = "envs:s2_policy/PickCube-v0"  # the "envs:" prefix imports envs in spawned workers


def _make(cameras: tuple[str, ...], size: int, fancy: bool = False) -> gym.Env:
    env = gym.make(ENV_ID, cameras=cameras, image_size=size)
    if fancy:  # shadows + multisampling, set before the first render creates the GL context
        m = env.unwrapped.model
        m.vis.quality.shadowsize, m.vis.quality.offsamples = 4096, 4
        m.light_castshadow[:] = 1
    return env


def _time_single(env: gym.Env, n_steps: int, rng: np.random.Generator) -> float:
    env.reset(seed=0)
    t = time.perf_counter()
    for _ in range(n_steps):
        _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        if term or trunc:
            env.reset()
    return n_steps / (time.perf_counter() - t)


def _time_vector(vec: gym.vector.VectorEnv, n_steps: int, rng: np.random.Generator) -> float:
    vec.reset(seed=0)
    t = time.perf_counter()
    for _ in range(n_steps):
        vec.step(rng.uniform(-1, 1, (vec.num_envs, 4)).astype(np.float32))  # autoreset handles episode ends
    return n_steps * vec.num_envs / (time.perf_counter() - t)


def throughput(repeats: int, n_steps: int) -> None:
    rng = np.random.default_rng(0)
    rows = [
        ("single", (), 128, False),
        ("single", ("front",), 128, False),
        ("single", ("front", "wrist"), 128, False),
        ("single", ("front",), 448, False),
        ("single", ("front", "wrist"), 448, False),
        ("single", ("front", "wrist"), 128, True),
        ("vector x2", (), 128, False),
        ("vector x2", ("front", "wrist"), 128, False),
        ("vector x2", ("front", "wrist"), 448, False),
    ]
    runners = []  # every config stays alive; repeats run round-robin so load changes hit all rows alike
    for mode, cams, size, fancy in rows:
        steps = max(10, n_steps // 20) if fancy else n_steps if size == 128 else max(20, n_steps // 4)
        if mode == "single":
            env = _make(cams, size, fancy)
            runners.append((env, lambda n, e=env: _time_single(e, n, rng), steps))
        else:
            vec = gym.vector.AsyncVectorEnv([lambda c=cams, s=size: _make(c, s)] * 2, context="spawn")
            runners.append((vec, lambda n, v=vec: _time_vector(v, n, rng), steps))
    rates: list[list[float]] = [[] for _ in rows]
    for _, run, _ in runners:
        run(5)  # warm-up: GL contexts, first renders
    for _ in tqdm(range(repeats), desc="throughput repeats"):
        for i, (_, run, steps) in enumerate(runners):
            rates[i].append(run(steps))
    for env, _, _ in runners:
        env.close()
    results = [(*row, statistics.median(r)) for row, r in zip(rows, rates, strict=True)]
    base = results[0][4]
    print("\n| mode | cameras | px | render | steps/s (median) | x no-render single |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mode, cams, size, fancy, rate in results:
        cam = "+".join(cams) if cams else "none (state only)"
        render = "shadows + 4x MSAA" if fancy else ("fast (default)" if cams else "-")
        print(f"| {mode} | {cam} | {size if cams else '-'} | {render} | {rate:.0f} | {rate / base:.2f} |")


def expert_success(n_episodes: int) -> None:
    print(f"\n| task | expert success ({n_episodes} seeds) | mean steps | max steps | limit |")
    print("| --- | --- | --- | --- | --- |")
    for name, env_id in envs.TASKS.items():
        env = gym.make(env_id, cameras=())
        expert = envs.make_expert(env)
        wins, lengths, failed = 0, [], []
        for seed in tqdm(range(n_episodes), desc=name):
            obs, _ = env.reset(seed=seed)
            expert.reset(seed=seed)
            for t in range(env.spec.max_episode_steps):  # noqa: B007 (t = episode length - 1)
                obs, _, term, trunc, info = env.step(expert.act(obs))
                if term or trunc:
                    break
            wins += info["is_success"]
            lengths.append(t + 1)
            if not info["is_success"]:
                failed.append(seed)
        env.close()
        note = f" (failed seeds {failed})" if failed else ""
        print(
            f"| {name} | {wins / n_episodes:.0%}{note} | {np.mean(lengths):.1f} | {max(lengths)} "
            f"| {env.spec.max_episode_steps} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100, help="timed steps per run (128 px; 448: 1/4)")
    ap.add_argument("--expert-episodes", type=int, default=100)
    args = ap.parse_args()
    throughput(args.repeats, args.steps)
    if args.expert_episodes:
        expert_success(args.expert_episodes)


if __name__ == "__main__":
    main()
