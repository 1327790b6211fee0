"""The store's writer lock: one inter-process file lock per store (``filelock``), a bounded wait, and the
clean-up of files a killed writer leaves."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import filelock

DEFAULT_LOCK_TIMEOUT_S = 120.0
LOCK_FILE = ".writer.lock"  # inside the store directory; zarr ignores it


class StoreBusyError(TimeoutError):
    """Another process held the store's writer lock for longer than the caller was willing to wait."""


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
