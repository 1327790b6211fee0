"""The fixed-rate control loop: snapshot cameras + robot, encode, run the policy, schedule, act, stay safe.

One tick (period ``1 / rate_hz``, on the grid ``t0 + k * period``; a tick that overruns skips the ticks it
missed instead of bursting to catch up):

1. snapshot the newest frame of every camera and the robot state; check them (safety);
2. on inference ticks: encode the frames (every tile of every scale of every camera in one backbone call,
   :class:`~s2_policy.realtime.batcher.TileBatcher`), append the features to the observation history (each
   frame is encoded once, not ``n_obs_steps`` times), predict an action chunk, check it, schedule it by
   timestamp (late actions dropped);
3. send the action of the current slot to the robot (or hold when a fault is active or nothing is due);
4. record telemetry.

With ``async_inference`` step 2 runs continuously on a worker thread instead (newest frames each time), so a
policy slower than the control period still yields one action per tick from its chunks; faults, checks and
scheduling are the same, and a fault discards chunks still being computed (an epoch counter).

This module owns the tick and the run. The observation history, encode + predict, chunk scheduling and the
worker thread are in :mod:`s2_policy.realtime.inference`; the phase lock in ``phase_lock``, the fault checks
in ``safety``.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from s2_policy.realtime.actions import ENSEMBLE_MODES, ActionScheduler
from s2_policy.realtime.cameras import CameraSource
from s2_policy.realtime.inference import FeaturePolicy, FrameEncoder, Inference, InferenceWorker
from s2_policy.realtime.phase_lock import PhaseLock
from s2_policy.realtime.robot import Robot
from s2_policy.realtime.safety import SafetyConfig, SafetyMonitor
from s2_policy.realtime.telemetry import StepRecord, Telemetry

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    """Loop settings (``configs/realtime.yaml``: ``loop`` and ``safety`` blocks)."""

    rate_hz: float = 30.0
    infer_every: int | None = None
    async_inference: bool = False
    ensemble: str | None = None        # None: as the policy asks (temporal for temporal_ensemble heads)
    ensemble_k: float | None = None    # None: the policy's temporal_ensemble_m, else 0.01
    duration_s: float | None = None
    max_steps: int | None = None
    print_every_s: float = 2.0
    sync_to_camera: bool = True
    sync_lag_ms: float = 5.0
    max_frame_wait_ms: float = 8.0
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def __post_init__(self) -> None:
        if not self.rate_hz > 0:
            raise ValueError(f"loop.rate_hz must be > 0, got {self.rate_hz}")
        if not 0 <= self.sync_lag_ms < 1e3 / self.rate_hz:
            raise ValueError(f"loop.sync_lag_ms must be in [0, period), got {self.sync_lag_ms}")
        if self.max_frame_wait_ms < 0:
            raise ValueError(f"loop.max_frame_wait_ms must be >= 0, got {self.max_frame_wait_ms}")
        if self.ensemble is not None and self.ensemble not in ENSEMBLE_MODES:
            raise ValueError(f"loop.ensemble={self.ensemble!r}; use one of {ENSEMBLE_MODES} or null (as the "
                             "policy asks)")
        if self.ensemble_k is not None and self.ensemble_k < 0:
            raise ValueError(f"loop.ensemble_k must be >= 0 (or null), got {self.ensemble_k}")
        if self.infer_every is not None and self.infer_every < 1:
            raise ValueError(f"loop.infer_every must be >= 1 tick (or null), got {self.infer_every}")
        if isinstance(self.safety, Mapping):
            self.safety = SafetyConfig(**self.safety)

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz


class ControlLoop:
    """Runs ``policy`` on live ``cameras`` and drives ``robot`` at ``cfg.rate_hz`` until told to stop.

    ``cameras`` maps the policy's camera names to started sources. :meth:`run` returns the telemetry
    summary; :meth:`request_stop` (or SIGINT when run from the main thread) ends it cleanly: the robot is
    left holding its position.
    """

    def __init__(self, policy: FeaturePolicy, encoder: FrameEncoder, cameras: Mapping[str, CameraSource],
                 robot: Robot, cfg: LoopConfig, telemetry: Telemetry | None = None) -> None:
        missing = [c for c in policy.cameras if c not in cameras]
        if missing:
            raise ValueError(f"the policy needs cameras {policy.cameras}; no source for {missing} "
                             f"(configured: {sorted(cameras)})")
        self.policy, self.encoder, self.robot, self.cfg = policy, encoder, robot, cfg
        self.cameras = {c: cameras[c] for c in policy.cameras}
        if getattr(policy, "inpaints", False):
            log.warning("policy.diffusion.inpaint ties each chunk to the previous one in simulated rollouts "
                        "only; this loop samples every chunk on its own (its chunks start at measured "
                        "ticks, not a fixed n_action_steps apart)")
        # null ensemble settings follow the policy: a head trained for temporal ensembling gets it with its m
        policy_m = getattr(policy, "temporal_ensemble_m", None)
        self.ensemble = cfg.ensemble or ("temporal" if policy_m is not None else "none")
        self.ensemble_k = next(k for k in (cfg.ensemble_k, policy_m, 0.01) if k is not None)
        # default: execute each chunk to its end before the next inference, as the policy was evaluated;
        # temporal ensembling needs a prediction every tick
        self.infer_every = cfg.infer_every or (1 if self.ensemble == "temporal" else policy.n_action_steps)
        self.telemetry = telemetry or Telemetry(cfg.period, cfg.print_every_s)
        self.safety = SafetyMonitor(cfg.safety)
        self._stop = threading.Event()
        self.stop_reason = ""
        self._robot_stopped = False
        self._dropped_seen = {c: 0 for c in self.cameras}
        self.phase = PhaseLock(cfg.period, cfg.sync_lag_ms * 1e-3, cfg.max_frame_wait_ms * 1e-3)
        self.inference = Inference(policy, encoder, self.safety)
        self.worker = (InferenceWorker(self.inference, self.cameras, robot, cfg.period, self._stop,
                                       self.request_stop) if cfg.async_inference else None)

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the loop to finish after the current tick (thread-safe)."""
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    def reset_clock(self, t0: float | None = None) -> None:
        """Start the tick grid at ``t0`` (default: now) with an empty schedule and observation history."""
        self.t0 = self.t_start = time.monotonic() if t0 is None else t0
        self.phase.restart()
        cfg = self.cfg
        self.inference.restart(ActionScheduler(self.t0, cfg.period, self.ensemble, self.ensemble_k))

    # -- one tick -------------------------------------------------------------------------------------------
    def _new_drops(self) -> int:
        total = 0
        for name, cam in self.cameras.items():
            d = cam.dropped
            total += d - self._dropped_seen[name]
            self._dropped_seen[name] = d
        return total

    def _safe_action(self, rec: StepRecord, reason: str) -> None:
        self.inference.invalidate()
        rec.reason = reason
        if self.cfg.safety.on_fault == "stop" and not reason.startswith("recovering"):
            self.robot.stop()
            self._robot_stopped = True
            rec.status = "stop"
            self.request_stop(f"safety stop: {reason}")
        else:
            self.robot.hold()
            rec.status = "hold"

    def tick(self, k: int, t_tick: float) -> StepRecord:
        """Run tick ``k`` whose nominal start is ``t_tick`` (monotonic seconds)."""
        frames = {c: cam.latest() for c, cam in self.cameras.items()}
        ref_name = self.policy.cameras[0]
        if self.cfg.sync_to_camera and self.phase.await_due_frame(self.cameras[ref_name], frames[ref_name]):
            frames = {c: cam.latest() for c, cam in self.cameras.items()}
        t_wake = time.monotonic()
        rec = StepRecord(step=k, t=t_wake - self.t_start, status="idle", jitter_ms=(t_wake - t_tick) * 1e3)
        rec.dropped_frames = self._new_drops()
        reasons = self.safety.check_inputs(self.cameras, frames, self.robot.connected, t_wake)
        self.phase.observe(None if reasons else frames[ref_name], t_wake)
        if not reasons:
            rec.frame_age_ms = (t_wake - min(f.t_capture for f in frames.values())) * 1e3
            if not self.cfg.async_inference:
                # ticks to the next planned inference; the n_obs_steps - 1 ticks before it are observed
                # (encoded into the history) so the policy sees consecutive frames, as in training
                to_next = -k % self.infer_every
                infer = to_next == 0 or self.inference.scheduler.pending(t_wake) == 0
                if infer or to_next < self.policy.n_obs_steps:
                    rs = self.robot.get_state()
                    self.inference.check_episode(rs.episode)
                    if infer:
                        reasons = self.inference.infer_and_schedule(frames, rs.state, t_tick, t_wake, rec)
                    else:
                        t_obs_start = time.perf_counter()
                        self.inference.observe(frames, rs.state)
                        rec.encode_ms = (time.perf_counter() - t_obs_start) * 1e3
        if self.worker is not None:
            reasons = reasons + self.worker.take(rec)
        reason = self.safety.update(reasons, time.monotonic())
        if reason:
            self._safe_action(rec, reason)
        else:
            with self.inference.lock:
                due = self.inference.scheduler.pop(time.monotonic())
            if due is None:
                self.robot.hold()
            else:
                action, t_capture = due
                self.robot.send_action(action)
                now = time.monotonic()
                rec.status, rec.latency_ms = "act", (now - t_capture) * 1e3
                if rec.inferred and not self.cfg.async_inference:
                    rec.reaction_ms = rec.latency_ms  # the chunk just computed from this tick's frames
        t_end = time.monotonic()
        rec.step_ms = (t_end - t_wake) * 1e3
        rec.deadline_miss = t_end > t_tick + self.cfg.period
        return rec

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Tick until duration / max_steps / robot finished / stop request; returns the telemetry summary."""
        period = self.cfg.period
        self.reset_clock()
        restore = self._install_sigint()
        if self.worker is not None:
            self.worker.start(self.t_start)
        k = 0
        try:
            while not self._stop.is_set():
                if self.cfg.max_steps is not None and len(self.telemetry.records) >= self.cfg.max_steps:
                    self.request_stop("max_steps")
                    break
                if self.cfg.duration_s is not None and time.monotonic() - self.t_start >= self.cfg.duration_s:
                    self.request_stop("duration")
                    break
                if self.robot.finished():
                    self.request_stop("robot finished")
                    break
                t_tick = self.t0 + k * period
                delay = t_tick - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                self.telemetry.add(self.tick(k, t_tick))
                shift = self.phase.correction() if self.cfg.sync_to_camera else 0.0
                if shift:
                    with self.inference.lock:
                        self.t0 += shift
                        self.inference.scheduler.t0 = self.t0
                # skip ticks whose start has already passed (no catch-up bursts)
                k = max(k + 1, math.floor((time.monotonic() - self.t0) / period) + 1)
        except KeyboardInterrupt:
            self.request_stop("interrupted")
        finally:
            self._stop.set()
            if self.worker is not None:
                self.worker.join(timeout=30.0)
            restore()
            if not self._robot_stopped:
                self.robot.hold()
        log.info("realtime loop stopped: %s", self.stop_reason)
        if self.worker is not None and self.worker.error is not None:
            raise RuntimeError(self.stop_reason) from self.worker.error
        return self.telemetry.summary({"stop_reason": self.stop_reason})

    def _install_sigint(self):
        """Ctrl-C -> clean stop after the current tick (only possible from the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            self.request_stop("interrupted (SIGINT)")

        signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, previous)
