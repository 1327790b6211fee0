"""Fine-detail probe: is PickMarkedCube's mark resolvable at the S2 base resolution (64 px) or only at 2x?

    python benchmarks/probe_fine_detail.py                    # random-init s2p-tiny
    python benchmarks/probe_fine_detail.py --checkpoint builtin:s2p-tiny-mae.pth --n-scenes 1000

1. Mark footprint: pixels of the front camera that change when the mark is shown vs hidden, at 64 and 128 px.
2. Linear probes (ridge classifiers on standardised features, L2 chosen on a validation split) predicting
   which of the three look-alike cubes is marked, from one front image per scene rendered at 128 px, on:
   raw pixels at 64 px (the 128 px render bicubic-downsampled, as S2 does) and at 128 px; frozen
   ``s2p-tiny`` features at the base scale (img 64) and with S2 (scales [1, 2] = [64, 128]), token
   features and CLS features.
Chance is 1/3. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import envs  # noqa: F401  (registers the task ids)


def render_scenes(n: int, size: int, seed0: int) -> tuple[np.ndarray, np.ndarray]:
    """Front images (n, size, size, 3) of freshly reset PickMarkedCube scenes and the marked index."""
    env = gym.make("s2_policy/PickMarkedCube-v0", cameras=("front",), image_size=size)
    imgs, labels = [], []
    for i in tqdm(range(n), desc="render"):
        obs, _ = env.reset(seed=seed0 + i)
        imgs.append(obs["front"])
        labels.append(env.unwrapped.marked)
    env.close()
    return np.stack(imgs), np.array(labels)


def mark_footprint(sizes: list[int], n: int = 20) -> dict[int, float]:
    """Median count of front-camera pixels that change by > 24 levels when the mark is hidden."""
    import mujoco  # after envs: MUJOCO_GL must be set before mujoco is first imported

    out = {}
    for size in sizes:
        env = gym.make("s2_policy/PickMarkedCube-v0", cameras=("front",), image_size=size)
        u, counts = env.unwrapped, []
        for s in range(n):
            env.reset(seed=s)
            shown = u.render_camera("front")
            mark = u.model.geom(f"mark{u.marked}")
            pos = mark.pos.copy()
            mark.pos = 0.0  # hide it inside the cube
            mujoco.mj_forward(u.model, u.data)
            hidden = u.render_camera("front")
            mark.pos = pos
            mujoco.mj_forward(u.model, u.data)
            counts.append(int((np.abs(shown.astype(int) - hidden.astype(int)).max(-1) > 24).sum()))
        env.close()
        out[size] = float(np.median(counts))
    return out


def fit_probe(x: np.ndarray, y: np.ndarray, n_train: int, n_val: int) -> float:
    """Test accuracy of a ridge classifier (one-hot least squares, L2 picked on the validation split).

    Solved in the dual (an n x n kernel), so 50k-dimensional raw pixels cost about as much as 200-d features.
    """
    x = torch.as_tensor(x.reshape(len(x), -1), dtype=torch.float64)
    onehot = F.one_hot(torch.as_tensor(y, dtype=torch.long), 3).double() * 2 - 1
    fit_end = n_train + n_val

    def predict(train: slice, test: slice, l2: float) -> torch.Tensor:
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
        xt, xs = (x[train] - mu) / sd, (x[test] - mu) / sd
        t = onehot[train]
        k = xt @ xt.T
        reg = l2 * k.diagonal().mean() * torch.eye(len(k), dtype=k.dtype)
        alpha = torch.linalg.solve(k + reg, t - t.mean(0))
        return (xs @ xt.T @ alpha + t.mean(0)).argmax(1)

    def acc(pred: torch.Tensor, test: slice) -> float:
        return float((pred == torch.as_tensor(y[test])).double().mean())

    tr, va, te = slice(0, n_train), slice(n_train, fit_end), slice(fit_end, None)
    best = max((acc(predict(tr, va, l2), va), l2) for l2 in (1e-4, 1e-3, 1e-2, 1e-1, 1.0))[1]
    return acc(predict(slice(0, fit_end), te, best), te)


def encoder_features(
    images: np.ndarray, scales: list[int], pooling: str, checkpoint: str | None
) -> np.ndarray:
    """Frozen s2p-tiny features of (N, H, W, 3) uint8 images, flattened per image."""
    from s2_policy.encoders import EncoderConfig, build_encoder

    cfg = EncoderConfig(backbone="s2p-tiny", checkpoint=checkpoint, scales=scales, pooling=pooling)
    enc = build_encoder(cfg)
    feats = [enc(torch.from_numpy(images[i : i + 64])).numpy() for i in range(0, len(images), 64)]
    return np.concatenate(feats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-scenes", type=int, default=900)
    ap.add_argument("--checkpoint", default=None, help="s2p-tiny weights (default: random init)")
    ap.add_argument("--seed", type=int, default=10_000)
    args = ap.parse_args()
    torch.manual_seed(0)

    fp = mark_footprint([64, 128])
    print("\n| front camera | mark pixels (median over 20 scenes) |\n| --- | --- |")
    for size, count in fp.items():
        print(f"| {size} px | {count:.0f} |")

    imgs, labels = render_scenes(args.n_scenes, 128, args.seed)
    n = len(imgs)
    n_train, n_val = int(0.6 * n), int(0.2 * n)
    x128 = torch.from_numpy(imgs).permute(0, 3, 1, 2).float()
    x64 = F.interpolate(x128, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 255)
    rows: list[tuple[str, str, int]] = []
    feats: dict[tuple[str, str], np.ndarray] = {
        ("raw pixels", "64 px"): x64.numpy(),
        ("raw pixels", "128 px"): x128.numpy(),
    }
    weights = args.checkpoint or "random init"
    for pooling in ("tokens", "cls"):
        for scales, label in (([1], "base [64]"), ([1, 2], "S2 [64, 128]")):
            t = time.perf_counter()
            f = encoder_features(imgs, scales, pooling, args.checkpoint)
            feats[(f"s2p-tiny ({weights}) {pooling}", label)] = f
            print(f"encoded {pooling} {label}: {f.shape} in {time.perf_counter() - t:.1f} s")
    results = []
    for (kind, res), x in tqdm(feats.items(), desc="probes"):
        rows.append((kind, res, int(np.prod(x.shape[1:]))))
        results.append(fit_probe(x, labels, n_train, n_val))
    n_test = n - n_train - n_val
    print(f"\nWhich cube is marked? Ridge probe accuracy on {n_test} held-out scenes of {n} (chance 0.33)\n")
    print("| features | resolution | dim | test accuracy |\n| --- | --- | --- | --- |")
    for (kind, res, dim), accuracy in zip(rows, results, strict=True):
        print(f"| {kind} | {res} | {dim} | {accuracy:.2f} |")


if __name__ == "__main__":
    main()
