"""Replay store: demonstrations in the diffusion_policy zarr layout, on zarr 3.

Layout (the same as diffusion_policy's ``ReplayBuffer``, so its stores open here and ours open there)::

    root/                  attrs: writer, env_id, cameras, control_hz, action_space, ...
      data/<key>           every episode concatenated on axis 0 (images uint8 (T, H, W, C))
      meta/episode_ends    int64, exclusive end of each episode

Appending is crash-safe: an episode's frames are written first and ``meta/episode_ends`` last, so an
episode becomes visible only once all of its data is on disk. Frames beyond ``episode_ends[-1]`` (left by
a writer killed mid-episode) are ignored on open and overwritten by the next append. The one torn state
that the ordering leaves, ``episode_ends`` resized but its new value not yet written, reads as a trailing
fill value (0) and is recognised as an uncommitted append.

Writers are serialised: every append and attribute update holds an inter-process lock (``filelock``, the
file ``<store>/.writer.lock``) and first re-reads the committed state, so two processes
appending to one store interleave whole episodes and never lose one. A writer waits at most
``lock_timeout_s`` (default :data:`DEFAULT_LOCK_TIMEOUT_S`) for another, then raises :class:`StoreBusyError`.
A writer killed while holding the lock releases it (the OS drops the lock with the process).

Integrity: new zarr-3 stores store a crc32c per chunk and write every chunk (attribute
``storage.checksum = "crc32c"``); they are read through :class:`~s2_policy.data.integrity.CheckedStore`, so a
corrupt or missing chunk raises :class:`~s2_policy.data.integrity.StoreIntegrityError` naming the array and
chunk instead of reading wrong values or the fill value. Older stores (no checksums) open as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import filelock
import numcodecs
import numpy as np
import zarr
import zarr.codecs

from s2_policy.data.integrity import CHECKSUM, StoreIntegrityError, checksum_codecs, open_group

__all__ = [
    "ReplayStore", "StoreBusyError", "StoreExistsError", "IMAGE_CODECS", "is_image_array",
    "DEFAULT_LOCK_TIMEOUT_S",
]

WRITER = "s2_policy.data.store"
DEFAULT_LOCK_TIMEOUT_S = 120.0
LOCK_FILE = ".writer.lock"  # inside the store directory; zarr ignores it

# Image compression choices (measured in BENCHMARKS.md, "Data-layer benchmarks"). Blosc without shuffle:
# images are uint8, for which byte shuffling is a no-op.
IMAGE_CODECS: dict[str, dict[str, Any]] = {
    "zstd": {"cname": "zstd", "clevel": 3},
    "lz4": {"cname": "lz4", "clevel": 5},
}
DEFAULT_STORAGE: dict[str, Any] = {
    "image_codec": "zstd",
    "image_chunk_frames": 1,
    "lowdim_chunk_frames": 10000,
}


def is_image_array(shape: tuple[int, ...]) -> bool:
    """True for per-frame image arrays: (T, H, W, C) with C in {1, 3, 4}."""
    return len(shape) == 4 and shape[-1] in (1, 3, 4)


class StoreExistsError(ValueError):
    """A store already exists where a new one was to be created."""


class StoreBusyError(TimeoutError):
    """Another process held the store's writer lock for longer than the caller was willing to wait."""


def _codecs(kind: str, zarr_format: int, image: bool, typesize: int, checksum: bool = True) -> Any:
    """``compressors`` for a new array: Blosc (+ crc32c on zarr 3 when ``checksum``)."""
    comp = _compressor(kind, zarr_format, image, typesize)
    return checksum_codecs(comp) if zarr_format == 3 and checksum else comp


def _compressor(kind: str, zarr_format: int, image: bool, typesize: int) -> Any:
    """Blosc compressor object for the store's zarr format (numcodecs for v2, zarr.codecs for v3)."""
    if image:
        if kind not in IMAGE_CODECS:
            raise ValueError(f"unknown image_codec {kind!r}; choose one of {sorted(IMAGE_CODECS)}")
        spec, shuffle = IMAGE_CODECS[kind], "noshuffle"
    else:
        spec, shuffle = {"cname": "zstd", "clevel": 3}, "shuffle"
    if zarr_format == 2:
        flag = numcodecs.Blosc.NOSHUFFLE if shuffle == "noshuffle" else numcodecs.Blosc.SHUFFLE
        return numcodecs.Blosc(cname=spec["cname"], clevel=spec["clevel"], shuffle=flag)
    return zarr.codecs.BloscCodec(
        cname=spec["cname"], clevel=spec["clevel"], shuffle=shuffle, typesize=typesize
    )


