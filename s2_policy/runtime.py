"""Process-level CPU settings for jobs: one place where entry points set torch's thread count.

Every entry point (``train_policy.py``, evaluation, the real-time loop, pre-training, the benchmarks) calls
:func:`configure_cpu` once at start-up.
"""

from __future__ import annotations

import torch


def configure_cpu(threads: int | None = None) -> None:
    """Set torch's intra-op thread count; ``None``/0 leaves torch's default (one per core).

    On a 2-core machine shared with camera/simulator threads or other jobs, 1 thread usually has the steadier
    latency (BENCHMARKS.md); set ``OMP_WAIT_POLICY=PASSIVE`` when using 2 on a busy machine.
    """
    if threads:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1 (or null for torch's default), got {threads}")
        torch.set_num_threads(int(threads))


__all__ = ["configure_cpu"]
