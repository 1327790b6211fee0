"""Heads side by side (MLP, ACT-style transformer, diffusion) through the main job, several training seeds.

Usage:
``python benchmarks/head_comparison.py [--tasks pick_cube pick_marked_cube] [--heads mlp transformer]
[--seeds 0 1 2] [--out outputs/head_comparison] [-- extra hydra overrides]``

For every task, training seed and head it runs ``python train_policy.py task=<task> <head overrides>
seed=<seed> <extra overrides>`` (``mlp``: ``policy=mlp``; ``transformer``: ``policy=transformer``;
``diffusion``: ``policy=diffusion train=diffusion``) with the defaults otherwise: training, then the final
evaluation on the task's test seeds. One run at a time; a run whose ``result.json`` exists is skipped, so an
interrupted sweep resumes where it stopped (a run cut off mid-way starts again). Then
``s2_policy.evaluation.compare`` per task against the MLP (training seed as the unit: Welch's t on the
per-seed rates) and one markdown table: per-seed successes, mean, difference and p against the MLP, the wall
time of the runs, the CPU and the load average. MetaWorld tasks (``metaworld/<name>``) need the metaworld
extra (README). Extra overrides apply to every run, e.g. ``-- s2=single`` for the MetaWorld grid's
single-scale encoder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from s2_policy.evaluation.compare import compare  # noqa: E402  (after sys.path)

HEADS = {"mlp": ["policy=mlp"], "transformer": ["policy=transformer"],
         "diffusion": ["policy=diffusion", "train=diffusion"]}


def run_dir(out: Path, task: str, head: str, seed: int) -> Path:
    """Where one run writes: ``<out>/<task>/<head>/seed<k>`` (``metaworld/x`` tasks nest one folder more)."""
    return out / task / head / f"seed{seed}"


def run_one(out: Path, task: str, head: str, seed: int, extra: list[str]) -> float | None:
    """One main-job run unless its result exists; returns its wall time in seconds (``None``: skipped)."""
    d = run_dir(out, task, head, seed)
    if (d / "result.json").exists():
        return None
    d.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "train_policy.py", f"task={task}", *HEADS[head], f"seed={seed}", *extra,
           f"hydra.run.dir={d}", "train.progress=false", "eval.n_videos=0"]
    t0 = time.perf_counter()
    with open(d / "run.log", "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{task} {head} seed={seed} failed (exit {proc.returncode}); see {d / 'run.log'}; "
                         "fix it and re-run the same command: finished runs are kept")
    wall = time.perf_counter() - t0
    (d / "wall_s.txt").write_text(f"{wall:.1f}\n")
    return wall


def task_table(out: Path, task: str) -> list[str]:
    """``compare`` over every head of the task found under ``out``; markdown rows, MLP first."""
    results = sorted(str(p) for p in (out / task).glob("*/seed*/result.json"))
    if not results:
        return []
    labels = {json.loads(Path(p).read_text())["label"]: p for p in results}
    baseline = next((lab for lab, p in labels.items() if Path(p).parts[-3] == "mlp"), None)
    cmp = compare(results, out / task / "compare", baseline=baseline, title=task)
    base = next((r for r in cmp["rows"] if r["label"] == baseline), None)
    rows = []
    for r in cmp["rows"]:
        head = Path(labels[r["label"]]).parts[-3] if r["label"] in labels else r["label"]
        walls = [float(p.read_text()) for p in (out / task / head).glob("seed*/wall_s.txt")]
        wall = f"{min(walls):.0f}-{max(walls):.0f} s" if walls else "-"
        diff = "" if base is None or r is base else f"{100 * (r['seed_mean'] - base['seed_mean']):+.1f}"
        p = r.get("p_vs_baseline")
        rows.append(f"| {task} | {head} | {', '.join(map(str, r['seed_successes']))} | "
                    f"{100 * r['seed_mean']:.1f} % | {diff} | {'' if p is None else f'{p:.3g}'} | {wall} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Arguments after -- are hydra overrides for every run.")
    ap.add_argument("--tasks", nargs="+", default=["pick_cube", "pick_marked_cube"])
    ap.add_argument("--heads", nargs="+", choices=list(HEADS), default=["mlp", "transformer"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "head_comparison")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    for task in args.tasks:
        for seed in args.seeds:
            for head in args.heads:
                wall = run_one(args.out, task, head, seed, extra)
                print(f"{task} {head} seed={seed}: " + ("done earlier" if wall is None else f"{wall:.0f} s"),
                      flush=True)
    print(f"\nmachine: {cpu_model()}, load average {os.getloadavg()[0]:.2f} at the end; "
          f"extra overrides: {' '.join(extra) or 'none'}\n")
    print("| task | head | successes per training seed (of 50 test episodes) | mean | vs MLP (points) "
          "| Welch p (seed level) | wall time per run |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- |")
    for task in args.tasks:
        for row in task_table(args.out, task):
            print(row)


if __name__ == "__main__":
    main()
