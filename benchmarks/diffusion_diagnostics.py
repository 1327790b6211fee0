"""Why does a diffusion head trail the MLP head? Offline action error on the validation episodes.

Usage: ``python benchmarks/diffusion_diagnostics.py CKPT [CKPT ...] [--samples 8] [--max-windows 512]
[--ddim-steps K] [--timestep-spacing trailing] [--store PATH]`` (the sampler options change the diffusion
heads' sampler, as ``jobs.evaluate`` does)

The checkpoints must be trained on the same store (the first one's store, split and features are used). For
every checkpoint it predicts the executed part of the action chunk (``n_action_steps`` actions from the last
observation step) on the held-out validation windows, or with ``--store`` on every window of another store
of the same task (e.g. expert episodes on scenes no policy trained on: ``python -m s2_policy.jobs.collect
task=<task> task.seeds.demo=6 n_episodes=50 out=<path>``, a fresh block of scenes), and prints, in normalised
action units ([-1, 1] for ``limits``):

- ``mse``: mean squared error of one prediction per window (what a rollout executes);
- ``bias``: squared error of the mean over ``--samples`` predictions (diffusion; the MLP's is its mse);
- ``spread``: mean variance across those samples (diffusion: how much the initial noise changes the action);
- ``mse`` per action dimension, to see which part (for example the gripper) carries the error;
- ``mse`` on the approach: the windows in the first third of each episode (before the grasp, where a
  policy must locate the object from the image).

``mse`` ~ ``bias`` + ``spread``: a head whose error is mostly spread samples inconsistent chunks (train
longer, predict the sample, average); one whose error is mostly bias did not learn the mapping.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from envs.spec import TaskSpec  # noqa: E402  (after sys.path)
from s2_policy.data.feature_cache import ensure_feature_cache  # noqa: E402  (after sys.path)
from s2_policy.data.sequence import SequenceDataset  # noqa: E402  (after sys.path)
from s2_policy.encoders import build_encoder_from_identity  # noqa: E402  (after sys.path)
from s2_policy.jobs.evaluate import set_ddim_steps, set_timestep_spacing  # noqa: E402  (after sys.path)
from s2_policy.policies.policy import Policy  # noqa: E402  (after sys.path)
from s2_policy.training.trainer import prepare_batch, tensorize_dataset  # noqa: E402  (after sys.path)


def validation_windows(policy: Policy, val_ratio: float, split_seed: int, store: Path | None = None
                       ) -> dict[str, torch.Tensor]:
    """The policy's held-out validation windows (same store, split and features as its training run), or
    every window of ``store`` (same task and encoder), with each window's phase in its episode."""
    task = TaskSpec.from_config(policy.meta["task"])
    path = policy.meta["store"] if store is None else store
    encoder = build_encoder_from_identity(policy.encoder_identity)
    keys = [task.store_key(c) for c in task.camera_names]
    cache = ensure_feature_cache(path, encoder, keys, progress=False)
    cfg = policy.config
    ds = SequenceDataset(path, cameras={c: task.store_key(c) for c in task.camera_names},
                         state_key=task.demos.state_key, action_key=task.demos.action_key,
                         horizon=cfg.horizon, n_obs_steps=cfg.n_obs_steps, n_action_steps=cfg.n_action_steps,
                         split="train", val_ratio=val_ratio if store is None else 0.0, seed=split_seed,
                         features=cache, n_episodes=task.demos.n_episodes if store is None else None)
    if store is None:
        ds = ds.get_validation_dataset()
    data = tensorize_dataset(ds, policy.cameras, progress=False)
    data["phase"] = torch.as_tensor(ds.window_phase(), dtype=torch.float32)
    return data


@torch.no_grad()
def action_errors(policy: Policy, data: dict[str, torch.Tensor], n_samples: int, max_windows: int
                  ) -> dict[str, np.ndarray | float]:
    """mse / bias / spread of the executed actions on ``data`` (normalised units)."""
    n = min(len(data["action"]), max_windows)
    idx = torch.linspace(0, len(data["action"]) - 1, n).long()
    feats, state, action = prepare_batch(policy, data, idx)
    start = policy.n_obs_steps - 1
    target = action[:, start:start + policy.n_action_steps]
    cond = policy.core.condition(feats, state)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([policy.core.head.predict(cond, generator=gen)[:, start:start + policy.n_action_steps]
                         for _ in range(n_samples)])            # (S, B, n_action_steps, A)
    mean = draws.mean(0)
    err = ((draws[0] - target) ** 2).mean((1, 2))                  # per window
    approach = data["phase"][idx] < 1 / 3
    return {"mse": float(err.mean()), "bias": float(((mean - target) ** 2).mean()),
            "spread": float(draws.var(0, unbiased=False).mean()),
            "mse_dims": ((draws[0] - target) ** 2).mean((0, 1)).numpy(), "windows": n,
            "approach": float(err[approach].mean()) if approach.any() else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--samples", type=int, default=8, help="predictions per window (diffusion heads)")
    ap.add_argument("--max-windows", type=int, default=512)
    ap.add_argument("--ddim-steps", type=int, default=None, help="diffusion heads: DDIM steps")
    ap.add_argument("--timestep-spacing", default=None, help="diffusion heads: leading | trailing | linspace")
    ap.add_argument("--val-ratio", type=float, default=0.1, help="the training run's data.val_ratio")
    ap.add_argument("--split-seed", type=int, default=0, help="the training run's data.split_seed")
    ap.add_argument("--store", type=Path, default=None,
                    help="score every window of this store (same task) instead of the validation episodes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    policies = [Policy.load(p, load_encoder=False) for p in args.checkpoints]
    data = validation_windows(policies[0], args.val_ratio, args.split_seed, args.store)
    print(f"store {args.store or policies[0].meta['store']}: {len(data['action'])} "
          f"{'windows' if args.store else 'validation windows'}\n")
    print("| checkpoint | head | mse | mse, approach | bias | spread | mse per action dim |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for path, pol in zip(args.checkpoints, policies, strict=True):
        if pol.meta.get("store") != policies[0].meta.get("store"):
            raise SystemExit(f"{path} was trained on {pol.meta.get('store')}, not "
                             f"{policies[0].meta['store']}")
        samples = args.samples if pol.config.head == "diffusion" else 1
        if samples > 1 and args.ddim_steps is not None:
            set_ddim_steps(pol, args.ddim_steps)
        if samples > 1 and args.timestep_spacing is not None:
            set_timestep_spacing(pol, args.timestep_spacing)
        d = pol.config.diffusion
        sampler = (f"{d.prediction_type}, {d.timestep_spacing}, DDIM {d.num_inference_steps}"
                   if samples > 1 else "")
        e = action_errors(pol.eval(), data, samples, args.max_windows)
        dims = " ".join(f"{v:.4f}" for v in e["mse_dims"])
        print(f"| {path} | {pol.config.head} {sampler} | "
              f"{e['mse']:.4f} | {e['approach']:.4f} | {e['bias']:.4f} | {e['spread']:.4f} | {dims} |")


if __name__ == "__main__":
    main()
