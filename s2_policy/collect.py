"""Scripted-expert demonstration collection into a diffusion_policy-layout zarr store.

``python -m s2_policy.collect task=pick_cube n_episodes=100`` (hydra, ``configs/collect.yaml``) or
:func:`collect_demos` from code. Episode ``k`` of base seed ``s`` uses env and expert seed
``s * 1_000_000 + k``; episodes run in spawned workers (EGL contexts must not be forked), in candidate
order, and only successful ones are appended. The store records which seeds it holds and which failed, so
re-running resumes with the next untried seed and adds only the missing episodes.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

WRITER = "s2_policy.collect"
SEED_STRIDE = 1_000_000
_WORKER: dict[str, Any] = {}


def episode_seed(seed: int, k: int) -> int:
    """Env/expert seed of candidate episode ``k`` under base ``seed``."""
    return seed * SEED_STRIDE + k


def _init_worker(task_cfg: dict[str, Any]) -> None:
    import envs

    env = envs.make_env(task_cfg)
    _WORKER.update(env=env, expert=envs.make_expert(env))


def _run_episode(seed: int) -> tuple[int, bool, int, dict[str, np.ndarray] | None]:
    """One expert episode: (seed, success, length, frames-or-None). Frames pair each obs with its action."""
    env, expert = _WORKER["env"], _WORKER["expert"]
    obs, info = env.reset(seed=seed)
    expert.reset(seed=seed)
    frames: dict[str, list[np.ndarray]] = {k: [] for k in (*obs, "action")}
    done = False
    while not done:
        action = expert.act(obs)
        for k, v in obs.items():
            frames[k].append(v)
        frames["action"].append(action)
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    success = bool(info["is_success"])
    length = len(frames["action"])
    return seed, success, length, ({k: np.stack(v) for k, v in frames.items()} if success else None)


def _store_attrs(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """Attributes describing how the store's episodes were produced (checked again on resume)."""
    import envs

    env = envs.make_env(cfg)
    try:
        u = env.unwrapped
        space = env.action_space
        return {
            "writer": WRITER,
            "task": cfg.get("name"),
            "env_id": cfg["env_id"],
            "env_kwargs": dict(cfg.get("env_kwargs") or {}),
            "cameras": list(u.cameras),
            "image_sizes": {c: list(hw) for c, hw in u.image_sizes.items()},
            "control_hz": u.control_hz,
            "max_episode_steps": env.spec.max_episode_steps if env.spec else None,
            "action_space": {
                "shape": list(space.shape),
                "low": space.low.tolist(),
                "high": space.high.tolist(),
                "dtype": str(space.dtype),
                "meaning": ["dx", "dy", "dz", "gripper (-1 open, +1 closed)"],
                "max_step_m": u.max_step,
            },
            "state": ["ee_x", "ee_y", "ee_z", "gripper_opening_m"],
            "env_fingerprint": u.env_fingerprint(),
            "expert": type(envs.make_expert(env)).__name__,
            "seed": seed,
            "seed_rule": f"episode k uses env/expert seed {SEED_STRIDE} * seed + k",
        }
    finally:
        env.close()


_MUST_MATCH = ("env_id", "env_fingerprint", "cameras", "image_sizes", "control_hz", "action_space", "seed")


def _check_resume(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    diff = [k for k in _MUST_MATCH if old.get(k) != new[k]]
    if diff:
        detail = "; ".join(f"{k}: store has {old[k]!r}, config gives {new[k]!r}" for k in diff)
        raise ValueError(
            f"{path} was collected with different settings ({detail}); "
            "choose another output path (out=...) or delete the store to start over"
        )


def _already_full(cfg: dict[str, Any], path: Path, n_episodes: int, seed: int) -> bool:
    """True when the store at ``path`` matches this task config (else ValueError) and is full."""
    from s2_policy.data.store import ReplayStore

    store = ReplayStore.open(path, mode="r")
    _check_resume(path, store.attrs, _store_attrs(cfg, seed))
    if store.n_episodes >= n_episodes:
        log.info("%s already holds %d episodes (asked for %d)", path, store.n_episodes, n_episodes)
        return True
    return False


def _episodes(
    cfg: dict[str, Any], seeds: Iterator[int], n_workers: int
) -> Iterator[tuple[int, bool, int, dict[str, np.ndarray] | None]]:
    """Run episodes for ``seeds`` in order, in ``n_workers`` spawned processes (0/1: in this process)."""
    if n_workers <= 1:
        _init_worker(cfg)
        try:
            yield from map(_run_episode, seeds)
        finally:
            _WORKER.pop("env").close()
        return
    with mp.get_context("spawn").Pool(n_workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        yield from pool.imap(_run_episode, seeds)


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
    task_cfg: Any,
    out_path: str | Path,
    n_episodes: int,
    n_workers: int = 2,
    seed: int = 0,
    max_attempts: int | None = None,
    progress: bool = True,
    wait_s: float = 0.0,
) -> Path:
    """Fill the store at ``out_path`` with ``n_episodes`` successful expert episodes; returns the path.

    Resumable: an existing store (same env and env version, cameras, sizes and base seed) keeps its episodes
    and only the missing ones are collected, continuing after the last seed tried. Failed episodes are not
    stored; their seeds are logged and kept in the ``failed_seeds`` attribute. Gives up with RuntimeError
    after ``max_attempts`` new candidates (default ``2 * missing + 10``) so a broken expert cannot loop
    forever. A ``<out_path>.lock`` file keeps a second collection from writing the same store concurrently:
    with ``wait_s > 0`` a second caller waits that long for the first to finish (parallel sweep jobs), then
    finds the store full and only reads it; with 0 it fails at once.
    """
    from envs.registry import _plain

    if n_episodes < 0:
        raise ValueError(f"n_episodes must be >= 0, got {n_episodes}")
    cfg = _plain(task_cfg)
    path = Path(out_path)
    if path.exists() and _already_full(cfg, path, n_episodes, seed):
        return path  # read-only: parallel jobs (sweeps) sharing a full store neither lock nor write it
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path, wait_s):
        return _collect(cfg, path, n_episodes, n_workers, seed, max_attempts, progress)


def _collect(
    cfg: dict[str, Any], path: Path, n_episodes: int, n_workers: int, seed: int, max_attempts: int | None,
    progress: bool,
) -> Path:  # fmt: skip
    from s2_policy.data.store import ReplayStore

    attrs = _store_attrs(cfg, seed)
    if path.exists():
        store = ReplayStore.open(path, mode="a")
        _check_resume(path, store.attrs, attrs)
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
    bar = tqdm(total=missing, desc=f"collect {cfg.get('name', cfg['env_id'])}", disable=not progress)
    candidates = (episode_seed(seed, k) for k in range(start, start + budget))
    episodes = _episodes(cfg, candidates, n_workers)
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


def _main() -> None:
    import hydra
    from hydra.utils import to_absolute_path
    from omegaconf import DictConfig

    @hydra.main(config_path="../configs", config_name="collect", version_base="1.3")
    def run(cfg: DictConfig) -> None:
        path = collect_demos(
            cfg.task, to_absolute_path(cfg.out), int(cfg.n_episodes), int(cfg.n_workers), int(cfg.seed)
        )
        print(f"store: {path}")

    run()


if __name__ == "__main__":
    _main()
