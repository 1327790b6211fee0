"""Checkpoints that cannot run code: tensors in safetensors, everything else as JSON in its header.

One file per checkpoint (policy, training resume state, pre-training resume state). A checkpoint is a tree
of dicts, lists, tuples, numbers, strings, ``None``, torch tensors and numpy arrays. :func:`save_tree` writes
each top-level entry ``name`` as the JSON string ``metadata[name]`` of a safetensors file, with every tensor
in it replaced by ``{"__tensor__": "name/path/in/tree"}`` and stored under that key; numpy arrays are stored
as their raw bytes (``{"__ndarray__": key, "dtype": ..., "shape": ...}``), tuples and dicts with non-string
keys (optimizer states) are tagged so the tree round-trips exactly. ``metadata["format"]`` names the kind
of checkpoint. Reading one needs only ``safetensors`` and ``json`` (docs/checkpoints.md), and never unpickles.

Files written by ``torch.save`` (the earlier format) are pickles: unpickling can execute arbitrary code,
so :func:`load_tree` refuses them unless the caller passes ``trust_pickle=True``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from s2_policy.atomic import atomic_path

__all__ = ["CheckpointError", "save_tree", "load_tree", "read_metadata", "is_pickle"]

_HEADER_LIMIT = 100 * 2**20  # safetensors' own limit on the JSON header


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: truncated, not a checkpoint, the wrong kind, or a pickle."""


def _encode(x: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(x, torch.Tensor):
        tensors[path] = x.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(x, np.ndarray):
        a = np.ascontiguousarray(x)
        tensors[path] = torch.from_numpy(a.reshape(-1).view(np.uint8).copy())
        return {"__ndarray__": path, "dtype": a.dtype.str, "shape": list(a.shape)}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Mapping):
        if all(isinstance(k, str) for k in x):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in x.items()}
        if not all(isinstance(k, int | str) for k in x):
            raise TypeError(f"{path}: dict keys must be str or int to be saved, got {list(x)[:5]}")
        return {"__dict__": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in x.items()]}
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(x)]}
    if isinstance(x, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(x)]
    if x is None or isinstance(x, bool | int | float | str):
        return x
    raise TypeError(f"{path}: cannot save a {type(x).__name__} in a checkpoint (tensors, arrays, JSON only)")


def _decode(x: Any, tensors: Any) -> Any:
    if isinstance(x, list):
        return [_decode(v, tensors) for v in x]
    if not isinstance(x, dict):
        return x
    if "__tensor__" in x:
        return tensors.get_tensor(x["__tensor__"])
    if "__ndarray__" in x:
        raw = tensors.get_tensor(x["__ndarray__"]).numpy()
        return raw.view(np.dtype(x["dtype"])).reshape(x["shape"]).copy()
    if "__tuple__" in x:
        return tuple(_decode(v, tensors) for v in x["__tuple__"])
    if "__dict__" in x:
        return {k: _decode(v, tensors) for k, v in x["__dict__"]}
    return {k: _decode(v, tensors) for k, v in x.items()}


def save_tree(tree: Mapping[str, Any], path: str | os.PathLike, fmt: str) -> Path:
    """Write ``tree`` to ``path`` as one safetensors file (atomically); ``fmt`` is ``metadata["format"]``.

    Each top-level key becomes a metadata entry holding JSON; its tensors are stored as ``key/sub/path``.
    """
    if "format" in tree:
        raise ValueError("'format' is reserved for the checkpoint kind; rename that entry")
    tensors: dict[str, torch.Tensor] = {}
    metadata = {"format": fmt}
    for key, value in tree.items():
        metadata[key] = json.dumps(_encode(value, key, tensors), allow_nan=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def is_pickle(path: str | os.PathLike) -> bool:
    """True if ``path`` starts like a ``torch.save`` file (zip archive) or a bare pickle (protocol >= 2).

    A safetensors file starts with its header length (8 bytes, little-endian) then ``{``; its first byte can
    be 0x80 like a pickle's, so that layout is recognised first.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        return True
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= _HEADER_LIMIT:
        return False
    return head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")


def _check_header(path: Path, what: str) -> None:
    """Raise CheckpointError naming ``path`` if it is not a complete safetensors file."""
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{what} {path} is {size} bytes long: empty or truncated (interrupted copy?)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _HEADER_LIMIT:
            raise CheckpointError(f"{what} {path} is not a checkpoint file (no safetensors header)")
        raw = f.read(n)
    if len(raw) < n:
        raise CheckpointError(
            f"{what} {path} is truncated: its header needs {n + 8} bytes, the file has {size}; "
            "copy it again from its source"
        )
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{what} {path} is not a checkpoint file (header is not JSON: {err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{what} {path} is not a checkpoint file (header is not a JSON object)")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(
            f"{what} {path} is truncated: it should be {8 + n + end} bytes, it has {size}; "
            "copy it again from its source"
        )


def read_metadata(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, str]:
    """The JSON-string metadata of a checkpoint (``format`` and one entry per top-level key)."""
    path = Path(path)
    _check_header(path, what)
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_tree(path: str | os.PathLike, fmt: str | tuple[str, ...], what: str = "checkpoint",
              trust_pickle: bool = False, opt_in: str = "trust_pickle=True") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_tree` whose format is ``fmt`` (one of, if a tuple).

    A ``torch.save`` pickle is loaded only with ``trust_pickle=True`` (returned as unpickled); otherwise a
    :class:`CheckpointError` says why and names ``opt_in`` (how the caller's user opts in). Truncated files,
    other files and checkpoints of another kind raise :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    fmts = (fmt,) if isinstance(fmt, str) else tuple(fmt)
    if is_pickle(path):
        if not trust_pickle:
            raise CheckpointError(
                f"{what} {path} is a pickled torch.save file (the old checkpoint format). Unpickling can run "
                f"arbitrary code, so it is not loaded by default. If you trust where the file came from, "
                f"load it with {opt_in}; saving it again writes the safe format (safetensors + JSON)."
            )
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            why = f"{type(err).__name__}: {err}"
            raise CheckpointError(f"{what} {path} is damaged or truncated ({why})") from err
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{path} is not a {what} (it unpickles to a {type(obj).__name__})")
        return dict(obj)
    _check_header(path, what)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        if meta.get("format") not in fmts:
            raise CheckpointError(
                f"{path} is not a {what} (its format is {meta.get('format')!r}, expected "
                f"{' or '.join(map(repr, fmts))})"
            )
        try:
            tree = {k: json.loads(v) for k, v in meta.items() if k != "format"}
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{what} {path} has damaged metadata ({err})") from None
        out = {k: _decode(v, f) for k, v in tree.items()}
    out["format"] = meta["format"]
    return out
