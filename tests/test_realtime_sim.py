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
from s2_policy.realtime.cameras import SyntheticCamera
from s2_policy.realtime.robot import Robot, RobotState, SimRobot
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


class RecordingRobot(Robot):
    """A user's robot built from ``robot: {_target_: ...}``: reports its keyword arguments and what it got."""

    def __init__(self, action_dim: int, state: list, label: str = "") -> None:
        self.action_dim, self.state_arg, self.label = action_dim, state, label
        self._state = np.asarray(state, np.float32)
        self.actions, self.started, self.closed = 0, False, False

    def start(self) -> "RecordingRobot":
        self.started = True
        return self

    def get_state(self) -> RobotState:
        return RobotState(self._state, time.monotonic(), 0)

    def send_action(self, action: np.ndarray) -> None:
        assert np.shape(action) == (self.action_dim,)
        self.actions += 1

    def hold(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def stats(self) -> dict:
        return {"label": self.label, "state": self.state_arg, "actions": self.actions,
                "started": self.started, "closed": self.closed}


class TaggedCamera(SyntheticCamera):
    """A user's camera built from a ``cameras`` entry with ``_target_``."""

    def __init__(self, name: str, tag: str, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.tag = tag

    def stats(self) -> dict:
        return {**super().stats(), "tag": self.tag}


def test_target_robot_and_camera_are_instantiated_with_their_kwargs(checkpoint, tmp_path):
    """The command-line form from docs/realtime.md: hydra composes the mappings, the runner instantiates them,
    and the loop runs against the user's robot."""
    robot = f"{{_target_: {__name__}.RecordingRobot, action_dim: 4, state: [0.1, 0.2, 0.3, 0.4], label: a7}}"
    wrist = f"{{_target_: {__name__}.TaggedCamera, name: wrist, tag: left, height: 48, width: 40, fps: 30}}"
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("realtime", overrides=[
            f"checkpoint={checkpoint}", "threads=1", f"robot={robot}",
            f"cameras=[front:synthetic:30,{wrist}]", "loop.rate_hz=10", "loop.max_steps=5",
            "safety.max_step_s=2.0", "safety.stale_s=1.0"])
    summary = run_realtime(OmegaConf.to_container(cfg, resolve=True), tmp_path)
    assert summary["steps"] == 5 and summary["stop_reason"] == "max_steps"
    assert summary["actions_sent"] > 0
    assert summary["robot"] == {"label": "a7", "state": [0.1, 0.2, 0.3, 0.4],
                                "actions": summary["actions_sent"], "started": True, "closed": True}
    assert summary["cameras"]["wrist"]["tag"] == "left" and summary["cameras"]["wrist"]["captured"] > 0


def test_target_errors_name_the_target_and_the_fix(checkpoint, tmp_path):
    cams = ["front:synthetic:30", "wrist:synthetic:30"]
    base = {"checkpoint": str(checkpoint), "threads": 1, "cameras": cams}
    arm = f"{__name__}.RecordingRobot"
    with pytest.raises(ValueError, match=r"robot: cannot import _target_ 'no_such_pkg\.arm\.MyArm' "
                                         r"\(.*No module named 'no_such_pkg'.*PYTHONPATH"):
        run_realtime({**base, "robot": {"_target_": "no_such_pkg.arm.MyArm"}}, tmp_path)
    with pytest.raises(ValueError, match=r"robot: _target_ collections.OrderedDict built a "
                                         r"collections.OrderedDict, not a s2_policy\.realtime\.robot\.Robot"):
        run_realtime({**base, "robot": {"_target_": "collections.OrderedDict"}}, tmp_path)
    with pytest.raises(ValueError, match=r"RecordingRobot\(\*\*\{'action_dim': 4, 'speed': 2\}\) failed"
                                         r".*'speed'"):
        run_realtime({**base, "robot": {"_target_": arm, "action_dim": 4, "speed": 2}}, tmp_path)
    with pytest.raises(ValueError, match=r"cameras\[1\]: _target_ collections.OrderedDict .*not a "
                                         r"s2_policy\.realtime\.cameras\.CameraSource"):
        not_a_camera = {"_target_": "collections.OrderedDict", "name": "wrist"}
        run_realtime({**base, "robot": "dry_run", "cameras": [cams[0], not_a_camera]}, tmp_path)
    # the old forms say what to write instead
    with pytest.raises(ValueError, match=r"module:Class form is gone; write "
                                         r"robot=\{_target_: my_pkg\.arm\.MyArm, \.\.\.keyword arguments\}"):
        run_realtime({**base, "robot": "my_pkg.arm:MyArm"}, tmp_path)
    with pytest.raises(ValueError, match=r"robot='arm': use sim, dry_run or robot=\{_target_"):
        run_realtime({**base, "robot": "arm"}, tmp_path)
    with pytest.raises(ValueError, match=r"robot_kwargs is gone.*robot=\{_target_"):
        run_realtime({**base, "robot": "dry_run", "robot_kwargs": {"ip": "10.0.0.2"}}, tmp_path)
