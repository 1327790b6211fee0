"""Scripted-expert demonstration collection into a diffusion_policy-layout zarr store.

``python -m s2_policy.jobs.collect task=pick_cube n_episodes=100`` (hydra, ``configs/collect.yaml``) or
:func:`collect_demos` from code. Episode ``k`` of base seed ``s`` uses env and expert seed
``s * 1_000_000 + k``; episodes run in spawned workers (EGL contexts must not be forked), in candidate
order, and only successful ones are appended. The store records which seeds it holds and which failed, so
re-running resumes with the next untried seed and adds only the missing episodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from envs.spec import SEED_STRIDE, TaskSpec, make_env, make_expert
from s2_policy.data.store import ReplayStore

log = logging.getLogger(__name__)

WRITER = "s2_policy.collect"
_WORKER: dict[str, Any] = {}


def episode_seed(seed: int, k: int) -> int:
    """Env/expert seed of candidate episode ``k`` under base ``seed``."""
    return seed * SEED_STRIDE + k


def action_noise_rng(seed: int) -> np.random.Generator:
    """The generator of episode ``seed``'s execution noise (``demos.action_noise``): reproducible per episode,
    whichever worker runs it."""
    return np.random.default_rng([seed, 0xDA27])


def _init_worker(spec: TaskSpec) -> None:
    env = make_env(spec)
    _WORKER.update(env=env, expert=make_expert(spec, env), action_noise=spec.demos.action_noise)


def _run_episode(seed: int) -> tuple[int, bool, int, dict[str, np.ndarray] | None]:
    """One expert episode: (seed, success, length, frames-or-None). Frames pair each obs with the expert's
    action; with ``demos.action_noise`` the env executes a noisy copy of it (seeded by the episode seed)."""
    env, expert, noise = _WORKER["env"], _WORKER["expert"], _WORKER["action_noise"]
    obs, info = env.reset(seed=seed)
    expert.reset(seed=seed)
    rng = action_noise_rng(seed)
    low, high = np.asarray(env.action_space.low), np.asarray(env.action_space.high)
    frames: dict[str, list[np.ndarray]] = {k: [] for k in (*obs, "action")}
    done = False
    while not done:
        action = expert.act(obs)
        for k, v in obs.items():
            frames[k].append(v)
        frames["action"].append(action)
        if noise > 0:
            executed = action + noise * (high - low) / 2 * rng.standard_normal(np.shape(action))
            obs, _, terminated, truncated, info = env.step(np.clip(executed, low, high).astype(action.dtype))
        else:
            obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    success = bool(info["is_success"])
    length = len(frames["action"])
    return seed, success, length, ({k: np.stack(v) for k, v in frames.items()} if success else None)


def _env_fingerprint(env: Any, spec: TaskSpec) -> str:
    """The env's own version fingerprint when it has one (the project's tasks), else one of its spec."""
    own = getattr(env.unwrapped, "env_fingerprint", None)
    if callable(own):
        return str(own())
    blob = json.dumps({"id": spec.env.id, "kwargs": spec.env.kwargs, "cameras": spec.to_dict()["cameras"]},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _store_attrs(spec: TaskSpec) -> dict[str, Any]:
    """Attributes describing how the store's episodes were produced (checked again on resume)."""
    env = make_env(spec)
    try:
        u, space = env.unwrapped, env.action_space
        obs_space = env.observation_space
        return {
            "writer": WRITER,
            "task": spec.name,
            "env_id": spec.env.id,
            "env_kwargs": dict(spec.env.kwargs),
            "cameras": spec.camera_names,
            "image_sizes": {c: list(obs_space[c].shape[:2]) for c in spec.camera_names},
            "control_hz": spec.env.control_hz,
            "max_episode_steps": env.spec.max_episode_steps if env.spec else None,
            "action_space": {
                "shape": list(space.shape),
                "low": np.asarray(space.low).tolist(),
                "high": np.asarray(space.high).tolist(),
                "dtype": str(space.dtype),
                "meaning": getattr(u, "action_meaning", None),
            },
            "state": getattr(u, "state_meaning", None),
            "state_keys": list(spec.env.state_keys),
            "state_dim": int(obs_space["state"].shape[0]),
            "env_fingerprint": _env_fingerprint(env, spec),
            "expert": spec.demos.expert,
            "action_noise": spec.demos.action_noise,
            "seed": spec.seeds.demo,
            "seed_rule": f"episode k uses env/expert seed {SEED_STRIDE} * seed + k",
        }
    finally:
        env.close()


