"""Data-layer benchmarks: image codecs, window sampler throughput, feature cache vs encoding every batch.

Usage: ``python benchmarks/bench_data.py [--episodes 20] [--workdir /tmp/bench_data] [--encode-batches 3]``

Frames are real: scripted-expert episodes of ``pick_cube`` (2 cameras at 128 px) collected into the work
directory on first use. Every section prints a markdown table; timings are medians of repeats taken
side by side in one run.
"""

from __future__ import annotations

import os

# Busy-waiting OpenMP threads on a shared, oversubscribed CPU make 2-thread torch ops (even a uint8
# torch.stack in the DataLoader's collate) intermittently 10-100x slower; passive waiting avoids that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from s2_policy.data.feature_cache import ensure_feature_cache
from s2_policy.data.sequence import SequenceDataset
from s2_policy.data.store import IMAGE_CODECS, ReplayStore

ROOT = Path(__file__).resolve().parents[1]
CAMS = ["front", "wrist"]
WINDOW = dict(horizon=16, n_obs_steps=2, n_action_steps=8, val_ratio=0.0)


def source_store(workdir: Path, episodes: int) -> Path:
    """Expert demonstrations of pick_cube at 128 px (collected once, resumable)."""
    from s2_policy.collect import collect_demos

    cfg = yaml.safe_load((ROOT / "configs/task/pick_cube.yaml").read_text())
    cfg.pop("defaults", None)
    return collect_demos(cfg, workdir / "pick_cube.zarr", n_episodes=episodes, n_workers=2)


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def bench_codecs(src: Path, workdir: Path, repeats: int) -> None:
    """Size, write speed and read speed of each image codec on the same frames."""
    source = ReplayStore.open(src)
    episodes = [source.get_episode(i) for i in range(source.n_episodes)]
    raw_mib = sum(ep[c].nbytes for ep in episodes for c in CAMS) / 2**20
    stores, writes = {}, {c: [] for c in IMAGE_CODECS}
    for _ in range(max(1, repeats // 2)):
        for codec in IMAGE_CODECS:
            path = workdir / f"codec_{codec}.zarr"
            t = time.perf_counter()
            s = ReplayStore.create(path, attrs=source.attrs, overwrite=True, image_codec=codec)
            for ep in episodes:
                s.add_episode(ep)
            writes[codec].append(time.perf_counter() - t)
            stores[codec] = path
    n = source.n_frames
    rng = np.random.default_rng(0)
    starts = rng.integers(0, n - 2, size=200)
    reads = {c: [] for c in IMAGE_CODECS}
    seq = {c: [] for c in IMAGE_CODECS}
    for _ in range(repeats):
        for codec, path in stores.items():
            s = ReplayStore.open(path)
            arrs = [s[c] for c in CAMS]
            t = time.perf_counter()
            for i in starts:  # what the sampler does: To=2 consecutive frames of each camera
                for a in arrs:
                    a[i : i + 2]
            reads[codec].append((time.perf_counter() - t) / len(starts))
            t = time.perf_counter()
            for a in arrs:
                a[:n]
            seq[codec].append(time.perf_counter() - t)
    print(
        f"\n### Image codecs ({n} frames x 2 cameras, 128 px uint8, 1 frame/chunk; raw {raw_mib:.1f} MiB)\n"
    )
    print("| codec | on disk MiB | ratio | write s | window read (2 frames x 2 cams) ms | sequential MiB/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for codec, path in stores.items():
        mib = dir_mib(path / "data" / "front") + dir_mib(path / "data" / "wrist")
        print(
            f"| Blosc {IMAGE_CODECS[codec]['cname']} clevel {IMAGE_CODECS[codec]['clevel']} | {mib:.2f} | "
            f"{raw_mib / mib:.1f}x | {statistics.median(writes[codec]):.2f} | "
            f"{1e3 * statistics.median(reads[codec]):.2f} | {raw_mib / statistics.median(seq[codec]):.0f} |"
        )


def bench_sampler(store: Path, repeats: int, max_batches: int) -> None:
    """Windows/s from the on-disk store: plain indexing and shuffled DataLoaders (batch 64), round-robin."""
    ds = SequenceDataset(store, cameras=CAMS, **WINDOW)
    n = 64 * max_batches
    loaders = {}
    for workers in (0, 2):
        sampler = RandomSampler(ds, replacement=True, num_samples=n)
        loaders[workers] = DataLoader(
            ds, batch_size=64, sampler=sampler, num_workers=workers, persistent_workers=workers > 0
        )
        next(iter(loaders[workers]))  # start the workers before timing
    order = np.random.default_rng(0).integers(0, len(ds), size=n)
    rates: dict[str, list[float]] = {"`ds[i]` in a loop, random order": []}
    rates.update({f"DataLoader num_workers={w} (started)": [] for w in loaders})
    for _ in range(repeats):
        t = time.perf_counter()
        for i in order:
            ds[int(i)]
        rates["`ds[i]` in a loop, random order"].append(n / (time.perf_counter() - t))
        for w, loader in loaders.items():
            t = time.perf_counter()
            count = sum(batch["action"].shape[0] for batch in loader)
            rates[f"DataLoader num_workers={w} (started)"].append(count / (time.perf_counter() - t))
    print(f"\n### Window sampler ({len(ds)} windows, horizon 16, To 2, 2 cameras 128 px, batch 64, random)\n")
    print(f"| reader | windows/s (median of {repeats}) | min | max |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in rates.items():
        print(f"| {name} | {statistics.median(r):.0f} | {min(r):.0f} | {max(r):.0f} |")


class Head(nn.Module):
    """Stand-in MLP head: the training step's non-encoder cost (same in both paths)."""

    def __init__(self, feat_dim: int, state_dim: int, action_dim: int) -> None:
        super().__init__()
        to, h = WINDOW["n_obs_steps"], WINDOW["horizon"]
        self.out = (h, action_dim)
        self.net = nn.Sequential(
            nn.Linear(to * (len(CAMS) * feat_dim + state_dim), 512), nn.GELU(), nn.Linear(512, h * action_dim)
        )

    def forward(self, feats: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([feats.flatten(1), state.flatten(1)], 1)).view(-1, *self.out)


def bench_cache(store: Path, workdir: Path, encode_batches: int, cached_batches: int, batch: int) -> None:
    """Training-step throughput from cached features vs encoding the window's images every batch."""
    from s2_policy.encoders import EncoderConfig, build_encoder

    enc = build_encoder(EncoderConfig(backbone="s2p-tiny", scales=[1, 2], checkpoint=None))
    cache_dir = workdir / "features"
    shutil.rmtree(cache_dir, ignore_errors=True)
    t = time.perf_counter()
    cache = ensure_feature_cache(store, enc, CAMS, batch_size=64, cache_dir=cache_dir, progress=False)
    build_s = time.perf_counter() - t
    img_ds = SequenceDataset(store, cameras=CAMS, **WINDOW)
    feat_ds = SequenceDataset(store, cameras=CAMS, **WINDOW, features=cache)
    head = Head(enc.out_dim, img_ds.state_dim, img_ds.action_dim)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-4)

    def step(feats: torch.Tensor, b: dict) -> None:
        loss = nn.functional.mse_loss(head(feats, b["obs"]["state"]), b["action"])
        opt.zero_grad()
        loss.backward()
        opt.step()

    def encode(b: dict) -> torch.Tensor:  # (B, To, K, F): all cameras and obs steps in one call
        imgs = [b["obs"][c].flatten(0, 1) for c in CAMS]
        B, To = b["obs"][CAMS[0]].shape[:2]
        return enc.encode_cameras(imgs).view(B, To, len(CAMS), -1)

    def run(ds: SequenceDataset, n: int, feats_of) -> list[float]:
        times = []
        sampler = RandomSampler(ds, replacement=True, num_samples=batch * n)
        it = iter(DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=0))
        for _ in range(n):
            t = time.perf_counter()
            b = next(it)
            step(feats_of(b), b)
            times.append(time.perf_counter() - t)
        return times

    cached = run(feat_ds, cached_batches, lambda b: torch.stack([b["obs"][c] for c in CAMS], 2))
    encoded = run(img_ds, encode_batches, encode)
    cached += run(feat_ds, cached_batches, lambda b: torch.stack([b["obs"][c] for c in CAMS], 2))
    c_s, e_s = statistics.median(cached), statistics.median(encoded)
    tiles = enc.plan.n_tiles if hasattr(enc, "plan") else "?"
    print(
        f"\n### Feature cache vs encoding every batch (s2p-tiny, S2 [64, 128] = {tiles} tiles/image, "
        f"{enc.compute_dtype}, out_dim {enc.out_dim}; batch {batch}, To 2, 2 cameras)\n"
    )
    print("| path | s / batch (median) | samples/s | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| encode images every batch ({len(encoded)} batches) | {e_s:.3f} | {batch / e_s:.1f} | 1.0x |")
    print(f"| cached features ({len(cached)} batches) | {c_s:.4f} | {batch / c_s:.0f} | {e_s / c_s:.0f}x |")
    n = ReplayStore.open(store).n_frames
    print(
        f"\nBuilding the cache once: {n} frames x 2 cameras in {build_s:.1f} s ({2 * n / build_s:.0f} img/s)."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_data"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sampler-batches", type=int, default=20)
    p.add_argument("--encode-batches", type=int, default=3)
    p.add_argument("--cached-batches", type=int, default=50)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--sections", default="codecs,sampler,cache", help="comma-separated subset to run")
    a = p.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    src = source_store(a.workdir, a.episodes)
    print(f"{torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; {src}")
    sections = set(a.sections.split(","))
    if "codecs" in sections:
        bench_codecs(src, a.workdir, a.repeats)
    if "sampler" in sections:
        bench_sampler(src, a.repeats, a.sampler_batches)
    if "cache" in sections:
        bench_cache(src, a.workdir, a.encode_batches, a.cached_batches, a.batch)


if __name__ == "__main__":
    main()
