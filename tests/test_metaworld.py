"""MetaWorld v3 tasks (``configs/task/metaworld/*.yaml``): env, upright images, experts, scenes vs seeds.

Needs the ``metaworld`` extra (mujoco 3.3.0); skipped on the default install (mujoco 4), as in CI.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest

pytest.importorskip("metaworld", reason="the metaworld extra is not installed (README: MetaWorld)")

from envs import metaworld as mw  # noqa: E402  (after the skip: it imports metaworld)
from envs.spec import TaskSpec, make_env  # noqa: E402
from s2_policy.collect import collect_demos  # noqa: E402
from s2_policy.data.store import ReplayStore  # noqa: E402
from s2_policy.evaluation.seeds import check_eval_seeds, eval_seeds  # noqa: E402
from tests.tasks import load_task  # noqa: E402

TASKS = ["assembly", "bin-picking", "button-press-topdown", "drawer-open", "hammer",
         "pick-place-256", "assembly-256",   # the fine-detail setting (docs/envs.md)
         "disassemble", "pick-place-wall"]   # small-part tasks of round eleven


def _plain_env(spec: TaskSpec) -> gym.Env:
    """The task's MetaWorld env without rendering (experts and scenes need no images)."""
    return gym.make(spec.env.id, **{**spec.env.kwargs, "render_mode": None},
                    max_episode_steps=spec.env.max_episode_steps)


def test_reset_step_render_upright_and_state_is_proprioception():
    spec = load_task("metaworld/drawer-open")
    env = make_env(spec)
    try:
        obs, info = env.reset(seed=100_000)
        cam = spec.camera_names[0]
        raw_render = env.unwrapped.render()
        assert obs[cam].shape == (128, 128, 3) and obs[cam].dtype == np.uint8
        np.testing.assert_array_equal(obs[cam], np.rot90(raw_render, 2))  # turned upright, nothing else
        assert not np.array_equal(obs[cam], raw_render)
        # why 180 degrees: the camera's image-up axis points down in the world (a rolled camera, not a mirror)
        sim = env.unwrapped._env
        cam_id = mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_CAMERA, spec.env.kwargs["camera_name"])
        up = sim.data.cam_xmat[cam_id].reshape(3, 3)[:, 1]
        assert up[2] < -0.5
        raw = env.unwrapped.last_obs
        assert raw.shape == (39,)
        np.testing.assert_allclose(obs["state"], raw[:4].astype(np.float32))  # hand xyz + gripper, no objects
        assert obs["state"].dtype == np.float32 and env.observation_space["state"].shape == (4,)
        assert info["scene"] == (2000, 0)
        obs2, reward, terminated, truncated, info = env.step(np.array([0.0, 0.0, 1.0, -1.0], np.float32))
        assert obs2["state"][2] > obs["state"][2]  # moved up
        assert not np.array_equal(obs2[cam], obs[cam])
        assert info["is_success"] is False and not terminated and not truncated
    finally:
        env.close()


@pytest.mark.parametrize("task", TASKS)
def test_scripted_expert_succeeds(task):
    spec = load_task(f"metaworld/{task}")
    env = _plain_env(spec)
    expert = mw.make_expert(env)
    try:
        wins = []
        for seed in (0, 1, 2):  # the first demonstration seeds
            env.reset(seed=seed)
            expert.reset(seed)
            for _ in range(spec.env.max_episode_steps):
                _, _, terminated, truncated, info = env.step(expert.act(None))
                if terminated or truncated:
                    break
            wins.append(bool(info["success"]))
        assert np.mean(wins) >= 0.9, f"{task}: expert succeeded on {wins}"
    finally:
        env.close()


def test_scene_is_a_function_of_the_seed_and_test_scenes_are_not_demo_scenes():
    spec = load_task("metaworld/assembly")
    env = _plain_env(spec).unwrapped

    def scene(seed: int) -> np.ndarray:
        env.reset(seed=seed)
        return env.scene_vector()

    try:
        demo = np.stack([scene(s) for s in range(50)])  # the whole demo pool (25 demos use seeds 0..24)
        test_seeds = eval_seeds(spec, "test", 50)
        test = np.stack([scene(s) for s in test_seeds])
        assert len(np.unique(test, axis=0)) == 50, "50 test episodes must be 50 distinct scenes"
        nearest = np.abs(test[:, None] - demo[None]).max(-1).min()
        assert nearest > 1e-3, "a test scene equals a demonstration scene"
        np.testing.assert_array_equal(scene(7), demo[7])  # same seed, same scene, whatever came before
        assert not np.array_equal(scene(1002), scene(100_002))  # the colliding pair (plain MT1)
    finally:
        env.close()


