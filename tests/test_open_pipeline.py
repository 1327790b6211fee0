"""The main job on a user's own store and env: third-party zarr (diffusion_policy layout, none of the
project's attributes), a plain gymnasium env registered by entry point, a task YAML outside the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from omegaconf import OmegaConf

from envs.spec import TaskSpec
from s2_policy.data.feature_cache import FeatureCache
from s2_policy.policies.config import PolicyConfig

REPO = Path(__file__).resolve().parents[1]

USER_ENV = '''
"""A user's env: reach x >= 1 from a random start in [-1, 0]; knows nothing of s2_policy."""
import gymnasium as gym
import numpy as np
from gymnasium import spaces


class Reach(gym.Env):
    def __init__(self, size=32):   # no cameras=, no image_size=: none of the project's kwargs
        self.size = size
        self.observation_space = spaces.Dict({
            "rgb": spaces.Box(0, 255, (size, size, 3), np.uint8),
            "agent": spaces.Box(-5, 5, (2,), np.float32)})
        self.action_space = spaces.Box(-1, 1, (1,), np.float32)

    def _obs(self):
        img = np.zeros((self.size, self.size, 3), np.uint8)
        col = int(np.clip((self.x + 1) / 2, 0, 0.999) * self.size)
        img[:, col] = 255
        return {"rgb": img, "agent": np.array([self.x, 0.0], np.float32)}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-1, 0))
        return self._obs(), {}

    def step(self, action):
        self.x += 0.25 * float(np.clip(action[0], -1, 1))
        done = self.x >= 1
        return self._obs(), float(done), done, False, {"reached": bool(done)}


