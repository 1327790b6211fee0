"""Cost of the trust checks: encoder input checks (on vs off), per-chunk crc32c checksums (with vs without).

Usage: ``python benchmarks/bench_trust.py [--repeats 7] [--episodes 20] [--workdir /tmp/bench_trust]``

1. Encode latency of the S2 encoder with ``check_inputs`` on and off, for uint8 camera frames and for float
   frames (the checked case: one min/max pass), 2 cameras. The two settings alternate call by call, so load
   changes on the shared machine hit both alike.
2. Store write and read throughput (MiB of raw frame data per second) of a checksummed store (crc32c per
   chunk, read through the checked store) and of one without checksums, on the same frames, alternating
   (which one goes first alternates too).
   Frames are synthetic but compress like rendered scenes (smooth background, moving objects, noise).

Every row is a median over ``--repeats`` repeats, with the range; ratios are taken within one run. Store rows
are given in wall time and in CPU time of the process (all its threads): on a shared, loaded machine the
CPU time is the steadier measure of the work the checksums add.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_data.py: busy-waiting OpenMP on shared CPUs

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from s2_policy.data.store import ReplayStore
from s2_policy.encoders import EncoderConfig, build_encoder

CAMS = ["front", "wrist"]


def _stats(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def bench_encoder(repeats: int, calls: int, frame: tuple[int, int]) -> None:
    """Median encode latency (ms) per call, checks on vs off, uint8 and float inputs."""
    base = {"backbone": "s2p-tiny", "checkpoint": "builtin:s2p-tiny-mae.pth", "scales": [1, 2],
            "precision": "fp32"}
    encoders = {on: build_encoder(EncoderConfig(**base, check_inputs=on)) for on in (True, False)}
    g = torch.Generator().manual_seed(0)
    u8 = [torch.randint(0, 256, (1, *frame, 3), dtype=torch.uint8, generator=g) for _ in CAMS]
    f32 = [x.permute(0, 3, 1, 2).float() / 255 for x in u8]
    print(f"\n### Encoder input checks: s2p-tiny S2 [1, 2] (5 tiles per camera), {len(CAMS)} cameras of "
          f"{frame[0]}x{frame[1]}, 1 thread, ms per call (median of {calls} calls; median and range over "
          f"{repeats} repeats)\n")
    print("| input | checks on | checks off | on / off |")
    print("|---|---|---|---|")
    for name, imgs in (("uint8 HWC", u8), ("float CHW [0, 1]", f32)):
        for enc in encoders.values():
            enc.encode_cameras(imgs)  # warm-up
        per = {True: [], False: []}
        ratios = []
        for rep in range(repeats):
            times = {True: [], False: []}
            for _ in range(calls):
                for on in ((True, False) if rep % 2 == 0 else (False, True)):  # alternate who goes first
                    enc = encoders[on]
                    t = time.perf_counter()
                    enc.encode_cameras(imgs)
                    times[on].append((time.perf_counter() - t) * 1e3)
            med = {on: statistics.median(v) for on, v in times.items()}
            for on in per:
                per[on].append(med[on])
            ratios.append(med[True] / med[False])
        print(f"| {name} | {_stats(per[True])} | {_stats(per[False])} | {_stats(ratios)} |")
    x = f32[0]
    t = time.perf_counter()
    for _ in range(50):
        torch.aminmax(x)
    print(f"\nThe check alone (torch.aminmax over one float {frame[0]}x{frame[1]} frame): "
          f"{(time.perf_counter() - t) / 50 * 1e3:.3f} ms")


def _episodes(n: int, size: int, T: int) -> list[dict[str, np.ndarray]]:
    """Rendered-looking frames: a smooth gradient, two moving squares, sensor noise; plus state/action."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    eps = []
    for e in range(n):
        ep = {}
        for c, cam in enumerate(CAMS):
            frames = np.empty((T, size, size, 3), np.uint8)
            bg = np.stack([(xx * 0.5 + 40 + 30 * c), (yy * 0.4 + 60), (xx + yy) * 0.2 + 80], -1)
            for t in range(T):
                img = bg.copy()
                for k, col in enumerate(((200, 40, 40), (40, 180, 60))):
                    cx = int(size * (0.2 + 0.6 * ((t + 7 * k + e) % T) / T))
                    img[max(0, cx - 8):cx + 8, size // 3 + 20 * k:size // 3 + 20 * k + 16] = col
                img += rng.normal(0, 2.0, img.shape)
                frames[t] = np.clip(img, 0, 255).astype(np.uint8)
            ep[cam] = frames
        ep["state"] = rng.normal(size=(T, 9)).astype(np.float32)
        ep["action"] = rng.normal(size=(T, 7)).astype(np.float32)
        eps.append(ep)
    return eps


def bench_store(workdir: Path, repeats: int, episodes: int, size: int, T: int) -> None:
    """Write and read MiB/s, with crc32c per chunk vs without, alternating."""
    eps = _episodes(episodes, size, T)
    raw = sum(v.nbytes for ep in eps for v in ep.values()) / 2**20
    keys = ("write", "read", "frame", "write_cpu", "read_cpu", "frame_cpu")
    rows = {on: {k: [] for k in keys} for on in (True, False)}
    rng = np.random.default_rng(1)
    for rep in range(repeats):
        for on in ((True, False) if rep % 2 == 0 else (False, True)):  # alternate who goes first
            path = workdir / f"store_{'crc' if on else 'plain'}.zarr"
            shutil.rmtree(path, ignore_errors=True)
            t, c0 = time.perf_counter(), time.process_time()
            s = ReplayStore.create(path, attrs={"cameras": CAMS}, checksum=on)
            for ep in eps:
                s.add_episode(ep)
            rows[on]["write"].append(raw / (time.perf_counter() - t))
            rows[on]["write_cpu"].append(raw / (time.process_time() - c0))
            r = ReplayStore.open(path)
            assert r.checked == on
            t, c0 = time.perf_counter(), time.process_time()
            for i in range(r.n_episodes):
                r.get_episode(i)
            rows[on]["read"].append(raw / (time.perf_counter() - t))
            rows[on]["read_cpu"].append(raw / (time.process_time() - c0))
            idx = rng.integers(0, r.n_frames, 200)
            t, c0 = time.perf_counter(), time.process_time()
            for i in idx:
                for c in CAMS:
                    r[c][int(i)]
            n = len(idx) * len(CAMS)
            rows[on]["frame"].append((time.perf_counter() - t) / n * 1e6)
            rows[on]["frame_cpu"].append((time.process_time() - c0) / n * 1e6)
    print(f"\n### Store checksums: {episodes} episodes x {T} frames, {len(CAMS)} cameras {size}x{size} + "
          f"state/action ({raw:.0f} MiB raw), zstd images; median and range over {repeats} repeats\n")
    print("| | crc32c per chunk (checked reads) | no checksums | with / without |")
    print("|---|---|---|---|")
    labels = (("write", "write MiB/s"), ("read", "read MiB/s (whole episodes)"),
              ("frame", "one random frame (us)"), ("write_cpu", "write MiB per CPU-s"),
              ("read_cpu", "read MiB per CPU-s"), ("frame_cpu", "one random frame (CPU us)"))
    for key, label in labels:
        ratio = [a / b for a, b in zip(rows[True][key], rows[False][key], strict=True)]
        print(f"| {label} | {_stats(rows[True][key])} | {_stats(rows[False][key])} | {_stats(ratio)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--calls", type=int, default=10, help="encoder calls per repeat and setting")
    p.add_argument("--frame", type=int, nargs=2, default=(480, 640), help="camera frame size H W")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--frames-per-episode", type=int, default=50)
    p.add_argument("--size", type=int, default=128, help="stored image size")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_trust"))
    p.add_argument("--skip", choices=["encoder", "store"], default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.skip != "encoder":
        bench_encoder(a.repeats, a.calls, tuple(a.frame))
    if a.skip != "store":
        bench_store(a.workdir, a.repeats, a.episodes, a.size, a.frames_per_episode)


if __name__ == "__main__":
    main()
