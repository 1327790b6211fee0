"""Evaluation: Wilson/Fisher statistics, vectorised rollouts (toy env, PickCube); see also test_compare."""

from __future__ import annotations

import pytest
import test_evaluation_toyenv  # noqa: F401  (registers ToyWalk-v0; light, so spawned workers start fast)
import torch
from tasks import load_task

from envs.spec import CameraSpec, DemoSpec, EnvConfig, TaskSpec
from s2_policy.evaluation.evaluate import evaluate_policy
from s2_policy.evaluation.rollout import run_rollouts
from s2_policy.evaluation.stats import fisher_exact, two_proportion_z, wilson_interval


def _toy_task(obs_key="cam"):
    """A plain gymnasium env (none of the project's kwargs; its own observation keys) as a task."""
    return TaskSpec(name="toy", env=EnvConfig(id="ToyWalk-v0", import_modules=["test_evaluation_toyenv"],
                                              max_episode_steps=6, state_keys=["pos"]),
                    cameras={"front": CameraSpec(obs_key=obs_key)},
                    demos=DemoSpec(source="store", path="unused"))


class PushRight:
    """Features-free fake policy: reads the images/state it is given and always pushes right."""

    cameras = ["front"]
    n_obs_steps = 2
    device = torch.device("cpu")

    def __init__(self):
        self.seen = []

    def predict_action(self, obs, generator=None):
        assert obs["front"].shape[1:] == (2, 8, 8, 3) and obs["state"].shape[1:] == (2, 1)
        self.seen.append(obs["state"].copy())
        return torch.full((obs["state"].shape[0], 3, 1), 2.0)   # clipped to the action space


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(40, 50)
    assert (lo, hi) == pytest.approx((0.6696, 0.8876), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_significance_tests():
    assert fisher_exact(40, 50, 25, 50) == pytest.approx(0.00305, abs=1e-4)
    assert fisher_exact(5, 10, 5, 10) == pytest.approx(1.0)
    z, p = two_proportion_z(40, 50, 25, 50)
    assert z > 0 and p == pytest.approx(0.00166, abs=1e-4)
    assert two_proportion_z(10, 10, 5, 5) == (0.0, 1.0)


@pytest.mark.parametrize("n_envs", [1, 2])
def test_rollouts_on_toy_env_seeds_chunks_and_key_mapping(tmp_path, n_envs):
    pol = PushRight()
    res = run_rollouts(pol, _toy_task(), [0, 1, 3], n_envs=n_envs, video_dir=tmp_path, n_videos=1,
                       progress=False, info_keys=["pos", "absent"])
    assert [e["seed"] for e in res["episodes"]] == [0, 1, 3]
    # each episode's own last and max of info["pos"] (the seed-3 slot follows a success at pos 1.0: reset);
    # keys the env never reports are left out
    assert [e["info"] for e in res["episodes"]] == [{"pos": {"last": 1.0, "max": 1.0}}] * 2 + [
        {"pos": {"last": 0.0, "max": 0.0}}]
    assert [e["success"] for e in res["episodes"]] == [True, True, False]
    assert [e["length"] for e in res["episodes"]] == [2, 4, 6]
    assert res["successes"] == 2 and res["success_rate"] == pytest.approx(2 / 3)
    assert res["ci95"] == pytest.approx(list(wilson_interval(2, 3)))
    assert res["mean_episode_length"] == pytest.approx(4.0)
    assert len(res["videos"]) == 1 and (tmp_path / "episode_000_seed0.mp4").stat().st_size > 0
    # at every reset the history is the first frame repeated (training's edge padding), not zeros and not the
    # previous episode's frames: ToyWalk starts at -seed, so seeds 1 and 3 start from non-zero states
    histories = [row[:, 0].tolist() for s in pol.seen for row in s]
    assert [h for h in histories if h[-1] in (-1.0, -3.0)] == [[-1.0, -1.0], [-3.0, -3.0]]
    assert res["policy_calls"] >= 4    # chunks of 3 actions per call


def test_rollout_reports_missing_obs_keys():
    with pytest.raises(ValueError, match="cameras.front.obs_key"):
        run_rollouts(PushRight(), _toy_task(obs_key="front"), [0], n_envs=1, progress=False)


@pytest.mark.slow
def test_evaluate_policy_on_pick_cube_with_random_actions(tmp_path):
    class Random:
        cameras = ["front", "wrist"]
        n_obs_steps = 2
        device = torch.device("cpu")

        def predict_action(self, obs, generator=None):
            assert obs["front"].shape[1:] == (2, 32, 32, 3) and obs["state"].ndim == 3
            return torch.rand(obs["state"].shape[0], 4, 4, generator=generator) * 2 - 1

    task = load_task("pick_cube", size=32, **{"env.max_episode_steps": 8, "seeds.test": 300_000,
                                               "demos.path": str(tmp_path / "none.zarr")})
    res = evaluate_policy(Random(), task, n_episodes=2, n_envs=1, video_dir=tmp_path, n_videos=1,
                          progress=False)
    assert res["n_episodes"] == 2 and res["task"] == "pick_cube" and res["seed_role"] == "test"
    assert [e["seed"] for e in res["episodes"]] == [300_000, 300_001]
    assert all(e["length"] <= 8 for e in res["episodes"])
    assert len(list(tmp_path.glob("*.mp4"))) == 1


def test_rollouts_give_an_inpainting_policy_env_ids_and_episode_resets():
    class Tied(PushRight):
        inpaints = True

        def __init__(self):
            super().__init__()
            self.calls: list[tuple] = []

        def reset(self, env_ids=None):
            self.calls.append(("reset", None if env_ids is None else list(env_ids)))

        def predict_action(self, obs, generator=None, env_ids=None):
            self.calls.append(("predict", list(env_ids), obs["state"][:, -1, 0].tolist()))
            return super().predict_action(obs, generator)

    pol = Tied()
    run_rollouts(pol, _toy_task(), [0, 1, 3], n_envs=2, progress=False)
    assert pol.calls[:2] == [("reset", None), ("predict", [0, 1], [0.0, -1.0])]
    # seed 0 succeeds first (2 steps, in slot 0): that slot is reset before seed 3 (pos -3) is queried in it
    i = pol.calls.index(("reset", [0]))
    assert [c for c in pol.calls[i:] if c[0] == "predict" and c[1] == [0]][0][2] == [-3.0]
    assert pol.calls.count(("reset", [0])) == 1 and ("reset", [1]) not in pol.calls
