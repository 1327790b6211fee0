"""Image-window reader: ``SequenceDataset`` (no feature cache) vs diffusion_policy's ``SequenceSampler``.

Usage::

    python benchmarks/bench_window_reader.py --diffusion-policy /tmp/dp [--episodes 40] [--repeats 5]

``--diffusion-policy`` is the root of a diffusion_policy checkout (it holds ``diffusion_policy/common/
sampler.py``; e.g. ``git -C <bare repo> archive HEAD | tar -x -C /tmp/dp``). It is put on ``sys.path`` and
only ``diffusion_policy.common.sampler.SequenceSampler`` and ``diffusion_policy.common.replay_buffer.
ReplayBuffer`` are used; their sampler needs ``numba`` (``pip install numba``; not a project dependency).

The store: real frames (scripted-expert ``pick_cube`` episodes, 2 cameras at 128 px, from
``bench_data.source_store``) copied with plain zarr calls into a store in diffusion_policy's layout, written
the way their converters write one: zarr format 2, ``data/<camera>`` uint8 (T, 128, 128, 3) in chunks of
ONE frame (as ``robomimic_replay_image_dataset._convert_robomimic_to_replay`` and
``real_world/real_data_conversion`` chunk images), compressed with Blosc lz4 level 5 without shuffle (their
``ReplayBuffer.resolve_compressor('default')``; their converters use lossy Jpeg2k, which needs imagecodecs and
has no zarr-3 codec), ``data/state`` and ``data/action`` float32 in one uncompressed chunk each and
``meta/episode_ends`` int64 uncompressed (as their robomimic converter writes low-dim data).

Their paths measured (both read the same store, the same windows in the same random order):

- **theirs, in memory**: ``SequenceSampler`` over ``ReplayBuffer({'meta': {'episode_ends': ...}, 'data':
  {key: arr[:]}})``, which is exactly what ``ReplayBuffer.copy_from_path`` (numpy backend, every array
  decompressed into memory; their default in every image dataset) builds; ``copy_from_path`` itself cannot run
  on zarr 3 (it uses ``zarr.group(store)`` on a zarr-2 store object).
- **theirs, on disk**: ``SequenceSampler`` over a ``ReplayBuffer`` whose arrays are the on-disk zarr arrays
  (their zarr-backed ``create_from_path`` path: every window slices the zarr arrays). ``create_from_path``
  fails on zarr 3 (``zarr.open(path, mode)`` with a positional mode) and ``ReplayBuffer(zarr.Group)`` too (a
  zarr-3 ``Group`` has no ``.items()``), so the buffer is given ``{'meta': {'episode_ends': zarr array},
  'data': {key: zarr array}}``: the same per-window zarr reads.

Their sampler is configured as their image datasets configure it (``robomimic_replay_image_dataset``):
``sequence_length=horizon``, ``pad_before=n_obs_steps-1``, ``pad_after=n_action_steps-1``, every key read,
``key_first_k={camera: n_obs_steps, state: n_obs_steps}``. Their window has ``horizon`` frames; ours has
``n_obs_steps`` observation frames (their first ``n_obs_steps``) and ``horizon`` actions: checked equal on a
sample of windows before timing. The DataLoader rows wrap their sampler in a minimal torch Dataset, as their
datasets do (no float conversion, so both return uint8 images).

Timing: every reader runs once per repeat, round robin, so load changes hit all alike; the table gives the
median, min and max over repeats, and "vs theirs" compares like with like (in memory with in memory, on disk
with on disk, same DataLoader workers).
"""

from __future__ import annotations

import os

# Busy-waiting OpenMP threads on a shared CPU make torch.stack in the collate intermittently much slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import torch
import zarr
from bench_data import source_store
from machine import OthersLoad, cpu_model
from torch.utils.data import DataLoader, Dataset

from s2_policy.data.sequence import SequenceDataset
from s2_policy.data.store import ReplayStore

# Their sampler fills uint8 buffers with NaN on purpose (np.full(..., np.nan)); numpy warns on every window.
warnings.filterwarnings("ignore", message="invalid value encountered in cast", category=RuntimeWarning)

CAMS = ["front", "wrist"]
HORIZON, N_OBS, N_ACT = 16, 2, 8


