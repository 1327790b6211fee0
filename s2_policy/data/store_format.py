"""The store's on-disk format choices (image codecs, chunking defaults, Blosc/crc32c compressors per zarr
format) and the value checks that reading and appending share."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numcodecs
import numpy as np
import zarr.codecs

from s2_policy.data.integrity import checksum_codecs

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


def _check_finite(key: str, x: np.ndarray, where: str) -> None:
    """Raise ValueError if ``x`` holds NaN or inf, naming the key and the first bad row."""
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"{where}: {key!r} holds NaN/inf (first at row {row}); clean or drop those frames "
            "before storing (actions and states must be finite)"
        )
