"""Real-time budgets of trained policies: repeated `python -m s2_policy.jobs.realtime` runs, all-tick p99.

Usage:
``python benchmarks/realtime_budgets.py --policy mlp=outputs/ship/mlp/checkpoints/final.pt@30
--policy diffusion=outputs/ship/diffusion/checkpoints/final.pt@10 [--runs 5] [--seconds 60] [--fifo 50]
[--sim-episodes 50]``

Each ``--policy NAME=CHECKPOINT@HZ`` is run ``--runs`` times for ``--seconds`` each, every run its own process
(as a user runs the loop): dry-run robot, two synthetic cameras at 30 fps and the policy's image size, the
policy every tick (``loop.infer_every=1``), normal scheduling. With ``--fifo PRIORITY`` each policy also gets
``--fifo-runs`` runs under SCHED_FIFO (needs root or CAP_SYS_NICE). With ``--sim-episodes N`` each policy
then runs ``N`` episodes on the simulated robot (``robot=sim``, the task's test seeds) for its success
rate and reaction times with the simulator on the same cores. Prints a markdown table;
Per-run telemetry stays under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from machine import cpu_model

REPO = Path(__file__).resolve().parents[1]


def parse_policy(spec: str) -> tuple[str, Path, float]:
    """``NAME=CHECKPOINT@HZ`` -> (name, checkpoint, rate)."""
    name, _, rest = spec.partition("=")
    ckpt, _, hz = rest.rpartition("@")
    if not (name and ckpt and hz):
        raise SystemExit(f"--policy {spec!r}: use NAME=CHECKPOINT@HZ, e.g. mlp=outputs/mlp/policy.pt@30")
    return name, Path(ckpt).resolve(), float(hz)


def run_loop(ckpt: Path, hz: float, out: Path, args: argparse.Namespace, fifo: int | None,
             sim_episodes: int | None = None) -> dict:
    """One loop run in its own process; returns its telemetry.json plus the per-tick CSV rows."""
    if (out / "telemetry.json").exists():  # resume an interrupted benchmark
        return _read(out)
    cmd = [sys.executable, "-m", "s2_policy.jobs.realtime", f"checkpoint={ckpt}", f"out_dir={out}",
           f"threads={args.threads}", "loop.print_every_s=null", f"hydra.run.dir={out}/.hydra"]
    if sim_episodes:  # the simulator steps at the task's control rate, the rate the policy was trained at
        cmd += ["robot=sim", f"sim.n_episodes={sim_episodes}"]
    else:
        cmd.append(f"loop.rate_hz={hz}")
        s = args.size
        cams = ",".join(f"{{name:{c},type:synthetic,fps:30,height:{s},width:{s}}}" for c in args.cameras)
        cmd += ["robot=dry_run", f"cameras=[{cams}]", "loop.infer_every=1", f"loop.duration_s={args.seconds}"]
    if fifo:
        cmd.append(f"realtime_priority={fifo}")
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return _read(out)


def _read(out: Path) -> dict:
    tele = json.loads((out / "telemetry.json").read_text())
    with open(out / "steps.csv") as f:
        tele["_rows"] = list(csv.DictReader(f))
    return tele


def _col(rows: list[dict], key: str) -> np.ndarray:
    vals = np.array([float(r[key]) if r.get(key) not in (None, "", "nan") else np.nan for r in rows])
    return vals[np.isfinite(vals)]


def budget_row(name: str, hz: float, sched: str, runs: list[dict]) -> str:
    """One table row: p99 over all ticks of all runs, the per-run p99 range, misses, achieved rate."""
    rows = [r for t in runs for r in t["_rows"]]
    lat = _col(rows, "latency_ms")
    per_run = [np.percentile(_col(t["_rows"], "latency_ms"), 99) for t in runs]
    enc, pol = _col(rows, "encode_ms"), _col(rows, "policy_ms")
    misses = sum(str(r["deadline_miss"]).lower() in ("true", "1") for r in rows)
    rates = [t["achieved_hz"] for t in runs]
    budget = {30.0: 33.0, 10.0: 100.0}.get(hz)
    verdict = "-" if budget is None else ("yes" if np.percentile(lat, 99) <= budget else "**no**")
    return (f"| {name} | {hz:g} Hz | {sched} | {len(runs)} x {len(rows) // max(len(runs), 1)} | "
            f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 99):.1f} | "
            f"{min(per_run):.1f}-{max(per_run):.1f} | {np.median(enc):.1f} / {np.median(pol):.1f} | "
            f"{misses} of {len(rows)} | {min(rates):.1f}-{max(rates):.1f} | "
            f"{'-' if budget is None else f'<= {budget:g} ms'}: {verdict} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", action="append", required=True, help="NAME=CHECKPOINT@HZ (repeatable)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=128, help="synthetic frame height = width")
    ap.add_argument("--cameras", nargs="+", default=["front", "wrist"])
    ap.add_argument("--fifo", type=int, default=None, help="also run under SCHED_FIFO at this priority")
    ap.add_argument("--fifo-runs", type=int, default=2, help="runs per policy under SCHED_FIFO (extra row)")
    ap.add_argument("--sim-episodes", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "realtime_budgets")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    policies = [parse_policy(p) for p in args.policy]
    scheds = [("normal", None, args.runs)] + ([("FIFO", args.fifo, args.fifo_runs)] if args.fifo else [])
    table = []
    for sched, prio, n_runs in scheds:
        for name, ckpt, hz in policies:
            runs = []
            for i in range(n_runs):
                runs.append(run_loop(ckpt, hz, args.out / f"{name}_{sched}_{i}", args, prio))
                p99 = np.percentile(_col(runs[-1]["_rows"], "latency_ms"), 99)
                print(f"{name} {sched} run {i}: latency p99 {p99:.1f} ms", flush=True)
            table.append(budget_row(name, hz, sched, runs))
    sims = []
    for name, ckpt, hz in policies if args.sim_episodes else []:
        t = run_loop(ckpt, hz, args.out / f"{name}_sim", args, None, args.sim_episodes)
        react = _col(t["_rows"], "reaction_ms")
        rob = t["robot"]
        sims.append(f"| {name} | {t['target_hz']:g} Hz | {rob['successes']}/{rob['episodes']} | "
                    f"{np.percentile(react, 50):.1f} / {np.percentile(react, 99):.1f} | "
                    f"{sum(str(r['deadline_miss']).lower() in ('true', '1') for r in t['_rows'])} of "
                    f"{len(t['_rows'])} |")
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores, torch threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("\n| policy | rate | scheduling | runs x ticks | latency p50 / p99 (all ticks) ms | p99 per run ms "
          "| encode / policy p50 ms | deadline misses | achieved Hz | budget met |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(table))
    if sims:
        print("\n| policy (robot=sim, test seeds) | rate | successes | reaction p50 / p99 ms "
              "| deadline misses |")
        print("| --- | --- | --- | --- | --- |")
        print("\n".join(sims))


if __name__ == "__main__":
    main()
