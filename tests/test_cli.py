"""Every command answers a plain user error with one line and exit status 2 (no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args, needle", [
    (["-m", "s2_policy.data.summary", "{tmp}/nope.zarr"], "no store at"),
    (["-m", "s2_policy.data.lerobot", "import", "{tmp}/nope", "{tmp}/out.zarr"], "not a LeRobotDataset"),
    (["-m", "s2_policy.data.robomimic_hdf5", "{tmp}/nope.hdf5", "{tmp}/out.zarr"], "nope.hdf5"),
    (["-m", "s2_policy.jobs.evaluate", "checkpoint={tmp}/none.pt", "hydra.run.dir={tmp}/run"], "none.pt"),
])
def test_user_errors_are_one_line(tmp_path, args, needle):
    cmd = [sys.executable, *(a.format(tmp=tmp_path) for a in args)]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr, res.stderr[-2000:]
    if "summary" not in args[1]:
        return
    full = subprocess.run(cmd, cwd=REPO, env={**env, "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert full.returncode != 0 and "Traceback" in full.stderr   # the full traceback on request
