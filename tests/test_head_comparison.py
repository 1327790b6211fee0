"""benchmarks/head_comparison.py: runs resume, and ``--selection`` evaluates each checkpoint once on the
selection seeds (the main job and ``jobs.evaluate`` are replaced by a fake that writes their result files)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def hc(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    module = importlib.import_module("head_comparison")
    calls: list[list[str]] = []

    def result(successes: int, first_seed: int) -> str:
        episodes = [{"seed": first_seed + i, "success": i < successes} for i in range(4)]
        return json.dumps({"label": "mlp", "seed": 0, "rollout": {
            "successes": successes, "n_episodes": 4, "episodes": episodes}})

    def fake_run(cmd, cwd, stdout, stderr):
        calls.append(cmd)
        if "s2_policy.jobs.evaluate" in cmd:  # selection seeds: 1 success of 4
            Path(next(a for a in cmd if a.startswith("out="))[4:]).write_text(result(1, 200000))
        else:  # the main job: 2 of 4 on the test seeds
            run_dir = Path(next(a for a in cmd if a.startswith("hydra.run.dir="))[len("hydra.run.dir="):])
            (run_dir / "result.json").write_text(result(2, 100000))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(module.subprocess, "run", fake_run)
    module.calls = calls
    yield module
    sys.modules.pop("head_comparison", None)


def test_selection_runs_once_after_training_and_resumes(hc, tmp_path):
    spec, extra = "aa=mlp,s2.scale_antialias=true", ["num_threads=1", "eval.n_videos=0"]
    assert isinstance(hc.run_one(tmp_path, "pick_cube", spec, 3, extra, selection=True), float)
    train, evaluate = hc.calls
    assert "train_policy.py" in train and "seed=3" in train and "s2.scale_antialias=true" in train
    d = tmp_path / "pick_cube" / "aa" / "seed3"
    assert evaluate[1:3] == ["-m", "s2_policy.jobs.evaluate"]
    assert {f"checkpoint={d / 'policy.pt'}", "seeds=selection", "label=aa", f"out={d / 'selection.json'}",
            "num_threads=1"} <= set(evaluate)
    assert "eval.n_videos=0" not in evaluate  # a main-job key jobs.evaluate does not take
    assert hc.run_one(tmp_path, "pick_cube", spec, 3, extra, selection=True) is None  # both done
    assert len(hc.calls) == 2


def test_selection_on_an_earlier_sweep_only_evaluates(hc, tmp_path):
    hc.run_one(tmp_path, "pick_cube", "mlp", 0, [])  # a sweep run without --selection
    assert len(hc.calls) == 1 and not (tmp_path / "pick_cube" / "mlp" / "seed0" / "selection.json").exists()
    hc.run_one(tmp_path, "pick_cube", "mlp", 0, [], selection=True)
    assert len(hc.calls) == 2 and "seeds=selection" in hc.calls[1]
    rows = hc.task_table(tmp_path, "pick_cube", ["mlp"], "mlp", result="selection.json")
    assert len(rows) == 1 and "| pick_cube | mlp | 1 |" in rows[0]  # the selection file's 1 success


def test_failed_selection_evaluation_stops_with_the_log(hc, tmp_path, monkeypatch):
    monkeypatch.setattr(hc.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1))
    (tmp_path / "pick_cube" / "mlp" / "seed0").mkdir(parents=True)
    (tmp_path / "pick_cube" / "mlp" / "seed0" / "result.json").write_text("{}")
    with pytest.raises(SystemExit, match="selection seeds failed.*selection.log"):
        hc.run_one(tmp_path, "pick_cube", "mlp", 0, [], selection=True)
