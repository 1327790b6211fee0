"""Camera sources for the real-time loop: one interface, newest frame only, monotonic capture timestamps.

Every source keeps a single slot holding its newest frame. A producer (a capture thread, or the simulator
thread for :class:`SimCamera`) overwrites the slot; the control loop reads it with
:meth:`CameraSource.latest`.
A slow consumer therefore never builds a backlog: frames it did not read are counted as dropped, and the
frame it gets is always the newest one. Timestamps are ``time.monotonic()`` seconds, the clock the control
loop uses, so frame age is ``time.monotonic() - frame.t_capture``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One captured image: uint8 ``(H, W, 3)`` RGB, capture time (monotonic seconds), capture index."""

    image: np.ndarray
    t_capture: float
    seq: int


class CameraSource(ABC):
    """Newest-frame-only camera. Producers call :meth:`_publish`; consumers call :meth:`latest`.

    Counters: ``captured`` (frames published), ``consumed`` (distinct frames handed to a consumer),
    ``dropped`` (frames overwritten before any consumer saw them), ``disconnects`` (times the source went
    from connected to disconnected).
    """

    def __init__(self, name: str) -> None:
        if not name:
            raise ValueError("a camera needs a non-empty name (the policy's camera key, e.g. 'front')")
        self.name = name
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._frame: Frame | None = None
        self._frame_read = True
        self._connected = False
        self.captured = 0
        self.consumed = 0
        self.dropped = 0
        self.disconnects = 0
        self.error: str | None = None

    # -- producer side ---------------------------------------------------------------------------------
    def _publish(self, image: np.ndarray, t_capture: float) -> None:
        """Replace the newest frame; the previous one counts as dropped if no consumer read it."""
        with self._lock:
            if not self._frame_read:
                self.dropped += 1
            self._frame = Frame(image, t_capture, self.captured)
            self._frame_read = False
            self.captured += 1
            self._new_frame.notify_all()

    def _set_connected(self, connected: bool, error: str | None = None, quiet: bool = False) -> None:
        with self._lock:
            if self._connected and not connected and not quiet:
                self.disconnects += 1
                log.warning("camera %r disconnected: %s", self.name, error or "no frames")
            elif connected and not self._connected and self.captured:
                log.info("camera %r reconnected", self.name)
            self._connected = connected
            self.error = None if connected else error

    # -- consumer side ---------------------------------------------------------------------------------
    def latest(self) -> Frame | None:
        """The newest frame (``None`` before the first one). Never blocks on capture."""
        with self._lock:
            if self._frame is not None and not self._frame_read:
                self._frame_read = True
                self.consumed += 1
            return self._frame

    def wait_newer(self, seq: int, timeout: float) -> bool:
        """Block until a frame newer than ``seq`` arrives or ``timeout`` seconds pass; True if one came."""
        with self._new_frame:
            return self._new_frame.wait_for(
                lambda: self._frame is not None and self._frame.seq > seq, timeout=max(timeout, 0.0)
            )

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def backlog(self) -> int:
        """Frames waiting for the consumer: 0 or 1 by construction (the slot holds one frame)."""
        with self._lock:
            return 0 if self._frame_read else 1

    def stats(self) -> dict[str, int | bool | str | None]:
        """Counters as a JSON-able dict (for telemetry)."""
        with self._lock:
            return {"captured": self.captured, "consumed": self.consumed, "dropped": self.dropped,
                    "disconnects": self.disconnects, "connected": self._connected, "error": self.error}

    # -- lifecycle ---------------------------------------------------------------------------------------
    @abstractmethod
    def start(self) -> CameraSource:
        """Begin producing frames; returns self."""

    @abstractmethod
    def stop(self) -> None:
        """Stop producing frames and release the device."""

    def __enter__(self) -> CameraSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ThreadedCamera(CameraSource):
    """A source captured on its own daemon thread, reconnecting after ``reconnect_s`` when reads fail.

    Subclasses implement :meth:`_open`, :meth:`_read` (block until the next frame, return ``None`` on
    failure or end of stream) and :meth:`_close`.
    """

    def __init__(self, name: str, reconnect_s: float = 0.5) -> None:
        super().__init__(name)
        if reconnect_s <= 0:
            raise ValueError(f"reconnect_s must be > 0 seconds, got {reconnect_s}")
        self.reconnect_s = reconnect_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def _open(self) -> None:
        """Open the device; raise ``OSError`` if it cannot be opened."""

    @abstractmethod
    def _read(self) -> tuple[np.ndarray, float] | None:
        """Next RGB uint8 image and its capture time, or ``None`` when the stream failed or ended."""

    @abstractmethod
    def _close(self) -> None:
        """Release the device (must be safe to call when it is not open)."""

    def start(self) -> ThreadedCamera:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._set_connected(False, "stopped", quiet=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._open()
            except Exception as e:  # OSError or a driver error: report it and retry, never kill the thread
                self._set_connected(False, f"{type(e).__name__}: {e}")
                self._stop.wait(self.reconnect_s)
                continue
            self._set_connected(True)
            try:
                while not self._stop.is_set():
                    got = self._read()
                    if got is None:
                        if not self._stop.is_set():
                            self._set_connected(False, "read failed or stream ended")
                        break
                    self._publish(*got)
            except Exception as e:  # a driver error must not kill the thread silently: report, reconnect
                self._set_connected(False, f"{type(e).__name__}: {e}")
            finally:
                self._close()
            self._stop.wait(self.reconnect_s)


def _to_rgb(bgr: np.ndarray) -> np.ndarray:
    if bgr.ndim == 2:
        return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class OpenCVCamera(ThreadedCamera):
    """A USB/RealSense colour stream through ``cv2.VideoCapture`` (V4L2 on Linux).

    ``device`` is an index (``0`` for ``/dev/video0``), a device path, or any URL OpenCV opens. The driver's
    own queue is limited to one buffer and the thread reads continuously, so frames never queue up in the
    driver either. The capture time is taken when ``read()`` returns.
    """

    def __init__(self, name: str, device: int | str = 0, width: int | None = None, height: int | None = None,
                 fps: float | None = None, backend: str = "v4l2", fourcc: str | None = "MJPG",
                 reconnect_s: float = 0.5) -> None:
        super().__init__(name, reconnect_s)
        backends = {"v4l2": cv2.CAP_V4L2, "any": cv2.CAP_ANY, "ffmpeg": cv2.CAP_FFMPEG}
        if backend not in backends:
            raise ValueError(f"unknown OpenCV backend {backend!r}; use one of {sorted(backends)}")
        if isinstance(device, str) and device.isdigit():
            device = int(device)
        self.device, self.width, self.height, self.fps = device, width, height, fps
        self.backend = backends[backend]
        self.fourcc = fourcc
        self._cap: cv2.VideoCapture | None = None

    def _open(self) -> None:
        cap = cv2.VideoCapture(self.device, self.backend)
        if not cap.isOpened():
            cap.release()
            raise OSError(f"cannot open camera device {self.device!r}")
        if self.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc))
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._cap = cap

    def _read(self) -> tuple[np.ndarray, float] | None:
        assert self._cap is not None
        ok, bgr = self._cap.read()
        t = time.monotonic()
        if not ok or bgr is None:
            return None
        return _to_rgb(bgr), t

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class VideoFileCamera(ThreadedCamera):
    """Plays a video file in real time at its own frame rate (or ``fps``), looping or ending at the end.

    When ``loop`` is false the source reports a disconnect at the end of the file (and stays disconnected);
    useful to replay recorded sessions through the loop.
    """

    def __init__(self, name: str, path: str | os.PathLike, fps: float | None = None, loop: bool = True,
                 reconnect_s: float = 0.5) -> None:
        super().__init__(name, reconnect_s)
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"video file {str(self.path)!r} does not exist")
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = fps
        self.loop = loop
        self._cap: cv2.VideoCapture | None = None
        self._period = 0.0
        self._next_t = 0.0
        self._ended = False

    def _open(self) -> None:
        if self._ended:
            raise OSError(f"video {self.path.name} ended (loop=false)")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise OSError(f"cannot decode video file {str(self.path)!r}")
        fps = self.fps or cap.get(cv2.CAP_PROP_FPS) or 30.0
        self._period = 1.0 / fps
        self._next_t = time.monotonic()
        self._cap = cap

    def _read(self) -> tuple[np.ndarray, float] | None:
        assert self._cap is not None
        ok, bgr = self._cap.read()
        if not ok:
            if not self.loop:
                self._ended = True
                return None
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
            if not ok:
                return None
        delay = self._next_t - time.monotonic()
        if delay > 0 and self._stop.wait(delay):
            return None
        self._next_t = max(self._next_t + self._period, time.monotonic() - self._period)
        return _to_rgb(bgr), time.monotonic()

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class SyntheticCamera(ThreadedCamera):
    """Generated frames at ``fps`` for tests and benchmarks, with switches to simulate faults.

    Frame ``seq`` is filled with a gradient shifted by ``seq`` so consecutive frames differ. ``freeze()``
    stops new frames while staying connected (a stale camera); ``disconnect()`` makes reads fail until
    ``reconnect()`` (an unplugged cable).
    """

    def __init__(self, name: str, height: int = 64, width: int = 64, fps: float = 30.0,
                 reconnect_s: float = 0.05, seed: int = 0) -> None:
        super().__init__(name, reconnect_s)
        if height <= 0 or width <= 0 or fps <= 0:
            raise ValueError(f"synthetic camera needs positive height/width/fps, got {height}x{width}@{fps}")
        self.shape = (height, width, 3)
        self.fps = fps
        rng = np.random.default_rng(seed)
        self._base = rng.integers(0, 256, size=self.shape, dtype=np.uint8)
        self._frozen = threading.Event()
        self._unplugged = threading.Event()
        self._next_t = 0.0
        self._n = 0

    def freeze(self) -> None:
        self._frozen.set()

    def unfreeze(self) -> None:
        self._frozen.clear()

    def disconnect(self) -> None:
        self._unplugged.set()

    def reconnect(self) -> None:
        self._unplugged.clear()

    def _open(self) -> None:
        if self._unplugged.is_set():
            raise OSError(f"synthetic camera {self.name!r} is unplugged")
        self._next_t = time.monotonic()

    def _read(self) -> tuple[np.ndarray, float] | None:
        while True:
            self._next_t += 1.0 / self.fps
            delay = self._next_t - time.monotonic()
            if delay < 0:  # we fell behind (overloaded machine): do not burst to catch up
                self._next_t = time.monotonic()
            elif self._stop.wait(delay):
                return None
            if self._unplugged.is_set():
                return None
            if not self._frozen.is_set():
                break
        self._n += 1
        return self._base + np.uint8(self._n % 256), time.monotonic()

    def _close(self) -> None:
        pass


