"""Appending to a store: episodes and attributes written under the writer lock, data first and
``meta/episode_ends`` last (the mixin that gives :class:`~s2_policy.data.store.ReplayStore` its writes)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import zarr

from s2_policy.data.integrity import CHECKSUM, open_group
from s2_policy.data.store_format import DEFAULT_STORAGE, _check_finite, _codecs, _json_attrs, is_image_array
from s2_policy.data.store_lock import _acquire


class AppendMixin:
    """The writing half of :class:`~s2_policy.data.store.ReplayStore`: crash-safe episode appends and
    attribute updates under the writer lock (see the ``store`` module docstring). It uses the reading half's
    state (``path``, ``mode``, ``checked``, the lock, the committed episode ends)."""

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