_MUST_MATCH = ("env_id", "env_fingerprint", "cameras", "image_sizes", "control_hz", "action_space", "seed",
               "action_noise", "state_dim")
_ABSENT_MEANS = {"action_noise": 0.0}  # stores written before the attribute existed


def _check_resume(path: Path, store: ReplayStore, new: dict[str, Any]) -> None:
    """The store at ``path`` must have been collected with the settings ``new`` describes (ValueError)."""
    # stores written before ``state_dim`` was recorded: their state array says it
    width = {"state_dim": int(store["state"].shape[1])} if "state" in store else {}
    old = {**_ABSENT_MEANS, **width, **store.attrs}
    diff = [k for k in _MUST_MATCH if old.get(k) != new[k]]
    if diff:
        detail = "; ".join(f"{k}: store has {old.get(k)!r}, config gives {new[k]!r}" for k in diff)
        hint = (" (the task's env.state_keys changed: a store keeps the state it was collected with, so give "
                "the new state its own store, e.g. task.demos.path=datasets/<name>_<state>.zarr)"
                if "state_dim" in diff else "")
        raise ValueError(
            f"{path} was collected with different settings ({detail}){hint}; "
            "choose another output path (out=...) or delete the store to start over"
        )


def _already_full(spec: TaskSpec, path: Path, n_episodes: int) -> bool:
    """True when the store at ``path`` matches this task (else ValueError) and is full."""
    store = ReplayStore.open(path, mode="r")
    _check_resume(path, store, _store_attrs(spec))
    if store.n_episodes >= n_episodes:
        log.info("%s already holds %d episodes (asked for %d)", path, store.n_episodes, n_episodes)
        return True
    return False


def _episodes(
    spec: TaskSpec, seeds: Iterator[int], n_workers: int
) -> Iterator[tuple[int, bool, int, dict[str, np.ndarray] | None]]:
    """Run episodes for ``seeds`` in order, in ``n_workers`` spawned processes (0/1: in this process)."""
    if n_workers <= 1:
        _init_worker(spec)
        try:
            yield from map(_run_episode, seeds)
        finally:
            _WORKER.pop("env").close()
        return
    with _standard_start_method(), mp.get_context("spawn").Pool(
            n_workers, initializer=_init_worker, initargs=(spec,)) as pool:
        yield from pool.imap(_run_episode, seeds)


@contextlib.contextmanager
def _standard_start_method() -> Iterator[None]:
    """Inside a joblib/loky worker (hydra's joblib launcher) the global start method is 'loky', which spawned
    children cannot find ('cannot find context for loky'); children get a standard one while the pool
    starts."""
    current = mp.get_start_method(allow_none=True)
    if current in (None, "spawn", "fork", "forkserver"):
        yield
        return
    mp.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        mp.set_start_method(current, force=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _exclusive(path: Path, wait_s: float = 0.0) -> Iterator[None]:
    """Hold ``<store>.lock`` (holding the writer's pid) so that two collections never append to one store.

    A live writer's lock is waited for up to ``wait_s`` seconds (then RuntimeError); a dead writer's is taken.
    """
    lock = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + wait_s
    takeovers = 0
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            text = lock.read_text().strip() if lock.exists() else ""
            if text.isdigit() and _pid_alive(int(text)):
                if time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                raise RuntimeError(
                    f"{path} is being written by process {text} (lock file {lock}); wait for it to finish, "
                    "or stop it, then run again"
                ) from None
            takeovers += 1
            if takeovers > 2:
                msg = f"could not take the lock {lock}; another collection keeps recreating it"
                raise RuntimeError(msg) from None
            lock.unlink(missing_ok=True)  # left by a writer that died: take over
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def collect_demos(
    task: TaskSpec | Any,
    out_path: str | Path,
    n_episodes: int,
    n_workers: int = 2,
    max_attempts: int | None = None,
    progress: bool = True,
    wait_s: float = 0.0,
) -> Path:
    """Fill the store at ``out_path`` with ``n_episodes`` successful expert episodes of ``task`` (a
    :class:`~envs.spec.TaskSpec` or its config); returns the path. Seeds follow ``task.seeds.demo``.

    Resumable: an existing store (same env and env version, cameras, sizes and base seed) keeps its episodes
    and only the missing ones are collected, continuing after the last seed tried. Failed episodes are not
    stored; their seeds are logged and kept in the ``failed_seeds`` attribute. Gives up with RuntimeError
    after ``max_attempts`` new candidates (default ``2 * missing + 10``) so a broken expert cannot loop
    forever. A ``<out_path>.lock`` file keeps a second collection from writing the same store concurrently:
    with ``wait_s > 0`` a second caller waits that long for the first to finish (parallel sweep jobs), then
    finds the store full and only reads it; with 0 it fails at once.
    """
    if n_episodes < 0:
        raise ValueError(f"n_episodes must be >= 0, got {n_episodes}")
    spec = TaskSpec.from_config(task)
    if spec.demos.source != "expert":
        raise ValueError(f"task {spec.name!r} reads its demos from a store (demos.source: store); there "
                         "is no "
                         "expert to collect with")
    path = Path(out_path)
    if path.exists() and _already_full(spec, path, n_episodes):
        return path  # read-only: parallel jobs (sweeps) sharing a full store neither lock nor write it
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path, wait_s):
        return _collect(spec, path, n_episodes, n_workers, max_attempts, progress)


