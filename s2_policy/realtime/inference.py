"""The inference side of the control loop: observation history, encode + predict, chunk checks, scheduling.

:class:`Inference` keeps the features of the last ``n_obs_steps`` observations (each frame is encoded once,
not ``n_obs_steps`` times), runs the policy on them, checks the action chunk (safety) and schedules it on the
loop's tick grid. Scheduled actions and the history are invalidated together by an epoch counter (a fault, an
episode reset, a new clock): a chunk computed across an invalidation is dropped, and the history restarts
from the next frame, padded like training's. :class:`InferenceWorker` runs it continuously on the newest
frames on a second thread (``loop.async_inference``) and hands its faults and timings to the tick thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from s2_policy.realtime.actions import ActionScheduler
from s2_policy.realtime.cameras import CameraSource, Frame
from s2_policy.realtime.robot import Robot
from s2_policy.realtime.safety import SafetyMonitor
from s2_policy.realtime.telemetry import StepRecord


class FeaturePolicy(Protocol):
    """What the loop needs from a policy (``s2_policy.policies.Policy`` provides it)."""

    cameras: list[str]

    @property
    def n_obs_steps(self) -> int: ...

    @property
    def n_action_steps(self) -> int: ...

    def predict_from_features(self, feats: torch.Tensor, state: Any) -> torch.Tensor: ...


class FrameEncoder(Protocol):
    """What the loop needs from the tile batcher: one frame per camera -> features ``(K, F)``."""

    def encode(self, images: Sequence[np.ndarray]) -> torch.Tensor: ...


class Inference:
    """Frames + state -> scheduled action chunk, for ``policy`` on its cameras (in ``policy.cameras`` order).

    ``lock`` guards :attr:`scheduler` and the epoch: the tick thread pops actions while a worker thread may
    add chunks. Call :meth:`restart` with the loop's scheduler before the first inference.
    """

    def __init__(self, policy: FeaturePolicy, encoder: FrameEncoder, safety: SafetyMonitor) -> None:
        self.policy, self.encoder, self.safety = policy, encoder, safety
        self.lock = threading.Lock()
        self.scheduler: ActionScheduler | None = None
        self._history: deque[tuple[torch.Tensor, np.ndarray]] = deque(maxlen=policy.n_obs_steps)
        self._epoch = self._history_epoch = 0
        self._episode: int | None = None

    def restart(self, scheduler: ActionScheduler) -> None:
        """Schedule into ``scheduler`` (a new tick grid) from now on, with an empty history."""
        self.scheduler = scheduler
        self.invalidate()

    def invalidate(self) -> None:
        """Forget scheduled actions and chunks in flight; the history is dropped before the next inference."""
        with self.lock:
            self._epoch += 1
            self.scheduler.clear()

    def check_episode(self, episode: int) -> None:
        """Invalidate when the robot reports a new episode: old observations and chunks do not apply."""
        if episode != self._episode:
            self._episode = episode
            self.invalidate()

    def observe(self, frames: Mapping[str, Frame], state: np.ndarray) -> None:
        """Encode the frames and append them with the state to the observation history."""
        if self._history_epoch != self._epoch:
            self._history.clear()
            self._history_epoch = self._epoch
        feats = self.encoder.encode([frames[c].image for c in self.policy.cameras])
        if not self._history:
            self._history.extend([(feats, state)] * self.policy.n_obs_steps)  # pad like training (edge frame)
        else:
            self._history.append((feats, state))

    def infer(self, frames: Mapping[str, Frame], state: np.ndarray, rec: StepRecord) -> np.ndarray:
        """Observe, then predict a chunk ``(n_action_steps, action_dim)``; timings go to ``rec``."""
        t0, c0 = time.perf_counter(), time.thread_time()
        self.observe(frames, state)
        t1 = time.perf_counter()
        f = torch.stack([h[0] for h in self._history])[None]
        s = np.stack([h[1] for h in self._history])[None]
        actions = self.policy.predict_from_features(f, s)
        actions = actions.detach().float().cpu().numpy()[0]
        rec.encode_ms, rec.policy_ms = (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3
        rec.compute_cpu_ms = (time.thread_time() - c0) * 1e3
        return actions

    def infer_and_schedule(self, frames: Mapping[str, Frame], state: np.ndarray, t_obs: float, t_wake: float,
                           rec: StepRecord) -> list[str]:
        """Encode + predict + check; schedule the chunk unless a fault/reset happened meanwhile.

        ``t_obs`` is the tick the chunk's first action belongs to, ``t_wake`` when the step started (its
        compute time is checked against ``safety.max_step_s``). Returns the fault reasons (empty: healthy).
        """
        epoch = self._epoch
        actions = self.infer(frames, state, rec)
        rec.inferred = True
        t_done = time.monotonic()
        reasons = self.safety.check_step(actions, t_done - t_wake)
        if not reasons:
            t_capture = min(f.t_capture for f in frames.values())
            with self.lock:
                if epoch == self._epoch:
                    rec.late_actions = self.scheduler.add_chunk(actions, t_obs, t_done, t_capture)
        return reasons


class InferenceWorker:
    """``async_inference``: runs :class:`Inference` continuously on the newest frames on its own thread.

    Each tick the loop calls :meth:`take` for the faults found since the last tick and the timings of the
    newest inference. The worker ends when ``stop`` is set; an exception in it is kept in :attr:`error` and
    ends the run through ``request_stop`` (the loop then re-raises it).
    """

    def __init__(self, inference: Inference, cameras: Mapping[str, CameraSource], robot: Robot, period: float,
                 stop: threading.Event, request_stop: Callable[[str], None]) -> None:
        self.inference, self.cameras, self.robot, self.period = inference, cameras, robot, period
        self._stop, self._request_stop = stop, request_stop
        self._lock = threading.Lock()
        self._reasons: list[str] = []
        self._done: StepRecord | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._t_start = 0.0

    def start(self, t_start: float) -> None:
        """Start inferring; record times are relative to ``t_start`` (the loop's start, monotonic s)."""
        self._t_start = t_start
        self._thread = threading.Thread(target=self._run, name="realtime-inference", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 30.0) -> None:
        """Wait for the thread to end (after ``stop`` was set)."""
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def take(self, rec: StepRecord) -> list[str]:
        """Fault reasons since the last call; the timings of the newest finished inference go to ``rec``."""
        with self._lock:
            reasons, done = self._reasons, self._done
            self._reasons, self._done = [], None
        if done is not None:
            rec.inferred, rec.late_actions = True, done.late_actions
            rec.encode_ms, rec.policy_ms = done.encode_ms, done.policy_ms
            rec.compute_cpu_ms = done.compute_cpu_ms
        return reasons

    def _run(self) -> None:
        safety = self.inference.safety
        try:
            while not self._stop.is_set():
                t_wake = time.monotonic()
                frames = {c: cam.latest() for c, cam in self.cameras.items()}
                if safety.check_inputs(self.cameras, frames, self.robot.connected, t_wake):
                    self._stop.wait(self.period / 4)  # the tick thread reports the fault
                    continue
                rs = self.robot.get_state()
                self.inference.check_episode(rs.episode)
                rec = StepRecord(step=-1, t=t_wake - self._t_start, status="")
                reasons = self.inference.infer_and_schedule(frames, rs.state, t_wake, t_wake, rec)
                with self._lock:
                    self._reasons.extend(reasons)
                    self._done = rec
        except BaseException as e:  # surfaced by the loop's run(); the robot is left holding
            self.error = e
            self._request_stop(f"inference failed: {type(e).__name__}: {e}")