class SimCamera(CameraSource):
    """A camera of a simulated robot: the simulator's thread renders and pushes frames with :meth:`push`."""

    def push(self, image: np.ndarray, t_capture: float) -> None:
        """Publish a rendered RGB image captured at monotonic time ``t_capture``."""
        if not self._connected:
            self._set_connected(True)
        self._publish(image, t_capture)

    def start(self) -> SimCamera:
        return self

    def stop(self) -> None:
        self._set_connected(False, "simulator stopped", quiet=True)

    def mark_disconnected(self, reason: str) -> None:
        """Called by the simulator when it can no longer render (e.g. its thread died)."""
        self._set_connected(False, reason)


def parse_camera_spec(spec: str) -> dict:
    """``"name:type[:arg]"`` -> mapping: ``front:opencv:0``, ``w:video:/data/w.mp4``, ``a:synthetic:30``."""
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"camera spec {spec!r} must look like name:type[:arg], e.g. front:opencv:0, "
                         "wrist:video:/path/clip.mp4 or front:synthetic:30")
    out: dict = {"name": parts[0], "type": parts[1]}
    if len(parts) == 3:
        key = {"opencv": "device", "video": "path", "synthetic": "fps"}.get(parts[1])
        if key is None:
            raise ValueError(f"camera spec {spec!r}: type {parts[1]!r} takes no ':arg'")
        out[key] = float(parts[2]) if key == "fps" else parts[2]
    return out


def make_camera(spec: dict | str) -> CameraSource:
    """Build a camera from ``"name:type[:arg]"`` or ``{name, type: opencv | video | synthetic, ...kwargs}``.

    ``sim`` cameras are not built here: they belong to the simulated robot (``SimRobot.cameras``).
    """
    spec = parse_camera_spec(spec) if isinstance(spec, str) else dict(spec)
    kind = spec.pop("type", None)
    name = spec.pop("name", None)
    if not name:
        raise ValueError(f"camera spec {spec} needs a 'name' (the policy's camera key, e.g. 'front')")
    kinds: dict[str, type[ThreadedCamera]] = {"opencv": OpenCVCamera, "video": VideoFileCamera,
                                              "synthetic": SyntheticCamera}
    if kind not in kinds:
        raise ValueError(f"camera {name!r}: unknown type {kind!r}; use one of {sorted(kinds)} "
                         "(or 'sim' together with robot=sim)")
    try:
        return kinds[kind](name, **spec)
    except TypeError as e:
        raise ValueError(f"camera {name!r} ({kind}): bad options {spec}: {e}") from e