def load_diffusion_policy(root: Path) -> tuple[Any, Any]:
    """(SequenceSampler, ReplayBuffer) from a diffusion_policy checkout, or exit with what is missing."""
    if not (root / "diffusion_policy" / "common" / "sampler.py").is_file():
        sys.exit(
            f"--diffusion-policy {root}: no diffusion_policy/common/sampler.py there; pass the root of a "
            "diffusion_policy checkout (git clone https://github.com/real-stanford/diffusion_policy)"
        )
    try:
        import numba  # noqa: F401  (their sampler's dependency: checked here for a clear message)
    except ImportError:
        sys.exit("diffusion_policy's SequenceSampler needs numba: pip install numba (benchmark only)")
    sys.path.insert(0, str(root))
    from diffusion_policy.common.replay_buffer import ReplayBuffer  # on sys.path only now
    from diffusion_policy.common.sampler import SequenceSampler

    return SequenceSampler, ReplayBuffer


def write_dp_store(src: Path, out: Path) -> Path:
    """Copy the source store's arrays into a diffusion_policy-layout store written with plain zarr."""
    source = ReplayStore.open(src)
    n = source.n_frames
    shutil.rmtree(out, ignore_errors=True)
    root = zarr.open_group(str(out), mode="w", zarr_format=2)
    data = root.create_group("data")
    image = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    for key in CAMS + ["state", "action"]:
        a = np.asarray(source[key][:n])
        if key in CAMS:
            arr = data.create_array(key, shape=a.shape, chunks=(1, *a.shape[1:]), dtype=a.dtype,
                                    compressors=image)  # fmt: skip
        else:
            a = a.astype(np.float32)
            arr = data.create_array(key, shape=a.shape, chunks=a.shape, dtype=a.dtype, compressors=None)
        arr[:] = a
    ends = source.episode_ends
    meta = root.create_group("meta")
    meta.create_array("episode_ends", shape=ends.shape, chunks=ends.shape, dtype="int64",
                      compressors=None)[:] = ends  # fmt: skip
    return out


