"""Chunk integrity for zarr 3 stores: crc32c per chunk, missing chunks are errors, a full verification pass.

Arrays written with :data:`CHECKSUM_CODEC` last in their ``compressors`` carry a crc32c of every stored chunk
(the zarr 3 ``crc32c`` codec). Reading them through :class:`CheckedStore` turns two silent failures into
errors that name the array and the chunk: a chunk file that is missing (zarr would return the fill value,
e.g. a black frame or all-zero actions) and a chunk whose bytes do not match their checksum (flipped or
truncated bytes). Writers must store every chunk (``write_empty_chunks=True``) for the first rule to hold,
so only stores that declare their checksums (see :func:`open_group`) are read strictly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
import zarr.codecs
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore, WrapperStore

__all__ = [
    "CHECKSUM", "CheckedStore", "ChunkProblem", "StoreIntegrityError", "checksum_codecs", "has_checksum",
    "open_group", "verify_array",
]

CHECKSUM = "crc32c"
# v3 default chunk keys: "<array path>/c/<i>/<j>/..." ("<array path>/c" for 0-d arrays)
_CHUNK_KEY = re.compile(r"^(?P<array>.+)/c(?P<index>(/\d+)*)$")


class StoreIntegrityError(ValueError):
    """A chunk of a store is missing or corrupt; the message names the store, array and chunk."""


def _describe(key: str) -> tuple[str, tuple[int, ...]] | None:
    m = _CHUNK_KEY.match(key)
    if m is None:
        return None
    return m["array"], tuple(int(i) for i in m["index"].split("/") if i)


class CheckedStore(WrapperStore[LocalStore]):
    """A local zarr store whose chunk reads are checked: missing chunk -> error, crc32c mismatch -> error.

    Only reads are checked (a writer's read-modify-write of a not yet written chunk must see nothing).
    """

    def _with_store(self, store: LocalStore) -> CheckedStore:
        return type(self)(store)

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        buf = await self._store.get(key, prototype, byte_range)
        where = _describe(key)
        if where is None:
            return buf
        array, index = where
        root = self._store.root
        if buf is None:
            raise StoreIntegrityError(
                f"{root}: chunk {index} of array {array!r} is missing (file {key}); zarr would read it as "
                "the fill value. The store is damaged (a deleted or never-copied file): restore it from a "
                "copy or collect/convert it again"
            )
        if byte_range is None:
            data = buf.as_numpy_array()
            if len(data) < 4 or np.uint32(google_crc32c.value(data[:-4])).tobytes() != bytes(data[-4:]):
                raise StoreIntegrityError(
                    f"{root}: chunk {index} of array {array!r} (file {key}, {len(data)} bytes) fails its "
                    "crc32c checksum: the file is corrupt or truncated. Restore the store from a copy or "
                    "collect/convert it again"
                )
        return buf


def checksum_codecs(*compressors: Any) -> tuple[Any, ...]:
    """``compressors`` for a new checksummed array: the given ones, then the crc32c codec."""
    return (*compressors, zarr.codecs.Crc32cCodec())


def has_checksum(arr: zarr.Array) -> bool:
    """True if ``arr`` stores a crc32c per chunk."""
    return any(isinstance(c, zarr.codecs.Crc32cCodec) for c in (arr.compressors or ()))


def open_group(path: str | Path, read_only: bool, checked: bool) -> zarr.Group:
    """Open the zarr group at ``path``; ``checked``: reads go through :class:`CheckedStore`."""
    store: Any = LocalStore(path, read_only=read_only)
    if checked:
        store = CheckedStore(store)
    return zarr.open_group(store, mode="r" if read_only else "r+")


@dataclass
class ChunkProblem:
    """One bad chunk found by :func:`verify_array`."""

    array: str
    chunk: tuple[int, ...]
    error: str


def verify_array(name: str, arr: zarr.Array, n_rows: int | None = None) -> tuple[int, list[ChunkProblem]]:
    """Decode every chunk of ``arr`` holding rows ``[0, n_rows)`` (all rows by default), one at a time.

    Returns ``(chunks checked, problems)``; a problem is any error decoding a chunk (missing, checksum,
    codec). Read ``arr`` through :class:`CheckedStore` for missing chunks and checksums to count.
    """
    n = arr.shape[0] if n_rows is None else min(n_rows, arr.shape[0])
    if arr.ndim == 0:
        return 0, []
    step = arr.chunks[0]
    problems, checked = [], 0
    for start in range(0, n, step):
        checked += 1
        try:
            arr[start:min(start + step, n)]
        except Exception as err:  # report every kind of decoding failure, keep going
            problems.append(ChunkProblem(name, (start // step,), f"{type(err).__name__}: {err}"))
    return checked, problems
