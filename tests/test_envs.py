"""MuJoCo tasks: spaces, rendering, reproducibility, experts, validation errors, gymnasium checkers."""

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from tasks import load_task

import envs

ALL_TASKS = list(envs.TASKS)
REPO_TASKS = Path(__file__).resolve().parents[1] / "configs" / "task"


@pytest.fixture(scope="module", params=ALL_TASKS)
def task_env(request):
    env = gym.make(
        envs.TASKS[request.param], cameras=("front", "wrist"), image_size={"front": 64, "wrist": (48, 80)}
    )
    yield env
    env.close()


def test_registered_ids_and_contract_defaults():
    assert envs.TASKS == {
        "pick_cube": "s2_policy/PickCube-v0",
        "place_cube": "s2_policy/PlaceCube-v0",
        "pick_marked_cube": "s2_policy/PickMarkedCube-v0",
    }
    env = gym.make("s2_policy/PickCube-v0")
    obs, info = env.reset(seed=0)
    assert set(obs) == {"front", "wrist", "state"}
    assert obs["front"].shape == (128, 128, 3) and obs["front"].dtype == np.uint8
    assert obs["state"].shape == (4,) and obs["state"].dtype == np.float32
    assert env.action_space.shape == (4,) and env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    assert info["is_success"] is False
    assert env.spec.max_episode_steps == envs.MAX_EPISODE_STEPS["pick_cube"]
    env.close()


def test_reset_step_render(task_env):
    obs, info = task_env.reset(seed=3)
    assert obs["front"].shape == (64, 64, 3) and obs["wrist"].shape == (48, 80, 3)
    assert task_env.observation_space.contains(obs)
    assert obs["front"].std() > 5 and obs["wrist"].std() > 5  # a real scene, not a blank frame
    obs2, reward, terminated, truncated, info = task_env.step(np.array([1, 0, -1, 1], np.float32))
    assert task_env.observation_space.contains(obs2)
    assert isinstance(reward, float) and reward == 0.0 and not terminated and not truncated
    assert info["is_success"] is False
    assert obs2["state"][0] > obs["state"][0] + 0.005  # moved +x by about max_step
    assert obs2["state"][3] < obs["state"][3]  # fingers closing


def test_same_seed_same_first_observation(task_env):
    a, _ = task_env.reset(seed=11)
    b, _ = task_env.reset(seed=11)
    c, _ = task_env.reset(seed=12)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["front"], c["front"])


def test_images_are_upright():
    """Top rows show the grey-blue backdrop, bottom rows the brown table: GL's bottom-up flip is undone."""
    env = gym.make("s2_policy/PickCube-v0", cameras=("front",), image_size=64)
    img = env.reset(seed=0)[0]["front"].astype(float)
    top, bottom = img[:3].mean(axis=(0, 1)), img[-3:].mean(axis=(0, 1))
    assert bottom[0] > bottom[2] + 20  # table: red > blue
    assert top[2] >= top[0]  # sky/backdrop: blue >= red
    env.close()


@pytest.mark.parametrize("name", ALL_TASKS)
def test_expert_succeeds(name):
    env = gym.make(envs.TASKS[name], cameras=())
    expert = envs.make_expert(env)
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        expert.reset(seed=seed)
        for _ in range(env.spec.max_episode_steps):
            obs, reward, terminated, truncated, info = env.step(expert.act(obs))
            if terminated or truncated:
                break
        assert info["is_success"] and terminated and reward == 1.0, (name, seed)
    env.close()


def test_expert_is_reproducible_and_noisy():
    env = gym.make("s2_policy/PickCube-v0", cameras=())
    expert = envs.make_expert(env)

    def actions(seed):
        obs, _ = env.reset(seed=0)
        expert.reset(seed=seed)
        return np.stack([expert.act(obs) for _ in range(3)])

    np.testing.assert_array_equal(actions(1), actions(1))
    assert not np.array_equal(actions(1), actions(2))


def test_marked_cube_success_needs_the_marked_one():
    env = gym.make("s2_policy/PickMarkedCube-v0", cameras=())
    env.reset(seed=0)
    u = env.unwrapped
    marks = [u.model.geom(f"mark{i}").pos[2] for i in range(3)]
    assert sum(z > 0.015 for z in marks) == 1 and marks[u.marked] > 0.015  # only the marked one is visible
    wrong = (u.marked + 1) % 3
    u._place_free_body(f"cube{wrong}", np.array([0.0, 0.15, 0.1]), 0.0)
    import mujoco

    mujoco.mj_forward(u.model, u.data)
    assert not u._is_success()
    u._place_free_body(f"cube{u.marked}", np.array([0.0, -0.15, 0.1]), 0.0)
    u._place_free_body(f"cube{wrong}", np.array([0.0, 0.15, 0.02]), 0.0)
    mujoco.mj_forward(u.model, u.data)
    assert u._is_success()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cameras": ("front", "top")}, "unknown camera"),
        ({"cameras": "front"}, "sequence of names"),
        ({"image_size": 0}, "impossible"),
        ({"image_size": 100000}, "impossible"),
        ({"image_size": (64, -2)}, "impossible"),
        ({"image_size": 64.5}, "int or a"),
        ({"image_size": {"front": 64}}, "missing"),
        ({"render_mode": "ansi"}, "render_mode"),
    ],
)
@pytest.mark.filterwarnings("ignore:.*render_mode")
def test_bad_configuration_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gym.make("s2_policy/PickCube-v0", **kwargs)


