"""Demonstration collection: valid store, resumability, failure reporting, settings checks, the command."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import zarr
from tasks import load_task

from envs.spec import TaskSpec, make_env, make_expert
from s2_policy.collect import action_noise_rng, collect_demos, episode_seed
from s2_policy.data.store import ReplayStore


def _cfg(size=32, **dotted):
    return load_task("pick_cube", size=size, **dotted)


def test_collect_writes_valid_store_and_resumes(tmp_path):
    out = tmp_path / "demos.zarr"
    assert collect_demos(_cfg(), out, n_episodes=2, n_workers=0, progress=False) == out
    store = ReplayStore.open(out)
    assert store.n_episodes == 2 and store.keys() == ["action", "front", "state", "wrist"]
    ep = store.get_episode(0)
    T = len(ep["action"])
    assert 10 < T < 60 and store.episode_ends[0] == T
    assert ep["front"].shape == (T, 32, 32, 3) and ep["front"].dtype == np.uint8
    assert ep["state"].shape == (T, 4) and ep["state"].dtype == np.float32
    assert ep["action"].shape == (T, 4) and np.all(np.abs(ep["action"]) <= 1)
    a = store.attrs
    assert a["writer"] == "s2_policy.collect" and a["env_id"] == "s2_policy/PickCube-v0"
    assert a["cameras"] == ["front", "wrist"] and a["control_hz"] == 10
    assert a["action_space"]["shape"] == [4] and a["episode_seeds"] == [0, 1] and a["failed_seeds"] == []
    first = store["front"][:]

    # Resuming in 2 spawned workers adds only the missing episode, with the next seed; old data untouched.
    collect_demos(_cfg(), out, n_episodes=3, n_workers=2, progress=False)
    store = ReplayStore.open(out)
    assert store.n_episodes == 3 and store.attrs["episode_seeds"] == [0, 1, 2]
    np.testing.assert_array_equal(store["front"][: len(first)], first)
    # Same seed -> same episode, whichever process ran it.
    again = tmp_path / "again.zarr"
    collect_demos(_cfg(), again, n_episodes=3, n_workers=0, progress=False)
    np.testing.assert_array_equal(ReplayStore.open(again)["action"][:], store["action"][:])
    # Asking for no more than it has is a no-op.
    collect_demos(_cfg(), out, n_episodes=2, n_workers=0, progress=False)
    assert ReplayStore.open(out).n_episodes == 3


def test_collect_resumes_after_uncommitted_seed(tmp_path):
    """A crash between recording a seed and committing its episode re-runs that seed."""
    out = tmp_path / "d.zarr"
    collect_demos(_cfg(), out, n_episodes=1, n_workers=0, progress=False)
    ReplayStore.open(out, mode="a").update_attrs({"episode_seeds": [0, 1]})  # seed 1 never committed
    collect_demos(_cfg(), out, n_episodes=2, n_workers=0, progress=False)
    assert ReplayStore.open(out).attrs["episode_seeds"] == [0, 1]


def test_failed_episodes_are_reported_not_stored(tmp_path):
    out = tmp_path / "fail.zarr"
    with pytest.raises(RuntimeError, match="expert is failing"):
        collect_demos(
            _cfg(**{"env.max_episode_steps": 3}), out, n_episodes=2, n_workers=0, max_attempts=3,
            progress=False
        )
    store = ReplayStore.open(out)
    assert store.n_episodes == 0 and store.attrs["failed_seeds"] == [0, 1, 2]


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "d.zarr"
    collect_demos(_cfg(), out, n_episodes=1, n_workers=0, progress=False)
    with pytest.raises(ValueError, match="image_sizes"):
        collect_demos(_cfg(size=48), out, n_episodes=2, n_workers=0, progress=False)
    with pytest.raises(ValueError, match="seed"):
        collect_demos(_cfg(**{"seeds.demo": 1}), out, n_episodes=2, n_workers=0, progress=False)
    # A store from another version of the task (or not from collect at all) is refused too.
    ReplayStore.open(out, mode="a").update_attrs({"env_fingerprint": "old"})
    with pytest.raises(ValueError, match="env_fingerprint"):
        collect_demos(_cfg(), out, n_episodes=2, n_workers=0, progress=False)


def test_store_with_another_state_is_refused(tmp_path):
    """A store keeps the state it was collected with: changing env.state_keys must not reuse it (it used to
    train on the old state silently and fail only at the rollouts)."""
    out = tmp_path / "d.zarr"
    collect_demos(_cfg(), out, n_episodes=1, n_workers=0, progress=False)
    attrs = ReplayStore.open(out).attrs
    assert attrs["state_dim"] == 4 and attrs["state_keys"] == ["state"]
    store = ReplayStore.open(out, mode="a")
    store.update_attrs({"state_dim": 7})  # as if collected with a wider state
    with pytest.raises(ValueError, match=r"state_dim: store has 7, config gives 4.*its own store"):
        collect_demos(_cfg(), out, n_episodes=1, n_workers=0, progress=False)
    # A store written before state_dim was recorded: its state array's width is checked instead.
    del zarr.open_group(out, mode="a").attrs["state_dim"]
    assert "state_dim" not in ReplayStore.open(out).attrs
    collect_demos(_cfg(), out, n_episodes=1, n_workers=0, progress=False)  # width 4 == 4: accepted


def test_noisy_execution_keeps_the_experts_clean_actions(tmp_path):
    """demos.action_noise (DART): the env executes noisy actions, the store keeps the expert's own."""
    clean, noisy = tmp_path / "clean.zarr", tmp_path / "noisy.zarr"
    collect_demos(_cfg(), clean, n_episodes=1, n_workers=0, progress=False)
    collect_demos(_cfg(**{"demos.action_noise": 0.2}), noisy, n_episodes=1, n_workers=0, progress=False)
    ep, ref = ReplayStore.open(noisy).get_episode(0), ReplayStore.open(clean).get_episode(0)
    assert ReplayStore.open(noisy).attrs["action_noise"] == 0.2
    n = min(len(ep["state"]), len(ref["state"]))
    assert not np.allclose(ep["state"][:n], ref["state"][:n])          # the noise was executed
    # Replaying the episode: every stored action is the expert's action at the stored observation, and
    # stepping with that action plus the episode's noise reproduces the next stored state.
    spec = TaskSpec.from_config(_cfg(**{"demos.action_noise": 0.2}))
    env = make_env(spec)
    expert = make_expert(spec, env)
    seed = ReplayStore.open(noisy).attrs["episode_seeds"][0]
    obs, _ = env.reset(seed=seed)
    expert.reset(seed=seed)
    low, high = env.action_space.low, env.action_space.high
    rng, half = action_noise_rng(seed), (high - low) / 2
    for t in range(len(ep["action"])):
        np.testing.assert_array_equal(obs["state"], ep["state"][t])
        action = expert.act(obs)
        np.testing.assert_array_equal(action, ep["action"][t])
        executed = action + 0.2 * half * rng.standard_normal(action.shape)
        obs, *_ = env.step(np.clip(executed, low, high).astype(action.dtype))
    env.close()
    # A store is resumed only with the noise it was collected with; the level is validated.
    with pytest.raises(ValueError, match="action_noise"):
        collect_demos(_cfg(), noisy, n_episodes=2, n_workers=0, progress=False)
    with pytest.raises(ValueError, match="demos.action_noise"):
        TaskSpec.from_config(_cfg(**{"demos.action_noise": 1.5}))


