"""In-domain frames for MAE pre-training: rendered from the project's MuJoCo tasks or read from stores.

Rendered: every task is rolled out from random resets, once with random actions and once with its scripted
expert plus noise, and every ``stride``-th state is rendered from all cameras at ``render_size`` (128 px: the
2x scale of S2 on a 64-px backbone). From stores (``stores`` non-empty, no simulator needed): every
``stride``-th frame of every episode of each demonstration store, for each of ``cameras``; stored images must
already be ``render_size`` square RGB.

Each frame gives the encoder the scales it meets under S2: the whole frame resized to ``out_size`` (the
base scale) and, per tiled scale ``s`` of ``tile_scales`` (default: ``render_size // out_size`` alone, the 2x
scale at 128 px), ``tiles_per_frame`` of the ``out_size`` tiles of the frame resized to ``s * out_size``. The
frames are cached as one uint8 ``(N, out_size, out_size, 3)`` ``.npy`` file with a JSON sidecar holding the
settings that made it, written atomically so an interrupted run never leaves a broken cache.
"""

from __future__ import annotations

import glob
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
from s2_policy.data.feature_cache import store_identity
from s2_policy.data.frame_reader import FrameReader
from s2_policy.data.store import ReplayStore, is_image_array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What frames read from stores depend on (the rollout settings do not apply to them).
STORE_SETTINGS = ("cameras", "render_size", "out_size", "stride", "tiles_per_frame", "tile_scales", "seed")
STORE_READ_BLOCK = 256  # kept frames of one camera decoded at a time: bounds memory on long episodes


