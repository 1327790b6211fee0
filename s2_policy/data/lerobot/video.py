"""Videos: decoding a camera's frames at given timestamps (PyAV), and the encoder settings
(:class:`ExportOptions`) and mp4 writer that export uses."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from s2_policy.data.lerobot.meta import VIDEO_PATH, _next_file


# ---------------------------------------------------------------------------------------------- decoding
def _check_decodable(codec: str, where: str) -> None:
    try:
        av.codec.Codec(codec, "r")
    except Exception as e:
        raise ValueError(
            f"{where}: video codec {codec!r} cannot be decoded by this PyAV build (av {av.__version__}); "
            "re-encode the videos to AV1 or h264 (e.g. ffmpeg -c:v libsvtav1 -pix_fmt yuv420p) or install a "
            "PyAV whose FFmpeg has that decoder"
        ) from e


class _VideoCursor:
    """Decodes one camera's mp4 files forward, handing out the frames nearest to requested timestamps.

    Episodes are read in order, and a file holds consecutive episodes, so each file is decoded once from
    start to end; a jump backwards or into a new file reopens and seeks to the nearest earlier keyframe.
    """

    def __init__(self, key: str, shape: tuple[int, int, int], tolerance_s: float) -> None:
        self.key, self.shape, self.tolerance_s = key, shape, tolerance_s
        self.path: Path | None = None
        self.container: av.container.InputContainer | None = None
        self.frames: Iterator[tuple[float, av.VideoFrame]] | None = None
        self.pending: tuple[float, av.VideoFrame] | None = None

    def _open(self, path: Path, start_s: float) -> None:
        self.close()
        if not path.exists():
            raise ValueError(f"missing video file {path} for {self.key!r}; the dataset is incomplete")
        self.container = av.open(str(path))
        if not self.container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = self.container.streams.video[0]
        _check_decodable(stream.codec_context.codec.name, str(path))
        stream.thread_type = "AUTO"
        if start_s > 0:
            self.container.seek(max(0, int(start_s / stream.time_base) - 1), stream=stream, backward=True)
        self.path = path

        def frames() -> Iterator[tuple[float, av.VideoFrame]]:
            for fr in self.container.decode(stream):
                if fr.pts is not None:
                    yield float(fr.pts * stream.time_base), fr

        self.frames = frames()
        self.pending = None

    def read(self, path: Path, timestamps: np.ndarray) -> np.ndarray:
        """Frames (T, H, W, 3) uint8 at ``timestamps`` (seconds, increasing) of the video ``path``."""
        first, last, tol = float(timestamps[0]), float(timestamps[-1]), self.tolerance_s
        if path != self.path or (self.pending is not None and self.pending[0] > first + tol):
            self._open(path, first)
        got_ts: list[float] = []
        got: list[np.ndarray] = []
        while True:
            item = self.pending if self.pending is not None else next(self.frames, None)
            self.pending = None
            if item is None:
                break
            ts, frame = item
            if ts > last + tol:
                self.pending = item
                break
            if ts >= first - tol:  # frames before it (from the keyframe a seek lands on) are not converted
                got_ts.append(ts)
                got.append(frame.to_ndarray(format="rgb24"))
        if not got:
            raise ValueError(
                f"{path}: no frame of {self.key!r} between {first:.4f} s and {last:.4f} s; the episode's "
                "from_timestamp/to_timestamp do not match the video"
            )
        loaded = np.asarray(got_ts)
        nearest = np.abs(timestamps[:, None] - loaded[None, :]).argmin(1)
        err = np.abs(loaded[nearest] - timestamps)
        if err.max() > tol:
            bad = int(err.argmax())
            raise ValueError(
                f"{path}: frame {bad} of {self.key!r} wants t={timestamps[bad]:.4f} s but the nearest "
                f"decoded frame is at {loaded[nearest[bad]]:.4f} s (more than tolerance_s={tol} away); the "
                "timestamps and the video disagree (raise --tolerance-s only if you accept nearest frames)"
            )
        out = np.stack([got[i] for i in nearest])
        if out.shape[1:] != self.shape:
            raise ValueError(
                f"{path}: frames of {self.key!r} are {out.shape[1:]} but meta/info.json says {self.shape}"
            )
        return out

    def close(self) -> None:
        """Close the open file, if any."""
        if self.container is not None:
            self.container.close()
        self.container = self.frames = self.pending = self.path = None


# ---------------------------------------------------------------------------------------------- encoding
@dataclass(frozen=True)
class ExportOptions:
    """How :func:`export_lerobot` writes videos and files.

    Args:
        vcodec: encoder name for PyAV. ``libsvtav1`` (AV1, LeRobot's default) or ``libx264``/``h264`` (H.264);
            both are read by LeRobot's torchcodec and PyAV decoders.
        crf: constant rate factor (lower = better quality, bigger files). 23 keeps 96 px sim renders above
            35 dB PSNR (LeRobot's own default, 30, gives 35.5/34.9 dB; BENCHMARKS.md, "LeRobot conversion").
        gop: keyframe interval in frames (LeRobot writes 2 so that any frame decodes fast).
        pix_fmt: pixel format of the video stream (yuv420p: what LeRobot writes and every player reads).
        chunks_size: files per chunk folder (LeRobot: 1000).
        data_files_size_in_mb: a data parquet file is closed after this many MB (LeRobot: 100).
        video_files_size_in_mb: a camera's mp4 is closed after this many MB (LeRobot: 200).
    """

    vcodec: str = "libsvtav1"
    crf: int = 23
    gop: int = 2
    pix_fmt: str = "yuv420p"
    chunks_size: int = 1000
    data_files_size_in_mb: float = 100
    video_files_size_in_mb: float = 200

    def __post_init__(self) -> None:
        try:
            av.codec.Codec(self.vcodec, "w")
        except Exception as e:
            raise ValueError(
                f"vcodec {self.vcodec!r} has no encoder in this PyAV build (av {av.__version__}); use "
                "'libsvtav1' (AV1, LeRobot's default) or 'libx264'"
            ) from e
        if not 0 <= self.crf <= 63:
            raise ValueError(f"crf must be in 0..63, got {self.crf}")
        if self.gop < 1 or self.chunks_size < 1:
            raise ValueError(f"gop and chunks_size must be >= 1, got {self.gop} and {self.chunks_size}")
        if self.data_files_size_in_mb <= 0 or self.video_files_size_in_mb <= 0:
            raise ValueError("data_files_size_in_mb and video_files_size_in_mb must be > 0")


class _VideoWriter:
    """One camera's mp4 files: episodes appended one after another, a new file past the size limit."""

    def __init__(self, root: Path, key: str, fps: int, hw: tuple[int, int], opts: ExportOptions) -> None:
        self.root, self.key, self.fps, self.hw, self.opts = root, key, fps, hw, opts
        self.chunk, self.file = 0, -1
        self.container: av.container.OutputContainer | None = None
        self.frames_in_file = 0
        self.bytes_in_file = 0

    def _new_file(self) -> None:
        self.close()
        self.chunk, self.file = (
            (0, 0) if self.file < 0 else _next_file(self.chunk, self.file, self.opts.chunks_size)
        )
        path = self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk, file_index=self.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w")
        options = {"g": str(self.opts.gop), "crf": str(self.opts.crf)}
        self.stream = self.container.add_stream(self.opts.vcodec, rate=self.fps, options=options)
        self.stream.pix_fmt = self.opts.pix_fmt
        self.stream.height, self.stream.width = self.hw
        self.frame_time_base = self.stream.time_base = Fraction(1, self.fps)
        self.frames_in_file = self.bytes_in_file = 0

    def _mux(self, packets: list[av.Packet]) -> None:
        for p in packets:
            self.bytes_in_file += p.size
            self.container.mux(p)

    def add_episode(self, frames: np.ndarray) -> dict[str, Any]:
        """Encode an episode's frames; returns its ``videos/<key>/...`` episode metadata."""
        if self.container is None or self.bytes_in_file >= self.opts.video_files_size_in_mb * 2**20:
            self._new_file()
        start = self.frames_in_file
        for img in frames:
            fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            fr.pts = self.frames_in_file
            fr.time_base = self.frame_time_base  # not stream.time_base: the muxer changes that
            self.frames_in_file += 1
            self._mux(self.stream.encode(fr))
        p = f"videos/{self.key}/"
        return {
            p + "chunk_index": self.chunk,
            p + "file_index": self.file,
            p + "from_timestamp": start / self.fps,
            p + "to_timestamp": self.frames_in_file / self.fps,
        }

    def close(self) -> None:
        """Flush the encoder and close the current file."""
        if self.container is not None:
            self._mux(self.stream.encode())
            self.discard()

    def discard(self) -> None:
        """Close the current file without flushing the encoder."""
        if self.container is not None:
            self.container.close()
            self.container = None


def _video_info(path: Path) -> dict[str, Any]:
    """The ``info`` block LeRobot records for a video feature, read back from the written file."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return {
            "video.height": s.height,
            "video.width": s.width,
            "video.codec": s.codec_context.codec.canonical_name if s.codec_context.codec else s.codec.name,
            "video.pix_fmt": s.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(s.base_rate or s.average_rate),
            "video.channels": 3,
            "has_audio": False,
        }