def test_episode_seeds_are_disjoint_across_base_seeds():
    assert episode_seed(0, 5) == 5 and episode_seed(1, 5) == 1_000_005


@pytest.mark.slow
def test_collect_command(tmp_path):
    out = tmp_path / "cmd.zarr"
    cmd = [sys.executable, "-m", "s2_policy.jobs.collect", "task=pick_marked_cube", "n_episodes=1",
           "n_workers=0", f"out={out}", "task.env.kwargs.image_size=24", "task.cameras.front.size=[24,24]",
           "task.cameras.wrist.size=[24,24]", f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    store = ReplayStore.open(out)
    assert store.n_episodes == 1 and store.attrs["env_id"] == "s2_policy/PickMarkedCube-v0"
    assert store["front"].shape[1:] == (24, 24, 3)


def test_concurrent_collection_is_refused_and_stale_locks_are_taken_over(tmp_path):
    out = tmp_path / "d.zarr"
    lock = tmp_path / "d.zarr.lock"
    lock.write_text(str(os.getpid()))  # a live writer
    with pytest.raises(RuntimeError, match="being written by process"):
        collect_demos(_cfg(), out, n_episodes=1, n_workers=0, progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(str(dead.pid))  # its writer died
    collect_demos(_cfg(), out, n_episodes=1, n_workers=0, progress=False)
    assert ReplayStore.open(out).n_episodes == 1 and not lock.exists()
    # A full store is only read: a job sharing it with a live writer (a parallel sweep) goes on ...
    lock.write_text(str(os.getpid()))
    assert collect_demos(_cfg(), out, n_episodes=1, n_workers=0, progress=False) == out
    # ... while one that would have to append still refuses, and a stale store is refused without writing.
    with pytest.raises(RuntimeError, match="being written by process"):
        collect_demos(_cfg(), out, n_episodes=2, n_workers=0, progress=False)
    lock.unlink()
    with pytest.raises(ValueError, match="different settings"):
        collect_demos(_cfg(size=48), out, n_episodes=1,
                      n_workers=0, progress=False)


def test_waiting_collector_goes_on_when_the_writer_finishes(tmp_path):
    """Sweep jobs starting on a missing store: the second waits for the first instead of failing."""
    out = tmp_path / "d.zarr"
    lock = tmp_path / "d.zarr.lock"
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2.5)"])
    lock.write_text(str(writer.pid))  # a live writer holds the store for ~2.5 s
    reaper = threading.Thread(target=writer.wait)  # as its own parent would: no zombie that looks alive
    reaper.start()
    with pytest.raises(RuntimeError, match="being written by process"):
        collect_demos(_cfg(), out, n_episodes=1, n_workers=0, progress=False)
    collect_demos(_cfg(), out, n_episodes=1, n_workers=0, progress=False, wait_s=30)
    reaper.join()
    assert ReplayStore.open(out).n_episodes == 1 and not lock.exists()
