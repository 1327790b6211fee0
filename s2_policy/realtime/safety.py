"""Fault detection for the real-time loop: stale or disconnected cameras, robot link, overruns, bad actions.

The monitor only decides; the loop acts. Any fault makes the loop take the configured safe action
(``hold``: keep position and resume automatically once every check has passed for ``recover_after_s``;
``stop``: halt the robot and end the run). Transitions are logged with their reasons, once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from s2_policy.realtime.cameras import CameraSource, Frame

log = logging.getLogger(__name__)

ON_FAULT = ("hold", "stop")


@dataclass(frozen=True)
class SafetyConfig:
    """Thresholds: ``stale_s`` newest-frame age; ``max_step_s`` compute time of one inference step (its
    chunk is discarded beyond it); ``max_abs_action`` (optional) bound on |action| in env units."""

    on_fault: str = "hold"
    stale_s: float = 0.2
    max_step_s: float = 0.1
    recover_after_s: float = 0.0
    max_abs_action: float | None = None

    def __post_init__(self) -> None:
        if self.on_fault not in ON_FAULT:
            raise ValueError(f"safety.on_fault must be one of {ON_FAULT}, got {self.on_fault!r}")
        for name in ("stale_s", "max_step_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"safety.{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.recover_after_s < 0:
            raise ValueError(f"safety.recover_after_s must be >= 0, got {self.recover_after_s}")


class SafetyMonitor:
    """Tracks whether the loop is healthy; :meth:`update` returns the active fault reasons ("" when ok)."""

    def __init__(self, cfg: SafetyConfig) -> None:
        self.cfg = cfg
        self.faulted = False
        self.reason = ""
        self._healthy_since: float | None = None
        self.faults = 0

    def check_inputs(self, cameras: Mapping[str, CameraSource], frames: Mapping[str, Frame | None],
                     robot_connected: bool, now: float) -> list[str]:
        """Reasons the inputs cannot be trusted now (empty list when they can)."""
        reasons = []
        for name, cam in cameras.items():
            frame = frames.get(name)
            if not cam.connected:
                reasons.append(f"camera {name} disconnected")
            elif frame is None:
                reasons.append(f"camera {name} has no frame yet")
            elif now - frame.t_capture > self.cfg.stale_s:
                reasons.append(f"camera {name} stale ({(now - frame.t_capture) * 1e3:.0f} ms)")
        if not robot_connected:
            reasons.append("robot disconnected")
        return reasons

    def check_step(self, actions: np.ndarray, step_s: float) -> list[str]:
        """Reasons to discard a freshly computed chunk: non-finite/out-of-range actions or an overrun."""
        reasons = []
        if not np.all(np.isfinite(actions)):
            reasons.append("non-finite action")
        elif self.cfg.max_abs_action is not None and np.abs(actions).max() > self.cfg.max_abs_action:
            reasons.append(f"action beyond ±{self.cfg.max_abs_action}")
        if step_s > self.cfg.max_step_s:
            reasons.append(f"step overrun ({step_s * 1e3:.0f} ms > {self.cfg.max_step_s * 1e3:.0f} ms)")
        return reasons

    def update(self, reasons: list[str], now: float) -> str:
        """Fold this tick's reasons into the fault state; returns the fault reason, or "" when healthy.

        After a fault the loop stays faulted until checks have passed for ``recover_after_s``.
        """
        if reasons:
            reason = "; ".join(reasons)
            if not self.faulted or reason != self.reason:
                log.warning("safety: %s -> %s", reason, self.cfg.on_fault)
            if not self.faulted:
                self.faults += 1
            self.faulted, self.reason, self._healthy_since = True, reason, None
            return reason
        if not self.faulted:
            return ""
        if self._healthy_since is None:
            self._healthy_since = now
        if now - self._healthy_since + 1e-9 >= self.cfg.recover_after_s:
            log.info("safety: recovered from '%s'", self.reason)
            self.faulted, self.reason = False, ""
            return ""
        return f"recovering after {self.reason}"
