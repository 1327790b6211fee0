"""Figures for the model card: the loss curve and masked inputs next to their MAE reconstructions."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from s2_policy.atomic import atomic_path
from s2_policy.pretrain.data import FrameSampler  # noqa: E402
from s2_policy.pretrain.mae import MaskedAutoencoder  # noqa: E402


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_loss(log_csv: str | os.PathLike, png: str | os.PathLike, title: str = "MAE pre-training") -> Path:
    """Plot the ``loss.csv`` written by the training loop (loss vs step, learning rate on a second axis)."""
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{log_csv} has no logged steps yet")
    step = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    lr = np.array([float(r["lr"]) for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(step, loss, lw=1.2, label="masked-patch loss (normalised pixels)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{title}: {loss[-1]:.3f} at step {step[-1]}")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(step, lr, color="tab:orange", lw=0.8, alpha=0.6)
    ax2.set_ylabel("learning rate", color="tab:orange")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, png)


@torch.no_grad()
def plot_reconstructions(
    model: MaskedAutoencoder, frames: np.ndarray, sampler: FrameSampler, png: str | os.PathLike, seed: int = 0
) -> Path:
    """One row per frame: original, masked input (removed patches grey), reconstruction, reconstruction with
    the visible patches pasted back. ``sampler`` supplies the normalisation the model was trained with."""
    model.eval()
    x = sampler.to_tensor(frames)
    gen = torch.Generator().manual_seed(seed)
    _, pred, mask = model(x, generator=gen)
    recon = model.reconstruct(x, pred)
    p = model.patch_size
    mask_img = mask.reshape(-1, model.grid_size, model.grid_size)
    mask_img = mask_img.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None]

    def to_img(t: torch.Tensor) -> np.ndarray:
        return ((t * sampler.std + sampler.mean).clamp(0, 1).permute(0, 2, 3, 1)).numpy()

    cols = {
        "original": to_img(x),
        "masked (75%)": to_img(x * (1 - mask_img) + mask_img * (0.5 - sampler.mean) / sampler.std),
        "reconstruction": to_img(recon),
        "+ visible": to_img(x * (1 - mask_img) + recon * mask_img),
    }
    n = len(frames)
    fig, axes = plt.subplots(n, len(cols), figsize=(1.6 * len(cols), 1.6 * n), squeeze=False)
    for c, (name, imgs) in enumerate(cols.items()):
        for r in range(n):
            axes[r, c].imshow(imgs[r], interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[0, c].set_title(name, fontsize=8)
    return _save(fig, png)
