"""On-disk cache of exported encoder graphs: one directory per key, built beside it and renamed into place.

An entry holds the graph files and ``meta.json`` (the key's payload, the sha256 of every file, the measured
agreement with the PyTorch encoder). ``meta.json`` is written last, so a directory without it is unfinished.
Loading verifies the digests: a corrupted or truncated entry is removed with a warning and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...atomic import atomic_write_json

log = logging.getLogger(__name__)

CACHE_ENV = "S2_POLICY_RUNTIME_CACHE"
CACHE_FORMAT = 1


def cache_root(configured: str | os.PathLike | None = None) -> Path:
    """``configured``, else ``$S2_POLICY_RUNTIME_CACHE``, else ``~/.cache/s2_policy/runtimes``."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "s2_policy" / "runtimes"


def cache_key(payload: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``payload`` (what the graph depends on)."""
    text = json.dumps({"cache_format": CACHE_FORMAT, **payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
        os.fsync(f.fileno())  # the entry is renamed into place next: its files must be on disk first
    return h.hexdigest()


def _digests(entry: Path) -> dict[str, str]:
    return {p.name: _file_digest(p) for p in sorted(entry.iterdir()) if p.is_file() and p.name != "meta.json"}


def load_entry(root: Path, key: str) -> dict[str, Any] | None:
    """The meta of a complete, intact entry ``key``; ``None`` when absent. A damaged entry (unreadable meta,
    missing or altered files) is removed, with a warning, so that the caller rebuilds it."""
    entry = root / key
    if not entry.is_dir():
        return None
    problem = None
    try:
        meta = json.loads((entry / "meta.json").read_text())
        expected = meta["files"]
        actual = _digests(entry)
        if actual != expected:
            bad = sorted(n for n in set(expected) | set(actual) if expected.get(n) != actual.get(n))
            problem = f"files {bad} do not match their recorded sha256"
    except (OSError, ValueError, KeyError, TypeError) as e:
        problem = f"unreadable meta.json ({e})"
    if problem is None:
        meta["path"] = str(entry)
        return meta
    log.warning("runtime graph cache entry %s is damaged (%s): removing it and rebuilding", entry, problem)
    shutil.rmtree(entry, ignore_errors=True)
    return None


def build_entry(root: Path, key: str, build: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Run ``build(tmp_dir)`` (writes the graph files, returns the meta) in a fresh directory beside the
    entry, record the files' digests, write ``meta.json`` last and rename the directory into place.
    If another process finished the same entry first, its entry is kept and ours discarded."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", suffix=".building", dir=root))
    try:
        meta = build(tmp)
        meta["files"] = _digests(tmp)
        atomic_write_json(tmp / "meta.json", meta)
        try:
            os.rename(tmp, root / key)
        except OSError:  # the entry exists: another process built it meanwhile
            existing = load_entry(root, key)
            if existing is not None:
                return existing
            os.rename(tmp, root / key)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    meta["path"] = str(root / key)
    return meta


__all__ = ["CACHE_ENV", "build_entry", "cache_key", "cache_root", "load_entry"]