gym.register("UserReach-v0", entry_point="user_env:Reach", max_episode_steps=12)
'''


def _write_third_party_store(path: Path, n_episodes: int = 6, size: int = 32) -> None:
    """What a user's own script writes: plain zarr, diffusion_policy keys (img, agent_pos, action)."""
    rng = np.random.default_rng(0)
    imgs, pos, act, ends = [], [], [], []
    for _ in range(n_episodes):
        x = rng.uniform(-1, 0)
        while x < 1:
            img = np.zeros((size, size, 3), np.uint8)
            img[:, int(np.clip((x + 1) / 2, 0, 0.999) * size)] = 255
            imgs.append(img)
            pos.append([x, 0.0])
            act.append([1.0])
            x += 0.25
        ends.append(len(act))
    root = zarr.open_group(str(path), mode="w")
    root.create_array("data/img", data=np.stack(imgs), chunks=(16, size, size, 3))
    root.create_array("data/agent_pos", data=np.asarray(pos, np.float32))
    root.create_array("data/action", data=np.asarray(act, np.float32))
    root.create_array("meta/episode_ends", data=np.asarray(ends, np.int64))


def _task_yaml(store: Path) -> str:
    return textwrap.dedent(f"""\
        name: user_reach
        env:
          id: UserReach-v0
          import_modules: [user_env]
          max_episode_steps: 12
          state_keys: [agent]
          success_key: reached
        cameras:
          front: {{obs_key: rgb, store_key: img, size: [32, 32]}}
        demos:
          source: store
          path: {store}
          state_key: agent_pos
          action_key: action
        """)


@pytest.mark.slow
def test_main_job_trains_and_evaluates_on_a_users_store_and_env(tmp_path):
    (tmp_path / "user_env.py").write_text(USER_ENV)
    store = tmp_path / "user.zarr"
    _write_third_party_store(store)
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    cfg_dir = tmp_path / "my_configs"
    (cfg_dir / "task").mkdir(parents=True)
    (cfg_dir / "task" / "user_reach.yaml").write_text(_task_yaml(store))
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "train_policy.py"), "--config-dir", str(cfg_dir), "task=user_reach",
           "encoder=s2p-nano", "s2=single", "train=smoke", "train.steps=60", "policy.horizon=4",
           "policy.n_action_steps=2", "eval.n_episodes=6", "eval.n_videos=0", "data.augment.copies=1",
           f"cache.dir={tmp_path / 'caches'}", f"hydra.run.dir={run_dir}"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    result = json.loads((run_dir / "result.json").read_text())
    assert result["task"] == "user_reach"
    roll = result["rollout"]
    assert roll["n_episodes"] == 6 and [e["seed"] for e in roll["episodes"]][:2] == [100000, 100001]
    assert roll["success_rate"] >= 0.5   # the demos always push right: the policy must learn that
    # the store was only read; its feature cache went to cache.dir, nothing was written beside the store
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == before
    caches = sorted(tmp_path.joinpath("caches").glob("*.zarr"))
    assert len(caches) == 2 and not (tmp_path / "user.zarr.features").exists()   # clean + 1 shifted copy
    assert sorted(str(FeatureCache(c).augment) for c in caches) == [
        "None", "shift0.0625-copy1-seed0"]
    assert not dict(zarr.open_group(str(store), mode="r").attrs)


@pytest.mark.slow
def test_bad_user_task_fails_before_any_long_step(tmp_path):
    store = tmp_path / "user.zarr"
    _write_third_party_store(store, n_episodes=2)
    cfg_dir = tmp_path / "cfg"
    (cfg_dir / "task").mkdir(parents=True)
    (cfg_dir / "task" / "user_reach.yaml").write_text(_task_yaml(store).replace("agent_pos", "agent_state"))
    cmd = [sys.executable, str(REPO / "train_policy.py"), "--config-dir", str(cfg_dir), "task=user_reach",
           f"hydra.run.dir={tmp_path / 'run'}"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "no data/agent_state" in err[0] and "demos.state_key" in err[0]
    assert not (tmp_path / "run" / "result.json").exists()


def test_task_spec_round_trip_and_errors():
    cfg = OmegaConf.load(REPO / "configs" / "task" / "pick_marked_cube.yaml")
    cfg.pop("defaults")
    spec = TaskSpec.from_config(cfg)
    again = TaskSpec.from_config(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.cameras["front"].size == [128, 128]
    assert spec.seeds.seeds("test", 2) == [100_000, 100_001]
    with pytest.raises(ValueError, match="Key 'cameraz' not in 'TaskSpec'"):
        TaskSpec.from_config({**spec.to_dict(), "cameraz": {}})
    with pytest.raises(ValueError, match="demos.source"):
        TaskSpec.from_config({**spec.to_dict(), "demos": {"source": "youtube", "path": "x"}})
    with pytest.raises(ValueError, match="overlapping selection and test"):
        TaskSpec.from_config({**spec.to_dict(), "seeds": {"selection": 100_000, "test": 150_000}})
    with pytest.raises(ValueError, match="cameras.front.size"):
        TaskSpec.from_config({**spec.to_dict(), "cameras": {"front": {"size": [0, 64]}}})
    with pytest.raises(ValueError, match="env: null"):
        TaskSpec.from_config({**spec.to_dict(), "env": None})  # expert demos need an env
    no_sim = TaskSpec.from_config({**spec.to_dict(), "env": None, "demos": {"source": "store", "path": "x"}})
    assert not no_sim.has_env


def test_policy_config_round_trip_and_errors():
    cfg = OmegaConf.load(REPO / "configs" / "policy" / "diffusion.yaml")
    cfg.pop("defaults")
    pc = PolicyConfig.from_dict(cfg)
    assert PolicyConfig.from_dict(json.loads(json.dumps(pc.to_dict()))) == pc
    assert pc.head == "diffusion" and pc.diffusion.down_dims == [32, 64, 128]
    assert PolicyConfig() == PolicyConfig.from_dict({})   # one set of defaults
    with pytest.raises(ValueError, match="Key 'hiden_dim' not in 'MLPHeadConfig'"):
        PolicyConfig.from_dict({"mlp": {"hiden_dim": 3}})
    with pytest.raises(ValueError, match="horizon"):
        PolicyConfig.from_dict({"head": "diffusion", "horizon": 10})
    with pytest.raises(ValueError, match="n_layers"):
        PolicyConfig.from_dict({"mlp": {"n_layers": "many"}})


@pytest.mark.slow
def test_config_mistakes_fail_at_once(tmp_path):
    """Wrong keys/values in any group fail before collection, with one line and exit status 2 (or hydra's)."""
    for override, needle in (("encoder.pooling=token", "pooling"), ("encoder.backbone=vit_nope", "vit_nope"),
                             ("policy.mlp.hiden_dim=3", "hiden_dim"), ("task.seeds.test=5", "overlapping"),
                             ("data.augment.max_shift=0.9", "max_shift")):
        cmd = [sys.executable, str(REPO / "train_policy.py"), override,
               f"task.demos.path={tmp_path / 'never.zarr'}", f"hydra.run.dir={tmp_path / 'run'}"]
        res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert res.returncode != 0 and needle in res.stderr, (override, res.stderr[-1500:])
        assert "Traceback" not in res.stderr, (override, res.stderr[-1500:])
        assert not (tmp_path / "never.zarr").exists()


def test_evaluate_with_a_mistyped_task_fails(tmp_path):
    """`evaluate task=<typo>` must not fall back to the checkpoint's own task."""
    cmd = [sys.executable, "-m", "s2_policy.jobs.evaluate", f"checkpoint={tmp_path / 'policy.pt'}",
           "task=pick_cub", f"hydra.run.dir={tmp_path / 'run'}"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "Could not find 'task/pick_cub'" in res.stderr


@pytest.mark.slow
def test_main_job_trains_on_an_imported_lerobot_dataset_without_a_simulator(tmp_path):
    """LeRobot folder -> store (the importer) -> main job with `env: null` (real-robot data: no
    evaluation)."""
    pytest.importorskip("av", reason="needs the lerobot extra (PyAV, pyarrow)")
    from s2_policy.data.lerobot import import_lerobot  # the extra is optional for this module's other tests

    store = tmp_path / "robot.zarr"
    import_lerobot(REPO / "tests" / "fixtures" / "lerobot_v3", store)
    cfg_dir = tmp_path / "cfg"
    (cfg_dir / "task").mkdir(parents=True)
    (cfg_dir / "task" / "robot.yaml").write_text(textwrap.dedent(f"""\
        name: robot
        env: null
        cameras: {{front: {{}}, wrist: {{}}}}
        demos: {{source: store, path: {store}}}
        """))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train_policy.py"), "--config-dir", str(cfg_dir), "task=robot",
           "encoder=s2p-nano", "s2=single", "train=smoke", "train.steps=4", "eval.profile_encoder=false",
           f"hydra.run.dir={run_dir}"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    result = json.loads((run_dir / "result.json").read_text())
    assert result["rollout"] is None and result["train"]["steps"] == 4
    assert "evaluation off" in res.stdout and (run_dir / "policy.pt").is_file()
