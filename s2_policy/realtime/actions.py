"""Timestamped action-chunk scheduling: late actions are dropped, overlapping chunks replaced or blended.

A policy returns a chunk of ``n_action_steps`` actions for the observation taken at tick time ``t_obs``:
action ``i`` is meant for the control period that starts at ``t_obs + i * period``. Periods are slots on the
loop's tick grid (``t0 + k * period``). When the chunk arrives, slots that have already started are late and
their actions are dropped (the robot cannot go back in time). Each tick the loop pops the action of the
current slot: from the newest chunk (``ensemble="none"``, receding horizon), or the exponentially weighted
mean of every chunk's prediction for that slot (``ensemble="temporal"``, ACT's temporal ensembling: weight
``exp(-k * i)`` with ``i = 0`` the oldest prediction; the weights of
:func:`s2_policy.policies.temporal_ensemble.ensemble_weights`, which the rollouts use too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from s2_policy.policies.temporal_ensemble import ensemble_weights

ENSEMBLE_MODES = ("none", "temporal")


@dataclass
class _Slot:
    actions: list[np.ndarray] = field(default_factory=list)  # oldest chunk first
    t_capture: float = math.inf                              # capture time behind the newest prediction


class ActionScheduler:
    """Schedules action chunks on the tick grid ``t0 + k * period``."""

    def __init__(self, t0: float, period: float, ensemble: str = "none", ensemble_k: float = 0.01) -> None:
        if period <= 0:
            raise ValueError(f"period must be > 0 seconds, got {period}")
        if ensemble not in ENSEMBLE_MODES:
            raise ValueError(f"ensemble must be one of {ENSEMBLE_MODES}, got {ensemble!r}")
        if ensemble_k < 0:
            raise ValueError(f"ensemble_k must be >= 0, got {ensemble_k}")
        self.t0, self.period, self.ensemble, self.ensemble_k = t0, period, ensemble, ensemble_k
        self._slots: dict[int, _Slot] = {}
        self.late_dropped = 0

    def slot_of(self, t: float) -> int:
        """Index of the slot that contains time ``t`` (a tick time maps to its own slot)."""
        return math.floor((t - self.t0) / self.period + 1e-6)

    def add_chunk(self, actions: np.ndarray, t_obs: float, now: float, t_capture: float | None = None) -> int:
        """Schedule ``actions (N, A)`` observed at tick time ``t_obs``; returns how many were late (dropped).

        ``t_capture`` (oldest camera capture behind the chunk) is carried along for latency telemetry.
        """
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[0] == 0:
            raise ValueError(f"an action chunk must be (n_action_steps, action_dim), got {actions.shape}")
        first, current = self.slot_of(t_obs), self.slot_of(now)
        late = 0
        for i, a in enumerate(actions):
            k = first + i
            if k < current:
                late += 1
                continue
            slot = self._slots.setdefault(k, _Slot())
            if self.ensemble == "none":
                slot.actions.clear()
            slot.actions.append(a)
            slot.t_capture = t_capture if t_capture is not None else t_obs
        self.late_dropped += late
        return late

    def pop(self, now: float) -> tuple[np.ndarray, float] | None:
        """Action for the slot containing ``now`` and its capture time, or ``None`` if nothing is scheduled.

        Slots before ``now`` are discarded.
        """
        current = self.slot_of(now)
        for k in [k for k in self._slots if k < current]:
            del self._slots[k]
        slot = self._slots.pop(current, None)
        if slot is None:
            return None
        if len(slot.actions) == 1:
            return slot.actions[0], slot.t_capture
        w = ensemble_weights(len(slot.actions), self.ensemble_k)
        return np.tensordot(w, np.stack(slot.actions), axes=1).astype(np.float32), slot.t_capture

    def pending(self, now: float) -> int:
        """Slots from the current one on that hold an action."""
        current = self.slot_of(now)
        return sum(k >= current for k in self._slots)

    def clear(self) -> None:
        """Forget every scheduled action (after a fault: chunks from before it must not be executed)."""
        self._slots.clear()
