"""Heads side by side (MLP, ACT-style transformer, diffusion) through the main job, several training seeds.

Usage:
``python benchmarks/head_comparison.py [--tasks pick_cube pick_marked_cube] [--heads mlp transformer]
[--seeds 0 1 2] [--out outputs/head_comparison] [-- extra hydra overrides]``

A head can also be a named variant, ``NAME=HEAD[,OVERRIDE...]``: e.g.
``diffusion_te=diffusion,policy.diffusion.temporal_ensemble=true`` runs the diffusion head with that override,
in its own folder and under the label ``NAME`` (commas inside brackets belong to the value, e.g.
``diffusion_u64=diffusion,policy.diffusion.down_dims=[64,128,256]``); ``--baseline NAME`` makes it the row
the others are compared with (default: ``mlp``). Encoders compare the same way, e.g. ``--heads
single=mlp,s2=single s2=mlp --baseline single``.

For every task, training seed and head it runs ``python train_policy.py task=<task> <head overrides>
seed=<seed> <extra overrides>`` (``mlp``: ``policy=mlp``; ``transformer``: ``policy=transformer``;
``diffusion``: ``policy=diffusion train=diffusion``) with the defaults otherwise: training, then the final
evaluation on the task's test seeds. One run at a time; a run whose ``result.json`` exists is skipped, so an
interrupted sweep resumes where it stopped (a run cut off mid-way starts again). Each run holds a lock file
(``seed<k>.lock``) while it runs, and a run another process holds is skipped: two workers can share one sweep
(e.g. one with ``--seeds 0 1 2 3 4``, one with ``--seeds 4 3 2 1 0``) without running anything twice. Then
``s2_policy.evaluation.compare`` per task against the MLP (training seed as the unit: Welch's t on the
per-seed rates) and one markdown table: per-seed successes, mean, difference and p against the MLP, the wall
time of the runs, the CPU and the load average, and each head's median validation loss on held-out
demonstration episodes. With ``-- eval.enabled=false`` the runs only train and the table shows their
validation losses alone (round thirteen found that these do not tell in advance whether S2 gains in closed
loop; docs/encoders.md).
With ``--selection`` every checkpoint is also evaluated on the task's selection seeds (``selection.json``
beside ``result.json``, resumable the same way) and a second table compares those: choose a setting or a
default on that table, and let the test-seed table report it.
MetaWorld tasks (``metaworld/<name>``) need the metaworld extra (README). Extra overrides apply to every run,
e.g. ``-- s2=single`` for the MetaWorld grid's single-scale encoder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout
from machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from s2_policy.evaluation.compare import compare  # noqa: E402  (after sys.path)

HEADS = {"mlp": ["policy=mlp"], "transformer": ["policy=transformer"],
         "diffusion": ["policy=diffusion", "train=diffusion"]}


def _split_top(spec: str) -> list[str]:
    """Split on commas outside brackets, so list overrides such as ``policy.diffusion.down_dims=[64,128,256]``
    stay whole."""
    parts, depth, cur = [], 0, ""
    for ch in spec:
        depth += (ch in "[{(") - (ch in "]})")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def parse_head(spec: str) -> tuple[str, list[str]]:
    """``mlp`` | ``transformer`` | ``diffusion`` or ``NAME=HEAD[,OVERRIDE...]`` -> (folder, overrides)."""
    if "=" not in _split_top(spec)[0]:
        if spec not in HEADS:
            raise SystemExit(f"--heads {spec!r}: use one of {sorted(HEADS)} or NAME=HEAD[,OVERRIDE...]")
        return spec, HEADS[spec]
    name, rest = spec.split("=", 1)
    head, *overrides = _split_top(rest)
    if head not in HEADS or not name.isidentifier() or name in HEADS:
        raise SystemExit(f"--heads {spec!r}: a variant is NAME=HEAD[,OVERRIDE...] with HEAD one of "
                         f"{sorted(HEADS)} and NAME a new identifier (e.g. diffusion_te=diffusion,"
                         "policy.diffusion.temporal_ensemble=true)")
    return name, [*HEADS[head], *overrides, f"label={name}"]


SELECTION = "selection.json"   # the checkpoint evaluated on the task's selection seeds (``--selection``)


def run_dir(out: Path, task: str, head: str, seed: int) -> Path:
    """Where one run writes: ``<out>/<task>/<head>/seed<k>`` (``metaworld/x`` tasks nest one folder more)."""
    return out / task / head / f"seed{seed}"


def _run_logged(cmd: list[str], log_path: Path, what: str) -> None:
    """Run ``cmd`` in the repository, output to ``log_path``; a failure stops the sweep with a hint."""
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}); see {log_path}; fix it and re-run the "
                         "same command: finished runs are kept")


def _eval_overrides(extra: list[str]) -> list[str]:
    """The extra overrides that ``jobs.evaluate`` shares with the main job (only the thread count)."""
    return [o for o in extra if o.startswith("num_threads=")]


def run_one(out: Path, task: str, head: str, seed: int, extra: list[str],
            selection: bool = False) -> float | str | None:
    """One main-job run unless its result exists or another worker holds it, then (with ``selection``) the
    same checkpoint on the task's selection seeds; returns the wall time in seconds (``None``: done earlier;
    ``"busy"``: another process is running it)."""
    name, head_overrides = parse_head(head)
    d = run_dir(out, task, name, seed)

    def pending() -> bool:
        return not (d / "result.json").exists() or (selection and not (d / SELECTION).exists())

    if not pending():
        return None
    d.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(d.with_suffix(".lock")).acquire(timeout=0)
    except Timeout:
        return "busy"
    with lock:
        if not pending():  # finished by another worker between the check and the lock
            return None
        d.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        if not (d / "result.json").exists():
            cmd = [sys.executable, "train_policy.py", f"task={task}", *head_overrides, f"seed={seed}", *extra,
                   f"hydra.run.dir={d}", "train.progress=false", "eval.n_videos=0"]
            _run_logged(cmd, d / "run.log", f"{task} {name} seed={seed}")
            (d / "wall_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
        if selection and not (d / SELECTION).exists():
            cmd = [sys.executable, "-m", "s2_policy.jobs.evaluate", f"checkpoint={d / 'policy.pt'}",
                   "seeds=selection", "n_videos=0", f"label={name}", f"out={d / SELECTION}",
                   *_eval_overrides(extra)]
            _run_logged(cmd, d / "selection.log", f"{task} {name} seed={seed} on the selection seeds")
    return time.perf_counter() - t0


def _wall(out: Path, task: str, head: str) -> str:
    walls = [float(p.read_text()) for p in (out / task / head).glob("seed*/wall_s.txt")]
    lo, hi = (min(walls), max(walls)) if walls else (0.0, 0.0)
    return "-" if not walls else f"{lo:.0f} s" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f} s"


def _val_loss(results: list[dict]) -> str:
    """Median of ``train.final_val_loss`` (held-out demonstration episodes) over a head's seeds."""
    losses = [r["train"]["final_val_loss"] for r in results
              if r.get("train", {}).get("final_val_loss") is not None]
    return f"{statistics.median(losses):.4f}" if losses else "-"


