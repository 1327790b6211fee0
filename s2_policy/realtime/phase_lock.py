"""Phase lock: keep the control loop's ticks a fixed lag after the reference camera's frames arrive.

With camera and loop at similar rates, an unsynchronised tick finds a frame that is on average half a frame
period old; locking the phase removes that from capture -> action latency. The lock also works with a camera
that sends a whole number n >= 2 of frames per tick (30 fps into a 10 Hz loop), modulo the camera's frame
period. :class:`PhaseLock` only measures and says how far to move the tick grid; the loop moves it.
"""

from __future__ import annotations

import time

from s2_policy.realtime.cameras import CameraSource, Frame


class PhaseLock:
    """Tracks the reference camera's frame period and phase; proposes tick-grid corrections.

    Args:
        period: the loop period (s).
        lag_s: where ticks should fall after a frame's capture (``sync_lag_ms``).
        max_frame_wait_s: how long a tick may wait for a late due frame (``max_frame_wait_ms``; 0: never).
    """

    def __init__(self, period: float, lag_s: float, max_frame_wait_s: float) -> None:
        self.period, self.lag_s, self.max_frame_wait_s = period, lag_s, max_frame_wait_s
        self.cam_period: float | None = None        # the reference camera's frame period, smoothed
        self.wrap = period                           # the phase is locked modulo this
        self.age: float | None = None                # this tick's reference-frame age, when lockable
        self._seq = -1                               # the reference frame seen at the previous tick
        self._prev: tuple[int, float] | None = None  # (seq, capture time) for the period estimate
        self.corrections = 0                         # the first ones acquire the phase at once

    def restart(self) -> None:
        """Acquire the phase afresh (a new tick grid)."""
        self.corrections = 0

    def await_due_frame(self, camera: CameraSource, ref: Frame | None) -> bool:
        """When the due frame is late (the newest is over half a wrap old), wait up to ``max_frame_wait_s``
        for it instead of acting on one a whole frame period older. True when a newer frame came."""
        if not (self.max_frame_wait_s > 0 and ref is not None and self.cam_period):
            return False
        if self.cam_period > 1.05 * self.period:
            return False  # a camera slower than the loop: most ticks have no new frame to wait for
        if time.monotonic() - ref.t_capture < self.wrap / 2:
            return False
        return camera.wait_newer(ref.seq, self.max_frame_wait_s)

    def observe(self, ref: Frame | None, t_wake: float) -> None:
        """Record this tick's reference frame (``None``: no usable frame, nothing to lock to this tick)."""
        self.age = None
        if ref is None:
            return
        frames_per_tick = self._track_period(ref)
        # lock to a camera about as fast as the loop (<= 2 new frames per tick), or to one delivering a whole
        # number n >= 2 of frames per tick modulo its frame period; at other ratios the arrival phase drifts
        # every tick and there is nothing to lock to
        if self._seq < 0 or ref.seq - self._seq <= 2 or frames_per_tick >= 2:
            self.age = t_wake - ref.t_capture
        self._seq = ref.seq

    def _track_period(self, ref: Frame) -> int:
        """Update the smoothed frame period; return n when the camera sends a whole number n >= 2 of frames
        per loop period (within 5 %), else 0, and set the wrap accordingly."""
        prev, self._prev = self._prev, (ref.seq, ref.t_capture)
        if prev is not None and ref.seq > prev[0]:
            est = (ref.t_capture - prev[1]) / (ref.seq - prev[0])
            self.cam_period = est if self.cam_period is None else 0.8 * self.cam_period + 0.2 * est
        n = 0
        if self.cam_period:
            ratio = self.period / self.cam_period
            if round(ratio) >= 2 and abs(ratio - round(ratio)) < 0.05 * round(ratio):
                n = round(ratio)
        self.wrap = self.period / n if n else self.period
        return n

    def correction(self) -> float:
        """Seconds to move the tick grid by (0.0: leave it), from the last observed frame age.

        The first two corrections acquire the phase (the whole error, up to half a wrap: at start-up the phase
        is arbitrary, and a gradual approach would leave the first ticks acting on old frames); later ones
        track it with an asymmetric gain (later quickly after a missed frame, earlier slowly: robust to
        jitter), at most a quarter wrap per tick.
        """
        wrap = self.wrap
        if self.age is None or not 0 <= self.age < wrap:
            return 0.0  # no fresh frame, or a camera slower than the loop: nothing to lock to
        err = self.age - self.lag_s
        if err > wrap / 2:
            err -= wrap  # the next frame is due just after this tick: move ticks later
        if self.corrections < 2:
            shift = min(max(-err, -wrap / 2), wrap / 2)
        else:
            shift = min(max(-(0.5 if err < 0 else 0.1) * err, -wrap / 4), wrap / 4)
        self.corrections += 1
        return shift
