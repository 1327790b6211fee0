"""MetaWorld tasks through the main job: single scale vs S2 (vs a larger encoder), several training seeds.

Usage (needs the metaworld extra, mujoco 3.3.0; README "MetaWorld"):
``python benchmarks/metaworld_policies.py [--tasks assembly hammer ...] [--seeds 0 1 2]
[--configs single s2 large] [--out outputs/mw_policies]``

For every task, training seed and configuration (``single``: ``s2=single``; ``s2``: ``s2=s2``; ``large``:
``encoder=s2p-small s2=single``, the fine-detail study's Large) it runs
``python train_policy.py task=metaworld/<task> <overrides> seed=<seed>`` with the defaults otherwise (25
demonstrations, 50 test episodes on the task's test seeds), one run at a time, and skips runs whose
``result.json`` already exists (the sweep resumes). Then ``python -m s2_policy.evaluation.compare`` per task
(training seed as the unit: Welch's t on per-seed rates). Prints one markdown table: per-seed successes per
configuration, the p-value and the wall time of each task's runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = ["assembly", "bin-picking", "button-press-topdown", "drawer-open", "hammer"]
CONFIGS = {"single": ["s2=single"], "s2": ["s2=s2"], "large": ["encoder=s2p-small", "s2=single"]}


def run_one(task: str, cfg: str, seed: int, out: Path) -> float:
    """One main-job run (skipped when its result exists); returns its wall time in seconds (0 if skipped)."""
    run_dir = out / task / cfg / f"seed{seed}"
    if (run_dir / "result.json").exists():
        return 0.0
    cmd = [sys.executable, "train_policy.py", f"task=metaworld/{task}", *CONFIGS[cfg], f"seed={seed}",
           f"hydra.run.dir={run_dir}", "train.progress=false"]
    t0 = time.perf_counter()
    with open(out / f"{task}_{cfg}_seed{seed}.log", "w") as log:
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - t0
    (run_dir / "wall_s.txt").write_text(f"{wall:.1f}\n")
    return wall


def compare(task: str, out: Path) -> dict:
    """``compare`` over the task's result files; returns its comparison.json."""
    cmp_dir = out / task / "compare"
    single = next((out / task / "single").glob("seed*/result.json"))
    baseline = json.loads(single.read_text())["label"]
    subprocess.run([sys.executable, "-m", "s2_policy.evaluation.compare",
                    f"results=[{out / task}/*/seed*/result.json]", f"out_dir={cmp_dir}",
                    f"baseline='{baseline}'", f"title=metaworld/{task}"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return json.loads((cmp_dir / "comparison.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["single", "s2"],
                    help="configurations to run (compare also reads results already in --out)")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "mw_policies")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MUJOCO_GL", "egl")
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            for cfg in args.configs:
                wall = run_one(task, cfg, seed, args.out)
                print(f"{task} {cfg} seed={seed}: {wall:.0f} s" if wall else
                      f"{task} {cfg} seed={seed}: done earlier", flush=True)
        walls = [float(p.read_text()) for p in (args.out / task).glob("*/seed*/wall_s.txt")]
        rows.append((task, compare(task, args.out), walls))
    print("\n| task | configuration | successes of 50 per training seed | mean | Welch p vs single "
          "| wall time per run |")
    print("| --- | --- | --- | --- | --- | --- |")
    for task, cmp, walls in rows:
        for r in cmp["rows"]:
            per_seed = "/".join(map(str, r["seed_successes"]))
            p = r.get("p_vs_baseline")
            wall = f"{min(walls):.0f}-{max(walls):.0f} s" if walls else "-"
            print(f"| {task} | {r['label']} | {per_seed} | {100 * r['seed_mean']:.1f}% | "
                  f"{'-' if p is None else f'{p:.3g}'} | {wall} |")


if __name__ == "__main__":
    main()
