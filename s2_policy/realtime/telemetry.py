"""Per-step timing of the real-time loop: live p50/p95/p99 lines, a JSON summary and a CSV at the end."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from s2_policy.atomic import atomic_write_text

#: Timing fields summarised with percentiles (milliseconds).
TIMING_KEYS = ("latency_ms", "reaction_ms", "frame_age_ms", "encode_ms", "policy_ms", "compute_cpu_ms",
               "step_ms", "jitter_ms")


@dataclass
class StepRecord:
    """One control tick. Times are milliseconds; ``nan`` where the step did not get that far."""

    step: int
    t: float                  # tick start, monotonic seconds since the loop started
    status: str               # "act" (sent a policy action) | "hold" | "stop" | "idle" (nothing scheduled)
    reason: str = ""          # why the loop held/stopped ("" when acting)
    inferred: bool = False    # this tick ran the encoder + policy
    latency_ms: float = math.nan    # oldest capture time of the frames behind the sent action -> send time
    reaction_ms: float = math.nan   # latency_ms on ticks that inferred: capture -> first action from it
    frame_age_ms: float = math.nan  # age of the oldest frame at snapshot time
    encode_ms: float = math.nan
    policy_ms: float = math.nan
    compute_cpu_ms: float = math.nan  # loop-thread CPU time in encode + policy (wall >> CPU: busy machine)
    step_ms: float = math.nan       # snapshot -> action sent
    jitter_ms: float = math.nan     # tick wake-up minus its nominal time
    deadline_miss: bool = False     # the tick's work did not finish before the next tick
    late_actions: int = 0           # chunk actions dropped because their time had passed
    dropped_frames: int = 0         # camera frames overwritten unread since the previous tick (all cameras)


def percentiles(values: Any, qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": .., "p95": .., "p99": .., "max": .., "mean": .., "n": ..}`` over the finite values."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {**{f"p{q:g}": math.nan for q in qs}, "max": math.nan, "mean": math.nan, "n": 0}
    out = {f"p{q:g}": float(np.percentile(a, q)) for q in qs}
    out.update(max=float(a.max()), mean=float(a.mean()), n=int(a.size))
    return out


class Telemetry:
    """Collects :class:`StepRecord` s; prints a percentile line every ``print_every_s``; writes files.

    ``printer`` receives each live line (default ``print``; ``None`` disables live output).
    """

    def __init__(self, period_s: float, print_every_s: float = 2.0,
                 printer: Callable[[str], None] | None = print) -> None:
        self.period_s = period_s
        self.print_every_s = print_every_s
        self.printer = printer
        self.records: list[StepRecord] = []
        self._last_print = time.monotonic()
        self._printed_upto = 0

    def add(self, rec: StepRecord) -> None:
        self.records.append(rec)
        now = time.monotonic()
        if self.printer is not None and now - self._last_print >= self.print_every_s:
            self.printer(self.live_line(self.records[self._printed_upto:]))
            self._last_print, self._printed_upto = now, len(self.records)

    def live_line(self, recs: list[StepRecord]) -> str:
        """One line over ``recs``: rate, latency/encode/policy percentiles, holds, misses, drops."""
        if not recs:
            return "realtime: no steps"
        span = max(recs[-1].t - recs[0].t, self.period_s) if len(recs) > 1 else self.period_s
        rate = (len(recs) - 1) / span if len(recs) > 1 else 0.0
        lat = percentiles([r.latency_ms for r in recs])
        react = percentiles([r.reaction_ms for r in recs])
        enc = percentiles([r.encode_ms for r in recs])
        pol = percentiles([r.policy_ms for r in recs])
        holds = sum(r.status in ("hold", "stop") for r in recs)
        reasons = sorted({r.reason for r in recs if r.reason})
        return (f"realtime step {recs[-1].step}: {rate:.1f} Hz | latency p50/p95/p99 "
                f"{lat['p50']:.1f}/{lat['p95']:.1f}/{lat['p99']:.1f} ms | reaction p50/p99 "
                f"{react['p50']:.1f}/{react['p99']:.1f} ms | encode p50 {enc['p50']:.1f} ms "
                f"| policy p50 {pol['p50']:.1f} ms | misses {sum(r.deadline_miss for r in recs)} "
                f"| late actions {sum(r.late_actions for r in recs)} "
                f"| dropped frames {sum(r.dropped_frames for r in recs)} | holds {holds}"
                + (f" ({', '.join(reasons)})" if reasons else ""))

    def summary(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """JSON-able summary: counts, achieved rate, percentiles of every timing field, fault reasons."""
        recs = self.records
        span = recs[-1].t - recs[0].t if len(recs) > 1 else 0.0
        reasons: dict[str, int] = {}
        for r in recs:
            if r.reason:
                reasons[r.reason] = reasons.get(r.reason, 0) + 1
        out: dict[str, Any] = {
            "steps": len(recs),
            "target_hz": 1.0 / self.period_s,
            "achieved_hz": (len(recs) - 1) / span if span > 0 else 0.0,
            "inferences": sum(r.inferred for r in recs),
            "actions_sent": sum(r.status == "act" for r in recs),
            "hold_steps": sum(r.status in ("hold", "stop") for r in recs),
            "idle_steps": sum(r.status == "idle" for r in recs),
            "deadline_misses": sum(r.deadline_miss for r in recs),
            "late_actions": sum(r.late_actions for r in recs),
            "dropped_frames": sum(r.dropped_frames for r in recs),
            "fault_reasons": reasons,
            "timing_ms": {k: percentiles([getattr(r, k) for r in recs]) for k in TIMING_KEYS},
        }
        if extra:
            out.update(extra)
        return out

    def write(self, out_dir: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
        """Write ``telemetry.json`` (summary) and ``steps.csv`` (one row per tick) atomically."""
        out_dir = Path(out_dir)
        summary = self.summary(extra)
        buf = io.StringIO()
        names = [f.name for f in fields(StepRecord)]
        writer = csv.DictWriter(buf, fieldnames=names)
        writer.writeheader()
        for r in self.records:
            writer.writerow(asdict(r))
        paths = {"json": out_dir / "telemetry.json", "csv": out_dir / "steps.csv"}
        atomic_write_text(paths["csv"], buf.getvalue())
        atomic_write_text(paths["json"], json.dumps(_finite(summary), indent=2) + "\n")
        return paths


def _finite(x: Any) -> Any:
    """NaN -> None so the JSON is standard (json.dumps would write bare NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x
