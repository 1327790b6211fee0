"""End to end: train_policy.py (tiny settings) -> policy + result JSON; then the evaluate command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s2_policy.data.feature_cache import FeatureCache, ensure_feature_cache
from s2_policy.encoders import EncoderConfig, build_encoder
from s2_policy.evaluation.compare import compare

REPO = Path(__file__).resolve().parents[1]
SMALL = ["task.env.max_episode_steps=40", "task.env.kwargs.image_size=64", "task.cameras.front.size=[64,64]",
         "task.cameras.wrist.size=[64,64]"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    res = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=400)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    return res


@pytest.mark.slow
def test_train_evaluate_compare_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    res = _run([str(REPO / "train_policy.py"), f"task.demos.path={tmp_path / 'pick.zarr'}",
                "task.demos.n_episodes=2", *SMALL, "s2=single", "train=smoke",
                "train.steps=6", "train.rollout_every=3", "eval.periodic_episodes=1", "eval.n_episodes=2",
                "eval.n_videos=1", "collect.n_workers=0", "cache.batch_size=16", "label=tiny",
                f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert "success" in res.stdout and "Wilson 95% CI" in res.stdout
    result = json.loads((run_dir / "result.json").read_text())
    assert result["label"] == "tiny" and result["task"] == "pick_cube"
    assert result["rollout"]["n_episodes"] == 2
    assert [e["seed"] for e in result["rollout"]["episodes"]] == [100000, 100001]
    assert result["train"]["steps"] == 6 and result["trainable_params"] > 0
    assert result["encoder"]["flops_per_step"] > 0 and result["encoder"]["latency_ms_median"] > 0
    assert result["encoder"]["identity"]["config"]["scales"] == [1]
    for f in ("policy.pt", "checkpoints/latest.pt", "checkpoints/best.pt",
              "videos/episode_000_seed100000.mp4"):
        assert (run_dir / f).is_file(), f
    assert (tmp_path / "pick.zarr").is_dir()

    out = tmp_path / "eval.json"
    _run(["-m", "s2_policy.jobs.evaluate", f"checkpoint={run_dir / 'policy.pt'}", "n_episodes=1",
          "n_videos=0", f"out={out}", f"hydra.run.dir={tmp_path / 'evallogs'}", "temporal_ensemble=true",
          "label=tiny_te"], cwd=REPO)
    ev = json.loads(out.read_text())
    assert ev["rollout"]["n_episodes"] == 1 and ev["label"] == "tiny_te"   # label= replaces "tiny+te0.01"
    # the MLP head with temporal ensembling: queried at every control step of the episode
    assert ev["rollout"]["temporal_ensemble_m"] == 0.01 and ev["policy_config"]["mlp"]["temporal_ensemble"]
    assert ev["rollout"]["policy_calls"] == ev["rollout"]["episodes"][0]["length"]
    assert ev["encoder"]["identity"]["fingerprint"] == result["encoder"]["identity"]["fingerprint"]

    cmp = compare([str(run_dir / "result.json")], tmp_path / "cmp")
    row = cmp["rows"][0]
    assert row["label"] == "tiny" and row["seed_rates"] == [result["rollout"]["success_rate"]]
    assert row["env_seeds_paired"] and "below 3" in cmp["warnings"][0]
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps({**ev, "label": "tiny"}))
    with pytest.raises(ValueError, match="training seed 0 twice"):   # the same policy evaluated twice
        compare([str(run_dir / "result.json"), str(twice)], tmp_path / "cmp")


@pytest.mark.slow
def test_joblib_multirun_sends_the_job_to_workers(tmp_path):
    """`-m hydra/launcher=joblib` pickles the task function: it must reach the loky workers and run, and the
    demo collection's spawned worker pool must start inside a loky worker (no store exists yet)."""
    sweep = tmp_path / "sweep"
    _run([str(REPO / "train_policy.py"), "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1",
          f"hydra.sweep.dir={sweep}", f"task.demos.path={tmp_path / 'pick.zarr'}", "task.demos.n_episodes=1",
          *SMALL, "s2=single", "train=smoke", "train.steps=2", "eval.n_episodes=1", "eval.n_videos=0",
          "eval.profile_encoder=false", "collect.n_workers=2", "seed=0,1"], cwd=tmp_path)
    results = sorted(sweep.glob("*/result.json"))
    assert len(results) == 2, list(sweep.iterdir())
    assert {json.loads(r.read_text())["seed"] for r in results} == {0, 1}


@pytest.mark.slow
def test_torchrun_two_processes_end_to_end(tmp_path):
    """`torchrun --nproc_per_node=2 train_policy.py` (gloo on CPU): both ranks encode a shard of the feature
    cache, train with DDP, rank 0 evaluates; the assembled cache equals a single-process build."""
    run_dir, store = tmp_path / "run", tmp_path / "pick.zarr"
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "train_policy.py"),
          f"task.demos.path={store}", "task.demos.n_episodes=2", *SMALL, "s2=single", "train=smoke",
          "train.steps=4", "eval.n_episodes=1", "eval.n_videos=0", "eval.profile_encoder=false",
          "collect.n_workers=0", "cache.batch_size=8", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["train"]["steps"] == 4 and result["rollout"]["n_episodes"] == 1
    caches = list((tmp_path / "pick.zarr.features").iterdir())
    assert [c.suffix for c in caches] == [".zarr"], caches   # one finished cache, no shards or partials left
    sharded = FeatureCache(caches[0])
    enc = build_encoder(EncoderConfig.from_dict({**result["config"]["encoder"], **result["config"]["s2"]}))
    single = ensure_feature_cache(store, enc, ["front", "wrist"], batch_size=8, cache_dir=tmp_path / "single",
                                  progress=False)
    for cam in ("front", "wrist"):
        np.testing.assert_array_equal(sharded.get(cam), single.get(cam))
