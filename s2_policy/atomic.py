"""Atomic file writes: write beside the target, fsync, then ``os.replace``.

Every file the project writes for later use (checkpoints, results, telemetry, logs, figures, videos) goes
through here, so a crash or a kill mid-write leaves the previous version readable, never a torn file.
(Zarr stores and the feature cache are directories; they have their own commit protocols.)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: setting the umask to read it is process-wide, and a writer thread could race with it.
_UMASK = _read_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` with the same suffix (so writers that pick a format by extension
    work); on normal exit it is fsynced and renamed over ``path``, on an exception it is deleted.

    The file gets the permissions a plain ``open`` would give it (``0o666`` less the umask), or those of the
    file it replaces: ``mkstemp``'s private ``0o600`` would hide results from the rest of a lab's group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o666 & ~_UMASK
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.fchmod(fd, mode)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``obj`` as indented JSON (plus a final newline) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=default) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (checkpoints: a kill mid-save keeps the previous one loadable)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
