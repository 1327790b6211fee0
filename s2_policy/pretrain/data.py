"""In-domain frames for MAE pre-training, rendered from the project's MuJoCo tasks.

Every task is rolled out from random resets, once with random actions and once with its scripted expert plus
noise, and every ``stride``-th state is rendered from all cameras at ``render_size`` (128 px: the 2x scale of
S2 on a 64-px backbone). Each render gives the encoder both scales it meets under S2: the whole frame resized
to ``out_size`` (the base scale) and ``tiles_per_frame`` of its ``out_size`` quadrant tiles (the 2x scale's
tiles). The frames are cached as one uint8 ``(N, out_size, out_size, 3)`` ``.npy`` file with a JSON sidecar
holding the settings that made it, written atomically so an interrupted render never leaves a broken cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.ops import roi_align
from tqdm import tqdm

from s2_policy.atomic import atomic_path, atomic_write_json

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class FrameConfig:
    """What to render: tasks, cameras, how many episodes of each kind, sizes and sampling."""

    tasks: list[str] = field(
        default_factory=lambda: [
            "s2_policy/PickCube-v0",
            "s2_policy/PlaceCube-v0",
            "s2_policy/PickMarkedCube-v0",
        ]
    )
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    env_kwargs: dict = field(default_factory=lambda: {"terminate_on_success": False})
    render_size: int = 128
    out_size: int = 64
    random_episodes: int = 20
    expert_episodes: int = 30
    max_steps: int = 120
    stride: int = 2
    tiles_per_frame: int = 2
    expert_noise: float = 0.3
    random_action_prob: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        if self.render_size % self.out_size:
            raise ValueError(
                f"render_size ({self.render_size}) must be a multiple of out_size ({self.out_size}) so that "
                "its tiles are exactly out_size pixels"
            )
        n_tiles = (self.render_size // self.out_size) ** 2
        if not 0 <= self.tiles_per_frame <= n_tiles:
            raise ValueError(f"tiles_per_frame must be in [0, {n_tiles}], got {self.tiles_per_frame}")
        if self.stride < 1 or self.max_steps < 1:
            raise ValueError("stride and max_steps must be >= 1")
        if not self.tasks or not self.cameras:
            raise ValueError("tasks and cameras must be non-empty lists")

    def key(self) -> str:
        """A short hash of the settings: a cache made with other settings is not reused."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def frame_views(frame: np.ndarray, out_size: int, n_tiles: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The whole ``frame`` resized to ``out_size`` (area filter) plus ``n_tiles`` distinct random tiles."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}")
    h, w = frame.shape[:2]
    views = [cv2.resize(frame, (out_size, out_size), interpolation=cv2.INTER_AREA)]
    grid = [(i, j) for i in range(h // out_size) for j in range(w // out_size)]
    for k in rng.permutation(len(grid))[:n_tiles]:
        i, j = grid[k]
        views.append(
            np.ascontiguousarray(frame[i * out_size : (i + 1) * out_size, j * out_size : (j + 1) * out_size])
        )
    return views


def _rollout_frames(env, expert, cfg: FrameConfig, seed: int, use_expert: bool, rng: np.random.Generator):
    """Yield the camera images of every ``stride``-th state of one episode."""
    obs, _ = env.reset(seed=seed)
    if use_expert:
        expert.reset(seed)
    low, high = env.action_space.low, env.action_space.high
    for t in range(cfg.max_steps):
        if t % cfg.stride == 0:
            yield [obs[cam] for cam in cfg.cameras]
        if use_expert and rng.random() >= cfg.random_action_prob:
            action = np.asarray(expert.act(obs), dtype=np.float32)
            action = action + rng.normal(0.0, cfg.expert_noise, size=action.shape).astype(np.float32)
        else:
            action = rng.uniform(low, high).astype(np.float32)
        obs, _, terminated, truncated, _ = env.step(np.clip(action, low, high))
        if terminated or truncated:
            yield [obs[cam] for cam in cfg.cameras]
            return


def render_frames(cfg: FrameConfig, progress: bool = True) -> np.ndarray:
    """Roll out every task (random and expert-driven episodes) and return uint8 ``(N, S, S, 3)`` views."""
    cfg.validate()
    import gymnasium as gym

    import envs  # noqa: F401  (registers the s2_policy/* ids)

    rng = np.random.default_rng(cfg.seed)
    views: list[np.ndarray] = []
    total = len(cfg.tasks) * (cfg.random_episodes + cfg.expert_episodes)
    bar = tqdm(total=total, desc="render episodes", disable=not progress)
    for t_idx, task in enumerate(cfg.tasks):
        env = gym.make(task, cameras=tuple(cfg.cameras), image_size=cfg.render_size, **cfg.env_kwargs)
        try:
            expert = envs.make_expert(env) if cfg.expert_episodes else None
            episodes = [False] * cfg.random_episodes + [True] * cfg.expert_episodes
            for e_idx, use_expert in enumerate(episodes):
                seed = cfg.seed * 1_000_003 + t_idx * 10_007 + e_idx
                for frames in _rollout_frames(env, expert, cfg, seed, use_expert, rng):
                    for frame in frames:
                        views.extend(frame_views(frame, cfg.out_size, cfg.tiles_per_frame, rng))
                bar.update()
                bar.set_postfix(frames=len(views))
        finally:
            env.close()
    bar.close()
    return np.stack(views)


def load_or_render_frames(cfg: FrameConfig, cache: str | os.PathLike, progress: bool = True) -> np.ndarray:
    """Frames from the ``cache`` ``.npy`` file if it was made with the same settings, else render and cache.

    The array is memory-mapped read-only, so several runs can share one cache.
    """
    path = Path(cache)
    if path.suffix != ".npy":
        raise ValueError(f"frame cache must be a .npy path, got {str(path)!r}")
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == cfg.key():
            return np.load(path, mmap_mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = render_frames(cfg, progress=progress)
    with atomic_path(path) as tmp:
        np.save(tmp, frames)
    atomic_write_json(meta_path, {"key": cfg.key(), "config": asdict(cfg), "shape": list(frames.shape)})
    return np.load(path, mmap_mode="r")


class FrameSampler:
    """Seeded random mini-batches of frames as normalised float tensors, with MAE-style crop augmentation.

    ``crop_scale``: area range of the random-resized crop (``(1, 1)`` disables it);
    ``normalize``: ``"imagenet"`` (mean/std, as MVP) or ``"half"`` (``(x - 0.5) / 0.5``) -- use the same
    setting in the encoder config.
    The sampler's generator state is part of the training checkpoint, so resumed runs see the same batches.
    """

    def __init__(
        self,
        frames: np.ndarray,
        batch_size: int,
        seed: int = 0,
        crop_scale: Sequence[float] = (0.5, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        normalize: str = "imagenet",
    ) -> None:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
        if batch_size < 1 or batch_size > len(frames):
            raise ValueError(f"batch_size must be in [1, {len(frames)}] (number of frames), got {batch_size}")
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {tuple(crop_scale)}")
        if normalize not in ("imagenet", "half"):
            raise ValueError(f"normalize must be 'imagenet' or 'half', got {normalize!r}")
        self.frames = frames
        self.batch_size = batch_size
        self.crop_scale = tuple(crop_scale)
        self.log_ratio = (float(np.log(crop_ratio[0])), float(np.log(crop_ratio[1])))
        self.generator = torch.Generator().manual_seed(seed)
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalize == "imagenet" else ((0.5,) * 3, (0.5,) * 3)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def to_tensor(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` -> normalised float ``(B, 3, H, W)`` (no augmentation)."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std

    def _random_boxes(self, n: int, size: int) -> torch.Tensor:
        g = self.generator
        area = torch.empty(n).uniform_(*self.crop_scale, generator=g) * size * size
        ratio = torch.exp(torch.empty(n).uniform_(*self.log_ratio, generator=g))
        w = torch.sqrt(area * ratio).clamp(1, size)
        h = torch.sqrt(area / ratio).clamp(1, size)
        x0 = torch.rand(n, generator=g) * (size - w)
        y0 = torch.rand(n, generator=g) * (size - h)
        return torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + w, y0 + h], dim=1)

    def sample(self) -> torch.Tensor:
        """One augmented batch ``(B, 3, S, S)``."""
        idx = torch.randint(len(self.frames), (self.batch_size,), generator=self.generator)
        idx = np.sort(idx.numpy())  # sorted reads are kinder to a memory-mapped cache
        x = self.to_tensor(self.frames[idx])
        if self.crop_scale != (1.0, 1.0):
            size = x.shape[-1]
            x = roi_align(
                x, self._random_boxes(len(x), size), output_size=size, sampling_ratio=2, aligned=True
            )
        return x

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
