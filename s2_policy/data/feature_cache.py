"""Frozen-feature cache: encode every camera frame of a store once, train heads on the features.

The encoder is frozen, so a frame's feature never changes; diffusion_policy-style training that re-encodes
images every batch spends nearly all of its time in the backbone. ``ensure_feature_cache`` runs the
encoder once over the store (all cameras of a batch in ONE ``encode_cameras`` call) and writes
``{camera: float32 (N, F)}`` next to the store.

Cache key = sha256 of: the encoder fingerprint (weights + S2 settings + preprocessing, from
``s2_policy.encoders.fingerprint``), the camera list, and the store identity. The store identity is
``meta/episode_ends`` plus each camera array's shape and dtype plus a hash of the first and last frame of
every episode: appending/removing episodes or rewriting an episode's edge frames changes it, moving or
copying the store does not (mtimes would). A rewrite that keeps lengths and touches only interior frames is
not detected; delete the cache directory after such edits.

Writing is resumable and atomic: features go to ``<key>.zarr.partial`` in batch-sized chunks, with the
number of finished frames recorded in its attributes after each batch; an interrupted run resumes from
there, and the finished cache is renamed into place with ``os.replace``. An inter-process lock
(``filelock``) serialises concurrent writers (e.g. several training processes): the second waits for the
first (at most ``lock_timeout_s``) and then uses its finished cache.

``augment`` (a :class:`~s2_policy.data.augment.FrameShift`) builds the cache of one shifted copy of every
frame (training-time augmentation, ``data.augment``); its description joins the key, so the clean cache and
each copy sit side by side.

Each chunk carries a crc32c checksum and every chunk is written, so a corrupt or missing chunk raises
:class:`~s2_policy.data.integrity.StoreIntegrityError` naming the camera array and chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import torch
import torch.distributed as dist
import zarr
import zarr.codecs
from tqdm.auto import tqdm

from s2_policy.data.augment import FrameShift
from s2_policy.data.integrity import CHECKSUM, checksum_codecs, open_group
from s2_policy.data.store import ReplayStore

__all__ = ["FeatureCache", "ensure_feature_cache", "store_identity"]

FORMAT_VERSION = 1
DEFAULT_LOCK_TIMEOUT_S = 4 * 3600.0  # another process may be encoding a large store


def store_identity(store: ReplayStore, cameras: Sequence[str]) -> str:
    """Hash identifying a store's content for the cache (see the module docstring for what it covers)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(store.episode_ends, dtype=np.int64).tobytes())
    edges = (
        np.unique(np.concatenate([store.episode_starts, store.episode_ends - 1])) if store.n_episodes else []
    )
    for cam in cameras:
        arr = store[cam]
        h.update(json.dumps([cam, list(arr.shape[1:]), str(arr.dtype)]).encode())
        if len(edges):
            h.update(np.ascontiguousarray(arr.oindex[np.asarray(edges)]).tobytes())
    return h.hexdigest()