def _collect(
    spec: TaskSpec, path: Path, n_episodes: int, n_workers: int, max_attempts: int | None, progress: bool,
) -> Path:  # fmt: skip
    seed = spec.seeds.demo
    attrs = _store_attrs(spec)
    if path.exists():
        store = ReplayStore.open(path, mode="a")
        _check_resume(path, store, attrs)
    else:
        store = ReplayStore.create(path, attrs={**attrs, "episode_seeds": [], "failed_seeds": []})
    # Seeds are recorded just before each append: entries past n_episodes were never committed.
    kept = list(store.attrs.get("episode_seeds", []))[: store.n_episodes]
    if len(kept) != store.n_episodes:
        raise ValueError(
            f"{path} holds {store.n_episodes} episodes but records seeds for {len(kept)}; it was not written "
            "by s2_policy.collect: use another out path"
        )
    failed = list(store.attrs.get("failed_seeds", []))
    store.update_attrs({**attrs, "episode_seeds": kept, "failed_seeds": failed})
    missing = n_episodes - store.n_episodes
    if missing <= 0:
        log.info("%s already holds %d episodes (asked for %d)", path, store.n_episodes, n_episodes)
        return path

    start = max([s - seed * SEED_STRIDE + 1 for s in kept + failed], default=0)
    budget = max_attempts if max_attempts is not None else 2 * missing + 10
    initial, new_failed = store.n_episodes, []
    bar = tqdm(total=missing, desc=f"collect {spec.name}", disable=not progress)
    candidates = (episode_seed(seed, k) for k in range(start, start + budget))
    episodes = _episodes(spec, candidates, n_workers)
    try:
        for s, success, length, frames in episodes:
            if success:
                kept.append(s)
                store.update_attrs({"episode_seeds": kept})
                store.add_episode(frames)  # type: ignore[arg-type]
                bar.update(1)
            else:
                new_failed.append(s)
                store.update_attrs({"failed_seeds": failed + new_failed})
                log.warning("episode with seed %d failed after %d steps: not stored", s, length)
            bar.set_postfix(failed=len(new_failed))
            if store.n_episodes >= n_episodes:
                break
    finally:
        episodes.close()  # stops the worker pool
        bar.close()
    added = store.n_episodes - initial
    log.info(
        "%s: %d episodes (%d added; %d of %d new candidates failed, seeds %s)",
        path, store.n_episodes, added, len(new_failed), added + len(new_failed), new_failed,
    )  # fmt: skip
    if store.n_episodes < n_episodes:
        raise RuntimeError(
            f"only {store.n_episodes}/{n_episodes} successful episodes after {budget} new candidates "
            f"({len(new_failed)} failed); the expert is failing: check the task config"
        )
    return path
