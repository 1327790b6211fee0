"""Process-level CPU settings for inference and training jobs: torch threads and the C allocator.

Every entry point (``train_policy.py``, evaluation, the real-time loop, pre-training, the benchmarks) calls
:func:`configure_cpu` once at start-up, so the settings live in one place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

import torch

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def tune_allocator(mmap_threshold_mb: int = 256, trim_threshold_mb: int = 512) -> bool:
    """Keep large tensors on the heap instead of fresh ``mmap`` pages (glibc only); True when applied.

    glibc serves every allocation above its mmap threshold (at most 32 MB, often much less) with a new
    mapping and unmaps it on free, so each layer of a ViT forward page-faults its activations in again: on
    this project's 2-core CPU that cost up to half of an int8 linear layer's time. Raising the threshold and
    the trim threshold lets freed blocks be reused (what jemalloc/tcmalloc do, without preloading a library).
    The heap then keeps up to ``trim_threshold_mb`` of freed memory. Set ``S2P_TUNE_MALLOC=0`` to skip.
    """
    if os.environ.get("S2P_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs: nothing to tune
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold_mb << 20) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, trim_threshold_mb << 20) == 1
    if not ok:
        log.warning("mallopt refused the allocator settings; large tensors stay on mmap")
    return bool(ok)


def configure_cpu(threads: int | None = None, tune_malloc: bool = True) -> None:
    """Set torch's intra-op thread count (``None``/0: leave torch's default) and tune the allocator."""
    if threads:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1 (or null for torch's default), got {threads}")
        torch.set_num_threads(int(threads))
    if tune_malloc:
        tune_allocator()


__all__ = ["configure_cpu", "tune_allocator"]
