"""Linear probe of cube position from frozen encoder features: MAE-pretrained vs random-init ``s2p-*`` ViTs.

Frames come from ``s2_policy/PickCube-v0`` episodes the pre-training never saw (other seeds), half driven by
random actions and half by the noisy scripted expert (so the cube is also grasped and lifted). The target is
the cube centre (x, y, z) read from the simulator. Features are pooled from the frozen encoder built exactly
as a policy builds it (``s2_policy.encoders.build_encoder``); a ridge regression (alpha picked on a
validation split, episodes never shared between splits) maps them to the position. Printed: R^2 per axis and
mean Euclidean error in cm on the test split, as a markdown table.

    python benchmarks/probe_position.py --checkpoint builtin:s2p-tiny-mae.pth
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm import tqdm

# Imported before any MuJoCo/EGL context exists: importing it (triton, via torch) after one segfaults.
from s2_policy.encoders import EncoderConfig, build_encoder


def render_probe_set(
    n_episodes: int, steps: int, every: int, camera: str, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames ``(N, size, size, 3)`` uint8, cube positions ``(N, 3)`` in metres, episode index ``(N,)``."""
    import gymnasium as gym

    import envs

    env = gym.make("s2_policy/PickCube-v0", cameras=(camera,), image_size=size, terminate_on_success=False)
    expert = envs.make_expert(env)
    rng = np.random.default_rng(seed)
    frames, targets, episode = [], [], []
    for e in tqdm(range(n_episodes), desc="render probe episodes"):
        ep_seed = 100_000 + seed * 10_000 + e
        obs, _ = env.reset(seed=ep_seed)
        expert.reset(ep_seed)
        use_expert = e % 2 == 1
        for t in range(steps):
            if t % every == every - 1:
                frames.append(obs[camera])
                targets.append(env.unwrapped.body_pos("cube").copy())
                episode.append(e)
            if use_expert:
                action = expert.act(obs) + rng.normal(0, 0.3, env.action_space.shape)
            else:
                action = rng.uniform(-1, 1, env.action_space.shape)
            obs, *_ = env.step(np.clip(action, -1, 1).astype(np.float32))
    env.close()
    return np.stack(frames), np.stack(targets).astype(np.float64), np.array(episode)


@torch.no_grad()
def encode(cfg_kwargs: dict, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    enc = build_encoder(EncoderConfig(**cfg_kwargs))
    return np.concatenate(
        [enc(torch.from_numpy(frames[i : i + batch])).numpy() for i in range(0, len(frames), batch)]
    ).astype(np.float64)


def ridge_predict(
    feats: np.ndarray,
    y: np.ndarray,
    split: np.ndarray,
    alphas: tuple[float, ...] = (1e-2, 1e-1, 1, 10, 100, 1e3),
) -> tuple[np.ndarray, float]:
    """Ridge on standardised features: fit on split 0, pick alpha on split 1, predict split 2.

    Solved in the dual (an n x n system) when there are more features than training rows, e.g. a policy's
    token features (tens of thousands), in the primal otherwise. Returns (test predictions, chosen alpha).
    """
    tr, va, te = (split == k for k in range(3))
    mu, sd = feats[tr].mean(0), feats[tr].std(0) + 1e-6
    x = np.concatenate([(feats - mu) / sd, np.ones((len(feats), 1))], axis=1)
    y_mu = y[tr].mean(0)
    yc = y[tr] - y_mu
    if x.shape[1] > tr.sum():  # dual: w = X^T (X X^T + alpha I)^-1 y
        gram = x[tr] @ x[tr].T

        def predict(alpha: float, rows: np.ndarray) -> np.ndarray:
            coef = np.linalg.solve(gram + alpha * np.eye(len(gram)), yc)
            return (x[rows] @ x[tr].T) @ coef + y_mu
    else:
        cov, xty = x[tr].T @ x[tr], x[tr].T @ yc

        def predict(alpha: float, rows: np.ndarray) -> np.ndarray:
            return x[rows] @ np.linalg.solve(cov + alpha * np.eye(len(cov)), xty) + y_mu

    best = min(alphas, key=lambda a: float(((predict(a, va) - y[va]) ** 2).mean()))
    return predict(best, te), best


def ridge_probe(
    feats: np.ndarray,
    y: np.ndarray,
    split: np.ndarray,
    alphas: tuple[float, ...] = (1e-2, 1e-1, 1, 10, 100, 1e3),
) -> dict[str, float]:
    """:func:`ridge_predict` of a 3-D position; R^2 per axis and mean error in cm on the test split."""
    te = split == 2
    pred, best = ridge_predict(feats, y, split, alphas)
    r2 = 1 - ((pred - y[te]) ** 2).sum(0) / ((y[te] - y[te].mean(0)) ** 2).sum(0)
    err_cm = 100 * np.linalg.norm(pred - y[te], axis=1)
    return {"r2_x": r2[0], "r2_y": r2[1], "r2_z": r2[2], "err_cm": err_cm.mean(), "alpha": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="builtin:s2p-tiny-mae.pth")
    parser.add_argument("--backbone", default="s2p-tiny")
    parser.add_argument("--episodes", type=int, default=240)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=6)
    parser.add_argument("--camera", default="front")
    parser.add_argument("--size", type=int, default=128, help="render size (S2 [1, 2] on a 64-px backbone)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto", help="encoder precision (auto: bf16 on bf16 CPUs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    frames, y, episode = render_probe_set(
        args.episodes, args.steps, args.every, args.camera, args.size, args.seed
    )
    split = np.where(episode % 5 < 3, 0, np.where(episode % 5 == 3, 1, 2))  # 60/20/20 by episode
    print(
        f"{len(frames)} frames ({(split == 0).sum()}/{(split == 1).sum()}/{(split == 2).sum()} "
        f"train/val/test) rendered in {time.perf_counter() - t0:.0f} s\n"
    )

    rows = []
    for init, ckpt in (("MAE (in-domain)", args.checkpoint), ("random init", None)):
        for scales in ([1], [1, 2]):
            cfg = {
                "backbone": args.backbone,
                "checkpoint": ckpt,
                "scales": scales,
                "pooling": "cls+mean",
                "precision": args.precision,
            }
            both = encode(cfg, frames)  # [CLS over scales | mean over scales]: one pass for both poolings
            dim = both.shape[1] // 2
            for pooling, feats in (("cls", both[:, :dim]), ("mean", both[:, dim:])):
                rows.append((init, str(scales), pooling, dim, ridge_probe(feats, y, split)))
    print(
        f"Linear probe of cube position, {args.backbone} ({args.precision}), camera `{args.camera}` "
        f"({args.size} px renders), "
        "frozen features, ridge regression; test split\n"
    )
    print("| init | S2 scales | pooling | dim | R^2 x | R^2 y | R^2 z | mean error (cm) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for init, scales, pooling, dim, r in rows:
        print(
            f"| {init} | {scales} | {pooling} | {dim} | {r['r2_x']:.3f} | {r['r2_y']:.3f} | {r['r2_z']:.3f} "
            f"| {r['err_cm']:.2f} |"
        )
    std_cm = 100 * np.linalg.norm(y[split == 2] - y[split == 0].mean(0), axis=1).mean()
    print(
        f"\nPredicting the training-set mean position: {std_cm:.2f} cm mean error. "
        f"Total {time.perf_counter() - t0:.0f} s."
    )


if __name__ == "__main__":
    main()