@pytest.mark.parametrize(
    ("action", "match"),
    [(np.zeros(3), "shape"), (np.zeros((1, 4)), "shape"), (np.array([0, np.nan, 0, 0]), "NaN")],
)
def test_bad_action_raises(action, match):
    env = gym.make("s2_policy/PickCube-v0", cameras=())
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_make_expert_rejects_other_envs():
    with pytest.raises(ValueError, match="no scripted expert"):
        envs.make_expert(gym.make("CartPole-v1"))


def test_make_env_from_task_spec_and_render():
    task = load_task("pick_cube", size=[32, 48], **{"env.max_episode_steps": 7,
                                                  "env.kwargs.cameras": ["wrist", "front"]})
    env = envs.make_env(task, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert env.spec.max_episode_steps == 7 and obs["wrist"].shape == (32, 48, 3)
    frame = env.render()
    assert frame.shape == (32, 96, 3)
    np.testing.assert_array_equal(frame[:, :48], obs["wrist"])
    env.close()
    with pytest.raises(ValueError, match="cameras.front.size"):  # the spec and the env disagree on sizes
        envs.make_env(load_task("pick_cube", size=32, **{"env.kwargs.image_size": 48})).reset(seed=0)


@pytest.mark.parametrize("name", ALL_TASKS)
def test_gymnasium_env_checker(name):
    env = gym.make(envs.TASKS[name], image_size=32, render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)
    env.close()


@pytest.mark.slow
def test_async_vector_env_with_spawn():
    # "envs:<id>" makes gymnasium import envs (which registers the ids) in each spawned worker
    fns = [lambda: gym.make("envs:s2_policy/PickMarkedCube-v0", cameras=("front",), image_size=32)] * 2
    vec = gym.vector.AsyncVectorEnv(fns, context="spawn")
    try:
        obs, info = vec.reset(seed=[0, 1])
        assert obs["front"].shape == (2, 32, 32, 3) and obs["state"].shape == (2, 4)
        assert not np.array_equal(obs["front"][0], obs["front"][1])
        obs, reward, term, trunc, info = vec.step(np.zeros((2, 4), np.float32))
        assert reward.shape == (2,) and info["is_success"].tolist() == [False, False]
    finally:
        vec.close()


def test_triton_import_after_rendering_does_not_crash():
    """Mesa's llvmpipe and triton's LLVM segfault when triton loads second; envs loads it first."""
    pytest.importorskip("triton")
    code = (
        "import envs, gymnasium as gym\n"
        "env = gym.make('s2_policy/PickCube-v0', cameras=('front',), image_size=16)\n"
        "env.reset(seed=0)\n"
        "import triton\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-1000:]


def test_wrong_gl_backend_gives_a_clear_error():
    """mujoco imported before envs with MUJOCO_GL unset picks GLFW (no display here): say how to fix it."""
    import os

    code = (
        "import mujoco, envs, gymnasium as gym\n"
        "env = gym.make('s2_policy/PickCube-v0', image_size=16)\n"
        "env.reset(seed=0)\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=clean)
    assert res.returncode != 0 and "MUJOCO_GL=egl" in res.stderr, res.stderr[-1000:]


def test_env_fingerprint_tracks_task_definition():
    a = gym.make("s2_policy/PickCube-v0", cameras=()).unwrapped
    b = gym.make("s2_policy/PickCube-v0", cameras=("front",), image_size=16).unwrapped
    c = gym.make("s2_policy/PlaceCube-v0", cameras=()).unwrapped
    assert a.env_fingerprint() == b.env_fingerprint() != c.env_fingerprint()
    a.spread = 0.07  # an instance tweak does not change the class definition ...
    assert a.env_fingerprint() == b.env_fingerprint()

    class Wider(type(a)):
        spread = 0.07

    assert Wider(cameras=()).env_fingerprint() != b.env_fingerprint()  # ... a changed constant does


TASK_YAMLS = sorted(p.relative_to(REPO_TASKS).with_suffix("").as_posix() for p in REPO_TASKS.rglob("*.yaml"))


@pytest.mark.parametrize("name", TASK_YAMLS)
def test_every_shipped_task_config_is_a_valid_spec(name):
    """Every ``configs/task`` entry validates as a TaskSpec (no simulator needed); a MetaWorld camera's size
    is the size the env renders, so the policy never sees a silently resized frame."""
    spec = load_task(name)
    assert spec.cameras and spec.demos.n_episodes > 0
    kwargs = spec.env.kwargs
    if name.startswith("metaworld/"):
        for cam in spec.cameras.values():
            assert list(cam.size) == [kwargs["height"], kwargs["width"]]
        # the render camera plus each extra camera, read from the observation key the env writes
        extra = kwargs.get("extra_cameras", [])
        assert [c.obs_key for c in spec.cameras.values()] == ["render", *extra]
        assert name.removesuffix("-256").removesuffix("-wrist").split("/")[1] + "-v3" == kwargs["env_name"]
