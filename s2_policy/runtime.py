"""Process-level CPU settings: torch's thread count (every entry point) and real-time scheduling (the loop).

Every entry point (``train_policy.py``, evaluation, the real-time loop, pre-training, the benchmarks) calls
:func:`configure_cpu` once at start-up; the real-time loop may also ask for :func:`set_realtime_priority`.
"""

from __future__ import annotations

import os

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


def set_realtime_priority(priority: int) -> None:
    """Run the calling thread, and every thread it starts afterwards, under ``SCHED_FIFO`` at ``priority``.

    A real-time class keeps other processes from preempting the control loop, its cameras and its simulator:
    on the 2-core CPU it cut the encode p99 of the real-time loop from 24-29 ms to 20-22 ms (BENCHMARKS.md).
    Linux only; needs root or ``CAP_SYS_NICE`` (``ulimit -r``). Call it before starting the threads.
    """
    if not 1 <= int(priority) <= 99:
        raise ValueError(f"realtime_priority must be a SCHED_FIFO priority in 1..99, got {priority}")
    if not hasattr(os, "sched_setscheduler"):
        raise RuntimeError("realtime_priority needs Linux (os.sched_setscheduler); set it to null here")
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(priority)))
    except PermissionError as e:
        raise PermissionError(
            "realtime_priority needs root or CAP_SYS_NICE (e.g. `ulimit -r 99` in limits.conf, or "
            "`setcap cap_sys_nice+ep` on the interpreter); run with realtime_priority=null otherwise"
        ) from e


__all__ = ["configure_cpu", "set_realtime_priority"]