class ReplayStore:
    """A diffusion_policy-layout demonstration store (create, open, append episodes, read episodes)."""

    def __init__(self, root: zarr.Group, path: Path, mode: str, validate: bool = True,
                 lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        """Wrap an opened zarr group; use :meth:`create` or :meth:`open` instead of calling this."""
        self.path = path
        self.mode = mode
        self.lock_timeout_s = float(lock_timeout_s)
        self._lock = filelock.FileLock(_lock_path(path), timeout=self.lock_timeout_s)
        self.checked = (root.attrs.get("storage") or {}).get("checksum") == CHECKSUM
        if self.checked:  # reads go through the checked store (appends write through a plain one)
            root = open_group(path, read_only=mode == "r", checked=True)
        self.root = root
        for name in ("data", "meta"):
            if name not in root or not isinstance(root[name], zarr.Group):
                raise ValueError(
                    f"{path}: missing group '{name}/': not a diffusion_policy-layout store "
                    "(expected data/<key> arrays and meta/episode_ends); create one with ReplayStore.create"
                )
        if "episode_ends" not in root["meta"]:
            raise ValueError(
                f"{path}: missing array 'meta/episode_ends' (int64 exclusive episode ends); "
                "the store is incomplete or not in diffusion_policy layout"
            )
        self.data: zarr.Group = root["data"]
        self.meta: zarr.Group = root["meta"]
        self._ends_arr: zarr.Array = self._open_ends()
        self._arrays: dict[str, zarr.Array] = {}
        self._episode_ends = self._read_committed_ends()
        if validate:
            self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        attrs: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = False,
        zarr_format: int = 3,
        image_codec: str = DEFAULT_STORAGE["image_codec"],
        image_chunk_frames: int = DEFAULT_STORAGE["image_chunk_frames"],
        lowdim_chunk_frames: int = DEFAULT_STORAGE["lowdim_chunk_frames"],
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        checksum: bool = True,
    ) -> ReplayStore:
        """Create an empty store at ``path`` (a directory); refuses to replace one unless ``overwrite``.

        Zarr-3 stores (the default) get a crc32c checksum per chunk unless ``checksum=False`` (see the
        module docstring; the cost is measured in BENCHMARKS.md).
        """
        path = Path(path)
        root = cls._build(path, attrs, overwrite, zarr_format, image_codec, image_chunk_frames,
                          lowdim_chunk_frames, checksum and zarr_format == 3)
        return cls(root, path, "a", lock_timeout_s=lock_timeout_s)

    @staticmethod
    def _build(path: Path, attrs: Mapping[str, Any] | None, overwrite: bool, zarr_format: int,
               image_codec: str, image_chunk_frames: int, lowdim_chunk_frames: int,
               checksum: bool) -> zarr.Group:
        if path.exists() and not overwrite:
            raise StoreExistsError(
                f"{path} already exists; open it with ReplayStore.open(path, mode='a') to append "
                "or pass overwrite=True to replace it"
            )
        if zarr_format not in (2, 3):
            raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format}")
        if image_codec not in IMAGE_CODECS:
            raise ValueError(f"unknown image_codec {image_codec!r}; choose one of {sorted(IMAGE_CODECS)}")
        if image_chunk_frames < 1 or lowdim_chunk_frames < 1:
            raise ValueError("image_chunk_frames and lowdim_chunk_frames must be >= 1")
        all_attrs = _json_attrs({"writer": WRITER, **dict(attrs or {})})
        all_attrs["storage"] = {
            "image_codec": image_codec,
            "image_chunk_frames": int(image_chunk_frames),
            "lowdim_chunk_frames": int(lowdim_chunk_frames),
            "checksum": CHECKSUM if checksum else None,
        }
        # Built beside the target and renamed into place: a crash never leaves a half-made store at `path`.
        tmp = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex[:8]}")
        try:
            root = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", zarr_format=zarr_format)
            root.create_group("data")
            root.create_group("meta").create_array(
                "episode_ends",
                shape=(0,),
                dtype="int64",
                chunks=(lowdim_chunk_frames,),
                fill_value=0,
                compressors=_codecs("zstd", zarr_format, False, 8, checksum=checksum),
            )
            root.attrs.update(all_attrs)
            if overwrite and path.is_dir():
                shutil.rmtree(path)
            elif overwrite and path.exists():
                path.unlink()
            try:
                os.replace(tmp, path)
            except OSError as e:  # another process created it meanwhile (rename onto a non-empty dir)
                raise StoreExistsError(
                    f"{path} was created by another process while this one was creating it; open it with "
                    "ReplayStore.open(path, mode='a') to append"
                ) from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return zarr.open_group(zarr.storage.LocalStore(path), mode="r+")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", validate: bool = True,
             lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> ReplayStore:
        """Open an existing store (zarr format 2 or 3); ``mode`` is "r" (read-only) or "a" (append).

        Appending takes the writer lock per episode; ``lock_timeout_s`` bounds the wait for another writer.
        """
        path = Path(path)
        if mode not in ("r", "a"):
            raise ValueError(
                f"mode must be 'r' or 'a', got {mode!r} (use ReplayStore.create for a new store)"
            )
        if not path.exists():
            raise FileNotFoundError(f"no store at {path}; create one with ReplayStore.create(path)")
        store = zarr.storage.LocalStore(path, read_only=(mode == "r"))
        try:
            root = zarr.open_group(store, mode="r" if mode == "r" else "r+")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise ValueError(f"{path} is not a zarr group: not a demonstration store") from e
        except (ValueError, TypeError, KeyError) as e:  # zarr.json that is not JSON / not zarr metadata
            raise ValueError(f"{path}/zarr.json (the store's root metadata) is corrupt: {e}") from e
        if mode == "a":  # under the lock: no other writer is mid-write
            with _acquire(filelock.FileLock(_lock_path(path)), path, lock_timeout_s):
                _remove_partial_files(path)
        return cls(root, path, mode, validate=validate, lock_timeout_s=lock_timeout_s)

    @classmethod
    def open_or_create(
        cls, path: str | os.PathLike, attrs: Mapping[str, Any] | None = None, **create_kwargs: Any
    ) -> ReplayStore:
        """Open ``path`` for appending if it exists, else create it (resumable collection)."""
        if not Path(path).exists():
            try:
                return cls.create(path, attrs, **create_kwargs)
            except StoreExistsError:  # another process created it first: append to theirs
                pass
        timeout = create_kwargs.get("lock_timeout_s", DEFAULT_LOCK_TIMEOUT_S)
        store = cls.open(path, mode="a", lock_timeout_s=timeout)
        if attrs:
            store.update_attrs(attrs)
        return store

    # ------------------------------------------------------------------ reading
    def _open_ends(self) -> zarr.Array:
        """``meta/episode_ends``, read leniently: a torn append leaves its last chunk unwritten on purpose
        (read as the fill value, see the module docstring); the crc32c codec still checks stored chunks."""
        plain = open_group(self.path, read_only=self.mode == "r", checked=False)
        return self._open_array(plain["meta"], "meta", "episode_ends")

    def _read_committed_ends(self) -> np.ndarray:
        try:
            ends = np.asarray(self._ends_arr[:], dtype=np.int64)
        except ValueError as e:  # e.g. the crc32c codec: "Stored and computed checksum do not match"
            raise StoreIntegrityError(
                f"{self.path}: array 'meta/episode_ends' cannot be read ({e}); the store is damaged: "
                "restore it from a copy or collect/convert it again"
            ) from e
        if ends.ndim != 1:
            raise ValueError(f"{self.path}: meta/episode_ends must be 1-D, got shape {ends.shape}")
        fill = self._ends_arr.fill_value
        fill = 0 if fill is None else int(fill)
        # A torn append (resize written, value not yet) leaves one trailing fill value: not committed.
        if len(ends) and ends[-1] == fill and (len(ends) == 1 or ends[-1] <= ends[-2]):
            ends = ends[:-1]
        return ends

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (writer, env_id, cameras, control_hz, action_space, ...), as a plain dict."""
        return dict(self.root.attrs)

    @property
    def episode_ends(self) -> np.ndarray:
        """Exclusive end index of each complete episode (int64, copy)."""
        return self._episode_ends.copy()

    @property
    def episode_starts(self) -> np.ndarray:
        """Start index of each complete episode."""
        return np.concatenate([[0], self._episode_ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        """Number of frames of each complete episode."""
        return np.diff(self._episode_ends, prepend=0)

    @property
    def n_episodes(self) -> int:
        """Number of complete episodes."""
        return len(self._episode_ends)

    @property
    def n_frames(self) -> int:
        """Number of frames in complete episodes."""
        return int(self._episode_ends[-1]) if len(self._episode_ends) else 0

    def keys(self) -> list[str]:
        """Sorted names of the ``data/`` arrays."""
        try:
            return sorted(self.data.array_keys())
        except (ValueError, TypeError, KeyError) as e:  # a member's zarr.json / .zarray is not readable
            bad = sorted(
                f"data/{f.parent.name}" for f in (self.path / "data").glob("*/*")
                if f.name in ("zarr.json", ".zarray") and not _is_json(f)
            )
            raise ValueError(
                f"{self.path}: the metadata of array {' and '.join(bad) or 'data/?'} is corrupt "
                f"({type(e).__name__}: {e}); restore the store from a copy or collect/convert it again"
            ) from e

    def __iter__(self) -> Iterator[str]:
        """Iterate over the data keys (like a mapping)."""
        return iter(self.keys())

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def __getitem__(self, key: str) -> zarr.Array:
        """The zarr array ``data/<key>`` (may hold uncommitted frames past :attr:`n_frames`).

        Handles are cached: opening an array reads its metadata, which would otherwise cost more than
        decoding the frame a sampler wants.
        """
        arr = self._arrays.get(key)
        if arr is None:
            if key not in self.data:
                raise KeyError(f"no array data/{key} in {self.path}; keys: {self.keys()}")
            arr = self._arrays[key] = self._open_array(self.data, "data", key)
        return arr

    def _open_array(self, group: zarr.Group, group_name: str, key: str) -> zarr.Array:
        """``group[key]``, or ValueError naming the array if its metadata (zarr.json) is damaged."""
        try:
            return group[key]
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(
                f"{self.path}: the metadata of array {group_name}/{key} is corrupt "
                f"({type(e).__name__}: {e}); restore the store from a copy or collect/convert it again"
            ) from e

    def __len__(self) -> int:
        return self.n_episodes

    def episode_slice(self, i: int) -> slice:
        """Frame range of episode ``i`` (negative indices count from the end)."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"episode {i} out of range: the store has {n} complete episodes")
        i %= n
        start = 0 if i == 0 else int(self._episode_ends[i - 1])
        return slice(start, int(self._episode_ends[i]))

    def get_episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """All frames of episode ``i`` as numpy arrays (``keys`` restricts which arrays are read)."""
        sl = self.episode_slice(i)
        return {k: self[k][sl] for k in (keys or self.keys())}

    def image_keys(self) -> list[str]:
        """Camera keys: the ``cameras`` attribute if set, else every (T, H, W, C) array."""
        cams = self.root.attrs.get("cameras")
        if cams:
            return list(cams)
        return [k for k in self.keys() if is_image_array(self[k].shape)]

    # ------------------------------------------------------------------ validation
    def validate(self, check_finite: bool = True) -> None:
        """Check the store's structure; raises ValueError naming the key and the fix."""
        ends, p = self._episode_ends, self.path
        if not np.issubdtype(self._ends_arr.dtype, np.integer):
            raise ValueError(f"{p}: meta/episode_ends has dtype {self._ends_arr.dtype}; it must be int64")
        if len(ends) and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
            bad = int(np.argmax(np.diff(ends, prepend=0) <= 0))
            raise ValueError(
                f"{p}: meta/episode_ends must be strictly increasing and positive (every episode holds "
                f">= 1 frame), but entry {bad} is {int(ends[bad])} after "
                f"{int(ends[bad - 1]) if bad else 0}; rewrite meta/episode_ends as cumulative lengths"
            )
        keys = self.keys()
        if len(ends) and not keys:
            raise ValueError(f"{p}: meta/episode_ends lists {len(ends)} episodes but data/ holds no arrays")
        n = self.n_frames
        for k in keys:
            arr = self[k]
            if arr.shape[0] < n:
                raise ValueError(
                    f"{p}: data/{k} has {arr.shape[0]} frames but meta/episode_ends[-1] = {n}: keys of "
                    f"unequal length; every data/ array needs one row per frame (fix data/{k} or the ends)"
                )
        for k in self.image_keys() if len(ends) else []:
            if k not in self.data:
                raise ValueError(
                    f"{p}: attribute 'cameras' names {k!r} but there is no data/{k}; "
                    "fix the attribute or add the images"
                )
            self._check_image(k, self[k].dtype, tuple(self[k].shape))
        if check_finite and n:
            for k in keys:
                arr = self[k]
                if np.issubdtype(arr.dtype, np.floating) and arr.ndim <= 2:
                    _check_finite(k, np.asarray(arr[:n]), where=str(p))

    def _check_image(self, key: str, dtype: np.dtype, shape: tuple[int, ...],
                     values: np.ndarray | None = None) -> None:
        if len(shape) != 4 or shape[-1] not in (1, 3, 4):
            hint = (
                " (looks channel-first: transpose to (T, H, W, C))"
                if len(shape) == 4 and shape[1] in (1, 3)
                else ""
            )
            raise ValueError(
                f"image key {key!r} must have shape (T, H, W, C) with C in 1/3/4, got {shape}{hint}"
            )
        if 0 in shape[1:3]:
            raise ValueError(f"image key {key!r} has an empty frame size {shape[1:3]}")
        if np.dtype(dtype) != np.uint8:
            hint = "convert float images in [0, 1] with (x * 255).round().clip(0, 255).astype(np.uint8)"
            if values is not None and np.issubdtype(values.dtype, np.floating) and values.size:
                if not np.isfinite(values).all():
                    hint = "the images hold NaN/inf: fix or drop those frames, then " + hint
                elif float(values.max()) > 1.0:
                    hint = ("these float images are in 0..255 (max "
                            f"{float(values.max()):g}): convert with x.round().clip(0, 255).astype(np.uint8)")
            raise ValueError(f"image key {key!r} must be uint8, got {np.dtype(dtype)}; {hint}")

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def _writing(self) -> Iterator[zarr.Group]:
        """Hold the writer lock and yield a writable root, with this object's view refreshed from disk.

        Another process may have appended or changed attributes since this store was opened.
        """
        if self.mode == "r":
            raise ValueError(f"{self.path} is open read-only; open it with mode='a' to write")
        with _acquire(self._lock, self.path, self.lock_timeout_s):
            self.root = open_group(self.path, read_only=False, checked=self.checked)
            self.data, self.meta = self.root["data"], self.root["meta"]
            self._arrays.clear()
            self._ends_arr = self._open_ends()
            self._episode_ends = self._read_committed_ends()
            yield zarr.open_group(zarr.storage.LocalStore(self.path), mode="r+")

    def add_episode(self, episode: Mapping[str, np.ndarray]) -> int:
        """Append one complete episode (``{key: (T, ...) array}``); returns its index.

        Data arrays are grown and written first, ``meta/episode_ends`` last: a crash at any point leaves
        the store holding exactly the episodes that were complete before. The whole append holds the
        writer lock (see the module docstring).
        """
        if self.mode == "r":
            raise ValueError(f"{self.path} is open read-only; open it with mode='a' to append")
        if not episode:
            raise ValueError("add_episode needs a non-empty {key: array} mapping")
        ep = {k: np.asarray(v) for k, v in episode.items()}
        lengths = {k: v.shape[0] if v.ndim else 0 for k, v in ep.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(
                f"episode keys have unequal lengths {lengths}; every key needs one row per frame"
            )
        T = next(iter(lengths.values()))
        if T == 0:
            raise ValueError("episode has 0 frames; an episode needs at least one frame")
        with self._writing() as wroot:
            return self._append(wroot, ep, T)

    def _append(self, wroot: zarr.Group, ep: dict[str, np.ndarray], T: int) -> int:
        existing = self.keys()
        if self.n_episodes and set(ep) != set(existing):
            raise ValueError(
                f"episode keys {sorted(ep)} differ from the store's keys {existing}; "
                "every episode must provide the same keys"
            )
        cams = set(self.image_keys())
        for k, v in ep.items():
            if k in cams or is_image_array(v.shape) or (v.ndim == 4 and v.shape[1] in (1, 3)):
                self._check_image(k, v.dtype, v.shape, v)
            elif np.issubdtype(v.dtype, np.floating):
                _check_finite(k, v, where="episode")
            if self.n_episodes:
                arr = self[k]
                if tuple(arr.shape[1:]) != v.shape[1:]:
                    raise ValueError(
                        f"data/{k} frames have shape {tuple(arr.shape[1:])} but the episode's are "
                        f"{v.shape[1:]}; resize the data to match the store"
                    )
                if not np.can_cast(v.dtype, arr.dtype, casting="same_kind"):
                    raise ValueError(f"data/{k} has dtype {arr.dtype}; cannot store {v.dtype} in it")
        start = self.n_frames
        wdata = wroot["data"]
        if not self.n_episodes:  # arrays left by a writer killed before its first commit are stale
            for k in existing:
                if k not in ep:
                    del wdata[k]
        for k, v in ep.items():
            arr = self._array_for(wroot, k, v) if not self.n_episodes else wdata[k]
            arr = arr.with_config({"write_empty_chunks": True})  # a missing chunk is then always damage
            arr.resize((start + T, *arr.shape[1:]))
            arr[start : start + T] = v
        new_ends = np.append(self._episode_ends, start + T).astype(np.int64)
        ends = wroot["meta"]["episode_ends"].with_config({"write_empty_chunks": True})
        ends.resize((len(new_ends),))
        ends[len(new_ends) - 1] = start + T  # the commit point
        self._episode_ends = new_ends
        self._arrays.clear()  # the read handles' shapes are stale now
        self._ends_arr = self._open_ends()
        return len(new_ends) - 1

    def _array_for(self, wroot: zarr.Group, key: str, v: np.ndarray) -> zarr.Array:
        """Create (or re-create, when no episode is committed yet) the data array for ``key``."""
        settings = {**DEFAULT_STORAGE, **dict(wroot.attrs.get("storage", {}))}
        fmt = wroot.metadata.zarr_format
        image = is_image_array(v.shape)
        frames = settings["image_chunk_frames"] if image else settings["lowdim_chunk_frames"]
        dtype = np.float32 if v.dtype == np.float64 else v.dtype
        codecs = _codecs(settings["image_codec"], fmt, image, np.dtype(dtype).itemsize,
                         checksum=settings.get("checksum") == CHECKSUM)
        return wroot["data"].create_array(
            key,
            shape=(0, *v.shape[1:]),
            dtype=dtype,
            chunks=(frames, *v.shape[1:]),
            overwrite=True,
            compressors=codecs,
        )

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Merge ``attrs`` into the root attributes (JSON-able values), under the writer lock."""
        if self.mode == "r":
            raise ValueError(f"{self.path} is open read-only; open it with mode='a' to change attributes")
        attrs = _json_attrs(attrs)
        with self._writing() as wroot:
            wroot.attrs.update(attrs)
        self.root = open_group(self.path, read_only=False, checked=self.checked)

    def __repr__(self) -> str:
        return (
            f"ReplayStore({str(self.path)!r}, episodes={self.n_episodes}, frames={self.n_frames}, "
            f"keys={self.keys()})"
        )


def resume_conversion(partial: str | os.PathLike, attrs: Mapping[str, Any], source_id: str) -> ReplayStore:
    """The partial store of a converter (robomimic, LeRobot): resumed when it was started from the same
    source (``attrs["source_id"] == source_id``), else created afresh with ``attrs``."""
    path = Path(partial)
    if path.exists():
        try:
            store = ReplayStore.open(path, mode="a")
            if store.attrs.get("source_id") == source_id:
                return store
        except ValueError:
            pass  # an unreadable leftover: start over
    return ReplayStore.create(path, attrs=attrs, overwrite=True)


def _json_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` as a dict, or ValueError naming the first value zarr cannot store as JSON."""
    out = dict(attrs)
    for k, v in out.items():
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"store attribute {k!r} is not JSON-serialisable ({e}); convert numpy values "
                "with .tolist() / float() and drop NaN"
            ) from e
    return out


def _is_json(f: Path) -> bool:
    try:
        json.loads(f.read_text())
    except (ValueError, OSError):
        return False
    return True


def _lock_path(path: Path) -> str:
    return str(path / LOCK_FILE)


@contextlib.contextmanager
def _acquire(lock: filelock.FileLock, path: Path, timeout: float) -> Iterator[None]:
    """Hold ``lock``; StoreBusyError naming the store if another writer keeps it past ``timeout`` s."""
    try:
        lock.acquire(timeout=timeout)
    except filelock.Timeout:
        raise StoreBusyError(
            f"{path} is being written by another process (lock {lock.lock_file} held for more than "
            f"{timeout:g} s); wait for it to finish, or open the store with a larger lock_timeout_s"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _remove_partial_files(path: Path) -> None:
    """Delete temp files (``*.partial``) that zarr's atomic file writes leave when a writer is killed."""
    for f in path.rglob("*.partial"):
        f.unlink(missing_ok=True)


def _check_finite(key: str, x: np.ndarray, where: str) -> None:
    """Raise ValueError if ``x`` holds NaN or inf, naming the key and the first bad row."""
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"{where}: {key!r} holds NaN/inf (first at row {row}); clean or drop those frames "
            "before storing (actions and states must be finite)"
        )
