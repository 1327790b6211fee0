"""FrameReader: whole image frames of a store array, each chunk read and decoded once per call.

Why by hand: zarr 3 spends ~0.5-1 ms per chunk (asyncio and thread hops), several times the ~60 us of decoding
one 128 px frame, which made the window reader slower than diffusion_policy's (BENCHMARKS.md, round six).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
import zarr
import zarr.codecs

from s2_policy.data.integrity import StoreIntegrityError

__all__ = ["FrameReader"]

# zarr 2 compressors the direct path decodes itself: byte codecs only, nothing that can build objects
_ZARR2_COMPRESSORS = (numcodecs.Blosc, numcodecs.Zstd, numcodecs.GZip, numcodecs.Zlib, numcodecs.LZ4)


class FrameReader:
    """Whole frames (indices along axis 0) of one store array; each chunk is read and decoded once per call.

    Direct path, for uint8 arrays chunked along axis 0 only (diffusion_policy's image layout) in a local
    directory: each chunk file is read and decoded with numcodecs (zarr 3: ``bytes`` then blosc, zstd or
    gzip, then an optional crc32c, which is checked; zarr 2: blosc, zstd, gzip, zlib or lz4, no filters).
    Anything else (sharding, filters, other codecs or dtypes) is read through zarr's orthogonal indexing.
    ``checked``: a missing chunk file is an error, as in checksummed stores; otherwise it reads as the fill
    value, as zarr does.
    ``direct`` says which path is used (set it False to force zarr, e.g. to compare the two).
    """

    def __init__(self, arr: zarr.Array, array_dir: str | os.PathLike, name: str, checked: bool) -> None:
        self.arr, self.dir, self.name, self.checked = arr, Path(array_dir), name, checked
        self.shape, self.dtype = tuple(arr.shape), np.dtype(arr.dtype)
        self.chunk_shape = tuple(int(c) for c in arr.chunks)
        self._decoders, self._crc = self._plan()
        self.direct = self._decoders is not None
        fill = arr.fill_value
        self._fill = 0 if fill is None else fill

    def _plan(self) -> tuple[list[Any] | None, bool]:
        """(numcodecs decoders in encoding order, crc32c last?) for the direct path, or (None, False)."""
        meta = self.arr.metadata
        meta_file = "zarr.json" if meta.zarr_format == 3 else ".zarray"
        if (
            self.dtype != np.uint8
            or self.chunk_shape[1:] != self.shape[1:]
            or not (self.dir / meta_file).is_file()
        ):
            return None, False
        if meta.zarr_format == 2:
            if meta.filters or meta.order != "C":
                return None, False
            if meta.compressor is not None and not isinstance(meta.compressor, _ZARR2_COMPRESSORS):
                return None, False  # anything else (e.g. numcodecs' Pickle) is left to zarr
            return ([meta.compressor] if meta.compressor is not None else []), False
        codecs = list(meta.codecs)
        if not codecs or not isinstance(codecs[0], zarr.codecs.BytesCodec):
            return None, False  # array->array codecs (transpose) or sharding
        crc = isinstance(codecs[-1], zarr.codecs.Crc32cCodec)
        decoders: list[Any] = []
        for codec in codecs[1 : len(codecs) - crc]:
            if isinstance(codec, zarr.codecs.BloscCodec):
                decoders.append(numcodecs.Blosc())  # blosc frames describe themselves
            elif isinstance(codec, zarr.codecs.ZstdCodec):
                decoders.append(numcodecs.Zstd())
            elif isinstance(codec, zarr.codecs.GzipCodec):
                decoders.append(numcodecs.GZip())
            else:
                return None, False
        return decoders, crc

    def read(self, frames: np.ndarray) -> np.ndarray:
        """``arr[frames]`` for int frame indices in any order (repeats allowed): (len(frames), *shape[1:])."""
        frames = np.asarray(frames, dtype=np.int64)
        uniq, inverse = np.unique(frames, return_inverse=True)
        if not self.direct:
            got = np.asarray(self.arr.get_orthogonal_selection((uniq,)))
            return got[inverse]
        got = np.empty((len(uniq), *self.shape[1:]), self.dtype)
        c0 = self.chunk_shape[0]
        chunk_ids = uniq // c0
        cuts = np.flatnonzero(np.diff(chunk_ids)) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(uniq)], strict=True):
            c = int(chunk_ids[a])
            got[a:b] = self._chunk(c)[uniq[a:b] - c * c0]
        return got[inverse]

    def _chunk(self, c: int) -> np.ndarray:
        """Chunk ``c`` along axis 0, decoded: shape ``chunk_shape``."""
        key = self.arr.metadata.encode_chunk_key((c,) + (0,) * (len(self.shape) - 1))
        try:
            data: Any = (self.dir / key).read_bytes()
        except FileNotFoundError:
            if self.checked:
                raise StoreIntegrityError(
                    f"{self.dir}: chunk {c} of array {self.name!r} is missing (file {key}); zarr would read "
                    "it as the fill value. Restore the store from a copy or collect/convert it again"
                ) from None
            return np.full(self.chunk_shape, self._fill, self.dtype)
        if self._crc:
            if len(data) < 4 or np.uint32(google_crc32c.value(data[:-4])).tobytes() != data[-4:]:
                raise StoreIntegrityError(
                    f"{self.dir}: chunk {c} of array {self.name!r} (file {key}, {len(data)} bytes) fails its "
                    "crc32c checksum: the file is corrupt or truncated. Restore the store from a copy or "
                    "collect/convert it again"
                )
            data = memoryview(data)[:-4]
        for codec in reversed(self._decoders):
            data = codec.decode(data)
        out = np.frombuffer(data, dtype=self.dtype)
        if out.size != int(np.prod(self.chunk_shape)):
            raise StoreIntegrityError(
                f"{self.dir}: chunk {c} of array {self.name!r} (file {key}) decodes to {out.size} values, "
                f"expected {int(np.prod(self.chunk_shape))}: the file is corrupt"
            )
        return out.reshape(self.chunk_shape)
