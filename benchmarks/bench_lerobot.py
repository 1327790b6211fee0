"""LeRobot conversion speed and video quality: store -> LeRobotDataset v3.0 -> store, per codec and crf.

Usage: ``python benchmarks/bench_lerobot.py [--episodes 10] [--repeats 3] [--workdir /tmp/bench_lerobot]``

Frames are real: scripted-expert episodes of ``pick_cube`` (2 cameras at 128 px) collected into the work
directory on first use. Each repeat exports the store with every setting and imports the result back,
settings interleaved, so the ratios are measured side by side; the table gives medians (and ranges) of
frames per second, where a frame holds both cameras plus state and action, and the PSNR of the round trip.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import av
import numpy as np
import yaml

from s2_policy.collect import collect_demos
from s2_policy.data.lerobot import ExportOptions, export_lerobot, import_lerobot
from s2_policy.data.store import ReplayStore

ROOT = Path(__file__).resolve().parents[1]
CAMS = ["front", "wrist"]
SETTINGS = [("libsvtav1", 23), ("libsvtav1", 30), ("libx264", 23)]


def source_store(workdir: Path, episodes: int) -> Path:
    """Expert demonstrations of pick_cube at 128 px (collected once, resumable)."""
    cfg = yaml.safe_load((ROOT / "configs/task/pick_cube.yaml").read_text())
    return collect_demos(cfg, workdir / "pick_cube.zarr", n_episodes=episodes, n_workers=2, seed=0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def decode_fps(root: Path, n: int) -> float:
    """Frames per second of decoding every camera's mp4s to RGB with PyAV alone (no store writes)."""
    t = time.perf_counter()
    for path in sorted((root / "videos").rglob("*.mp4")):
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in c.decode(stream):
                frame.to_ndarray(format="rgb24")
    return n / (time.perf_counter() - t)


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):.0f} ({min(xs):.0f}-{max(xs):.0f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_lerobot"))
    a = p.parse_args()
    os.environ.setdefault("SVT_LOG", "1")
    a.workdir.mkdir(parents=True, exist_ok=True)
    src = ReplayStore.open(source_store(a.workdir, a.episodes))
    frames = {c: src[c][: src.n_frames] for c in CAMS}
    n = src.n_frames
    h, w = frames["front"].shape[1:3]
    export_fps: dict[tuple[str, int], list[float]] = {s: [] for s in SETTINGS}
    import_fps: dict[tuple[str, int], list[float]] = {s: [] for s in SETTINGS}
    decode: dict[tuple[str, int], list[float]] = {s: [] for s in SETTINGS}
    quality: dict[tuple[str, int], tuple[float, float, float]] = {}
    for _ in range(a.repeats):
        for codec, crf in SETTINGS:
            out, back = a.workdir / f"lr_{codec}_{crf}", a.workdir / f"back_{codec}_{crf}.zarr"
            t = time.perf_counter()
            export_lerobot(
                src.path, out, options=ExportOptions(vcodec=codec, crf=crf), overwrite=True, progress=False
            )
            export_fps[(codec, crf)].append(n / (time.perf_counter() - t))
            decode[(codec, crf)].append(decode_fps(out, n))
            t = time.perf_counter()
            store = import_lerobot(out, back, overwrite=True, progress=False)
            import_fps[(codec, crf)].append(n / (time.perf_counter() - t))
            quality[(codec, crf)] = (
                psnr(store["front"][:n], frames["front"]),
                psnr(store["wrist"][:n], frames["wrist"]),
                dir_mib(out / "videos"),
            )
            shutil.rmtree(back)
    print(
        f"\n{src.n_episodes} episodes, {n} frames, cameras {CAMS} at {h}x{w}; zarr store "
        f"{dir_mib(src.path):.2f} MiB; {a.repeats} repeats, medians (ranges)\n"
    )
    print(
        "| codec | crf | export frames/s | import frames/s | decode only frames/s | PSNR front / wrist (dB) "
        "| videos MiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in SETTINGS:
        pf, pw, mib = quality[s]
        print(
            f"| {s[0]} | {s[1]} | {fmt(export_fps[s])} | {fmt(import_fps[s])} | {fmt(decode[s])} | "
            f"{pf:.1f} / {pw:.1f} | "
            f"{mib:.2f} |"
        )


if __name__ == "__main__":
    main()