@dataclass
class FrameConfig:
    """Where frames come from (rendered tasks or demonstration stores), cameras, sizes and sampling.

    ``stores``: paths of demonstration stores (diffusion_policy layout), or glob patterns
    (``datasets/mw/*.zarr``: every match, sorted). When non-empty, frames are read from them instead of
    rendering ``tasks``, and ``tasks``, ``env_kwargs``, the episode counts, ``max_steps``, ``expert_noise``
    and ``random_action_prob`` are unused. ``cameras`` then names the image arrays
    (``data/<camera>``) read from every store; their images must be ``render_size`` square RGB.

    ``tile_scales``: the S2 scales (multiples of ``out_size``) whose tiles are kept, ``tiles_per_frame`` per
    scale; empty: the render's own scale alone (``render_size // out_size``). E.g. 256-px frames for S2
    [64, 128, 256] use ``[2, 4]``, so the encoder meets the 2x and the 4x tiles it will see.
    """

    tasks: list[str] = field(
        default_factory=lambda: [
            "s2_policy/PickCube-v0",
            "s2_policy/PlaceCube-v0",
            "s2_policy/PickMarkedCube-v0",
        ]
    )
    stores: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    env_kwargs: dict = field(default_factory=lambda: {"terminate_on_success": False})
    render_size: int = 128
    out_size: int = 64
    random_episodes: int = 20
    expert_episodes: int = 30
    max_steps: int = 120
    stride: int = 2
    tiles_per_frame: int = 2
    tile_scales: list[int] = field(default_factory=list)
    expert_noise: float = 0.3
    random_action_prob: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        if self.render_size % self.out_size:
            raise ValueError(
                f"render_size ({self.render_size}) must be a multiple of out_size ({self.out_size}) so that "
                "its tiles are exactly out_size pixels"
            )
        top = self.render_size // self.out_size
        if len(set(self.tile_scales)) != len(self.tile_scales):
            raise ValueError(f"tile_scales lists a scale twice ({list(self.tile_scales)}); list each once")
        for s in self.tile_scales:
            if not (2 <= s <= top and self.render_size % (s * self.out_size) == 0):
                raise ValueError(
                    f"tile_scales holds {s}: each tiled scale must be an integer >= 2 with s * out_size "
                    f"dividing render_size ({self.render_size}), i.e. a divisor of {top} above 1; e.g. "
                    f"tile_scales=[2, 4] for 256-px frames and out_size 64"
                )
        n_tiles = min(s * s for s in self.scales())
        if not 0 <= self.tiles_per_frame <= n_tiles:
            raise ValueError(f"tiles_per_frame must be in [0, {n_tiles}], got {self.tiles_per_frame}")
        if self.stride < 1 or self.max_steps < 1:
            raise ValueError("stride and max_steps must be >= 1")
        if not self.cameras:
            raise ValueError("cameras must be a non-empty list")
        if not self.stores and not self.tasks:
            raise ValueError("tasks must be a non-empty list (or set stores to read frames from stores)")

    def store_paths(self) -> list[str]:
        """``stores`` with glob patterns expanded (sorted matches, each path once, in the order listed)."""
        paths: list[str] = []
        for entry in self.stores:
            if not any(c in entry for c in "*?["):
                paths.append(entry)
                continue
            matches = sorted(glob.glob(entry))
            if not matches:
                raise FileNotFoundError(
                    f"data.stores pattern {entry!r} matches nothing (relative patterns start from the "
                    f"working directory {os.getcwd()}); fix the pattern or collect the stores first"
                )
            paths.extend(matches)
        return list(dict.fromkeys(paths))

    def scales(self) -> list[int]:
        """The tiled scales: ``tile_scales``, or the render's own scale when it is empty."""
        return list(self.tile_scales) or [self.render_size // self.out_size]

    def views_per_frame(self) -> int:
        """Views each camera frame gives: the whole frame plus ``tiles_per_frame`` per tiled scale."""
        return 1 + self.tiles_per_frame * len(self.scales())

    def key(self) -> str:
        """A short hash of what the frames depend on: a cache made otherwise is not reused.

        Rendered frames: every setting (``stores`` is left out while empty, so caches made before it existed
        keep their key). Frames from stores: :data:`STORE_SETTINGS` plus, per store, its resolved path and
        content identity (episode ends, image shapes, first and last frame of every episode:
        :func:`~s2_policy.data.feature_cache.store_identity`); this opens the stores and checks their cameras.
        """
        if self.stores:
            fields = {k: getattr(self, k) for k in STORE_SETTINGS}
            fields["stores"] = [
                [str(store.path.resolve()), store_identity(store, self.cameras)]
                for store in open_frame_stores(self)
            ]
            fields["source"] = "stores"
        else:
            fields = asdict(self)
            del fields["stores"]
        if not self.tile_scales:  # left out while empty, so caches made before it existed keep their key
            del fields["tile_scales"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def frame_views(frame: np.ndarray, out_size: int, n_tiles: int, rng: np.random.Generator,
                scales: Sequence[int] | None = None) -> list[np.ndarray]:
    """The whole ``frame`` resized to ``out_size`` (area filter) plus, per scale ``s`` of ``scales`` (default:
    the frame's own, ``H // out_size``), ``n_tiles`` distinct random ``out_size`` tiles of the frame resized
    to ``s * out_size``: the tiles S2 feeds the encoder at that scale."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}")
    h = frame.shape[0]
    views = [cv2.resize(frame, (out_size, out_size), interpolation=cv2.INTER_AREA)]
    for s in scales or [h // out_size]:
        size = s * out_size
        image = frame if size == h else cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
        for k in rng.permutation(s * s)[:n_tiles]:
            i, j = divmod(int(k), s)
            views.append(np.ascontiguousarray(
                image[i * out_size : (i + 1) * out_size, j * out_size : (j + 1) * out_size]
            ))
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
                        views.extend(frame_views(frame, cfg.out_size, cfg.tiles_per_frame, rng, cfg.scales()))
                bar.update()
                bar.set_postfix(frames=len(views))
        finally:
            env.close()
    bar.close()
    return np.stack(views)


def _camera_names(store: ReplayStore) -> list[str]:
    """The store's cameras: its ``cameras`` attribute, then any other (T, H, W, C) array."""
    extra = [k for k in store if is_image_array(tuple(store[k].shape))]
    return list(dict.fromkeys([*store.image_keys(), *extra]))


def open_frame_stores(cfg: FrameConfig) -> list[ReplayStore]:
    """Open ``cfg.stores`` (patterns expanded) read-only; check each has every camera as render_size RGB."""
    size, out = cfg.render_size, cfg.out_size
    stores = []
    for path in cfg.store_paths():
        try:
            store = ReplayStore.open(path, mode="r")
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"data.stores lists {path!r} but there is no store there (relative paths start from the "
                f"working directory {os.getcwd()}); fix the path or collect the store first"
            ) from e
        if not store.n_episodes:
            raise ValueError(
                f"store {path} holds no complete episode: collect demonstrations into it or drop it from "
                "data.stores"
            )
        have = _camera_names(store)
        missing = [c for c in cfg.cameras if c not in have]
        if missing:
            raise ValueError(
                f"store {path} has no camera{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))} "
                f"(data.cameras = {list(cfg.cameras)}); its cameras are {have}. Set data.cameras to cameras "
                "every store in data.stores has"
            )
        for cam in cfg.cameras:
            shape = tuple(store[cam].shape[1:])
            if shape == (size, size, 3):
                continue
            h = shape[0]
            if len(shape) == 3 and shape[2] == 3 and h == shape[1] and h % out == 0 and h >= 2 * out:
                fix = f"set data.render_size={h} (the tiles are then those of S2's {h // out}x scale)"
            else:
                fix = f"convert the store's images to {size}x{size}x3"
            raise ValueError(
                f"store {path}: camera {cam!r} holds images of shape {shape}, but views are cut from square "
                f"RGB images of data.render_size = {size} px (the whole image resized to out_size = {out} "
                f"plus {out}-px tiles); {fix}"
            )
        stores.append(store)
    return stores


def _kept_frames(store: ReplayStore, stride: int) -> list[np.ndarray]:
    """Store frame indices of every ``stride``-th frame of each episode (counted from its first frame)."""
    return [np.arange(s, e, stride) for s, e in zip(store.episode_starts, store.episode_ends, strict=True)]


def count_store_views(cfg: FrameConfig, stores: Sequence[ReplayStore] | None = None) -> int:
    """How many views :func:`read_store_frames` gives: kept frames x cameras x
    :meth:`FrameConfig.views_per_frame`."""
    stores = open_frame_stores(cfg) if stores is None else stores
    kept = sum(len(idx) for store in stores for idx in _kept_frames(store, cfg.stride))
    return kept * len(cfg.cameras) * cfg.views_per_frame()


def read_store_frames(
    cfg: FrameConfig, progress: bool = True, out_path: str | os.PathLike | None = None
) -> np.ndarray:
    """Views of every ``stride``-th frame of every episode of ``cfg.stores``: uint8 ``(N, S, S, 3)``.

    Order: store, episode, kept frame, camera, then the frame's views (whole frame, then tiles), as
    :func:`render_frames` orders rendered states. Frames are decoded per episode and camera, at most
    :data:`STORE_READ_BLOCK` at a time; with ``out_path`` the views go straight into a ``.npy`` file there
    (returned memory-mapped), so neither the stored images nor the views need to fit in memory at once.
    """
    cfg.validate()
    stores = open_frame_stores(cfg)
    shape = (count_store_views(cfg, stores), cfg.out_size, cfg.out_size, 3)
    if out_path is None:
        views = np.empty(shape, np.uint8)
    else:
        views = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.uint8, shape=shape)
    rng = np.random.default_rng(cfg.seed)
    i = 0
    bar = tqdm(total=sum(s.n_episodes for s in stores), desc="read store episodes", disable=not progress)
    for store in stores:
        readers = [
            FrameReader(store[cam], store.path / "data" / cam, f"data/{cam}", store.checked)
            for cam in cfg.cameras
        ]
        for kept in _kept_frames(store, cfg.stride):
            for b in range(0, len(kept), STORE_READ_BLOCK):
                images = [reader.read(kept[b : b + STORE_READ_BLOCK]) for reader in readers]
                for t in range(len(images[0])):
                    for cam_images in images:
                        frame = cam_images[t]
                        for view in frame_views(frame, cfg.out_size, cfg.tiles_per_frame, rng, cfg.scales()):
                            views[i] = view
                            i += 1
            bar.update()
            bar.set_postfix(frames=i)
    bar.close()
    if isinstance(views, np.memmap):
        views.flush()
    return views


def load_or_render_frames(cfg: FrameConfig, cache: str | os.PathLike, progress: bool = True) -> np.ndarray:
    """Frames from the ``cache`` ``.npy`` file if it was made with the same settings, else make and cache them
    (rendered from ``cfg.tasks``, or read from ``cfg.stores`` when it is non-empty).

    The array is memory-mapped read-only, so several runs can share one cache.
    """
    path = Path(cache)
    if path.suffix != ".npy":
        raise ValueError(f"frame cache must be a .npy path, got {str(path)!r}")
    meta_path = path.with_suffix(".json")
    key = cfg.key()
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            return np.load(path, mmap_mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    if cfg.stores:
        with atomic_path(path) as tmp:  # views are written into the file as they are read
            views = read_store_frames(cfg, progress=progress, out_path=tmp)
            shape = list(views.shape)
            del views  # close the memory map before the file is renamed
    else:
        frames = render_frames(cfg, progress=progress)
        shape = list(frames.shape)
        with atomic_path(path) as tmp:
            np.save(tmp, frames)
    atomic_write_json(meta_path, {"key": key, "config": asdict(cfg), "shape": shape})
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