def test_seed_plan_refuses_demo_scenes(tmp_path: Path):
    spec = load_task("metaworld/assembly")
    with pytest.raises(ValueError, match="demonstration seed range"):
        check_eval_seeds(spec, [30])  # not a demo seed, but in the demos' scene pool
    # a store collected under another plan (seeds 0..24): seed 30 of the same pool is refused too
    other = load_task("metaworld/assembly", **{"seeds.demo": 3})
    store = tmp_path / "demos.zarr"
    ReplayStore.create(store, attrs={"episode_seeds": list(range(25)), "failed_seeds": []})
    check_eval_seeds(other, [60], store)  # another pool: fine
    with pytest.raises(ValueError, match="scene blocks"):
        check_eval_seeds(other, [30], store)
    with pytest.raises(ValueError, match="multiples of seeds.scene_pool=50"):
        load_task("metaworld/assembly", **{"seeds.test": 100_010})


def test_collect_two_demos_through_the_task_layer(tmp_path: Path):
    spec = load_task("metaworld/button-press-topdown", **{"demos.n_episodes": 2})
    path = collect_demos(spec, tmp_path / "mw.zarr", n_episodes=2, n_workers=0, progress=False)
    store = ReplayStore.open(path, mode="r")
    assert store.n_episodes == 2 and store.attrs["episode_seeds"] == [0, 1]
    assert "metaworld" in store.attrs["env_fingerprint"]
    first = store.get_episode(0)
    assert first["corner4"].shape[1:] == (128, 128, 3) and first["state"].shape[1] == 4
    assert first["action"].shape[1] == 4 and 20 < len(first["action"]) < spec.env.max_episode_steps


def test_gripper_camera_is_a_second_upright_view_in_the_observation(tmp_path: Path):
    spec = load_task("metaworld/hand-insert-wrist", **{"demos.n_episodes": 1})
    assert spec.camera_names == ["corner4", "gripperPOV"]
    env = make_env(spec)
    alone = mw.MetaWorldEnv("hand-insert-v3", camera_name="gripperPOV")  # MetaWorld's own render of that view
    try:
        obs, _ = env.reset(seed=100_000)
        alone.reset(seed=100_000)
        assert obs["gripperPOV"].shape == (128, 128, 3) and obs["gripperPOV"].dtype == np.uint8
        np.testing.assert_array_equal(obs["gripperPOV"], alone.render())  # not flipped: see below
        assert not np.array_equal(obs["gripperPOV"], obs["corner4"])
        # why no flip: this camera's image-up axis points forward, level (the corner views' points down)
        sim = env.unwrapped._env
        cam_id = mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_CAMERA, "gripperPOV")
        up = sim.data.cam_xmat[cam_id].reshape(3, 3)[:, 1]
        assert up[1] > 0.9
        before = obs["gripperPOV"]
        for _ in range(5):
            obs, *_ = env.step(np.array([0.0, 0.0, 1.0, -1.0], np.float32))
        assert np.abs(obs["gripperPOV"].astype(int) - before).mean() > 1.0  # it moves with the hand
    finally:
        env.close()
        alone.close()
    path = collect_demos(spec, tmp_path / "wrist.zarr", n_episodes=1, n_workers=0, progress=False)
    episode = ReplayStore.open(path, mode="r").get_episode(0)
    assert episode["gripperPOV"].shape == episode["corner4"].shape
    assert episode["gripperPOV"].shape[1:] == (128, 128, 3)


@pytest.mark.parametrize("extra", [["nowhere"], ["corner4"], ["gripperPOV", "gripperPOV"]])
def test_extra_cameras_refuse_unknown_repeated_or_render_camera(extra):
    with pytest.raises(ValueError, match="extra_cameras"):
        mw.MetaWorldEnv("hand-insert-v3", camera_name="corner4", extra_cameras=extra, render_mode=None)