def _cache_key(fingerprint: str, cameras: Sequence[str], store_id: str, augment: str | None = None) -> str:
    ident = {"v": FORMAT_VERSION, "fp": fingerprint, "cams": list(cameras), "store": store_id}
    blob = json.dumps(ident if augment is None else {**ident, "augment": augment})  # clean keys unchanged
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class FeatureCache:
    """Finished per-frame features of a store: ``get(camera) -> float32 (N_frames, F)``.

    (``(N_frames, tokens, F)`` for an encoder with ``pooling="tokens"``.)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        """Open a finished cache directory (as returned by :func:`ensure_feature_cache`)."""
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no feature cache at {self.path}; build one with ensure_feature_cache")
        self._root = _open_cache(self.path)
        attrs = dict(self._root.attrs)
        if not attrs.get("complete"):
            raise ValueError(
                f"{self.path} is an unfinished feature cache; rerun ensure_feature_cache to finish it"
            )
        self.key: str = attrs["key"]
        self.fingerprint: str = attrs["fingerprint"]
        self.store_id: str = attrs["store_id"]
        self.augment: str | None = attrs.get("augment")  # the FrameShift key of a shifted copy; None: clean
        self.cameras: list[str] = list(attrs["cameras"])
        self.out_dim: int = int(attrs["out_dim"])
        self.episode_ends = np.asarray(attrs["episode_ends"], dtype=np.int64)
        self.n_frames = int(self.episode_ends[-1]) if len(self.episode_ends) else 0
        self._loaded: dict[str, np.ndarray] = {}

    def get(self, camera: str) -> np.ndarray:
        """All features of ``camera`` as an in-memory float32 (N, F) array (loaded on first use)."""
        if camera not in self.cameras:
            raise KeyError(f"camera {camera!r} is not in the feature cache (cameras: {self.cameras})")
        if camera not in self._loaded:
            self._loaded[camera] = np.asarray(self._root[camera][:], dtype=np.float32)
        return self._loaded[camera]

    def check_matches(self, store: ReplayStore, cameras: Sequence[str]) -> None:
        """Raise ValueError if this cache was not computed for ``store``'s frames and ``cameras``."""
        missing = [c for c in cameras if c not in self.cameras]
        if missing:
            raise ValueError(
                f"feature cache {self.path} has no features for cameras {missing}; "
                "rebuild it with ensure_feature_cache(..., cameras=[...]) listing them"
            )
        if not np.array_equal(store.episode_ends, self.episode_ends):
            raise ValueError(
                f"feature cache {self.path} was computed for a different store ({len(self.episode_ends)} "
                f"episodes) than {store.path} ({store.n_episodes}); call ensure_feature_cache again"
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_root"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._root = _open_cache(self.path)

    def __repr__(self) -> str:
        return (
            f"FeatureCache({str(self.path)!r}, cameras={self.cameras}, "
            f"frames={self.n_frames}, F={self.out_dim})"
        )


def _open_cache(path: Path) -> zarr.Group:
    """The cache group, read through the checked store when it was written with checksums."""
    root = open_group(path, read_only=True, checked=False)
    return open_group(path, read_only=True, checked=True) if root.attrs.get("checksum") == CHECKSUM else root


def _encoder_device(encoder: torch.nn.Module) -> torch.device:
    p = next(iter(encoder.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def ensure_feature_cache(
    store_path: str | os.PathLike,
    encoder: torch.nn.Module,
    cameras: Sequence[str],
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    fingerprint: str | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    rank: int = 0,
    world: int = 1,
    augment: FrameShift | None = None,
) -> FeatureCache:
    """Return the feature cache of ``store_path`` for ``encoder``; encode (or finish encoding) it if needed.

    ``encoder`` follows the ``S2Encoder`` interface: ``out_dim`` and ``encode_cameras([imgs_cam0, ...])``
    taking uint8 (B, H, W, 3) tensors and returning (B, K, out_dim). ``fingerprint`` defaults to
    ``s2_policy.encoders.fingerprint(encoder)``. ``cache_dir`` defaults to ``<store_path>.features/``; pass
    another folder for a read-only store (the key does not depend on the store's path, so one folder can hold
    the caches of many stores).
    Another process building the same cache is waited for at most ``lock_timeout_s`` (then TimeoutError).

    With ``world > 1`` (DDP: every rank calls this with its ``rank``; ``torch.distributed`` initialised) each
    rank encodes one chunk-aligned shard of the frames into its own partial store, and rank 0 assembles the
    shards into the cache; all ranks return it.

    ``augment`` encodes every frame after that shift (one cached augmentation copy; see the module docstring).
    """
    if not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    cameras = list(cameras)
    if not cameras:
        raise ValueError("ensure_feature_cache needs at least one camera name")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    store = ReplayStore.open(store_path, mode="r")
    missing = [c for c in cameras if c not in store]
    if missing:
        raise ValueError(f"{store.path} has no camera array data/{missing[0]} (keys: {store.keys()})")
    if store.n_episodes == 0:
        raise ValueError(f"{store.path} holds no complete episode: nothing to encode")
    if fingerprint is None:
        from s2_policy.encoders import fingerprint as encoder_fingerprint

        fingerprint = encoder_fingerprint(encoder)
    store_id = store_identity(store, cameras)
    augment_key = augment.key if augment is not None else None
    key = _cache_key(fingerprint, cameras, store_id, augment_key)
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(f"{store.path}.features")
    final = cache_dir / f"{key}.zarr"
    if final.exists():  # a finished cache is only read: it may sit in a read-only folder
        return FeatureCache(final)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the feature cache folder {cache_dir} ({e.strerror}); when the "
                         "store's folder is read-only, put the cache elsewhere: cache.dir=<writable folder> "
                         "(train_policy.py) or cache_dir=... (ensure_feature_cache)") from e
    ident = {"key": key, "fingerprint": fingerprint, "store_id": store_id, "augment": augment_key}
    if world > 1:
        shards = [_shard_range(store.n_frames, r, world, batch_size) for r in range(world)]
        _encode_into(cache_dir / f"{key}.shard{rank}of{world}.partial", store, encoder, cameras, batch_size,
                     progress and rank == 0, ident, shards[rank], augment)
        dist.barrier()
        if rank == 0:
            with _cache_lock(cache_dir, key, final, lock_timeout_s):
                if not final.exists():
                    _assemble(cache_dir, key, world, shards, store, cameras, batch_size, final)
        dist.barrier()
        return FeatureCache(final)
    with _cache_lock(cache_dir, key, final, lock_timeout_s):
        if not final.exists():
            partial = cache_dir / f"{key}.zarr.partial"
            _encode_into(partial, store, encoder, cameras, batch_size, progress, ident, augment=augment)
            os.replace(partial, final)
    return FeatureCache(final)


@contextlib.contextmanager
def _cache_lock(cache_dir: Path, key: str, final: Path, timeout_s: float) -> Iterator[None]:
    """Hold the cache's inter-process lock (bounded wait), and remove the lock file afterwards."""
    lock = filelock.FileLock(cache_dir / f"{key}.lock")
    try:
        lock.acquire(timeout=timeout_s)  # another process may be writing the same cache
    except filelock.Timeout:
        raise TimeoutError(
            f"another process has been building the feature cache {final} for more than {timeout_s:g} s "
            f"(lock {lock.lock_file}); wait for it, or pass a larger lock_timeout_s"
        ) from None
    try:
        yield
    finally:
        lock.release()
    # Safe to remove: a process that still waits on the old file re-checks `final` once it holds it.
    (cache_dir / f"{key}.lock").unlink(missing_ok=True)


def _shard_range(n: int, rank: int, world: int, batch_size: int) -> range:
    """Rank ``rank``'s frames: contiguous, a whole number of ``batch_size`` chunks (the last one shorter)."""
    per = math.ceil(math.ceil(n / world) / batch_size) * batch_size
    return range(min(rank * per, n), min((rank + 1) * per, n))


def _assemble(cache_dir: Path, key: str, world: int, shards: list[range], store: ReplayStore,
              cameras: list[str], batch_size: int, final: Path) -> None:
    """Copy the ranks' shard stores into one cache (same layout and checksums as a single-process build)."""
    parts = [zarr.open_group(zarr.storage.LocalStore(cache_dir / f"{key}.shard{r}of{world}.partial"),
                             mode="r") for r in range(world)]
    full = [p for p, rng in zip(parts, shards, strict=True) if len(rng)]
    partial = cache_dir / f"{key}.zarr.partial"
    if partial.exists():
        shutil.rmtree(partial)
    root = zarr.open_group(zarr.storage.LocalStore(partial), mode="w")
    root.attrs.update({**dict(full[0].attrs), "n_done": store.n_frames, "frames": [0, store.n_frames]})
    for c in cameras:
        shape = full[0][c].shape[1:]
        out = root.create_array(c, shape=(store.n_frames, *shape), chunks=(batch_size, *shape),
                                dtype="float32", compressors=checksum_codecs(zarr.codecs.ZstdCodec()))
        for part, rng in zip(parts, shards, strict=True):
            for i in range(0, len(rng), batch_size * 16):
                j = min(i + batch_size * 16, len(rng))
                out[rng.start + i : rng.start + j] = part[c][i:j]
    root.attrs["complete"] = True
    os.replace(partial, final)
    for r in range(world):
        shutil.rmtree(cache_dir / f"{key}.shard{r}of{world}.partial", ignore_errors=True)


def _encode_into(
    partial: Path,
    store: ReplayStore,
    encoder: torch.nn.Module,
    cameras: list[str],
    batch_size: int,
    progress: bool,
    ident: dict[str, Any],
    frames: range | None = None,
    augment: FrameShift | None = None,
) -> None:
    """Encode frames ``frames`` (default: all) of every camera into ``partial`` (created or resumed; its
    arrays hold ``len(frames)`` rows, row ``t`` = store frame ``frames.start + t``).

    Per-frame feature arrays are created from the first batch's output: (out_dim,) for pooled encoders,
    (tokens, out_dim) for ``pooling="tokens"``. The next batch's frames are read (and shifted, with
    ``augment``) while this one encodes.
    """
    frames = frames if frames is not None else range(store.n_frames)
    lo, n, out_dim = frames.start, len(frames), int(encoder.out_dim)
    root = None
    if partial.exists():
        try:
            root = zarr.open_group(zarr.storage.LocalStore(partial), mode="r+")
            ok = root.attrs.get("key") == ident["key"] and (
                int(root.attrs.get("n_done", 0)) == 0
                or all(c in root and root[c].shape[0] == n for c in cameras)
            )
        except Exception:  # an unreadable leftover from a crash while creating it
            ok = False
        if not ok:
            shutil.rmtree(partial)
            root = None
    if root is None:
        root = zarr.open_group(zarr.storage.LocalStore(partial), mode="w")
        meta = {"cameras": cameras, "out_dim": out_dim, "n_done": 0, "complete": False, "checksum": CHECKSUM,
                "frames": [frames.start, frames.stop]}
        root.attrs.update(
            {**ident, **meta, "episode_ends": store.episode_ends.tolist(), "store_path": str(store.path)}
        )
    start = int(root.attrs["n_done"])
    device = _encoder_device(encoder)
    arrays = [store[c] for c in cameras]

    def read(i: int) -> list[np.ndarray]:
        batch = [np.ascontiguousarray(a[lo + i : lo + min(i + batch_size, n)]) for a in arrays]
        if augment is None:
            return batch
        index = np.arange(lo + i, lo + i + len(batch[0]))
        return [augment(x, index) for x in batch]

    desc = "feature cache" + (f" ({augment.key})" if augment else "")
    was_training = encoder.training
    encoder.eval()
    try:
        with (
            ThreadPoolExecutor(max_workers=1) as reader,
            torch.inference_mode(),
            tqdm(total=n, initial=start, unit="frame", desc=desc, disable=not progress) as bar,
        ):
            pending = reader.submit(read, start) if start < n else None
            for i in range(start, n, batch_size):
                j = min(i + batch_size, n)
                frames = pending.result()
                pending = reader.submit(read, j) if j < n else None
                feats = encoder.encode_cameras([torch.from_numpy(x).to(device) for x in frames])
                if tuple(feats.shape[:2]) != (j - i, len(cameras)) or feats.shape[-1] != out_dim:
                    raise ValueError(
                        f"encoder.encode_cameras returned shape {tuple(feats.shape)}, expected "
                        f"{(j - i, len(cameras))} + (..., {out_dim}) (batch, cameras, ..., out_dim)"
                    )
                feats = feats.float().cpu().numpy()
                for k, c in enumerate(cameras):
                    if c not in root:
                        shape = feats.shape[2:]
                        root.create_array(c, shape=(n, *shape), chunks=(batch_size, *shape), dtype="float32",
                                          compressors=checksum_codecs(zarr.codecs.ZstdCodec()))
                    root[c].with_config({"write_empty_chunks": True})[i:j] = feats[:, k]
                root.attrs["n_done"] = j  # progress is recorded only after the batch is on disk
                bar.update(j - i)
    finally:
        encoder.train(was_training)
    root.attrs["complete"] = True