class TheirDataset(Dataset):
    """Minimal torch Dataset over their sampler, shaped like ours (uint8 images, first n_obs_steps obs)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.sampler.sample_sequence(i)
        obs = {k: torch.from_numpy(s[k][:N_OBS]) for k in CAMS + ["state"]}
        return {"obs": obs, "action": torch.from_numpy(s["action"])}


def check_same_windows(theirs: Any, ours: SequenceDataset, sample: np.ndarray) -> None:
    """Their window i and our window i hold the same obs frames, state and actions (else exit)."""
    if len(theirs) != len(ours):
        sys.exit(f"window counts differ: theirs {len(theirs)}, ours {len(ours)}")
    batch = ours.get_batch(sample)
    for j, i in enumerate(sample):
        s = theirs.sample_sequence(int(i))
        mine = ours[int(i)]
        for k in CAMS + ["state"]:
            for got in (mine["obs"][k].numpy(), batch["obs"][k][j].numpy()):
                if not np.array_equal(got, s[k][:N_OBS]):
                    sys.exit(f"window {i}: {k} differs between ours and theirs")
        if not np.array_equal(mine["action"].numpy(), s["action"]) or not np.array_equal(
            batch["action"][j].numpy(), s["action"]
        ):
            sys.exit(f"window {i}: actions differ between ours and theirs")


def per_window(read: Callable[[int], Any], order: np.ndarray) -> Callable[[], int]:
    def run() -> int:
        for i in order:
            read(int(i))
        return len(order)

    return run


def batched(ds: SequenceDataset, order: np.ndarray, batch: int) -> Callable[[], int]:
    def run() -> int:
        for a in range(0, len(order), batch):
            ds.get_batch(order[a : a + batch])
        return len(order)

    return run


def loader_run(loader: DataLoader) -> Callable[[], int]:
    def run() -> int:
        return sum(b["action"].shape[0] for b in loader)

    return run


def machine_line(when: str) -> str:
    la = os.getloadavg()
    return (f"{when}: load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}; torch threads "
            f"{torch.get_num_threads()}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--diffusion-policy", type=Path, required=True, help="root of a diffusion_policy checkout")
    p.add_argument("--episodes", type=int, default=40, help="pick_cube expert episodes (collected once)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_window"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", type=int, default=8, help="batches of --batch windows per reader per repeat")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--check", type=int, default=128, help="windows compared with theirs before timing")
    p.add_argument("--workers", default="0,2", help="DataLoader num_workers values")
    a = p.parse_args()
    SequenceSampler, ReplayBuffer = load_diffusion_policy(a.diffusion_policy.resolve())
    a.workdir.mkdir(parents=True, exist_ok=True)

    print(f"CPU: {cpu_model()}")
    print(f"others' load before: {OthersLoad.sample(2.0):.2f} cores")
    print(machine_line("start"))
    src = source_store(a.workdir, a.episodes)
    path = write_dp_store(src, a.workdir / "dp_layout.zarr")
    keys = CAMS + ["state", "action"]
    first_k = {k: N_OBS for k in CAMS + ["state"]}
    sampler_kw = dict(sequence_length=HORIZON, pad_before=N_OBS - 1, pad_after=N_ACT - 1, keys=keys,
                      key_first_k=first_k)  # fmt: skip

    group = zarr.open_group(str(path), mode="r")
    on_disk = {"meta": {"episode_ends": group["meta/episode_ends"]},
               "data": {k: group[f"data/{k}"] for k in keys}}  # fmt: skip
    in_mem = {"meta": {"episode_ends": on_disk["meta"]["episode_ends"][:]},
              "data": {k: v[:] for k, v in on_disk["data"].items()}}  # fmt: skip
    theirs = {"memory": SequenceSampler(ReplayBuffer(in_mem), **sampler_kw),
              "disk": SequenceSampler(ReplayBuffer(on_disk), **sampler_kw)}  # fmt: skip
    ours_kw = dict(cameras=CAMS, horizon=HORIZON, n_obs_steps=N_OBS, n_action_steps=N_ACT, val_ratio=0.0)
    ours = {"disk": SequenceDataset(path, **ours_kw),
            "memory": SequenceDataset(path, **ours_kw, images_in_memory=True)}  # fmt: skip
    via_zarr = SequenceDataset(path, **ours_kw)
    for cam in CAMS:
        via_zarr.reader(cam).direct = False  # the same batched read, every chunk through zarr

    rng = np.random.default_rng(0)
    n_win = len(ours["disk"])
    check = rng.choice(n_win, size=min(a.check, n_win), replace=False)
    for where in ("memory", "disk"):
        check_same_windows(theirs[where], ours[where], check)
    check_same_windows(theirs["disk"], via_zarr, check[:16])
    print(f"checked {len(check)} windows: ours == theirs (obs frames, state, actions) in memory and on disk")

    n = a.batch * a.batches
    order = rng.permutation(np.resize(rng.permutation(n_win), n))  # the same random order for every reader
    rows: list[tuple[str, str, Callable[[], int]]] = []  # (name, like-for-like group, run)
    for where in ("memory", "disk"):
        g = f"{where}/window"
        rows += [
            ("theirs: sample_sequence per window", g, per_window(theirs[where].sample_sequence, order)),
            ("ours: `ds[i]` per window", g, per_window(ours[where].__getitem__, order)),
            (f"ours: batched (`get_batch`, {a.batch})", g, batched(ours[where], order, a.batch)),
        ]
    rows.append((f"ours: batched, chunks read through zarr ({a.batch})", "disk/window",
                 batched(via_zarr, order, a.batch)))  # fmt: skip
    loaders = []
    for w in (int(x) for x in a.workers.split(",")):
        for where in ("memory", "disk"):
            for who, ds in (("theirs", TheirDataset(theirs[where])), ("ours", ours[where])):
                loader = DataLoader(ds, batch_size=a.batch, sampler=order.tolist(), num_workers=w,
                                    persistent_workers=w > 0)  # fmt: skip
                next(iter(loader))  # start the workers before timing
                loaders.append(loader)
                via = "per-sample `__getitem__`" if who == "theirs" else "`__getitems__` (batched)"
                name = f"{who}: DataLoader workers={w}, {via}"
                rows.append((name, f"{where}/workers={w}", loader_run(loader)))

    rates: dict[int, list[float]] = {j: [] for j in range(len(rows))}
    for _ in range(a.repeats):
        for j, (_, _, run) in enumerate(rows):
            t = time.perf_counter()
            count = run()
            rates[j].append(count / (time.perf_counter() - t))
    print(machine_line("end"))

    med = {j: statistics.median(r) for j, r in rates.items()}
    ref = {g: med[j] for j, (name, g, _) in enumerate(rows) if name.startswith("theirs")}
    print(f"\n### Window reader: {n_win} windows ({a.episodes} episodes), horizon {HORIZON}, To {N_OBS}, "
          f"Ta {N_ACT}, 2 cameras 128 px, {n} windows per reader per repeat, batch {a.batch}\n")  # fmt: skip
    print(f"| storage | reader | windows/s (median of {a.repeats}) | min | max | vs theirs |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for j, (name, g, _) in enumerate(rows):
        r = rates[j]
        where, how = g.split("/")
        storage = "in memory" if where == "memory" else "on disk"
        if how.startswith("workers"):
            storage += f", {how}"
        print(f"| {storage} | {name} | {med[j]:.0f} | {min(r):.0f} | {max(r):.0f} | {med[j] / ref[g]:.2f}x |")
    del loaders


if __name__ == "__main__":
    main()
