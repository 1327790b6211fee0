"""Sequence windows over a replay store: the torch Dataset that policies train on.

A window starts at frame ``t0`` of an episode (``-pad_before <= t0 <= L - horizon + pad_after``) and covers
``horizon`` frames; frames outside the episode repeat its first/last frame (edge padding), so windows
never cross episodes. ``pad_before = n_obs_steps - 1`` and ``pad_after = n_action_steps - 1``, as in
diffusion_policy. Observations are read for the first ``n_obs_steps`` frames only (images are the cost:
only those frames are decoded); actions for all ``horizon`` frames.

Reading is batched: :meth:`SequenceDataset.__getitems__` (which torch's DataLoader calls with a whole batch of
indices) computes every frame index of the batch with numpy and reads each distinct image frame once per
camera; ``ds[i]`` is the same path with a batch of one. Image chunks are read by :class:`FrameReader`
straight from their files and decoded with numcodecs when the array's layout allows it (the common case:
a local store, chunks that split only the frame axis, plain compressors and an optional crc32c): zarr 3's
per-chunk overhead (~0.5-1 ms, asyncio and thread hops) is several times the cost of decoding one
128 px frame. Other layouts go through zarr. ``images_in_memory=True`` decodes the image arrays once at
construction instead (as diffusion_policy's default numpy-backed ReplayBuffer does).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from s2_policy.data.frame_reader import FrameReader
from s2_policy.data.store import ReplayStore

if TYPE_CHECKING:
    from s2_policy.data.feature_cache import FeatureCache

__all__ = ["SequenceDataset", "split_episodes", "window_index"]


def split_episodes(n_episodes: int, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split episode indices into (train, val) by whole episodes, reproducibly from ``seed``.

    At least one validation episode when ``val_ratio > 0`` and at least one training episode remain.
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    all_eps = np.arange(n_episodes)
    if val_ratio == 0 or n_episodes < 2:
        return all_eps, np.zeros(0, dtype=np.int64)
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    val = np.sort(np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False))
    return np.setdiff1d(all_eps, val), val


def window_index(
    lengths: np.ndarray, horizon: int, pad_before: int, pad_after: int
) -> tuple[np.ndarray, np.ndarray]:
    """All windows of the given episodes, vectorised: returns (episode position, start offset ``t0``).

    ``t0`` runs from ``-pad_before`` to ``L - horizon + pad_after`` in each episode of length ``L``;
    an episode too short for one window contributes none.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    counts = np.maximum(lengths - horizon + pad_before + pad_after + 1, 0)
    ep = np.repeat(np.arange(len(lengths)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    t0 = np.arange(int(counts.sum()), dtype=np.int64) - first - pad_before
    return ep, t0


class SequenceDataset(Dataset):
    """Windows of ``obs`` (cameras, state; ``n_obs_steps`` frames) and ``action`` (``horizon`` frames).

    ``ds[i] = {"obs": {cam: uint8 (To, H, W, 3) | float32 (To, F) with features, "state": float32 (To, D)},
    "action": float32 (horizon, A)}`` as torch tensors. ``split`` selects whole episodes: a seeded random
    ``val_ratio`` split, or the store's own ``split`` attribute (robomimic masks) when
    ``use_store_split`` and present. ``max_train_episodes`` caps the training episodes (seeded subset).

    ``ds.__getitems__(indices)`` (used by torch's DataLoader for a whole batch) reads each distinct frame of
    the batch once per camera; :meth:`get_batch` returns the batch already collated. ``images_in_memory``
    decodes every committed frame of the image arrays once, at construction (``N x H x W x 3`` bytes per
    camera; DataLoader workers started by fork share it copy-on-write, spawned workers each get a copy).

    ``augmented_features`` (training split, with ``features``): caches of shifted copies of the same frames
    (``s2_policy.data.augment``); each observation frame of a batch is then read from the clean cache or one
    of the copies, drawn uniformly with torch's generator (so ``seed_everything`` makes it reproducible). The
    validation dataset reads the clean features only.
    """

    def __init__(
        self,
        store_path: str | os.PathLike,
        cameras: Sequence[str] | Mapping[str, str] = ("front", "wrist"),
        state_key: str | None = "state",
        action_key: str = "action",
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        split: str = "train",
        val_ratio: float = 0.1,
        seed: int = 0,
        max_train_episodes: int | None = None,
        features: FeatureCache | None = None,
        use_store_split: bool = True,
        n_episodes: int | None = None,
        images_in_memory: bool = False,
        augmented_features: Sequence[FeatureCache] = (),
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if n_obs_steps < 1 or n_action_steps < 1:
            raise ValueError(
                f"n_obs_steps and n_action_steps must be >= 1, got {n_obs_steps}, {n_action_steps}"
            )
        if horizon < max(n_obs_steps, n_action_steps):
            raise ValueError(
                f"horizon ({horizon}) must be >= n_obs_steps ({n_obs_steps}) and "
                f">= n_action_steps ({n_action_steps})"
            )
        if max_train_episodes is not None and max_train_episodes < 1:
            raise ValueError(f"max_train_episodes must be >= 1 or None, got {max_train_episodes}")
        if n_episodes is not None and n_episodes < 1:
            raise ValueError(f"n_episodes must be >= 1 or None, got {n_episodes}")
        self.store_path = Path(store_path)
        # camera name (the policy's) -> store array key (data/<key>); the same unless the task maps them
        self.camera_keys = dict(cameras) if isinstance(cameras, Mapping) else {c: c for c in cameras}
        self.cameras = list(self.camera_keys)
        self.state_key = state_key
        self.action_key = action_key
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.pad_before, self.pad_after = n_obs_steps - 1, n_action_steps - 1
        self.split, self.val_ratio, self.seed = split, val_ratio, seed
        self.max_train_episodes = max_train_episodes
        self.use_store_split = use_store_split
        self.n_episodes = n_episodes
        self.features = features
        self.images_in_memory = bool(images_in_memory) and features is None
        self._readers: dict[str, FrameReader] = {}

        store = ReplayStore.open(self.store_path, mode="r")
        self._store: ReplayStore | None = store
        self._pid = os.getpid()
        keys = list(self.camera_keys.values())
        needed = keys + [action_key] + ([state_key] if state_key else [])
        missing = [k for k in needed if k not in store]
        if missing:
            raise ValueError(
                f"{self.store_path} has no data/{missing[0]} (keys: {store.keys()}); "
                "check cameras/state_key/action_key"
            )
        if augmented_features and features is None:
            raise ValueError("augmented_features needs features= (the clean cache of the same frames)")
        if augmented_features and split != "train":
            raise ValueError("augmented_features is for the training split; validation reads clean features")
        self.augmented_features = list(augmented_features)
        for cache in self.augmented_features:
            if cache.augment is None or cache.fingerprint != features.fingerprint:
                raise ValueError(
                    f"augmented_features must be shifted copies made by the same encoder as features=; "
                    f"{cache.path} is {'a clean cache' if cache.augment is None else 'from another encoder'}"
                    " (build them with ensure_feature_cache(..., augment=FrameShift(...)) and this encoder)")
        for cache in [features, *self.augmented_features]:
            if cache is not None:
                cache.check_matches(store, keys)

        self.train_episodes, self.val_episodes = self._split(store)
        self.episodes = self.train_episodes if split == "train" else self.val_episodes
        n = store.n_frames
        # Low-dim data is small: keep the committed frames in memory (shared by forked workers).
        self._action = np.asarray(store[action_key][:n], dtype=np.float32)
        self._state = np.asarray(store[state_key][:n], dtype=np.float32) if state_key else None
        starts, lengths = store.episode_starts[self.episodes], store.episode_lengths[self.episodes]
        ep, t0 = window_index(lengths, horizon, self.pad_before, self.pad_after)
        self._win_start, self._win_len, self._win_t0 = starts[ep], lengths[ep], t0
        # camera key -> every committed frame, decoded (images_in_memory only)
        self._images: dict[str, np.ndarray] = {}
        if self.images_in_memory:
            all_frames = np.arange(n, dtype=np.int64)
            self._images = {key: self.reader(key).read(all_frames) for key in keys}

    def _split(self, store: ReplayStore) -> tuple[np.ndarray, np.ndarray]:
        n = store.n_episodes if self.n_episodes is None else min(store.n_episodes, self.n_episodes)
        stored = store.attrs.get("split") if self.use_store_split else None
        if stored and "train" in stored:
            train = np.asarray(sorted(stored["train"]), dtype=np.int64)
            val = np.asarray(sorted(stored.get("valid", stored.get("val", []))), dtype=np.int64)
            if (len(train) and train.max() >= n) or (len(val) and val.max() >= n):
                raise ValueError(
                    f"{self.store_path}: attribute 'split' names episodes beyond the {n} stored; "
                    "fix it or pass use_store_split=False"
                )
        else:
            train, val = split_episodes(n, self.val_ratio, self.seed)
        if self.max_train_episodes is not None and len(train) > self.max_train_episodes:
            rng = np.random.default_rng(self.seed + 1)
            train = np.sort(rng.choice(train, size=self.max_train_episodes, replace=False))
        return train, val

    # ------------------------------------------------------------------ access
    @property
    def store(self) -> ReplayStore:
        """The read-only store, reopened after a fork/spawn into a DataLoader worker."""
        if self._store is None or self._pid != os.getpid():
            self._store = ReplayStore.open(self.store_path, mode="r", validate=False)
            self._readers = {}
            self._pid = os.getpid()
        return self._store

    def reader(self, key: str) -> FrameReader:
        """The frame reader of ``data/<key>`` (built per process, with the store)."""
        store = self.store
        reader = self._readers.get(key)
        if reader is None:
            reader = FrameReader(store[key], self.store_path / "data" / key, f"data/{key}", store.checked)
            self._readers[key] = reader
        return reader

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None  # zarr handles are reopened in the worker process
        state["_readers"] = {}
        return state

    def __len__(self) -> int:
        return len(self._win_t0)

    def frame_indices(self, i: int) -> np.ndarray:
        """Store frame index of each of the ``horizon`` steps of window ``i`` (edge-padded)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        s, L, t0 = int(self._win_start[i]), int(self._win_len[i]), int(self._win_t0[i])
        return s + np.clip(np.arange(t0, t0 + self.horizon), 0, L - 1)

    def batch_frame_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Store frame index of each step of each window: int64 (len(indices), horizon), edge-padded."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        bad = (idx < -n) | (idx >= n)
        if bad.any():
            raise IndexError(f"window {int(idx[bad][0])} out of range for {n} windows")
        idx = idx % max(n, 1)
        steps = self._win_t0[idx, None] + np.arange(self.horizon)
        return self._win_start[idx, None] + np.clip(steps, 0, self._win_len[idx, None] - 1)

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Windows ``indices`` collated: ``{"obs": {cam: (B, To, ...), "state": (B, To, D)},
        "action": (B, horizon, A)}``, equal to stacking ``ds[i]``; each distinct frame is read once."""
        t = self.batch_frame_indices(indices)
        obs_t = t[:, : self.n_obs_steps]
        flat = obs_t.reshape(-1)
        version = self._draw_versions(len(flat))
        obs: dict[str, torch.Tensor] = {}
        for cam, key in self.camera_keys.items():
            if version is not None:
                frames = self._read_versions(key, flat, version)
            elif self.features is not None:
                frames = self.features.get(key)[flat]
            elif self.images_in_memory:
                frames = self._images[key][flat]
            else:
                frames = self.reader(key).read(flat)
            obs[cam] = torch.from_numpy(frames.reshape(*obs_t.shape, *frames.shape[1:]))
        if self._state is not None:
            obs["state"] = torch.from_numpy(self._state[obs_t])
        return {"obs": obs, "action": torch.from_numpy(self._action[t])}

    def _draw_versions(self, n: int) -> np.ndarray | None:
        """Which cached version (0 = clean, k = shifted copy k) each of ``n`` frames is read from."""
        if not self.augmented_features:
            return None
        return torch.randint(0, 1 + len(self.augmented_features), (n,)).numpy()

    def _read_versions(self, key: str, flat: np.ndarray, version: np.ndarray) -> np.ndarray:
        caches = [self.features, *self.augmented_features]
        first = caches[0].get(key)
        out = np.empty((len(flat), *first.shape[1:]), dtype=first.dtype)
        for k, cache in enumerate(caches):
            sel = version == k
            if sel.any():
                out[sel] = cache.get(key)[flat[sel]]
        return out

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The windows of a batch as a list of ``ds[i]``-shaped dicts (views into one batch read), so that
        torch's default collate applies; DataLoader calls this instead of ``ds[i]`` per sample."""
        batch = self.get_batch(indices)
        obs, action = batch["obs"], batch["action"]
        return [
            {"obs": {k: v[j] for k, v in obs.items()}, "action": action[j]} for j in range(len(action))
        ]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def low_dim_arrays(self) -> dict[str, np.ndarray]:
        """Every frame of the TRAINING episodes as ``{"state": (N, D), "action": (N, A)}`` (normaliser)."""
        starts = self.store.episode_starts[self.train_episodes]
        lengths = self.store.episode_lengths[self.train_episodes]
        idx = np.concatenate(
            [np.arange(0, dtype=np.int64)]
            + [np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)]
        )
        out = {"action": self._action[idx]}
        if self._state is not None:
            out["state"] = self._state[idx]
        return out

    def get_validation_dataset(self) -> SequenceDataset:
        """The same windows over the validation episodes (same split seed, store and features)."""
        return SequenceDataset(
            self.store_path,
            cameras=self.camera_keys,
            state_key=self.state_key,
            action_key=self.action_key,
            horizon=self.horizon,
            n_obs_steps=self.n_obs_steps,
            n_action_steps=self.n_action_steps,
            split="val",
            val_ratio=self.val_ratio,
            seed=self.seed,
            max_train_episodes=self.max_train_episodes,
            features=self.features,
            use_store_split=self.use_store_split,
            n_episodes=self.n_episodes,
            images_in_memory=self.images_in_memory,
        )

    def window_phase(self) -> np.ndarray:
        """Where each window's last observation step lies in its episode, in [0, 1) (per-phase metrics: an
        approach before the grasp, a transport after it)."""
        return (self._win_t0 + self.n_obs_steps - 1) / self._win_len

    @property
    def action_dim(self) -> int:
        """Width of the action vectors."""
        return int(self._action.shape[1])

    @property
    def state_dim(self) -> int:
        """Width of the state vectors (0 without a state key)."""
        return 0 if self._state is None else int(self._state.shape[1])

    def __repr__(self) -> str:
        return (
            f"SequenceDataset({str(self.store_path)!r}, split={self.split!r}, episodes={len(self.episodes)}, "
            f"windows={len(self)}, horizon={self.horizon}, To={self.n_obs_steps}, Ta={self.n_action_steps}, "
            f"features={'yes' if self.features is not None else 'no'}, "
            f"augmented copies={len(self.augmented_features)}, "
            f"images_in_memory={self.images_in_memory})"
        )
