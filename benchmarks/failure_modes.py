"""How do closed-loop episodes fail? Rollouts with the env's own progress signals, failures sorted by mode.

Usage: ``python benchmarks/failure_modes.py NAME=CHECKPOINT[,KEY=VALUE...] [...] [--seeds selection]
[--n-episodes 50] [--out outputs/failure_modes] [--threads 1]``

``KEY=VALUE`` changes inference as ``jobs.evaluate`` does: ``temporal_ensemble=true|false``,
``temporal_ensemble_m=M``, ``n_action_steps=K``, ``ddim_steps=K``, ``timestep_spacing=S``,
``diffusion_samples=K``, ``inpaint=none|executed|plan``. Each policy runs on the first ``--n-episodes``
selection (or test) seeds of the task stored in its checkpoint, keeping MetaWorld's per-step info
(``near_object``, ``grasp_success``, ``grasp_reward``, ``obj_to_target``) per episode; results are written
to ``<out>/<NAME>.json`` and reused when the same spec runs again. A failed episode (it ran to the step limit)
falls in the first mode that applies:

- ``never near``: the gripper never came within MetaWorld's reach of the object;
- ``never grasped``: it came near but never held the object;
- ``dropped``: it held the object at some point, not at the end;
- ``held, not placed``: it holds the object at the end, away from the goal (the stall of round five).

MetaWorld's ``near_object`` and ``grasp_success`` measure from the hand body, not the fingertips, and on some
tasks rarely fire even in successful episodes (bin-picking: in none of 6 traced successes); the table
therefore also counts the failures
whose caging signal ``grasp_reward`` never reached 0.5 ("never caged": the fingers never closed around the
object) and those in which the object never came closer to the goal ("object untouched").

Tasks whose env reports none of these keys get success counts and episode lengths only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch
import yaml
from machine import cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("MUJOCO_GL", "egl")  # before MuJoCo is imported: headless rendering

from envs.spec import TaskSpec  # noqa: E402  (after sys.path)
from s2_policy.evaluation.evaluate import evaluate_policy, write_json  # noqa: E402  (after sys.path)
from s2_policy.jobs.evaluate import (  # noqa: E402  (after sys.path)
    INFERENCE_SETTINGS,
    apply_inference_settings,
)
from s2_policy.policies.policy import Policy  # noqa: E402  (after sys.path)

INFO_KEYS = ("near_object", "grasp_success", "grasp_reward", "obj_to_target")
MODES = ("never near", "never grasped", "dropped", "held, not placed")


def inference_settings(changes: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings -> typed settings (YAML values) for ``apply_inference_settings``."""
    settings = {}
    for change in changes:
        key, _, value = change.partition("=")
        if key not in INFERENCE_SETTINGS:
            raise SystemExit(f"unknown inference setting {key!r}: use one of {', '.join(INFERENCE_SETTINGS)}")
        # names stay strings (YAML would read inpaint=none as null, "keep the trained setting")
        settings[key] = value if key in ("inpaint", "timestep_spacing") else yaml.safe_load(value)
    return settings


def mode(ep: dict) -> str | None:
    """The failure mode of one episode (``None``: success, or no MetaWorld signals)."""
    info = ep.get("info") or {}
    if ep["success"] or not {"near_object", "grasp_success"} <= set(info):
        return None
    if info["near_object"]["max"] < 0.5:
        return "never near"
    if info["grasp_success"]["max"] < 0.5:
        return "never grasped"
    return "dropped" if info["grasp_success"]["last"] < 0.5 else "held, not placed"


def run(spec: str, role: str, n: int, out: Path) -> dict:
    """Evaluate one ``NAME=CHECKPOINT[,KEY=VALUE...]`` (or reuse its saved result)."""
    name, rest = spec.split("=", 1) if "=" in spec.split(",")[0] else (Path(spec).parent.name, spec)
    path, *changes = rest.split(",")
    dest = out / f"{name}.json"
    if dest.exists():
        saved = json.loads(dest.read_text())
        if saved.get("spec") == spec and saved.get("role") == role and saved["rollout"]["n_episodes"] == n:
            return saved
    policy = Policy.load(path)
    apply_inference_settings(policy, inference_settings(changes))
    task = TaskSpec.from_config(policy.meta["task"])
    res = evaluate_policy(policy, task, n, role=role, n_videos=0, info_keys=INFO_KEYS)
    result = {"spec": spec, "name": name, "role": role, "rollout": res}
    write_json(result, dest)
    return result


def row(r: dict) -> str:
    """One markdown row: successes, failures by mode, the final object-to-goal distance of the failures."""
    eps = r["rollout"]["episodes"]
    fails = [e for e in eps if not e["success"]]
    modes = [mode(e) for e in fails]
    known = any(modes) or not fails
    counts = " | ".join(str(modes.count(m)) if known else "-" for m in MODES)
    infos = [e.get("info") or {} for e in fails]
    caged = [i["grasp_reward"]["max"] < 0.5 for i in infos if "grasp_reward" in i]
    untouched = [i["obj_to_target"]["max"] - i["obj_to_target"]["last"] < 0.005 for i in infos
                 if "obj_to_target" in i]
    dist = [i["obj_to_target"]["last"] for i in infos if "obj_to_target" in i]
    d = f"{statistics.median(dist):.3f}" if dist else "-"
    ok = [e["length"] for e in eps if e["success"]]
    length = f"{statistics.median(ok):.0f}" if ok else "-"
    extra = " | ".join(str(sum(v)) if v or not fails else "-" for v in (caged, untouched))
    return (f"| {r['name']} | {r['rollout']['successes']}/{len(eps)} | {counts} | {extra} | {d} | {length} | "
            f"{r['rollout']['seconds']:.0f} s |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="+", help="NAME=CHECKPOINT[,KEY=VALUE...] (see the module docstring)")
    ap.add_argument("--seeds", choices=["selection", "test"], default="selection",
                    help="which seeds of the task (default: selection; choose settings there)")
    ap.add_argument("--n-episodes", type=int, default=50, help="episodes per policy (default: 50)")
    ap.add_argument("--out", type=Path, default=Path("outputs/failure_modes"),
                    help="folder of the per-policy results, reused on a re-run (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run(s, args.seeds, args.n_episodes, args.out) for s in args.specs]
    print(f"\nmachine: {cpu_model()}, {args.threads} torch thread(s), load average "
          f"{os.getloadavg()[0]:.2f} at the end; {args.seeds} seeds\n")
    print("| policy | successes | failed: never near | never grasped | dropped | held, not placed "
          "| failed: never caged | object untouched "
          "| failures' final object-goal distance (median, m) | successes' median length | wall |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(row(r))


if __name__ == "__main__":
    main()
