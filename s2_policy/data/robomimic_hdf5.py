"""Convert a robomimic HDF5 dataset into a replay store (h5py only; robomimic is not imported).

robomimic layout: ``data/demo_<i>/{actions, obs/<key>}``, ``data`` attribute ``env_args`` (JSON), and
``mask/<name>`` arrays of demo names (``train``/``valid`` are the standard split). Demos are written in
integer order (``demo_2`` before ``demo_10``); every ``obs`` key becomes ``data/<key>``, ``actions``
becomes ``data/action``, and the chosen low-dim keys are also concatenated into ``data/state``. Masks are
kept as episode-index lists in the ``masks`` attribute, and ``train``/``valid`` as the ``split`` attribute
that :class:`~s2_policy.data.sequence.SequenceDataset` uses.

The output is built in ``OUT.partial`` and renamed into place when complete; rerunning after an
interruption resumes from the last complete episode.

Usage: ``python -m s2_policy.data.robomimic_hdf5 IN.hdf5 OUT.zarr [--flip-images] [--state-keys a,b]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from s2_policy.cli import user_errors
from s2_policy.data.store import ReplayStore, is_image_array, resume_conversion

__all__ = ["convert_robomimic", "DEFAULT_STATE_KEYS"]

# robomimic's usual proprioception keys (robosuite tasks); used for ``state`` when all are present.
DEFAULT_STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
_DEMO = re.compile(r"^demo_(\d+)$")


def _sorted_demos(data: h5py.Group) -> list[str]:
    names = [n for n in data if _DEMO.match(n)]
    if not names:
        raise ValueError(f"no data/demo_<int> groups in {data.file.filename}: not a robomimic dataset")
    return sorted(names, key=lambda n: int(_DEMO.match(n).group(1)))


def _open_hdf5(path: Path) -> h5py.File:
    """Open ``path`` read-only; a missing, truncated or non-HDF5 file is a ValueError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"robomimic dataset {path} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(
            f"{path} cannot be opened as HDF5 ({e}): the file is truncated (an interrupted download?) or "
            "not an HDF5 file; download or copy it again"
        ) from e


def _read(group: h5py.Group, key: str, path: Path) -> np.ndarray:
    """``group[key][()]``, or ValueError naming the file and dataset when its bytes cannot be read."""
    try:
        return group[key][()]
    except (OSError, KeyError) as e:
        raise ValueError(
            f"{path}: dataset {group.name}/{key} cannot be read ({e}); the file is damaged or truncated: "
            "download or copy it again"
        ) from e


def _source_id(path: Path, demos: list[str], options: dict) -> str:
    st = path.stat()
    blob = json.dumps(
        {"file": path.name, "size": st.st_size, "demos": demos, "options": options}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def convert_robomimic(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    obs_keys: Sequence[str] | None = None,
    state_keys: Sequence[str] | None = None,
    flip_images: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> ReplayStore:
    """Convert robomimic ``in_path`` into a store at ``out_path`` and return it (opened read-only).

    ``obs_keys`` selects observation keys (default: all of the first demo's). ``state_keys`` are the
    low-dim keys concatenated into ``state`` (default: :data:`DEFAULT_STATE_KEYS` when present, else all
    low-dim keys). ``flip_images`` flips images vertically (robosuite renders upside down).
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if out_path.exists():
        if not overwrite:
            raise ValueError(f"{out_path} already exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    with _open_hdf5(in_path) as f:
        if "data" not in f:
            raise ValueError(f"{in_path} has no 'data' group: not a robomimic dataset")
        data = f["data"]
        demos = _sorted_demos(data)
        first_obs = data[demos[0]]["obs"]
        keys = list(obs_keys) if obs_keys is not None else sorted(first_obs)
        unknown = [k for k in keys if k not in first_obs]
        if unknown:
            raise ValueError(f"obs keys {unknown} not in {demos[0]}/obs (available: {sorted(first_obs)})")
        images = [k for k in keys if is_image_array(first_obs[k].shape) and first_obs[k].dtype == np.uint8]
        low_dim = [k for k in keys if k not in images]
        if state_keys is None:
            state_keys = [k for k in DEFAULT_STATE_KEYS if k in low_dim]
            state_keys = state_keys if len(state_keys) == len(DEFAULT_STATE_KEYS) else low_dim
        state_keys = list(state_keys)
        bad = [k for k in state_keys if k not in low_dim]
        if bad:
            raise ValueError(f"state keys {bad} are not low-dim obs keys (low-dim: {low_dim})")
        if "state" in keys or "action" in keys:
            raise ValueError("obs keys named 'state' or 'action' would collide with the store's own keys")
        env_args = json.loads(data.attrs["env_args"]) if "env_args" in data.attrs else {}
        options = {"obs_keys": keys, "state_keys": state_keys, "flip_images": flip_images}
        source_id = _source_id(in_path, demos, options)
        index = {name: i for i, name in enumerate(demos)}
        masks = {}
        for name, ds in f["mask"].items() if "mask" in f else []:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in ds[:]]
            masks[name] = sorted(index[n] for n in names if n in index)
        attrs = {
            "writer": "s2_policy.data.robomimic_hdf5",
            "source": str(in_path),
            "source_id": source_id,
            "env_id": env_args.get("env_name"),
            "env_args": env_args,
            "cameras": images,
            "state_keys": state_keys,
            "images_flipped": flip_images,
            "demo_names": demos,
            "masks": masks,
        }
        if "train" in masks:
            attrs["split"] = {"train": masks["train"], "valid": masks.get("valid", [])}
        store = resume_conversion(partial, attrs, source_id)
        for name in tqdm(
            demos[store.n_episodes :], desc="robomimic -> zarr", unit="demo", disable=not progress
        ):
            demo = data[name]
            if "actions" not in demo:
                raise ValueError(f"{in_path}: data/{name} has no 'actions'")
            ep = {k: _read(demo["obs"], k, in_path) for k in keys}
            for k in images:
                if flip_images:
                    ep[k] = np.ascontiguousarray(ep[k][:, ::-1])
            if state_keys:
                ep["state"] = np.concatenate(
                    [ep[k].reshape(len(ep[k]), -1).astype(np.float32) for k in state_keys], axis=1
                )
            ep["action"] = _read(demo, "actions", in_path).astype(np.float32)
            store.add_episode(ep)
    os.replace(partial, out_path)
    return ReplayStore.open(out_path, mode="r")


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [x for x in text.split(",") if x]


@user_errors
def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m s2_policy.data.robomimic_hdf5 IN.hdf5 OUT.zarr [options]``."""
    p = argparse.ArgumentParser(description="Convert a robomimic HDF5 dataset into a zarr replay store.")
    p.add_argument("input", type=Path, help="robomimic .hdf5 file")
    p.add_argument("output", type=Path, help="output store directory (e.g. datasets/lift_ph.zarr)")
    p.add_argument("--obs-keys", help="comma-separated obs keys to keep (default: all)")
    p.add_argument("--state-keys", help="comma-separated low-dim keys concatenated into 'state'")
    p.add_argument("--flip-images", action="store_true", help="flip images vertically (robosuite renders)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    a = p.parse_args(argv)
    store = convert_robomimic(
        a.input,
        a.output,
        obs_keys=_csv(a.obs_keys),
        state_keys=_csv(a.state_keys),
        flip_images=a.flip_images,
        overwrite=a.overwrite,
    )
    print(f"wrote {store.path}: {store.n_episodes} episodes, {store.n_frames} frames, keys {store.keys()}")


if __name__ == "__main__":
    main()
