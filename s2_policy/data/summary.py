"""Print a store's summary: episodes, lengths, keys, shapes, dtypes, chunks, codecs, sizes on disk.

Usage: ``python -m s2_policy.data.summary PATH [--json] [--verify]``

``--verify`` decodes every chunk of every array (committed frames) and checks its crc32c checksum (stores
written with checksums) and its presence; it exits with status 1 naming each bad chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s2_policy.cli import user_errors
from s2_policy.data.integrity import has_checksum, verify_array
from s2_policy.data.store import ReplayStore

__all__ = ["summarize", "format_summary", "verify"]


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _codec_name(arr: Any) -> str:
    codecs = list(arr.compressors or [])
    if not codecs:
        return "none"
    c = codecs[0]
    cname = getattr(c, "cname", None)
    cname = getattr(cname, "value", cname)
    level = getattr(c, "clevel", None)
    return f"{type(c).__name__}({cname}, {level})" if cname else type(c).__name__


def summarize(path: str | os.PathLike) -> dict[str, Any]:
    """Summary of the store at ``path`` as a JSON-able dict (no frame data is decoded)."""
    store = ReplayStore.open(path, mode="r", validate=False)
    lengths = store.episode_lengths
    keys = {}
    for k in store:
        arr = store[k]
        keys[k] = {
            "shape": list(arr.shape),
            "dtype": str(arr.dtype),
            "chunks": list(arr.chunks),
            "codec": _codec_name(arr),
            "checksum": has_checksum(arr),
            "stored_bytes": _dir_bytes(store.path / "data" / k),
            "raw_bytes": int(np.prod(arr.shape)) * arr.dtype.itemsize,
        }
    uncommitted = {
        k: v["shape"][0] - store.n_frames for k, v in keys.items() if v["shape"][0] > store.n_frames
    }
    return {
        "path": str(store.path),
        "zarr_format": store.root.metadata.zarr_format,
        "checksums": "crc32c" if store.checked else None,
        "episodes": store.n_episodes,
        "frames": store.n_frames,
        "length_min": int(lengths.min()) if len(lengths) else 0,
        "length_mean": float(lengths.mean()) if len(lengths) else 0.0,
        "length_max": int(lengths.max()) if len(lengths) else 0,
        "keys": keys,
        "uncommitted_frames": uncommitted,
        "disk_bytes": _dir_bytes(store.path),
        "attrs": store.attrs,
    }


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable text of :func:`summarize`'s dict."""
    lines = [
        f"store        {s['path']} (zarr format {s['zarr_format']})",
        f"episodes     {s['episodes']}   frames {s['frames']}   "
        f"length min/mean/max {s['length_min']}/{s['length_mean']:.1f}/{s['length_max']}",
        f"disk         {_mb(s['disk_bytes'])}",
        "checksums    " + (
            "crc32c per chunk; missing chunks are errors" if s["checksums"]
            else "none (written before checksums, or zarr format 2): corruption cannot be detected"
        ),
        "",
        f"{'key':<22}{'shape':<22}{'dtype':<9}{'chunks':<20}{'codec':<24}{'on disk':>12}{'ratio':>8}",
    ]
    for k, v in s["keys"].items():
        ratio = v["raw_bytes"] / v["stored_bytes"] if v["stored_bytes"] else float("nan")
        lines.append(
            f"{k:<22}{str(tuple(v['shape'])):<22}{v['dtype']:<9}{str(tuple(v['chunks'])):<20}"
            f"{v['codec']:<24}{_mb(v['stored_bytes']):>12}{ratio:>7.1f}x"
        )
    if s["uncommitted_frames"]:
        lines += ["", f"uncommitted frames (an interrupted append, ignored): {s['uncommitted_frames']}"]
    attrs = {k: v for k, v in s["attrs"].items() if k not in ("demo_names", "masks")}
    if attrs:
        lines += ["", "attributes:"] + [f"  {k}: {json.dumps(v)[:200]}" for k, v in attrs.items()]
    return "\n".join(lines)


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """Decode every chunk of the committed frames of every array of the store at ``path``.

    Returns ``{"chunks": n checked, "problems": [{"array", "chunk", "error"}], "checksums": bool}``.
    """
    store = ReplayStore.open(path, mode="r", validate=False)
    checked, problems = 0, []
    arrays = [(f"data/{k}", store[k], store.n_frames) for k in store]
    for name, arr, n in arrays:
        c, p = verify_array(name, arr, n)
        checked += c
        problems += [{"array": q.array, "chunk": list(q.chunk), "error": q.error} for q in p]
    return {"chunks": checked, "problems": problems, "checksums": store.checked}


@user_errors
def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m s2_policy.data.summary PATH [--json] [--verify]``."""
    p = argparse.ArgumentParser(description="Summarise a zarr demonstration store.")
    p.add_argument("path", type=Path, help="store directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--verify", action="store_true", help="decode and checksum every chunk (slow)")
    a = p.parse_args(argv)
    s = summarize(a.path)
    if a.verify:
        s["verify"] = verify(a.path)
    print(json.dumps(s, indent=2) if a.json else format_summary(s))
    if a.verify and not a.json:
        v = s["verify"]
        for q in v["problems"]:
            print(f"BAD  {q['array']} chunk {tuple(q['chunk'])}: {q['error']}")
        how = "decoded and checksummed" if v["checksums"] else "decoded (no checksums in this store)"
        print(f"\nverify: {v['chunks']} chunks {how}, {len(v['problems'])} bad")
    if a.verify and s["verify"]["problems"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
