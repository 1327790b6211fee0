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

The parts: this module (opening, creating and reading a store; validation), :mod:`.store_append`
(appending), :mod:`.store_lock` (the writer lock) and :mod:`.store_format` (codecs, chunking, value
checks); every public name is importable from here.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import zarr

from s2_policy.data.integrity import CHECKSUM, StoreIntegrityError, open_group
from s2_policy.data.store_append import AppendMixin
from s2_policy.data.store_format import (
    DEFAULT_STORAGE,
    IMAGE_CODECS,
    _check_finite,
    _codecs,
    _json_attrs,
    is_image_array,
)
from s2_policy.data.store_lock import (
    DEFAULT_LOCK_TIMEOUT_S,
    LOCK_FILE,
    StoreBusyError,
    _acquire,
    _lock_path,
    _remove_partial_files,
)

__all__ = [
    "ReplayStore", "StoreBusyError", "StoreExistsError", "IMAGE_CODECS", "is_image_array",
    "DEFAULT_LOCK_TIMEOUT_S", "LOCK_FILE",
]

WRITER = "s2_policy.data.store"


class StoreExistsError(ValueError):
    """A store already exists where a new one was to be created."""


class ReplayStore(AppendMixin):
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


def _is_json(f: Path) -> bool:
    try:
        json.loads(f.read_text())
    except (ValueError, OSError):
        return False
    return True
