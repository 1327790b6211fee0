"""What every benchmark states with its figures: the CPU and its vector extensions, and the load that other
processes put on the machine while it ran (imported by the benchmark scripts beside it)."""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path

# extensions that decide which kernels run: fp32 (AVX2/AVX512), bf16 (AVX512-BF16, AMX), int8 (VNNI, AMX)
EXTENSIONS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def cpu_model() -> str:
    """CPU model name, its vector extensions that matter here, and an oneDNN ISA cap if one is set."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    ext = [f for f in EXTENSIONS if f in flags]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    capped = f"; oneDNN kernels capped at {cap} (ONEDNN_MAX_CPU_ISA)" if cap else ""
    return f"{name or platform.machine()}, {os.cpu_count()} cores ({', '.join(ext) or 'no AVX2'}){capped}"


def _busy_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class OthersLoad:
    """Average number of cores kept busy by OTHER processes between ``start()`` and ``stop()``.

    The load average counts the benchmark's own threads; this does not: machine-wide busy time
    (``/proc/stat``) minus this process's CPU time, divided by the wall time.
    """

    def start(self) -> OthersLoad:
        self._t, self._busy, self._own = time.monotonic(), _busy_seconds(), _own_seconds()
        return self

    def stop(self) -> float:
        wall = time.monotonic() - self._t
        others = (_busy_seconds() - self._busy) - (_own_seconds() - self._own)
        return max(0.0, others / max(wall, 1e-9))

    @classmethod
    def sample(cls, seconds: float = 2.0) -> float:
        """Others' load over the next ``seconds`` (this process sleeping)."""
        probe = cls().start()
        time.sleep(seconds)
        return probe.stop()


__all__ = ["EXTENSIONS", "OthersLoad", "cpu_model"]