def task_table(out: Path, task: str, heads: list[str], baseline_head: str = "mlp",
               result: str = "result.json") -> list[str]:
    """``compare`` over ``heads`` (folder names) of the task under ``out``; markdown rows, baseline first.

    ``result``: ``result.json`` (the main job's test-seed evaluation) or ``selection.json`` (``--selection``).
    Runs trained with evaluation off (``-- eval.enabled=false``) get a row with their validation loss and no
    successes; ``compare`` sees only the evaluated runs."""
    by_head = {h: [json.loads(p.read_text()) | {"_path": str(p)}
                   for p in sorted((out / task / h).glob(f"seed*/{result}"))] for h in heads}
    evaluated = [(h, r) for h in heads for r in by_head[h] if r.get("rollout")]
    head_of = {r["label"]: h for h, r in evaluated}   # compare groups runs by label, one label per head
    cmp_rows = {}
    if evaluated:
        baseline = next((lab for lab, h in head_of.items() if h == baseline_head), None)
        paths = [r["_path"] for _, r in evaluated]
        folder = "compare" if result == "result.json" else "compare_selection"
        cmp = compare(paths, out / task / folder, baseline=baseline, title=task)
        cmp_rows = {head_of[r["label"]]: r for r in cmp["rows"] if r["label"] in head_of}
    base = cmp_rows.get(baseline_head)
    rows = []
    for head in [baseline_head, *(h for h in heads if h != baseline_head)]:
        runs = by_head.get(head, [])
        r = cmp_rows.get(head)
        if not runs:
            continue
        if r is None:   # trained with evaluation off
            seeds = ", ".join(str(run["seed"]) for run in runs)
            rows.append(f"| {task} | {head} | (not evaluated; seeds {seeds}) | - | | | {_val_loss(runs)} | "
                        f"{_wall(out, task, head)} |")
            continue
        diff = "" if base is None or r is base else f"{100 * (r['seed_mean'] - base['seed_mean']):+.1f}"
        p = r.get("p_vs_baseline")
        rows.append(f"| {task} | {head} | {', '.join(map(str, r['seed_successes']))} | "
                    f"{100 * r['seed_mean']:.1f} % | {diff} | {'' if p is None else f'{p:.3g}'} | "
                    f"{_val_loss([run for run in runs if run.get('rollout')])} | {_wall(out, task, head)} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Arguments after -- are hydra overrides for every run.")
    ap.add_argument("--tasks", nargs="+", default=["pick_cube", "pick_marked_cube"],
                    help="task configs (configs/task), e.g. pick_cube metaworld/bin-picking "
                         "(default: %(default)s)")
    ap.add_argument("--heads", nargs="+", default=["mlp", "transformer"],
                    help="mlp, transformer, diffusion, or a variant NAME=HEAD[,OVERRIDE...] "
                         "(default: %(default)s)")
    ap.add_argument("--baseline", default="mlp",
                    help="the head or variant NAME the others are compared with (default: mlp)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                    help="training seeds, the unit of the comparison (default: %(default)s)")
    ap.add_argument("--selection", action="store_true",
                    help="also evaluate every checkpoint on the task's selection seeds (jobs.evaluate "
                         "seeds=selection -> selection.json beside result.json) and print their table: the "
                         "seeds to choose a setting or default on; the test seeds then only report it")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "head_comparison",
                    help="sweep folder: <out>/<task>/<head>/seed<k> (default: outputs/head_comparison)")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    names = [parse_head(spec)[0] for spec in args.heads]   # refuse a bad head before the first run
    if args.baseline not in names:
        raise SystemExit(f"--baseline {args.baseline!r} is not among the heads {names}")
    os.environ.setdefault("MUJOCO_GL", "egl")
    for task in args.tasks:
        for seed in args.seeds:
            for head in args.heads:
                wall = run_one(args.out, task, head, seed, extra, selection=args.selection)
                state = ("done earlier" if wall is None else "running in another process" if wall == "busy"
                         else f"{wall:.0f} s")
                print(f"{task} {head} seed={seed}: {state}", flush=True)
    print(f"\nmachine: {cpu_model()}, load average {os.getloadavg()[0]:.2f} at the end; "
          f"extra overrides: {' '.join(extra) or 'none'}\n")
    tables = [("result.json", "test")] + ([(SELECTION, "selection")] if args.selection else [])
    for result, seeds in tables:
        print(f"{seeds} seeds:\n")
        print(f"| task | head | successes per training seed (of 50 {seeds} episodes) | mean | "
              f"vs {args.baseline} (points) | Welch p (seed level) | validation loss (median) | "
              "wall time per run |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
        for task in args.tasks:
            for row in task_table(args.out, task, names, args.baseline, result=result):
                print(row)
        print()


if __name__ == "__main__":
    main()
