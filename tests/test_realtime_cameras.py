"""Camera sources: newest-frame-only (no backlog under a slow consumer), drop counting, disconnects."""

import time

import cv2
import numpy as np
import pytest

from s2_policy.realtime.cameras import OpenCVCamera, SimCamera, SyntheticCamera, VideoFileCamera, make_camera


def _wait(cond, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return False


def test_slow_consumer_never_builds_a_queue():
    cam = SyntheticCamera("front", 32, 32, fps=30).start()
    try:
        assert _wait(lambda: cam.latest() is not None)
        ages, seqs = [], []
        for _ in range(8):  # ~4x slower than the camera
            time.sleep(0.12)
            assert cam.backlog <= 1
            f = cam.latest()
            ages.append(time.monotonic() - f.t_capture)
            seqs.append(f.seq)
            assert cam.backlog == 0
    finally:
        cam.stop()
    # the consumer always got the newest frame: at most ~one frame period old (slack for a loaded machine)
    assert np.median(ages) < 2 / 30 and max(ages) < 0.1
    assert all(b - a >= 2 for a, b in zip(seqs, seqs[1:], strict=False))  # frames in between were skipped
    s = cam.stats()
    assert s["captured"] == s["consumed"] + s["dropped"] + cam.backlog
    assert s["dropped"] >= 2 * s["consumed"]


def test_latest_repeats_without_recounting_and_freeze_makes_frames_stale():
    cam = SyntheticCamera("front", 8, 8, fps=100).start()
    try:
        assert _wait(lambda: cam.captured > 2)
        cam.freeze()
        time.sleep(0.05)
        f1 = cam.latest()
        consumed = cam.consumed
        time.sleep(0.05)
        f2 = cam.latest()
        assert f2.seq == f1.seq and cam.consumed == consumed and cam.connected
        cam.unfreeze()
        assert _wait(lambda: cam.latest().seq > f1.seq)
    finally:
        cam.stop()


def test_disconnect_and_reconnect_are_reported():
    cam = SyntheticCamera("wrist", 8, 8, fps=100, reconnect_s=0.02).start()
    try:
        assert _wait(lambda: cam.connected)
        cam.disconnect()
        assert _wait(lambda: not cam.connected)
        assert cam.disconnects == 1 and cam.error
        n = cam.captured
        time.sleep(0.05)
        assert cam.captured == n
        cam.reconnect()
        assert _wait(lambda: cam.connected and cam.captured > n)
        assert cam.error is None
    finally:
        cam.stop()
    assert not cam.connected


def test_video_file_plays_at_its_rate_and_ends(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 50, (16, 12))
    for i in range(10):
        writer.write(np.full((12, 16, 3), (0, 0, 25 * i), np.uint8))  # BGR: red ramps up
    writer.release()
    cam = VideoFileCamera("front", path, loop=False).start()
    try:
        t0 = time.monotonic()
        assert _wait(lambda: cam.captured == 10 and not cam.connected, timeout=3)
        elapsed = time.monotonic() - t0
        f = cam.latest()
    finally:
        cam.stop()
    assert elapsed > 0.1  # 10 frames at 50 fps take ~0.2 s, not as fast as decoding
    assert f.image.shape == (12, 16, 3) and f.image[..., 0].mean() > 150  # converted to RGB
    assert cam.disconnects == 1


def test_opencv_camera_missing_device_reports_instead_of_raising():
    cam = OpenCVCamera("front", device="/dev/video-does-not-exist", backend="any", reconnect_s=0.05).start()
    try:
        assert _wait(lambda: cam.error is not None)
        assert not cam.connected and cam.latest() is None
    finally:
        cam.stop()


def test_sim_camera_push_and_factory_errors(tmp_path):
    cam = SimCamera("front")
    assert cam.latest() is None and not cam.connected
    cam.push(np.zeros((4, 4, 3), np.uint8), time.monotonic())
    cam.push(np.ones((4, 4, 3), np.uint8), time.monotonic())
    assert cam.connected and cam.latest().seq == 1 and cam.dropped == 1
    assert isinstance(make_camera({"name": "a", "type": "synthetic", "fps": 10}), SyntheticCamera)
    with pytest.raises(ValueError, match="unknown type"):
        make_camera({"name": "a", "type": "firewire"})
    with pytest.raises(ValueError, match="bad options"):
        make_camera({"name": "a", "type": "synthetic", "colour": "red"})
    with pytest.raises(ValueError, match="does not exist"):
        make_camera({"name": "a", "type": "video", "path": str(tmp_path / "none.mp4")})
