"""The simulated robot; a short end-to-end run of a saved policy checkpoint on it."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tasks import load_task

from s2_policy.data.store import ReplayStore
from s2_policy.encoders import EncoderConfig, build_encoder
from s2_policy.policies import LinearNormalizer, Policy
from s2_policy.realtime.robot import SimRobot
from s2_policy.realtime.runner import run_realtime

CONFIGS = Path(__file__).resolve().parents[1] / "configs"



def test_sim_robot_runs_in_real_time_and_publishes_cameras():
    robot = SimRobot.from_task(load_task("pick_cube", size=32), control_hz=20)
    try:
        robot.start()
        s0 = robot.get_state()
        assert robot.action_dim == 4 and s0.state.shape == (4,)
        time.sleep(0.3)
        f = robot.cameras["wrist"].latest()
        assert f.image.shape == (32, 32, 3) and f.seq >= 3 and time.monotonic() - f.t_capture < 0.2
        assert robot.get_state().t > s0.t and robot.stats()["hold_steps"] >= 3  # no command: holds
        z0 = robot.get_state().state[2]
        for _ in range(6):
            robot.send_action(np.array([0, 0, 1, -1], np.float32))  # up
            time.sleep(0.05)
        assert robot.get_state().state[2] > z0 + 0.01
        with pytest.raises(ValueError, match="action shape"):
            robot.send_action(np.zeros(3))
        robot.stop()
        with pytest.raises(RuntimeError, match="stopped"):
            robot.send_action(np.zeros(4))
    finally:
        robot.close()
    assert not robot.connected and not robot.cameras["front"].connected


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """Where the checkpoint's task keeps its demonstrations (created by the test that needs it)."""
    return tmp_path_factory.mktemp("demos") / "pick.zarr"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, demo_store):
    """A tiny saved policy (s2p-tiny S2 [64, 128] encoder + MLP head) that knows its task."""
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(backbone="s2p-tiny", scales=[1, 2]))
    rng = np.random.default_rng(0)
    norm = LinearNormalizer().fit({"state": rng.normal(size=(64, 4)), "action": rng.uniform(-1, 1, (64, 4))})
    task = load_task("pick_cube", size=64, **{"demos.path": str(demo_store)}).to_dict()
    cfg = {"head": "mlp", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "obs_proj_dim": 32,
           "mlp": {"hidden_dim": 64, "n_layers": 2}}
    policy = Policy(cfg, enc.out_dim, ["front", "wrist"], 4, 4, norm, encoder=enc, meta={"task": task})
    return policy.save(tmp_path_factory.mktemp("ckpt") / "policy.pt")


def test_realtime_command_runs_a_checkpoint_on_the_sim_robot(checkpoint, tmp_path, capsys):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("realtime", overrides=[f"checkpoint={checkpoint}", "robot=sim", "threads=1",
                                             "sim.n_episodes=null", "loop.max_steps=12",
                                             "safety.max_step_s=2.0", "safety.stale_s=1.0"])
    summary = run_realtime(OmegaConf.to_container(cfg, resolve=True), tmp_path)
    assert summary["steps"] == 12 and summary["stop_reason"] == "max_steps"
    assert summary["encoder"]["tiles_per_step"] == 10  # 2 cameras x (1 + 4) tiles
    assert summary["robot"]["commands"] == summary["actions_sent"] > 0
    data = json.loads((tmp_path / "telemetry.json").read_text())
    assert data["steps"] == 12 and data["timing_ms"]["latency_ms"]["n"] == summary["actions_sent"]
    assert data["timing_ms"]["encode_ms"]["p50"] > 0
    assert (tmp_path / "steps.csv").read_text().count("\n") == 13
    assert "latency p50/p95/p99" in capsys.readouterr().out


def test_realtime_config_errors(checkpoint, tmp_path):
    base = {"checkpoint": str(checkpoint), "threads": 1}
    with pytest.raises(ValueError, match="renders its own cameras"):
        run_realtime({**base, "robot": "sim", "cameras": ["front:synthetic:30"]}, tmp_path)
    with pytest.raises(ValueError, match="needs live cameras"):
        run_realtime({**base, "robot": "dry_run"}, tmp_path)
    with pytest.raises(ValueError, match="missing sources"):
        run_realtime({**base, "robot": "dry_run", "cameras": ["front:synthetic:30"]}, tmp_path)
    with pytest.raises(FileNotFoundError):
        run_realtime({**base, "checkpoint": str(tmp_path / "none.pt")}, tmp_path)


def test_realtime_sim_refuses_demonstration_seeds(checkpoint, demo_store, tmp_path):
    """The simulated episodes run on test seeds; a store recording one of them as a demo seed stops the
    run."""
    ReplayStore.create(demo_store, attrs={"episode_seeds": [100_001], "failed_seeds": []})
    try:
        cfg = {"checkpoint": str(checkpoint), "threads": 1, "robot": "sim", "sim": {"n_episodes": 3}}
        with pytest.raises(ValueError, match="demonstration seeds"):
            run_realtime(cfg, tmp_path)
    finally:
        shutil.rmtree(demo_store)


def test_dry_run_on_live_cameras(checkpoint, tmp_path):
    cfg = {"checkpoint": str(checkpoint), "threads": 1, "robot": "dry_run",
           "cameras": ["front:synthetic:30", {"name": "wrist", "type": "synthetic", "fps": 30, "height": 96}],
           "loop": {"rate_hz": 10, "max_steps": 5, "print_every_s": None},
           "safety": {"max_step_s": 2.0, "stale_s": 1.0}}
    summary = run_realtime(cfg, tmp_path)
    assert summary["steps"] == 5 and summary["robot"]["actions_received"] == summary["actions_sent"] > 0
    assert summary["cameras"]["wrist"]["captured"] > 0 and (tmp_path / "telemetry.json").is_file()
